"""Pose metrics as pure functions over numpy arrays or torch tensors (anything `np.asarray` takes).

3-D metrics take (N, J, 3) joints in mm (J = 17 for H36M), 2-D metrics (N, J, 2) in pixels. Each metric comes as a
per-frame function `*_frames` returning an (N,) float64 array (so evaluations can group frames by action) and as a
float (the mean over all frames and joints). Computation is in float64.

Reference definitions (the ones published H36M tables use; cf. VideoPose3D `common/loss.py`):
  - MPJPE, protocol #1: mean Euclidean distance between predicted and true joints. Both inputs are expected
    root-relative already; pass `root=0` to subtract joint 0 from both first.
  - P-MPJPE, protocol #2: MPJPE after a similarity Procrustes fit of the prediction to the truth, per frame:
    rotation, translation and isotropic scale, reflections excluded (the sign of the SVD's last singular vector is
    fixed so det(R) = +1); Umeyama (1991) / VideoPose3D `p_mpjpe`.
  - N-MPJPE: MPJPE after scaling the prediction per frame by s = <pred, gt> / <pred, pred> (the least-squares
    scale, no rotation or translation); VideoPose3D `n_mpjpe`.
  - MPJVE: mean Euclidean norm of the difference of the first derivatives (finite differences along the frame
    axis N) of prediction and truth, in mm per frame; VideoPose3D `mean_velocity_error`. Frames must be
    consecutive frames of one sequence.
  - PCK@a: share of joints whose 2-D error is at most a * norm (norm per frame, e.g. the crop's side).
  - OKS: COCO's object keypoint similarity, mean over joints of exp(-d^2 / (2 area (2 sigma_j)^2)), with the person's
    area from the tight box of its true joints (`tight_boxes`; COCO uses the segment area, H36M has none);
    AP/AR: COCO keypoint AP/AR over OKS thresholds 0.50:0.05:0.95 (pycocotools), sigmas `OKS_SIGMAS17`.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

#: Per-joint OKS sigmas for the 17 H36M joints. H36M defines none; these are COCO's sigmas for the same body parts
#: (hips 0.107, knees 0.087, ankles/feet 0.089, shoulders 0.079, elbows 0.072, wrists 0.062, nose 0.026), with the
#: COCO hip sigma for the pelvis (root) and the spine, the shoulder sigma for the thorax, and the ear sigma (0.035)
#: for the head top. Order: hip, r_hip, r_knee, r_foot, l_hip, l_knee, l_foot, spine, thorax, neck/nose, head,
#: l_shoulder, l_elbow, l_wrist, r_shoulder, r_elbow, r_wrist.
OKS_SIGMAS17 = np.array([0.107, 0.107, 0.087, 0.089, 0.107, 0.087, 0.089, 0.107, 0.079, 0.026, 0.035,
                         0.079, 0.072, 0.062, 0.079, 0.072, 0.062])


def _np(x) -> np.ndarray:
    """numpy float64 view of an array or a (possibly CUDA / autograd) tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _pair(pred, gt, dims: int) -> tuple[np.ndarray, np.ndarray]:
    p, g = _np(pred), _np(gt)
    if p.shape != g.shape or p.ndim != 3 or p.shape[-1] != dims:
        raise ValueError(f"expected two (N, J, {dims}) arrays of one shape, got {p.shape} and {g.shape}")
    return p, g


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


# ----- 3-D -----------------------------------------------------------------------------------------------------

def mpjpe_frames(pred, gt, root: int | None = None) -> np.ndarray:
    """Protocol #1 per frame: (N, J, 3), (N, J, 3) mm -> (N,) mean joint error in mm."""
    p, g = _pair(pred, gt, 3)
    if root is not None:
        p, g = p - p[:, root:root + 1], g - g[:, root:root + 1]
    return np.linalg.norm(p - g, axis=-1).mean(axis=-1)


def mpjpe(pred, gt, root: int | None = None) -> float:
    """Protocol #1, MPJPE in mm over all frames and joints of (N, J, 3) arrays (root-relative, or pass root=0)."""
    return _mean(mpjpe_frames(pred, gt, root))


def procrustes_align(pred, gt) -> np.ndarray:
    """Similarity Procrustes per frame: pred (N, J, 3) -> s R pred + t closest to gt (N, J, 3) in least squares.

    Rotation, translation and isotropic scale; reflections excluded (det R = +1). Units follow the inputs.
    """
    p, g = _pair(pred, gt, 3)
    mu_p, mu_g = p.mean(axis=1, keepdims=True), g.mean(axis=1, keepdims=True)
    p0, g0 = p - mu_p, g - mu_g
    # cross-covariance M = g0^T p0 (3x3); M = U S V^T; optimal R = U D V^T with D = diag(1, 1, det(U V^T))
    u, s, vt = np.linalg.svd(np.einsum("nji,njk->nik", g0, p0))
    d = np.sign(np.linalg.det(u @ vt))
    d[d == 0] = 1.0
    u[:, :, -1] *= d[:, None]
    s[:, -1] *= d
    r = u @ vt                                                     # rotation mapping pred onto gt
    var_p = (p0 ** 2).sum(axis=(1, 2))
    scale = np.where(var_p > 0, s.sum(axis=1) / np.where(var_p > 0, var_p, 1.0), 1.0)
    return scale[:, None, None] * np.einsum("nik,njk->nji", r, p0) + mu_g


def p_mpjpe_frames(pred, gt) -> np.ndarray:
    """Protocol #2 per frame: MPJPE (mm) after `procrustes_align`, (N, J, 3) x2 -> (N,)."""
    return mpjpe_frames(procrustes_align(pred, gt), gt)


def p_mpjpe(pred, gt) -> float:
    """Protocol #2, P-MPJPE in mm: MPJPE after a per-frame similarity Procrustes fit (no reflections)."""
    return _mean(p_mpjpe_frames(pred, gt))


def n_mpjpe_frames(pred, gt) -> np.ndarray:
    """N-MPJPE per frame: MPJPE (mm) after scaling pred by <pred, gt> / <pred, pred> per frame; (N,) array."""
    p, g = _pair(pred, gt, 3)
    num, den = (p * g).sum(axis=(1, 2)), (p * p).sum(axis=(1, 2))
    scale = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    return mpjpe_frames(scale[:, None, None] * p, g)


def n_mpjpe(pred, gt) -> float:
    """N-MPJPE in mm: MPJPE after the least-squares scale-only alignment per frame (VideoPose3D's n_mpjpe)."""
    return _mean(n_mpjpe_frames(pred, gt))


def mpjve_frames(pred, gt) -> np.ndarray:
    """MPJVE per velocity sample: (N, J, 3) consecutive frames, mm -> (N-1,) mean joint velocity error, mm/frame."""
    p, g = _pair(pred, gt, 3)
    return np.linalg.norm(np.diff(p, axis=0) - np.diff(g, axis=0), axis=-1).mean(axis=-1)


def mpjve(pred, gt) -> float:
    """MPJVE in mm/frame: mean norm of the difference of first derivatives along N (consecutive frames)."""
    return _mean(mpjve_frames(pred, gt))


# ----- 2-D -----------------------------------------------------------------------------------------------------

def joint_errors_2d(pred, gt) -> np.ndarray:
    """(N, J, 2), (N, J, 2) px -> (N, J) Euclidean joint errors in px."""
    p, g = _pair(pred, gt, 2)
    return np.linalg.norm(p - g, axis=-1)


def pck_frames(pred, gt, threshold: float, norm) -> np.ndarray:
    """Per frame, the share of the J joints with error <= threshold * norm[n]; norm (N,) px -> (N,) in [0, 1]."""
    err = joint_errors_2d(pred, gt)
    n = _np(norm).reshape(-1)
    if n.shape[0] != err.shape[0]:
        raise ValueError(f"norm must have one value per frame ({err.shape[0]}), got shape {n.shape}")
    return (err <= threshold * n[:, None]).mean(axis=-1)


def pck(pred, gt, threshold: float, norm) -> float:
    """PCK@threshold: share of joints within threshold * norm of the truth; (N, J, 2) px, norm (N,) px."""
    return _mean(pck_frames(pred, gt, threshold, norm))


def mean_error_2d(pred, gt) -> float:
    """Mean Euclidean 2-D joint error in px over all frames and joints."""
    return _mean(joint_errors_2d(pred, gt))


def mse_2d(pred, gt) -> float:
    """Mean squared 2-D error in px^2: the mean over frames, joints and both coordinates of (pred - gt)^2."""
    p, g = _pair(pred, gt, 2)
    return _mean((p - g) ** 2)


def box_max_side(boxes) -> np.ndarray:
    """(N, 4) boxes x0, y0, x1, y1 -> (N,) the longer side (the PCK normaliser)."""
    b = _np(boxes)
    return np.maximum(b[..., 2] - b[..., 0], b[..., 3] - b[..., 1])


def tight_boxes(joints) -> np.ndarray:
    """(N, J, 2) px -> (N, 4) x0, y0, x1, y1: the tight box of each frame's joints."""
    j = _np(joints)
    return np.concatenate([j.min(axis=-2), j.max(axis=-2)], axis=-1)


def oks_frames(pred, gt, areas, sigmas=OKS_SIGMAS17) -> np.ndarray:
    """(N, J, 2) px, (N, J, 2) px, (N,) px^2 person areas -> (N,) OKS in [0, 1] (all joints visible):
    mean_j exp(-d_j^2 / (2 area k_j^2)), k_j = 2 sigma_j, as pycocotools computes it."""
    p, g = _pair(pred, gt, 2)
    d2 = ((p - g) ** 2).sum(-1)
    k2 = (2 * _np(sigmas).reshape(1, -1)) ** 2
    a = _np(areas).reshape(-1, 1)
    return np.exp(-d2 / (2 * np.maximum(a, np.spacing(1)) * k2)).mean(axis=-1)


def oks_ap_ar(pred, gt, boxes, sigmas=OKS_SIGMAS17, scores=None) -> tuple[float, float]:
    """COCO keypoint AP and AR (OKS thresholds 0.50:0.95) through pycocotools, one person per image.

    pred, gt (N, J, 2) px; boxes (N, 4) x0, y0, x1, y1 px: the person box whose area is the OKS scale (Table I:
    `tight_boxes(gt)`); sigmas (J,); scores (N,) detection confidences (default 1). Returns (AP, AR) in [0, 1].
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    p, g = _pair(pred, gt, 2)
    b = _np(boxes).reshape(-1, 4)
    n, j = g.shape[:2]
    sig = _np(sigmas).reshape(-1)
    if sig.shape[0] != j or b.shape[0] != n:
        raise ValueError(f"need {j} sigmas and {n} boxes, got {sig.shape[0]} and {b.shape[0]}")
    if n == 0:
        return float("nan"), float("nan")
    sc = np.ones(n) if scores is None else _np(scores).reshape(-1)
    wh = np.maximum(b[:, 2:] - b[:, :2], 1e-6)

    def kps(x):
        return np.concatenate([x, np.full((j, 1), 2.0)], axis=1).reshape(-1).tolist()

    images = [{"id": i + 1, "width": 1, "height": 1} for i in range(n)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "num_keypoints": j,
             "keypoints": kps(g[i]), "bbox": [float(b[i, 0]), float(b[i, 1]), float(wh[i, 0]), float(wh[i, 1])],
             "area": float(wh[i, 0] * wh[i, 1])} for i in range(n)]
    dets = [{"image_id": i + 1, "category_id": 1, "keypoints": kps(p[i]), "score": float(sc[i])} for i in range(n)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns,
                        "categories": [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(j)],
                                        "skeleton": []}]}
        coco.createIndex()
        result = coco.loadRes(dets)
        ev = COCOeval(coco, result, iouType="keypoints")
        ev.params.kpt_oks_sigmas = sig
        ev.params.useSegm = None
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[5])
