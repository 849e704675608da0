"""`h36m shard`: an extracted dataset -> WebDataset tar shards of synchronised multi-view clips (`shards.sample`).

Writing is deterministic (fixed tar headers, sorted members, seeded clip shuffle), atomic (a temporary file +
rename, index last) and resumable (a hidden journal lists the shards already written).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import subject_order
from h36m.pipelines.files import sha256_file, temporary_name, write_atomic
from h36m.pipelines.shards.sample import (CAMERA_FIELDS, FORMAT, SHARD_RE, SPLITS, TAILS, Clip, clip_key,
                                          encode_clip, json_bytes)

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

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"--frames must be >= 1, got {self.frames}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"--stride must be >= 1, got {self.stride}")
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.tail not in TAILS:
            raise ValueError(f"--tail must be one of {', '.join(TAILS)}, got {self.tail!r}")
        if self.shard_mb <= 0:
            raise ValueError(f"--shard-mb must be > 0, got {self.shard_mb}")

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
    clips, good, skipped = [], [], {}
    for p in paths:
        try:
            meta = _check_sequence(p)
        except H36MError as e:
            skipped[str(p)] = e.problem
            continue
        good.append(str(p))
        clips += [ClipRef(str(p), s, n) for s, n in clip_starts(meta.frames, cfg.frames, cfg.step, cfg.tail)]
    if not good:
        raise H36MError(paths[0], f"no readable sequence ({skipped[str(paths[0])]})")
    if cfg.shuffle_seed is not None:
        order = np.random.default_rng(cfg.shuffle_seed).permutation(len(clips))
        clips = [clips[i] for i in order]
    return ShardPlan(clips, good, skipped)


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


# ----------------------------------------------------------------------------------------- writing shards

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
                              "subjects": list(cfg.chosen_subjects)}))
    for s in sequences:
        st = os.stat(s)
        h.update(f"{s}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _write_clips(cfg: ShardConfig, refs: list[ClipRef], pos: int, done: list[dict], save_journal, on_progress,
                 out: Path, limit: float) -> None:
    """Write clips refs[pos:] into shards, appending each finished shard's entry to `done` (journalled)."""
    writer = None
    if on_progress:
        on_progress(ShardProgress(pos, len(refs)))
    for i, clip in enumerate(iter_clips(refs[pos:], cfg.frames), start=pos):
        members = encode_clip(clip)
        size = sum(_member_bytes(len(d)) for _, d in members)
        if writer is not None and writer.samples and writer.bytes + size + tarfile.RECORDSIZE > limit:
            done.append({**writer.close(), "clips_end": i})
            save_journal()
            writer = None
            if on_progress:
                on_progress(ShardProgress(i, len(refs), done[-1]["name"]))
        if writer is None:
            writer = _ShardWriter(out / f"{cfg.split}-{len(done):06d}.tar")
        writer.add(clip.key, members)
        if on_progress:
            on_progress(ShardProgress(i + 1, len(refs)))
    if writer is not None:
        done.append({**writer.close(), "clips_end": len(refs)})
        save_journal()
        if on_progress:
            on_progress(ShardProgress(len(refs), len(refs), done[-1]["name"]))


def write_shards(cfg: ShardConfig, on_progress: Callable[[ShardProgress], None] | None = None,
                 plan: ShardPlan | None = None) -> ShardResult:
    """Write the split's shards and index under `cfg.out` (`plan`: from plan_clips(cfg), computed if None);
    resumes from a journal left by a killed run."""
    plan = plan or plan_clips(cfg)
    refs, sequences = plan.clips, plan.sequences
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / f".{cfg.split}-journal.json"
    fp = _fingerprint(cfg, sequences)
    done: list[dict] = []
    if journal.is_file():
        try:
            j = json.loads(journal.read_text())
            if j.get("fingerprint") == fp:
                for e in j["shards"]:
                    p = out / e["name"]
                    if not p.is_file() or p.stat().st_size != e["bytes"]:
                        break
                    done.append(e)
        except (ValueError, KeyError, TypeError):
            done = []
    resumed = len(done)
    pos = done[-1]["clips_end"] if done else 0
    limit = cfg.shard_mb * 1e6

    def save_journal():
        write_atomic(journal, json.dumps({"fingerprint": fp, "shards": done}))

    try:
        _write_clips(cfg, refs, pos, done, save_journal, on_progress, out, limit)
    except BaseException:              # killed, a full disk, a bad sequence file: no half shard left behind
        for tmp in out.glob(f".{cfg.split}-*.tar.*.tmp"):
            tmp.unlink(missing_ok=True)
        raise
    shards = [{k: e[k] for k in ("name", "samples", "bytes", "sha256")} for e in done]
    index = {"format": FORMAT, "split": cfg.split, "frames": cfg.frames, "stride": cfg.step, "tail": cfg.tail,
             "shuffle_seed": cfg.shuffle_seed, "subjects": sorted({Path(s).parent.name for s in sequences},
                                                                  key=subject_order),
             "sequences": len(sequences), "samples": sum(e["samples"] for e in shards), "shards": shards}
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
