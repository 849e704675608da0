"""The lift stage of `h36m train`: PoseFormer trained on whole sequences held in memory (no images, no shards).

    from h36m.pipelines.train.loop import train
    train(TrainConfig(stage="lift", data="EXTRACTED", keypoints="gt", out="runs/lift"))   # or keypoints="pred.npz"

Data (train.sequences): every camera view of every sequence of cfg.subjects (S1, S5, S6, S7, S8 by default) in the
extracted dataset cfg.data, the 2-D inputs from cfg.keypoints, screen-normalised; one sample per frame: the window
of receptive_field frames centred on it, padded only at the sequence's ends; with cfg.flip each window also
appears mirrored (VideoPose3D's ChunkedGenerator with augmentation: every epoch holds both). Target: the centre
frame's root-relative camera 3-D joints (all rf frames with seq2seq); loss MPJPE in metres (losses.mpjpe_m).
Optimiser: AdamW (lr, weight decay), the rate multiplied by lr_decay after every epoch (PoseFormer's
exponential decay), the order of the windows a function of (seed, epoch). Only the lifter trains; the run's
checkpoint holds the whole network (its other parts from `init` or freshly initialised), like every stage's.
Single process (the windows fit in memory; torchrun is not used by this stage).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import parse_subjects
from h36m.pipelines.files import write_atomic
from h36m.pipelines.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from h36m.pipelines.train.config import TrainConfig, model_config, to_dict, to_toml
from h36m.pipelines.train.losses import mpjpe_m
from h36m.pipelines.train.pose_stats import PoseStats
from h36m.pipelines.train.sequences import WindowBank, load_sequences


def epoch_order(n_windows: int, flip: bool, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The samples of one epoch in training order: (window index, mirrored?) arrays; with `flip` every window
    appears twice, once mirrored. A pure function of its arguments."""
    idx = np.arange(n_windows)
    mirrored = np.zeros(n_windows, bool)
    if flip:
        idx, mirrored = np.concatenate([idx, idx]), np.concatenate([mirrored, ~mirrored])
    perm = np.random.default_rng([seed, epoch]).permutation(len(idx))
    return idx[perm], mirrored[perm]


def train_lift(cfg: TrainConfig, state: dict | None = None, on_progress=None):
    """Start (state None) or continue a lift run; returns loop.TrainResult. cfg must be resolved."""
    import json

    import torch

    from h36m.model import ModelConfig, build_model
    from h36m.pipelines.train.loop import TrainEvent, TrainResult, _RunLog, _catch_signals, _restore_signals

    if not cfg.data:
        raise ValueError("the lift stage needs --data EXTRACTED (an extracted dataset)")
    emit = on_progress or (lambda e: None)
    run = Path(cfg.out)
    dev = torch.device("cuda" if (cfg.device == "auto" and torch.cuda.is_available()) or cfg.device == "cuda"
                       else "cpu")
    torch.manual_seed(cfg.seed)
    init = load_checkpoint(cfg.init) if cfg.init and state is None else None
    if state is not None:
        mcfg = ModelConfig.from_dict(state["config"]["model"])
    else:
        mcfg = model_config(cfg, ModelConfig.from_dict(init["config"]["model"]) if init else None)
    net = build_model(mcfg)
    if init is not None:   # the 2-D parts (and the lifter unless cfg.model gives it another shape)
        same = ModelConfig.from_dict(init["config"]["model"]).lifter == mcfg.lifter
        net.load_state_dict({k: v for k, v in init["model"].items() if same or not k.startswith("lifter.")},
                            strict=same)
    net.to(dev)
    lifter = net.lifter
    for name, m in net.named_children():
        m.requires_grad_(name == "lifter")

    seqs, missing = load_sequences(cfg.data, parse_subjects(cfg.subjects), cfg.keypoints)
    bank = WindowBank(seqs, mcfg.lifter.receptive_field, mcfg.lifter.seq2seq)
    samples = len(bank) * (2 if cfg.flip else 1)
    steps_per_epoch = math.ceil(samples / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    from h36m.pipelines.train.loop import _param_groups

    opt = torch.optim.AdamW(_param_groups(lifter, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    step, stats = 0, PoseStats()
    if state is not None:
        if state["steps_per_epoch"] != steps_per_epoch:
            raise H36MError(cfg.data, f"now gives {steps_per_epoch} steps per epoch, the run was started with "
                                      f"{state['steps_per_epoch']}: not the same data")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, stats = int(state["step"]), PoseStats.from_state(state.get("stats"))
        set_rng_state(state["rng"])
    else:
        for s in seqs:
            stats.update(s.crop01, s.pose3d)
        run.mkdir(parents=True, exist_ok=True)
        write_atomic(run / "config.toml", to_toml(to_dict(cfg), mcfg.to_dict()))
        write_atomic(run / "config.json", json.dumps({"train": to_dict(cfg), "model": mcfg.to_dict()}, indent=2)
                     + "\n")

    class Trainer:
        stop_requested = False

    trainer = Trainer()

    def save(done: bool) -> None:
        save_checkpoint(run / CHECKPOINT_NAME, {
            "model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": {},
            "step": step, "epoch": step // steps_per_epoch, "epoch_step": step % steps_per_epoch,
            "steps_per_epoch": steps_per_epoch, "total_steps": total, "rng": rng_state(), "stats": stats.state(),
            "done": bool(done), "world_size": 1, "config": {"train": to_dict(cfg), "model": mcfg.to_dict()}})

    log = _RunLog(run, 0, 1, step)
    emit(TrainEvent("start", step, total, step // steps_per_epoch, cfg.epochs, lr=cfg.lr,
                    message=f"lift stage on {dev.type}: {len(seqs)} view sequences, {len(bank)} windows of "
                            f"{bank.rf} frames{' (x2 mirrored)' if cfg.flip else ''}, keypoints {cfg.keypoints}, "
                            f"{steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
                            + (f"; {len(missing)} views absent from the keypoints left out" if missing else "")))
    previous = _catch_signals(trainer)
    lifter.train()
    loss = math.nan
    try:
        while step < total:
            epoch = step // steps_per_epoch
            lr = cfg.lr * cfg.lr_decay ** epoch
            for g in opt.param_groups:
                g["lr"] = lr
            idx, mirrored = epoch_order(len(bank), cfg.flip, cfg.seed, epoch)
            for k in range(step - epoch * steps_per_epoch, steps_per_epoch):
                t0 = time.perf_counter()
                sel = slice(k * cfg.batch_size, (k + 1) * cfg.batch_size)
                x, y = bank.batch(idx[sel], mirrored[sel])
                x, y = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
                opt.zero_grad(set_to_none=True)
                m = mpjpe_m(lifter(x), y)
                m.backward()
                if cfg.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(lifter.parameters(), cfg.clip_grad)
                opt.step()
                step += 1
                loss = float(m.detach())
                ev = TrainEvent("step", step, total, epoch, cfg.epochs, loss=loss, lr=lr,
                                images_per_s=len(x) / max(time.perf_counter() - t0, 1e-9), data_wait=0.0,
                                mpjpe_mm=loss * 1000.0)
                if step % max(cfg.log_every, 1) == 0 or step == total:
                    log.step(ev, loss)
                emit(ev)
                end_of_epoch = step % steps_per_epoch == 0
                stop = cfg.max_steps is not None and step >= cfg.max_steps
                if end_of_epoch or stop or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    save(step >= total)
                    emit(TrainEvent("checkpoint", step, total, epoch, cfg.epochs, loss=loss, lr=lr))
                if end_of_epoch:
                    emit(TrainEvent("epoch", step, total, epoch + 1, cfg.epochs, loss=loss, lr=lr))
                if trainer.stop_requested:
                    raise KeyboardInterrupt
                if stop:
                    break
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
    except KeyboardInterrupt:
        save(False)
        emit(TrainEvent("interrupted", step, total, step // steps_per_epoch, cfg.epochs,
                        message=f"checkpoint saved at step {step}"))
        raise
    finally:
        log.close()
        _restore_signals(previous)
    done = step >= total
    save(done)
    emit(TrainEvent("end", step, total, min(step // steps_per_epoch, cfg.epochs), cfg.epochs, loss=loss,
                    message="done" if done else f"stopped at step {step}"))
    return TrainResult(run, step, total, cfg.epochs, done, loss, run / CHECKPOINT_NAME)
