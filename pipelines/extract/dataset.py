"""The extracted dataset (output of `h36m extract`, input of `h36m shard`): one Parquet file per sequence.

Layout of an extracted folder:
    manifest.json              {"format": 1, "source", "options", "sequences": {key: entry}, "failed": {key: reason}}
    cameras.json               per subject and camera: intrinsics at the video's size, R, t (mm)
    S1/Directions_1.parquet    one row per synchronised frame (see SCHEMA), written atomically

Per-view columns hold V values in the sequence's camera order (`cameras` in the file's metadata).
Row t is pose row / video frame `frame[t]` of every camera (extra video frames at the end are trimmed); with
`h36m extract --every N` only the frames whose index is a multiple of N are rows (`every`, fps 50 / N).
`pose3d_source` says where the 3-D joints came from (D3_Positions, or camera coordinates through the extrinsics,
possibly of H36M's universal skeleton): errors against the universal skeleton are not comparable with the others.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from h36m.h36m_tools.names import sequence_key, sequence_order
from h36m.pipelines.files import atomic_path

FORMAT = 1
META_KEY = b"h36m"


def schema(views: int):
    """pyarrow schema for a sequence with `views` cameras."""
    import pyarrow as pa

    def f32(n):
        return pa.list_(pa.float32(), n)

    return pa.schema([
        ("frame", pa.int32()),                       # source frame index (pose row = video frame)
        ("pose3d", f32(17 * 3)),                     # world joints, mm (17, 3)
        ("pose3d_cam", f32(views * 17 * 3)),         # (V, 17, 3) camera coordinates, mm
        ("pose2d", f32(views * 17 * 2)),             # (V, 17, 2) full-frame pixels (video size)
        ("pose2d_crop", f32(views * 17 * 2)),        # (V, 17, 2) pixels in the crop
        ("box", f32(views * 4)),                     # (V, 4) crop box x0, y0, x1, y1 in full-frame pixels
        ("jpeg", pa.list_(pa.binary(), views)),      # V JPEG-encoded crops (crop_size x crop_size)
    ])


@dataclass
class SequenceMeta:
    """What a sequence file says about itself (stored as JSON in the Parquet schema metadata)."""
    subject: str
    sequence: str              # raw name, e.g. 'Directions 1'
    action: str                # canonical action
    cameras: list[str]         # camera ids in view order
    fps: float
    crop_size: int
    frames: int
    trimmed: dict[str, int]    # camera id (or 'poses') -> frames dropped at the end to sync
    bbox: str                  # 'joints' or 'mask'
    margin: float
    camera_params: list[dict] = field(default_factory=list)  # per view: Camera.to_dict() at the video's size
    every: int = 1             # rows are the source frames whose index % every == 0 (fps = 50 / every)
    pose3d_source: str = "world"   # names.POSE3D_SOURCES: 'world', 'camera' or 'camera, universal skeleton'
    format: int = FORMAT

    @property
    def key(self) -> str:
        return sequence_key(self.subject, self.sequence)


@dataclass
class SequenceArrays:
    """A sequence's annotations as numpy arrays (T frames, V views); JPEG bytes as a list of V-lists."""
    frame: np.ndarray          # (T,) int
    pose3d: np.ndarray         # (T, 17, 3) world mm
    pose3d_cam: np.ndarray     # (T, V, 17, 3) camera mm
    pose2d: np.ndarray         # (T, V, 17, 2) full-frame px
    pose2d_crop: np.ndarray    # (T, V, 17, 2) crop px
    box: np.ndarray            # (T, V, 4) x0, y0, x1, y1
    jpeg: list | None          # T lists of V bytes objects, or None when not read


def write_sequence(path: str | Path, meta: SequenceMeta, arrays: SequenceArrays, row_group_size: int = 64) -> None:
    """Write one sequence file atomically (tmp file + rename), one row group at a time.

    `arrays.jpeg` may be a list or any sequence of rows that can be sliced (`jpeg[a:b]` -> b - a lists of V bytes),
    e.g. crops spooled to disk, so a long sequence's JPEGs never need to be in memory all at once.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    T, V = arrays.pose2d.shape[:2]
    sch = schema(V).with_metadata({META_KEY: json.dumps(meta.__dict__).encode()})

    def flat(a, n, rows):
        a = np.ascontiguousarray(a[rows], np.float32).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(a), n)

    def table(rows: slice):
        return pa.Table.from_arrays([
            pa.array(arrays.frame[rows].astype(np.int32)),
            flat(arrays.pose3d, 51, rows), flat(arrays.pose3d_cam, V * 51, rows), flat(arrays.pose2d, V * 34, rows),
            flat(arrays.pose2d_crop, V * 34, rows), flat(arrays.box, V * 4, rows),
            pa.array(list(arrays.jpeg[rows]), type=pa.list_(pa.binary(), V)),
        ], schema=sch)

    with atomic_path(path) as tmp:      # a full disk, an interrupt: no tmp file left behind
        with pq.ParquetWriter(tmp, sch, compression="zstd", use_dictionary=["frame"],
                              write_statistics=["frame"]) as writer:
            for a in range(0, max(T, 1), row_group_size):
                writer.write_table(table(slice(a, min(a + row_group_size, T))), row_group_size=row_group_size)


def read_meta(path: str | Path) -> SequenceMeta:
    """The metadata of a sequence file, without reading its rows."""
    import pyarrow.parquet as pq

    md = pq.read_schema(path).metadata or {}
    if META_KEY not in md:
        raise ValueError(f"{path}: not an h36m extracted sequence (no '{META_KEY.decode()}' metadata)")
    return SequenceMeta(**json.loads(md[META_KEY]))


def read_sequence(path: str | Path, rows: slice | None = None, with_jpeg: bool = True
                  ) -> tuple[SequenceMeta, SequenceArrays]:
    """Read a sequence file (optionally only `rows`, a slice of frame rows) into numpy arrays."""
    import pyarrow.parquet as pq

    meta = read_meta(path)
    cols = [c for c in schema(len(meta.cameras)).names if with_jpeg or c != "jpeg"]
    table = pq.read_table(path, columns=cols)
    if rows is not None:
        start, stop, _ = rows.indices(table.num_rows)
        table = table.slice(start, stop - start)
    T, V = table.num_rows, len(meta.cameras)

    def arr(name, shape):
        col = table.column(name).combine_chunks()
        return col.values.to_numpy(zero_copy_only=False).reshape((T,) + shape)

    arrays = SequenceArrays(
        frame=table.column("frame").to_numpy(),
        pose3d=arr("pose3d", (17, 3)), pose3d_cam=arr("pose3d_cam", (V, 17, 3)),
        pose2d=arr("pose2d", (V, 17, 2)), pose2d_crop=arr("pose2d_crop", (V, 17, 2)), box=arr("box", (V, 4)),
        jpeg=table.column("jpeg").to_pylist() if with_jpeg else None)
    return meta, arrays


def sequence_path(root: str | Path, subject: str, sequence: str) -> Path:
    """Where a sequence's file lives under an extracted folder: `S1/Directions_1.parquet`."""
    return Path(root) / subject / f"{sequence.replace(' ', '_')}.parquet"


def list_sequences(root: str | Path, subjects=None) -> list[Path]:
    """Sequence files of an extracted folder listed in its manifest as done, sorted by subject number and name."""
    root = Path(root)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{root}: no manifest.json; is this the output of `h36m extract`?")
    entries = json.loads(manifest.read_text())["sequences"]
    keys = sorted(entries, key=sequence_order)
    return [root / entries[k]["file"] for k in keys
            if subjects is None or k.split("/")[0] in subjects]
