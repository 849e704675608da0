"""`h36m predict`: the 2-D network of a run over every clip of some shards -> whole-sequence 2-D joints per subject,
action and camera, in each camera's nominal pixel frame, written as a VideoPose3D 2-D keypoints file.

    from h36m.pipelines.predict.predict import PredictConfig, predict
    result = predict(PredictConfig(run="runs/2d", shards="SH/test-*.tar", out="pred.npz"))

Every real (unpadded) frame of every clip gives one prediction per view; a frame covered by several clips (shards
cut with --stride below --frames) gets the mean of its predictions, so each frame has exactly one value. With
`flip` each clip is also run mirrored (every view's crop reversed along its width), the mirrored prediction mapped
back (skeleton.flip_joints) and averaged with the plain one. Crop pixels go to full-frame video pixels through the
clip's boxes (extract.crop.to_full), then to the camera's nominal frame (h36m_tools.cameras.nominal_frame: 1000x1002
/ 1000x1000 for H36M, whatever the video's size), the frame VideoPose3D projects into.
The file (h36m_tools.npz for the layout): positions_2d[subject][action][camera index] (N, 17, 2) float32, N = the
last covered frame + 1, actions named as VideoPose3D names them (interchange.npzfile.vp3d_action), cameras in
CAMERA_IDS order, and `metadata` (interchange.npzfile.metadata_2d: layout_name, num_joints, keypoints_symmetry and
the pixel frame). A network with a confidence head
(model.head) also gives confidence_2d[subject][action][camera index] (N, 17) float32 in (0, 1], a member of its own
beside positions_2d (averaged over flips and overlapping clips like the coordinates): VideoPose3D's and PoseFormer's
loaders read only `positions_2d` and `metadata`, and size their networks' input by the last axis of positions_2d, so
a third channel would change what they build; a separate member changes nothing for them. A network without the
head (an older checkpoint) writes no confidence_2d. A sequence missing a camera, or with a frame no clip covers, is
left out and listed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from h36m.h36m_tools.cameras import CAMERA_IDS
from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import sequence_key
from h36m.h36m_tools.skeleton import FLIP17, flip_joints
from h36m.pipelines.interchange.npzfile import metadata_2d, vp3d_action, write_npz


@dataclass
class PredictConfig:
    """Options of `h36m predict`."""
    run: str | os.PathLike                 # run folder or checkpoint with a trained 2-D network
    shards: str | list[str]                # shard URLs (clips of any length and stride)
    out: str | os.PathLike                 # the .npz to write
    flip: bool = True                      # average with the prediction of the mirrored clip
    batch_size: int = 2
    workers: int = 1
    device: str = "auto"


@dataclass
class PredictResult:
    out: Path
    sequences: int                          # (subject, action) pairs written
    frames: int                             # (view, frame) predictions written
    clips: int
    skipped: dict[str, str] = field(default_factory=dict)   # 'S11/Directions' -> why
    confidence: bool = False                # confidence_2d written (the network has a confidence head)


class Stitcher:
    """Per (subject, sequence, camera): the sum and count of the predictions of each frame."""

    def __init__(self):
        self.sums: dict[tuple[str, str, str], np.ndarray] = {}
        self.counts: dict[tuple[str, str, str], np.ndarray] = {}

    def add(self, key: tuple[str, str, str], frames: np.ndarray, joints: np.ndarray) -> None:
        """frames (T,) source indices, joints (T, 17, C): C = 2 full-frame px, and more channels (e.g. a
        confidence) averaged alike."""
        n = int(frames.max()) + 1
        s = self.sums.setdefault(key, np.zeros((0,) + joints.shape[1:]))
        c = self.counts.setdefault(key, np.zeros(0, np.int64))
        if len(s) < n:
            s = self.sums[key] = np.concatenate([s, np.zeros((n - len(s),) + s.shape[1:])])
            c = self.counts[key] = np.concatenate([c, np.zeros(n - len(c), np.int64)])
        np.add.at(s, frames, joints)
        np.add.at(c, frames, 1)

    def sequences(self) -> dict[tuple[str, str], dict[str, np.ndarray | str]]:
        """(subject, sequence) -> camera -> (N, 17, C) mean px (and channels), or a string saying which frames are
        missing."""
        out: dict[tuple[str, str], dict] = {}
        for (subject, sequence, camera), s in self.sums.items():
            c = self.counts[(subject, sequence, camera)]
            missing = np.flatnonzero(c == 0)
            out.setdefault((subject, sequence), {})[camera] = (
                f"camera {camera}: {len(missing)} frames no clip covers (first {missing[0]})" if len(missing)
                else s / c[:, None, None])
        return out


def predict(cfg: PredictConfig, on_progress: Optional[Callable[[int, Optional[int]], None]] = None
            ) -> PredictResult:
    """Run, stitch and write cfg.out atomically; `on_progress(clips done, total or None)` after each batch."""
    import torch

    from h36m.model import confidence
    from h36m.pipelines.device import torch_device
    from h36m.pipelines.loader.inputs import crop_to_nominal, network_inputs
    from h36m.pipelines.loader.loader import LoaderConfig, make_loader
    from h36m.pipelines.train.checkpoint import load_network

    dev = torch_device(cfg.device)
    net, _ = load_network(cfg.run, dev)
    first = cfg.shards if isinstance(cfg.shards, str) else cfg.shards[0]
    try:
        loader = make_loader(LoaderConfig(urls=cfg.shards, batch_size=cfg.batch_size, workers=cfg.workers,
                                          shuffle=0, shuffle_shards=False, augment=False, rank=0, world_size=1,
                                          equal_batches=False))
    except ValueError as e:
        raise H36MError(first, str(e)) from None
    total = getattr(loader, "total_samples", None)
    stitch, clips = Stitcher(), 0
    with_conf = bool(net.cfg.head.confidence)

    def run(x, images):
        """(B, V, F, 17, 2) crop px, (B, V, F, 17) confidence or None."""
        out = net(images, x.view_mask, x.view_index)
        conf = None if out.log_scale2d is None else confidence(out.log_scale2d).cpu().numpy()
        return out.joints2d.float().cpu().numpy() * x.crop, conf

    with torch.no_grad():
        for batch in loader:
            x = network_inputs(batch, net.cfg.spatial, dev)
            crop, mask = x.crop, batch["view_mask"].bool()
            pred, conf = run(x, x.images)                                              # (B, V, F, 17, 2), (..., 17)
            if cfg.flip:
                mirrored, mconf = run(x, x.images.flip(-1))
                pred = (pred + flip_joints(mirrored, crop)) / 2
                if with_conf:
                    conf = (conf + mconf[..., FLIP17]) / 2
            for b, meta in enumerate(batch["meta"]):
                real = int(meta.get("real_frames", len(meta["frames"])))
                frames = np.asarray(meta["frames"][:real], np.int64)
                for v in range(int(mask[b].sum())):
                    joints = crop_to_nominal(pred[b, v, :real], batch["box"][b, v, :real].numpy(), crop,
                                             batch["cameras"][b][v])
                    if with_conf:
                        joints = np.concatenate([joints, conf[b, v, :real, :, None].astype(np.float64)], axis=-1)
                    stitch.add((meta["subject"], meta["sequence"], str(meta["cameras"][v])), frames, joints)
                clips += 1
            if on_progress is not None:
                on_progress(clips, total)
    if clips == 0:
        raise H36MError(first, "no clips in the shards")
    positions: dict[str, dict[str, list[np.ndarray]]] = {}
    confidences: dict[str, dict[str, list[np.ndarray]]] = {}
    skipped, frames = {}, 0
    for (subject, sequence), cams in sorted(stitch.sequences().items()):
        key = sequence_key(subject, sequence)
        problems = [v for v in cams.values() if isinstance(v, str)]
        absent = [c for c in CAMERA_IDS if c not in cams]
        if problems or absent:
            skipped[key] = "; ".join(problems + ([f"no camera {', '.join(absent)}"] if absent else []))
            continue
        n = min(len(cams[c]) for c in CAMERA_IDS)
        positions.setdefault(subject, {})[vp3d_action(sequence)] = [cams[c][:n, :, :2].astype(np.float32)
                                                                    for c in CAMERA_IDS]
        if with_conf:
            confidences.setdefault(subject, {})[vp3d_action(sequence)] = [cams[c][:n, :, 2].astype(np.float32)
                                                                          for c in CAMERA_IDS]
        frames += 4 * n
    if not positions:
        raise H36MError(first, "no whole sequence to write (" + "; ".join(f"{k}: {v}" for k, v in skipped.items())
                        + ")")
    extra = {"confidence_2d": confidences} if with_conf else {}
    write_npz(cfg.out, positions_2d=positions, metadata=metadata_2d(), **extra)
    return PredictResult(Path(cfg.out), sum(len(v) for v in positions.values()), frames, clips, skipped, with_conf)
