"""Pre-norm transformer block shared by the image-relations module and the PoseFormer lifter.

Attention is written as explicit matmuls (not scaled_dot_product_attention) so that
torch.utils.flop_counter counts it on every device, like timm's non-fused Swin attention.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    """Multi-head self-attention. x (N, L, C), optional mask (N or 1, L, L) bool (True = may attend) -> (N, L, C)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, length, c = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (N, heads, L, L)
        if mask is not None:
            attn = attn.masked_fill(~mask[:, None], float("-inf"))
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(n, length, c))


class Block(nn.Module):
    """x + MSA(LN(x)), then x + MLP(LN(x)). (N, L, C) -> (N, L, C)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
               grad_checkpointing: bool = False) -> torch.Tensor:
    """Apply `blocks` in turn, each under activation checkpointing when asked and grads are on."""
    for blk in blocks:
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(blk, x, mask, use_reentrant=False)
        else:
            x = blk(x, mask)
    return x


def init_weights(module: nn.Module) -> None:
    """ViT-style init: truncated normal (std 0.02) linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
