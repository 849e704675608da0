"""Training checkpoints: written atomically, read back with `torch.load(weights_only=True)`.

A checkpoint is a dict of plain values and tensors only (no pickled classes), so loading it cannot run code:
    format      CHECKPOINT_FORMAT
    model       the network's state_dict (unwrapped from DDP / torch.compile)
    optimizer   AdamW state_dict;  scheduler: LambdaLR state_dict
    step        optimiser steps done;  epoch: current epoch;  epoch_step: steps done within it
    rng         RNG states (torch CPU, CUDA, numpy, python) as tensors and lists
    config      the resolved TrainConfig and ModelConfig as plain dicts
    stats       running sums for the mean-pose baseline (see train.pose_stats.PoseStats)
    done        True once the run finished all its epochs
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from h36m.pipelines.files import atomic_path
from h36m.h36m_tools.errors import H36MError

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically (temporary file in the same folder, fsync, os.replace). Never writes a
    model with non-finite weights: H36MError naming the file and the first such tensor (the file stays as it was)."""
    import torch

    path = Path(path)
    for name, t in (state.get("model") or {}).items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise H36MError(path, f"not written: the model's {name} holds non-finite values")
    with atomic_path(path, fsync=True) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True on the CPU. A run folder stands for its checkpoint.pt.

    Raises H36MError naming the file when it is missing, unreadable or not a checkpoint of this format.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise H36MError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for damaged files
        raise H36MError(path, f"not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise H36MError(path, f"not an h36m training checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return state


def rng_state() -> dict[str, Any]:
    """All RNG states a training step draws from, as tensors / lists (safe for weights_only loading)."""
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    out = {"torch": torch.get_rng_state(),
           "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "gauss": float(gauss)},
           "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_network(path: str | os.PathLike, device="cpu"):
    """(PoseNetwork in eval mode on `device`, checkpoint dict) from a run folder or checkpoint file.

    The network is rebuilt from the checkpoint's ModelConfig with `lift` off (callers run `net.lift` themselves)."""
    from dataclasses import replace

    from h36m.model import ModelConfig, build_model

    state = load_checkpoint(path)
    try:
        cfg = replace(ModelConfig.from_dict(state["config"]["model"]), lift=False, grad_checkpointing=False)
        net = build_model(cfg)
        net.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise H36MError(path, f"checkpoint does not match its model config ({str(e).splitlines()[0][:160]})")
    return net.eval().to(device), state
