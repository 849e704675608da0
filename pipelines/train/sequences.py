"""Whole sequences for the lifter: per (subject, sequence, camera) the 2-D inputs and the 3-D targets of every frame,
held in memory, and the window / flip / normalisation math of PoseFormer's (VideoPose3D's) protocol.

    seqs = load_sequences("EXTRACTED", ("S1", "S5"), keypoints="gt")        # or keypoints="pred.npz"

2-D inputs, in each camera's nominal pixel frame (h36m_tools.cameras.nominal_frame: 1000x1002 / 1000x1000 for H36M,
whatever the video's size): the extracted dataset's full-frame ground truth (`gt`, scaled from the video's pixels), or
a VideoPose3D-format 2-D file (positions_2d[subject][action][camera index], h36m_tools.npz; nominal pixels, as every
such file this project writes) cut to the sequence's frames; the lifter sees them screen-normalised
(h36m_tools.cameras.normalize_screen of the nominal frame), as in every stage. 3-D targets: root-relative camera
coordinates, mm.
Windows: a window of `rf` frames centred on every frame, the sequence padded only at its two ends by repeating its
first / last frame (VideoPose3D's ChunkedGenerator, pad = rf // 2, 'edge' mode).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from h36m.h36m_tools.cameras import nominal_frame, normalize_screen
from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import sequence_key
from h36m.h36m_tools.skeleton import flip_joints


@dataclass
class ViewSequence:
    """One camera's view of one whole sequence (N frames)."""
    subject: str
    sequence: str               # raw name, 'Directions 1'
    action: str                 # canonical action
    camera: str                 # camera id
    width: int                  # the camera's nominal frame, px (the frame pose2d is measured in)
    height: int
    frames: np.ndarray          # (N,) source frame indices
    pose2d: np.ndarray          # (N, 17, 2) nominal-frame px: the lifter's inputs
    pose3d: np.ndarray          # (N, 17, 3) root-relative camera mm: the targets
    crop01: np.ndarray          # (N, 17, 2) ground-truth joints in crop units [0, 1] (mean-pose baseline stats)

    @property
    def key(self) -> str:
        return f"{sequence_key(self.subject, self.sequence)}/{self.camera}"


def pad_edges(x: np.ndarray, pad: int) -> np.ndarray:
    """(N, ...) -> (N + 2 pad, ...): the first / last frame repeated `pad` times at each end."""
    return np.concatenate([np.repeat(x[:1], pad, 0), x, np.repeat(x[-1:], pad, 0)])


def windows(x: np.ndarray, rf: int) -> np.ndarray:
    """(N, ...) -> (N, rf, ...): the window of rf (odd) frames centred on each frame, edges padded."""
    pad = rf // 2
    xp = pad_edges(x, pad)
    return xp[np.arange(len(x))[:, None] + np.arange(rf)[None]]


def extracted_sequences(extracted: str | os.PathLike, subjects):
    """(SequenceMeta, SequenceArrays without the JPEGs) of every sequence of `subjects` in an extracted dataset, in
    its order; H36MError naming the folder when it is not one."""
    from h36m.pipelines.extract.dataset import list_sequences, read_sequence

    try:
        paths = list_sequences(extracted, tuple(subjects))
    except FileNotFoundError as e:
        raise H36MError(extracted, str(e).split(": ", 1)[-1]) from None
    for path in paths:
        yield read_sequence(path, with_jpeg=False)


def load_sequences(extracted: str | os.PathLike, subjects, keypoints: str = "gt"
                   ) -> tuple[list[ViewSequence], list[str]]:
    """Every view of every sequence of `subjects` in an extracted dataset, with the 2-D inputs from `keypoints`
    ('gt' or a VideoPose3D 2-D .npz), and the keys of the views the keypoints file lacks (left out). Raises
    H36MError naming the file when the keypoints have fewer frames than a sequence or another joint count."""
    from h36m.h36m_tools.npz import positions_2d
    from h36m.pipelines.interchange.npzfile import camera_keypoints

    kp = None if keypoints == "gt" else positions_2d(keypoints)[0]
    out, missing = [], []
    for meta, a in extracted_sequences(extracted, subjects):
        for v, cam in enumerate(meta.cameras):
            p = meta.camera_params[v]
            scale, width, height = nominal_frame(cam, p["width"], p["height"])
            pose2d = a.pose2d[:, v].astype(np.float64) * scale
            if kp is not None:
                arr = camera_keypoints(kp, keypoints, meta.subject, meta.sequence, cam, a.frame)
                if arr is None:
                    missing.append(f"{meta.key}/{cam}")
                    continue
                pose2d = arr[a.frame]
            cam3d = a.pose3d_cam[:, v].astype(np.float64)
            out.append(ViewSequence(meta.subject, meta.sequence, meta.action, cam, width, height,
                                    a.frame.astype(np.int64), pose2d, cam3d - cam3d[:, :1],
                                    a.pose2d_crop[:, v].astype(np.float64) / meta.crop_size))
    if not out:
        raise H36MError(keypoints if missing else extracted, f"no sequences of {', '.join(subjects)}")
    return out, missing


def inputs(seq: ViewSequence) -> np.ndarray:
    """The lifter's input of a view sequence: (N, 17, 2) screen-normalised 2-D joints, float32."""
    return normalize_screen(seq.pose2d, seq.width, seq.height).astype(np.float32)


class WindowBank:
    """Every training window of a list of sequences: 2-D inputs (rf frames) and 3-D targets (the centre frame, or
    all rf frames for seq2seq), gathered by index from the edge-padded sequences concatenated in memory."""

    def __init__(self, seqs: list[ViewSequence], rf: int, seq2seq: bool):
        pad = rf // 2
        self.rf, self.seq2seq = rf, seq2seq
        self.x = np.concatenate([pad_edges(inputs(s), pad) for s in seqs])
        self.y = np.concatenate([pad_edges(s.pose3d.astype(np.float32), pad) for s in seqs])
        starts, offset = [], 0
        for s in seqs:
            starts.append(offset + np.arange(len(s.pose2d)))
            offset += len(s.pose2d) + 2 * pad
        self.starts = np.concatenate(starts)          # window i covers rows starts[i] .. starts[i] + rf - 1
        self.keys = [s.key for s in seqs]
        self.first = np.cumsum([0] + [len(s.pose2d) for s in seqs])[:-1]     # the first window of each sequence

    def __len__(self) -> int:
        return len(self.starts)

    def key_of(self, i: int) -> str:
        """The key of the sequence window i belongs to."""
        return self.keys[int(np.searchsorted(self.first, i, side="right")) - 1]

    def batch(self, idx: np.ndarray, flip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Windows `idx`, those with flip True mirrored: (B, rf, 17, 2) inputs, (B, rf or 1, 17, 3) targets mm."""
        rows = self.starts[idx][:, None] + np.arange(self.rf)[None]
        x = self.x[rows]
        y = self.y[rows] if self.seq2seq else self.y[rows[:, self.rf // 2]][:, None]
        if flip.any():
            x[flip], y[flip] = flip_joints(x[flip]), flip_joints(y[flip])
        return x, y


def lift_sequence(lifter, x: np.ndarray, flip: bool = True, chunk: int = 2048) -> np.ndarray:
    """A 3-D pose for every frame of one view sequence: x (N, 17, 2) screen-normalised -> (N, 17, 3) root-relative
    camera mm, float64. Centre-frame lifters see the window centred on each frame (edges padded, `windows`), in
    chunks of `chunk` windows; seq2seq lifters run `predict_sequence`. With `flip` the mirrored input's prediction,
    mirrored back, is averaged in (test-time flip augmentation). The lifter must be in eval mode."""
    import torch

    dev = next(lifter.parameters()).device

    def run(inp: np.ndarray) -> np.ndarray:
        if lifter.cfg.seq2seq:
            t = torch.from_numpy(np.ascontiguousarray(inp, np.float32))[None].to(dev)
            return lifter.predict_sequence(t)[0].float().cpu().numpy()
        w = windows(inp.astype(np.float32), lifter.cfg.receptive_field)
        return np.concatenate([lifter(torch.from_numpy(w[i:i + chunk]).to(dev))[:, 0].float().cpu().numpy()
                               for i in range(0, len(w), chunk)])

    with torch.no_grad():
        out = run(x).astype(np.float64)
        if flip:
            out = (out + flip_joints(run(flip_joints(x)).astype(np.float64))) / 2
    return out
