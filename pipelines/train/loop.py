"""`h36m train`: one training run of one stage (2d, lift or joint) on WebDataset shards, single process or DDP.

    from h36m.pipelines.train.loop import train, resume
    result = train(TrainConfig(shards="SH/train-{000000..000003}.tar", out="runs/2d", stage="2d"))
    result = resume("runs/2d")                         # continues at the same step and learning rate

The loop is one for every stage: config writing, checkpoints, resume, cadence (logging, checkpoints, epochs),
signals and the non-finite guard live here; a stage (train.stages: 2d, lift, joint) supplies its batches, its loss,
what it logs, its schedule and how its mean-pose baseline is gathered. A step whose loss or gradient is not finite
stops the run with one line naming the step and its input, before the weights change: the last checkpoint stays
(and train.checkpoint never writes non-finite weights).

Run folder:
    config.toml, config.json   the resolved TrainConfig and ModelConfig
    checkpoint.pt              latest checkpoint (train.checkpoint), written atomically
    metrics.jsonl              one JSON line per logged step (rank 0; loss averaged over ranks) and one per epoch
                               ("kind": "epoch": its wall time and images/s; see read_metrics)
    ranks/rank-<r>.jsonl       per-rank step log (several processes only)
    tb/                        TensorBoard events

Determinism: the order of a stage's batches is a function of (seed, epoch, rank); the RNG states are in the
checkpoint. A run stopped after a checkpoint and resumed skips the epoch's batches already used and reproduces the
unbroken run's losses.
Several processes: start with torchrun; every rank runs the same number of steps (the loader's equal_batches), the
backend is NCCL on GPUs and gloo on CPUs; only rank 0 writes files and reports progress.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from h36m.pipelines.device import torch_device
from h36m.pipelines.files import write_atomic
from h36m.pipelines.shards.urls import is_pipe
from h36m.h36m_tools.errors import H36MError

from h36m.pipelines.train.pose_stats import PoseStats
from h36m.pipelines.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from h36m.pipelines.train.config import RUN_CONTROL, TrainConfig, from_dict, model_config, resolve, to_dict, to_toml


@dataclass
class TrainEvent:
    """What `on_progress` receives. kind: note (a line to show, e.g. what a pretrained file gave) | start | step |
    checkpoint | epoch | end | interrupted."""
    kind: str
    step: int
    total_steps: int
    epoch: int
    epochs: int
    loss: float = math.nan
    lr: float = math.nan
    images_per_s: float = math.nan        # images (views x frames) per second, all ranks
    data_wait: float = math.nan           # share of the step's wall time spent waiting for the loader
    err2d_px: float = math.nan            # mean 2-D joint error in crop px (2d, joint)
    mpjpe_mm: float = math.nan            # MPJPE in mm (lift, joint)
    message: str = ""


@dataclass
class TrainResult:
    run: Path
    steps: int
    total_steps: int
    epochs: int
    done: bool                            # all epochs trained
    last_loss: float
    checkpoint: Path


def train(cfg: TrainConfig, on_progress: Optional[Callable[[TrainEvent], None]] = None) -> TrainResult:
    """Start a new run in cfg.out (which must not hold a checkpoint yet). Raises H36MError / ValueError on bad
    input; KeyboardInterrupt after saving a checkpoint."""
    cfg = resolve(cfg)
    ckpt = Path(cfg.out) / CHECKPOINT_NAME
    if ckpt.exists():
        raise H36MError(cfg.out, "already holds a run (checkpoint.pt); use --resume, or another --out")
    return _Trainer(cfg, None, on_progress).run()


def resume(run: str | os.PathLike, on_progress: Optional[Callable[[TrainEvent], None]] = None,
           max_steps: int | None = None, **control) -> TrainResult:
    """Continue the run in folder `run` at its checkpoint's step, up to `max_steps` (None: to the end). `control`
    may change only RUN_CONTROL fields (checkpoint_every, log_every, workers, shards, device, compile); None
    values keep the run's. The checkpoint is data, not a program: its stored config is type-checked, and stored
    `pipe:` shard URLs (shell commands) are refused unless `shards` replaces them."""
    ckpt = Path(run) / CHECKPOINT_NAME
    state = load_checkpoint(ckpt)
    bad = sorted(k for k, v in control.items() if v is not None and k not in RUN_CONTROL)
    if bad:
        raise ValueError(f"cannot change {', '.join(bad)} when resuming (only {', '.join(RUN_CONTROL)})")
    stored = state.get("config")
    if not isinstance(stored, dict) or not isinstance(stored.get("train"), dict):
        raise H36MError(ckpt, "holds no training config")
    cfg = from_dict(stored["train"], ckpt)
    if control.get("shards") is None:       # the user's --shards wins; a stored shell command is never run
        piped = [u for u in cfg.urls() if is_pipe(str(u))]
        if piped:
            raise H36MError(ckpt, f"its stored shards are a shell command ({str(piped[0])[:80]!r}), which is not "
                                  "run from a checkpoint; give --shards")
    if state.get("done"):
        with _hostile(ckpt):
            return TrainResult(Path(run), int(state["step"]), int(state["total_steps"]), cfg.epochs, True, math.nan,
                               ckpt)
    cfg = replace(cfg, out=str(run), max_steps=max_steps, **{k: v for k, v in control.items() if v is not None})
    return _Trainer(resolve(cfg), state, on_progress).run()


# ----- the training step ---------------------------------------------------------------------------------------

def _stage_module(net, stage):
    """An nn.Module whose forward is the stage's loss (so DDP sees every parameter used in the step); only the
    stage's trainable parts train, the others stay frozen in eval mode."""
    import torch.nn as nn

    class StageLoss(nn.Module):
        """forward(*stage inputs) -> (loss, err2d, mpjpe_m); see train.stages."""

        def __init__(self):
            super().__init__()
            self.net = net
            self.frozen = [m for name, m in net.named_children() if name not in stage.trainable]
            for name, m in net.named_children():
                m.requires_grad_(name in stage.trainable)

        def train(self, mode: bool = True):
            super().train(mode)
            for m in self.frozen:
                m.eval()
            return self

        def forward(self, *inputs):
            return stage.loss(self.net, *inputs)

    return StageLoss()


def _clip_groups(net) -> list[list]:
    """The trainable parameters in the groups whose gradient norms are clipped apart: the head's confidence (scale)
    branch, and everything else."""
    head = getattr(net, "head", None)
    own = {id(p) for p in head.confidence_parameters()} if hasattr(head, "confidence_parameters") else set()
    groups = [[p for p in net.parameters() if p.requires_grad and id(p) not in own],
              [p for p in net.parameters() if p.requires_grad and id(p) in own]]
    return [g for g in groups if g]


def _param_groups(net, weight_decay: float):
    """AdamW groups of a module's trainable parameters: no weight decay on biases and norms (1-D), on its declared
    embeddings and tables (`PoseNetwork.no_weight_decay()`, a part's `NO_WEIGHT_DECAY`) and on Swin's relative
    position tables."""
    exempt = net.no_weight_decay() if hasattr(net, "no_weight_decay") else set(getattr(net, "NO_WEIGHT_DECAY", ()))
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim <= 1 or name in exempt or "relative_position_bias_table" in name
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _load_init(net, init: dict, mcfg) -> None:
    """The weights of an init checkpoint: all of them, or all but the lifter's where the run's lifter has another
    shape than the init's (e.g. a lift run with its own lifter started from a 2d run)."""
    from h36m.model import ModelConfig

    same = ModelConfig.from_dict(init["config"]["model"]).lifter == mcfg.lifter
    net.load_state_dict({k: v for k, v in init["model"].items() if same or not k.startswith("lifter.")}, strict=same)


# ----- the loop -------------------------------------------------------------------------------------------------

class _Trainer:
    """The one training loop: config writing, checkpoints, resume, cadence, signals, logging and the non-finite
    guard, for every stage plug-in (train.stages)."""

    def __init__(self, cfg: TrainConfig, state: dict | None, on_progress):
        from h36m.pipelines.train.stages import make_stage

        self.cfg, self.state = cfg, state
        self.run_dir = Path(cfg.out)
        self.on_progress = on_progress
        self.stage = make_stage(cfg)

    def emit(self, event: TrainEvent) -> None:
        if self.rank == 0 and self.on_progress is not None:
            self.on_progress(event)

    def run(self) -> TrainResult:
        import torch

        cfg = self.cfg
        self.rank, self.world, self.device = _distributed(cfg.device)
        try:
            return self._run(torch)
        finally:
            if self.world > 1 and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

    def _run(self, torch) -> TrainResult:
        from h36m.model import ModelConfig, build_model

        cfg, dev, stage = self.cfg, self.device, self.stage
        torch.manual_seed(cfg.seed + self.rank)
        np.random.seed(cfg.seed + self.rank)
        if dev.type == "cuda" and cfg.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        init = load_checkpoint(cfg.init) if cfg.init and self.state is None else None
        source = self.run_dir / CHECKPOINT_NAME if self.state is not None else cfg.init
        with _hostile(source):
            if self.state is not None:
                mcfg = ModelConfig.from_dict(self.state["config"]["model"])
            else:
                mcfg = model_config(cfg, ModelConfig.from_dict(init["config"]["model"]) if init else None)
            net = build_model(mcfg)
        pretrained = self._load_pretrained(net) if self.state is None else []     # its errors name their file
        if init is not None:
            with _hostile(source):
                _load_init(net, init, mcfg)
        net.to(dev)
        module = _stage_module(net, stage).to(dev)
        # fused: one kernel over all parameters per step (CPU and CUDA), where the default loops over them in Python
        opt = torch.optim.AdamW(_param_groups(net, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999),
                                fused=dev.type in ("cpu", "cuda"))
        self.clip_groups = _clip_groups(net)

        stats = PoseStats()
        if self.state is not None:
            with _hostile(source):
                stats = PoseStats.from_state(self.state.get("stats"))
        micro_batches = stage.prepare(net, self.rank, self.world, dev, stats)
        steps_per_epoch = micro_batches // cfg.grad_accum
        if steps_per_epoch < 1:
            raise H36MError(stage.source, f"{micro_batches} batches of {cfg.batch_size} per rank: fewer than "
                                          f"grad_accum={cfg.grad_accum} (need more data or a smaller batch)")
        total = cfg.epochs * steps_per_epoch
        sched = stage.scheduler(opt, total, steps_per_epoch)
        step = 0
        if self.state is not None:
            s = self.state
            with _hostile(source):
                if s["steps_per_epoch"] != steps_per_epoch:
                    raise H36MError(stage.source, f"now gives {steps_per_epoch} steps per epoch, the run was "
                                                  f"started with {s['steps_per_epoch']}: not the same data")
                net.load_state_dict(s["model"])
                opt.load_state_dict(s["optimizer"])
                sched.load_state_dict(s["scheduler"])
                step = int(s["step"])
                if self.rank == 0:
                    set_rng_state(s["rng"])
                else:
                    torch.manual_seed(cfg.seed * 1000003 + self.rank * 7919 + step)
        elif self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.run_dir / "config.toml", to_toml(to_dict(cfg), mcfg.to_dict()))
            write_atomic(self.run_dir / "config.json",
                        json.dumps({"train": to_dict(cfg), "model": mcfg.to_dict()}, indent=2) + "\n")

        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None,
                                             find_unused_parameters=False)
        if cfg.compile:
            module = torch.compile(module)
        module.train()

        self.net, self.opt, self.sched, self.mcfg = net, opt, sched, mcfg
        self.steps_per_epoch, self.total = steps_per_epoch, total
        self.stats = stats
        self.saved = step if self.state is not None else None
        log = _RunLog(self.run_dir, self.rank, self.world, step)
        for line in pretrained:
            self.emit(TrainEvent("note", step, total, step // steps_per_epoch, cfg.epochs, message=line))
        what = stage.describe_start()
        self.emit(TrainEvent("start", step, total, step // steps_per_epoch, cfg.epochs,
                             lr=sched.get_last_lr()[0],
                             message=f"{cfg.stage} stage, {self.world} process(es) on {dev.type}"
                                     + (f": {what}" if what else "") +
                                     f", {steps_per_epoch} steps/epoch x {cfg.epochs} epochs"))
        last_loss = math.nan
        self.step = step
        previous = _catch_signals(self)
        try:
            while self.step < total:
                epoch = self.step // steps_per_epoch
                last_loss, stopped = self._epoch(torch, module, epoch, log)
                if stopped:
                    break
        except KeyboardInterrupt:
            if self.rank == 0:
                self._save(False)
            self.emit(TrainEvent("interrupted", self.step, total, self.step // steps_per_epoch, cfg.epochs,
                                 message=f"checkpoint saved at step {self.step}"))
            raise
        finally:
            log.close()
            _restore_signals(previous)
            stage.close()
        done = self.step >= total
        if self.rank == 0:
            self._save(done)
        self.emit(TrainEvent("end", self.step, total, min(self.step // steps_per_epoch, cfg.epochs), cfg.epochs,
                             loss=last_loss, message="done" if done else f"stopped at step {self.step}"))
        return TrainResult(self.run_dir, self.step, total, cfg.epochs, done, last_loss,
                           self.run_dir / CHECKPOINT_NAME)

    def _load_pretrained(self, net) -> list[str]:
        """Start the spatial module / relation blocks from the configured local timm checkpoints; one line each
        saying what was loaded and what was left unused. Raises H36MError naming a file that does not fit."""
        from h36m.model import load_pretrained_relations, load_pretrained_spatial

        cfg, lines = self.cfg, []
        if cfg.pretrained_spatial:      # the loaders' ValueError names the file: one line from the CLI
            unused = load_pretrained_spatial(net, cfg.pretrained_spatial)
            lines.append(f"pretrained spatial: {cfg.pretrained_spatial}: {len(net.spatial.swin.state_dict())} Swin "
                         f"tensors loaded, {len(unused)} checkpoint tensors unused ({_some(unused)})")
        if cfg.pretrained_relations:
            loaded, unused = load_pretrained_relations(net, cfg.pretrained_relations)
            lines.append(f"pretrained relations: {cfg.pretrained_relations}: {len(loaded)} tensors of "
                         f"{len(net.relations.time_blocks)} temporal + {len(net.relations.view_blocks)} 3-D blocks "
                         f"loaded, {len(unused)} checkpoint tensors unused ({_some(unused)})")
        return lines

    def _epoch(self, torch, module, epoch: int, log) -> tuple[float, bool]:
        cfg, dev, stage = self.cfg, self.device, self.stage
        first = self.step - epoch * self.steps_per_epoch
        it = stage.epoch(epoch, first * cfg.grad_accum)     # resume: the batches this epoch already used left out
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if (dev.type == "cuda" and cfg.amp) \
            else contextlib.nullcontext()
        loss = math.nan
        epoch_start, epoch_samples = time.perf_counter(), 0
        for _ in range(first, self.steps_per_epoch):
            t0 = time.perf_counter()
            wait = 0.0
            samples = 0
            sums = torch.zeros(5, dtype=torch.float64)
            self.opt.zero_grad(set_to_none=True)
            batches = []
            for micro in range(cfg.grad_accum):
                t = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    raise H36MError(stage.source, "the data ended after fewer batches than an epoch holds") from None
                except RuntimeError:
                    if self.stop_requested:     # Ctrl-C also reached the loader's workers: stop before this step
                        raise KeyboardInterrupt from None
                    raise
                wait += time.perf_counter() - t
                batches.append(batch)
                inputs = stage.inputs(batch, self.step, epoch, micro)
                samples += stage.count(inputs)
                sync = module.no_sync() if self.world > 1 and micro < cfg.grad_accum - 1 \
                    else contextlib.nullcontext()
                with sync:
                    with amp:
                        loss_t, err2d, mpjpe = module(*inputs)
                    (loss_t / cfg.grad_accum).backward()
                sums[:3] += torch.stack([loss_t.detach().double().cpu(), err2d.double().cpu(),
                                         mpjpe.double().cpu()]) / cfg.grad_accum
            sums[3] = float(self.stop_requested)
            sums[4] = float(not math.isfinite(float(sums[0])) or not _finite_gradients(self.clip_groups))
            if self.world > 1:   # a CPU tensor: gloo (also beside NCCL, see _distributed); every rank learns of a stop
                local_loss = float(sums[0])
                torch.distributed.all_reduce(sums)
                sums[:3] /= self.world
            else:
                local_loss = float(sums[0])
            if sums[4] > 0:      # every rank stops here, before the weights change: the last checkpoint stays good
                self._non_finite(float(sums[0]), batches)
            if cfg.clip_grad > 0:     # the confidence branch on its own: its gradient never shrinks the joints'
                for group in self.clip_groups:
                    torch.nn.utils.clip_grad_norm_(group, cfg.clip_grad)
            lr = self.sched.get_last_lr()[0]
            self.opt.step()
            self.sched.step()
            self.step += 1
            dt = time.perf_counter() - t0
            epoch_samples += samples * self.world
            loss = float(sums[0])
            ev = TrainEvent("step", self.step, self.total, epoch, cfg.epochs, loss=loss, lr=lr,
                            images_per_s=samples * self.world / max(dt, 1e-9), data_wait=wait / max(dt, 1e-9),
                            err2d_px=float(sums[1]) * stage.crop, mpjpe_mm=float(sums[2]) * 1000.0)
            if self.step % max(cfg.log_every, 1) == 0 or self.step == self.total:
                checksum = math.nan if self.world == 1 else float(
                    sum(p.detach().double().sum() for p in self.net.parameters() if p.requires_grad))
                log.step(ev, local_loss, checksum)
            self.emit(ev)
            end_of_epoch = self.step % self.steps_per_epoch == 0
            stop = cfg.max_steps is not None and self.step >= cfg.max_steps
            if self.rank == 0 and (end_of_epoch or stop or (cfg.checkpoint_every and
                                                            self.step % cfg.checkpoint_every == 0)):
                self._save(self.step >= self.total)
                self.emit(TrainEvent("checkpoint", self.step, self.total, epoch, cfg.epochs, loss=loss, lr=lr))
            if end_of_epoch:
                wall = time.perf_counter() - epoch_start
                log.epoch(epoch + 1, self.step, wall, epoch_samples / max(wall, 1e-9), whole=first == 0)
                self.emit(TrainEvent("epoch", self.step, self.total, epoch + 1, cfg.epochs, loss=loss, lr=lr))
            if sums[3] > 0:
                del it
                raise KeyboardInterrupt
            if stop:
                del it
                return loss, True
        del it
        return loss, False

    def _non_finite(self, loss: float, batches: list) -> None:
        """Stop the run with one line naming the step and its input; the weights and the checkpoint stay as they
        were (the optimiser has not stepped)."""
        kept = f"the checkpoint of step {self.saved} kept" if self.saved is not None else "no checkpoint written"
        what = "; ".join(self.stage.describe(b) for b in batches)
        raise H36MError(self.stage.source, f"step {self.step + 1}: the loss ({loss:g}) or its gradient is not "
                                           f"finite, on {what}; training stopped, {kept}")

    def _save(self, done: bool) -> None:
        cfg = self.cfg
        save_checkpoint(self.run_dir / CHECKPOINT_NAME, {
            "model": self.net.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "step": self.step, "epoch": self.step // self.steps_per_epoch,
            "epoch_step": self.step % self.steps_per_epoch, "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total, "rng": rng_state(), "stats": self.stats.state(), "done": bool(done),
            "world_size": self.world,
            "config": {"train": to_dict(cfg), "model": self.mcfg.to_dict()},
        })
        self.saved = self.step


def _finite_gradients(groups: list[list]) -> bool:
    """True when every gradient of the parameters in `groups` (where it has one) is finite: their total norm is (one
    NaN or infinite element makes it so)."""
    import torch

    grads = [p.grad for group in groups for p in group if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def _some(names: list[str], n: int = 3) -> str:
    """The first n names and how many more."""
    return ", ".join(names[:n]) + (f", ... {len(names) - n} more" if len(names) > n else "") if names else "none"


@contextlib.contextmanager
def _hostile(checkpoint):
    """Errors of a checkpoint's content (a missing entry, a wrong type, weights of another shape) as one H36MError
    naming the checkpoint (None: no checkpoint involved, errors pass unchanged)."""
    try:
        yield
    except H36MError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        if checkpoint is None:
            raise
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise H36MError(checkpoint, f"not a usable checkpoint ({type(e).__name__}: {first})") from None


def _catch_signals(trainer) -> dict:
    """SIGINT / SIGTERM set trainer.stop_requested: the step under way finishes, a checkpoint is saved, then
    KeyboardInterrupt. A second signal interrupts at once. Only from the main thread; returns the old handlers."""
    import signal
    import threading

    trainer.stop_requested = False
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return previous


def _restore_signals(previous: dict) -> None:
    import signal

    for sig, h in previous.items():
        signal.signal(sig, h)


def _distributed(device: str):
    """(rank, world_size, torch.device); initialises the process group when started by torchrun."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = torch_device(device)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        # gloo for everything on CPU; on GPUs NCCL for the gradients (the logging all_reduce moves CPU tensors,
        # which gloo handles: "cuda:nccl,cpu:gloo")
        torch.distributed.init_process_group(backend="cuda:nccl,cpu:gloo" if use_cuda else "gloo")
    return rank, world, dev


class _RunLog:
    """metrics.jsonl + TensorBoard (rank 0) and ranks/rank-<r>.jsonl (every rank when there are several).

    On resume the JSON lines past the checkpoint's step (written after it, before the run stopped) are dropped and
    TensorBoard purges them."""

    def __init__(self, run: Path, rank: int, world: int, step: int):
        self.rank, self.tb, self.files = rank, None, []
        paths = []
        if rank == 0:
            paths.append(run / "metrics.jsonl")
        if world > 1:
            (run / "ranks").mkdir(parents=True, exist_ok=True)
            paths.append(run / "ranks" / f"rank-{rank}.jsonl")
        for p in paths:
            _truncate_jsonl(p, step)
            self.files.append(open(p, "a"))
        if rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run / "tb"), purge_step=step if step else None)
            except ImportError:  # tensorboard not installed: JSON lines only
                self.tb = None

    def step(self, ev: TrainEvent, local_loss: float, checksum: float = math.nan) -> None:
        """One step: the averaged record (metrics.jsonl, TensorBoard) and the rank's own loss and weight checksum
        (the sum of its trainable parameters: equal on every rank when DDP keeps them in sync)."""
        rec = {"step": ev.step, "epoch": ev.epoch, "loss": ev.loss, "lr": ev.lr,
               "images_per_s": round(ev.images_per_s, 2), "data_wait": round(ev.data_wait, 4), "time": time.time()}
        for k in ("err2d_px", "mpjpe_mm"):
            if not math.isnan(getattr(ev, k)):
                rec[k] = getattr(ev, k)
        for i, f in enumerate(self.files):
            line = rec if (self.rank == 0 and i == 0) else {"step": ev.step, "loss": local_loss, "rank": self.rank,
                                                             "weights": checksum}
            f.write(json.dumps(line) + "\n")
            f.flush()
        if self.tb is not None:
            for k in ("loss", "lr", "images_per_s", "data_wait", "err2d_px", "mpjpe_mm"):
                if k in rec:
                    self.tb.add_scalar(f"train/{k}", rec[k], ev.step)

    def epoch(self, epoch: int, step: int, wall_s: float, images_per_s: float, whole: bool) -> None:
        """An epoch's record in metrics.jsonl (rank 0): its wall time (with the checkpoint saved in it) and images/s
        over all ranks; `whole` is False for an epoch a resumed run began midway (its time is of a part)."""
        if self.rank == 0 and self.files:
            rec = {"kind": "epoch", "epoch": epoch, "step": step, "epoch_time_s": round(wall_s, 3),
                   "images_per_s": round(images_per_s, 2), "whole": whole, "time": time.time()}
            self.files[0].write(json.dumps(rec) + "\n")
            self.files[0].flush()
            if self.tb is not None:
                self.tb.add_scalar("train/epoch_time_s", wall_s, step)

    def close(self) -> None:
        for f in self.files:
            f.close()
        if self.tb is not None:
            self.tb.close()


def _truncate_jsonl(path: Path, step: int) -> None:
    """Keep only the lines with 'step' <= step (atomically)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue
    write_atomic(path, "".join(x + "\n" for x in keep))


def read_metrics(run: str | os.PathLike, kind: str = "step") -> list[dict]:
    """The run's metrics.jsonl records of one kind, as dicts: "step" (one per logged step: loss, lr, images/s, ...)
    or "epoch" (one per finished epoch: epoch_time_s, images_per_s, whole)."""
    p = Path(run) / "metrics.jsonl"
    if not p.exists():
        return []
    recs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return [r for r in recs if r.get("kind", "step") == kind]
