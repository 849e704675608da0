"""Augmentation on the training device: a random scale, rotation and shift of every view's crop, its labels moved
by the same transform (top-down 2-D pose training's, as mmpose's `RandomBBoxTransform` + `TopdownAffine`).

The loader already mirrors whole clips (loader/augment.py: the flip stays clip-wide, so the views stay one mirrored
world). Here each view of a clip gets its own transform, the same for all its frames (each view is its own crop;
a view's frames keep their motion): one batched `grid_sample` per batch on the device, so the loader's throughput is
untouched. Parameters are drawn as mmpose draws them (a standard normal truncated to [-1, 1], times the factor):

    shift   offset of the crop centre, `shift` x the crop side in x and y (with probability `shift_prob`)
    scale   the crop side times `scale_range` mu + sigma t (t truncated normal; with probability `scale_prob`):
            a larger crop shows the person smaller
    rotate  the crop turned by `rotate` x t degrees (with probability `rotate_prob`)

Coordinates: pixel centres at integer coordinates (the project's convention), the crop's centre at (S - 1) / 2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as tf


@dataclass(frozen=True)
class AffineAugment:
    """Ranges of the random crop transform. mmpose's defaults (RandomBBoxTransform, its COCO and H36M top-down
    configs) are `MMPOSE`; `MILD` is for short runs on small data (the `tiny` recipe)."""
    shift: float = 0.16
    shift_prob: float = 0.3
    scale_range: tuple[float, float] = (0.5, 1.5)
    scale_prob: float = 1.0
    rotate: float = 80.0            # degrees
    rotate_prob: float = 0.6


MMPOSE = AffineAugment()
MILD = AffineAugment(shift=0.08, shift_prob=0.3, scale_range=(0.85, 1.15), scale_prob=1.0, rotate=20.0,
                     rotate_prob=0.5)
#: TrainConfig.affine names these.
AFFINE = {"mmpose": MMPOSE, "mild": MILD, "off": None}


def _truncnorm(shape, generator: torch.Generator) -> torch.Tensor:
    """Standard normal samples truncated to [-1, 1] (redrawn until inside), float64 on the CPU."""
    out = torch.randn(shape, generator=generator, dtype=torch.float64)
    bad = out.abs() > 1
    while bad.any():
        out[bad] = torch.randn(int(bad.sum()), generator=generator, dtype=torch.float64)
        bad = out.abs() > 1
    return out


def sample_transforms(n: int, aug: AffineAugment, size: int, generator: torch.Generator) -> torch.Tensor:
    """n random transforms (n, 2, 3) float64 mapping source crop px -> augmented crop px (crop side `size` px)."""
    g = generator
    shift = _truncnorm((n, 2), g) * aug.shift * size
    shift = torch.where(torch.rand((n, 1), generator=g, dtype=torch.float64) < aug.shift_prob, shift, 0.0)
    lo, hi = aug.scale_range
    scale = _truncnorm((n,), g) * (hi - lo) / 2 + (hi + lo) / 2
    scale = torch.where(torch.rand((n,), generator=g, dtype=torch.float64) < aug.scale_prob, scale, 1.0)
    angle = _truncnorm((n,), g) * math.radians(aug.rotate)
    angle = torch.where(torch.rand((n,), generator=g, dtype=torch.float64) < aug.rotate_prob, angle, 0.0)
    return affine_matrices(scale, angle, shift, size)


def affine_matrices(scale: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor, size: int) -> torch.Tensor:
    """(n,) scale, (n,) angle in radians, (n, 2) shift of the crop centre in source px -> (n, 2, 3) float64 maps
    source crop px -> augmented crop px: the crop box scaled by `scale` and turned by `angle` about its centre c
    moved by `shift`, i.e. x' = R(-angle) (x - c - shift) / scale + c."""
    c = (size - 1) / 2.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)       # (n, 2, 2)
    centre = torch.full((scale.shape[0], 2), c, dtype=torch.float64)
    t = centre - (rot @ (centre + shift)[..., None])[..., 0]
    return torch.cat([rot, t[..., None]], dim=-1)


def warp_points(points: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(n, ..., 2) px -> (n, ..., 2) px through the (n, 2, 3) maps."""
    m = m.to(points.device, torch.float32)
    flat = points.reshape(points.shape[0], -1, 2)
    out = flat @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]
    return out.reshape(points.shape)


def warp_images(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(n, K, C, S, S) float images (K images share each map: a view's frames) -> the same warped by the (n, 2, 3)
    maps; bilinear, zeros outside the source crop (the normalised mean colour)."""
    n, k, ch, h, w = images.shape
    if h != w:
        raise ValueError(f"square crops expected, got {h}x{w}")
    s = float(w)
    full = torch.cat([m, torch.tensor([0.0, 0.0, 1.0], dtype=m.dtype).expand(n, 1, 3)], dim=1)
    inv = torch.linalg.inv(full)[:, :2]                   # augmented px -> source px
    a, b = inv[:, :, :2], inv[:, :, 2]
    c = torch.full((n, 2), (s - 1) / 2.0, dtype=m.dtype)
    # normalised (align_corners=False: u = (2x + 1) / S - 1) output -> normalised source coordinates
    theta = torch.cat([a, ((2.0 / s) * ((a @ c[..., None])[..., 0] + b) + 1.0 / s - 1.0)[..., None]], dim=-1)
    theta = theta.to(images.device, images.dtype).repeat_interleave(k, dim=0)
    grid = tf.affine_grid(theta, [n * k, ch, h, w], align_corners=False)
    out = tf.grid_sample(images.reshape(n * k, ch, h, w), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)
    return out.reshape(n, k, ch, h, w)


def augment_views(images: torch.Tensor, joints: torch.Tensor, aug: AffineAugment, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, V, F, 3, S, S) float, joints (B, V, F, J, 2) in crop units ([0, 1] of the side S) -> both moved
    by one random transform per (clip, view)."""
    b, v, f, ch, s, _ = images.shape
    m = sample_transforms(b * v, aug, s, generator)
    out = warp_images(images.reshape(b * v, f, ch, s, s), m).reshape(images.shape)
    pts = warp_points(joints.reshape(b * v, f, -1, 2) * s, m).reshape(joints.shape) / s
    return out, pts
