"""Files inside the release's archives (`Videos_S1.tgz`, `Poses_D3_Positions_S1.tgz`, ...), read in place.

A tar archive (gzip, bzip2, xz or none) is listed once (`list_archive`: each regular member's name, data offset and
size); a member is then read by decompressing the archive up to its data offset and copying `size` bytes to a
temporary file (`local_file`), removed when the block ends: the readers (cdflib, ffmpeg, h5py) need a real file,
and an MP4 needs to seek. Compressed archives cannot seek backwards, so each member read decompresses the archive
from its start up to the member.

Errors name the member as `ARCHIVE:MEMBER` (`Member.__str__`) and say what is wrong: a truncated archive, a damaged
compressed stream, a member whose content is not what its name says (reported by the reader of the copy).
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import tarfile
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from .errors import H36MError

#: File names of the archives the discovery looks at.
ARCHIVE_RE = re.compile(r"\.(tgz|tar\.gz|tar\.bz2|tbz2|tar\.xz|txz|tar)$", re.IGNORECASE)
#: `Videos_S1.tgz`, `Poses_D3_Positions_mono_universal_S11.tgz`: the subject an official archive holds.
SUBJECT_IN_NAME_RE = re.compile(r"_(S\d+)\.[^/]*$")
_CHUNK = 1 << 20
_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


@dataclass(frozen=True)
class Member:
    """A regular file inside an archive: where its data starts in the uncompressed tar stream, and its size."""
    archive: Path
    name: str                  # path inside the archive, e.g. 'S1/Videos/Directions 1.54138969.mp4'
    offset: int                # byte offset of its data in the uncompressed tar stream
    size: int

    @property
    def basename(self) -> str:
        return PurePosixPath(self.name).name

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"


def is_archive(path: Path) -> bool:
    return path.is_file() and bool(ARCHIVE_RE.search(path.name))


def subject_in_name(path: Path) -> str | None:
    """`Videos_S1.tgz` -> 'S1'; None when the name says no subject."""
    m = SUBJECT_IN_NAME_RE.search(path.name)
    return m.group(1) if m else None


def _open_stream(path: Path):
    """The uncompressed byte stream of an archive (compression told by its first bytes, not its name)."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")
    if magic[:6] == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")
    return open(path, "rb")


def list_archive(path: str | Path) -> tuple[list[Member], H36MError | None]:
    """The regular members of an archive in stream order, and the problem that stopped the listing early (None when
    it read to the end): the members before a truncation are still returned."""
    path = Path(path)
    members: list[Member] = []
    last = None
    try:
        with _open_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                last = info
                if info.isfile():
                    members.append(Member(path, _clean(info.name), info.offset_data, info.size))
    except _ERRORS as e:
        where = f"stops in or after member {last.name!r}" if last is not None else "no member readable"
        kind = "truncated" if isinstance(e, EOFError) or "unexpected end" in str(e) else "damaged"
        return members, H36MError(path, f"{kind} archive ({where}: {_reason(e)}); download it again")
    return members, None


def _clean(name: str) -> str:
    """Member names as written by tar: './S1/Videos/x.mp4' -> 'S1/Videos/x.mp4'."""
    while name.startswith("./"):
        name = name[2:]
    return name


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def copy_member(member: Member, dst) -> None:
    """Copy a member's bytes into the open binary file `dst`; H36MError naming the member if the archive ends
    before them or cannot be decompressed (an error writing `dst`, e.g. a full disk, is raised as it is)."""
    def fail(e: BaseException | None, done: int):
        if e is None or isinstance(e, EOFError):
            return H36MError(member, f"truncated archive (the member ends after {done} of {member.size} bytes); "
                                     f"download it again")
        return H36MError(member, f"damaged archive ({_reason(e)}); download it again")

    done = 0
    try:
        stream = _open_stream(member.archive)
    except OSError as e:
        raise H36MError(member.archive, f"cannot read ({e.strerror or e})") from None
    with stream:
        try:
            stream.seek(member.offset)
        except _ERRORS as e:
            raise fail(e, 0) from None
        while done < member.size:
            try:
                block = stream.read(min(member.size - done, _CHUNK))
            except _ERRORS as e:
                raise fail(e, done) from None
            if not block:
                raise fail(None, done)
            dst.write(block)
            done += len(block)


@contextmanager
def local_file(ref: Path | Member, folder: str | Path | None = None) -> Iterator[Path]:
    """A path to read `ref` from: a file itself, or a member copied to a hidden temporary file in `folder` (the
    system's temporary folder by default) that is removed when the block ends. An H36MError that names the copy
    is raised again naming the member."""
    if not isinstance(ref, Member):
        yield Path(ref)
        return
    suffix = PurePosixPath(ref.name).suffix
    with tempfile.NamedTemporaryFile(dir=folder, prefix=f".member-{os.getpid()}-", suffix=suffix) as tmp:
        copy_member(ref, tmp)
        tmp.flush()
        try:
            yield Path(tmp.name)
        except H36MError as e:
            raise name_member(e, Path(tmp.name), ref) from None


def name_member(e: H36MError, local: Path, ref: Path | Member) -> H36MError:
    """`e` as raised about the copy `local` of `ref`, naming `ref` instead (other errors unchanged)."""
    if not isinstance(ref, Member) or e.path != str(local):
        return e
    return H36MError(ref, e.problem.replace(str(local), ref.basename))


def exists(ref: Path | Member | None) -> bool:
    """Whether a file reference points at something to read (members exist by construction)."""
    return ref is not None and (isinstance(ref, Member) or Path(ref).is_file())

