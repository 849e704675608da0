"""`h36m evaluate` of a lift run: Table II (MPJPE and P-MPJPE per action) on whole test sequences.

    from h36m.pipelines.evaluate.table2 import LiftEvalConfig, evaluate_lift
    report = evaluate_lift(LiftEvalConfig(run="runs/lift", keypoints=("gt", "pred.npz")))

Every camera view of every sequence of the test subjects (S9, S11) in the extracted dataset (the run's `data` unless
given) is lifted whole (train.sequences.lift_sequence: a window centred on every frame, padded only at the
sequence's ends; test-time flip averaging unless `flip` is off), once per 2-D source: `gt` (the dataset's
ground-truth 2-D) and each VideoPose3D 2-D file given (e.g. `h36m predict`'s). Rows ("methods"):
    Mean pose               the training set's mean root-relative 3-D pose, every frame (baseline)
    PoseFormer, <source>    the run's lifter on that 2-D source
and with `triangulate` (predict.triangulate, h36m_tools.triangulate; no network involved), per 2-D source:
    Triangulated (4 views), <source>          the confidence-weighted linear (DLT) triangulation of the four views
    Triangulated (3 views) / (2 views), <file>    the same from every subset of 3 / 2 of the views, averaged per frame
    Triangulated robust (4 views), <file>     view pairs as hypotheses, the inliers re-triangulated
(ground-truth 2-D gets the 4-view row only: a check of the cameras, near 0), and with `fuse`, per 2-D source:
    PoseFormer fused (4 views), <source>      lift-then-fuse: the lifter's pose of each view rotated into the world
                                              by its camera and fused per joint (h36m_tools.triangulate.fuse_lifted:
                                              a robust mean weighted by the source's confidences), root-aligned,
                                              each frame counted once.
The triangulation rows' errors are of world joints, so they have one more metric, `ABS_MPJPE`: the MPJPE with no
alignment at all (the position in the room, which no lifter gives); their MPJPE aligns the root joints like the
lifting rows' (rotation does not change it) and each frame counts once (the lifting rows count a frame once per
camera: the same per-action means when every frame has all its views).
Per action: frames pooled over subactions, subjects and cameras; Avg = the unweighted mean of the action errors;
All = the mean over all counted frames. `every` N counts only frames whose index is a multiple of N;
S11 `Directions` is never counted: VideoPose3D's data leaves it out (interchange.npzfile.VP3D_DROPPED), and with it
the published tables, so a row of ground-truth 2-D and a row of an exported file count the same frames.
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
from h36m.pipelines.evaluate.evaluate import MEAN_POSE, Row3D, _row, counted_sequence, method_name

TABLE2_METRICS = ("MPJPE", "P-MPJPE")
#: The triangulation rows' extra metric: MPJPE of world joints without any alignment, mm.
ABS_MPJPE = "Abs. MPJPE"


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
    triangulate: bool = True                # the triangulation rows (see the module doc)
    fuse: bool = True                       # the lift-then-fuse rows (see the module doc)


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
    triangulated: list[str] = field(default_factory=list)   # the triangulation rows' methods
    weighted: list[str] = field(default_factory=list)       # the sources whose confidences weighed the views
    fused: list[str] = field(default_factory=list)          # the lift-then-fuse rows' methods
    clips: dict[str, str] = field(default_factory=dict)      # action -> its clip, relative to the report folder

    def row(self, method: str, metric: str) -> Row3D:
        return next(r for r in self.rows if r.method == method and r.metric == metric)

    @property
    def methods(self) -> list[str]:
        return [MEAN_POSE] + [method_name(s) for s in self.sources] + list(self.fused) + list(self.triangulated)


def fused_name(source: str, views: int = 4) -> str:
    """'PoseFormer fused (4 views), pred.npz'."""
    return f"PoseFormer fused ({views} views), " + ("GT 2-D" if source == "gt" else Path(source).name)


def triangulated_name(source: str, views: int, robust: bool = False) -> str:
    """'Triangulated (4 views), GT 2-D', 'Triangulated robust (4 views), pred.npz'."""
    return (f"Triangulated{' robust' if robust else ''} ({views} views), "
            + ("GT 2-D" if source == "gt" else Path(source).name))


def triangulation_errors(mv, views: int, robust: bool = False) -> dict[str, np.ndarray]:
    """Per frame of a MultiView (predict.triangulate): {MPJPE, P-MPJPE, ABS_MPJPE} (N,) mm of the world joints
    triangulated from `views` of its cameras, averaged over every subset of that many (empty when it has fewer).
    MPJPE aligns the root joints; ABS_MPJPE aligns nothing."""
    from itertools import combinations

    from h36m.pipelines.predict.triangulate import triangulate_views

    out = {m: [] for m in TABLE2_METRICS + (ABS_MPJPE,)}
    for subset in combinations(range(len(mv.cameras)), views):
        world, _ = triangulate_views(mv, list(subset), "robust" if robust else "dlt")
        world = np.where(np.isfinite(world), world, 0.0)     # a point no pair of views gives: counted at the origin
        out["MPJPE"].append(M.mpjpe_frames(world, mv.world, root=0))
        out["P-MPJPE"].append(M.p_mpjpe_frames(world, mv.world))
        out[ABS_MPJPE].append(M.mpjpe_frames(world, mv.world))
    return {m: np.mean(v, axis=0) for m, v in out.items() if v}


def evaluate_lift(cfg: LiftEvalConfig, on_progress: Optional[Callable[[int, int], None]] = None,
                  loaded: tuple | None = None) -> LiftReport:
    """Table II of a run with a trained lifter (lift or joint stage); `on_progress(view sequences done, total)`;
    `loaded`: (network, checkpoint) of the run already read (evaluate.run reads a run once). Writes nothing
    (report.write_lift_report)."""
    from h36m.pipelines.train.checkpoint import load_network
    from h36m.pipelines.train.pose_stats import PoseStats
    from h36m.pipelines.train.sequences import inputs, lift_sequence, load_sequences

    if cfg.every < 1:
        raise ValueError(f"--every must be >= 1, got {cfg.every}")
    t0 = time.perf_counter()
    from h36m.pipelines.device import torch_device

    net, state = loaded if loaded is not None else load_network(cfg.run, torch_device(cfg.device))
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
        keep = _counted(cfg, seq.subject, seq.sequence, seq.frames)
        if keep.any():
            gt = seq.pose3d[keep]
            _add(per_method, method, seq.action, seq.subject,
                 {"MPJPE": M.mpjpe_frames(pred[keep], gt), "P-MPJPE": M.p_mpjpe_frames(pred[keep], gt)})

    for seq in gt_seqs:
        add(MEAN_POSE, seq, np.broadcast_to(stats.mean3d, seq.pose3d.shape))
    lifted: dict[tuple[str, str, str, str], np.ndarray] = {}
    for source in sources:
        for seq in loaded[source]:
            pred = lift_sequence(lifter, inputs(seq), flip=cfg.flip)
            add(method_name(source), seq, pred)
            if cfg.fuse:
                lifted[source, seq.subject, seq.sequence, seq.camera] = pred
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    if MEAN_POSE not in per_method:
        raise H36MError(data, "no test frames to evaluate (no sequence of the test subjects, or every one excluded)")
    triangulated, weighted, fused = [], [], []
    if cfg.triangulate:
        triangulated, weighted = _triangulation_rows(cfg, data, subjects, sources, per_method)
    if cfg.fuse:
        fused = _fusion_rows(cfg, data, subjects, sources, lifted, per_method)
    rows, frames = [], {}
    methods = [MEAN_POSE] + [method_name(s) for s in sources] + fused
    for metric in TABLE2_METRICS + (ABS_MPJPE,):
        for method in methods + triangulated:
            if metric == ABS_MPJPE and method not in triangulated:
                continue
            act, subj, errs = per_method.get(method, ([], [], {}))
            err = np.concatenate(errs[metric]) if errs.get(metric) else np.zeros(0)
            rows.append(_row(method, metric, np.array(act), np.array(subj), err))
            frames[method] = len(act)
    present = {a for a in per_method[MEAN_POSE][0]}
    return LiftReport(
        run=str(cfg.run), stage=str(train_cfg.get("stage", "?")), data=str(data), trained_on=str(trained_on),
        receptive_field=net.cfg.lifter.receptive_field, seq2seq=net.cfg.lifter.seq2seq, flip=cfg.flip,
        damaged_policy="excluded" if cfg.exclude_damaged else "included", damaged=[f"{s}/{q}" for s, q in DAMAGED],
        every=cfg.every, subjects=sorted(set(per_method[MEAN_POSE][1]), key=subject_order),
        actions=[a for a in ACTIONS if a in present], sources=sources, frames=frames, sequences=len(gt_seqs),
        rows=rows, seconds=time.perf_counter() - t0, triangulated=triangulated, weighted=weighted, fused=fused)


def _counted(cfg: LiftEvalConfig, subject: str, sequence: str, frames: np.ndarray) -> np.ndarray:
    """(N,) bool: the frames of a sequence Table II counts (index a multiple of cfg.every; none of a sequence
    VideoPose3D's data leaves out, nor of a damaged sequence when cfg.exclude_damaged)."""
    return (frames % cfg.every == 0) & counted_sequence(subject, sequence, cfg.exclude_damaged)


def _add(per_method: dict, method: str, action: str, subject: str, errs: dict[str, np.ndarray]) -> None:
    """Append one sequence's counted per-frame errors (metric -> (n,) mm) to `method`'s (actions, subjects,
    metric -> arrays) in per_method."""
    n = len(next(iter(errs.values())))
    act, subj, acc = per_method.setdefault(method, ([], [], {}))
    for m, e in errs.items():
        acc.setdefault(m, []).append(e)
    act += [action] * n
    subj += [subject] * n


def _triangulation_rows(cfg: LiftEvalConfig, data: str, subjects, sources: list[str], per_method: dict
                        ) -> tuple[list[str], list[str]]:
    """Fill per_method with the triangulation rows of every source (see the module doc); returns their method
    names in table order and the sources whose confidences weighed the views."""
    from h36m.pipelines.predict.triangulate import load_views

    methods, weighted = [], []
    for source in sources:
        views, _ = load_views(data, subjects, source)
        if source != "gt" and any(mv.confidence is not None for mv in views):
            weighted.append(source)
        plan = [(4, False)] if source == "gt" else [(4, False), (3, False), (2, False), (4, True)]
        for n, robust in plan:
            name = triangulated_name(source, n, robust)
            for mv in views:
                keep = _counted(cfg, mv.subject, mv.sequence, mv.frames)
                if keep.any() and len(mv.cameras) >= n:
                    _add(per_method, name, mv.action, mv.subject,
                         {m: e[keep] for m, e in triangulation_errors(mv, n, robust).items()})
            if name in per_method:
                methods.append(name)
    return methods, weighted


def _fusion_rows(cfg: LiftEvalConfig, data: str, subjects, sources: list[str], lifted: dict, per_method: dict
                 ) -> list[str]:
    """Fill per_method with the lift-then-fuse row of every source from `lifted` ((source, subject, sequence,
    camera) -> (N, 17, 3) lifted camera mm); returns their method names. A sequence counts where the source has 4
    views of it, lifted on the same frames."""
    from h36m.h36m_tools.triangulate import fuse_lifted
    from h36m.pipelines.predict.triangulate import load_views

    methods = []
    for source in sources:
        name = fused_name(source)
        views, _ = load_views(data, subjects, source)
        for mv in views:
            poses = [lifted.get((source, mv.subject, mv.sequence, c.id)) for c in mv.cameras]
            keep = _counted(cfg, mv.subject, mv.sequence, mv.frames)
            if len(poses) < 4 or any(p is None or len(p) != len(mv.frames) for p in poses) or not keep.any():
                continue
            R = np.stack([c.extrinsics.R for c in mv.cameras])
            world = fuse_lifted(np.stack(poses), R, mv.confidence)[keep]
            gt = (mv.world - mv.world[:, :1])[keep]
            _add(per_method, name, mv.action, mv.subject,
                 {"MPJPE": M.mpjpe_frames(world, gt), "P-MPJPE": M.p_mpjpe_frames(world, gt)})
        if name in per_method:
            methods.append(name)
    return methods


__all__ = ["LiftEvalConfig", "LiftReport", "evaluate_lift", "method_name", "fused_name", "triangulated_name",
           "triangulation_errors", "TABLE2_METRICS", "ABS_MPJPE", "MEAN_POSE"]
