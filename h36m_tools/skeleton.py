"""The Human3.6M skeleton: 32 joints in the files, the 17-joint subset every paper uses.

All arrays here are plain numpy constants; functions are pure and work on any leading shape.
"""
from __future__ import annotations

import numpy as np

#: Parent of each of the 32 joints stored in the CDF files (-1 for the root, the hip centre).
PARENTS32 = np.array([-1, 0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 0, 11, 12, 13, 14, 12,
                      16, 17, 18, 19, 20, 19, 22, 12, 24, 25, 26, 27, 28, 27, 30])

#: Indices of the 17 joints (into the 32) used by the standard protocol.
JOINTS17 = np.array([0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27])

#: Parent of each of the 17 joints, in 17-joint numbering.
PARENTS17 = np.array([-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15])

NAMES17 = ("hip", "right_hip", "right_knee", "right_foot", "left_hip", "left_knee", "left_foot",
           "spine", "thorax", "neck_nose", "head", "left_shoulder", "left_elbow", "left_wrist",
           "right_shoulder", "right_elbow", "right_wrist")

LEFT17 = np.array([4, 5, 6, 11, 12, 13])
RIGHT17 = np.array([1, 2, 3, 14, 15, 16])

#: Permutation that swaps left and right joints (apply after a horizontal flip).
FLIP17 = np.arange(17)
FLIP17[LEFT17], FLIP17[RIGHT17] = RIGHT17, LEFT17

#: Left and right joints of the 32 (legs 6-10 / 1-5, arms 16-23 / 24-31) and the permutation that swaps them.
LEFT32 = np.array([6, 7, 8, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23])
RIGHT32 = np.array([1, 2, 3, 4, 5, 24, 25, 26, 27, 28, 29, 30, 31])
FLIP32 = np.arange(32)
FLIP32[LEFT32], FLIP32[RIGHT32] = RIGHT32, LEFT32

#: (child, parent) pairs of the 17-joint skeleton, for drawing and bone lengths.
BONES17 = tuple((j, int(p)) for j, p in enumerate(PARENTS17) if p >= 0)


def to17(joints32: np.ndarray) -> np.ndarray:
    """(..., 32, D) -> (..., 17, D): the standard subset."""
    if joints32.shape[-2] != 32:
        raise ValueError(f"expected 32 joints on axis -2, got shape {joints32.shape}")
    return joints32[..., JOINTS17, :]


def bone_lengths(joints: np.ndarray, parents: np.ndarray = PARENTS17) -> np.ndarray:
    """(..., J, 3) joints in mm -> (..., J-1) bone lengths in mm, one per non-root joint in joint order."""
    child = np.array([j for j, p in enumerate(parents) if p >= 0])
    return np.linalg.norm(joints[..., child, :] - joints[..., parents[child], :], axis=-1)


def flip_joints(joints, width: float | None = None):
    """The one left/right mirror of (..., 17, C) joints (numpy or torch): sides swapped (FLIP17) and x mirrored,
    about the vertical axis of an image `width` px wide for pixel coordinates (pixel centres at integer coordinates:
    x -> width - 1 - x, as cv2.flip moves pixels), or about x = 0 for centred coordinates (width None: camera-frame
    3-D, screen-normalised 2-D: x -> -x)."""
    out = joints[..., FLIP17, :]
    out = out.clone() if hasattr(out, "clone") else out.copy()
    out[..., 0] = (-out[..., 0]) if width is None else (width - 1 - out[..., 0])
    return out
