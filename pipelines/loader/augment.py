"""Training augmentations that keep the views of a clip consistent: a horizontal flip of all views together.

Flipping every view's image about its vertical axis shows the mirror image of the scene. Pixel centres sit at
integer coordinates (the project's one convention, as numpy indexes and cv2.warpAffine maps), so a flip moves pixel
i of an image n pixels wide to n - 1 - i (what cv2.flip does), and every coordinate x to n - 1 - x. The flipped clip
is again a valid H36M clip of a mirrored world, with every quantity changed consistently (M = S = diag(-1, 1, 1)):
  images       reversed along W, in every view and frame
  pose2d       x -> crop_size - 1 - x, left/right joints swapped (FLIP17)
  box          the box whose crop is the mirrored crop in the mirrored video (full-frame px, width W):
               x0, x1 -> W - 1 - x1 + s, W - 1 - x0 + s with s = (x1 - x0) / crop_size (crop pixel c sits at
               x0 + c s, so the crop's pixels span x0 .. x1 - s)
  pose3d_cam   X -> M X, joints swapped (the camera sees the mirrored person)
  pose3d       world joints mirrored about the world's x = 0 plane: S P, joints swapped
  cameras      R -> M R S (still a rotation), t -> M t, cx -> W - 1 - cx, p2 -> -p2 (H36M's tangential term in x),
               so that projecting the new pose3d with the new cameras gives the new pose2d exactly.
Bone lengths are unchanged; the person's left side is where the mirrored right side was.
"""
from __future__ import annotations

import copy

import numpy as np

from h36m.h36m_tools.skeleton import flip_joints
from h36m.pipelines.shards.sample import Clip

MIRROR = np.diag([-1.0, 1.0, 1.0])


def flip_camera(cam: dict) -> dict:
    """A camera dict (CAMERA_FIELDS) of the mirrored video: R -> M R S, t -> M t, cx -> width - 1 - cx, p2 -> -p2."""
    out = dict(cam)
    R, t = np.asarray(cam["R"], float), np.asarray(cam["t"], float)
    out["R"] = (MIRROR @ R @ MIRROR).tolist()
    out["t"] = (MIRROR @ t).tolist()
    out["cx"] = float(cam["width"]) - 1.0 - float(cam["cx"])
    out["p2"] = -float(cam["p2"])
    return out


def flip_clip(clip: Clip) -> Clip:
    """The mirrored clip (a new Clip; the input is not changed); `meta['flipped']` toggles. `images`, if decoded,
    are mirrored along their last axis (the loader's (V, F, 3, H, W)); the JPEG bytes stay as they are, and the
    loader's decoding (shards.sample.decode_into) mirrors the crops of a clip whose meta says 'flipped'."""
    size = float(clip.meta["crop_size"])
    widths = np.array([float(c["width"]) for c in clip.cameras], np.float32)[:, None]       # (V, 1)
    pose2d = flip_joints(clip.pose2d, size)
    box = clip.box.copy()
    step = (clip.box[..., 2] - clip.box[..., 0]) / size                                      # full px per crop px
    box[..., 0] = widths - 1.0 - clip.box[..., 2] + step
    box[..., 2] = widths - 1.0 - clip.box[..., 0] + step
    pose3d_cam = flip_joints(clip.pose3d_cam)
    pose3d = flip_joints(clip.pose3d)
    meta = copy.deepcopy(clip.meta)
    meta["flipped"] = not meta.get("flipped", False)
    images = None if clip.images is None else np.ascontiguousarray(clip.images[..., ::-1])
    return Clip(key=clip.key, meta=meta, cameras=[flip_camera(c) for c in clip.cameras], pose3d=pose3d,
                pose3d_cam=pose3d_cam, pose2d=pose2d, box=box, jpeg=clip.jpeg, images=images, source=clip.source)


def random_flip(clip: Clip, rng: np.random.Generator, p: float = 0.5) -> Clip:
    """`flip_clip(clip)` with probability p, else the clip unchanged."""
    return flip_clip(clip) if rng.random() < p else clip
