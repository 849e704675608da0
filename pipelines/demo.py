"""`h36m demo`: the whole chain on a synthetic release, on a laptop CPU, in minutes.

    synth (S1, S5 train; S9, S11 test) -> extract (64 px crops) -> shard (8-frame clips)
      -> train tiny, stage 2d -> predict (the 2d run over every clip, stitched into whole sequences: pred.npz)
      -> train tiny, stage lift (whole training sequences, the predicted 2-D)
      -> train stage triangulate from the 2d run (the 2-D network trained through the four views' triangulation)
      -> predict its 2-D and confidences on the test clips (pred_triangulate.npz) -> evaluate (Table II on S9/S11)

Folder `out`:
    raw/  extracted/  shards/  runs/2d/  pred.npz  runs/lift/  runs/triangulate/  pred_triangulate.npz
    report/ (results.md/.json/.csv)  demo.json
`demo.json` records the finished steps: run the demo again and it continues where it stopped (training resumes
from its checkpoint). The report compares the lifter on the predicted 2-D (and on ground-truth 2-D) with the
mean-pose baseline (the training set's mean root-relative 3-D pose): `DemoResult.improvement` is the relative error
reduction on the held-out subjects. Its triangulation rows compare the 2d run's 2-D triangulated after the fact
(`Triangulated (4 views), pred.npz`) with the triangulate run's (`..., pred_triangulate.npz`), and its fused rows
lift-then-fuse; `DemoResult.geometry` puts the trained triangulation beside the after-the-fact one and the lifter.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from h36m.pipelines.files import write_atomic
from h36m.pipelines.evaluate.evaluate import EvalProgress
from h36m.pipelines.evaluate.table2 import LiftReport
from h36m.pipelines.train.loop import TrainEvent

STEPS = ("synth", "extract", "shard", "train-2d", "predict", "train-lift", "train-triangulate", "predict-triangulate",
         "evaluate")
#: The 2-D file of the triangulate run (its Table II rows are named after it).
TRIANGULATE_PRED = "pred_triangulate.npz"


@dataclass
class DemoConfig:
    """Options of `h36m demo`: the tour's commands and defaults (synth's actions, the `tiny` preset's recipes) with
    fewer epochs; BENCHMARKS.md gives the time they take on 2 CPU cores."""
    out: Path = Path("h36m-demo")
    subjects: tuple[str, ...] = ("S1", "S5", "S9", "S11")
    actions: tuple[str, ...] = ()           # every subject performs these [default: synth's DEFAULT_ACTIONS]
    frames: int = 150
    crop: int = 64
    clip_frames: int = 8
    # The tour's commands with shorter training, so that the chain fits 10 minutes on 2 CPU cores (BENCHMARKS.md);
    # None = the tiny recipes' lengths, as the tour trains (20 2d epochs, 20 lift epochs)
    epochs_2d: int | None = 14
    epochs_lift: int | None = 6
    epochs_triangulate: int = 8
    lr_triangulate: float = 1e-3
    loss3d_weight: float = 1.0              # triangulate stage: loss = 2-D loss + w x world MPJPE (m)
    workers: int = 1                        # loader processes (the other core computes)
    seed: int = 0


@dataclass
class DemoEvent:
    """What `on_progress` receives: a step starting or ending, or the progress of the training / evaluation."""
    step: str                               # one of STEPS
    kind: str                               # start | end | train | eval
    message: str = ""
    train: Optional[TrainEvent] = None
    eval: Optional[EvalProgress] = None


@dataclass
class Improvement:
    """Ours against the mean-pose baseline, on the held-out subjects: errors and relative reduction (0.6 = -60 %)."""
    metric: str
    ours: float
    baseline: float

    @property
    def reduction(self) -> float:
        return 1.0 - self.ours / self.baseline if self.baseline > 0 else 0.0


@dataclass
class DemoResult:
    out: Path
    report: LiftReport
    report_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)   # step -> wall seconds (this invocation)
    improvement: list[Improvement] = field(default_factory=list)
    geometry: list[Improvement] = field(default_factory=list)   # the triangulate run's MPJPE vs the 2d run's
                                                                # after-the-fact triangulation, and vs the lifter

    @property
    def beats_baseline(self) -> bool:
        """Every headline error (MPJPE and P-MPJPE of the lifter on the predicted 2-D) at least 25 % below the
        baseline."""
        return bool(self.improvement) and all(i.reduction >= 0.25 for i in self.improvement)


def run_demo(cfg: DemoConfig, on_progress: Optional[Callable[[DemoEvent], None]] = None) -> DemoResult:
    """Run (or continue) the demo in cfg.out; returns the evaluation and the comparison with the baseline."""
    from h36m.h36m_tools.names import TEST_SUBJECTS

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not any(s in TEST_SUBJECTS for s in cfg.subjects) or all(s in TEST_SUBJECTS for s in cfg.subjects):
        raise ValueError("the demo needs training subjects (S1, S5, ...) and test subjects (S9, S11)")
    state_path = out / "demo.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("config") not in (None, _config_dict(cfg)):
        from h36m.h36m_tools.errors import H36MError

        raise H36MError(out, "holds a demo made with other options; use another --out or delete it")
    done: list[str] = state.get("done", [])
    emit = on_progress or (lambda e: None)
    seconds: dict[str, float] = {}
    raw, ex, sh, runs, rep = out / "raw", out / "extracted", out / "shards", out / "runs", out / "report"

    def step(name: str, fn: Callable[[], str]) -> None:
        if name in done:
            emit(DemoEvent(name, "end", "already done"))
            return
        emit(DemoEvent(name, "start"))
        t = time.perf_counter()
        message = fn()
        seconds[name] = time.perf_counter() - t
        done.append(name)
        write_atomic(state_path, json.dumps({"config": _config_dict(cfg), "done": done}, indent=1))
        emit(DemoEvent(name, "end", message))

    step("synth", lambda: _synth(cfg, raw))
    step("extract", lambda: _extract(cfg, raw, ex))
    step("shard", lambda: _shard(cfg, ex, sh))
    step("train-2d", lambda: _train(cfg, sh, runs / "2d", "2d", None, emit))
    step("predict", lambda: _predict(cfg, sh, runs / "2d", out / "pred.npz"))
    step("train-lift", lambda: _train(cfg, sh, runs / "lift", "lift", runs / "2d", emit, ex, out / "pred.npz"))
    step("train-triangulate", lambda: _train(cfg, sh, runs / "triangulate", "triangulate", runs / "2d", emit))
    step("predict-triangulate", lambda: _predict(cfg, sh, runs / "triangulate", out / TRIANGULATE_PRED, ("test",)))

    from h36m.pipelines.evaluate.report import write_lift_report
    from h36m.pipelines.evaluate.table2 import LiftEvalConfig, evaluate_lift, method_name, triangulated_name

    t = time.perf_counter()
    emit(DemoEvent("evaluate", "start"))
    pred, pred_tri = str(out / "pred.npz"), str(out / TRIANGULATE_PRED)
    report = evaluate_lift(LiftEvalConfig(run=str(runs / "lift"), data=str(ex), keypoints=("gt", pred, pred_tri)))
    write_lift_report(report, rep)
    seconds["evaluate"] = time.perf_counter() - t
    emit(DemoEvent("evaluate", "end", f"{report.frames['Mean pose']} (view, frame) pairs of "
                                      f"{', '.join(report.subjects)}"))
    improvement = [Improvement(m, report.row(method_name(pred), m).avg, report.row("Mean pose", m).avg)
                   for m in ("MPJPE", "P-MPJPE")]
    trained = report.row(triangulated_name(pred_tri, 4), "MPJPE").avg
    geometry = [Improvement("MPJPE", trained, report.row(name, "MPJPE").avg)
                for name in (triangulated_name(pred, 4), method_name(pred))]
    return DemoResult(out, report, rep, seconds, improvement, geometry)


def _config_dict(cfg: DemoConfig) -> dict:
    return {"subjects": list(cfg.subjects), "actions": list(cfg.actions),
            "frames": cfg.frames, "crop": cfg.crop, "clip_frames": cfg.clip_frames, "epochs_2d": cfg.epochs_2d,
            "epochs_lift": cfg.epochs_lift, "epochs_triangulate": cfg.epochs_triangulate,
            "lr_triangulate": cfg.lr_triangulate, "loss3d_weight": cfg.loss3d_weight,
            "seed": cfg.seed}


def _synth(cfg: DemoConfig, raw: Path) -> str:
    from h36m.pipelines.synth.release import SynthConfig, run_synth

    if raw.exists():          # a synth killed half-way: start it again
        shutil.rmtree(raw)
    results = run_synth(SynthConfig(out=raw, subjects=tuple(cfg.subjects),
                                    actions=tuple(cfg.actions), frames=cfg.frames,
                                    seed=cfg.seed, workers=os.cpu_count() or 1))
    return f"{len(results)} sequences x 4 cameras x {cfg.frames} frames"


def _extract(cfg: DemoConfig, raw: Path, ex: Path) -> str:
    from h36m.pipelines.extract.extract import plan_extract, run_extract
    from h36m.pipelines.extract.plan import ExtractConfig

    ecfg = ExtractConfig(raw=raw, out=ex, size=cfg.crop, min_views=3, workers=os.cpu_count() or 1)
    results = run_extract(ecfg, plan_extract(ecfg))
    ok = [r for r in results if r.status == "done"]
    return f"{len(ok)} sequences, {sum(r.frames for r in ok)} frames, {cfg.crop} px crops"


def _shard(cfg: DemoConfig, ex: Path, sh: Path) -> str:
    from h36m.pipelines.shards.writer import ShardConfig, write_shards

    counts = []
    for split in ("train", "test"):
        # as the tour: training clips shuffled (the tail dropped), test clips in order with the tail padded
        r = write_shards(ShardConfig(extracted=ex, out=sh, frames=cfg.clip_frames, split=split, shard_mb=2.0,
                                     shuffle_seed=cfg.seed if split == "train" else None,
                                     tail="drop" if split == "train" else "pad"))
        counts.append(f"{split} {r.samples} clips in {len(r.shards)} shards")
    return ", ".join(counts)


def _predict(cfg: DemoConfig, sh: Path, run: Path, out: Path, splits=("train", "test")) -> str:
    from h36m.pipelines.predict.predict import PredictConfig, predict

    r = predict(PredictConfig(run=str(run), shards=[str(sh / f"{s}-*.tar") for s in splits], out=out,
                              workers=cfg.workers))
    return f"{r.clips} clips -> {r.sequences} whole sequences x 4 cameras ({len(r.skipped)} left out)"


def _train(cfg: DemoConfig, sh: Path, run: Path, stage: str, init: Path | None, emit, ex: Path | None = None,
           keypoints: Path | None = None) -> str:
    from h36m.pipelines.train.checkpoint import CHECKPOINT_NAME
    from h36m.pipelines.train.loop import resume, train
    from h36m.pipelines.train.config import TrainConfig

    def on(e: TrainEvent) -> None:
        emit(DemoEvent(f"train-{stage}", "train", train=e))

    if (run / CHECKPOINT_NAME).exists():
        result = resume(run, on_progress=on)
    elif stage == "lift":
        from h36m.h36m_tools.names import TRAIN_SUBJECTS

        result = train(TrainConfig(out=str(run), preset="tiny", stage="lift", init=str(init), data=str(ex),
                                   keypoints=str(keypoints), epochs=cfg.epochs_lift, seed=cfg.seed,
                                   checkpoint_every=100,
                                   subjects=",".join(s for s in cfg.subjects if s in TRAIN_SUBJECTS)), on_progress=on)
    else:
        tri = stage == "triangulate"
        result = train(TrainConfig(shards=str(sh / "train-*.tar"), out=str(run), preset="tiny", stage=stage,
                                   init=str(init) if init else None,
                                   epochs=cfg.epochs_triangulate if tri else cfg.epochs_2d,
                                   **({"lr": cfg.lr_triangulate, "loss3d_weight": cfg.loss3d_weight} if tri else {}),
                                   workers=cfg.workers, seed=cfg.seed, checkpoint_every=100), on_progress=on)
    return f"{result.steps} steps, last loss {result.last_loss:.4f}"
