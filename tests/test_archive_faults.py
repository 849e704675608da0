"""Hostile and broken release archives: each ends in one line naming the archive (and member), in bounded time,
memory and disk, and costs no more than it must (a member too large for its kind costs that file; a header no
archive of that size can hold costs its archive; a name that is not UTF-8 costs that file).

Every archive is built here by the test itself from the small synthetic release (real videos, CDFs, gzip, bzip2):
bloated members are multi-stream gzip/bzip2 files of zeros (one compressed 16 MiB block repeated: 2 GiB in about
2 MB of gzip or 22 KB of bzip2), claimed sizes are tar headers with nothing behind them. Commands run as real
`h36m` processes under `resource.setrlimit` (address space, file size) and a timeout; each test checks the child's
peak memory (`wait4`).
"""
from __future__ import annotations

import bz2
import gzip
import io
import os
import resource
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest

from fixtures_extract import H36M, copy_release, run_cli, tree_bytes

GIB = 1 << 30
_AS_LIMIT = 4 * GIB          # address space: rapidgzip's and ffmpeg's threads reserve stacks they never touch
_FILE_LIMIT = 256 << 20      # no file the run writes may pass this: a 2 GiB member copied whole would be killed


def run_bounded(*args, timeout: float = 120, command=(H36M,)) -> tuple[subprocess.CompletedProcess, int]:
    """`h36m ARGS...` (or `command ARGS...`) under setrlimit (address space, file size) with a timeout; returns its
    result and its peak resident memory in bytes (its own and its waited-for children's)."""
    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (_AS_LIMIT, _AS_LIMIT))
        resource.setrlimit(resource.RLIMIT_FSIZE, (_FILE_LIMIT, _FILE_LIMIT))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*map(str, command), *map(str, args)], stdout=out, stderr=err, preexec_fn=limits,
                                env={**os.environ, "COLUMNS": "80"})
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        res = subprocess.CompletedProcess(proc.args, proc.returncode, out.read().decode(), err.read().decode())
    assert proc.returncode != -9, f"killed after {timeout} s: {res.stderr[-2000:]}"
    return res, usage.ru_maxrss * 1024


def one_error_line(res: subprocess.CompletedProcess, *words: str) -> str:
    """The run's one `error:` line, holding `words`, and no traceback."""
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


def _archives(small_release, tmp_path) -> Path:
    """S1 of the small release as its official archives (one sequence, 4 videos), writable."""
    from h36m.pipelines.synth.release import write_layout

    return write_layout(copy_release(small_release, tmp_path / "rel", ("S1",)), tmp_path / "raw", "archives")


def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)      # sizes past 8 GiB in base-256, as GNU tar writes them


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def _bloated(members, bloat: str, size: int, compress, block: int = 16 << 20) -> bytes:
    """A tar stream, compressed by `compress` one stream per piece (gzip and bzip2 read concatenated streams as one):
    `members` as they are, but `bloat`'s data replaced by `size` zero bytes, made of one compressed `block` of zeros
    repeated."""
    zeros = compress(b"\0" * block)
    pieces = []
    for info, data in members:
        if info.name != bloat:
            pieces.append(compress(_header(info.name, len(data)) + _padded(data)))
            continue
        pieces.append(compress(_header(info.name, size)))
        pieces += [zeros] * (size // block)
    pieces.append(compress(b"\0" * 1024))
    return b"".join(pieces)


@pytest.mark.parametrize("kind", ["tgz", "tar.bz2"])
def test_member_larger_than_its_kind_costs_that_camera(small_release, tmp_path, kind):
    """A 2 GiB video member in a 2 MB .tgz or a 22 KB .tar.bz2: refused before any copy (one line naming
    ARCHIVE:MEMBER and its size), the sequence extracted from the other three cameras, no file past 256 MiB."""
    raw = _archives(small_release, tmp_path)
    videos = raw / "Videos_S1.tgz"
    members = _members(videos)
    bloat = next(i.name for i, _ in members if ".54138969." in i.name)
    compress = (lambda b: gzip.compress(b, 9, mtime=0)) if kind == "tgz" else (lambda b: bz2.compress(b, 9))
    videos.unlink()
    archive = raw / f"Videos_S1.{kind}"
    archive.write_bytes(_bloated(members, bloat, 2 * GIB, compress))
    assert archive.stat().st_size < (3 << 20 if kind == "tgz" else 64 << 10)
    res, peak = run_bounded("extract", raw, tmp_path / "out", "--workers", 1, "--min-views", 3, "--size", 32)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    line = next(ln for ln in res.stdout.splitlines() if "54138969 left out" in ln)
    assert f"{archive}:{bloat}" in line and "2.00 GiB, more than a .mp4 file of the release can be" in line, line
    assert "1 extracted" in res.stdout and peak < GIB, (res.stdout, peak)
    assert not list((tmp_path / "out").rglob(".member-*"))


@pytest.mark.parametrize("claim", [80 * 10 ** 9, 10 ** 15])
def test_header_claiming_more_than_the_archive_can_hold_is_one_line(small_release, tmp_path, claim):
    """A 152-byte .tgz whose tar header claims 80 GB or 1 PB: one line naming the archive and the claim, in
    seconds (no read of data that cannot be there)."""
    raw = _archives(small_release, tmp_path)
    videos = raw / "Videos_S1.tgz"
    name = _members(videos)[0][0].name
    videos.write_bytes(gzip.compress(_header(name, claim), 9, mtime=0))
    assert videos.stat().st_size < 200
    res, peak = run_bounded("extract", raw, tmp_path / "out", "--workers", 1, timeout=60)
    assert res.returncode == 1
    one_error_line(res, str(videos), f"member '{name}' claims {claim} bytes",
                   f"more than the {videos.stat().st_size} bytes of the archive can hold")
    assert peak < GIB


_KILLED_COPY = """
import os, signal, sys
from pathlib import Path
from h36m.h36m_tools.archives import local_file
from h36m.h36m_tools.names import discover
files = discover(sys.argv[1])[0]
folder = Path(sys.argv[2]) if len(sys.argv) > 2 else None
with local_file(files.videos['54138969'], folder) as copy:
    print(copy, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_member_copies_of_a_killed_run_are_removed(small_release, tmp_path):
    """kill -9 of a process holding a member copy (in the output folder, and in the system's temporary folder):
    the next extract removes both copies and ends as an unbroken run does."""
    import sys

    raw = _archives(small_release, tmp_path)
    out = tmp_path / "out"
    (out / "S1").mkdir(parents=True)
    copies = []
    for folder in ([str(out / "S1")], []):
        res = subprocess.run([sys.executable, "-c", _KILLED_COPY, raw, *folder], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == -9, res.stderr
        copies.append(Path(res.stdout.strip()))
    assert all(c.is_file() and c.name.startswith(".member-") for c in copies)
    assert copies[0].parent == out / "S1" and copies[1].parent == Path(tempfile.gettempdir())
    res, _ = run_bounded("extract", raw, out, "--workers", 1, "--size", 32)
    assert res.returncode == 0, res.stderr
    assert not any(c.exists() for c in copies)
    clean = tmp_path / "clean"
    assert run_cli("extract", raw, clean, "--workers", 1, "--size", 32).returncode == 0
    assert tree_bytes(out).keys() == tree_bytes(clean).keys()


def test_non_utf8_names_cost_only_that_file(small_release, tmp_path):
    """A member of an archive and a file of the unpacked tree whose names are not valid UTF-8: each left out with
    a line naming it (bytes escaped), the rest extracted, exit 0."""
    raw = _archives(small_release, tmp_path)
    poses = raw / "Poses_D3_Positions_S1.tgz"
    members = _members(poses)
    # the real members, then one whose name holds the byte 0xff (as raw bytes in the tar header)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
        bad = tarfile.TarInfo("S1/MyPoseFeatures/D3_Positions/Eating\udcff 1.cdf")
        bad.size = len(members[0][1])
        tar.addfile(bad, io.BytesIO(members[0][1]))
    poses.write_bytes(gzip.compress(buf.getvalue(), 6, mtime=0))
    folder = raw / "S1" / "Videos"
    folder.mkdir(parents=True)
    (folder / os.fsdecode(b"Walking\xfe 1.54138969.mp4")).write_bytes(b"not read")
    res, _ = run_bounded("extract", raw, tmp_path / "out", "--workers", 1, "--size", 32)
    assert res.returncode == 0, res.stderr
    notes = [ln for ln in res.stdout.splitlines() if "name is not valid UTF-8" in ln]
    assert len(notes) == 2, res.stdout
    assert any(f"{poses}:S1/MyPoseFeatures/D3_Positions/Eating\\xff 1.cdf" in n for n in notes), notes
    assert any(f"{folder}/Walking\\xfe 1.54138969.mp4" in n for n in notes), notes
    assert "1 extracted" in res.stdout


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_members_read_in_any_order_equal_the_tar_bytes(tmp_path, kind, monkeypatch):
    """Every member of an archive, read in reverse stream order through `local_file`, equals tarfile's extraction:
    through the seek index its one listing pass built (gzip, bzip2), or read on from the stream's start (xz)."""
    import random

    from h36m.h36m_tools import archives

    monkeypatch.setattr(archives, "INDEX_MIN_BYTES", 0)           # index even this small archive
    rng = random.Random(0)
    files = {f"S1/Videos/Walking {i}.54138969.mp4": rng.randbytes(rng.randrange(1, 1 << 19)) for i in range(6)}
    path = tmp_path / f"Videos_S1.tar.{kind}"
    with tarfile.open(path, f"w:{kind}") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    listing = archives.list_archive(path)
    assert listing.problem is None and [m.name for m in listing.members] == list(files)
    assert all((m.index is not None) == (kind != "xz") for m in listing.members)
    for m in reversed(listing.members):
        with archives.local_file(m, tmp_path) as copy:
            assert copy.read_bytes() == files[m.name]
    assert not list(tmp_path.glob(".member-*"))


_LIST_INDEXED = """
import sys
from h36m.h36m_tools import archives
archives.INDEX_MIN_BYTES = 0
listing = archives.list_archive(sys.argv[1])
print(listing.problem, [(m.name, m.size, m.index) for m in listing.members])
"""


def test_archive_that_expands_in_the_indexer_is_listed_in_bounded_memory(tmp_path):
    """A 0.6 MB .tgz holding 640 MiB of zeros, given to the indexing pass (rapidgzip decodes it whole in memory): the
    indexing process is ended past its memory bound (512 MiB) and Python's decoders list the archive, without an
    index."""
    import sys

    path = tmp_path / "Videos_S1.tgz"
    path.write_bytes(_bloated([(tarfile.TarInfo("S1/Videos/Walking 1.54138969.mp4"), b"")],
                              "S1/Videos/Walking 1.54138969.mp4", 640 << 20, lambda b: gzip.compress(b, 9, mtime=0)))
    res, peak = run_bounded(path, command=(sys.executable, "-c", _LIST_INDEXED), timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"None [('S1/Videos/Walking 1.54138969.mp4', {640 << 20}, None)]"
    assert peak < 800 << 20, peak
