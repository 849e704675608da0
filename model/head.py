"""2-D joint head: the relation-refined image token and the image's own token grid -> 17 joints (and a scale each).

Shapes: grid (N, h, w, C), keep (N, h, w) bool or None, token (N, C) -> joints (N, J, 2), J = 17, in crop
coordinates: x right, y down, (0, 0) the crop's top-left corner and (1, 1) its bottom-right corner; and, with
`HeadConfig.confidence`, log_scale (N, J): log b, the Laplace scale of each joint's error per coordinate in crop units
(else None). The joints are not clamped (training targets lie in [0, 1]; clamping would cut the gradient).

How (integral regression with a residual):
  g_l   = W_g LN(grid_l) + P_l                      per-location features with a learned position embedding
  q_j   = Q_j + W_r token                            joint queries, conditioned on the refined token
  a_jl  = softmax_l(<q_j, g_l> / sqrt(D) + prior_jl) attention of joint j over the kept locations
  loc_j = sum_l a_jl centre_l                       soft-argmax: explicit location on the grid
  out_j = loc_j + MLP(sum_l a_jl g_l + q_j) + b_j    residual offset from the attended features
The spatial grid gives the location (Swin tokens carry no absolute position, so the head adds it),
the token carries what the temporal and cross-view relations learned. Mean-pose init: prior_jl is a
Gaussian around the template joint j (MEAN_POSE_2D), the MLP's last layer starts at zero and b_j is set
so that the initial output is exactly the template for content-free features.

The scale (per-joint confidence, as residual log-likelihood estimation without its flow):
  spread_j = 1/2 log sum_l a_jl |centre_l - loc_j|^2   log std of the attention around its soft-argmax
  log_b_j = MLP_s(stop_grad(sum_l a_jl g_l + q_j)) + s_j + w stop_grad(spread_j)
                                                     trained with train.losses.laplace_nll; starts at INITIAL_SCALE
  (s_j a learned offset per joint: each joint's typical error; w: how much a spread-out attention says). The branch
  reads what the offset reads, but its gradient stops there: whatever trains the scale leaves the features, and so the
  2-D joints, as they train without it (measured: docs/triangulation.md).
  confidence_j = (1 - exp(-r / b_j))^2, r = CONFIDENCE_RADIUS: under the Laplace model, the probability that both
                 coordinates lie within r of the prediction (in (0, 1] in floats, higher = surer; `confidence`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .config import HeadConfig
from .transformer import init_weights

#: A plausible mean pose of the 17 H36M joints (hip, r_hip, r_knee, r_foot, l_hip, l_knee, l_foot, spine,
#: thorax, neck/nose, head, l_shoulder, l_elbow, l_wrist, r_shoulder, r_elbow, r_wrist), a person facing
#: the camera, centred in the crop, in crop coordinates [0, 1] (x right, y down).
MEAN_POSE_2D = (
    (0.50, 0.54), (0.43, 0.54), (0.43, 0.71), (0.43, 0.88), (0.57, 0.54), (0.57, 0.71), (0.57, 0.88),
    (0.50, 0.42), (0.50, 0.30), (0.50, 0.24), (0.50, 0.16), (0.60, 0.31), (0.64, 0.42), (0.66, 0.52),
    (0.40, 0.31), (0.36, 0.42), (0.34, 0.52),
)


#: The scale b (crop units) the log-scale branch starts at: about the error of a freshly initialised head.
INITIAL_SCALE = 0.05
#: The radius r of `confidence`, crop units: PCK@0.05's threshold (the crop side = 1).
CONFIDENCE_RADIUS = 0.05


def confidence(log_scale: torch.Tensor, radius: float = CONFIDENCE_RADIUS) -> torch.Tensor:
    """Per-joint confidence from the head's log Laplace scale: (...) log b, crop units -> (...) in (0, 1] (1 once b is
    far below the radius), (1 - exp(-radius / b))^2 (see the module doc). Pure and monotone: a smaller scale is a
    higher confidence."""
    return (-torch.expm1(-radius * torch.exp(-log_scale.float()))) ** 2


class JointHead(nn.Module):
    """Soft-argmax joint head with a residual offset. See the module doc for shapes and the maths."""

    #: Exempt from weight decay (timm's convention): the joint queries, the mean-pose prior, the scale offsets.
    NO_WEIGHT_DECAY = ("queries", "prior", "scale_joint", "scale_spread")

    def __init__(self, cfg: HeadConfig, in_dim: int, grid_size: int):
        super().__init__()
        self.cfg = cfg
        d, j, length = cfg.dim, cfg.num_joints, grid_size * grid_size
        self.feat = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, d))
        self.cond = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, d))
        self.pos = nn.Parameter(torch.zeros(length, d))
        self.queries = nn.Parameter(torch.zeros(j, d))
        self.offset = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 2))
        self.scale = d ** -0.5
        centres = (torch.arange(grid_size, dtype=torch.float32) + 0.5) / grid_size
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("centres", torch.stack([cx, cy], dim=-1).reshape(length, 2), persistent=False)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.queries, std=0.02)
        nn.init.zeros_(self.offset[-1].weight)
        template = _template(j)
        sigma = 1.0 / grid_size
        prior = -((self.centres[None] - template[:, None]) ** 2).sum(-1) / (2 * sigma ** 2)  # (J, L)
        self.prior = nn.Parameter(prior)
        self.bias = nn.Parameter(template - prior.softmax(-1) @ self.centres)
        self.log_scale = None
        if cfg.confidence:
            self.log_scale = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.hidden), nn.GELU(),
                                           nn.Linear(cfg.hidden, 1))
            self.log_scale.apply(init_weights)
            nn.init.zeros_(self.log_scale[-1].weight)
            nn.init.constant_(self.log_scale[-1].bias, math.log(INITIAL_SCALE))
            self.scale_joint = nn.Parameter(torch.zeros(j))
            self.scale_spread = nn.Parameter(torch.zeros(()))

    def confidence_parameters(self) -> list[nn.Parameter]:
        """The parameters of the scale (confidence) branch; empty without one."""
        if self.log_scale is None:
            return []
        return list(self.log_scale.parameters()) + [self.scale_joint, self.scale_spread]

    def forward(self, grid: torch.Tensor, keep: Optional[torch.Tensor], token: torch.Tensor
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        n = grid.shape[0]
        g = self.feat(grid.reshape(n, -1, grid.shape[-1])) + self.pos  # (N, L, D)
        q = self.queries + self.cond(token)[:, None]  # (N, J, D)
        logits = (q @ g.transpose(1, 2)) * self.scale + self.prior  # (N, J, L)
        if keep is not None:
            logits = logits.masked_fill(~keep.reshape(n, 1, -1), float("-inf"))
        a = logits.softmax(dim=-1)
        loc = a @ self.centres
        h = a @ g + q
        log_scale = None
        if self.log_scale is not None:
            a, loc_d = a.detach(), loc.detach()
            var = (a * ((self.centres[None, None] - loc_d[:, :, None]) ** 2).sum(-1)).sum(-1)      # (N, J)
            spread = 0.5 * torch.log(var.clamp_min(1e-8))
            log_scale = self.log_scale(h.detach())[..., 0] + self.scale_joint + self.scale_spread * spread
        return loc + self.offset(h) + self.bias, log_scale


def _template(num_joints: int) -> torch.Tensor:
    if num_joints == len(MEAN_POSE_2D):
        return torch.tensor(MEAN_POSE_2D, dtype=torch.float32)
    # another skeleton: joints spread along a vertical line through the crop centre
    y = torch.linspace(0.15, 0.85, num_joints)
    return torch.stack([torch.full_like(y, 0.5), y], dim=-1)
