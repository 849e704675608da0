"""`h36m verify`: read every sample of a set of shards and list every problem (schema, shapes, values, JPEGs,
keys, the index's counts, sizes and checksums). Nothing is fixed; the report is the output."""
from __future__ import annotations

import json
import math
import re
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from h36m.pipelines.files import sha256_file
from h36m.pipelines.shards.sample import (ARRAYS, CAMERA_FIELDS, FORMAT, MAX_VIEWS, clip_key, decode_images,
                                          decode_sample, iter_tar_samples)
from h36m.pipelines.shards.urls import index_for
from h36m.pipelines.workers import die_with_parent

KEY_RE = re.compile(r"^S\d+/[^./\s]+/\d{6}$")
_KNOWN = re.compile(r"^(meta\.json|cameras\.json|(" + "|".join(ARRAYS) + r")\.npy|v\d+_\d{4}\.jpg)$")


@dataclass(frozen=True)
class Problem:
    path: str
    key: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.message}" if self.key else f"{self.path}: {self.message}"


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyProgress:
    """Event: shard `path` checked (`done` of `total`), with its sample count and problems."""
    path: str
    done: int
    total: int
    samples: int
    problems: int


def check_clip_values(clip) -> list[str]:
    """Problems of a decoded clip's content (not its shapes): key, meta fields, finite values, boxes."""
    out = []
    meta = clip.meta
    V, F = clip.views, clip.frames
    if not KEY_RE.match(clip.key):
        out.append(f"key {clip.key!r} is not '{{subject}}/{{sequence}}/{{start:06d}}' without dots")
    elif clip.key != clip_key(meta["subject"], meta["sequence"], meta["frames"][0]):
        out.append(f"key does not match meta.json ({meta['subject']}, {meta['sequence']!r}, frame {meta['frames'][0]})")
    if V > MAX_VIEWS:
        out.append(f"{V} views, at most {MAX_VIEWS}")
    if not 1 <= int(meta["real_frames"]) <= F:
        out.append(f"real_frames {meta['real_frames']} outside 1..{F}")
    frames = np.asarray(meta["frames"])
    every = meta.get("every", 1)          # optional: clips of `h36m extract --every N` step N source frames
    if not isinstance(every, int) or every < 1:
        out.append(f"every {every!r} is not a positive integer")
        every = 1
    if np.any(np.diff(frames) < 0) or np.any(np.diff(frames[: int(meta["real_frames"])]) != every):
        out.append("frames are not consecutive source frames" if every == 1 else
                   f"frames are not consecutive kept frames (every {every}-th source frame)")
    if every != 1 and not math.isclose(float(meta["fps"]), 50.0 / every):
        out.append(f"fps {meta['fps']} is not 50 / every ({every})")
    if [c["id"] for c in clip.cameras] != [str(c) for c in meta["cameras"]]:
        out.append("cameras.json ids differ from meta.json cameras")
    for name in ARRAYS:
        a = getattr(clip, name)
        if not np.isfinite(a).all():
            out.append(f"{name}.npy holds {int((~np.isfinite(a)).sum())} non-finite values")
    for c in clip.cameras:
        bad = [f for f in CAMERA_FIELDS[1:] if not _finite_numbers(c[f])]
        if bad:
            out.append(f"cameras.json camera {c['id']!r}: {', '.join(bad)} not finite numbers")
            break
    b = clip.box
    if np.isfinite(b).all() and not ((b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1])).all():
        out.append("box.npy has boxes with x1 <= x0 or y1 <= y0")
    z = clip.pose3d_cam[..., 2]
    if np.isfinite(z).all() and (z <= 0).any():
        out.append("pose3d_cam.npy has joints at or behind the camera (Z <= 0)")
    return out


def _finite_numbers(value) -> bool:
    """Whether a JSON value is a finite number or a (nested) list of them."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        return False
    return a.dtype == np.float64 and bool(np.isfinite(a).all())


def verify_shard(path: str | Path, decode: bool = True) -> tuple[int, list[Problem], list[str]]:
    """(samples read, problems, keys) of one shard file. Whatever the shard holds, its problems are returned, never
    raised: one hostile shard costs its own verdict only."""
    try:
        return _verify_shard(Path(path), decode)
    except Exception as e:          # not foreseen below: still a verdict on this shard, and the others go on
        return 0, [Problem(str(path), None, f"cannot be checked ({type(e).__name__}: {str(e)[:200]})")], []


def _verify_shard(path: Path, decode: bool) -> tuple[int, list[Problem], list[str]]:
    problems: list[Problem] = []
    keys: list[str] = []

    def problem(key, msg):
        problems.append(Problem(str(path), key, msg))

    if not path.is_file():
        problem(None, "shard not found")
        return 0, problems, keys
    seen = set()
    try:
        for raw in iter_tar_samples(path):
            key = raw["__key__"]
            keys.append(key)
            if key in seen:
                problem(key, "duplicate key in this shard (members of a sample must be contiguous)")
            seen.add(key)
            extra = sorted(k for k in raw if not k.startswith("__") and not _KNOWN.match(k))
            if extra:
                problem(key, f"unexpected members {extra[:5]}")
            try:
                clip = decode_sample(raw)
                if decode:
                    decode_images(clip)
            except (ValueError, TypeError, KeyError, IndexError, RecursionError) as e:
                problem(key, str(e))
                continue
            for msg in check_clip_values(clip):
                problem(key, msg)
    except (tarfile.TarError, OSError, EOFError) as e:
        why = e.args[0] if e.args else e
        problem(None, f"truncated or corrupt tar after {len(keys)} samples ({type(e).__name__}: {why})")
        return len(keys), problems, keys
    if not _has_end_marker(path):
        problem(None, f"truncated tar after {len(keys)} samples (no end-of-archive blocks)")
    return len(keys), problems, keys


def _has_end_marker(path: Path) -> bool:
    """Whether a tar file ends in whole 512-byte blocks with the two zero blocks that close an archive."""
    size = path.stat().st_size
    if size % tarfile.BLOCKSIZE or size < 2 * tarfile.BLOCKSIZE:
        return False
    with open(path, "rb") as fh:
        fh.seek(size - 2 * tarfile.BLOCKSIZE)
        return not any(fh.read())


def _check_index(ipath: Path, checked: dict[str, int], report: VerifyReport) -> None:
    """Compare an index with the shards checked from it (name -> samples read), and its own consistency."""
    def problem(msg, where=ipath):
        report.problems.append(Problem(str(where), None, msg))

    try:
        index = json.loads(ipath.read_text())
        entries = {e["name"]: e for e in index["shards"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem(f"unreadable index ({type(e).__name__}: {e})")
        return
    if index.get("format") != FORMAT:
        problem(f"format {index.get('format')}, this tool knows {FORMAT}")
    if index.get("samples") != sum(int(e.get("samples", 0)) for e in entries.values()):
        problem(f"total samples {index.get('samples')} != the sum over its shards "
                f"{sum(int(e.get('samples', 0)) for e in entries.values())}")
    for name, e in entries.items():
        shard = ipath.parent / name
        if not shard.is_file():
            problem(f"lists {name}, which is missing")
            continue
        if name not in checked:
            continue
        if checked[name] != e.get("samples"):
            problem(f"{checked[name]} samples, the index lists {e.get('samples')}", shard)
        size = shard.stat().st_size
        if size != e.get("bytes"):
            problem(f"{size} bytes, the index lists {e.get('bytes')}", shard)
        if sha256_file(shard) != e.get("sha256"):
            problem("sha256 differs from the index", shard)
    for name in sorted(set(checked) - set(entries)):
        problem(f"not listed in {ipath.name}", ipath.parent / name)


def verify(paths: list[Path], decode: bool = True, workers: int = 1,
           on_progress: Callable[[VerifyProgress], None] | None = None) -> VerifyReport:
    """Check every sample of every shard in `paths`, then each shard against its index (`{split}-index.json`)."""
    report = VerifyReport()
    by_index: dict[Path, dict[str, int]] = {}
    pool = ProcessPoolExecutor(workers, initializer=die_with_parent) if workers > 1 and len(paths) > 1 else None
    results = (pool.map if pool else map)(verify_shard, paths, [decode] * len(paths))
    try:
        _collect(paths, results, report, on_progress, by_index)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    for ipath, checked in by_index.items():
        _check_index(ipath, checked, report)
    return report


def _collect(paths, results, report: VerifyReport, on_progress, by_index) -> None:
    first_seen: dict[str, str] = {}
    for i, (path, (n, problems, keys)) in enumerate(zip(paths, results)):
        report.shards += 1
        report.samples += n
        report.problems += problems
        for k in keys:
            if k in first_seen and first_seen[k] != str(path):
                report.problems.append(Problem(str(path), k, f"key also in {first_seen[k]}"))
            first_seen.setdefault(k, str(path))
        ipath = index_for(path)
        if ipath is None:
            report.problems.append(Problem(str(path), None, "name is not {split}-NNNNNN.tar; no index to check"))
        elif not ipath.is_file():
            report.problems.append(Problem(str(path), None, f"no {ipath.name} beside it"))
        else:
            by_index.setdefault(ipath, {})[path.name] = n
        if on_progress:
            on_progress(VerifyProgress(str(path), i + 1, len(paths), n, len(problems)))

