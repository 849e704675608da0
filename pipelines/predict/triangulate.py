"""`h36m triangulate`: the 2-D joints of every camera of a sequence -> world joints in mm, with the extracted dataset's
cameras (h36m_tools.triangulate for the maths).

    from h36m.pipelines.predict.triangulate import TriangulateConfig, triangulate
    result = triangulate(TriangulateConfig(predictions="pred.npz", data="EXTRACTED", out="world.npz"))

Input: a VideoPose3D 2-D file (`h36m predict`'s, or anyone's detections with cameras in CAMERA_IDS order) in each
camera's nominal pixel frame (h36m_tools.cameras.nominal_frame), with its `confidence_2d` where present (the views'
weights; else every view weighs 1), and an extracted dataset whose sequences give the cameras (taken to their nominal
frame, and each subject's extrinsics) and the ground-truth world joints the result is compared with.
Output (atomically; h36m_tools.npz reads it safely):
    triangulated_3d[subject][action]   (N, 17, 3) float32 world mm, frame i = row i of the 2-D file (NaN: fewer than
                                       two views usable)
    views_used[subject][action]        (N, 17) uint8: the views the point was triangulated from
    metadata                           {'units': 'mm', 'coordinates': 'world', 'num_joints': 17, 'method',
                                        'weighted', 'cameras': CAMERA_IDS, 'source'}
Not VideoPose3D's data_3d_h36m layout on purpose: that is 32 joints in metres under `positions_3d`.

`load_views` (one MultiView per sequence: cameras, 2-D of every view, confidences, world ground truth) also feeds the
triangulation rows of Table II (evaluate.table2).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from h36m.h36m_tools.cameras import CAMERA_IDS, Camera, nominal_camera
from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import SUBJECTS, sequence_key
from h36m.h36m_tools.triangulate import triangulate_dlt, triangulate_robust
from h36m.pipelines.interchange.npzfile import vp3d_action, write_npz

METHODS = ("robust", "dlt")


@dataclass
class MultiView:
    """One sequence seen by V cameras (N frames): what triangulation needs and what it is checked against."""
    subject: str
    sequence: str               # raw name, 'Directions 1'
    action: str                 # canonical action
    cameras: list[Camera]       # V cameras, intrinsics at their nominal frame (the frame of `points`)
    frames: np.ndarray          # (N,) source frame indices
    points: np.ndarray          # (V, N, 17, 2) px of each camera's nominal frame (h36m_tools.cameras.nominal_frame)
    confidence: Optional[np.ndarray]   # (V, N, 17) in [0, 1], or None (every view weighs 1)
    world: np.ndarray           # (N, 17, 3) ground-truth world joints, mm

    @property
    def key(self) -> str:
        return sequence_key(self.subject, self.sequence)


def load_views(extracted: str | os.PathLike, subjects=None, keypoints: str = "gt", every_frame: bool = False
               ) -> tuple[list[MultiView], list[str]]:
    """Every sequence of `subjects` (None: those of the 2-D file, or every subject for 'gt') in an extracted dataset
    with the 2-D of `keypoints` ('gt': the dataset's own ground truth; or a VideoPose3D 2-D file cut to the dataset's
    frames, or with `every_frame` all of the file's frames, the world ground truth then NaN where the dataset has no
    row), and the keys of the sequences the file lacks. Views a file lacks are left out of that sequence. Raises
    H36MError naming the file on a bad layout."""
    from h36m.h36m_tools.npz import keypoints_2d
    from h36m.pipelines.interchange.npzfile import camera_keypoints
    from h36m.pipelines.train.sequences import extracted_sequences

    pos = conf = None
    if keypoints != "gt":
        pos, _, conf = keypoints_2d(keypoints)
    if subjects is None:
        subjects = sorted(pos) if pos is not None else SUBJECTS
    out, missing = [], []
    for meta, a in extracted_sequences(extracted, subjects):
        cams, scales = zip(*(nominal_camera(Camera.from_dict(p)) for p in meta.camera_params))
        frames = a.frame.astype(np.int64)
        world = a.pose3d.astype(np.float64)
        if pos is None:
            out.append(MultiView(meta.subject, meta.sequence, meta.action, list(cams), frames,
                                 a.pose2d.transpose(1, 0, 2, 3).astype(np.float64)
                                 * np.asarray(scales)[:, None, None, None], None, world))
            continue
        found = [camera_keypoints(pos, keypoints, meta.subject, meta.sequence, c, frames) for c in meta.cameras]
        keep = [v for v, arr in enumerate(found) if arr is not None]
        if len(keep) < 2:
            missing.append(meta.key)
            continue
        arrays = [found[v] for v in keep]
        if every_frame:
            n = min(len(x) for x in arrays)
            rows = np.arange(n)
            full = np.full((n, 17, 3), np.nan)
            full[frames[frames < n]] = world[frames < n]
            world, frames = full, rows
        points = np.stack([x[frames] for x in arrays])
        file_conf = (conf or {}).get(meta.subject, {}).get(vp3d_action(meta.sequence))
        c = None
        if file_conf is not None:
            c = np.stack([np.asarray(file_conf[CAMERA_IDS.index(meta.cameras[v])], np.float64)[frames]
                          for v in keep])
        out.append(MultiView(meta.subject, meta.sequence, meta.action, [cams[v] for v in keep], frames, points, c,
                             world))
    if not out and missing:
        raise H36MError(keypoints, f"gives no sequence of {', '.join(subjects)} seen by two or more cameras "
                                   f"({len(missing)} sequences of the dataset looked for): nothing to triangulate")
    if not out:
        raise H36MError(extracted, f"no sequences of {', '.join(subjects)}")
    return out, missing


def triangulate_views(mv: MultiView, views: list[int] | None = None, method: str = "robust",
                      weighted: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """World joints of a MultiView from the views `views` (indices into mv.cameras; None: all): (N, 17, 3) mm and
    (N, 17) the number of views used. `method`: robust (h36m_tools.triangulate.triangulate_robust) or dlt (the
    weighted linear solution); `weighted`: the confidences weigh the views (where the MultiView has them)."""
    views = list(range(len(mv.cameras))) if views is None else list(views)
    pts = mv.points[views]
    w = mv.confidence[views] if (weighted and mv.confidence is not None) else None
    cams = [mv.cameras[v] for v in views]
    if method == "robust":
        world, inliers = triangulate_robust(pts, cams, w)
        return world, inliers.sum(0)
    if method == "dlt":
        world = triangulate_dlt(pts, cams, w)
        used = (np.isfinite(pts).all(-1) & ((w > 0) if w is not None else True)).sum(0)
        return world, used
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


@dataclass
class TriangulateConfig:
    """Options of `h36m triangulate`."""
    predictions: str | os.PathLike          # VideoPose3D 2-D file (h36m predict's)
    data: str | os.PathLike                 # extracted dataset: the cameras (and the world ground truth)
    out: str | os.PathLike                  # the .npz to write
    subjects: str | None = None             # comma-separated; default: every subject of the 2-D file
    method: str = "robust"                  # METHODS
    weighted: bool = True                   # weigh views by the file's confidence_2d (where it has one)


@dataclass
class TriangulateResult:
    out: Path
    sequences: int
    frames: int
    weighted: bool                          # confidences were used
    mpjpe_abs: float                        # mean error against the dataset's world joints, mm (no alignment)
    mpjpe: float                            # the same after aligning the root joints, mm
    skipped: list[str] = field(default_factory=list)


def triangulate(cfg: TriangulateConfig, on_progress: Optional[Callable[[int, int], None]] = None
                ) -> TriangulateResult:
    """Triangulate every frame of every sequence of the 2-D file the dataset has cameras for; write cfg.out
    atomically; `on_progress(sequences done, total)`."""
    from h36m.h36m_tools.names import parse_subjects

    from h36m.pipelines.files import refuse_replacing

    if cfg.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    refuse_replacing(cfg.out, cfg.predictions, cfg.data)
    subjects = parse_subjects(cfg.subjects) if cfg.subjects else None       # None: the 2-D file's subjects
    views, skipped = load_views(cfg.data, subjects, str(cfg.predictions), every_frame=True)
    conf = any(mv.confidence is not None for mv in views)
    tri: dict[str, dict[str, np.ndarray]] = {}
    used: dict[str, dict[str, np.ndarray]] = {}
    errs, errs_root = [], []
    for i, mv in enumerate(views):
        world, n = triangulate_views(mv, method=cfg.method, weighted=cfg.weighted)
        tri.setdefault(mv.subject, {})[vp3d_action(mv.sequence)] = world.astype(np.float32)
        used.setdefault(mv.subject, {})[vp3d_action(mv.sequence)] = n.astype(np.uint8)
        ok = np.isfinite(mv.world).all((-1, -2)) & np.isfinite(world).all((-1, -2))
        if ok.any():
            errs.append(np.linalg.norm(world[ok] - mv.world[ok], axis=-1).ravel())
            rel = (world[ok] - world[ok][:, :1]) - (mv.world[ok] - mv.world[ok][:, :1])
            errs_root.append(np.linalg.norm(rel, axis=-1).ravel())
        if on_progress is not None:
            on_progress(i + 1, len(views))
    meta = {"units": "mm", "coordinates": "world", "num_joints": 17, "method": cfg.method,
            "weighted": bool(cfg.weighted and conf), "cameras": list(CAMERA_IDS),
            "source": Path(cfg.predictions).name}
    write_npz(cfg.out, triangulated_3d=tri, views_used=used, metadata=meta)
    mean = (lambda xs: float(np.concatenate(xs).mean()) if xs else float("nan"))
    return TriangulateResult(Path(cfg.out), len(views), sum(len(mv.frames) for mv in views), meta["weighted"],
                             mean(errs), mean(errs_root), skipped)


__all__ = ["MultiView", "load_views", "triangulate_views", "TriangulateConfig", "TriangulateResult", "triangulate",
           "METHODS"]
