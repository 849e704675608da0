"""Worker processes that end with their parent: a kill -9 of `h36m extract`, `shard` or `train` leaves none behind.

    ProcessPoolExecutor(n, initializer=die_with_parent)        # or DataLoader(worker_init_fn=...) calling it
    ProcessPoolExecutor(n, mp_context=forkserver, initializer=die_with_parent, initargs=(os.getpid(),))

On Linux the kernel sends the worker SIGKILL when its parent thread ends (prctl PR_SET_PDEATHSIG); everywhere, a
daemon thread also watches the parent's pid (`os.getppid()` changes when the parent dies and the worker is
re-parented), and the main process's pid where that is another (a forkserver's workers), and kills the worker when
either goes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
#: Seconds between the watchdog's looks at the parent's pid.
WATCH_INTERVAL = 1.0


def _set_pdeathsig(sig: int) -> bool:
    """Ask the kernel for `sig` when the parent dies (Linux); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:       # a process of another user took the pid: ours is gone
        return True
    return False


def _watch(parent: int, main: int | None, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent or (main is not None and _gone(main)):
            os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(main: int | None = None, interval: float = WATCH_INTERVAL) -> None:
    """Make this (worker) process die when its parent dies: a parent-death SIGKILL and a watchdog thread on the
    parent's pid. Call it first thing in the worker (a pool's initializer, a DataLoader's worker_init_fn).

    `main`: the pid of the process the worker serves, watched too, where that is not the worker's parent (a
    forkserver's workers: the forkserver is their parent, and outlives a killed main process)."""
    parent = os.getppid()
    _set_pdeathsig(signal.SIGKILL)
    threading.Thread(target=_watch, args=(parent, main, interval), name="h36m-die-with-parent",
                     daemon=True).start()
