"""`h36m evaluate` of a lift run: Table II (MPJPE and P-MPJPE per action) on whole test sequences.

    from h36m.pipelines.evaluate.table2 import LiftEvalConfig, evaluate_lift
    report = evaluate_lift(LiftEvalConfig(run="runs/lift", keypoints=("gt", "pred.npz")))

Every camera view of every sequence of the test subjects (S9, S11) in the extracted dataset (the run's `data` unless
given) is lifted whole (train.sequences.lift_sequence: a window centred on every frame, padded only at the
sequence's ends; test-time flip averaging unless `flip` is off), once per 2-D source: `gt` (the dataset's
ground-truth 2-D) and each VideoPose3D 2-D file given (e.g. `h36m predict`'s). Rows ("methods"):
    Mean pose               the training set's mean root-relative 3-D pose, every frame (baseline)
    PoseFormer, <source>    the run's lifter on that 2-D source
Per action: frames pooled over subactions, subjects and cameras; Avg = the unweighted mean of the action errors;
All = the mean over all counted frames. `every` N counts only frames whose index is a multiple of N;
`exclude_damaged` drops h36m_tools.names.DAMAGED. A source lacking some views is evaluated on those it has (the
report lists how many frames each row counts).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from h36m.h36m_tools import metrics as M
from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import ACTIONS, DAMAGED, TEST_SUBJECTS, parse_subjects, subject_order
from h36m.pipelines.evaluate.evaluate import Row3D, _row, is_damaged

TABLE2_METRICS = ("MPJPE", "P-MPJPE")
MEAN_POSE = "Mean pose"


@dataclass
class LiftEvalConfig:
    """Options of `h36m evaluate` for a lift run."""
    run: str
    data: str | None = None                 # extracted dataset (default: the run's training data)
    keypoints: tuple[str, ...] = ()         # 2-D sources: 'gt' and / or files (default: gt and the run's file)
    subjects: str = ",".join(TEST_SUBJECTS)
    out: str | None = None
    flip: bool = True
    exclude_damaged: bool = False
    every: int = 1
    device: str = "auto"


@dataclass
class LiftReport:
    run: str
    stage: str
    data: str
    trained_on: str                         # the keypoints the run was trained on
    receptive_field: int
    seq2seq: bool
    flip: bool
    damaged_policy: str
    damaged: list[str]
    every: int
    subjects: list[str]
    actions: list[str]
    sources: list[str]                      # 2-D sources, one row each
    frames: dict[str, int]                  # method -> counted (view, frame) pairs
    sequences: int                          # view sequences evaluated (ground truth)
    rows: list[Row3D]
    seconds: float
    files: list[str] = field(default_factory=list)

    def row(self, method: str, metric: str) -> Row3D:
        return next(r for r in self.rows if r.method == method and r.metric == metric)

    @property
    def methods(self) -> list[str]:
        return [MEAN_POSE] + [method_name(s) for s in self.sources]


def method_name(source: str) -> str:
    return "PoseFormer, GT 2-D" if source == "gt" else f"PoseFormer, {Path(source).name}"


def evaluate_lift(cfg: LiftEvalConfig, on_progress: Optional[Callable[[int, int], None]] = None) -> LiftReport:
    """Table II of a lift run; `on_progress(view sequences done, total)`. Writes nothing (report.write_lift_report)."""
    import torch

    from h36m.pipelines.train.checkpoint import load_network
    from h36m.pipelines.train.pose_stats import PoseStats
    from h36m.pipelines.train.sequences import inputs, lift_sequence, load_sequences

    if cfg.every < 1:
        raise ValueError(f"--every must be >= 1, got {cfg.every}")
    t0 = time.perf_counter()
    dev = torch.device("cuda" if (cfg.device == "auto" and torch.cuda.is_available()) or cfg.device == "cuda"
                       else "cpu")
    net, state = load_network(cfg.run, dev)
    train_cfg = state["config"]["train"]
    stats = PoseStats.from_state(state.get("stats"))
    if stats.count == 0:
        raise H36MError(cfg.run, "checkpoint has no training pose statistics (mean-pose baseline)")
    data = cfg.data or train_cfg.get("data")
    if not data:
        raise H36MError(cfg.run, "names no extracted dataset: give --data")
    trained_on = train_cfg.get("keypoints", "gt")
    sources = list(cfg.keypoints) or (["gt"] + ([trained_on] if trained_on != "gt" else []))
    subjects = parse_subjects(cfg.subjects)
    loaded = {s: load_sequences(data, subjects, s)[0] for s in sources}
    gt_seqs = loaded.get("gt") or load_sequences(data, subjects, "gt")[0]
    total = sum(len(v) for v in loaded.values())
    lifter = net.lifter.eval()
    per_method: dict[str, tuple[list, list, dict[str, list]]] = {}
    done = 0

    def add(method: str, seq, pred: np.ndarray) -> None:
        keep = (seq.frames % cfg.every == 0)
        if cfg.exclude_damaged and is_damaged(seq.subject, seq.sequence):
            keep[:] = False
        if not keep.any():
            return
        act, subj, errs = per_method.setdefault(method, ([], [], {m: [] for m in TABLE2_METRICS}))
        gt = seq.pose3d[keep]
        errs["MPJPE"].append(M.mpjpe_frames(pred[keep], gt))
        errs["P-MPJPE"].append(M.p_mpjpe_frames(pred[keep], gt))
        act += [seq.action] * int(keep.sum())
        subj += [seq.subject] * int(keep.sum())

    for seq in gt_seqs:
        add(MEAN_POSE, seq, np.broadcast_to(stats.mean3d, seq.pose3d.shape))
    for source in sources:
        for seq in loaded[source]:
            add(method_name(source), seq, lift_sequence(lifter, inputs(seq), flip=cfg.flip))
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    if MEAN_POSE not in per_method:
        raise H36MError(data, "no test frames to evaluate (no sequence of the test subjects, or every one excluded)")
    rows, frames = [], {}
    methods = [MEAN_POSE] + [method_name(s) for s in sources]
    for metric in TABLE2_METRICS:
        for method in methods:
            act, subj, errs = per_method.get(method, ([], [], {m: [] for m in TABLE2_METRICS}))
            err = np.concatenate(errs[metric]) if errs[metric] else np.zeros(0)
            rows.append(_row(method, metric, np.array(act), np.array(subj), err))
            frames[method] = len(act)
    present = {a for a in per_method[MEAN_POSE][0]}
    return LiftReport(
        run=str(cfg.run), stage=str(train_cfg.get("stage", "?")), data=str(data), trained_on=str(trained_on),
        receptive_field=net.cfg.lifter.receptive_field, seq2seq=net.cfg.lifter.seq2seq, flip=cfg.flip,
        damaged_policy="excluded" if cfg.exclude_damaged else "included", damaged=[f"{s}/{q}" for s, q in DAMAGED],
        every=cfg.every, subjects=sorted(set(per_method[MEAN_POSE][1]), key=subject_order),
        actions=[a for a in ACTIONS if a in present], sources=sources, frames=frames, sequences=len(gt_seqs),
        rows=rows, seconds=time.perf_counter() - t0)


def is_lift_run(run: str) -> bool:
    """True when the run (folder or checkpoint) was trained by the lift stage."""
    from h36m.pipelines.train.checkpoint import load_checkpoint

    return load_checkpoint(run)["config"]["train"].get("stage") == "lift"


__all__ = ["LiftEvalConfig", "LiftReport", "evaluate_lift", "is_lift_run", "method_name", "TABLE2_METRICS",
           "MEAN_POSE"]
