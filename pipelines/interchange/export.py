"""`h36m export SRC OUT`: a raw release or an extracted dataset -> VideoPose3D's `data_3d_h36m.npz` and
`data_2d_h36m_gt.npz` (docs/interchange.md states what is followed and where it differs).

    from h36m.pipelines.interchange.export import ExportConfig, export
    result = export(ExportConfig(src="H36M", out="data"))

Every 2-D file holds each camera's nominal pixel frame (h36m_tools.cameras.nominal_frame: 1000x1002 / 1000x1000 for
H36M, whatever the videos' size), the frame VideoPose3D's own projection of the 3-D lands in, and says so in its
`metadata` (interchange.npzfile.metadata_2d).
From a raw release (as VideoPose3D's `prepare_data_h36m.py --from-source-cdf`):
    positions_3d[subject][action]           D3_Positions, (N, 32, 3) float32, world metres (mm / 1000)
    positions_2d[subject][action][cam_idx]  (N, 17, 2) float32 nominal px, cameras in CAMERA_IDS order: the
                                            release's D2_Positions where present (the projection of D3_Positions to
                                            < 0.001 px on the real data), measured in their video's pixels and
                                            scaled to the nominal frame by the video's width (its header; without a
                                            video they are taken as nominal), else D3_Positions projected with the
                                            camera's nominal intrinsics
From an extracted dataset: the same keys over the frames the extraction kept; positions_3d in the 32-joint layout
that VideoPose3D's Human36mDataset indexes (it keeps skeleton.JOINTS17 of the 32), our 17 joints at those indices and
each of the 15 others, which the extracted format does not keep, at its nearest kept ancestor; the 2-D joints
scaled from the extracted videos' pixels to the nominal frame.
Sequences without all 4 cameras, and S11 `Directions` (VideoPose3D drops it), are left out and listed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from h36m.h36m_tools.cameras import CAMERA_IDS
from h36m.h36m_tools.errors import H36MError
from h36m.pipelines.interchange.npzfile import (extracted_items, loaded_sequences, metadata_2d, vp3d_action,
                                               write_npz_files)

FILE_3D = "data_3d_h36m.npz"
FILE_2D = "data_2d_h36m_gt.npz"


@dataclass
class ExportConfig:
    """Options of `h36m export`."""
    src: str | os.PathLike                 # a raw release (S1/MyPoseFeatures/...) or an extracted dataset
    out: str | os.PathLike                 # folder receiving FILE_3D and FILE_2D
    subjects: tuple[str, ...] | None = None


@dataclass
class ExportResult:
    files: list[Path]
    source: str                             # 'release' or 'extracted'
    sequences: int
    frames: int
    skipped: dict[str, str] = field(default_factory=dict)   # 'S11/Directions' -> why


def export(cfg: ExportConfig, on_progress: Optional[Callable[[str], None]] = None) -> ExportResult:
    """Write both files into cfg.out as one unit (`write_npz_files`); `on_progress` receives each sequence key when
    done."""
    src = Path(cfg.src)
    if (src / "manifest.json").is_file():
        kind, items = "extracted", _from_extracted(src, cfg.subjects)
    else:
        kind, items = "release", _from_release(src, cfg.subjects)
    pos3d: dict[str, dict] = {}
    pos2d: dict[str, dict] = {}
    skipped, frames = {}, 0
    for key, subject, name, (p3, p2) in loaded_sequences(items, skipped):
        action = vp3d_action(name)
        pos3d.setdefault(subject, {})[action] = p3.astype(np.float32)
        pos2d.setdefault(subject, {})[action] = [a.astype(np.float32) for a in p2]
        frames += len(p3)
        if on_progress is not None:
            on_progress(key)
    if not pos3d:
        raise H36MError(src, "no sequence to export" + (f" ({'; '.join(skipped.values())})" if skipped else ""))
    out = Path(cfg.out)
    write_npz_files({out / FILE_3D: {"positions_3d": pos3d},
                     out / FILE_2D: {"positions_2d": pos2d, "metadata": metadata_2d()}})
    return ExportResult([out / FILE_3D, out / FILE_2D], kind, sum(len(v) for v in pos3d.values()), frames, skipped)


def _from_release(root: Path, subjects):
    """(key, subject, raw name, loader) per sequence with a D3_Positions file; loader -> (3-D (N, 32, 3) m,
    4 x (N, 17, 2) nominal px)."""
    from h36m.h36m_tools import cdf
    from h36m.h36m_tools.archives import exists, local_file
    from h36m.h36m_tools.cameras import bundled, nominal_frame, project, world_to_camera
    from h36m.h36m_tools.names import discover
    from h36m.h36m_tools.skeleton import to17
    from h36m.h36m_tools.video import probe

    cams = bundled()

    def video_scale(files, cam_id: str) -> float:
        """Nominal px per px of the camera's video (1 without a video)."""
        video = files.videos.get(cam_id)
        if not exists(video):
            return 1.0
        with local_file(video) as path:
            info = probe(path)
        return nominal_frame(cam_id, info.width, info.height)[0]

    def loader(files):
        def load():
            world = cdf.read_pose(files.d3, 3)                       # (N, 32, 3) mm
            views = []
            for cam_id in CAMERA_IDS:
                if cam_id in files.d2:
                    d2 = cdf.read_pose(files.d2[cam_id], 2)
                    if len(d2) != len(world):
                        raise H36MError(files.d2[cam_id], f"{len(d2)} frames, D3_Positions has {len(world)}")
                    views.append(to17(d2) * video_scale(files, cam_id))
                else:
                    cam = cams.camera(files.subject, cam_id)
                    views.append(project(world_to_camera(to17(world), cam.extrinsics.R, cam.extrinsics.t),
                                         cam.intrinsics))
            return world / 1000.0, views
        return load

    return [(f.key, f.subject, f.name, loader(f)) for f in discover(root, subjects) if f.d3 is not None]


def to32(joints17: np.ndarray) -> np.ndarray:
    """(..., 17, D) -> (..., 32, D) in the layout of the release's files: the 17 at skeleton.JOINTS17, each other
    joint at its nearest ancestor among them (what VideoPose3D's Human36mDataset drops; every value finite)."""
    from h36m.h36m_tools.skeleton import JOINTS17, PARENTS32

    src = np.empty(32, np.int64)
    where = {int(j): i for i, j in enumerate(JOINTS17)}
    for j in range(32):
        k = j
        while k not in where:
            k = int(PARENTS32[k])
        src[j] = where[k]
    return np.asarray(joints17)[..., src, :]


def _from_extracted(root: Path, subjects):
    from h36m.h36m_tools.cameras import nominal_frame

    def build(meta, a):
        scales = [nominal_frame(c, p["width"], p["height"])[0] for c, p in zip(meta.cameras, meta.camera_params)]
        return to32(a.pose3d) / 1000.0, [a.pose2d[:, v] * scales[v] for v in range(len(CAMERA_IDS))]

    return extracted_items(root, subjects, build)
