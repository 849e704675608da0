"""Whether a process still runs: how a killed run's temporary files are told from a live run's."""
from __future__ import annotations

import os
from pathlib import Path


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
