"""PoseFormer lifter (Zheng et al., ICCV 2021): 2-D joint sequences -> root-relative 3-D joints.

Input (N, T, J, 2), T <= receptive_field, J = 17: 2-D joints normalised to [-1, 1] over the frame they
were measured in; `PoseNetwork.lift` feeds crop coordinates u in [0, 1] as 2u - 1. (Screen-normalised
coordinates in the style of VideoPose3D, x / w * 2 - [1, h / w], work the same; train and test with one.)
Output: root-relative 3-D joints in the camera frame, mm: (N, T, J, 3) when seq2seq, else (N, 1, J, 3)
for the centre frame T // 2. Internally the network regresses metres and multiplies by
output_scale_mm; the root joint (index 0) is subtracted so it is exactly 0.

Architecture: each joint's (x, y) -> Linear -> joint_dim, + a learned joint embedding; `depth_spatial`
pre-norm transformer blocks over the J joints of every frame; the J x joint_dim outputs are flattened
into one frame token (J * joint_dim wide), + a learned frame embedding; `depth_temporal` blocks over
the frames; LayerNorm. Centre-frame mode takes a learned weighted sum over frames (PoseFormer's
Conv1d(T, 1, 1)); seq2seq maps every frame token. Head: LayerNorm + Linear -> J * 3. Clips shorter than
the receptive field use the centred slice of the frame embedding and weights. `predict_sequence` gives
a prediction for every frame of a sequence of any length (sliding windows with edge padding).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import LifterConfig
from .transformer import Block, init_weights, run_blocks


class PoseFormer(nn.Module):
    """(N, T, J, 2) in [-1, 1] -> (N, T, J, 3) if seq2seq else (N, 1, J, 3); mm, root-relative."""

    #: Parameters exempt from weight decay (timm's convention): the position tables.
    NO_WEIGHT_DECAY = ("joint_pos", "frame_pos")

    def __init__(self, cfg: LifterConfig):
        super().__init__()
        if cfg.receptive_field < 1 or cfg.receptive_field % 2 == 0:
            raise ValueError(f"receptive_field must be odd and positive, got {cfg.receptive_field}")
        self.cfg = cfg
        j, c, rf = cfg.num_joints, cfg.joint_dim, cfg.receptive_field
        e = j * c
        self.grad_checkpointing = False
        n = cfg.depth_spatial + cfg.depth_temporal
        dpr = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        self.joint_embed = nn.Linear(2, c)
        self.joint_pos = nn.Parameter(torch.zeros(j, c))
        self.spatial_blocks = nn.ModuleList(
            Block(c, cfg.num_heads, cfg.mlp_ratio, dpr[i]) for i in range(cfg.depth_spatial))
        self.spatial_norm = nn.LayerNorm(c)
        self.frame_pos = nn.Parameter(torch.zeros(rf, e))
        self.temporal_blocks = nn.ModuleList(
            Block(e, cfg.num_heads, cfg.mlp_ratio, dpr[cfg.depth_spatial + i]) for i in range(cfg.depth_temporal))
        self.temporal_norm = nn.LayerNorm(e)
        self.head = nn.Sequential(nn.LayerNorm(e), nn.Linear(e, j * 3))
        self.apply(init_weights)
        nn.init.trunc_normal_(self.joint_pos, std=0.02)
        nn.init.trunc_normal_(self.frame_pos, std=0.02)
        if not cfg.seq2seq:  # PoseFormer's weighted mean, a Conv1d(rf, 1, kernel 1)
            bound = 1.0 / math.sqrt(rf)
            self.frame_weights = nn.Parameter(torch.empty(rf).uniform_(-bound, bound))
            self.frame_bias = nn.Parameter(torch.empty(1).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, j, _ = x.shape
        rf = self.cfg.receptive_field
        if t > rf:
            raise ValueError(f"{t} frames exceed the receptive field {rf}; use predict_sequence")
        if j != self.cfg.num_joints:
            raise ValueError(f"expected {self.cfg.num_joints} joints, got {j}")
        lo = (rf - t) // 2
        h = self.joint_embed(x.reshape(n * t, j, 2)) + self.joint_pos
        h = self.spatial_norm(run_blocks(self.spatial_blocks, h, None, self.grad_checkpointing))
        h = h.reshape(n, t, -1) + self.frame_pos[lo:lo + t]
        h = self.temporal_norm(run_blocks(self.temporal_blocks, h, None, self.grad_checkpointing))
        if not self.cfg.seq2seq:
            h = (torch.einsum("t,ntc->nc", self.frame_weights[lo:lo + t], h) + self.frame_bias)[:, None]
        out = self.head(h).reshape(n, h.shape[1], j, 3) * self.cfg.output_scale_mm
        return out - out[:, :, :1]

    def predict_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """A 3-D pose for every frame: (N, T, J, 2) for any T -> (N, T, J, 3).

        Centre-frame mode: one window of receptive_field frames per output frame, centred on it, the
        sequence padded by repeating its first / last frame (PoseFormer's test-time protocol).
        seq2seq: consecutive windows of up to receptive_field frames.
        """
        n, t, j, _ = x.shape
        rf = self.cfg.receptive_field
        if self.cfg.seq2seq:
            return torch.cat([self(x[:, s:s + rf]) for s in range(0, t, rf)], dim=1)
        pad = rf // 2
        xp = torch.cat([x[:, :1].expand(-1, pad, -1, -1), x, x[:, -1:].expand(-1, pad, -1, -1)], dim=1)
        windows = xp.unfold(1, rf, 1)  # (N, T, J, 2, rf)
        windows = windows.permute(0, 1, 4, 2, 3).reshape(n * t, rf, j, 2)
        return self(windows).reshape(n, t, j, 3)
