"""`h36m export --format motionbert`: the pickle MotionBERT's `DataReaderH36M` reads
(`h36m_sh_conf_cam_source_final.pkl`; MotionAGFormer and others read the same file through the same class).

    from h36m.pipelines.interchange.motionbert import MotionBertConfig, export_motionbert
    result = export_motionbert(MotionBertConfig(src="H36M", out="data/motion3d"))

The file is one dict {'train': {...}, 'test': {...}} (train S1, S5, S6, S7, S8; test S9, S11). Each split holds one
row per (sequence, camera, frame), a camera's frames contiguous, sequences and cameras in `source` order:
    joint_2d           (N, 17, 2) float32  2-D joints in the camera's nominal pixel frame (1000x1002 / 1000x1000):
                                           the projection of the camera-frame 3-D with the camera's own intrinsics
                                           (H36M's distortion), or a given VideoPose3D 2-D file's joints
    confidence         (N, 17) float32     that file's confidence_2d, else 1
    joint3d_image      (N, 17, 3) float32  the 3-D label in pixel units: see `image_frame_pose`
    2.5d_factor        (N,) float32        mm per pixel unit of joint3d_image: see `image_frame_pose`
    joints_2.5d_image  (N, 17, 3) float32  joint3d_image x 2.5d_factor, mm (its root-relative pose is the
                                           camera-frame root-relative pose)
    camera_name        list of N str       camera id, e.g. '54138969'
    action             list of N str       canonical action, e.g. 'Photo' (the columns of MotionBERT's table)
    source             list of N str       's_09_act_05_subact_02_ca_01': subject, H36M action id, subaction id,
                                           camera number 1-4 (MotionBERT splits clips where it changes and matches
                                           its block list of damaged sequences on it without '_ca_XX')
Strings are plain lists and arrays plain float32 numpy arrays, so `pickle.load` (MotionBERT's `read_pkl`) needs
nothing from this project. docs/interchange.md says what is followed and where it differs.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from h36m.h36m_tools.cameras import CAMERA_IDS, Intrinsics, project
from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import TEST_SUBJECTS, TRAIN_SUBJECTS, canonical_action, sequence_table, subject_order
from h36m.pipelines.files import atomic_path
from h36m.pipelines.interchange.npzfile import extracted_items, loaded_sequences

FILE_MOTIONBERT = "h36m_sh_conf_cam_source_final.pkl"
SPLITS = {"train": TRAIN_SUBJECTS, "test": TEST_SUBJECTS}


@dataclass
class MotionBertConfig:
    """Options of `h36m export --format motionbert`."""
    src: str | os.PathLike                   # a raw release or an extracted dataset
    out: str | os.PathLike                   # folder receiving FILE_MOTIONBERT
    keypoints: str | None = None             # a VideoPose3D 2-D file (nominal pixels) instead of ground truth
    subjects: tuple[str, ...] | None = None  # default: every train and test subject present


@dataclass
class MotionBertResult:
    file: Path
    source: str                              # 'release' or 'extracted'
    rows: dict[str, int]                     # split -> rows (camera frames)
    sequences: int
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class CameraSequence:
    """One sequence seen by its cameras: camera-frame 3-D and each camera's nominal-frame intrinsics."""
    subject: str
    sequence: str                            # raw base name, 'Directions 1'
    cameras: tuple[str, ...]                 # camera ids, CAMERA_IDS order
    intrinsics: tuple[Intrinsics, ...]       # per camera, in its nominal pixel frame
    cam3d: np.ndarray                        # (V, N, 17, 3) camera-frame mm
    frames: np.ndarray                       # (N,) source frame index of each row

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.sequence.replace(' ', '_')}"


def image_frame_pose(cam3d: np.ndarray, k: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """(N, 17, 3) camera-frame mm -> MotionBERT's `joint3d_image` (N, 17, 3) and `2.5d_factor` (N,).

    factor = Z_root / fx (mm per pixel at the root's depth); joint3d_image = the root's projected pixel (x, y; z 0)
    + (joint - root) / factor. So joint3d_image x factor, root-relative, is the camera-frame root-relative pose
    exactly, and the label's root lies on the 2-D input's root. It is the scaled-orthographic image pose about the
    root (LCN's per-joint perspective x, y would put the ground truth 10-30 mm from the camera-frame pose).
    """
    cam3d = np.asarray(cam3d, np.float64)
    root = cam3d[:, :1]
    if not np.all(root[..., 2] > 0):
        raise ValueError("a root joint at or behind the camera (Z <= 0)")
    factor = root[:, 0, 2] / k.fx
    img = (cam3d - root) / factor[:, None, None]
    img[..., :2] += project(root, k)
    return img, factor


def export_motionbert(cfg: MotionBertConfig, on_progress: Optional[Callable[[str], None]] = None
                      ) -> MotionBertResult:
    """Write FILE_MOTIONBERT (atomically) into cfg.out; `on_progress` receives each sequence key when done."""
    from h36m.h36m_tools.npz import keypoints_2d

    src = Path(cfg.src)
    kind = "extracted" if (src / "manifest.json").is_file() else "release"
    kp = conf = None
    if cfg.keypoints is not None:
        kp, _, conf = keypoints_2d(cfg.keypoints)
    subjects = tuple(cfg.subjects) if cfg.subjects else TRAIN_SUBJECTS + TEST_SUBJECTS
    parts: dict[str, list[dict]] = {s: [] for s in SPLITS}
    skipped: dict[str, str] = {}
    done = 0
    for seq in camera_sequences(src, subjects, skipped):
        split = "train" if seq.subject in TRAIN_SUBJECTS else "test" if seq.subject in TEST_SUBJECTS else None
        entry = sequence_table().get(seq.subject, {}).get(seq.sequence)
        if split is None or entry is None:
            skipped[seq.key] = "not a sequence of the standard protocol's subjects" if split is None else \
                "not in H36M's sequence table (no action and subaction id)"
            continue
        try:
            rows = [_camera_rows(seq, v, entry, kp, conf, cfg.keypoints) for v in range(len(seq.cameras))]
        except ValueError as e:
            skipped[seq.key] = str(e)
            continue
        parts[split].extend(rows)
        done += 1
        if on_progress is not None:
            on_progress(seq.key)
    if not done:
        raise H36MError(src, "no sequence to export" + (f" ({'; '.join(sorted(set(skipped.values())))})"
                                                        if skipped else ""))
    data = {split: _concat(rows) for split, rows in parts.items()}
    out = Path(cfg.out) / FILE_MOTIONBERT
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(data, fh, protocol=4)
    return MotionBertResult(out, kind, {s: len(d["source"]) for s, d in data.items()}, done, skipped)


def _camera_rows(seq: CameraSequence, v: int, entry: dict, kp, conf, kp_path) -> dict:
    """The rows of one camera of one sequence (a dict of the file's members)."""
    from h36m.pipelines.interchange.npzfile import camera_keypoints

    cam, k = seq.cameras[v], seq.intrinsics[v]
    cam3d = seq.cam3d[v]
    n = len(cam3d)
    joint3d_image, factor = image_frame_pose(cam3d, k)
    confidence = np.ones((n, 17), np.float32)
    if kp is None:
        joint_2d = project(cam3d, k)
    else:
        arr = camera_keypoints(kp, kp_path, seq.subject, seq.sequence, cam, seq.frames)
        if arr is None:
            raise ValueError(f"camera {cam} not in {kp_path}")
        joint_2d = arr[seq.frames]
        if conf is not None:
            from h36m.pipelines.interchange.npzfile import vp3d_action

            c = conf.get(seq.subject, {}).get(vp3d_action(seq.sequence))
            if c is not None and CAMERA_IDS.index(cam) < len(c):
                confidence = np.asarray(c[CAMERA_IDS.index(cam)], np.float32)[seq.frames]
    source = (f"s_{int(seq.subject[1:]):02d}_act_{entry['action_id']:02d}_subact_{entry['subaction_id']:02d}"
              f"_ca_{CAMERA_IDS.index(cam) + 1:02d}")
    return {"joint_2d": joint_2d.astype(np.float32), "confidence": confidence,
            "joint3d_image": joint3d_image.astype(np.float32), "2.5d_factor": factor.astype(np.float32),
            "joints_2.5d_image": (joint3d_image * factor[:, None, None]).astype(np.float32),
            "camera_name": [cam] * n, "action": [canonical_action(seq.sequence)] * n, "source": [source] * n}


def _concat(rows: list[dict]) -> dict:
    rows = sorted(rows, key=lambda r: r["source"][0])
    arrays = ("joint_2d", "confidence", "joint3d_image", "2.5d_factor", "joints_2.5d_image")
    shapes = {"joint_2d": (0, 17, 2), "confidence": (0, 17), "joint3d_image": (0, 17, 3), "2.5d_factor": (0,),
              "joints_2.5d_image": (0, 17, 3)}
    out = {k: np.concatenate([r[k] for r in rows]) if rows else np.zeros(shapes[k], np.float32) for k in arrays}
    for k in ("camera_name", "action", "source"):
        out[k] = [x for r in rows for x in r[k]]
    return out


def camera_sequences(src: Path, subjects, skipped: dict[str, str]) -> Iterator[CameraSequence]:
    """Every sequence of `subjects` with all four cameras in a raw release or an extracted dataset, as camera-frame
    3-D; the others are named in `skipped` (S11 `Directions` is left out, as VideoPose3D and `export` do)."""
    if (src / "manifest.json").is_file():
        gen = _from_extracted(src, subjects)
    else:
        gen = _from_release(src, subjects)
    for _, _, _, seq in loaded_sequences(gen, skipped):
        yield seq


def _from_release(root: Path, subjects):
    from h36m.h36m_tools import cdf
    from h36m.h36m_tools.cameras import bundled, world_to_camera
    from h36m.h36m_tools.names import discover
    from h36m.h36m_tools.skeleton import to17

    cams = bundled()

    def loader(f):
        def load():
            world = to17(cdf.read_pose(f.d3, 3))                                   # (N, 17, 3) mm
            views = [cams.camera(f.subject, c) for c in CAMERA_IDS]
            cam3d = np.stack([world_to_camera(world, c.extrinsics.R, c.extrinsics.t) for c in views])
            return CameraSequence(f.subject, f.name, CAMERA_IDS, tuple(c.intrinsics for c in views), cam3d,
                                  np.arange(len(world)))
        return load

    found = sorted((f for f in discover(root, subjects) if f.d3 is not None),
                   key=lambda f: (subject_order(f.subject), f.name))
    return [(f.key, f.subject, f.name, loader(f)) for f in found]


def _from_extracted(root: Path, subjects):
    from h36m.h36m_tools.cameras import Camera, nominal_camera

    def build(meta, a):
        return CameraSequence(meta.subject, meta.sequence, CAMERA_IDS,
                              tuple(nominal_camera(Camera.from_dict(p))[0].intrinsics for p in meta.camera_params),
                              np.transpose(a.pose3d_cam, (1, 0, 2, 3)).astype(np.float64), a.frame.astype(np.int64))

    return extracted_items(root, subjects, build)
