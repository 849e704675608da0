"""Spatial module: a Swin transformer per image (timm), with optional patch selection.

Shapes: images (N, 3, H, W) with H = W = cfg.img_size, ImageNet-normalised
        -> SpatialFeatures(grid (N, h, w, C), keep (N, h, w) bool or None, pooled (N, C)),
where h = w = img_size / (patch_size * 2 ** (stages - 1)) (7 for Swin-T at 224) and C = cfg.num_features
(768 for Swin-T). `pooled` is the frame-image aggregation: one token per image, the mean of the kept
final tokens (Swin's own global average pool when selection is off).

Patch selection (cfg.keep_ratio < 1)
------------------------------------
Where it acts: at the start of stage `cfg.select_stage`, right after that stage's patch merging (for
`paper`, select_stage = 2: the 14 x 14 grid that enters Swin-T's third stage, whose six blocks hold
about half of the network's FLOPs). The earlier stages run unchanged on the full grid.

How tokens are scored: a `SaliencyScorer`, i.e. the softmax attention a learned query pays to every
token (s = softmax_l(<q, W LN(x_l)> / sqrt(d))). The K = round(keep_ratio * L) tokens with the highest
attention are kept, the rest are dropped for the rest of the network. Top-k is not differentiable, so
the kept tokens are multiplied by the straight-through gate 1 + L (s - stopgrad(s)) (value exactly 1,
so the forward pass is unchanged) which gives the query a gradient: it learns to attend to the tokens
whose features the pose loss needs, i.e. the person.

How it saves compute: from then on only the kept tokens exist. Every block of the selected and later
stages runs its LayerNorms, qkv, projection and MLP (~95% of a Swin block's FLOPs) on K instead of L
tokens. Window attention is kept exactly: the kept tokens' q, k, v are put in their (shifted) windows
and each kept token attends to the kept tokens of its own window, with Swin's relative position bias
and shifted-window region mask (dropped slots are masked keys). The attention matmuls still cost as
much as in the full grid (a few % of a block), which the benchmark's FLOP counts include.
At the next patch merging the kept tokens are put back on a zero grid, the saliency map is 2 x 2
max-pooled, and only the round(keep_ratio * L') merged tokens of highest pooled saliency are formed
and kept (dropped children contribute zeros). With keep_ratio = 1 (or `_forward_selected(x, 1.0)`)
this path reproduces timm's Swin output exactly (tested), so pretrained Swin weights keep their
meaning. Dropped positions are zero in `grid` and False in `keep`.
Requirements: the token grid of every stage from select_stage on is a multiple of the window size or
no larger than it (true for Swin-T at 224 and for `tiny`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from torch.utils.checkpoint import checkpoint

from .config import SpatialConfig


class SpatialFeatures(NamedTuple):
    """grid (N, h, w, C) final tokens after the last LayerNorm (dropped ones are 0); keep (N, h, w) bool
    or None when selection is off; pooled (N, C) mean of the kept tokens (the image token)."""
    grid: torch.Tensor
    keep: Optional[torch.Tensor]
    pooled: torch.Tensor


class SaliencyScorer(nn.Module):
    """Attention of one learned query over the tokens of an image. x (N, L, C) -> (N, L), rows sum to 1."""

    def __init__(self, dim: int, qk_dim: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, qk_dim)
        self.query = nn.Parameter(torch.zeros(qk_dim))
        nn.init.trunc_normal_(self.query, std=1.0)
        nn.init.trunc_normal_(self.key.weight, std=dim ** -0.5)
        nn.init.zeros_(self.key.bias)
        self.scale = qk_dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.key(self.norm(x)) @ self.query) * self.scale).softmax(dim=-1)


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (N, L, C), idx (N, K) -> (N, K, C)."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def _scatter(x: torch.Tensor, idx: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of _gather onto zeros: x (N, K, C), idx (N, K) -> (N, length, C)."""
    out = x.new_zeros(x.shape[0], length, x.shape[-1])
    return out.scatter(1, idx[..., None].expand(-1, -1, x.shape[-1]), x)


def _window_slots(block: SwinTransformerBlock, rows: torch.Tensor, cols: torch.Tensor, hw: tuple[int, int]):
    """Where timm's (shifted) window partition of an (H, W) grid puts the tokens at (rows, cols) (N, K):
    slot = window index * window area + position in the window. Returns (slots (N, K), number of windows)."""
    H, W = hw
    wh, ww = block.window_size
    sh, sw = block.shift_size
    r = (rows - sh) % H  # position after timm's torch.roll(x, -shift)
    c = (cols - sw) % W
    window = (r // wh) * (W // ww) + c // ww
    return window * (wh * ww) + (r % wh) * ww + c % ww, (H // wh) * (W // ww)


def sparse_block_forward(block: SwinTransformerBlock, x: torch.Tensor, slots: torch.Tensor,
                         n_windows: int) -> torch.Tensor:
    """A timm Swin block on kept tokens only. x (N, K, C) -> (N, K, C); slots from _window_slots.

    LayerNorms, qkv, projection and MLP run on the K kept tokens; q, k, v are placed in their windows
    and window attention runs as in timm (relative position bias, shifted-window mask) with empty
    slots masked out as keys, then the K outputs are gathered back."""
    n, k, _ = x.shape
    attn = block.attn
    area = block.window_area
    qkv = attn.qkv(block.norm1(x))  # (N, K, 3 C')
    length = n_windows * area
    qkv = _scatter(qkv, slots, length)
    occupied = torch.zeros(n, length, dtype=torch.bool, device=x.device).scatter(1, slots, True)
    q, kk, v = qkv.reshape(n * n_windows, area, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    logits = (q * attn.scale) @ kk.transpose(-2, -1) + attn._get_rel_pos_bias()  # (N nW, heads, area, area)
    if block.attn_mask is not None:  # shifted windows: timm's (nW, area, area) region mask
        logits = (logits.view(n, n_windows, attn.num_heads, area, area) + block.attn_mask[None, :, None]
                  ).view(n * n_windows, attn.num_heads, area, area)
    logits = logits.masked_fill(~occupied.view(n * n_windows, 1, 1, area), torch.finfo(logits.dtype).min)
    h = attn.attn_drop(logits.softmax(dim=-1)) @ v
    h = _gather(h.transpose(1, 2).reshape(n, length, -1), slots)
    x = x + block.drop_path1(attn.proj_drop(attn.proj(h)))
    return x + block.drop_path2(block.mlp(block.norm2(x)))


class SpatialEncoder(nn.Module):
    """Swin transformer per image + optional patch selection. (N, 3, H, W) -> SpatialFeatures (see module doc)."""

    def __init__(self, cfg: SpatialConfig):
        super().__init__()
        _check(cfg)
        self.cfg = cfg
        self.swin = SwinTransformer(
            img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=3, num_classes=0, global_pool="avg",
            embed_dim=cfg.embed_dim, depths=tuple(cfg.depths), num_heads=tuple(cfg.num_heads),
            window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio, drop_path_rate=cfg.drop_path_rate,
        )
        self.num_features = cfg.num_features
        self.grad_checkpointing = False
        self.scorer = None
        if cfg.keep_ratio < 1.0:
            self.scorer = SaliencyScorer(cfg.embed_dim * 2 ** cfg.select_stage, cfg.saliency_dim)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.swin.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor) -> SpatialFeatures:
        if self.scorer is not None:
            return self._forward_selected(images, self.cfg.keep_ratio)
        grid = self.swin.forward_features(images)  # (N, h, w, C), LayerNormed
        return SpatialFeatures(grid, None, grid.mean(dim=(1, 2)))

    def kept_tokens(self, keep_ratio: float) -> list[int]:
        """Number of tokens processed by each stage (full grid before select_stage)."""
        out = []
        for i, g in enumerate(self.cfg.grid_sizes()):
            out.append(g * g if i < self.cfg.select_stage else max(1, round(keep_ratio * g * g)))
        return out

    def _forward_selected(self, images: torch.Tensor, keep_ratio: float) -> SpatialFeatures:
        """Forward with patch selection at `keep_ratio` (see module doc); needs `self.scorer`."""
        s = self.cfg.select_stage
        counts = self.kept_tokens(keep_ratio)
        x = self.swin.patch_embed(images)  # (N, H, W, C)
        for stage in self.swin.layers[:s]:
            x = stage(x)
        stage = self.swin.layers[s]
        x = stage.downsample(x)
        n, H, W, c = x.shape
        flat = x.reshape(n, H * W, c)
        sal = self.scorer(flat)  # (N, L)
        idx = sal.topk(counts[s], dim=1).indices.sort(dim=1).values
        x = _gather(flat, idx)
        gate = 1.0 + H * W * (sal.gather(1, idx) - sal.gather(1, idx).detach())
        x = x * gate[..., None]
        sal_map = sal.detach().reshape(n, H, W)
        x = self._sparse_stage(stage, x, idx, (H, W))
        for i in range(s + 1, len(self.swin.layers)):
            stage = self.swin.layers[i]
            c = x.shape[-1]
            dense = _scatter(x, idx, H * W).reshape(n, H // 2, 2, W // 2, 2, c)
            merged = dense.permute(0, 1, 3, 4, 2, 5).reshape(n, (H // 2) * (W // 2), 4 * c)  # timm's PatchMerging order
            H, W = H // 2, W // 2
            sal_map = F.max_pool2d(sal_map[:, None], 2)[:, 0]
            idx = sal_map.reshape(n, H * W).topk(counts[i], dim=1).indices.sort(dim=1).values
            x = stage.downsample.reduction(stage.downsample.norm(_gather(merged, idx)))
            x = self._sparse_stage(stage, x, idx, (H, W))
        x = self.swin.norm(x)
        grid = _scatter(x, idx, H * W).reshape(n, H, W, -1)
        keep = torch.zeros(n, H * W, dtype=torch.bool, device=x.device).scatter(1, idx, True).reshape(n, H, W)
        return SpatialFeatures(grid, keep, x.mean(dim=1))

    def _sparse_stage(self, stage: nn.Module, x: torch.Tensor, idx: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        rows, cols = idx // hw[1], idx % hw[1]
        for block in stage.blocks:
            slots, n_windows = _window_slots(block, rows, cols, hw)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(sparse_block_forward, block, x, slots, n_windows, use_reentrant=False)
            else:
                x = sparse_block_forward(block, x, slots, n_windows)
        return x


def _check(cfg: SpatialConfig) -> None:
    stages = len(cfg.depths)
    if len(cfg.num_heads) != stages:
        raise ValueError(f"depths {cfg.depths} and num_heads {cfg.num_heads} differ in length")
    if cfg.img_size % (cfg.patch_size * 2 ** (stages - 1)):
        raise ValueError(f"img_size {cfg.img_size} must be a multiple of patch_size * 2**(stages-1)")
    if not 0.0 < cfg.keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {cfg.keep_ratio}")
    if cfg.keep_ratio < 1.0:
        if not 0 <= cfg.select_stage < stages:
            raise ValueError(f"select_stage {cfg.select_stage} out of range for {stages} stages")
        for g in cfg.grid_sizes()[cfg.select_stage:]:
            if g > cfg.window_size and g % cfg.window_size:
                raise ValueError(f"patch selection needs grid {g} to be a multiple of window {cfg.window_size}")

