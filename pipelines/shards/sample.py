"""The shard sample format: one clip of F consecutive frames of one sequence seen by its V cameras (docs/shards.md).

    {key}.box.npy          float32 (V, F, 4)      crop box x0, y0, x1, y1, full-frame px
    {key}.cameras.json     per view: id, fx, fy, cx, cy, k1, k2, k3, p1, p2, width, height, R, t (mm)
    {key}.meta.json        format, subject, sequence, action, cameras, frames, real_frames, fps, crop_size
    {key}.pose2d.npy       float32 (V, F, 17, 2)  crop px (pixel centres at integer coordinates)
    {key}.pose3d.npy       float32 (F, 17, 3)     world mm
    {key}.pose3d_cam.npy   float32 (V, F, 17, 3)  camera mm
    {key}.v{view}_{t:04d}.jpg                     crop of `view` at clip frame t: the extracted JPEG bytes

with key `{subject}/{sequence with '_' for ' '}/{first source frame:06d}` (no dots: WebDataset splits a member
name into key and extension at the first dot after the last '/'). Shards are `{split}-{n:06d}.tar` plus
`{split}-index.json`. This module encodes and decodes samples and reads local shards; `shards.writer` writes them.
"""
from __future__ import annotations

import functools
import io
import json
import math
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import TEST_SUBJECTS, TRAIN_SUBJECTS

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
    from h36m.h36m_tools.names import sequence_key

    return f"{sequence_key(subject, sequence)}/{int(start):06d}"


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a, np.float32), allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj) -> bytes:
    """Canonical compact JSON (sorted keys): equal content gives equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


#: Bounds on a shard's untrusted JSON members: bytes (a real meta.json is under 2 kB, cameras.json under 3 kB for
#: 4 views) and nesting (cameras.json nests 4 deep: a list of views, a view, R, its rows).
MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 8
#: Bounds on what meta.json may ask the reader to allocate: frames per clip, the crop side in px, and the pixels of
#: a decoded clip (views x frames x side x side; a paper clip, 4 x 128 x 224 x 224, has 26 M).
MAX_FRAMES = 4096
MAX_CROP = 4096
MAX_CLIP_PIXELS = 1 << 28
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NESTING = np.zeros(256, np.int32)        # byte -> change of nesting depth
_NESTING[[ord("["), ord("{")]], _NESTING[[ord("]"), ord("}")]] = 1, -1


def load_json(data: bytes, name: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH):
    """Untrusted JSON bytes -> value; ValueError naming member `name` if it is larger than `max_bytes`, nests
    deeper than `max_depth` (checked before parsing: the parser recurses) or is not JSON."""
    data = bytes(data)
    if len(data) > max_bytes:
        raise ValueError(f"{name}: {len(data)} bytes, at most {max_bytes}")
    if data.count(b"[") + data.count(b"{") > max_depth:                # else it cannot nest deeper
        bare = np.frombuffer(_JSON_STRING.sub(b'""', data), np.uint8)  # brackets inside strings do not nest
        if int(np.cumsum(_NESTING[bare]).max()) > max_depth:
            raise ValueError(f"{name}: nested deeper than {max_depth} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{name}: unreadable JSON ({e})") from None


def _check_meta(meta) -> None:
    """The types and bounds of meta.json's fields (what the readers index and allocate with); ValueError."""
    if not isinstance(meta, dict):
        raise ValueError("meta.json is not an object")
    lack = [f for f in META_FIELDS if f not in meta]
    if lack:
        raise ValueError(f"meta.json lacks {lack}")
    if meta["format"] != FORMAT:
        raise ValueError(f"meta.json format {meta['format']!r}, this reader knows {FORMAT}")
    cams, frames = meta["cameras"], meta["frames"]
    if not isinstance(cams, list) or not 1 <= len(cams) <= MAX_VIEWS:
        raise ValueError(f"meta.json cameras must list 1 to {MAX_VIEWS} cameras")
    if (not isinstance(frames, list) or not 1 <= len(frames) <= MAX_FRAMES
            or not all(type(f) is int for f in frames)):
        raise ValueError(f"meta.json frames must list 1 to {MAX_FRAMES} frame numbers")
    for f, low, high in (("real_frames", 1, len(frames)), ("crop_size", 1, MAX_CROP)):
        if type(meta[f]) is not int or not low <= meta[f] <= high:
            raise ValueError(f"meta.json {f} must be an integer in {low}..{high}, got {meta[f]!r}")
    if len(cams) * len(frames) * meta["crop_size"] ** 2 > MAX_CLIP_PIXELS:
        raise ValueError(f"meta.json: {len(cams)} views x {len(frames)} frames of {meta['crop_size']} px crops, "
                         f"more than {MAX_CLIP_PIXELS} pixels")
    if not all(isinstance(meta[f], str) for f in ("subject", "sequence", "action")):
        raise ValueError("meta.json subject, sequence and action must be strings")


def encode_clip(clip: Clip) -> list[tuple[str, bytes]]:
    """The tar members of a clip, `(extension, bytes)` sorted by extension (the order they are written in)."""
    members = {"meta.json": json_bytes(clip.meta), "cameras.json": json_bytes(clip.cameras)}
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

    Checks the schema, meta.json's types and bounds (`_check_meta`) and every shape; JSON is parsed with size and
    depth limits (`load_json`). Raises ValueError naming the member and the problem. Values are not checked here
    (see `finite_problem`).
    """
    key = sample.get("__key__", "?")
    for ext in ("meta.json", "cameras.json") + tuple(f"{n}.npy" for n in ARRAYS):
        if ext not in sample:
            raise ValueError(f"missing member {ext}")
    meta = load_json(sample["meta.json"], "meta.json")
    cameras = load_json(sample["cameras.json"], "cameras.json")
    _check_meta(meta)
    V, F = len(meta["cameras"]), len(meta["frames"])
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


def finite_problem(clip: Clip) -> str | None:
    """The first array of a clip holding NaN or infinite values, worded as a problem; None if all are finite."""
    for name in ARRAYS:
        a = getattr(clip, name)
        if not np.isfinite(a).all():
            return f"{name}.npy holds {int((~np.isfinite(a)).sum())} non-finite values"
    return None


@functools.lru_cache(maxsize=16)
def jpeg_names(views: int, frames: int) -> tuple[tuple[str, ...], ...]:
    """The JPEG member extensions of a clip, `names[v][t] == f"v{v}_{t:04d}.jpg"`."""
    return tuple(tuple(f"v{v}_{t:04d}.jpg" for t in range(frames)) for v in range(views))


def decode_jpeg(data: bytes, name: str, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """One crop's JPEG bytes -> (size, size, 3) uint8 RGB, decoded straight into `out` (a C-contiguous (size, size, 3)
    uint8 array) when given; ValueError naming the member `name` if the bytes do not decode, or decode to another
    size. libjpeg-turbo through simplejpeg: the same pixels as cv2.imdecode, faster (bench/RESULTS_loader.md), and no
    temporary."""
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


# ----------------------------------------------------------------------------------------- reading shards

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
