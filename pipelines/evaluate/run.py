"""`h36m evaluate` of one run: the run read once, every table it can give, options that do not apply refused.

    from h36m.pipelines.evaluate.run import RunEvalConfig, evaluate_run
    result = evaluate_run(RunEvalConfig(run="runs/joint", shards="SH/test-*.tar", data="EXTRACTED"))

What a run gives (its checkpoint's stage says what it trained):
    2d     on test shards (--shards): Table I and the mean-pose 3-D rows (evaluate.evaluate); it trains no lifter, so
           the Table II options (--data, --keypoints, --flip/--no-flip, --triangulate/--no-triangulate) are refused
    lift   Table II on whole test sequences of an extracted dataset (evaluate.table2; --data, default the run's);
           it trains no 2-D network, so --shards is refused
    joint  on test shards (--shards) as a 2d run, with its lifter's rows; and Table II as a lift run's when --data
           (or --keypoints) is given
The rows are named once for both (evaluate.evaluate.method_name, MEAN_POSE, OURS).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from h36m.h36m_tools.errors import H36MError
from h36m.pipelines.evaluate.evaluate import EvalConfig

#: The options of Table II, and the flag each is given by.
LIFT_OPTIONS = {"data": "--data", "keypoints": "--keypoints", "flip": "--flip/--no-flip",
                "triangulate": "--triangulate/--no-triangulate"}


@dataclass
class RunEvalConfig(EvalConfig):
    """Options of `h36m evaluate` for one run: the shard evaluation's (EvalConfig) and Table II's (None: not
    given)."""
    shards: str | list[str] | None = None   # test shards (2d, joint)
    data: str | None = None                 # extracted dataset for Table II (lift, joint)
    keypoints: tuple[str, ...] = ()         # Table II's 2-D sources
    flip: bool | None = None                # Table II: test-time flip averaging (default on)
    triangulate: bool | None = None         # Table II: the triangulation rows (default on)


@dataclass
class RunEvaluation:
    """What one run gave: its stage, the shard tables (EvalReport) and Table II (LiftReport), each None where the
    run gives none."""
    run: str
    stage: str
    shards: object = None
    table2: object = None


def evaluate_run(cfg: RunEvalConfig, on_clips: Optional[Callable] = None,
                 on_sequences: Optional[Callable[[int, int], None]] = None) -> RunEvaluation:
    """Read cfg.run once and evaluate it as the module doc says; `on_clips(EvalProgress)` and `on_sequences(done,
    total)` report progress. Raises H36MError (one line naming the run) for an option that does not apply."""
    from h36m.pipelines.device import torch_device
    from h36m.pipelines.evaluate.evaluate import evaluate
    from h36m.pipelines.evaluate.table2 import LiftEvalConfig, evaluate_lift
    from h36m.pipelines.train.checkpoint import load_network

    loaded = load_network(cfg.run, torch_device(cfg.device))
    stage = str(loaded[1]["config"]["train"].get("stage", "?"))
    lift_given = [flag for name, flag in LIFT_OPTIONS.items() if getattr(cfg, name) not in (None, ())]
    if stage == "2d" and lift_given:
        raise H36MError(cfg.run, f"a 2d run trains no lifter: {', '.join(lift_given)} (Table II) apply to lift and "
                                 f"joint runs")
    if stage == "lift" and cfg.shards:
        raise H36MError(cfg.run, "a lift run trains no 2-D network: --shards applies to 2d and joint runs (a lift "
                                 "run's Table II comes from --data)")
    if stage != "lift" and not cfg.shards:
        raise H36MError(cfg.run, f"a {stage} run is evaluated on test shards: give --shards")
    result = RunEvaluation(str(cfg.run), stage)
    if stage != "lift":
        result.shards = evaluate(cfg, on_clips, loaded)
    if stage == "lift" or (stage == "joint" and (cfg.data or cfg.keypoints)):
        result.table2 = evaluate_lift(LiftEvalConfig(
            run=str(cfg.run), data=cfg.data, keypoints=tuple(cfg.keypoints), out=cfg.out,
            flip=True if cfg.flip is None else cfg.flip, exclude_damaged=cfg.exclude_damaged, every=cfg.every,
            device=cfg.device, triangulate=True if cfg.triangulate is None else cfg.triangulate),
            on_sequences, loaded)
    return result


__all__ = ["RunEvalConfig", "RunEvaluation", "evaluate_run", "LIFT_OPTIONS"]
