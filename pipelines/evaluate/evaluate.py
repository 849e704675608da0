"""`h36m evaluate`: a trained run on test shards -> 2-D and 3-D metrics per canonical action, and a report.

    from h36m.pipelines.evaluate.evaluate import EvalConfig, evaluate
    report = evaluate(EvalConfig(run="runs/lift", shards="SH/test-*.tar"))

What is measured (h36m_tools.metrics for the definitions), on every (view, frame) of the test clips (S9, S11;
all cameras; frames covered by several overlapping clips counted once; padded frames never):
  * rows ("methods") of the 3-D tables, MPJPE (protocol #1), P-MPJPE (#2), N-MPJPE and MPJVE, in mm:
      Mean pose      the training set's mean root-relative 3-D pose (camera frame), every frame (baseline)
      PoseFormer, GT 2-D  the run's lifter on the ground-truth 2-D joints of the crops
      Ours           the run's 2-D network, then its lifter on the predicted 2-D joints
    (a run of the 2d stage trains no lifter: its report has the mean-pose rows only; Table II comes from a lift run,
    evaluate.table2)
    per canonical action (frames pooled over subactions and subjects), "Avg" = the unweighted mean of the action
    errors (the published tables' convention), "All" = the mean over all frames, and per subject.
  * 2-D, the paper's Table I: OKS AP and AR (pycocotools; the person area from the tight box of the 17 true
    joints; sigmas h36m_tools.metrics.OKS_SIGMAS17; each detection's score the mean of its joints' confidences
    (model.head.confidence) where the network has a confidence head, else 1), PCK@0.05/0.1/0.2 (threshold x the
    crop side), MSE: the mean squared coordinate error in the network's input crop pixels (224 for `paper`), and the
    mean error and MSE in full-frame pixels; for the network and for the mean 2-D pose of the training set placed in
    each crop (baseline). With them, the run's training time per epoch (`train.loop.read_metrics(run, "epoch")`).
  * `every` N: only frames whose source index is a multiple of N count (the network still sees whole clips); shards
    of a dataset extracted with `--every S` hold only multiples of S, so N must be a multiple of S;
    MPJVE uses the velocity from the previous frame to each counted frame.
  * `exclude_damaged`: drop the sequences of h36m_tools.names.DAMAGED; the report names the policy either way.
    S11 `Directions` never counts (`counted_sequence`), as in Table II.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from h36m.h36m_tools import metrics as M
from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import ACTIONS, DAMAGED, subject_order
from h36m.pipelines.interchange.npzfile import VP3D_DROPPED

#: The one naming of the rows of every evaluation (these tables and Table II, evaluate.table2).
MEAN_POSE = "Mean pose"
OURS = "Ours"


def method_name(source: str) -> str:
    """The row of the run's lifter on a 2-D source: 'PoseFormer, GT 2-D' for ground truth, 'PoseFormer, <file
    name>' for a VideoPose3D 2-D file."""
    return "PoseFormer, GT 2-D" if source == "gt" else f"PoseFormer, {Path(source).name}"


METHODS = (MEAN_POSE, method_name("gt"), OURS)
METRICS_3D = ("MPJPE", "P-MPJPE", "N-MPJPE", "MPJVE")
PCK_THRESHOLDS = (0.05, 0.1, 0.2)
CURVE_THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(31))


@dataclass
class EvalConfig:
    """Options of `h36m evaluate`."""
    run: str                               # run folder (or checkpoint file)
    shards: str | list[str]                # test shard URLs
    out: str | None = None                 # report folder (default RUN/eval)
    exclude_damaged: bool = False
    every: int = 1
    batch_size: int = 2
    workers: int = 2
    device: str = "auto"
    plots: bool = True
    clip_plots: int = 3                    # clips drawn with predicted vs true skeletons
    coco: bool = True                      # OKS AP/AR through pycocotools


@dataclass
class EvalProgress:
    """What `on_progress` receives: clips done so far (and the total when the shard index says)."""
    clips: int
    total: int | None
    frames: int


@dataclass
class ViewClip:
    """One view of one test clip, real (unpadded) frames only; 2-D in full-frame px, 3-D root-relative camera mm."""
    subject: str
    sequence: str
    action: str
    camera: str
    frames: np.ndarray          # (T,) source frame indices
    gt2d: np.ndarray            # (T, 17, 2)
    pred2d: np.ndarray          # (T, 17, 2)
    base2d: np.ndarray          # (T, 17, 2) the mean 2-D pose placed in the crop
    box: np.ndarray             # (T, 4) crop box x0, y0, x1, y1
    gt3d: np.ndarray            # (T, 17, 3)
    pred3d: np.ndarray          # (T, 17, 3) lifter on predicted 2-D
    pred3d_gt2d: np.ndarray     # (T, 17, 3) lifter on ground-truth 2-D
    base3d: np.ndarray          # (T, 17, 3) mean pose
    counted: np.ndarray         # (T,) bool: frame counted (not seen before, sampled by `every`)
    stride: int = 1             # the shards hold every stride-th source frame (`h36m extract --every`)
    pose3d_source: str = "world"   # where the ground truth's 3-D came from (extract.dataset.SequenceMeta)
    conf2d: Optional[np.ndarray] = None   # (T, 17) the network's per-joint confidence in (0, 1), None without one


@dataclass
class Row3D:
    """One row of a Table-II-like table: one method, one metric (mm; MPJVE in mm/frame)."""
    method: str
    metric: str
    actions: dict[str, float]   # canonical action -> error (NaN where the test set lacks the action)
    avg: float                  # unweighted mean over the actions present
    all_frames: float           # mean over all counted frames
    subjects: dict[str, float]  # subject -> mean over its frames


@dataclass
class Row2D:
    """Table I's metrics for one method (see the module doc)."""
    method: str
    pck: dict[str, float]       # 'PCK@0.05' ... -> share of joints in [0, 1], threshold x the crop side
    mean_px: float              # mean joint error, full-frame px
    mse_px2: float              # mean squared coordinate error, full-frame px^2
    ap: float                   # OKS AP, area from the tight box of the true joints
    ar: float
    mean_input_px: float = math.nan      # mean joint error in network-input px
    mse_input_px2: float = math.nan      # mean squared coordinate error in network-input px^2 (the paper's MSE)
    curve: list[float] = field(default_factory=list)   # PCK at CURVE_THRESHOLDS


@dataclass
class ClipPlot:
    """What the clip figures draw: the middle frame of a clip, per view."""
    key: str
    images: np.ndarray          # (V, H, W, 3) uint8 crops
    gt2d: np.ndarray            # (V, 17, 2) crop px
    pred2d: np.ndarray          # (V, 17, 2) crop px
    gt3d: np.ndarray            # (V, 17, 3) mm
    pred3d: np.ndarray | None   # (V, 17, 3) mm; None for a 2d-stage run (its lifter is untrained)


@dataclass
class EvalReport:
    run: str
    stage: str
    shards: list[str]
    damaged_policy: str         # 'included' or 'excluded'
    damaged: list[str]          # the DAMAGED sequences, 'S9/Greeting' ...
    every: int
    frames: int                 # counted (view, frame) pairs
    clips: int
    subjects: list[str]
    actions: list[str]          # actions present
    rows3d: list[Row3D]
    rows2d: list[Row2D]
    oks_sigmas: list[float]
    seconds: float
    model: str = ""             # the run's model preset (its config's name)
    input_size: int = 0         # the network's input crop side, px (Table I's MSE is in these pixels)
    clip_frames: int = 0        # frames per test clip (Table III's clip length)
    epoch_time_s: float = math.nan       # the run's training time per epoch (median over its whole epochs)
    epoch_images_per_s: float = math.nan
    train_subjects: list[str] = field(default_factory=list)   # of the training shards, as their index lists them
    plots: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    clip_plots: list[ClipPlot] = field(default_factory=list, repr=False)   # drawn by write_report, not saved
    strides: list[int] = field(default_factory=lambda: [1])     # source-frame strides of the shards' clips
    pose3d_sources: list[str] = field(default_factory=lambda: ["world"])   # 3-D ground truth sources present

    def row(self, method: str, metric: str) -> Row3D:
        return next(r for r in self.rows3d if r.method == method and r.metric == metric)

    @property
    def methods3d(self) -> list[str]:
        """The methods of the 3-D rows, in METHODS order (the mean pose only for a 2d-stage run)."""
        return [m for m in METHODS if any(r.method == m for r in self.rows3d)]


def is_damaged(subject: str, sequence: str) -> bool:
    return (subject, sequence.replace("_", " ")) in DAMAGED


def counted_sequence(subject: str, sequence: str, exclude_damaged: bool) -> bool:
    """Whether every table (I, II, III) counts a sequence: never S11 `Directions`, which VideoPose3D's data and the
    published tables leave out (interchange.npzfile.VP3D_DROPPED), nor a damaged one when `exclude_damaged`."""
    if (subject, sequence.replace("_", " ")) in VP3D_DROPPED:
        return False
    return not (exclude_damaged and is_damaged(subject, sequence))


def evaluate(cfg: EvalConfig, on_progress: Optional[Callable[[EvalProgress], None]] = None,
             loaded: tuple | None = None) -> EvalReport:
    """Run the network of cfg.run over the test shards and compute every metric; writes nothing (see
    evaluate.report.write_report). `loaded`: (network, checkpoint) of the run already read (evaluate.run reads a run
    once). Raises H36MError for a missing / bad checkpoint or unreadable shards."""
    if cfg.every < 1:
        raise ValueError(f"--every must be >= 1, got {cfg.every}")
    t0 = time.perf_counter()
    if loaded is None:
        from h36m.pipelines.device import torch_device
        from h36m.pipelines.train.checkpoint import load_network

        loaded = load_network(cfg.run, torch_device(cfg.device))
    views, plots, stage, urls, info = collect(cfg, on_progress, loaded)
    if not any(v.counted.any() for v in views):
        raise H36MError(urls[0] if urls else cfg.shards, "no test frames to evaluate (empty shards, or every "
                                                         "sequence excluded)")
    rows3d = table3d(views, METHODS[:1] if stage in ("2d", "triangulate") else METHODS)
    rows2d = table2d(views, coco=cfg.coco, input_size=info["input_size"])
    counted = [v for v in views if v.counted.any()]
    report = EvalReport(
        run=str(cfg.run), stage=stage, shards=urls, damaged_policy="excluded" if cfg.exclude_damaged else "included",
        damaged=[f"{s}/{q}" for s, q in DAMAGED], every=cfg.every, frames=int(sum(v.counted.sum() for v in views)),
        clips=len({(v.subject, v.sequence, int(v.frames[0])) for v in counted}),
        subjects=sorted({v.subject for v in counted}, key=subject_order),
        actions=[a for a in ACTIONS if any(v.action == a for v in counted)],
        rows3d=rows3d, rows2d=rows2d, oks_sigmas=[float(s) for s in M.OKS_SIGMAS17],
        seconds=time.perf_counter() - t0, clip_plots=plots, strides=sorted({v.stride for v in counted}),
        pose3d_sources=sorted({v.pose3d_source for v in counted}), **info, **training_time(cfg.run, loaded[1]))
    return report


def training_time(run: str, state: dict) -> dict:
    """The run's time per training epoch from its metrics.jsonl (median over whole epochs; NaN before the first
    finished one) and the subjects of its training shards (from their index, where found); `state` its checkpoint."""
    from h36m.pipelines.shards.urls import expand_urls, index_for, is_local
    from h36m.pipelines.train.loop import read_metrics

    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    epochs = [r for r in read_metrics(folder, "epoch") if r.get("whole")]
    out = {"epoch_time_s": float(np.median([r["epoch_time_s"] for r in epochs])) if epochs else math.nan,
           "epoch_images_per_s": float(np.median([r["images_per_s"] for r in epochs])) if epochs else math.nan,
           "train_subjects": []}
    try:
        shards = state["config"]["train"].get("shards") or []
        urls = expand_urls(shards)
        index = index_for(urls[0]) if urls and is_local(urls[0]) else None
        if index is not None and index.is_file():
            import json

            out["train_subjects"] = list(json.loads(index.read_text()).get("subjects", []))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return out


def collect(cfg: EvalConfig, on_progress, loaded: tuple) -> tuple[list[ViewClip], list[ClipPlot], str, list[str],
                                                                  dict]:
    """Predictions for every view of every test clip by the run's (network, checkpoint) `loaded`: (ViewClips, clips
    to draw, the run's stage, shard URLs, {model, input_size, clip_frames})."""
    import torch

    from h36m.pipelines.loader.loader import LoaderConfig, make_loader
    from h36m.pipelines.shards.urls import expand_urls
    from h36m.model import confidence
    from h36m.pipelines.extract.crop import to_full
    from h36m.pipelines.loader.inputs import network_inputs
    from h36m.pipelines.train.pose_stats import PoseStats

    net, state = loaded
    dev = next(net.parameters()).device
    stats = PoseStats.from_state(state.get("stats"))
    if stats.count == 0:
        raise H36MError(cfg.run, "checkpoint has no training pose statistics (mean-pose baseline)")
    mean2d, mean3d = stats.mean2d, stats.mean3d
    stage = state["config"]["train"].get("stage", "?")
    try:
        loader = make_loader(LoaderConfig(urls=cfg.shards, batch_size=cfg.batch_size, workers=cfg.workers, shuffle=0,
                                          shuffle_shards=False, augment=False, rank=0, world_size=1,
                                          equal_batches=False))
    except ValueError as e:
        raise H36MError(cfg.shards if isinstance(cfg.shards, str) else cfg.shards[0], str(e)) from None
    urls = expand_urls(cfg.shards)
    try:
        total = loader.total_samples
    except AttributeError:
        total = None
    seen: set[tuple[str, str, str, int]] = set()
    views: list[ViewClip] = []
    plots: list[ClipPlot] = []
    drawn: set[tuple[str, str]] = set()
    clips, clip_frames = 0, 0
    with torch.no_grad():   # not inference_mode: the loader's shared buffers are updated outside it
        for batch in loader:
            x = network_inputs(batch, net.cfg.spatial, dev)
            crop, mask = x.crop, batch["view_mask"].bool()
            out = net(x.images, x.view_mask, x.view_index)
            pred2d01 = out.joints2d.float()
            conf = None if out.log_scale2d is None else confidence(out.log_scale2d).cpu().numpy().astype(np.float64)
            clip_frames = int(batch["pose2d"].shape[2])
            gt2d01 = batch["pose2d"].float().to(dev) / crop
            scale, offset = (t[x.view_mask] for t in x.to_screen)       # the lifter's one input convention
            p3 = net.lift(pred2d01[x.view_mask] * scale + offset).float().cpu().numpy()
            g3 = net.lift(gt2d01[x.view_mask] * scale + offset).float().cpu().numpy()
            pred2d = pred2d01.cpu().numpy() * crop
            cam = batch["pose3d_cam"].numpy().astype(np.float64)
            gt3d = cam - cam[..., :1, :]
            k = 0
            for b, meta in enumerate(batch["meta"]):
                real = int(meta.get("real_frames", len(meta["frames"])))
                frames = np.asarray(meta["frames"][:real])
                stride = int(meta.get("every", 1))
                if cfg.every % stride:      # source index % every == 0 would keep only multiples of lcm(every, stride)
                    raise ValueError(f"--every {cfg.every}: the shards hold every {stride}-th source frame only "
                                     f"(h36m extract --every {stride}); use a multiple of {stride}")
                keep_clip = counted_sequence(meta["subject"], meta["sequence"], cfg.exclude_damaged)
                nviews = int(mask[b].sum())
                for v in range(nviews):
                    camera = str(meta["cameras"][v])
                    box = batch["box"][b, v, :real].numpy().astype(np.float64)

                    def full(p):  # crop px -> full-frame px
                        return to_full(p[:real], box, crop)

                    counted = np.array([keep_clip and int(f) % cfg.every == 0 and
                                        (meta["subject"], meta["sequence"], camera, int(f)) not in seen
                                        for f in frames])
                    for f, c in zip(frames, counted):
                        if c:
                            seen.add((meta["subject"], meta["sequence"], camera, int(f)))
                    views.append(ViewClip(
                        subject=meta["subject"], sequence=meta["sequence"], action=meta["action"], camera=camera,
                        frames=frames, gt2d=full(batch["pose2d"][b, v].numpy().astype(np.float64)),
                        pred2d=full(pred2d[b, v].astype(np.float64)),
                        base2d=full(np.broadcast_to(mean2d * crop, (real, 17, 2))), box=box,
                        gt3d=gt3d[b, v, :real], pred3d=p3[k + v, :real].astype(np.float64),
                        pred3d_gt2d=g3[k + v, :real].astype(np.float64),
                        base3d=np.broadcast_to(mean3d, (real, 17, 3)).astype(np.float64), counted=counted,
                        stride=stride, pose3d_source=str(meta.get("pose3d_source", "world")),
                        conf2d=None if conf is None else conf[b, v, :real]))
                k += nviews
                clips += 1
                if keep_clip and len(plots) < cfg.clip_plots and (meta["subject"], meta["action"]) not in drawn:
                    drawn.add((meta["subject"], meta["action"]))
                    t = real // 2
                    base = k - nviews
                    plots.append(ClipPlot(
                        key=batch["key"][b],
                        images=batch["images"][b, :nviews, t].permute(0, 2, 3, 1).numpy().copy(),
                        gt2d=batch["pose2d"][b, :nviews, t].numpy().copy(), pred2d=pred2d[b, :nviews, t].copy(),
                        gt3d=gt3d[b, :nviews, t].copy(),
                        pred3d=None if stage == "2d" else p3[base:base + nviews, t].copy()))
            if on_progress is not None:
                on_progress(EvalProgress(clips, total, int(sum(v.counted.sum() for v in views))))
    info = {"model": net.cfg.name, "input_size": int(net.cfg.spatial.img_size), "clip_frames": clip_frames}
    return views, plots, stage, urls, info


# ----- tables ---------------------------------------------------------------------------------------------------

def _frame_errors(views: list[ViewClip], pred_attr: str):
    """Per counted frame: (action, subject, mpjpe, p_mpjpe, n_mpjpe) arrays, and MPJVE samples with labels."""
    act, subj, e1, e2, e3 = [], [], [], [], []
    vact, vsubj, ve = [], [], []
    for v in views:
        if not v.counted.any():
            continue
        pred, gt = getattr(v, pred_attr), v.gt3d
        c = v.counted
        e1.append(M.mpjpe_frames(pred[c], gt[c]))
        e2.append(M.p_mpjpe_frames(pred[c], gt[c]))
        e3.append(M.n_mpjpe_frames(pred[c], gt[c]))
        act += [v.action] * int(c.sum())
        subj += [v.subject] * int(c.sum())
        if len(gt) > 1:
            vel = M.mpjve_frames(pred, gt)          # sample t-1 -> t, for t = 1..T-1
            vc = c[1:]
            ve.append(vel[vc])
            vact += [v.action] * int(vc.sum())
            vsubj += [v.subject] * int(vc.sum())
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))
    return (np.array(act), np.array(subj), {"MPJPE": cat(e1), "P-MPJPE": cat(e2), "N-MPJPE": cat(e3)},
            (np.array(vact), np.array(vsubj), cat(ve)))


def _row(method: str, metric: str, actions: np.ndarray, subjects: np.ndarray, err: np.ndarray) -> Row3D:
    per_action = {a: float(err[actions == a].mean()) if (actions == a).any() else math.nan for a in ACTIONS}
    present = [x for x in per_action.values() if not math.isnan(x)]
    subj = {s: float(err[subjects == s].mean()) for s in sorted(set(subjects.tolist()), key=subject_order)}
    return Row3D(method, metric, per_action, float(np.mean(present)) if present else math.nan,
                 float(err.mean()) if err.size else math.nan, subj)


def table3d(views: list[ViewClip], methods=METHODS) -> list[Row3D]:
    """Rows of every 3-D metric for each of `methods` (METHODS order within each metric)."""
    rows = []
    for method, attr in zip(METHODS, ("base3d", "pred3d_gt2d", "pred3d")):
        if method not in methods:
            continue
        act, subj, errs, (vact, vsubj, ve) = _frame_errors(views, attr)
        for metric in METRICS_3D[:3]:
            rows.append(_row(method, metric, act, subj, errs[metric]))
        rows.append(_row(method, "MPJVE", vact, vsubj, ve))
    order = {m: i for i, m in enumerate(METRICS_3D)}
    return sorted(rows, key=lambda r: (order[r.metric], METHODS.index(r.method)))


def table2d(views: list[ViewClip], coco: bool = True, input_size: int = 0) -> list[Row2D]:
    """Table I's rows for the mean-pose baseline and the network (see the module doc); `input_size`: the network's
    input crop side in px (0: the input-pixel columns are NaN)."""
    counted = [v for v in views if v.counted.any()]
    gt = np.concatenate([v.gt2d[v.counted] for v in counted])
    box = np.concatenate([v.box[v.counted] for v in counted])
    side = M.box_max_side(box)                                   # the crop's side, full-frame px (square boxes)
    to_input = (input_size / side)[:, None, None] if input_size else None
    rows = []
    scored = all(v.conf2d is not None for v in counted)
    for method, attr in ((MEAN_POSE, "base2d"), (OURS, "pred2d")):
        pred = np.concatenate([getattr(v, attr)[v.counted] for v in counted])
        scores = np.concatenate([v.conf2d[v.counted].mean(-1) for v in counted]) \
            if method == OURS and scored else None
        ap, ar = M.oks_ap_ar(pred, gt, M.tight_boxes(gt), scores=scores) if coco else (math.nan, math.nan)
        inp = (M.mean_error_2d(pred * to_input, gt * to_input), M.mse_2d(pred * to_input, gt * to_input)) \
            if to_input is not None else (math.nan, math.nan)
        rows.append(Row2D(method, {f"PCK@{t:g}": M.pck(pred, gt, t, side) for t in PCK_THRESHOLDS},
                          M.mean_error_2d(pred, gt), M.mse_2d(pred, gt), ap, ar, *inp,
                          curve=[M.pck(pred, gt, t, side) for t in CURVE_THRESHOLDS]))
    return rows


def default_out(run: str | Path, out: str | Path | None = None) -> Path:
    """Where a run's report goes: `out` when given, else RUN/eval (beside the checkpoint file when RUN is one); the
    same rule for every stage's report."""
    run = Path(run)
    return Path(out) if out else (run if run.is_dir() else run.parent) / "eval"


__all__ = ["EvalConfig", "EvalReport", "EvalProgress", "Row3D", "Row2D", "ViewClip", "ClipPlot", "evaluate",
           "collect", "table3d", "table2d", "is_damaged", "counted_sequence", "default_out", "METHODS", "METRICS_3D",
           "MEAN_POSE", "OURS", "method_name", "CURVE_THRESHOLDS"]
