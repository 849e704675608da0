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
