"""Differentiable, confidence-weighted algebraic triangulation in torch: the 2-D network's joints of every view of a
clip -> world joints in mm, with gradients to the joints and to the confidences (learnable triangulation's algebraic
variant; the numpy twin, used after the fact, is h36m_tools.triangulate).

Shapes and units (any leading shape `...`, e.g. (B, F, J) for B clips of F frames of J joints; V views):
    intrinsics  (..., V, 9)     fx, fy, cx, cy, k1, k2, k3, p1, p2 (`INTRINSICS`), px at the frame size of the points
    R, t        (..., V, 3, 3), (..., V, 3)   world -> camera (X_cam = R X + t), mm
    points      (..., V, 2)     distorted full-frame px (pixel centres at integer coordinates)
    xy          (..., V, 2)     undistorted normalised coordinates (X/Z, Y/Z)
    weights     (..., V)        >= 0, a view's weight for the point (the confidence; 0 = absent)
    world       (..., 3)        world mm

The solution: each view gives two equations of the projection, x (R_3 X + t_3) = R_1 X + t_1 and the same in y,
i.e. the rows of the DLT's system A [X; 1] = 0 with the homogeneous coordinate fixed to 1 (the point lies in front of
the cameras). Rows are multiplied by the view's weight; the weighted least-squares point solves the 3x3 normal
equations (A_:3^T A_:3) X = -A_:3^T A_3. This is the numpy DLT's solution exactly (`h36m_tools.triangulate._solve`)
and, for consistent views, the DLT's smallest singular vector dehomogenised; unlike the SVD's, whose gradient divides
by differences of singular values (unbounded when two of them meet), its gradient is the 3x3 inverse's, finite
wherever the point is determined. Guards: a point with fewer than two weighted views, or whose normal matrix is
near-singular (relative determinant below `SINGULAR`), is solved as the identity system (finite values, zero
gradient) and reported by `ok`; weights are divided by their largest per point before use (the solution does not
change, the numbers stay of order one). Compute in float64 (the caller casts; mm coordinates in float32 lose
tenths of a mm) and outside autocast.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

#: The camera fields of `intrinsics`' last axis, in order (shards.sample.CAMERA_FIELDS' intrinsic ones).
INTRINSICS = ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "p1", "p2")
#: Newton steps of `undistort` (as h36m_tools.triangulate.UNDISTORT_ITERATIONS).
UNDISTORT_ITERATIONS = 8
#: A normal matrix whose determinant is below this times its largest entry cubed counts as singular.
SINGULAR = 1e-12


class CameraTensors(NamedTuple):
    """The cameras of a batch as tensors: intrinsics (B, V, 9), R (B, V, 3, 3), t (B, V, 3) mm."""
    intrinsics: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor


def camera_tensors(cameras: Sequence[Sequence[dict]], views: int, dtype=torch.float64, device=None) -> CameraTensors:
    """B clips' camera dicts (a shard sample's cameras.json, `fx ... p2, R, t`; a loader batch's "cameras") ->
    CameraTensors of `views` views each; views past a clip's own are filled with a camera that sees nothing useful
    (identity R, t = (0, 0, 1) m, unit focal): give them weight 0."""
    b = len(cameras)
    k = torch.zeros(b, views, len(INTRINSICS), dtype=torch.float64)
    k[..., 0:2] = 1.0
    R = torch.eye(3, dtype=torch.float64).repeat(b, views, 1, 1)
    t = torch.tensor([0.0, 0.0, 1000.0], dtype=torch.float64).repeat(b, views, 1)
    for i, clip in enumerate(cameras):
        for v, cam in enumerate(clip[:views]):
            k[i, v] = torch.tensor([float(cam[f]) for f in INTRINSICS], dtype=torch.float64)
            R[i, v] = torch.tensor(cam["R"], dtype=torch.float64)
            t[i, v] = torch.tensor(cam["t"], dtype=torch.float64)
    return CameraTensors(k.to(device, dtype), R.to(device, dtype), t.to(device, dtype))


def crop_to_frame(joints: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """joints (..., J, 2) in crop units (the crop's side = 1, as the 2-D head gives them), box (..., 4) the crop's
    x0, y0, x1, y1 in full-frame px -> (..., J, 2) full-frame px: x0 + u (x1 - x0) (extract.crop.from_crop's map with
    u = crop px / crop side)."""
    lo, hi = box[..., None, :2], box[..., None, 2:]
    return lo + joints * (hi - lo)


def distort(xy: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(..., 2) normalised coordinates, (..., 9) intrinsics -> (..., 2) distorted normalised coordinates (H36M's
    model, h36m_tools.cameras.distort)."""
    x, y = xy[..., 0], xy[..., 1]
    k1, k2, k3, p1, p2 = k[..., 4], k[..., 5], k[..., 6], k[..., 7], k[..., 8]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    tan = p1 * y + p2 * x
    return torch.stack([x * (radial + tan) + p2 * r2, y * (radial + tan) + p1 * r2], dim=-1)


def undistort(points: torch.Tensor, k: torch.Tensor, iterations: int = UNDISTORT_ITERATIONS) -> torch.Tensor:
    """(..., 2) distorted px, (..., 9) intrinsics -> (..., 2) undistorted normalised coordinates: Newton's method on
    `distort` (analytic 2x2 Jacobian), unrolled, so the result is differentiable in the points (h36m_tools.triangulate.
    undistort_points's steps)."""
    k1, k2, k3, p1, p2 = k[..., 4], k[..., 5], k[..., 6], k[..., 7], k[..., 8]
    xd = torch.stack([(points[..., 0] - k[..., 2]) / k[..., 0], (points[..., 1] - k[..., 3]) / k[..., 1]], dim=-1)
    xy = xd
    for _ in range(iterations):
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        s = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3 + p1 * y + p2 * x
        g = k1 + 2 * k2 * r2 + 3 * k3 * r2 ** 2
        dsdx, dsdy = 2 * g * x + p2, 2 * g * y + p1
        a, b = s + x * dsdx + 2 * p2 * x, x * dsdy + 2 * p2 * y
        c, d = y * dsdx + 2 * p1 * x, s + y * dsdy + 2 * p1 * y
        res = distort(xy, k) - xd
        det = a * d - b * c
        det = torch.where(det.abs() > 1e-12, det, torch.full_like(det, 1e-12))
        xy = xy - torch.stack([(d * res[..., 0] - b * res[..., 1]) / det,
                               (a * res[..., 1] - c * res[..., 0]) / det], dim=-1)
    return xy


def _solve(xy: torch.Tensor, R: torch.Tensor, t: torch.Tensor, w: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted normal equations (see the module doc) -> (world (..., 3), ok (...) bool)."""
    # rows (..., V, 2, 3) and right-hand sides (..., V, 2): (x R_3 - R_1) X = t_1 - x t_3, the same in y
    rows = xy[..., :, None] * R[..., 2:3, :] - R[..., :2, :]
    rhs = t[..., :2] - xy * t[..., 2:3]
    rows = rows * w[..., None, None]
    rhs = rhs * w[..., None]
    a = rows.flatten(-3, -2)                                  # (..., 2V, 3)
    lhs = a.transpose(-1, -2) @ a                             # (..., 3, 3)
    right = (a.transpose(-1, -2) @ rhs.flatten(-2)[..., None])[..., 0]
    ok = (w > 0).sum(-1) >= 2
    scale = lhs.detach().abs().amax(dim=(-1, -2)).clamp_min(1e-30)
    ok = ok & (torch.linalg.det(lhs.detach()).abs() > SINGULAR * scale ** 3)
    eye = torch.eye(3, dtype=lhs.dtype, device=lhs.device).expand_as(lhs)
    lhs = torch.where(ok[..., None, None], lhs, eye)
    right = torch.where(ok[..., None], right, torch.zeros_like(right))
    return torch.linalg.solve(lhs, right), ok


def triangulate(points: torch.Tensor, cameras: CameraTensors, weights: torch.Tensor | None = None,
                refine: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence-weighted algebraic triangulation: points (..., V, 2) px, cameras broadcastable to (..., V, ...),
    weights (..., V) or None (1 for every view) -> (world (..., 3) mm, ok (...) bool; see the module doc).

    `refine` extra solves divide each view's rows by its depth of the previous solution and multiply them by its
    focal length (the algebraic residual becomes the reprojection error in px, as h36m_tools.triangulate_dlt's
    `refine`); 0 = the plain algebraic DLT. Where not `ok` the world point is 0 (finite; mask it out of a loss)."""
    k, R, t = cameras
    xy = undistort(points, k)
    w = torch.ones_like(points[..., 0]) if weights is None else weights.clamp_min(0.0)
    w = w / w.detach().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    world, ok = _solve(xy, R, t, w)
    focal = (k[..., 0] + k[..., 1]) / 2
    for _ in range(refine):
        depth = (R[..., 2, :] * world[..., None, :]).sum(-1) + t[..., 2]            # (..., V) mm
        near = depth > 1e-6
        scale = torch.where(near, focal / torch.where(near, depth, torch.ones_like(depth)), torch.zeros_like(depth))
        again, ok_again = _solve(xy, R, t, w * scale / scale.detach().amax(-1, keepdim=True).clamp_min(1e-12))
        world = torch.where(ok_again[..., None], again, world)
        ok = ok & ok_again
    return world * ok[..., None], ok


__all__ = ["CameraTensors", "camera_tensors", "crop_to_frame", "distort", "undistort", "triangulate", "INTRINSICS",
           "UNDISTORT_ITERATIONS", "SINGULAR"]
