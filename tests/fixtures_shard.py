"""Fixtures of the shard and loader tests: an extracted dataset built from the shared synthetic release, and shards.

The extracted folder comes from the real chain `h36m extract` when that command exists; before it did, this module
built the same format itself (`build_extracted`: real videos decoded with ffmpeg, joint boxes, cv2 crops, JPEG).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CROP = 64
FRAMES = 8          # clip length used by the tests
SHARD_MB = 0.12     # small shards: several per split


def _crop_box(joints2d: np.ndarray) -> np.ndarray:
    """(17, 2) px -> square box x0, y0, x1, y1: joint extent enlarged 1.2x about its centre."""
    lo, hi = joints2d.min(0), joints2d.max(0)
    c, half = (lo + hi) / 2, 0.6 * max(hi - lo)
    return np.array([c[0] - half, c[1] - half, c[0] + half, c[1] + half])


def _crop(frame: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Crop pixel (i + 0.5) = (full (x + 0.5) - x0) * size / (x1 - x0), i.e. continuous pixel coordinates."""
    import cv2

    s = size / (box[2] - box[0])
    m = np.array([[s, 0, (0.5 - box[0]) * s - 0.5], [0, s, (0.5 - box[1]) * s - 0.5]])
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def build_extracted(release: Path, out: Path, crop: int = CROP) -> Path:
    """Write `release` (an H36M tree) as an extracted dataset (pipelines/extracted.py format) under `out`."""
    import cv2

    from h36m_tools import cdf, video
    from h36m_tools.cameras import bundled, project, world_to_camera
    from h36m_tools.errors import H36MError
    from h36m_tools.names import camera_order, discover
    from pipelines.extracted import SequenceArrays, SequenceMeta, sequence_path, write_sequence

    out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for seq in discover(release):
        world = cdf.read_pose(seq.d3, 3)[:, [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27]]
        views = {}
        for cid in camera_order(seq.videos):
            try:
                info = video.probe(seq.videos[cid])
                frames = list(video.iter_frames(seq.videos[cid], info))
            except H36MError:
                continue                                   # the truncated camera: keep the sequence with 3 views
            cam = bundled().camera(seq.subject, cid)
            k = cam.intrinsics.for_video(info.width, info.height)
            views[cid] = (frames, cam, k)
        T = min([len(world)] + [len(f) for f, _, _ in views.values()])
        cams = list(views)
        V = len(cams)
        p3c = np.zeros((T, V, 17, 3))
        p2 = np.zeros((T, V, 17, 2))
        p2c = np.zeros((T, V, 17, 2))
        box = np.zeros((T, V, 4))
        jpeg = [[None] * V for _ in range(T)]
        for v, cid in enumerate(cams):
            frames, cam, k = views[cid]
            p3c[:, v] = world_to_camera(world[:T], cam.extrinsics.R, cam.extrinsics.t)
            p2[:, v] = project(p3c[:, v], k)
            for t in range(T):
                b = _crop_box(p2[t, v])
                box[t, v] = b
                p2c[t, v] = (p2[t, v] - b[:2]) * crop / (b[2] - b[0])
                ok, buf = cv2.imencode(".jpg", _crop(frames[t], b, crop), [cv2.IMWRITE_JPEG_QUALITY, 90])
                jpeg[t][v] = buf.tobytes()
        params = []
        for cid in cams:
            _, cam, k = views[cid]
            params.append({"id": cid, **k.to_dict(), **cam.extrinsics.to_dict()})
        meta = SequenceMeta(subject=seq.subject, sequence=seq.name, action=seq.action, cameras=cams, fps=50.0,
                            crop_size=crop, frames=T, trimmed={}, bbox="joints", margin=1.2, camera_params=params)
        path = sequence_path(out, seq.subject, seq.name)
        write_sequence(path, meta, SequenceArrays(np.arange(T), world[:T], p3c, p2, p2c, box, jpeg),
                       row_group_size=16)
        entries[seq.key] = {"file": str(path.relative_to(out)), "frames": T, "views": V}
    (out / "manifest.json").write_text(json.dumps({"format": 1, "source": str(release), "options": {},
                                                   "sequences": entries, "failed": {}}))
    return out


def extract_available() -> bool:
    try:
        import pipelines.extract  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def extracted(small_release, tmp_path_factory) -> Path:
    """The shared small release (S1, S5, S9, S11 x 1 sequence x 40 frames) extracted to 64 px crops. Read-only."""
    return build_extracted(small_release, tmp_path_factory.mktemp("extracted"))


@pytest.fixture(scope="session")
def shards(extracted, tmp_path_factory) -> Path:
    """Train and test shards of `extracted` in one folder: 8-frame clips, several small shards per split."""
    from pipelines.shard import ShardConfig, write_shards

    out = tmp_path_factory.mktemp("shards")
    for split in ("train", "test"):
        write_shards(ShardConfig(extracted, out, frames=FRAMES, split=split, shard_mb=SHARD_MB))
    return out
