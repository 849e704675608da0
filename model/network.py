"""The whole network: images of a multi-view clip -> 2-D joints per image (-> 3-D joints per image).

    images (B, V, F, 3, H, W), ImageNet-normalised, H = W = cfg.spatial.img_size
      -> spatial (Swin per image, N = B V F)     grid (N, h, w, C), pooled image token (N, C)
      -> relations over each clip's tokens       (B, V, F, C)
      -> head (refined token + own grid)         joints2d (B, V, F, 17, 2), crop coordinates, [0, 1]
                                                 log_scale2d (B, V, F, 17): log Laplace scale, crop units (or None)
      -> lifter (cfg.lift; per view, per frame)  joints3d (B, V, F, 17, 3), root-relative camera mm, from the 2-D
                                                 joints mapped by `to_screen` into the lifter's one input convention

view_mask (B, V) bool, True = view present: missing views' images are not run through the spatial
module (their features are zero), no present view attends to them, and their outputs are meaningless
(mask them out of the loss). view_index (B, V) long: each view's camera position in the rig (picks its E_3D;
see relations.py); default: view v is camera v. to_screen ((B, V, F, 1, 2) scale, (B, V, F, 1, 2) offset): the
affine map of each crop's coordinates to the lifter's input, VideoPose3D's screen normalisation of the camera's
nominal pixel frame (pipelines.loader.inputs builds it from the clip's boxes and cameras); default: the crop taken
as its own frame (2u - 1). Without a relations module (`paper_baseline`) each image's pooled
token goes to the head as it is.

Pretrained starts (local files only, never downloaded): `load_pretrained_spatial` (a timm Swin checkpoint) and
`load_pretrained_relations` (a timm ViT checkpoint, for the relation blocks).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Union

import torch
import torch.nn as nn
from timm.models.swin_transformer import checkpoint_filter_fn

from .config import ModelConfig
from .head import JointHead
from .lifter import PoseFormer
from .relations import ImageRelations, load_vit_blocks
from .spatial import SpatialEncoder, SpatialFeatures


class ModelOutput(NamedTuple):
    """joints2d (B, V, F, J, 2) crop coords in [0, 1]; joints3d (B, V, F, J, 3) mm, root-relative, or None;
    log_scale2d (B, V, F, J) the head's log Laplace scale of each joint, crop units (model.head.confidence turns it
    into a confidence), or None for a head without the scale branch."""
    joints2d: torch.Tensor
    joints3d: Optional[torch.Tensor]
    log_scale2d: Optional[torch.Tensor] = None


class PoseNetwork(nn.Module):
    """Spatial Swin + image relations + 2-D head (+ PoseFormer lifter). See the module doc for shapes."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.head.num_joints != cfg.lifter.num_joints:
            raise ValueError("head and lifter must predict the same number of joints")
        self.cfg = cfg
        self.spatial = SpatialEncoder(cfg.spatial)
        dim = self.spatial.num_features
        self.relations = ImageRelations(cfg.relations, dim) if cfg.relations.enabled else None
        self.head = JointHead(cfg.head, dim, cfg.spatial.grid_sizes()[-1])
        self.lifter = PoseFormer(cfg.lifter)
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass (Swin stages, relation and lifter blocks)."""
        self.spatial.set_grad_checkpointing(enable)
        if self.relations is not None:
            self.relations.grad_checkpointing = enable
        self.lifter.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters AdamW must not decay beyond biases and norms (timm's convention): the learned
        embeddings and position tables."""
        names = set()
        for prefix, module in (("relations.", self.relations), ("head.", self.head), ("lifter.", self.lifter)):
            for n in getattr(module, "NO_WEIGHT_DECAY", ()):
                names.add(prefix + n)
        return names

    def forward(self, images: torch.Tensor, view_mask: Optional[torch.Tensor] = None,
                view_index: Optional[torch.Tensor] = None,
                to_screen: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> ModelOutput:
        if images.ndim != 6:
            raise ValueError(f"expected images (B, V, F, 3, H, W), got shape {tuple(images.shape)}")
        b, v, f = images.shape[:3]
        if f > self.cfg.relations.max_frames or v > self.cfg.relations.max_views:
            raise ValueError(f"clip of {v} views x {f} frames; this network takes at most "
                             f"{self.cfg.relations.max_views} x {self.cfg.relations.max_frames}")
        if view_mask is not None:
            if view_mask.shape != (b, v):
                raise ValueError(f"view_mask must be (B, V) = {(b, v)}, got {tuple(view_mask.shape)}")
            view_mask = view_mask.to(device=images.device, dtype=torch.bool)
        feats = self._spatial(images.flatten(0, 2), view_mask, b, v, f)
        c = feats.pooled.shape[-1]
        tokens = feats.pooled.reshape(b, v, f, c)
        if self.relations is not None:
            if view_index is not None:
                view_index = view_index.to(device=images.device, dtype=torch.long)
            tokens = self.relations(tokens, view_mask, view_index)
        joints2d, log_scale = self.head(feats.grid, feats.keep, tokens.reshape(-1, c))
        joints2d = joints2d.reshape(b, v, f, -1, 2)
        if log_scale is not None:
            log_scale = log_scale.reshape(b, v, f, -1)
        joints3d = None
        if self.cfg.lift:
            scale, offset = to_screen if to_screen is not None else (2.0, -1.0)
            joints3d = self.lift((joints2d * scale + offset).flatten(0, 1)).reshape(b, v, f, -1, 3)
        return ModelOutput(joints2d, joints3d, log_scale)

    def lift(self, screen_seq: torch.Tensor) -> torch.Tensor:
        """(N, T, J, 2) the lifter's input (screen-normalised nominal-frame joints, h36m_tools.cameras.nominal_screen),
        any T -> (N, T, J, 3) mm: `self.lifter.predict_sequence` (a window centred on every frame, or seq2seq
        windows)."""
        return self.lifter.predict_sequence(screen_seq)

    def _spatial(self, flat: torch.Tensor, view_mask: Optional[torch.Tensor], b: int, v: int,
                 f: int) -> SpatialFeatures:
        if view_mask is None:
            return self.spatial(flat)
        present = view_mask[:, :, None].expand(b, v, f).reshape(-1)
        if bool(present.all()):
            return self.spatial(flat)
        idx = present.nonzero().squeeze(1)
        g = self.cfg.spatial.grid_sizes()[-1]
        c = self.spatial.num_features
        n = flat.shape[0]
        grid = flat.new_zeros(n, g, g, c)
        pooled = flat.new_zeros(n, c)
        keep = torch.ones(n, g, g, dtype=torch.bool, device=flat.device)
        if idx.numel() == 0:
            return SpatialFeatures(grid, keep, pooled)
        sub = self.spatial(flat[idx])
        grid = grid.index_copy(0, idx, sub.grid)
        pooled = pooled.index_copy(0, idx, sub.pooled)
        if sub.keep is not None:
            keep = keep.index_copy(0, idx, sub.keep)
        return SpatialFeatures(grid, keep, pooled)


def build_model(cfg: ModelConfig) -> PoseNetwork:
    """The network for `cfg`, randomly initialised (load Swin weights with `load_pretrained_spatial`)."""
    return PoseNetwork(cfg)


def read_checkpoint_state(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint file (torch.load with weights_only=True: nothing is unpickled but tensors
    and plain containers); 'model' / 'state_dict' wrappers and 'module.' prefixes unwrapped. Raises ValueError naming
    the file when it cannot be read (missing, truncated, not a torch file) or holds no tensors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: checkpoint not found") from None
    except Exception as e:      # a truncated zip, a pickle of something else, random bytes
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds no weights (expected a state dict of tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def load_pretrained_spatial(model: PoseNetwork, path: Union[str, os.PathLike]) -> list[str]:
    """Load a local timm Swin checkpoint (e.g. swin_tiny_patch4_window7_224's) into `model.spatial.swin`.

    timm's checkpoint_filter_fn converts original-Microsoft layouts and resizes relative position tables / patch
    embeddings, the classifier is dropped. Raises ValueError naming the file when it cannot be read or a Swin weight
    is missing or has the wrong shape; returns the checkpoint keys left unused. Never downloads anything.
    """
    state = read_checkpoint_state(path)
    swin = model.spatial.swin
    try:
        state = checkpoint_filter_fn(state, swin)
    except Exception as e:      # timm's resizing of a table that does not fit this config
        raise ValueError(f"{path}: not a Swin checkpoint for this config ({type(e).__name__}: {str(e)[:120]})") \
            from None
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    own = swin.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ValueError(f"{path}: not a Swin checkpoint for this config: missing {missing[:3]}, "
                         f"wrong shape {wrong[:3]}")
    swin.load_state_dict({k: state[k] for k in own})
    return [k for k in state if k not in own]


def load_pretrained_relations(model: PoseNetwork, path: Union[str, os.PathLike]) -> tuple[list[str], list[str]]:
    """Initialise the image-relations blocks from a local timm ViT checkpoint (e.g. vit_base_patch16_224's: width
    768 and 12 heads like `paper`'s relations); see `relations.load_vit_blocks` for which block goes where. Returns
    (the parameters loaded, the checkpoint keys left unused); ValueError naming the file on a mismatch."""
    if model.relations is None:
        raise ValueError(f"{path}: this network ({model.cfg.name or 'config'}) has no relations module to load into")
    return load_vit_blocks(model.relations, read_checkpoint_state(path), str(path))
