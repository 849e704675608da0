"""Fixtures and helpers of the `h36m extract` tests: one extraction of the shared small release per session."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

H36M = Path(sys.executable).with_name("h36m")


@pytest.fixture(scope="session")
def extracted_small(small_release, tmp_path_factory) -> Path:
    """`small_release` extracted with the default options (library call, 2 workers). Read-only."""
    from h36m.pipelines.extract.extract import run_extract
    from h36m.pipelines.extract.plan import ExtractConfig

    out = tmp_path_factory.mktemp("extracted") / "out"
    run_extract(ExtractConfig(raw=small_release, out=out, workers=2))
    return out


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """`h36m ARGS...` in a real subprocess (no terminal: output as a user's log would have it)."""
    return subprocess.run([str(H36M), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "80"})


def run_cli_on_small_disk(folder: Path, kib: int, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """`h36m ARGS...` in a subprocess that sees a `kib` KiB tmpfs mounted on `folder` (a private mount namespace:
    nothing stays mounted after it): writes past that size fail with the kernel's real ENOSPC. Skips the test
    where this machine cannot mount one."""
    return run_cli_on_tmpfs(folder, f"size={kib}k", *args, timeout=timeout)


def run_cli_on_tmpfs(folder: Path, options: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """`h36m ARGS...` in a subprocess that sees a fresh tmpfs mounted on `folder` with mount `options` (e.g.
    `size=64k`: a full disk; `ro`: a read-only file system), in a private mount namespace. Skips the test where
    this machine cannot make one (unshare -m)."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare, "-m", "true"], capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot make a private mount namespace here (unshare -m)")
    folder.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@"'
    return subprocess.run([unshare, "-m", "sh", "-c", script, "sh", options, str(folder), str(H36M),
                           *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "80"})


def copy_release(src: Path, dst: Path, subjects=None) -> Path:
    """A writable copy of (some subjects of) a release."""
    dst.mkdir(parents=True, exist_ok=True)
    for sdir in sorted(Path(src).iterdir()):
        if sdir.is_dir() and (subjects is None or sdir.name in subjects):
            shutil.copytree(sdir, dst / sdir.name)
    return dst


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every visible file under root (hidden tmp/lock files left out) -> its bytes."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]
