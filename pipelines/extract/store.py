"""Bookkeeping of an extracted folder: per-sequence records, and the manifest and cameras.json rebuilt from them.

Every sequence a run finishes leaves a record `S1/Directions_1.json` next to its data, written atomically after the
data: {"key", "status": "done" | "skipped" | "failed", "options", and "entry" (done) or "reason"}. The manifest and
cameras.json are functions of the records alone, rebuilt under an exclusive lock (`.extract.lock`, fcntl), so runs of
several `--part`s into one folder, or a run killed and started again, all end with the same bytes. Two runs of the
same part at once both finish correctly: every file goes through a temporary file of its own process
(`files.atomic_path`) and the same input gives the same bytes, so the later rename replaces a file with its equal.
"""
from __future__ import annotations

import fcntl
import json
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from h36m.pipelines.files import remove_stale_temporaries, write_atomic
from h36m.h36m_tools.archives import remove_stale_copies
from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import camera_order, sequence_order, subject_order

FORMAT = 1
LOCK_NAME = ".extract.lock"


def dumps(obj) -> str:
    """Canonical JSON text (sorted keys, no timestamps): equal content gives equal bytes."""
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def write_json_atomic(path: Path, obj) -> None:
    """Canonical JSON (`dumps`) written atomically; H36MError naming `path` if it cannot be written."""
    write_atomic(path, dumps(obj))


def record_path(out: Path, key: str) -> Path:
    return Path(out) / f"{key}.json"


def read_record(out: Path, key: str) -> dict | None:
    """A sequence's record, or None if there is none (or it cannot be read: the sequence is then redone)."""
    try:
        return json.loads(record_path(out, key).read_text())
    except (OSError, ValueError):
        return None


def iter_records(out: Path):
    """Every readable record under `out` (S<n>/<name>.json), in sorted path order."""
    for sdir in sorted(p for p in Path(out).glob("S*") if p.is_dir()):
        for p in sorted(sdir.glob("*.json")):
            if p.name.startswith("."):
                continue
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict) and "key" in rec and "status" in rec:
                yield rec


def is_done(out: Path, key: str, options: dict) -> bool:
    """Whether a sequence is extracted with these options: a 'done' record whose data file is there, whole."""
    rec = read_record(out, key)
    if not rec or rec.get("status") != "done" or rec.get("options") != options:
        return False
    data = Path(out) / rec["entry"]["file"]
    return data.is_file() and data.stat().st_size == rec.get("bytes")


def check_options(out: Path, options: dict) -> None:
    """Refuse to mix outputs made with other output options in one folder (names the file that says so)."""
    manifest = Path(out) / "manifest.json"
    sources = [manifest] if manifest.is_file() else []
    for path in sources:
        try:
            old = json.loads(path.read_text()).get("options")
        except (OSError, ValueError):
            continue
        if old is not None and old != options:
            diff = ", ".join(f"{k} {old.get(k)!r} -> {options.get(k)!r}" for k in sorted(options)
                             if old.get(k) != options.get(k))
            raise H36MError(path, f"this folder was extracted with other options ({diff}); use another OUT folder")


def _open_lock(out: Path):
    """The folder's lock file, opened (made with the folder if need be); H36MError naming the folder if it cannot
    be written (read-only, full)."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        return open(Path(out) / LOCK_NAME, "a")
    except OSError as e:
        raise H36MError(out, f"cannot write here ({e.strerror or e})") from None


def prepare(out: Path) -> None:
    """Make the output folder and check it can be written (its lock file), before any work is done; remove the
    temporary files and archive member copies a killed run left behind (here and in the system's temporary
    folder)."""
    _open_lock(out).close()
    remove_stale_copies()
    for folder in [Path(out), *sorted(p for p in Path(out).glob("S*") if p.is_dir())]:
        remove_stale_temporaries(folder)
        remove_stale_copies(folder)


@contextmanager
def locked(out: Path):
    """An exclusive lock on the extracted folder (blocks until concurrent parts release it)."""
    with _open_lock(out) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_manifest(out: Path, source: str, options: dict) -> dict:
    """The manifest as a function of the records with these options (done data files must exist)."""
    sequences, skipped, failed = {}, {}, {}
    for rec in iter_records(out):
        if rec.get("options") != options:
            continue
        if rec["status"] == "done":
            if (Path(out) / rec["entry"]["file"]).is_file():
                sequences[rec["key"]] = rec["entry"]
        elif rec["status"] == "skipped":
            skipped[rec["key"]] = rec["reason"]
        else:
            failed[rec["key"]] = rec["reason"]
    order = lambda d: {k: d[k] for k in sorted(d, key=sequence_order)}  # noqa: E731
    return {"format": FORMAT, "source": source, "options": options, "sequences": order(sequences),
            "skipped": order(skipped), "failed": order(failed)}


def build_cameras(out: Path, options: dict) -> dict:
    """cameras.json: `h36m_tools.cameras.load_camera_set` layout (camera_ids, intrinsics per camera, extrinsics per
    subject and camera) at the videos' size. Where one camera's videos differ in size (1000x1002 vs 1000x1000), the
    most common parameters are given; each sequence file's `camera_params` holds the exact ones."""
    intr: dict[str, Counter] = {}
    extr: dict[str, dict] = {}
    for rec in iter_records(out):
        if rec.get("options") != options or rec["status"] != "done":
            continue
        for cam in rec["camera_params"]:
            k = {n: v for n, v in cam.items() if n not in ("id", "R", "t")}
            intr.setdefault(cam["id"], Counter())[json.dumps(k, sort_keys=True)] += 1
            extr.setdefault(rec["key"].split("/")[0], {})[cam["id"]] = {"R": cam["R"], "t": cam["t"]}
    ids = camera_order(intr)
    pick = {c: json.loads(min(intr[c].items(), key=lambda kv: (-kv[1], kv[0]))[0]) for c in ids}
    return {"camera_ids": ids, "intrinsics": pick,
            "extrinsics": {s: {c: extr[s][c] for c in camera_order(extr[s])}
                           for s in sorted(extr, key=subject_order)}}


def rebuild(out: Path, source: str, options: dict) -> dict:
    """Rebuild manifest.json and cameras.json from the records, under the folder lock; returns the manifest."""
    with locked(out):
        manifest = build_manifest(out, source, options)
        write_json_atomic(Path(out) / "cameras.json", build_cameras(out, options))
        write_json_atomic(Path(out) / "manifest.json", manifest)
    return manifest
