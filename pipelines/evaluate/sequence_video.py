"""`h36m show --run RUN` / `--pred FILE`: one sequence of a run's result as an animated GIF or an MP4.

    from h36m.pipelines.evaluate.sequence_video import SequenceVideoConfig, write_sequence_video
    result = write_sequence_video(SequenceVideoConfig(out="S9_Walking.gif", data="extracted", run="runs/lift"))

Each frame of the picture: the four crops of the extracted dataset with the true 2-D joints (thin green) and the
predicted ones (left side blue, right side red, where a prediction of 2-D is given), and two 3-D panels side by side
in one fixed view and scale: the true skeleton and the predicted one (the true one faint behind it), root-relative
in the camera frame of `camera`; the title gives the sequence, the frame counter (source frame index) and that
frame's MPJPE (mm, root-aligned).

Where the predictions come from:
    run     a lift or joint run: its lifter applied to the sequence's 2-D (`keypoints`: 'gt' or a VideoPose3D 2-D file)
            as Table II does (train.sequences.lift_sequence), in `camera`'s view
    pred    files: a VideoPose3D 2-D file (positions_2d, each camera's nominal pixel frame) gives the predicted 2-D;
            `h36m triangulate`'s file (triangulated_3d, world mm) or a VideoPose3D 3-D file (positions_3d, world
            metres) gives the predicted 3-D, seen from `camera` with the dataset's extrinsics
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from h36m.h36m_tools import metrics as M
from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.skeleton import BONES17, LEFT17, RIGHT17

#: Picture size, pixels (even, for H.264's yuv420p).
WIDTH, HEIGHT = 1120, 480
SIDE_COLORS = {"left": "#1f5fd6", "right": "#d62728", "centre": "#2b8a3e"}
TRUE_COLOR = "#37d637"
VIEW = {"elev": 12.0, "azim": -70.0}


@dataclass
class SequenceVideoConfig:
    """Options of `h36m show --run / --pred`."""
    out: str | os.PathLike                  # .gif or .mp4
    data: str | None = None                 # extracted dataset (default: the run's training data)
    run: str | None = None
    pred: tuple[str, ...] = ()
    sequence: str | None = None             # 'S9/Walking_1' (default: the first sequence of S9 / S11, else any)
    camera: str | None = None               # camera of the 3-D panels (default: the sequence's first)
    keypoints: str = "gt"                   # run: the lifter's 2-D input
    flip: bool = True                       # run: test-time flip averaging, as Table II
    max_frames: int = 0                     # 0: every frame; else the first max_frames
    fps: float = 25.0
    still: int | None = None                # also write frame `still` (index into the shown frames) as a PNG
    device: str = "cpu"


@dataclass
class SequenceClip:
    """What one picture frame needs, for every frame of a sequence (N frames, V views)."""
    key: str                                # 'S9/Walking_1'
    action: str
    cameras: list[str]
    camera: int                             # view index of the 3-D panels
    frames: np.ndarray                      # (N,) source frame index
    jpeg: list                              # N lists of V JPEG crops
    true2d: np.ndarray                      # (N, V, 17, 2) crop px
    pred2d: np.ndarray | None               # (N, V, 17, 2) crop px
    true3d: np.ndarray                      # (N, 17, 3) root-relative camera mm
    pred3d: np.ndarray | None               # (N, 17, 3) root-relative camera mm
    source: str                             # what the predictions are, for the title

    @property
    def errors(self) -> np.ndarray:
        """(N,) per-frame MPJPE, mm (NaN without a 3-D prediction)."""
        if self.pred3d is None:
            return np.full(len(self.frames), np.nan)
        return M.mpjpe_frames(self.pred3d, self.true3d, root=0)


@dataclass
class SequenceVideoResult:
    out: Path
    key: str
    frames: int
    mpjpe: float                            # mean of the per-frame MPJPE over the shown frames, mm (NaN: no 3-D)
    still: Path | None = None
    sources: list[str] = field(default_factory=list)


def write_sequence_video(cfg: SequenceVideoConfig, on_progress: Optional[Callable[[int, int], None]] = None
                         ) -> SequenceVideoResult:
    """Render the sequence and write cfg.out (atomically); `on_progress(frames done, total)`."""
    from h36m.h36m_tools.video import write_video

    out = Path(cfg.out)
    if out.suffix.lower() not in (".gif", ".mp4"):
        raise ValueError(f"{out}: the clip must be a .gif or .mp4")
    if not cfg.run and not cfg.pred:
        raise ValueError("give --run RUN or --pred FILE (the predictions to show)")
    clip = load_clip(cfg)
    n = len(clip.frames)
    if cfg.still is not None and not 0 <= cfg.still < n:
        raise ValueError(f"--still {cfg.still}: the clip has frames 0..{n - 1}")
    painter = FramePainter(clip)
    still = None

    def frames():
        for t in range(n):
            rgb = painter.frame(t)
            if cfg.still == t:
                nonlocal still
                still = _write_png(out.with_suffix(".png"), rgb)
            if on_progress is not None:
                on_progress(t + 1, n)
            yield np.ascontiguousarray(rgb[..., ::-1])

    try:
        write_video(out, frames(), WIDTH, HEIGHT, fps=cfg.fps)
    finally:
        painter.close()
    err = clip.errors
    return SequenceVideoResult(out, clip.key, n, float(np.nanmean(err)) if np.isfinite(err).any() else float("nan"),
                               still, [clip.source])


def action_clips(run: str, data: str, out: str | os.PathLike, subjects=("S9", "S11"), max_frames: int = 100,
                 keypoints: str = "gt", on_progress: Optional[Callable[[int, int], None]] = None
                 ) -> dict[str, SequenceVideoResult]:
    """One MP4 per action present in `data` for `subjects`: its first sequence (subject order, then name), the
    run's lifter on `keypoints`, at most `max_frames` frames, written as `out/<action>.mp4`; action -> result.
    `on_progress(clips done, clips)`."""
    from h36m.h36m_tools.names import ACTIONS, subject_order
    from h36m.pipelines.extract.dataset import list_sequences, read_meta

    try:
        paths = list_sequences(data, tuple(subjects))
    except FileNotFoundError as e:
        raise H36MError(data, str(e).split(": ", 1)[-1]) from None
    first: dict[str, str] = {}
    for meta in sorted((read_meta(p) for p in paths), key=lambda m: (subject_order(m.subject), m.sequence)):
        first.setdefault(meta.action, meta.key)
    todo = [a for a in ACTIONS if a in first]
    done = {}
    for i, action in enumerate(todo):
        done[action] = write_sequence_video(SequenceVideoConfig(
            out=Path(out) / f"{action}.mp4", data=str(data), run=str(run), sequence=first[action],
            keypoints=keypoints, max_frames=max_frames))
        if on_progress is not None:
            on_progress(i + 1, len(todo))
    return done


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    from h36m.pipelines.files import atomic_path

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


# ----- the data of a clip ---------------------------------------------------------------------------------------
def load_clip(cfg: SequenceVideoConfig) -> SequenceClip:
    """Read the sequence from the extracted dataset and the predictions from the run or the files."""
    from h36m.pipelines.extract.dataset import read_sequence

    data = cfg.data
    if data is None and cfg.run:
        from h36m.pipelines.train.checkpoint import load_checkpoint

        data = load_checkpoint(cfg.run)["config"]["train"].get("data")
    if not data:
        raise ValueError("give --data EXTRACTED (the extracted dataset whose crops and truth are drawn)")
    path = _sequence_path(data, cfg.sequence)
    meta, a = read_sequence(path, with_jpeg=True)
    cam = meta.cameras[0] if cfg.camera is None else str(cfg.camera)
    if cam not in meta.cameras:
        raise H36MError(path, f"no camera {cam} (has {', '.join(meta.cameras)})")
    v = meta.cameras.index(cam)
    n = len(a.frame) if cfg.max_frames <= 0 else min(cfg.max_frames, len(a.frame))
    rows = slice(0, n)
    true3d = a.pose3d_cam[rows, v].astype(np.float64)
    true3d = true3d - true3d[:, :1]
    pred2d = pred3d = None
    sources = []
    for file in cfg.pred:
        p2, p3 = _from_file(file, meta, a, v)
        if p2 is not None:
            pred2d = p2[rows]
        if p3 is not None:
            pred3d = p3[rows]
        sources.append(Path(file).name)
    if cfg.run:
        pred3d = _from_run(cfg, data, meta, cam)[rows]
        sources.insert(0, f"{Path(cfg.run).name} on {cfg.keypoints if cfg.keypoints == 'gt' else Path(cfg.keypoints).name}")
        if cfg.keypoints != "gt" and pred2d is None:
            pred2d, _ = _from_file(cfg.keypoints, meta, a, v)
            pred2d = pred2d[rows]
    return SequenceClip(meta.key, meta.action, list(meta.cameras), v, a.frame[rows], a.jpeg[:n],
                        a.pose2d_crop[rows].astype(np.float64), pred2d, true3d, pred3d, ", ".join(sources))


def _sequence_path(data, sequence: str | None) -> Path:
    from h36m.h36m_tools.names import TEST_SUBJECTS
    from h36m.pipelines.extract.dataset import list_sequences, read_meta

    try:
        paths = list_sequences(data)
    except FileNotFoundError as e:
        raise H36MError(data, str(e).split(": ", 1)[-1]) from None
    if not paths:
        raise H36MError(data, "no sequences")
    if sequence is None:
        test = [p for p in paths if p.parent.name in TEST_SUBJECTS]
        return (test or paths)[0]
    want = sequence.replace(" ", "_").strip("/")
    for p in paths:
        if read_meta(p).key == want:
            return p
    raise H36MError(data, f"no sequence {sequence!r} (e.g. {read_meta(paths[0]).key})")


def _from_file(file, meta, a, v: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(predicted 2-D (N, V, 17, 2) crop px or None, predicted 3-D (N, 17, 3) root-relative camera mm or None) of
    one sequence from a predictions file (see the module doc)."""
    from h36m.h36m_tools.cameras import world_to_camera
    from h36m.h36m_tools.npz import load_npz
    from h36m.pipelines.extract.crop import to_crop
    from h36m.h36m_tools.cameras import nominal_frame
    from h36m.pipelines.interchange.npzfile import vp3d_action
    from h36m.pipelines.interchange.npzfile import camera_keypoints

    data = load_npz(file)
    action = vp3d_action(meta.sequence)
    p2 = p3 = None
    if "positions_2d" in data:
        views = []
        for u, cam in enumerate(meta.cameras):
            arr = camera_keypoints(data["positions_2d"], file, meta.subject, meta.sequence, cam, a.frame)
            if arr is None:
                raise H36MError(file, f"no 2-D of {meta.key} camera {cam}")
            params = meta.camera_params[u]
            video_px = arr[a.frame] / nominal_frame(cam, params["width"], params["height"])[0]
            views.append(to_crop(video_px, a.box[:, u], meta.crop_size))
        p2 = np.stack(views, 1)
    for member, unit in (("triangulated_3d", 1.0), ("positions_3d", 1000.0)):
        if member in data:
            seqs = data[member].get(meta.subject, {}) if isinstance(data[member], dict) else {}
            world = seqs.get(action) if isinstance(seqs, dict) else None
            if not isinstance(world, np.ndarray) or world.ndim != 3 or world.shape[-1] != 3:
                raise H36MError(file, f"no {member}[{meta.subject!r}][{action!r}] (N, J, 3) array")
            if world.shape[1] == 32:
                from h36m.h36m_tools.skeleton import to17

                world = to17(world)
            if world.shape[1] != 17 or len(world) <= int(a.frame.max()):
                raise H36MError(file, f"{member}[{meta.subject!r}][{action!r}]: {world.shape}, expected "
                                      f"({int(a.frame.max()) + 1}+, 17 or 32, 3)")
            params = meta.camera_params[v]
            cam3d = world_to_camera(world[a.frame].astype(np.float64) * unit, params["R"], params["t"])
            if not np.isfinite(cam3d).all():
                raise H36MError(file, f"{member}[{meta.subject!r}][{action!r}] holds non-finite values")
            p3 = cam3d - cam3d[:, :1]
    if p2 is None and p3 is None:
        raise H36MError(file, "neither positions_2d, triangulated_3d nor positions_3d: nothing to show")
    return p2, p3


def _from_run(cfg: SequenceVideoConfig, data, meta, cam: str) -> np.ndarray:
    """(N, 17, 3) root-relative camera mm: the run's lifter on the sequence's view `cam`."""
    import torch

    from h36m.pipelines.train.checkpoint import load_network
    from h36m.pipelines.train.sequences import inputs, lift_sequence, load_sequences

    net, _ = load_network(cfg.run, torch.device(cfg.device))
    seqs, _ = load_sequences(data, (meta.subject,), cfg.keypoints)
    for seq in seqs:
        if seq.subject == meta.subject and seq.sequence == meta.sequence and seq.camera == cam:
            with torch.no_grad():
                return lift_sequence(net.lifter.eval(), inputs(seq), flip=cfg.flip)
    raise H36MError(cfg.keypoints, f"no 2-D of {meta.key} camera {cam}")


# ----- drawing --------------------------------------------------------------------------------------------------
def _side(j: int) -> str:
    return "left" if j in LEFT17 else "right" if j in RIGHT17 else "centre"


class FramePainter:
    """One matplotlib figure, its artists updated frame by frame: `frame(t)` -> (HEIGHT, WIDTH, 3) uint8 RGB."""

    def __init__(self, clip: SequenceClip):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.clip, self.plt = clip, plt
        self.errors = clip.errors
        self.fig = fig = plt.figure(figsize=(WIDTH / 100, HEIGHT / 100), dpi=100)
        grid = fig.add_gridspec(2, 4, left=0.01, right=0.99, bottom=0.02, top=0.9, wspace=0.04, hspace=0.06,
                                width_ratios=(1, 1, 1.5, 1.5))
        self.title = fig.suptitle("", fontsize=11)
        size = max(1, _crop_size(clip))
        self.images, self.true2d, self.pred2d = [], [], []
        for u in range(min(4, len(clip.cameras))):
            ax = fig.add_subplot(grid[u // 2, u % 2])
            ax.set_axis_off()
            ax.set_xlim(-0.5, size - 0.5)
            ax.set_ylim(size - 0.5, -0.5)
            ax.text(2, 2, clip.cameras[u], color="white", fontsize=7, va="top",
                    bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})
            self.images.append(ax.imshow(np.zeros((size, size, 3), np.uint8), interpolation="bilinear"))
            self.true2d.append([ax.plot([], [], color=TRUE_COLOR, lw=1.0)[0] for _ in BONES17])
            self.pred2d.append([ax.plot([], [], color=SIDE_COLORS[_side(j)], lw=1.6)[0] for j, _ in BONES17]
                               if clip.pred2d is not None else [])
        radius = float(np.abs(clip.true3d).max()) * 1.05 or 1000.0
        self.truth3d, self.pred3d, self.ghost3d = [], [], []
        for panel, name in ((2, "true 3-D"), (3, "predicted 3-D" if clip.pred3d is not None else "no 3-D prediction")):
            ax = fig.add_subplot(grid[:, panel], projection="3d")
            ax.view_init(**VIEW)
            for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
                setter(-radius, radius)
            ax.set_box_aspect((1, 1, 1), zoom=1.25)
            ax.set_xticklabels([]), ax.set_yticklabels([]), ax.set_zticklabels([])
            ax.set_title(f"{name}, camera {clip.cameras[clip.camera]}", fontsize=9)
            if panel == 2:
                self.truth3d = [ax.plot([], [], [], color=TRUE_COLOR, lw=2)[0] for _ in BONES17]
            elif clip.pred3d is not None:
                self.ghost3d = [ax.plot([], [], [], color="#bbbbbb", lw=1)[0] for _ in BONES17]
                self.pred3d = [ax.plot([], [], [], color=SIDE_COLORS[_side(j)], lw=2)[0] for j, _ in BONES17]

    def frame(self, t: int) -> np.ndarray:
        import simplejpeg

        c = self.clip
        for u, im in enumerate(self.images):
            im.set_data(simplejpeg.decode_jpeg(c.jpeg[t][u], colorspace="RGB"))
            _bones2d(self.true2d[u], c.true2d[t, u])
            if self.pred2d[u]:
                _bones2d(self.pred2d[u], c.pred2d[t, u])
        _bones3d(self.truth3d, c.true3d[t])
        if c.pred3d is not None:
            _bones3d(self.ghost3d, c.true3d[t])
            _bones3d(self.pred3d, c.pred3d[t])
        err = f"MPJPE {self.errors[t]:.1f} mm" if np.isfinite(self.errors[t]) else "no 3-D prediction"
        self.title.set_text(f"{c.key.replace('_', ' ')} ({c.action})   frame {int(c.frames[t])}  "
                            f"[{t + 1}/{len(c.frames)}]   {err}   {c.source}")
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()

    def close(self) -> None:
        self.plt.close(self.fig)


def _crop_size(clip: SequenceClip) -> int:
    import simplejpeg

    return int(simplejpeg.decode_jpeg_header(clip.jpeg[0][0])[0]) if clip.jpeg else 0


def _bones2d(lines, joints: np.ndarray) -> None:
    for line, (j, p) in zip(lines, BONES17):
        line.set_data(joints[[j, p], 0], joints[[j, p], 1])


def _bones3d(lines, joints: np.ndarray) -> None:
    """Camera frame (x right, y down, z forward) drawn with z as depth and -y up."""
    for line, (j, p) in zip(lines, BONES17):
        pts = joints[[j, p]]
        line.set_data_3d(pts[:, 0], pts[:, 2], -pts[:, 1])
