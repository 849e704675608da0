"""h36m_tools.metrics against independent reference implementations, on the real H36M samples."""
from __future__ import annotations

import numpy as np
import pytest

from h36m.h36m_tools import metrics as M


# ----- reference definitions, written independently of the library (VideoPose3D common/loss.py, numpy) --------

def ref_mpjpe(predicted, target):
    return np.mean(np.linalg.norm(predicted - target, axis=len(target.shape) - 1))


def ref_p_mpjpe(predicted, target):
    """VideoPose3D's p_mpjpe verbatim: explicit SVD, sign of the last singular vector fixed."""
    muX = np.mean(target, axis=1, keepdims=True)
    muY = np.mean(predicted, axis=1, keepdims=True)
    X0 = target - muX
    Y0 = predicted - muY
    normX = np.sqrt(np.sum(X0 ** 2, axis=(1, 2), keepdims=True))
    normY = np.sqrt(np.sum(Y0 ** 2, axis=(1, 2), keepdims=True))
    X0 /= normX
    Y0 /= normY
    H = np.matmul(X0.transpose(0, 2, 1), Y0)
    U, s, Vt = np.linalg.svd(H)
    V = Vt.transpose(0, 2, 1)
    R = np.matmul(V, U.transpose(0, 2, 1))
    sign_detR = np.sign(np.expand_dims(np.linalg.det(R), axis=1))
    V[:, :, -1] *= sign_detR
    s[:, -1] *= sign_detR.flatten()
    R = np.matmul(V, U.transpose(0, 2, 1))
    tr = np.expand_dims(np.sum(s, axis=1, keepdims=True), axis=2)
    a = tr * normX / normY
    t = muX - a * np.matmul(muY, R)
    predicted_aligned = a * np.matmul(predicted, R) + t
    return np.mean(np.linalg.norm(predicted_aligned - target, axis=len(target.shape) - 1))


def ref_n_mpjpe(predicted, target):
    norm_predicted = np.mean(np.sum(predicted ** 2, axis=-1, keepdims=True), axis=-2, keepdims=True)
    norm_target = np.mean(np.sum(target * predicted, axis=-1, keepdims=True), axis=-2, keepdims=True)
    return ref_mpjpe(norm_target / norm_predicted * predicted, target)


def ref_mpjve(predicted, target):
    return np.mean(np.linalg.norm(np.diff(predicted, axis=0) - np.diff(target, axis=0), axis=len(target.shape) - 1))


def ref_pck(pred, gt, thr, norm):
    hits = 0
    for n in range(gt.shape[0]):
        for j in range(gt.shape[1]):
            hits += np.hypot(*(pred[n, j] - gt[n, j])) <= thr * norm[n]
    return hits / gt.size * 2


@pytest.fixture(scope="module")
def inputs(realdata):
    d = np.load(realdata / "metric_inputs.npz")
    return {k: d[k].astype(np.float64) for k in ("gt3d_rootrel_mm", "pred3d_rootrel_mm", "gt2d_px", "det2d_px")}


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# ----- the real samples ---------------------------------------------------------------------------------------

def test_3d_metrics_match_reference_definitions(inputs):
    pred, gt = inputs["pred3d_rootrel_mm"], inputs["gt3d_rootrel_mm"]
    assert M.mpjpe(pred, gt) == pytest.approx(ref_mpjpe(pred, gt), abs=1e-6)
    assert M.p_mpjpe(pred, gt) == pytest.approx(ref_p_mpjpe(pred.copy(), gt.copy()), abs=1e-6)
    assert M.n_mpjpe(pred, gt) == pytest.approx(ref_n_mpjpe(pred, gt), abs=1e-6)
    assert M.mpjve(pred, gt) == pytest.approx(ref_mpjve(pred, gt), abs=1e-6)
    # the perturbation is rotation + scale + shift + noise: each alignment removes part of the error
    assert M.p_mpjpe(pred, gt) < M.n_mpjpe(pred, gt) < M.mpjpe(pred, gt)
    assert M.mpjpe(pred, gt, root=0) < M.mpjpe(pred, gt)  # the prediction is shifted
    assert M.mpjpe(pred, gt, root=0) == pytest.approx(ref_mpjpe(pred - pred[:, :1], gt - gt[:, :1]), abs=1e-6)


def test_2d_metrics_on_the_real_detector(inputs, realdata):
    det, gt = inputs["det2d_px"], inputs["gt2d_px"]
    body = np.load(realdata / "mmpose_h36m" / "test_h36m_body3d.npz")
    side = body["scale"] * 200.0                         # mmpose's box side: 1.2 x max side of the joints' box
    for thr in (0.05, 0.1, 0.2):
        assert M.pck(det, gt, thr, side) == pytest.approx(ref_pck(det, gt, thr, side), abs=1e-12)
    err = np.linalg.norm(det - gt, axis=-1)
    assert 2 < M.mean_error_2d(det, gt) < 8                 # the README: a real detector, 2-8 px off
    assert M.mean_error_2d(det, gt) == pytest.approx(err.mean(), abs=1e-9)
    assert M.mse_2d(det, gt) == pytest.approx(((det - gt) ** 2).mean(), abs=1e-9)
    assert M.pck(det, gt, 0.2, side) == 1.0
    boxes = np.concatenate([body["center"] - side[:, None] / 2, body["center"] + side[:, None] / 2], axis=1)
    np.testing.assert_allclose(M.box_max_side(boxes), side)


def test_oks_ap_ar_through_pycocotools(inputs, realdata):
    gt = inputs["gt2d_px"]
    box = np.concatenate([gt.min(axis=1), gt.max(axis=1)], axis=1)
    ap, ar = M.oks_ap_ar(gt, gt, box)
    assert ap == pytest.approx(1.0) and ar == pytest.approx(1.0)
    ap_det, ar_det = M.oks_ap_ar(inputs["det2d_px"], gt, box)
    assert 0.5 < ap_det <= 1.0 and 0.5 < ar_det <= 1.0
    # far-off predictions: every OKS is below 0.5, nothing matches
    ap_bad, ar_bad = M.oks_ap_ar(gt + 200.0, gt, box)
    assert ap_bad == 0.0 and ar_bad == 0.0
    # OKS by hand for one frame: exp(-d^2 / (2 s^2 (2 sigma)^2)), s^2 = area
    d2 = ((inputs["det2d_px"] - gt) ** 2).sum(-1)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    oks = np.exp(-d2 / (2 * area[:, None] * (2 * M.OKS_SIGMAS17) ** 2)).mean(-1)
    thresholds = np.linspace(0.5, 0.95, 10)
    assert ar_det == pytest.approx((oks[:, None] >= thresholds[None]).mean(), abs=1e-9)


# ----- properties ---------------------------------------------------------------------------------------------

def test_p_mpjpe_is_invariant_to_similarity_transforms_but_not_reflections(inputs):
    rng = np.random.default_rng(0)
    gt, pred = inputs["gt3d_rootrel_mm"], inputs["pred3d_rootrel_mm"]
    base = M.p_mpjpe(pred, gt)
    r = _random_rotation(rng)
    moved = 1.7 * pred @ r.T + np.array([100.0, -50.0, 3000.0])
    assert M.p_mpjpe(moved, gt) == pytest.approx(base, abs=1e-6)
    assert M.p_mpjpe(1.3 * gt @ r.T + 5.0, gt) == pytest.approx(0.0, abs=1e-6)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])             # a reflection is no rotation: it must not be undone
    assert M.p_mpjpe(mirrored, gt) > 10.0
    aligned = M.procrustes_align(moved, gt)
    assert M.mpjpe(aligned, gt) == pytest.approx(base, abs=1e-6)


def test_n_mpjpe_undoes_scale_only(inputs):
    gt = inputs["gt3d_rootrel_mm"]
    assert M.n_mpjpe(0.8 * gt, gt) == pytest.approx(0.0, abs=1e-9)
    assert M.mpjpe(0.8 * gt, gt) > 50
    r = _random_rotation(np.random.default_rng(1))
    assert M.n_mpjpe(gt @ r.T, gt) > 1.0                   # rotations stay


def test_mpjve_ignores_constant_offsets_and_counts_jitter():
    rng = np.random.default_rng(2)
    gt = np.cumsum(rng.normal(size=(20, 17, 3)), axis=0) * 10
    assert M.mpjve(gt + 42.0, gt) == pytest.approx(0.0, abs=1e-9)
    assert M.mpjve_frames(gt, gt).shape == (19,)
    jitter = gt + rng.normal(size=gt.shape) * 5
    assert M.mpjve(jitter, gt) > 5


def test_accepts_tensors_and_rejects_bad_shapes(inputs):
    torch = pytest.importorskip("torch")
    gt, pred = inputs["gt3d_rootrel_mm"], inputs["pred3d_rootrel_mm"]
    t = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    assert M.mpjpe(t, torch.tensor(gt)) == pytest.approx(M.mpjpe(pred, gt), abs=1e-9)
    assert isinstance(M.p_mpjpe(t, gt), float)
    with pytest.raises(ValueError, match="N, J, 3"):
        M.mpjpe(pred[..., :2], gt[..., :2])
    with pytest.raises(ValueError, match="one value per frame"):
        M.pck(inputs["det2d_px"], inputs["gt2d_px"], 0.1, np.ones(3))
    assert np.isnan(M.mpjpe(np.zeros((0, 17, 3)), np.zeros((0, 17, 3))))
