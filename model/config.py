"""Configuration of the pose network: one frozen dataclass per part, and the presets.

Every field is a plain bool / int / float / str or a tuple of numbers, so a config turns into a
JSON- or TOML-ready dict with `ModelConfig.to_dict()` and back with `ModelConfig.from_dict(d)`;
override fields with `dataclasses.replace`, e.g.

    cfg = replace(PRESETS["paper"], spatial=replace(PRESETS["paper"].spatial, keep_ratio=0.7))

Presets
-------
tiny       64 px, 3-stage mini Swin (embed 32, depths 2-2-2, heads 1-2-4, window 4), 1+1 relation
           layers (F <= 32), small PoseFormer with receptive field 9. Trains on 2 CPU cores.
paper      Swin-T at 224 (embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7), image relations
           with F <= 128 frames and V <= 4 views, PoseFormer with receptive field 81.
paper_f8, paper_f32, paper_f128
           `paper` with the relations sized for clips of at most 8 / 32 / 128 frames (the paper's
           three settings; `paper` is `paper_f128`).
paper_rf9, paper_rf27
           `paper` with a PoseFormer receptive field of 9 / 27 frames.
paper_baseline
           `paper` without the image-relations module (Table I's "Baseline": Swin + 2-D head per image).
paper_no_time, paper_no_3d
           ablations: `paper` without the temporal part (no E_time, no time blocks) or without the 3-D part
           (no E_3D, no cross-view blocks).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any


#: The ImageNet statistics the Swin and ViT checkpoints were trained with (RGB in [0, 1]), as timm keeps them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SpatialConfig:
    """The per-image Swin transformer (timm's SwinTransformer, classifier removed).

    mean, std: per RGB channel, the input normalisation (`model.preprocess.normalise_images`).

    keep_ratio: fraction of tokens kept by patch selection (1.0 = off, plain Swin).
    select_stage: index of the stage at whose start (just after its patch merging) the tokens are
        scored and pruned; that stage and all later ones then run on the kept tokens only.
    """
    img_size: int = 224
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    keep_ratio: float = 1.0
    select_stage: int = 2
    saliency_dim: int = 64
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def num_features(self) -> int:
        """Width C of the last stage (the token width seen by the relations and the head)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def grid_sizes(self) -> tuple[int, ...]:
        """Side of the token grid in each stage, e.g. (56, 28, 14, 7) for Swin-T at 224."""
        g = self.img_size // self.patch_size
        return tuple(g // 2 ** i for i in range(len(self.depths)))


@dataclass(frozen=True)
class RelationsConfig:
    """Image-relations transformer over the image tokens of a clip (temporal part, then 3-D part).

    `enabled` is False when both parts have no blocks and no embedding (`paper_baseline`): the network then has no
    relations module and each image's token goes straight to the head."""
    depth_time: int = 2
    depth_views: int = 2
    num_heads: int = 12
    mlp_ratio: float = 4.0
    max_frames: int = 128
    max_views: int = 4
    use_time_embedding: bool = True
    use_view_embedding: bool = True
    drop_path_rate: float = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.depth_time or self.depth_views or self.use_time_embedding or self.use_view_embedding)


@dataclass(frozen=True)
class HeadConfig:
    """2-D joint head: joint queries attend over the image's final token grid (soft-argmax + offset).

    confidence: also regress a per-joint Laplace scale (model.head: the confidence). A stored config whose head table
    lacks this key predates it and reads as False (`ModelConfig.from_dict`), so its checkpoint loads as it was."""
    num_joints: int = 17
    dim: int = 256
    hidden: int = 256
    confidence: bool = True


@dataclass(frozen=True)
class LifterConfig:
    """PoseFormer lifter: 2-D joint sequences -> root-relative 3-D joints (mm).

    receptive_field: frames seen per prediction (9, 27 or 81 in the paper; any odd number works).
    seq2seq: predict every frame of the window instead of only its centre frame.
    """
    num_joints: int = 17
    receptive_field: int = 81
    joint_dim: int = 32
    depth_spatial: int = 4
    depth_temporal: int = 4
    num_heads: int = 8
    mlp_ratio: float = 2.0
    drop_path_rate: float = 0.1
    seq2seq: bool = False
    output_scale_mm: float = 1000.0


@dataclass(frozen=True)
class ModelConfig:
    """The whole network. `lift` puts the PoseFormer behind the 2-D head in `forward`."""
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    relations: RelationsConfig = field(default_factory=RelationsConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    lifter: LifterConfig = field(default_factory=LifterConfig)
    lift: bool = True
    grad_checkpointing: bool = False
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Nested dict of plain values (tuples become lists), ready for json / TOML writers."""
        def plain(v: Any) -> Any:
            if dataclasses.is_dataclass(v):
                return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return v
        return plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`; missing keys take their defaults, unknown keys raise KeyError. Except: a `head`
        table without `confidence` is a config written before the confidence head existed: False (its checkpoint
        holds no scale branch)."""
        if isinstance(d, dict) and isinstance(d.get("head"), dict) and "confidence" not in d["head"]:
            d = {**d, "head": {**d["head"], "confidence": False}}
        return _from_dict(cls, d)


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise KeyError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    defaults = cls()
    kwargs = {}
    for name, value in d.items():
        current = getattr(defaults, name)
        if dataclasses.is_dataclass(current):
            value = _from_dict(type(current), value)
        elif isinstance(current, tuple):
            value = tuple(value)
        elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        kwargs[name] = value
    return cls(**kwargs)


def _tiny() -> ModelConfig:
    return ModelConfig(
        spatial=SpatialConfig(img_size=64, patch_size=4, embed_dim=32, depths=(2, 2, 2), num_heads=(1, 2, 4),
                              window_size=4, drop_path_rate=0.0, select_stage=1, saliency_dim=32),
        relations=RelationsConfig(depth_time=1, depth_views=1, num_heads=4, mlp_ratio=2.0, max_frames=32),
        head=HeadConfig(dim=64, hidden=128),
        lifter=LifterConfig(receptive_field=9, joint_dim=16, depth_spatial=2, depth_temporal=2, num_heads=4,
                            drop_path_rate=0.0),
        name="tiny",
    )


def _paper(max_frames: int = 128, receptive_field: int = 81, name: str = "paper", time: bool = True,
           views: bool = True) -> ModelConfig:
    relations = RelationsConfig(max_frames=max_frames, depth_time=2 if time else 0, depth_views=2 if views else 0,
                                use_time_embedding=time, use_view_embedding=views)
    return ModelConfig(relations=relations, lifter=LifterConfig(receptive_field=receptive_field), name=name)


PRESETS: dict[str, ModelConfig] = {
    "tiny": _tiny(),
    "paper": _paper(),
    "paper_f8": _paper(max_frames=8, name="paper_f8"),
    "paper_f32": _paper(max_frames=32, name="paper_f32"),
    "paper_f128": _paper(max_frames=128, name="paper_f128"),
    "paper_rf9": _paper(receptive_field=9, name="paper_rf9"),
    "paper_rf27": _paper(receptive_field=27, name="paper_rf27"),
    "paper_baseline": _paper(time=False, views=False, name="paper_baseline"),
    "paper_no_time": _paper(time=False, name="paper_no_time"),
    "paper_no_3d": _paper(views=False, name="paper_no_3d"),
}

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD",
           "SpatialConfig", "RelationsConfig", "HeadConfig", "LifterConfig", "ModelConfig", "PRESETS"]
