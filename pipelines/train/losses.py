"""The training losses, as pure functions (the protocol in each docstring, as VideoPose3D's `common/loss.py`)."""
from __future__ import annotations

import torch


def joint_distance(pred: torch.Tensor, target: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
    """The 2-D loss: mean Euclidean distance between predicted and true joints over the present views, all frames
    and joints. pred, target (B, V, F, J, 2) in crop units (the crop side = 1); view_mask (B, V) bool -> scalar."""
    return (pred.float() - target).norm(dim=-1)[view_mask].mean()


def mpjpe_m(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The 3-D loss: MPJPE (protocol #1, no alignment) of root-relative joints, in metres. pred, target (..., J, 3)
    in mm -> scalar in m (so its size is near the 2-D loss's)."""
    return (pred.float() - target).norm(dim=-1).mean() / 1000.0


def laplace_nll(pred: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor,
                view_mask: torch.Tensor) -> torch.Tensor:
    """The confidence loss: the negative log-likelihood of the true joints under a Laplace distribution per coordinate
    centred on the prediction with the head's scale b (residual log-likelihood estimation without its flow):
    log(2 b) + |target - pred| / b, summed over x and y, averaged over the present views, all frames and joints.
    pred, target (B, V, F, J, 2) crop units (the crop side = 1); log_scale (B, V, F, J) log b in crop units;
    view_mask (B, V) bool -> scalar (nats per joint; negative once b is small). Detach `pred` to train the scale
    alone (the coordinates then keep `joint_distance`'s gradient only)."""
    log_b = log_scale.float()[..., None]
    nll = (log_b + torch.log(torch.tensor(2.0, device=log_b.device))
           + (target - pred.float()).abs() * torch.exp(-log_b)).sum(-1)
    return nll[view_mask].mean()


def triangulation_loss(out, view_mask: torch.Tensor, target2d: torch.Tensor, box: torch.Tensor,
                       intrinsics: torch.Tensor, R: torch.Tensor, t: torch.Tensor, world: torch.Tensor,
                       weight3d: float = 1.0, refine: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The triangulate stage's loss: the 2-D network's joints of every view of a clip, mapped to full-frame pixels
    through each view's crop box, triangulated with the clip's own cameras (model.triangulation: undistorted, the
    views weighted by the head's confidences, learnable triangulation's algebraic variant), and compared with the
    world joints; the 2-D loss beside it as an auxiliary term:
        loss = joint_distance (crop units) + weight3d x MPJPE of the world joints (m, no alignment)
    out: the network's ModelOutput (joints2d (B, V, F, J, 2) crop units, log_scale2d (B, V, F, J) or None: every
    present view weighs 1); view_mask (B, V); target2d (B, V, F, J, 2) crop units; box (B, V, F, 4) full-frame px;
    intrinsics (B, V, 9), R (B, V, 3, 3), t (B, V, 3) (model.triangulation.camera_tensors, float64); world
    (B, F, J, 3) mm -> (loss, 2-D error in crop units, MPJPE in m), the last two detached. The geometry runs in
    float64 outside autocast; points fewer than two views determine are left out of the 3-D term."""
    from h36m.model import confidence
    from h36m.model.triangulation import crop_to_frame, triangulate

    err2d = joint_distance(out.joints2d, target2d, view_mask)
    with torch.autocast(out.joints2d.device.type, enabled=False):
        px = crop_to_frame(out.joints2d.double(), box)                               # (B, V, F, J, 2)
        w = view_mask[:, :, None, None].double()
        if out.log_scale2d is not None:
            w = w * confidence(out.log_scale2d).double()
        w = w.expand(px.shape[:-1])
        cams = (intrinsics[:, None, None], R[:, None, None], t[:, None, None])         # (B, 1, 1, V, ...)
        xyz, ok = triangulate(px.permute(0, 2, 3, 1, 4), cams, w.permute(0, 2, 3, 1), refine=refine)
        dist = (xyz - world).norm(dim=-1)                                             # (B, F, J) mm
        m = (dist * ok).sum() / ok.sum().clamp_min(1) / 1000.0
    loss = err2d + weight3d * m.float()
    return loss, err2d.detach(), m.detach().float()
