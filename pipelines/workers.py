"""Worker processes that end with the process that started them (a pool's `initializer`).

    ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"), initializer=die_with_parent)

A worker whose parent was killed (kill -9, out of memory) would otherwise live on, writing files nobody reads.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1          # <linux/prctl.h>


def die_with_parent(parent: int | None = None) -> None:
    """End this process with SIGKILL as soon as its parent process ends.

    `parent`: the parent's process id as the parent saw it (default: `os.getppid()` now); a parent already gone by
    the time the worker starts ends the worker at once. On Linux the kernel sends the signal (prctl
    PR_SET_PDEATHSIG; it fires when the *thread* that started the worker ends, so start pools from a thread that
    outlives them); elsewhere a daemon thread checks `os.getppid()` every half second.
    """
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        def watch():
            while os.getppid() == parent:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="die_with_parent", daemon=True).start()
    if os.getppid() != parent:         # the parent ended before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
