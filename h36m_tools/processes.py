"""Whether a process still runs: how a killed run's temporary files are told from a live run's, and removed."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterable


def alive(pid: int) -> bool:
    """Whether process `pid` runs: it exists and is not a zombie (a killed worker whose parent died stays a zombie
    until init reaps it, which in a container may be never)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # another user's process has the pid
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:               # no /proc (not Linux): existing is running
        return True
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X")


def remove_dead(paths: Iterable[Path], pid_of: Callable[[Path], str]) -> list[Path]:
    """Remove each of `paths` (a file, or a folder with what it holds) whose owner process is gone: `pid_of(path)` is
    the pid written in its name (text; a name without digits there is left alone, as a live process's path is).
    Returns those removed; one that cannot be removed is left (another run may be removing it)."""
    removed = []
    for path in paths:
        pid = pid_of(path)
        if not (pid.isdigit() and not alive(int(pid))):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed
