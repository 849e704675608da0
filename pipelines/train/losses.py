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
