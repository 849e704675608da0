"""Configuration of `h36m train`: the TrainConfig dataclass, the recipes per preset, TOML in and out.

Precedence: TrainConfig defaults < the preset's recipe (fields left None) < a TOML file (`--config`) < CLI options.
A TOML file holds TrainConfig fields at the top level (or in a `[train]` table) and optional `[model]` tables
overriding fields of the preset's ModelConfig, e.g.

    preset = "tiny"
    epochs = 30
    lr = 0.002
    [model.lifter]
    receptive_field = 27

The run folder's `config.toml` is the resolved config in the same form (feed it back with `--config`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from h36m.h36m_tools.errors import H36MError

STAGES = ("2d", "lift", "joint")
#: How the 2d and joint stages train a head with a confidence (scale) branch (train.losses):
#:   scale  loss = joint_distance + laplace_nll with the coordinates detached: the NLL trains only the scale branch
#:          (which reads the head's features through a stop-gradient), the joints train exactly as without it
#:   rle    loss = laplace_nll alone, coordinates included (residual log-likelihood estimation without its flow)
CONFIDENCE_LOSSES = ("scale", "rle")


@dataclass(frozen=True)
class Recipe:
    """The optimisation recipe of a preset: the paper's (AdamW, lr 1e-3, weight decay 0.05, cosine decay,
    linear warm-up over the first 20 of 100 epochs), and a scaled one for `tiny` (fewer, shorter epochs on small
    data: a larger rate, the same 20 % warm-up share)."""
    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: float
    weight_decay: float = 0.05
    affine: str = "mmpose"          # the crop transform's ranges (train.augment.AFFINE): mmpose's top-down defaults


PAPER_RECIPE = Recipe(epochs=100, batch_size=4, lr=1e-3, warmup_epochs=20)
TINY_RECIPE = Recipe(epochs=20, batch_size=4, lr=2e-3, warmup_epochs=4, affine="mild")


@dataclass(frozen=True)
class LiftRecipe:
    """The lift stage's recipe: PoseFormer's published one (Zheng et al. 2021, its run_poseformer.py and README:
    AdamW with weight decay 0.1, lr 4e-4 for ground-truth 2-D (4e-5 for CPN detections) times 0.99 after every
    epoch, flip augmentation in training and testing; batch 512 windows and 200 epochs, its arguments.py defaults,
    which the README's training commands keep; docs/train_evaluate.md cites each), and a scaled one for `tiny` (small
    synthetic data: fewer epochs, smaller batches, a larger rate)."""
    epochs: int
    batch_size: int
    lr: float
    lr_decay: float
    weight_decay: float


POSEFORMER_RECIPE = LiftRecipe(epochs=200, batch_size=512, lr=4e-4, lr_decay=0.99, weight_decay=0.1)
TINY_LIFT_RECIPE = LiftRecipe(epochs=20, batch_size=64, lr=1e-3, lr_decay=0.95, weight_decay=0.1)


def recipe_for(preset: str, stage: str = "2d") -> Recipe | LiftRecipe:
    """The lift stage: `tiny` -> TINY_LIFT_RECIPE, else POSEFORMER_RECIPE. Other stages: `tiny` -> TINY_RECIPE;
    every `paper*` preset (and anything else) -> PAPER_RECIPE."""
    if stage == "lift":
        return TINY_LIFT_RECIPE if preset == "tiny" else POSEFORMER_RECIPE
    return TINY_RECIPE if preset == "tiny" else PAPER_RECIPE


@dataclass
class TrainConfig:
    """Everything `h36m train` needs. None fields are filled from the preset's recipe by `resolve`."""
    shards: str | list[str] = ""          # training shard URLs: paths, brace patterns, pipe:..., http(s)://...
    data: str | None = None                # lift stage: the extracted dataset whose whole sequences it trains on
    keypoints: str = "gt"                  # lift stage 2-D inputs: gt, or a VideoPose3D 2-D .npz (h36m predict)
    subjects: str = "S1,S5,S6,S7,S8"       # lift stage training subjects (those present in `data`)
    flip: bool = True                      # lift stage: every window also mirrored (train.stages)
    lr_decay: float | None = None          # lift stage: lr multiplied by this after every epoch
    out: str = "run"                       # run folder
    preset: str = "tiny"                   # model preset (ignored for the model when `init` is given)
    stage: str = "2d"                      # 2d: spatial+relations+head; lift: the lifter; joint: all of it
    init: str | None = None                # run folder / checkpoint whose weights (and model config) start the run
    epochs: int | None = None
    batch_size: int | None = None          # clips per rank per micro-batch
    lr: float | None = None                # peak learning rate (AdamW)
    weight_decay: float | None = None
    warmup_epochs: float | None = None     # linear warm-up length, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    grad_accum: int = 1                    # micro-batches per optimiser step
    clip_grad: float = 1.0                 # max gradient norm (0 = off)
    workers: int = 2                       # loader processes per rank
    shuffle: int = 256                     # sample shuffle buffer
    augment: bool = True                   # augmentation: the clip-wide flip (2d, joint) and the crop transform (2d)
    affine: str | None = None              # the crop transform's ranges: mmpose | mild | off (train.augment.AFFINE)
    pretrained_spatial: str | None = None  # a local timm Swin checkpoint to start the spatial module from
    pretrained_relations: str | None = None  # a local timm ViT checkpoint to start the relation blocks from
    seed: int = 0
    loss3d_weight: float = 1.0             # joint stage: loss = 2-D loss + w * 3-D loss (metres)
    confidence_loss: str = "scale"         # 2d / joint stages, heads with a confidence: CONFIDENCE_LOSSES
    max_steps: int | None = None           # stop (with a checkpoint) after this many steps; the schedule is unchanged
    checkpoint_every: int = 200            # optimiser steps between checkpoints (and at every epoch end)
    log_every: int = 1                     # steps between metrics.jsonl / TensorBoard entries
    amp: bool = True                       # bf16 autocast on GPU (ignored on CPU)
    tf32: bool = True                      # TF32 matmuls on GPU
    compile: bool = False                  # torch.compile the training step's module
    grad_checkpointing: bool = False
    device: str = "auto"                   # auto | cpu | cuda
    model: dict = field(default_factory=dict)   # overrides of the preset's ModelConfig (nested, as to_dict())

    def urls(self) -> list[str]:
        return [self.shards] if isinstance(self.shards, str) else list(self.shards)


#: Fields that may change when a run is resumed (the others come from the checkpoint).
RUN_CONTROL = ("max_steps", "checkpoint_every", "log_every", "workers", "shards", "device", "compile")


def _from_recipe(cfg: TrainConfig, recipe, *names: str) -> dict[str, Any]:
    """The named fields of `cfg`, those left None taken from `recipe`."""
    return {n: getattr(recipe, n) if getattr(cfg, n) is None else getattr(cfg, n) for n in names}


def _at_least_one(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill None fields from the preset's recipe and check values; raises ValueError on a bad value."""
    r = recipe_for(cfg.preset, cfg.stage)
    if cfg.stage == "lift":
        out = dataclasses.replace(
            cfg, **_from_recipe(cfg, r, "epochs", "batch_size", "lr", "weight_decay", "lr_decay"),
            warmup_epochs=0.0 if cfg.warmup_epochs is None else cfg.warmup_epochs)
        _at_least_one(out, "epochs", "batch_size")
        if out.lr <= 0 or not 0 < out.lr_decay <= 1:
            raise ValueError("lr must be > 0 and lr_decay in (0, 1]")
        if not out.data:
            raise ValueError("the lift stage needs --data EXTRACTED (an extracted dataset)")
        return out
    out = dataclasses.replace(
        cfg, **_from_recipe(cfg, r, "epochs", "batch_size", "lr", "weight_decay", "affine"),
        warmup_epochs=(r.warmup_epochs * (cfg.epochs or r.epochs) / r.epochs if cfg.warmup_epochs is None
                       else cfg.warmup_epochs),
    )
    if out.stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {out.stage!r}")
    from h36m.pipelines.train.augment import AFFINE

    if out.affine not in AFFINE:
        raise ValueError(f"affine must be one of {', '.join(AFFINE)}, got {out.affine!r}")
    if out.confidence_loss not in CONFIDENCE_LOSSES:
        raise ValueError(f"confidence_loss must be one of {', '.join(CONFIDENCE_LOSSES)}, got "
                         f"{out.confidence_loss!r}")
    _at_least_one(out, "epochs", "batch_size", "grad_accum")
    for f in fields(TrainConfig):
        v = getattr(out, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{f.name} must be a finite number, got {v}")
    if out.lr <= 0 or out.warmup_epochs < 0:
        raise ValueError("lr must be > 0, warmup_epochs >= 0")
    if not out.urls() or not all(out.urls()):
        raise ValueError("no training shards given (--shards)")
    return out


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML config file -> dict of TrainConfig fields (model overrides under 'model'). Raises H36MError."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise H36MError(path, "config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise H36MError(path, f"not valid TOML ({e})") from None
    if "train" in data and isinstance(data["train"], dict):
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise H36MError(path, f"unknown setting(s): {', '.join(unknown)}")
    check_types(data, path)
    return data


def _matches(value, hint) -> bool:
    """Whether a TOML / JSON value fits a TrainConfig field's type hint (int is no bool; a float field takes an int;
    lists and dicts are checked one level deep)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list or hint is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else \
            isinstance(value, list)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table",
             type(None): "absent"}
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(args[0])}s"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_types(values: dict[str, Any], source: str | os.PathLike) -> None:
    """Refuse a value of the wrong type for its TrainConfig field (`epochs = "ten"`, `augment = "false"`): H36MError
    naming `source` and the key. Unknown keys are left to the caller."""
    hints = typing.get_type_hints(TrainConfig)
    for key, value in values.items():
        if key in hints and not _matches(value, hints[key]):
            raise H36MError(source, f"{key} must be {_type_name(hints[key])}, got {value!r}")


def build_config(toml_path: str | os.PathLike | None = None, **overrides) -> TrainConfig:
    """TrainConfig from defaults, an optional TOML file, then keyword overrides (None values are ignored)."""
    values: dict[str, Any] = load_toml(toml_path) if toml_path else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise H36MError(toml_path or "options", str(e)) from None


def check_model_types(overrides, template: dict, where: str = "model") -> None:
    """Refuse a [model] override whose value is not of the type of the preset's (a number for a number, a bool for
    a bool, a list for a list, a table for a table): ValueError naming the key, e.g. `model.lifter.depth`."""
    if not isinstance(overrides, dict):
        raise ValueError(f"{where} must be a table, got {overrides!r}")
    for key, value in overrides.items():
        if key not in template:
            continue                                   # unknown keys: ModelConfig.from_dict names them
        want, name = template[key], f"{where}.{key}"
        if isinstance(want, dict):
            check_model_types(value, want, name)
            continue
        if isinstance(want, bool) or isinstance(value, bool):
            ok = isinstance(want, bool) and isinstance(value, bool)
        elif isinstance(want, (int, float)):
            ok = isinstance(value, (int, float)) and (isinstance(want, float) or isinstance(value, int))
            ok = ok and math.isfinite(value)
        elif want is None:
            ok = True
        else:
            ok = isinstance(value, type(want))
        if not ok:
            raise ValueError(f"{name} must be {_type_name(type(want))} like the preset's {want!r}, got {value!r}")


def model_config(cfg: TrainConfig, base=None):
    """The ModelConfig of a run: `base` (e.g. from an init checkpoint) or the preset, with cfg.model overrides,
    gradient checkpointing from cfg, and `lift` on only for the joint stage (2d and lift stages call the lifter
    directly)."""
    from h36m.model import PRESETS, ModelConfig

    if base is None:
        if cfg.preset not in PRESETS:
            raise ValueError(f"unknown preset {cfg.preset!r} (one of {', '.join(PRESETS)})")
        base = PRESETS[cfg.preset]
    check_model_types(cfg.model or {}, base.to_dict())
    d = _deep_update(base.to_dict(), cfg.model or {})
    d["lift"] = cfg.stage == "joint"
    d["grad_checkpointing"] = bool(cfg.grad_checkpointing)
    try:
        return ModelConfig.from_dict(d)
    except (KeyError, TypeError) as e:
        raise ValueError(f"bad model override: {e}") from None


def _deep_update(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any], source: str | os.PathLike = "config") -> TrainConfig:
    """TrainConfig from a stored dict (a checkpoint's, config.json's); H36MError naming `source` on a value of the
    wrong type."""
    if not isinstance(d, dict):
        raise H36MError(source, "the stored training config is not a table")
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in d.items() if k in known}
    check_types(values, source)
    return TrainConfig(**values)


def to_toml(train: dict[str, Any], model: dict[str, Any] | None = None) -> str:
    """Resolved config as TOML: TrainConfig fields at the top level, the full ModelConfig under [model.*]."""
    top = {k: v for k, v in train.items() if k != "model" and v is not None}
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    if model:
        lines += _toml_tables("model", model)
    return "\n".join(lines) + "\n"


def _toml_tables(prefix: str, d: dict) -> list[str]:
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and v is not None}
    lines = ["", f"[{prefix}]"] + [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += _toml_tables(f"{prefix}.{k}", v)
    return lines


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string: JSON's escapes are valid TOML
