"""`h36m shard`: WebDataset tar shards of synchronised multi-view clips, and the shard format itself.

One sample = one clip of F consecutive frames of one sequence seen by its V cameras (see docs/shards.md):

    {key}.box.npy          float32 (V, F, 4)      crop box x0, y0, x1, y1, full-frame px
    {key}.cameras.json     per view: id, fx, fy, cx, cy, k1, k2, k3, p1, p2, width, height, R, t (mm)
    {key}.meta.json        format, subject, sequence, action, cameras, frames, real_frames, fps, crop_size
    {key}.pose2d.npy       float32 (V, F, 17, 2)  crop px
    {key}.pose3d.npy       float32 (F, 17, 3)     world mm
    {key}.pose3d_cam.npy   float32 (V, F, 17, 3)  camera mm
    {key}.v{view}_{t:04d}.jpg                     crop of `view` at clip frame t: the extracted JPEG bytes

with key `{subject}/{sequence with '_' for ' '}/{first source frame:06d}` (no dots: WebDataset splits a member
name into key and extension at the first dot after the last '/'). Shards are `{split}-{n:06d}.tar` plus
`{split}-index.json`. Writing is deterministic (fixed tar headers, sorted members, seeded clip shuffle), atomic
(`.tmp` + rename, index last) and resumable (a hidden journal lists the shards already written).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import re
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from h36m_tools.errors import H36MError
from h36m_tools.names import TEST_SUBJECTS, TRAIN_SUBJECTS

FORMAT = 1
SPLITS = {"train": TRAIN_SUBJECTS, "test": TEST_SUBJECTS}
TAILS = ("drop", "pad")
MAX_VIEWS = 4
#: Members of a sample other than the JPEGs, with their dtype and shape (in terms of V views and F frames).
ARRAYS = {"pose3d": ("F", 17, 3), "pose3d_cam": ("V", "F", 17, 3), "pose2d": ("V", "F", 17, 2), "box": ("V", "F", 4)}
META_FIELDS = ("format", "subject", "sequence", "action", "cameras", "frames", "real_frames", "fps", "crop_size")
CAMERA_FIELDS = ("id", "fx", "fy", "cx", "cy", "k1", "k2", "k3", "p1", "p2", "width", "height", "R", "t")
SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<n>\d{6})\.tar$")
_JPEG_RE = re.compile(r"^v(\d+)_(\d{4})\.jpg$")


# ----------------------------------------------------------------------------------------- the sample format

@dataclass
class Clip:
    """One sample: F frames of V views. Arrays as in the shard; `images` only after decoding the JPEGs."""
    key: str
    meta: dict
    cameras: list[dict]        # V dicts: CAMERA_FIELDS
    pose3d: np.ndarray         # (F, 17, 3) world mm
    pose3d_cam: np.ndarray     # (V, F, 17, 3) camera mm
    pose2d: np.ndarray         # (V, F, 17, 2) crop px
    box: np.ndarray            # (V, F, 4) x0, y0, x1, y1 full-frame px
    jpeg: list[list[bytes]]    # V lists of F JPEG byte strings (bytes-like: memoryviews of a mapped shard)
    images: np.ndarray | None = None   # decoded crops, uint8 RGB: (V, F, H, W, 3) here, (V, F, 3, H, W) in the loader
    source: str = ""                   # the shard (URL) it was read from

    @property
    def views(self) -> int:
        return len(self.cameras)

    @property
    def frames(self) -> int:
        return int(self.pose3d.shape[0])


def clip_key(subject: str, sequence: str, start: int) -> str:
    """`('S1', 'Directions 1', 128)` -> `'S1/Directions_1/000128'`."""
    return f"{subject}/{sequence.replace(' ', '_')}/{int(start):06d}"


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a, np.float32), allow_pickle=False)
    return buf.getvalue()


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def encode_clip(clip: Clip) -> list[tuple[str, bytes]]:
    """The tar members of a clip, `(extension, bytes)` sorted by extension (the order they are written in)."""
    members = {"meta.json": _json(clip.meta), "cameras.json": _json(clip.cameras)}
    for name in ARRAYS:
        members[f"{name}.npy"] = _npy(getattr(clip, name))
    for v, frames in enumerate(clip.jpeg):
        for t, data in enumerate(frames):
            members[f"v{v}_{t:04d}.jpg"] = bytes(data)
    return sorted(members.items())


#: The header `np.save` writes for a C-order little-endian float32 array (format 1.0): read without numpy's
#: literal_eval of it, which costs more than the rest of a sample's arrays.
_NPY_F4 = re.compile(rb"\x93NUMPY\x01\x00..\{'descr': '<f4', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \} *\n",
                     re.DOTALL)


def _load_npy(data: bytes, name: str) -> np.ndarray:
    m = _NPY_F4.match(data)
    if m and m.end() == 10 + int.from_bytes(data[8:10], "little"):
        shape = tuple(int(d) for d in m.group(1).split(b",") if d.strip())
        if len(data) - m.end() == 4 * math.prod(shape):
            return np.frombuffer(data, np.float32, offset=m.end()).reshape(shape).copy()
    try:                                     # anything else (and every damaged file): numpy's own reader
        a = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # numpy raises ValueError / EOFError / UnicodeError on damaged headers
        raise ValueError(f"{name}.npy: not a readable .npy ({type(e).__name__}: {e})") from None
    if a.dtype != np.float32:
        raise ValueError(f"{name}.npy: dtype {a.dtype}, expected float32")
    return a


def decode_sample(sample: dict) -> Clip:
    """A raw WebDataset sample (`__key__` and extension -> bytes) -> Clip with JPEG bytes (not decoded).

    Checks the schema and every shape; raises ValueError naming the member and the problem.
    """
    key = sample.get("__key__", "?")
    for ext in ("meta.json", "cameras.json") + tuple(f"{n}.npy" for n in ARRAYS):
        if ext not in sample:
            raise ValueError(f"missing member {ext}")
    try:
        meta = json.loads(bytes(sample["meta.json"]))
        cameras = json.loads(bytes(sample["cameras.json"]))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable JSON ({e})") from None
    if not isinstance(meta, dict) or [f for f in META_FIELDS if f not in meta]:
        raise ValueError(f"meta.json lacks {[f for f in META_FIELDS if f not in meta] if isinstance(meta, dict) else META_FIELDS}")
    if meta["format"] != FORMAT:
        raise ValueError(f"meta.json format {meta['format']}, this reader knows {FORMAT}")
    V, F = len(meta["cameras"]), len(meta["frames"])
    if V < 1 or F < 1:
        raise ValueError(f"meta.json has {V} cameras and {F} frames")
    if not isinstance(cameras, list) or len(cameras) != V or any(
            not isinstance(c, dict) or any(f not in c for f in CAMERA_FIELDS) for c in cameras):
        raise ValueError(f"cameras.json must list {V} cameras with {', '.join(CAMERA_FIELDS)}")
    arrays = {}
    for name, shape in ARRAYS.items():
        a = _load_npy(sample[f"{name}.npy"], name)
        want = tuple({"V": V, "F": F}.get(s, s) for s in shape)
        if a.shape != want:
            raise ValueError(f"{name}.npy has shape {a.shape}, expected {want}")
        arrays[name] = a
    names = jpeg_names(V, F)
    jpeg = [[sample.get(n) for n in row] for row in names]
    if sum(1 for ext in sample if ext.endswith(".jpg")) != V * F:       # more: look for views or frames too many
        for ext in sample:
            m = _JPEG_RE.match(ext)
            if m and (int(m.group(1)) >= V or int(m.group(2)) >= F):
                raise ValueError(f"unexpected member {ext} (clip has {V} views, {F} frames)")
    missing = [n for row, got in zip(names, jpeg) for n, data in zip(row, got) if data is None]
    if missing:
        raise ValueError(f"missing {len(missing)} JPEG members (first {missing[0]})")
    return Clip(key=key, meta=meta, cameras=cameras, jpeg=jpeg, source=str(sample.get("__url__", "")), **arrays)


@functools.lru_cache(maxsize=16)
def jpeg_names(views: int, frames: int) -> tuple[tuple[str, ...], ...]:
    """The JPEG member extensions of a clip, `names[v][t] == f"v{v}_{t:04d}.jpg"`."""
    return tuple(tuple(f"v{v}_{t:04d}.jpg" for t in range(frames)) for v in range(views))


def decode_jpeg(data: bytes, name: str, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """One crop's JPEG bytes -> (size, size, 3) uint8 RGB, decoded straight into `out` (a C-contiguous (size, size, 3)
    uint8 array) when given; ValueError naming the member `name` if the bytes do not decode, or decode to another
    size. libjpeg-turbo through simplejpeg: the same pixels as cv2.imdecode, about 20 % faster, and no temporary."""
    import simplejpeg

    try:
        img = simplejpeg.decode_jpeg(data, "RGB", buffer=out)
    except ValueError as e:
        try:
            h, w = simplejpeg.decode_jpeg_header(data)[:2]
        except ValueError:
            h = w = size
        if (h, w) != (size, size):
            raise ValueError(f"{name}: {w}x{h}, expected {size}x{size}") from None
        raise ValueError(f"{name}: not a decodable JPEG ({e})") from None
    if img.shape != (size, size, 3):
        raise ValueError(f"{name}: {img.shape[1]}x{img.shape[0]}, expected {size}x{size}")
    return img


def decode_into(out: np.ndarray, clip: Clip) -> None:
    """Decode a clip's JPEGs into `out` (>= V views, F, S, S, 3) uint8 RGB (C-contiguous), mirrored if
    `clip.meta['flipped']`; views past the clip's are zeroed. Raises ValueError on a JPEG that does not decode to
    S x S. (The loader's inner loop: a decoder call per crop and little else; decode_jpeg words the errors.)"""
    import cv2
    import simplejpeg

    size = out.shape[-2]
    want = (size, size, 3)
    flip = bool(clip.meta.get("flipped"))
    decode = simplejpeg.decode_jpeg
    for v, frames in enumerate(clip.jpeg):
        for t, (data, dst) in enumerate(zip(frames, out[v])):
            try:
                img = decode(data, "RGB", buffer=dst)
            except ValueError:
                img = None
            if img is None or img.shape != want:
                img = decode_jpeg(data, f"v{v}_{t:04d}.jpg", size, dst)     # raises, naming the member
            if flip:
                cv2.flip(img, 1, img)
    out[clip.views:] = 0


def decode_images(clip: Clip) -> Clip:
    """Decode the clip's JPEGs into `clip.images` (V, F, H, W, 3) uint8 RGB (mirrored if the clip was flipped);
    raises ValueError on a bad JPEG."""
    size = int(clip.meta["crop_size"])
    out = np.empty((clip.views, clip.frames, size, size, 3), np.uint8)
    decode_into(out, clip)
    clip.images = out
    return clip


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
    """Writes one tar shard at `path` via `path.tmp`; `close()` renames it and returns its index entry."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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

    from .extracted import read_meta

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
    from .extracted import list_sequences

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

        from .extracted import read_meta

        meta = read_meta(path)
        pf = pq.ParquetFile(path)
        ends = np.cumsum([pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
        self.files[path] = (meta, pf, ends)
        if len(self.files) > self.keep:
            self.files.popitem(last=False)
        return self.files[path]

    def read(self, path: str, start: int, stop: int):
        """(SequenceMeta, SequenceArrays) of rows [start, stop) of a sequence file."""
        from .extracted import SequenceArrays

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
    h = hashlib.sha256(_json({"format": FORMAT, "frames": cfg.frames, "stride": cfg.step, "tail": cfg.tail,
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
        tmp = journal.with_name(journal.name + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": fp, "shards": done}))
        os.replace(tmp, journal)

    try:
        _write_clips(cfg, refs, pos, done, save_journal, on_progress, out, limit)
    except BaseException:              # killed, a full disk, a bad sequence file: no half shard left behind
        for tmp in out.glob(f"{cfg.split}-*.tar.tmp"):
            tmp.unlink(missing_ok=True)
        raise
    shards = [{k: e[k] for k in ("name", "samples", "bytes", "sha256")} for e in done]
    index = {"format": FORMAT, "split": cfg.split, "frames": cfg.frames, "stride": cfg.step, "tail": cfg.tail,
             "shuffle_seed": cfg.shuffle_seed, "subjects": sorted({Path(s).parent.name for s in sequences},
                                                                  key=lambda s: int(s[1:])),
             "sequences": len(sequences), "samples": sum(e["samples"] for e in shards), "shards": shards}
    ipath = index_path(out, cfg.split)
    tmp = ipath.with_name(ipath.name + ".tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, ipath)
    journal.unlink(missing_ok=True)
    names = {e["name"] for e in shards}
    removed = []
    for p in sorted(out.glob(f"{cfg.split}-*.tar")):
        m = SHARD_RE.match(p.name)
        if m and m.group("split") == cfg.split and p.name not in names:
            p.unlink()      # a stale shard of an earlier run with other options
            removed.append(p.name)
    return ShardResult(cfg.split, ipath, shards, index["samples"], len(sequences), resumed, removed, plan.skipped)


# ----------------------------------------------------------------------------------------- reading shards

def index_for(shard: str | Path) -> Path | None:
    """The index file beside a local shard `{split}-NNNNNN.tar`, or None if the name does not follow the scheme."""
    shard = Path(shard)
    m = SHARD_RE.match(shard.name)
    return shard.with_name(f"{m.group('split')}-index.json") if m else None


def iter_tar_samples(path: str | Path) -> Iterator[dict]:
    """Raw samples of a local shard, grouped as WebDataset groups them; a damaged tar raises its error at the point
    of damage (after the samples before it)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with open(path, "rb") as fh:
        yield from group_by_keys(tar_file_expander([{"url": str(path), "stream": fh}]))


def read_clip(path: str | Path, key: str | None = None) -> Clip:
    """The sample `key` (default: the first) of a local shard, with its images decoded."""
    try:
        for raw in iter_tar_samples(path):
            if key is None or raw["__key__"] == key:
                return decode_images(decode_sample(raw))
    except (tarfile.TarError, OSError, ValueError) as e:
        raise H36MError(path, f"unreadable shard ({e})") from None
    raise H36MError(path, f"no sample with key {key!r}" if key else "holds no samples")
