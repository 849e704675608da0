"""Multi-view triangulation of 2-D joints with H36M's cameras, as pure numpy functions.

Shapes and units (V views, any leading shape `...` of the points, e.g. (N, J) for N frames of J joints):
    points    (V, ..., 2)  distorted full-frame pixels of each view (the images' own pixels: the pixel centres at
                           integer coordinates, as the annotations and `cameras.project` give them); NaN = missing
    weights   (V, ...)     >= 0, a view's weight for each point (e.g. the 2-D network's per-joint confidence);
                           0 = missing; None = 1 for every finite point
    cameras   V `cameras.Camera` (intrinsics at the frame size the points are measured in, extrinsics world -> camera)
    world     (..., 3)     world coordinates, mm (NaN where fewer than 2 views are usable)

The steps:
  * `undistort_points`: pixels -> undistorted normalised coordinates (X/Z, Y/Z), the iterative (Newton) inverse of
    H36M's own distortion model (`cameras.distort`, not OpenCV's).
  * `triangulate_dlt`: the linear (DLT) solution. Each view gives two equations of the homogeneous projection
    x P3 X - P1 X = 0, y P3 X - P2 X = 0 with P = [R | t]; the last coordinate of X is fixed to 1 (points in front of
    the cameras), so the least-squares solution is a 3x3 solve per point. Rows are weighted by `weights`; with
    `refine` passes each row is also divided by its view's depth of the previous estimate and multiplied by its focal
    length, which turns the algebraic residual into the reprojection error in pixels (the rows of near and far views
    then count alike).
  * `triangulate_robust`: hypothesise and verify over view subsets (RANSAC made exhaustive: with at most a handful of
    views every pair is tried). Each pair's DLT point is reprojected into every view; views within `threshold_px`
    are its inliers; per point the hypothesis with the most inliers wins (ties: the smaller summed inlier error),
    and the point is re-triangulated from its inliers with the weighted, refined DLT, then reweighted by Tukey's
    biweight of each inlier's reprojection error (iteratively reweighted least squares). One bad view (a wrong joint,
    noise, a swapped left/right) then leaves the others' solution untouched, which the plain DLT does not.
  * `fuse_lifted`: lift-then-fuse, no triangulation: each view's lifted root-relative pose rotated into the world
    and the views fused per joint by a robust weighted mean.
The torch twin of `triangulate_dlt` that training differentiates through is model.triangulation.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np

from .cameras import Camera, Intrinsics, distort

#: Newton steps of `undistort_points`: H36M's distortion is mild, a handful reach float64 precision.
UNDISTORT_ITERATIONS = 8
#: `triangulate_robust`'s default inlier threshold, as a fraction of the frame width (the frames may be scaled).
ROBUST_THRESHOLD = 0.05
#: `triangulate_robust`'s reweighted refits of the inliers (Tukey's biweight of their reprojection errors).
ROBUST_IRLS = 3
#: `fuse_lifted`: Weiszfeld steps of the per-joint geometric median, then Tukey-reweighted means with this cutoff, mm
#: (a lifted joint this far from the others' consensus counts nothing).
FUSE_MEDIAN_STEPS = 20
FUSE_THRESHOLD = 200.0
FUSE_IRLS = 3


def undistort_points(points: np.ndarray, k: Intrinsics, iterations: int = UNDISTORT_ITERATIONS) -> np.ndarray:
    """(..., 2) distorted pixels -> (..., 2) undistorted normalised coordinates (X/Z, Y/Z) of one camera.

    Newton's method on `cameras.distort` (analytic 2x2 Jacobian) from the distorted coordinates as the first guess;
    `project(cam, k)` of the result's ray gives the pixels back to float64 precision for points in the image."""
    px = np.asarray(points, float)
    xd = np.stack([(px[..., 0] - k.cx) / k.fx, (px[..., 1] - k.cy) / k.fy], axis=-1)
    xy = xd.copy()
    for _ in range(iterations):
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        s = 1 + k.k1 * r2 + k.k2 * r2 ** 2 + k.k3 * r2 ** 3 + k.p1 * y + k.p2 * x
        g = k.k1 + 2 * k.k2 * r2 + 3 * k.k3 * r2 ** 2                   # d radial / d r2
        dsdx, dsdy = 2 * g * x + k.p2, 2 * g * y + k.p1
        a, b = s + x * dsdx + 2 * k.p2 * x, x * dsdy + 2 * k.p2 * y     # d xd / d (x, y)
        c, d = y * dsdx + 2 * k.p1 * x, s + y * dsdy + 2 * k.p1 * y     # d yd / d (x, y)
        res = distort(xy, k) - xd
        det = a * d - b * c
        det = np.where(np.abs(det) > 1e-12, det, 1e-12)
        xy = xy - np.stack([(d * res[..., 0] - b * res[..., 1]) / det,
                            (a * res[..., 1] - c * res[..., 0]) / det], axis=-1)
    return xy


def projection_matrices(cameras: Sequence[Camera]) -> np.ndarray:
    """V cameras -> (V, 3, 4) [R | t]: world mm -> camera mm (the normalised camera; intrinsics not included)."""
    return np.stack([np.concatenate([np.asarray(c.extrinsics.R, float), np.asarray(c.extrinsics.t, float)[:, None]],
                                    axis=1) for c in cameras])


def reprojection_errors(world: np.ndarray, points: np.ndarray, cameras: Sequence[Camera]) -> np.ndarray:
    """world (..., 3) mm, points (V, ..., 2) px -> (V, ...) Euclidean reprojection error in px (H36M distortion)."""
    world = np.asarray(world, float)
    return np.stack([np.linalg.norm(c.project(world) - np.asarray(points[v], float), axis=-1)
                     for v, c in enumerate(cameras)])


def _weights(points: np.ndarray, weights) -> np.ndarray:
    """(V, ..., 2) points, weights or None -> (V, ...) float weights, 0 where a point is not finite."""
    finite = np.isfinite(points).all(axis=-1)
    w = np.ones(finite.shape) if weights is None else np.broadcast_to(np.asarray(weights, float), finite.shape)
    w = np.where(finite & np.isfinite(w), np.clip(w, 0.0, None), 0.0)
    return w


def _solve(xy: np.ndarray, P: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The weighted linear least-squares point: xy (V, M, 2) normalised, P (V, 3, 4), w (V, M) -> (M, 3) mm (NaN
    where fewer than two views have weight)."""
    xy = np.where(w[..., None] > 0, xy, 0.0)
    # the solution does not change with a common factor of a point's weights: divide them by their largest, so that
    # the singularity test below sees matrices of the same size whatever the confidences' scale
    w = w / np.maximum(w.max(axis=0, keepdims=True), 1e-300)
    # rows (V, M, 2, 4): x P3 - P1, y P3 - P2
    rows = xy[..., None] * P[:, None, 2:3, :] - P[:, None, :2, :]
    rows = rows * w[..., None, None]
    a = rows.reshape(rows.shape[0], rows.shape[1], 2, 4).transpose(1, 0, 2, 3).reshape(rows.shape[1], -1, 4)
    lhs = np.einsum("mri,mrj->mij", a[..., :3], a[..., :3])
    rhs = -np.einsum("mri,mr->mi", a[..., :3], a[..., 3])
    ok = (w > 0).sum(axis=0) >= 2
    lhs[~ok] = np.eye(3)
    rhs[~ok] = 0.0
    ok &= np.abs(np.linalg.det(lhs)) > 1e-12 * np.maximum(np.abs(lhs).max(axis=(1, 2)), 1.0) ** 3
    lhs[~ok] = np.eye(3)
    out = np.linalg.solve(lhs, rhs[..., None])[..., 0]
    out[~ok] = np.nan
    return out


def _dlt(xy: np.ndarray, P: np.ndarray, focal: np.ndarray, w: np.ndarray, refine: int) -> np.ndarray:
    """`triangulate_dlt` on undistorted points: xy (V, M, 2), P (V, 3, 4), focal (V,) px, w (V, M) -> (M, 3) mm."""
    out = _solve(xy, P, w)
    for _ in range(refine):
        depth = np.einsum("vj,mj->vm", P[:, 2, :3], np.nan_to_num(out)) + P[:, 2, 3:4]      # (V, M) mm
        scale = np.where(depth > 1e-6, focal[:, None] / np.where(depth > 1e-6, depth, 1.0), 0.0)
        again = _solve(xy, P, w * scale)
        out = np.where(np.isfinite(again), again, out)
    return out


def _prepare(points: np.ndarray, cameras: Sequence[Camera], weights) -> tuple:
    """Checked points -> (leading shape, undistorted xy (V, M, 2), P, focal (V,), weights (V, M), px (V, M, 2))."""
    points = np.asarray(points, float)
    V = len(cameras)
    if V < 1 or points.shape[0] != V or points.shape[-1] != 2:
        raise ValueError(f"points must be (V={V}, ..., 2), got {points.shape}")
    lead = points.shape[1:-1]
    px = points.reshape(V, -1, 2)
    w = _weights(px, None if weights is None
                 else np.broadcast_to(np.asarray(weights, float), points.shape[:-1]).reshape(V, -1))
    xy = np.stack([undistort_points(px[v], c.intrinsics) for v, c in enumerate(cameras)])
    focal = np.array([(c.intrinsics.fx + c.intrinsics.fy) / 2 for c in cameras])
    return lead, xy, projection_matrices(cameras), focal, w, px


def triangulate_dlt(points: np.ndarray, cameras: Sequence[Camera], weights: np.ndarray | None = None,
                    refine: int = 0) -> np.ndarray:
    """Weighted linear (DLT) triangulation: points (V, ..., 2) px, V cameras, weights (V, ...) or None -> world
    (..., 3) mm. `refine` extra passes reweight each view's rows by focal / depth (pixel reprojection error); 0 = the
    plain algebraic DLT. NaN where fewer than two views have a finite point with positive weight."""
    lead, xy, P, focal, w, _ = _prepare(points, cameras, weights)
    return _dlt(xy, P, focal, w, refine).reshape(lead + (3,))


def triangulate_robust(points: np.ndarray, cameras: Sequence[Camera], weights: np.ndarray | None = None,
                       threshold_px: float | None = None, refine: int = 2, irls: int = ROBUST_IRLS
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Triangulation that survives a bad view: points (V, ..., 2) px, V cameras, weights (V, ...) or None ->
    (world (..., 3) mm, inliers (V, ...) bool). Every pair of usable views is a hypothesis (see the module doc);
    `threshold_px`: the inlier reprojection error, px (default ROBUST_THRESHOLD x the first camera's frame width);
    the winner's inliers are re-triangulated with the weighted DLT refined `refine` times, then `irls` times with
    each inlier's weight also multiplied by Tukey's biweight of its reprojection error (a view that agreed only just
    counts little). Points with no pair of views agreeing within the threshold keep the DLT over all their usable
    views."""
    lead, xy, P, focal, w, px = _prepare(points, cameras, weights)
    V, m = w.shape
    usable = w > 0
    thr = ROBUST_THRESHOLD * cameras[0].intrinsics.width if threshold_px is None else float(threshold_px)
    best_count = np.zeros(m, int)
    best_err = np.full(m, np.inf)
    best_in = np.zeros((V, m), bool)
    for a, b in combinations(range(V), 2):
        pair = np.zeros((V, m))
        pair[[a, b]] = usable[[a, b]]
        x = _dlt(xy, P, focal, pair, 0)                                             # (M, 3)
        err = reprojection_errors(x, px, cameras)                                   # (V, M)
        inl = usable & (err < thr) & np.isfinite(x).all(-1)[None]
        count = inl.sum(0)
        total = np.where(inl, err, 0.0).sum(0)
        better = (count > best_count) | ((count == best_count) & (count > 0) & (total < best_err))
        best_count = np.where(better, count, best_count)
        best_err = np.where(better, total, best_err)
        best_in[:, better] = inl[:, better]
    none = best_count < 2
    best_in[:, none] = usable[:, none]
    weights_in = np.where(best_in, w, 0.0)
    world = _dlt(xy, P, focal, weights_in, refine)
    for _ in range(irls):       # Tukey's biweight of each inlier's reprojection error, c = the threshold
        err = reprojection_errors(np.nan_to_num(world), px, cameras)
        tukey = np.where(err < thr, (1 - (err / thr) ** 2) ** 2, 0.0)
        tukey = np.where(none[None], 1.0, tukey)
        again = _dlt(xy, P, focal, weights_in * tukey, refine)
        world = np.where(np.isfinite(again), again, world)
    return world.reshape(lead + (3,)), best_in.reshape((V,) + lead)


def fuse_lifted(poses: np.ndarray, rotations: np.ndarray, weights: np.ndarray | None = None,
                threshold: float = FUSE_THRESHOLD) -> np.ndarray:
    """Lift-then-fuse: each view's lifted pose rotated into the world and the views fused per joint, robustly.

    poses (V, ..., J, 3) root-relative camera mm (a lifter's output per view, joint 0 the root), rotations (V, 3, 3)
    world -> camera R of each view, weights (V, ..., J) >= 0 or None (1; e.g. the 2-D confidence of the joint the
    lifted one came from) -> (..., J, 3) root-relative world mm (NaN where no view has weight).
    A root-relative pose has no translation, so a view's world pose is R^T X. Per joint: the weighted geometric median
    of the views (`FUSE_MEDIAN_STEPS` Weiszfeld steps from the weighted mean; breakdown point one half: one bad view of
    three or four moves it by about the good views' spread, the mean by a quarter of the bad view's error), then
    `FUSE_IRLS` weighted means reweighted by Tukey's biweight of each view's distance to the estimate (cutoff
    `threshold` mm; where every view is farther, the median stays). Finally the root joint is subtracted again, as the
    lifting rows' protocol aligns roots."""
    P = np.asarray(poses, float)
    R = np.asarray(rotations, float)
    if P.ndim < 3 or P.shape[-1] != 3 or R.shape != (P.shape[0], 3, 3):
        raise ValueError(f"poses must be (V, ..., J, 3) with rotations (V, 3, 3), got {P.shape} and {R.shape}")
    world = np.einsum("vij,v...i->v...j", R, P)                                 # R^T X per view
    w = _weights(world[..., :2], weights) * np.isfinite(world[..., 2])          # (V, ..., J), 0 where not finite
    world = np.where(w[..., None] > 0, world, 0.0)
    total = w.sum(0)
    none = total <= 0
    est = (w[..., None] * world).sum(0) / np.where(none, 1.0, total)[..., None]
    for _ in range(FUSE_MEDIAN_STEPS):
        inv = w / np.maximum(np.linalg.norm(world - est, axis=-1), 1e-3)
        est = (inv[..., None] * world).sum(0) / np.maximum(inv.sum(0), 1e-30)[..., None]
    for _ in range(FUSE_IRLS):
        d = np.linalg.norm(world - est, axis=-1)
        tw = w * np.where(d < threshold, (1 - (d / threshold) ** 2) ** 2, 0.0)
        s = tw.sum(0)
        again = (tw[..., None] * world).sum(0) / np.where(s > 0, s, 1.0)[..., None]
        est = np.where((s > 0)[..., None], again, est)
    est = np.where(none[..., None], np.nan, est)
    return est - est[..., :1, :]


__all__ = ["undistort_points", "projection_matrices", "reprojection_errors", "triangulate_dlt", "triangulate_robust",
           "fuse_lifted", "FUSE_MEDIAN_STEPS", "FUSE_THRESHOLD", "FUSE_IRLS",
           "UNDISTORT_ITERATIONS", "ROBUST_THRESHOLD", "ROBUST_IRLS"]
