"""Image-relations module: a pre-norm transformer over the image tokens of a clip.

Shapes: tokens (B, V, F, C), view_mask (B, V) bool or None -> (B, V, F, C), with F <= max_frames and
V <= max_views. Two parts, then a final LayerNorm:

1. temporal relations: for every view, `depth_time` blocks (x + MSA(LN x), x + MLP(LN x)) over its F
   frame tokens, after adding the learned time embedding E_time[:F] (max_frames, C);
2. 3-D relations: for every frame, `depth_views` blocks over its V view tokens, after adding the
   learned view embedding E_3D (max_views, C) of each view's camera: `view_index` (B, V) long gives the camera's
   position in the rig (0..max_views-1, h36m_tools.cameras.CAMERA_IDS order), so a clip with a camera missing
   still gives each present camera its own embedding; without it, view v gets E_3D[v].

Missing views (view_mask False): in the 3-D part no token attends to a missing view (a missing view's
token attends to itself only), so present views never see a missing view's image; their outputs
are computed but meaningless. `use_time_embedding` / `use_view_embedding` switch the embeddings off
(ablation; also settable on the module at run time).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .config import RelationsConfig
from .transformer import Block, init_weights, run_blocks


class ImageRelations(nn.Module):
    """Temporal then 3-D (cross-view) relations between image tokens. (B, V, F, C) -> (B, V, F, C)."""

    #: Parameters exempt from weight decay (timm's convention): the learned embeddings.
    NO_WEIGHT_DECAY = ("time_embed", "view_embed")

    def __init__(self, cfg: RelationsConfig, dim: int):
        super().__init__()
        self.cfg = cfg
        self.max_frames, self.max_views = cfg.max_frames, cfg.max_views
        self.use_time_embedding = cfg.use_time_embedding
        self.use_view_embedding = cfg.use_view_embedding
        self.grad_checkpointing = False
        n = cfg.depth_time + cfg.depth_views
        dpr = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        self.time_embed = nn.Parameter(torch.zeros(cfg.max_frames, dim))   # E_time
        self.view_embed = nn.Parameter(torch.zeros(cfg.max_views, dim))    # E_3D
        self.time_blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.mlp_ratio, dpr[i]) for i in range(cfg.depth_time))
        self.view_blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.mlp_ratio, dpr[cfg.depth_time + i]) for i in range(cfg.depth_views))
        self.norm = nn.LayerNorm(dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.time_embed, std=0.02)
        nn.init.trunc_normal_(self.view_embed, std=0.02)

    def forward(self, tokens: torch.Tensor, view_mask: Optional[torch.Tensor] = None,
                view_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, v, f, c = tokens.shape
        if f > self.max_frames:
            raise ValueError(f"clip has {f} frames, relations were built for at most {self.max_frames}")
        if v > self.max_views:
            raise ValueError(f"clip has {v} views, relations were built for at most {self.max_views}")
        x = tokens
        if self.use_time_embedding:
            x = x + self.time_embed[:f]
        x = run_blocks(self.time_blocks, x.reshape(b * v, f, c), None, self.grad_checkpointing)
        x = x.reshape(b, v, f, c).transpose(1, 2)  # (B, F, V, C)
        if self.use_view_embedding:
            if view_index is None:
                x = x + self.view_embed[:v]
            else:                                   # (B, V) camera positions -> (B, 1, V, C)
                x = x + self.view_embed[view_index.clamp(0, self.max_views - 1)][:, None]
        mask = None
        if view_mask is not None:
            eye = torch.eye(v, dtype=torch.bool, device=x.device)
            mask = (view_mask[:, None, :] | eye).repeat_interleave(f, dim=0)  # (B*F, V, V): query i, key j
        x = run_blocks(self.view_blocks, x.reshape(b * f, v, c), mask, self.grad_checkpointing)
        return self.norm(x.reshape(b, f, v, c).transpose(1, 2))


def load_vit_blocks(relations: ImageRelations, state: dict[str, torch.Tensor], source: str = "checkpoint"
                    ) -> tuple[list[str], list[str]]:
    """Initialise the relation blocks from a timm ViT state dict (`blocks.{i}.norm1.weight`, `.attn.qkv.weight`,
    ...: the names of `transformer.Block`'s parameters are timm's). The temporal part takes ViT blocks 0..depth_time-1
    and the 3-D part blocks 0..depth_views-1: both parts start from the first pretrained blocks, as both read the
    Swin image tokens. Returns (the parameter names loaded, the checkpoint keys left unused). Raises ValueError
    naming `source` when a block is missing from the checkpoint or a shape differs (another width or MLP ratio)."""
    own = {}
    for part, blocks in (("time_blocks", relations.time_blocks), ("view_blocks", relations.view_blocks)):
        for i, blk in enumerate(blocks):
            for name, p in blk.named_parameters():
                own[f"{part}.{i}.{name}"] = (f"blocks.{i}.{name}", p)
    missing = sorted({k for k, (src, _) in own.items() if src not in state})
    wrong = sorted(f"{src} {tuple(state[src].shape)} (here {tuple(p.shape)})" for src, p in own.values()
                   if src in state and tuple(state[src].shape) != tuple(p.shape))
    if missing or wrong:
        raise ValueError(f"{source}: not a ViT checkpoint for these relation blocks: "
                         + (f"missing {', '.join(sorted({own[k][0] for k in missing})[:3])}" if missing else "")
                         + ("; " if missing and wrong else "") + (f"wrong shape {', '.join(wrong[:2])}" if wrong else ""))
    with torch.no_grad():
        for src, p in own.values():
            p.copy_(state[src].to(p.dtype))
    used = {src for src, _ in own.values()}
    return sorted(own), sorted(k for k in state if k not in used)
