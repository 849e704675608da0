"""Writing VideoPose3D-format `.npz` files, and VideoPose3D's action keys.

VideoPose3D's `data/prepare_data_h36m.py` keys each subject's sequences by the raw sequence base name with two
replacements, `TakingPhoto` -> `Photo` and `WalkingDog` -> `WalkDog` (`'Directions 1'`, `'Photo 1'`, `'WalkDog'`,
`'WalkTogether 1'`), and drops S11 `Directions` (its first camera's video is corrupt). docs/interchange.md.
"""
from __future__ import annotations

import os

import numpy as np

from h36m.pipelines.files import atomic_path

#: What `metadata['pixel_frame']` says in every 2-D file this project writes: each camera's nominal frame.
PIXEL_FRAME = "nominal"


def metadata_2d() -> dict:
    """The `metadata` of every 17-joint 2-D file this project writes: VideoPose3D's keys (layout_name, num_joints,
    keypoints_symmetry; h36m_tools.npz.METADATA_2D) and the pixel frame its coordinates are in: `pixel_frame`
    'nominal' (each camera's nominal frame, h36m_tools.cameras.nominal_frame) and `frame_size` {camera id: [width,
    height]}. VideoPose3D's and PoseFormer's loaders read only their own keys."""
    from h36m.h36m_tools.cameras import CAMERA_IDS, bundled
    from h36m.h36m_tools.npz import METADATA_2D

    k = bundled().intrinsics
    return {**METADATA_2D, "pixel_frame": PIXEL_FRAME,
            "frame_size": {c: [int(k[c].width), int(k[c].height)] for c in CAMERA_IDS}}

#: (subject, raw sequence name) pairs VideoPose3D leaves out.
VP3D_DROPPED = (("S11", "Directions"),)


def vp3d_action(sequence: str) -> str:
    """A raw sequence base name (spaces or underscores) -> VideoPose3D's key: `'TakingPhoto 1'` -> `'Photo 1'`."""
    return sequence.replace("_", " ").replace("TakingPhoto", "Photo").replace("WalkingDog", "WalkDog")


def write_npz(path: str | os.PathLike, **members) -> None:
    """np.savez_compressed(path, **members), atomically (dicts become 0-d object arrays, as numpy stores them)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **members)
