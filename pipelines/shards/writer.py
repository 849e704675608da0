"""`h36m shard`: an extracted dataset -> WebDataset tar shards of synchronised multi-view clips (`shards.sample`).

Writing is deterministic (fixed tar headers, sorted members, seeded clip shuffle), atomic (a temporary file +
rename, index last), parallel (with several workers the shard boundaries are planned from the clips' sizes before
any shard is written, so each process writes whole shards, byte-identical to one process) and resumable (a hidden
journal lists the shards already written, and the plan).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import sequence_key, subject_order
from h36m.pipelines.files import remove_stale_temporaries, sha256_file, temporary_name, write_atomic
from h36m.pipelines.shards.sample import (CAMERA_FIELDS, FORMAT, MAX_FRAMES, SHARD_RE, SPLITS, TAILS, Clip, clip_key,
                                          encode_clip, json_bytes)
from h36m.pipelines.workers import die_with_parent

# ----------------------------------------------------------------------------------------- tar writing

def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    """A tar header that depends on the name and size only (byte-identical shards)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _member_bytes(size: int) -> int:
    return tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


class _ShardWriter:
    """Writes one tar shard at `path` via its hidden temporary file (`files.temporary_name`); `close()` renames it
    and returns its index entry."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, temporary_name(path)
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        self.samples, self.bytes = 0, 0

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        for ext, data in members:
            self.tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
        self.samples += 1
        self.bytes += sum(_member_bytes(len(d)) for _, d in members)

    def close(self) -> dict:
        self.tar.close()
        os.replace(self.tmp, self.path)
        return {"name": self.path.name, "samples": self.samples, "bytes": self.path.stat().st_size,
                "sha256": sha256_file(self.path)}

    def discard(self) -> None:
        self.tar.close()
        self.tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------- planning clips

@dataclass(frozen=True)
class ShardConfig:
    """Options of `h36m shard`."""
    extracted: Path
    out: Path
    frames: int
    stride: int | None = None          # default: `frames` (clips do not overlap)
    split: str = "train"
    subjects: tuple[str, ...] | None = None   # default: the split's subjects
    shard_mb: float = 256.0
    shuffle_seed: int | None = 0       # None: clips in sequence order
    tail: str = "drop"                 # 'drop' the last frames that do not fill a clip, or 'pad' them
    workers: int = 1                   # processes writing shards (the output does not depend on it)

    def __post_init__(self):
        if not 1 <= self.frames <= MAX_FRAMES:     # readers refuse longer clips (and a clip is allocated whole)
            raise ValueError(f"--frames must be in 1..{MAX_FRAMES}, got {self.frames}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"--stride must be >= 1, got {self.stride}")
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.tail not in TAILS:
            raise ValueError(f"--tail must be one of {', '.join(TAILS)}, got {self.tail!r}")
        if self.shard_mb <= 0:
            raise ValueError(f"--shard-mb must be > 0, got {self.shard_mb}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")

    @property
    def step(self) -> int:
        return self.stride or self.frames

    @property
    def chosen_subjects(self) -> tuple[str, ...]:
        return tuple(self.subjects) if self.subjects else SPLITS[self.split]


@dataclass(frozen=True)
class ClipRef:
    """A clip to write: rows [start, start + real) of a sequence file, padded to F frames when real < F."""
    path: str
    start: int
    real: int


def clip_starts(rows: int, frames: int, stride: int, tail: str) -> list[tuple[int, int]]:
    """`(start row, real frames)` of the clips of a sequence of `rows` frames; never across the sequence's end.

    'drop': only full clips. 'pad': also one clip at the next stride position holding the last frames (padded by
    repeating the last frame) when full clips leave frames uncovered, including a sequence shorter than a clip.
    """
    out = [(s, frames) for s in range(0, rows - frames + 1, stride)]
    covered = out[-1][0] + frames if out else 0
    if tail == "pad" and covered < rows:
        s = out[-1][0] + stride if out else 0
        out.append((s, rows - s))
    return out


@dataclass
class ShardPlan:
    """What `write_shards` will write: the clips in shard order, the sequence files they come from, and the files
    left out because they cannot be read (path -> reason)."""
    clips: list[ClipRef]
    sequences: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    lengths: dict[str, int] = field(default_factory=dict)   # '{subject}/{sequence}' (clip keys' prefix) -> frames


def _check_sequence(path: Path):
    """The SequenceMeta of a sequence file whose footer, schema and row count are sound; H36MError otherwise."""
    import pyarrow.parquet as pq

    from h36m.pipelines.extract.dataset import read_meta

    if not path.is_file():
        raise H36MError(path, "listed in manifest.json but missing")
    try:
        meta = read_meta(path)
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as e:          # pyarrow raises assorted errors on damaged files
        raise H36MError(path, f"not a readable extracted sequence ({type(e).__name__}: {e})") from None
    if rows != meta.frames:
        raise H36MError(path, f"holds {rows} rows, its metadata says {meta.frames}")
    if len(meta.camera_params) != len(meta.cameras):
        raise H36MError(path, f"has camera_params for {len(meta.camera_params)} of {len(meta.cameras)} cameras")
    return meta


def plan_clips(cfg: ShardConfig) -> ShardPlan:
    """Every clip of the chosen subjects in shard order (seeded shuffle). Sequence files that cannot be read are left
    out and listed; no readable sequence at all is an H36MError."""
    from h36m.pipelines.extract.dataset import list_sequences

    try:
        paths = list_sequences(cfg.extracted, set(cfg.chosen_subjects))
    except FileNotFoundError:
        raise H36MError(cfg.extracted, "no manifest.json; is this the output of `h36m extract`?") from None
    except (ValueError, KeyError, TypeError) as e:
        raise H36MError(Path(cfg.extracted) / "manifest.json", f"unreadable manifest ({e})") from None
    if not paths:
        raise H36MError(cfg.extracted, f"no extracted sequences of subjects {','.join(cfg.chosen_subjects)}")
    clips, good, skipped, lengths, frames_of = [], [], {}, [], {}
    for p in paths:
        try:
            meta = _check_sequence(p)
        except H36MError as e:
            skipped[str(p)] = e.problem
            continue
        good.append(str(p))
        lengths.append(meta.frames)
        frames_of[sequence_key(meta.subject, meta.sequence)] = meta.frames
        clips += [ClipRef(str(p), s, n) for s, n in clip_starts(meta.frames, cfg.frames, cfg.step, cfg.tail)]
    if not good:
        raise H36MError(paths[0], f"no readable sequence ({skipped[str(paths[0])]})")
    if not clips:                              # --frames beyond what the data holds: say so
        raise H36MError(cfg.extracted, f"--frames {cfg.frames} is longer than the longest sequence "
                                       f"({max(lengths)} frames); use at most {max(lengths)}, or --tail pad")
    if cfg.shuffle_seed is not None:
        order = np.random.default_rng(cfg.shuffle_seed).permutation(len(clips))
        clips = [clips[i] for i in order]
    return ShardPlan(clips, good, skipped, dict(sorted(frames_of.items())))


# ----------------------------------------------------------------------------------------- reading clip rows

class _RowReader:
    """Reads row ranges of extracted sequence files by row group, keeping a few files open."""

    def __init__(self, keep: int = 8):
        self.files: OrderedDict[str, tuple] = OrderedDict()
        self.keep = keep

    def _open(self, path: str):
        if path in self.files:
            self.files.move_to_end(path)
            return self.files[path]
        import pyarrow.parquet as pq

        from h36m.pipelines.extract.dataset import read_meta

        meta = read_meta(path)
        pf = pq.ParquetFile(path)
        ends = np.cumsum([pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
        self.files[path] = (meta, pf, ends)
        if len(self.files) > self.keep:
            self.files.popitem(last=False)
        return self.files[path]

    def read(self, path: str, start: int, stop: int):
        """(SequenceMeta, SequenceArrays) of rows [start, stop) of a sequence file."""
        from h36m.pipelines.extract.dataset import SequenceArrays

        try:
            meta, pf, ends = self._open(path)
            first = int(np.searchsorted(ends, start, side="right"))
            last = int(np.searchsorted(ends, stop - 1, side="right"))
            table = pf.read_row_groups(list(range(first, last + 1)))
        except Exception as e:          # a file damaged after planning: name it, one line
            raise H36MError(path, f"cannot read rows {start}-{stop - 1} ({type(e).__name__}: {e})") from None
        offset = start - (int(ends[first - 1]) if first else 0)
        table = table.slice(offset, stop - start)
        T, V = table.num_rows, len(meta.cameras)
        if T != stop - start:
            raise H36MError(path, f"has {int(ends[-1]) if len(ends) else 0} rows, expected at least {stop}")

        def arr(name, shape):
            col = table.column(name).combine_chunks()
            return col.values.to_numpy(zero_copy_only=False).reshape((T,) + shape)

        return meta, SequenceArrays(
            frame=table.column("frame").to_numpy(), pose3d=arr("pose3d", (17, 3)),
            pose3d_cam=arr("pose3d_cam", (V, 17, 3)), pose2d=arr("pose2d", (V, 17, 2)),
            pose2d_crop=arr("pose2d_crop", (V, 17, 2)), box=arr("box", (V, 4)),
            jpeg=table.column("jpeg").to_pylist())


def make_clip(meta, arrays, frames: int) -> Clip:
    """A Clip from the rows of a sequence (SequenceMeta, SequenceArrays of `real` <= frames rows), padding the
    tail by repeating the last row."""
    real = len(arrays.frame)
    idx = np.minimum(np.arange(frames), real - 1)
    src = [int(f) for f in arrays.frame[idx]]
    clip_meta = {"format": FORMAT, "subject": meta.subject, "sequence": meta.sequence, "action": meta.action,
                 "cameras": list(meta.cameras), "frames": src, "real_frames": real, "fps": meta.fps,
                 "crop_size": int(meta.crop_size)}
    if meta.every != 1 or meta.pose3d_source != "world":     # optional fields, absent for the defaults
        clip_meta.update(every=int(meta.every), pose3d_source=meta.pose3d_source)
    cams = [{f: p[f] for f in CAMERA_FIELDS} for p in meta.camera_params]
    return Clip(key=clip_key(meta.subject, meta.sequence, src[0]), meta=clip_meta, cameras=cams,
                pose3d=arrays.pose3d[idx], pose3d_cam=arrays.pose3d_cam[idx].transpose(1, 0, 2, 3),
                pose2d=arrays.pose2d_crop[idx].transpose(1, 0, 2, 3), box=arrays.box[idx].transpose(1, 0, 2),
                jpeg=[[arrays.jpeg[i][v] for i in idx] for v in range(len(meta.cameras))])


def iter_clips(refs: list[ClipRef], frames: int) -> Iterator[Clip]:
    """The clips of `refs` in order, read by row group from their sequence files."""
    reader = _RowReader()
    for ref in refs:
        meta, arrays = reader.read(ref.path, ref.start, ref.start + ref.real)
        yield make_clip(meta, arrays, frames)


# ----------------------------------------------------------------------------------------- planning shards

def _rows(arrays, rows: slice):
    """The SequenceArrays of `rows` (a slice) of a sequence's arrays read without JPEGs; empty JPEG members."""
    from h36m.pipelines.extract.dataset import SequenceArrays

    cut = {k: getattr(arrays, k)[rows] for k in ("frame", "pose3d", "pose3d_cam", "pose2d", "pose2d_crop", "box")}
    views = arrays.pose3d_cam.shape[1]
    return SequenceArrays(**cut, jpeg=[[b""] * views for _ in range(len(cut["frame"]))])


def sequence_clip_bytes(path: str, spans: Sequence[tuple[int, int]], frames: int) -> list[int]:
    """The bytes in a shard (tar headers and padded data of its members) of each clip `(start row, real frames)` of
    a sequence file, F = `frames`. JPEG members are the extracted bytes unchanged, so only their lengths are read;
    the other members are encoded as `write_shard` encodes them. H36MError if the file cannot be read."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from h36m.pipelines.extract.dataset import read_sequence

    try:
        meta, arrays = read_sequence(path, with_jpeg=False)
        V = len(meta.cameras)
        parts = [pc.binary_length(batch.column(0).flatten()).to_numpy(zero_copy_only=False)
                 for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=["jpeg"])]
    except Exception as e:          # pyarrow raises assorted errors on damaged files
        raise H36MError(path, f"cannot read its JPEG column ({type(e).__name__}: {e})") from None
    lengths = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    if lengths.size != len(arrays.frame) * V:
        raise H36MError(path, f"holds {lengths.size} JPEGs, expected {len(arrays.frame)} x {V}")
    jpeg_bytes = (tarfile.BLOCKSIZE + -(-lengths // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE).reshape(-1, V)
    out = []
    for start, real in spans:
        clip = make_clip(meta, _rows(arrays, slice(start, start + real)), frames)
        rows = start + np.minimum(np.arange(frames), real - 1)
        out.append(sum(_member_bytes(len(d)) for ext, d in encode_clip(clip) if not ext.endswith(".jpg"))
                   + int(jpeg_bytes[rows].sum()))
    return out


def clip_bytes(refs: Sequence[ClipRef], frames: int, map_fn=map) -> list[int]:
    """The bytes in a shard of every clip of `refs`, in order (`sequence_clip_bytes` per sequence file, called
    through `map_fn`, e.g. a process pool's map)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for ref in refs:
        spans.setdefault(ref.path, []).append((ref.start, ref.real))
    paths = [p for p in spans if spans[p]]
    sizes: dict[tuple[str, int], int] = {}
    for path, got in zip(paths, map_fn(sequence_clip_bytes, paths, [spans[p] for p in paths],
                                       [frames] * len(paths))):
        sizes.update(((path, start), n) for (start, _), n in zip(spans[path], got))
    return [sizes[(r.path, r.start)] for r in refs]


def shard_bounds(sizes: Sequence[int], limit: float) -> list[int]:
    """Where shards start in a list of clips of `sizes` bytes (members with their tar headers), plus the end:
    `[0, b1, ..., len(sizes)]`, or `[0]` for no clips. A shard takes clips until the next would make its file
    (members + end-of-archive, at most tarfile.RECORDSIZE bytes) pass `limit` bytes; a larger clip gets its own."""
    bounds, used = [0], 0
    for i, n in enumerate(sizes):
        if i > bounds[-1] and used + n + tarfile.RECORDSIZE > limit:
            bounds.append(i)
            used = 0
        used += n
    if sizes:
        bounds.append(len(sizes))
    return bounds


# ----------------------------------------------------------------------------------------- writing shards

@dataclass(frozen=True)
class ShardTask:
    """One shard to write: the plan's clips [first, first + len(clips)), whose members take `member_bytes`."""
    path: Path
    clips: list[ClipRef]
    first: int
    member_bytes: int
    frames: int


def write_shard(task: ShardTask, on_clip: Callable[[], None] | None = None) -> dict:
    """Write one shard through its temporary file (removed on any error, `on_clip` raising included; `on_clip` is
    called after each clip). Returns its index entry plus `clips`: [first, end) in the plan. H36MError if a
    sequence file cannot be read or the clips do not take the planned bytes."""
    writer = _ShardWriter(task.path)
    try:
        for clip in iter_clips(task.clips, task.frames):
            writer.add(clip.key, encode_clip(clip))
            if on_clip:
                on_clip()
        if writer.bytes != task.member_bytes:
            raise H36MError(task.path, f"its clips take {writer.bytes} bytes, {task.member_bytes} planned (an "
                                       "extracted file changed during the run?)")
        entry = writer.close()
    except BaseException:
        writer.discard()
        raise
    return {**entry, "clips": [task.first, task.first + len(task.clips)]}


def write_greedy(refs: list[ClipRef], first: int, number: int, frames: int, out: Path, split: str, limit: float,
                 on_shard: Callable[[dict], None], on_clips: Callable[[int], None]) -> None:
    """Write clips refs[first:] into shards numbered from `number` in one process, closing a shard when the next
    clip would pass `limit` (the rule of `shard_bounds`, applied as the clips are encoded: no size pass needed).
    `on_shard(entry)` after each shard (entry with `clips`), `on_clips(n)` after each clip (n written so far)."""
    writer, start = None, first
    try:
        for i, clip in enumerate(iter_clips(refs[first:], frames), start=first):
            members = encode_clip(clip)
            size = sum(_member_bytes(len(d)) for _, d in members)
            if writer is not None and writer.samples and writer.bytes + size + tarfile.RECORDSIZE > limit:
                entry, writer = writer.close(), None
                on_shard({**entry, "clips": [start, i]})
                start, number = i, number + 1
            if writer is None:
                writer = _ShardWriter(out / _shard_name(split, number))
            writer.add(clip.key, members)
            on_clips(i + 1 - first)
        if writer is not None:
            entry, writer = writer.close(), None
            on_shard({**entry, "clips": [start, len(refs)]})
    except BaseException:
        if writer is not None:
            writer.discard()
        raise


@dataclass(frozen=True)
class _Failed:
    """An H36MError crossing from a worker process (H36MError itself does not survive pickling)."""
    path: str
    problem: str


class _Stopped(Exception):
    """The parent asked its workers to stop."""


_worker_state: tuple | None = None     # in a pool worker: (clip counter, stop event)


def _init_worker(parent: int, counter, stop) -> None:
    global _worker_state
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C: the parent stops the workers (no worker tracebacks)
    _worker_state = (counter, stop)


def _count_clip() -> None:
    counter, stop = _worker_state
    with counter.get_lock():
        counter.value += 1
    if stop.is_set():
        raise _Stopped()


def _in_worker(fn, *args):
    try:
        return fn(*args)
    except H36MError as e:
        return _Failed(e.path, e.problem)


def _worker_clip_bytes(path, spans, frames):
    return _in_worker(sequence_clip_bytes, path, spans, frames)


def _worker_write_shard(task: ShardTask):
    return _in_worker(write_shard, task, _count_clip)


class _Workers:
    """The writer's processes: `n` forked workers that die with this process (`workers.die_with_parent`), or, for
    n = 1, calls in this process. Use as a context manager; `stop()` ends their work at the next clip."""

    def __init__(self, n: int):
        self.pool = None
        if n > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("fork")
            self.counter, self.stop_event = ctx.Value("q", 0), ctx.Event()
            self.pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                                            initargs=(os.getpid(), self.counter, self.stop_event))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def stop(self) -> None:
        if self.pool:
            self.stop_event.set()
            self.pool.shutdown(wait=True, cancel_futures=True)

    def clip_bytes(self, refs: list[ClipRef], frames: int) -> list[int]:
        if not self.pool:
            return clip_bytes(refs, frames)

        def pool_map(fn, *iterables):
            for got in self.pool.map(_worker_clip_bytes, *iterables):
                if isinstance(got, _Failed):
                    raise H36MError(got.path, got.problem)
                yield got

        return clip_bytes(refs, frames, pool_map)

    def write(self, tasks: list[ShardTask], on_shard: Callable[[dict], None],
              on_clips: Callable[[int], None]) -> list[H36MError]:
        """Write the shards of `tasks`; `on_shard(entry)` in this process after each one written, `on_clips(n)`
        with the clips written so far. Returns the errors of the shards that failed (the others are written)."""
        errors: list[H36MError] = []
        if not self.pool:
            count = 0

            def clip():
                nonlocal count
                count += 1
                on_clips(count)

            for t in tasks:
                try:
                    on_shard(write_shard(t, clip))
                except H36MError as e:
                    errors.append(e)
            return errors
        from concurrent.futures import FIRST_COMPLETED, wait

        futures = {self.pool.submit(_worker_write_shard, t): t for t in tasks}
        pending, reported = set(futures), 0
        while pending:
            ready, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            if self.counter.value != reported:
                reported = self.counter.value
                on_clips(reported)
            for f in sorted(ready, key=lambda f: futures[f].first):
                try:
                    got = f.result()
                except Exception as e:          # a worker died (killed, out of memory)
                    got = _Failed(str(futures[f].path), f"worker process failed ({type(e).__name__}: {e})")
                if isinstance(got, _Failed):
                    errors.append(H36MError(got.path, got.problem))
                else:
                    on_shard(got)
        return errors


@dataclass
class ShardProgress:
    """Progress event: `clips` of `total` written so far; `shard` is the name of a shard just finished, if any."""
    clips: int
    total: int
    shard: str | None = None


@dataclass
class ShardResult:
    split: str
    index: Path
    shards: list[dict]
    samples: int
    sequences: int
    resumed_shards: int = 0
    removed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # unreadable sequence file -> reason


def index_path(out: str | Path, split: str) -> Path:
    return Path(out) / f"{split}-index.json"


def _fingerprint(cfg: ShardConfig, sequences: list[str]) -> str:
    h = hashlib.sha256(json_bytes({"format": FORMAT, "frames": cfg.frames, "stride": cfg.step, "tail": cfg.tail,
                              "seed": cfg.shuffle_seed, "mb": cfg.shard_mb, "split": cfg.split,
                              "subjects": list(cfg.chosen_subjects), "journal": 2}))
    for s in sequences:
        st = os.stat(s)
        h.update(f"{s}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _shard_name(split: str, n: int) -> str:
    return f"{split}-{n:06d}.tar"


def _read_journal(journal: Path, fingerprint: str, split: str) -> tuple[list | None, dict[str, dict]]:
    """What a journal written with `fingerprint` says: the shard layout (`[first clip, end clip, member bytes]` per
    shard; None when one process wrote shards as it went) and the entries of the finished shards still present at
    their recorded size (with no layout: those that continue each other from clip 0). (None, {}) otherwise."""
    try:
        j = json.loads(journal.read_text())
        if j.get("fingerprint") != fingerprint:
            return None, {}
        layout = None if j["layout"] is None else [[int(a), int(b), n] for a, b, n in j["layout"]]
        done, end = {}, 0
        for i, e in enumerate(j["shards"]):
            p = journal.parent / e["name"]
            if not (p.is_file() and p.stat().st_size == e["bytes"]):
                continue
            if layout is not None:
                n = SHARD_RE.match(e["name"])
                if n and int(n.group("n")) < len(layout) and layout[int(n.group("n"))][:2] == e["clips"]:
                    done[e["name"]] = e
            elif e["name"] == _shard_name(split, i) and e["clips"][0] == end:
                done[e["name"]], end = e, e["clips"][1]
            else:
                break
        return layout, done
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None, {}


def _remove_temporaries(out: Path, split: str) -> None:
    """Remove the split's temporary files (half-written shards, journal, index) left by a killed run."""
    for tmp in out.glob(f".{split}-*.tmp"):
        tmp.unlink(missing_ok=True)


def write_shards(cfg: ShardConfig, on_progress: Callable[[ShardProgress], None] | None = None,
                 plan: ShardPlan | None = None) -> ShardResult:
    """Write the split's shards and index under `cfg.out` (`plan`: from plan_clips(cfg), computed if None) with
    `cfg.workers` processes; resumes from a journal left by a killed run.

    One process writes the clips in order, closing each shard when the next clip would not fit (`write_greedy`).
    Several first compute every clip's size in parallel (reading the JPEG lengths: `sequence_clip_bytes`), plan
    the same boundaries from them (`shard_bounds`) and then write whole shards in any order; a shard that fails
    there (a sequence file damaged after planning) does not stop the others: they are written and journalled,
    then the first error is raised (H36MError) and no index is written. The journal records the finished shards
    (and the plan, once made), so a run killed with any number of workers resumes with any number.
    """
    plan = plan or plan_clips(cfg)
    refs, sequences = plan.clips, plan.sequences
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, f"{cfg.split}-*")          # a killed run's half shards, journal, index
    journal = out / f".{cfg.split}-journal.json"
    fp = _fingerprint(cfg, sequences)
    layout, done = _read_journal(journal, fp, cfg.split)
    resumed = len(done)

    def save_journal():
        write_atomic(journal, json.dumps({"fingerprint": fp, "layout": layout,
                                          "shards": [done[k] for k in sorted(done)]}))

    resumed_clips, written, limit = sum(e["samples"] for e in done.values()), 0, cfg.shard_mb * 1e6

    def on_clips(n: int):
        nonlocal written
        written = n
        if on_progress:
            on_progress(ShardProgress(resumed_clips + n, len(refs)))

    def finished(entry: dict):
        done[entry["name"]] = entry
        save_journal()
        if on_progress:
            on_progress(ShardProgress(resumed_clips + written, len(refs), entry["name"]))

    errors: list[H36MError] = []
    with _Workers(min(cfg.workers, max(1, len(refs)))) as workers:
        try:
            if on_progress:
                on_progress(ShardProgress(resumed_clips, len(refs)))
            pos = max((e["clips"][1] for e in done.values()), default=0)     # with no layout: done is a prefix
            if layout is None and not workers.pool:
                write_greedy(refs, pos, len(done), cfg.frames, out, cfg.split, limit, finished, on_clips)
            else:
                if layout is None:      # plan the rest: clip sizes (in parallel), then boundaries
                    sizes = workers.clip_bytes(refs[pos:], cfg.frames)
                    bounds = [pos + b for b in shard_bounds(sizes, limit)]
                    layout = [[a, b, None] for a, b in (done[k]["clips"] for k in sorted(done))] + \
                        [[a, b, sum(sizes[a - pos:b - pos])] for a, b in zip(bounds, bounds[1:])]
                    save_journal()
                tasks = [ShardTask(out / _shard_name(cfg.split, i), refs[a:b], a, n, cfg.frames)
                         for i, (a, b, n) in enumerate(layout) if _shard_name(cfg.split, i) not in done]
                errors = workers.write(tasks, finished, on_clips)
        except BaseException as e:     # killed, a full disk, a bad sequence file: no half shard left behind
            workers.stop()
            _remove_temporaries(out, cfg.split)
            if isinstance(e, OSError):  # tarfile's writes name no file: name the shards' folder
                raise H36MError(out, f"cannot write shards ({e.strerror or e})") from None
            raise
    if errors:
        raise errors[0]
    shards = [{k: done[name][k] for k in ("name", "samples", "bytes", "sha256")} for name in sorted(done)]
    index = {"format": FORMAT, "split": cfg.split, "frames": cfg.frames, "stride": cfg.step, "tail": cfg.tail,
             "shuffle_seed": cfg.shuffle_seed, "subjects": sorted({Path(s).parent.name for s in sequences},
                                                                  key=subject_order),
             "sequences": len(sequences), "sequence_frames": plan.lengths,
             "samples": sum(e["samples"] for e in shards), "shards": shards}
    ipath = index_path(out, cfg.split)
    write_atomic(ipath, json.dumps(index, indent=1) + "\n")
    journal.unlink(missing_ok=True)
    names = {e["name"] for e in shards}
    removed = []
    for p in sorted(out.glob(f"{cfg.split}-*.tar")):
        m = SHARD_RE.match(p.name)
        if m and m.group("split") == cfg.split and p.name not in names:
            p.unlink()      # a stale shard of an earlier run with other options
            removed.append(p.name)
    return ShardResult(cfg.split, ipath, shards, index["samples"], len(sequences), resumed, removed, plan.skipped)
