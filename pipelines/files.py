"""Files that appear whole or not at all, and their checksums: the one atomic-write helper of every stage.

    with atomic_path(out / "checkpoint.pt") as tmp:    # write tmp in any way (torch.save, savefig, tarfile)
        torch.save(state, tmp)
    write_atomic(out / "index.json", text)              # str or bytes

The temporary file is hidden, beside the target (same file system, so the rename is atomic) and named with the
process id, so two processes writing the same target never share a temporary file; the last rename wins whole.
A failure (a full disk, a read-only folder) removes the temporary file and raises H36MError naming the target; a
killed process leaves its temporary file, which `remove_stale_temporaries` removes once that process is gone.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.processes import remove_dead


def temporary_name(path: Path) -> Path:
    """The hidden temporary file this process writes `path` through."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temporaries(folder: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Remove the temporary files (`temporary_name`) of `pattern`'s targets in `folder` whose process is gone (a
    killed run's leftovers; a live process's files are kept); returns those removed."""
    return remove_dead(Path(folder).glob(f".{pattern}.*.tmp"), lambda tmp: tmp.name.rsplit(".", 2)[-2])


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """A temporary path to write `path` through; renamed to `path` when the block ends without an error (after an
    fsync of its data with `fsync`), removed otherwise. OSError -> H36MError naming `path`."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise H36MError(path, f"cannot write ({e.strerror or e})") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_atomic(path: str | os.PathLike, data: str | bytes, fsync: bool = False) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns the path."""
    with atomic_path(path, fsync) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def refuse_replacing(out: str | os.PathLike, *inputs) -> None:
    """H36MError naming `out` when writing it would replace one of `inputs` (paths; None skipped): the same file,
    through any link or spelling, or an input folder itself. Called before any work."""
    out = Path(out)
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        try:
            same = out.resolve() == src.resolve() or (out.exists() and src.exists() and os.path.samefile(out, src))
        except OSError:
            same = False
        if same:
            raise H36MError(out, f"is also an input of this command ({src}): writing it would replace that input; "
                                 f"choose another output")

