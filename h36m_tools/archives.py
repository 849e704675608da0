"""Files inside the release's archives (`Videos_S1.tgz`, `Poses_D3_Positions_S1.tgz`, ...), read in place.

An archive (a tar, compressed with gzip, bzip2, xz or not at all) is read front to back once, by `list_archive`:
each regular member's name, data offset and size and, for gzip and bzip2 archives of INDEX_MIN_BYTES or more when
`rapidgzip` is installed, an index of seek points that the same pass builds (rapidgzip's, in a child process whose
memory is bounded, `_indexed_entries`; written to a hidden file of this process, `index_folder`: about 1 % of the
archive for video-like members). A member is then read by seeking to it through the index and copying its `size`
bytes to a temporary file (`local_file`): the readers (cdflib, ffmpeg, h5py) need a real file, and an MP4 needs to
seek. Reading every member of an archive this way costs about one more decompression pass in all, shared by the
workers, and decodes with ISA-L (inside rapidgzip). Without an index (xz, small archives, an archive whose indexing
pass failed; or rapidgzip missing, then Python's gzip and bz2 decode) a process keeps its stream open and reads on
when the next member lies ahead of it, and starts again from the archive's start when it lies behind.

Sizes are checked before anything is copied or skipped: a member's size against what the compressed file can hold
(`MAX_RATIO`: deflate writes at most 1032 bytes a compressed byte; an uncompressed tar holds no more than its own
size) while listing, and against what its kind can be in the real release (`MEMBER_LIMITS`) before its copy.
A member whose name is not valid UTF-8 is left out and named in the listing's `skipped` lines (`Listing`).

Errors name the member as `ARCHIVE:MEMBER` (`Member.__str__`) and say what is wrong: a truncated archive, a damaged
compressed stream, a member too large for what it claims to be, a member whose content is not what its name says
(reported by the reader of the copy). A copy is named `.member-<pid>-*` and lives in the folder the caller gives:
a killed process's copies are removed by `remove_stale_copies` (as `files.remove_stale_temporaries` does for
other temporary files).
"""
from __future__ import annotations

import atexit
import bz2
import gzip
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Iterator

from .errors import H36MError
from .processes import remove_dead

#: File names of the archives the discovery looks at.
ARCHIVE_RE = re.compile(r"\.(tgz|tar\.gz|tar\.bz2|tbz2|tar\.xz|txz|tar)$", re.IGNORECASE)
#: `Videos_S1.tgz`, `Poses_D3_Positions_mono_universal_S11.tgz`: the subject an official archive holds.
SUBJECT_IN_NAME_RE = re.compile(r"_(S\d+)\.[^/]*$")
#: The most a member of each kind can be in the real release, bytes, with wide margins: a pose CDF of the longest
#: sequence (6349 frames x 96 doubles) is 4.9 MB; a video, at most about 0.3 GB (the release's 11-12 GB per subject
#: over 120 videos, the longest 2.5x the mean); a ground_truth_bb mask file, tens of MB (compressed HDF5).
MEMBER_LIMITS = {".cdf": 64 << 20, ".mp4": 1 << 30, ".mat": 1 << 30}
#: The most uncompressed bytes one compressed byte can give: deflate's limit (258-byte matches in 2 bits) and a
#: plain tar's. bzip2 and xz can give far more: their members are bounded by `MEMBER_LIMITS` alone.
MAX_RATIO = {"gzip": 1032, "tar": 1}
_CHUNK = 1 << 20
_COPY_PREFIX = ".member-"
_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError, RuntimeError)

try:        # parallel decoding and a seek index for gzip and bzip2; optional (Python's decoders otherwise)
    import rapidgzip
except ImportError:     # pragma: no cover - installed with the project
    rapidgzip = None


@dataclass(frozen=True)
class Member:
    """A regular file inside an archive: where its data starts in the uncompressed tar stream, its size, and the
    archive's seek index (None: read from the archive's start)."""
    archive: Path
    name: str                  # path inside the archive, e.g. 'S1/Videos/Directions 1.54138969.mp4'
    offset: int                # byte offset of its data in the uncompressed tar stream
    size: int
    index: str | None = field(default=None, compare=False)

    @property
    def basename(self) -> str:
        return PurePosixPath(self.name).name

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"


@dataclass
class Listing:
    """What one pass over an archive found: its regular members in stream order, the problem that stopped it early
    (None when it read to the end; the members before it are kept), and one line per member left out."""
    members: list[Member]
    problem: H36MError | None = None
    skipped: list[str] = field(default_factory=list)


def is_archive(path: Path) -> bool:
    return path.is_file() and bool(ARCHIVE_RE.search(path.name))


def subject_in_name(path: Path) -> str | None:
    """`Videos_S1.tgz` -> 'S1'; None when the name says no subject."""
    m = SUBJECT_IN_NAME_RE.search(path.name)
    return m.group(1) if m else None


def compression(path: Path) -> str:
    """'gzip', 'bzip2', 'xz' or 'tar' (none), told by the file's first bytes, not its name."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic[:3] == b"BZh":
        return "bzip2"
    if magic[:6] == b"\xfd7zXZ\x00":
        return "xz"
    return "tar"


def _open_stream(path: Path):
    """The uncompressed byte stream of an archive through Python's decoders."""
    return {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open, "tar": open}[compression(path)](path, "rb")


class _Bounded:
    """A stream that raises EOFError when it has nothing more to give: tarfile's stream mode skips a member by
    reading its claimed size block by block and would spin on an empty stream for a claimed petabyte."""

    def __init__(self, stream):
        self.stream = stream

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        if not data and n:
            raise EOFError("unexpected end of data")
        return data


def list_archive(path: str | Path) -> Listing:
    """List an archive in one front-to-back pass and check that it decompresses to its end; gzip and bzip2 of at
    least INDEX_MIN_BYTES through rapidgzip, which builds the archive's seek index in the same pass
    (`_indexed_entries`). Where that pass fails
    (a damaged archive, or one whose data would expand past `INDEXER_MEMORY`), the archive is listed with Python's
    decoders, in bounded memory, whose error says whether it is truncated or damaged."""
    path = Path(path)
    try:
        kind = compression(path)
        indexed = (_indexed_entries(path) if rapidgzip is not None and kind in ("gzip", "bzip2")
                   and path.stat().st_size >= INDEX_MIN_BYTES else None)
        if indexed is not None:
            entries, index = indexed
            listing = _list(path, kind, iter(entries))
            listing.members = [replace(m, index=index) for m in listing.members]
            return listing
        with _open_stream(path) as stream:
            listing = _list(path, kind, _tar_entries(_Bounded(stream)))
            if listing.problem is None:
                try:
                    _drain(stream)
                except _ERRORS as e:
                    listing.problem = _damaged(path, listing.members[-1].name if listing.members else None, e)
            return listing
    except OSError as e:
        return Listing([], H36MError(path, f"cannot read ({e.strerror or e})"))


def _tar_entries(stream) -> Iterator[tuple[str, int, int, bool]]:
    """(name, data offset, size, is a regular file) of each entry of a tar stream."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            yield info.name, info.offset_data, info.size, info.isfile()


def _list(path: Path, kind: str, entries: Iterator[tuple[str, int, int, bool]]) -> Listing:
    """The listing of `entries`, in order, up to the first that no archive of this size can hold or that cannot be
    read."""
    listing = Listing([])
    last = None
    limit = MAX_RATIO[kind] * path.stat().st_size if kind in MAX_RATIO else None
    try:
        for name, offset, size, is_file in entries:
            last = name
            if limit is not None and offset + size > limit:
                listing.problem = H36MError(path, f"damaged archive (member '{shown_name(name)}' claims {size} "
                                                  f"bytes, more than the {path.stat().st_size} bytes of the archive "
                                                  f"can hold); download it again")
                return listing
            if not is_file:
                continue
            name = _clean(name)
            if not is_utf8(name):
                listing.skipped.append(f"{path}:{shown_name(name)}: name is not valid UTF-8; file left out")
                continue
            listing.members.append(Member(path, name, offset, size))
    except _ERRORS as e:
        listing.problem = _damaged(path, last, e)
    return listing


def _damaged(path: Path, last: str | None, e: BaseException) -> H36MError:
    where = f"stops in or after member '{shown_name(last)}'" if last is not None else "no member readable"
    kind = "truncated" if isinstance(e, EOFError) or "unexpected end" in str(e) else "damaged"
    return H36MError(path, f"{kind} archive ({where}: {_reason(e)}); download it again")


def _drain(stream) -> None:
    """Read a stream to its end (the padding after the tar's end): its check sums and end are verified."""
    while stream.read(_CHUNK):
        pass


def is_utf8(name: str) -> bool:
    """Whether a name read from a tar header or a folder is valid UTF-8."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:       # tarfile keeps undecodable bytes as lone surrogates
        return False


def shown_name(name: str) -> str:
    """A name as a message shows it: undecodable bytes and control characters escaped as \\xNN."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)


def _clean(name: str) -> str:
    """Member names as written by tar: './S1/Videos/x.mp4' -> 'S1/Videos/x.mp4'."""
    while name.startswith("./"):
        name = name[2:]
    return name


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


#: Archives smaller than this (compressed bytes) are read without an index: reading on from the last member costs
#: less than starting the indexing process.
INDEX_MIN_BYTES = 8 << 20
#: Resident memory of the process that lists an archive through rapidgzip, bytes: its decoder holds whole decoded
#: chunks of 4 MiB of compressed data, which a hostile archive can make expand 1000-fold. The process is ended when it
#: holds more (looked at every INDEXER_POLL_S; address space is no bound: rapidgzip reserves about 1.3 GB a thread
#: that it never touches), and the archive is listed with Python's decoders, without an index.
INDEXER_MEMORY = 512 << 20
INDEXER_POLL_S = 0.02
_INDEXER = """
import json, sys, tarfile, rapidgzip
path, index, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
class Bounded:
    def __init__(self, stream): self.stream = stream
    def read(self, n=-1):
        data = self.stream.read(n)
        if not data and n:
            raise EOFError("unexpected end of data")
        return data
with rapidgzip.open(path, parallelization=threads) as stream:
    with tarfile.open(fileobj=Bounded(stream), mode="r|") as tar:
        entries = [[i.name, i.offset_data, i.size, i.isfile()] for i in tar]
    while stream.read(1 << 20):
        pass
    with open(index, "wb") as fh:
        stream.export_index(fh)
with open(index + ".json", "w") as fh:
    json.dump(entries, fh)
"""


def _indexed_entries(path: Path) -> tuple[list, str] | None:
    """The entries of an archive and its rapidgzip index (a file in `index_folder`), from one pass in a child
    process whose memory is watched (a decoder that holds more than INDEXER_MEMORY is ended, not this process);
    None where that pass failed for any reason."""
    import json
    import subprocess
    import sys
    import time

    fd, index = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".index", dir=index_folder())
    os.close(fd)
    proc = subprocess.Popen([sys.executable, "-c", _INDEXER, str(path), index, str(_threads())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if _resident(proc.pid) > INDEXER_MEMORY:
                proc.kill()
            time.sleep(INDEXER_POLL_S)
        if proc.returncode == 0:
            with open(index + ".json") as fh:
                return json.load(fh), index
    except (OSError, ValueError):
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        Path(index + ".json").unlink(missing_ok=True)
    os.unlink(index)
    return None


def _resident(pid: int) -> int:
    """Resident memory of process `pid`, bytes (0 where /proc cannot tell)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# ----------------------------------------------------------------------------------------- seek indexes

_index_dir: Path | None = None


def index_folder() -> Path:
    """This process's folder of archive indexes (hidden, in the system's temporary folder), made on first use and
    removed when the process exits; those of processes that are gone are removed when it is made."""
    global _index_dir
    if _index_dir is None:
        tmp = Path(tempfile.gettempdir())
        remove_dead(tmp.glob(".h36m-index-*"), lambda old: old.name.split("-")[2])
        _index_dir = Path(tempfile.mkdtemp(prefix=f".h36m-index-{os.getpid()}-", dir=tmp))
        atexit.register(shutil.rmtree, _index_dir, True)
    return _index_dir


# ----------------------------------------------------------------------------------------- reading a member

class _Reader:
    """This process's open stream of one archive: through its index (seeks anywhere), or Python's decoder (reads on
    when the next member lies ahead, starts again from the archive's start when it lies behind)."""

    def __init__(self, member: Member):
        self.archive, self.index = member.archive, member.index
        if member.index is not None:
            self.stream = rapidgzip.open(str(member.archive), parallelization=1)
            try:
                with open(member.index, "rb") as fh:
                    self.stream.import_index(fh)
            except BaseException:
                self.stream.close()
                raise
        else:
            self.stream = _open_stream(member.archive)

    def seek(self, offset: int) -> None:
        if self.index is None and offset < self.stream.tell():
            self.stream.close()
            self.stream = _open_stream(self.archive)
        self.stream.seek(offset)

    def close(self) -> None:
        self.stream.close()


_reader: _Reader | None = None


def _reader_for(member: Member) -> _Reader:
    """The process's reader of `member`'s archive (one kept open at a time; closed at exit)."""
    global _reader
    if _reader is None or (_reader.archive, _reader.index) != (member.archive, member.index):
        _close_reader()
        _reader = _Reader(member)
    return _reader


@atexit.register
def _close_reader() -> None:
    global _reader
    if _reader is not None:
        reader, _reader = _reader, None
        try:
            reader.close()
        except _ERRORS:
            pass


def check_size(member: Member) -> None:
    """Refuse a member larger than its kind can be in the real release (`MEMBER_LIMITS`), before any work."""
    limit = MEMBER_LIMITS.get(PurePosixPath(member.name).suffix.lower())
    if limit is not None and member.size > limit:
        raise H36MError(member, f"the archive says this member holds {member.size / 2 ** 30:.2f} GiB, more than a "
                                f"{PurePosixPath(member.name).suffix} file of the release can be "
                                f"({limit / 2 ** 30:.2f} GiB); not read")


def copy_member(member: Member, dst) -> None:
    """Copy a member's bytes into the open binary file `dst`; H36MError naming the member if it is larger than its
    kind can be, if the archive ends before its bytes or cannot be decompressed (an error writing `dst`, e.g. a full
    disk, is raised as it is)."""
    def fail(e: BaseException | None, done: int):
        _close_reader()             # a stream that failed is not reused
        if e is None or isinstance(e, EOFError):
            return H36MError(member, f"truncated archive (the member ends after {done} of {member.size} bytes); "
                                     f"download it again")
        return H36MError(member, f"damaged archive ({_reason(e)}); download it again")

    check_size(member)
    done = 0
    try:
        reader = _reader_for(member)
    except OSError as e:
        raise H36MError(member.archive, f"cannot read ({e.strerror or e})") from None
    except _ERRORS as e:
        raise fail(e, 0) from None
    try:
        reader.seek(member.offset)
    except _ERRORS as e:
        raise fail(e, 0) from None
    while done < member.size:
        try:
            block = reader.stream.read(min(member.size - done, _CHUNK))
        except _ERRORS as e:
            raise fail(e, done) from None
        if not block:
            raise fail(None, done)
        dst.write(block)
        done += len(block)


@contextmanager
def local_file(ref: Path | Member, folder: str | Path | None = None) -> Iterator[Path]:
    """A path to read `ref` from: a file itself, or a member copied to a hidden temporary file `.member-<pid>-*`
    in `folder` (the system's temporary folder by default) that is removed when the block ends. An H36MError that
    names the copy is raised again naming the member."""
    if not isinstance(ref, Member):
        yield Path(ref)
        return
    check_size(ref)
    suffix = PurePosixPath(ref.name).suffix
    with tempfile.NamedTemporaryFile(dir=folder, prefix=f"{_COPY_PREFIX}{os.getpid()}-", suffix=suffix) as tmp:
        copy_member(ref, tmp)
        tmp.flush()
        try:
            yield Path(tmp.name)
        except H36MError as e:
            raise name_member(e, Path(tmp.name), ref) from None


def remove_stale_copies(folder: str | Path | None = None) -> list[Path]:
    """Remove the member copies (`local_file`) in `folder` (the system's temporary folder by default) of processes
    that are gone (a killed run's leftovers); returns those removed."""
    return remove_dead(Path(folder or tempfile.gettempdir()).glob(f"{_COPY_PREFIX}*"),
                       lambda path: path.name[len(_COPY_PREFIX):].split("-", 1)[0])


def name_member(e: H36MError, local: Path, ref: Path | Member) -> H36MError:
    """`e` as raised about the copy `local` of `ref`, naming `ref` instead (other errors unchanged)."""
    if not isinstance(ref, Member) or e.path != str(local):
        return e
    return H36MError(ref, e.problem.replace(str(local), ref.basename))


def exists(ref: Path | Member | None) -> bool:
    """Whether a file reference points at something to read (members exist by construction)."""
    return ref is not None and (isinstance(ref, Member) or Path(ref).is_file())
