"""The stages of `h36m train` as plug-ins of the one training loop (train.loop): what each stage supplies.

    stage = make_stage(cfg)                 # ShardStage for 2d / joint, LiftStage for lift
    stage.prepare(net, rank, world, device) # reads its data; returns the number of micro-batches per epoch
    for batch in stage.epoch(epoch, skip):  # the epoch's micro-batches, the first `skip` left out (resume)
        inputs = stage.inputs(batch, step, micro)          # tensors on the device (and the baseline's statistics)
        loss, err2d_m, mpjpe_m = stage.loss(net, *inputs)  # inside the loop's nn.Module (DDP sees every parameter)

A stage also says which parts of the network train (`trainable`), its learning-rate schedule (`scheduler`), how
many samples a micro-batch holds (`count`, the rate in the log), what a batch came from (`describe`, for a one-line
error) and how its mean-pose baseline is gathered. The mean-pose baseline (train.pose_stats.PoseStats) has one
definition in every stage: the mean over the training samples of the first epoch, as the data holds them (never
mirrored by augmentation), each real (not padded) frame of each view once per time it is trained on in that epoch.
    ShardStage (2d, joint)  clips of WebDataset shards (train.loop's loader); 2d: spatial + relations + head on the
                            images (loss: mean Euclidean 2-D joint error in crop units plus the confidence head's
                            Laplace NLL, TrainConfig.confidence_loss); joint: everything, plus loss3d_weight x the
                            lifter's MPJPE (m) on the clip's own predicted 2-D. The loader's clip-wide flip
                            augments both; the crop transform only 2d. Schedule: linear warm-up, cosine decay.
    LiftStage (lift)        whole sequences of an extracted dataset held in memory (train.sequences); only the lifter
                            trains, on windows of receptive_field frames (with cfg.flip each window also mirrored;
                            VideoPose3D's ChunkedGenerator with augmentation), loss MPJPE (m) of the centre frame
                            (all frames with seq2seq). Schedule: lr x lr_decay after every epoch (PoseFormer's).
                            Single process.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from h36m.h36m_tools.errors import H36MError
from h36m.pipelines.train.config import TrainConfig
from h36m.pipelines.train.pose_stats import PoseStats


def make_stage(cfg: TrainConfig):
    """The plug-in of cfg.stage."""
    return LiftStage(cfg) if cfg.stage == "lift" else ShardStage(cfg)


def epoch_order(n_windows: int, flip: bool, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The samples of one epoch of the lift stage in training order: (window index, mirrored?) arrays; with `flip`
    every window appears twice, once mirrored. A pure function of its arguments."""
    idx = np.arange(n_windows)
    mirrored = np.zeros(n_windows, bool)
    if flip:
        idx, mirrored = np.concatenate([idx, idx]), np.concatenate([mirrored, ~mirrored])
    perm = np.random.default_rng([seed, epoch]).permutation(len(idx))
    return idx[perm], mirrored[perm]


class ShardStage:
    """The 2d and joint stages: clips of WebDataset shards (see the module doc)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.trainable = ("spatial", "relations", "head") + (("lifter",) if cfg.stage == "joint" else ())
        self.unit = "img/s"

    @property
    def source(self) -> str:
        return str(self.cfg.urls()[0])

    def prepare(self, net, rank: int, world: int, device, stats: PoseStats) -> int:
        from h36m.pipelines.loader.loader import LoaderConfig, make_loader

        cfg = self.cfg
        self.net, self.rank, self.device, self.stats = net, rank, device, stats
        self.loader = make_loader(LoaderConfig(urls=cfg.urls(), batch_size=cfg.batch_size, workers=cfg.workers,
                                               shuffle=cfg.shuffle, augment=cfg.augment, seed=cfg.seed, epoch=0,
                                               rank=rank, world_size=world, equal_batches=True,
                                               pin_memory=device.type == "cuda"))
        return len(self.loader)

    def describe_start(self) -> str:
        return ""

    def scheduler(self, opt, total: int, steps_per_epoch: int):
        from h36m.pipelines.train.schedule import make_scheduler

        return make_scheduler(opt, total, int(round(self.cfg.warmup_epochs * steps_per_epoch)), self.cfg.min_lr_ratio)

    def epoch(self, epoch: int, skip: int) -> Iterator[dict]:
        self.loader.set_epoch(epoch)        # one loader for the run: its workers and buffers persist
        it = iter(self.loader)
        for _ in range(skip):
            next(it)
        yield from it

    def close(self) -> None:
        del self.loader                     # its worker processes end with it

    def inputs(self, batch: dict, step: int, epoch: int, micro: int):
        """A batch -> (images, view_mask, view_index, to_screen scale, to_screen offset, target2d, target3d) on the
        device (loader.inputs.network_inputs; target2d in crop units; 2d stage: crops and targets moved by the random
        crop transform); the first epoch also feeds the baseline."""
        import torch

        from h36m.pipelines.loader.inputs import network_inputs
        from h36m.pipelines.train.augment import AFFINE, augment_views

        cfg, dev = self.cfg, self.device
        x = network_inputs(batch, self.net.cfg.spatial, dev)
        self.crop = x.crop
        pose2d = batch["pose2d"].to(dev).float() / x.crop
        cam = batch["pose3d_cam"].to(dev).float()
        target3d = cam - cam[..., :1, :]
        images = x.images
        affine = AFFINE[cfg.affine] if cfg.augment and cfg.stage == "2d" else None
        if affine is not None:
            seed = int(np.random.SeedSequence([cfg.seed, self.rank, step, micro]).generate_state(1)[0])
            images, pose2d = augment_views(images, pose2d, affine, torch.Generator().manual_seed(seed))
        if self.rank == 0 and epoch == 0:
            self._baseline(batch, x.crop)
        return images, x.view_mask, x.view_index, *x.to_screen, pose2d, target3d

    def _baseline(self, batch: dict, crop: float) -> None:
        """The first epoch's real frames of present views, un-mirrored where the loader flipped the clip."""
        from h36m.h36m_tools.skeleton import flip_joints

        mask = batch["view_mask"].numpy().astype(bool)
        p2 = batch["pose2d"].numpy().astype(np.float64)
        p3 = batch["pose3d_cam"].numpy().astype(np.float64)
        p3 = p3 - p3[..., :1, :]
        for b, meta in enumerate(batch["meta"]):
            real = int(meta.get("real_frames", len(meta["frames"])))
            a2, a3 = p2[b, mask[b], :real], p3[b, mask[b], :real]
            if meta.get("flipped"):
                a2, a3 = flip_joints(a2, crop), flip_joints(a3)
            self.stats.update(a2 / crop, a3)

    def count(self, inputs) -> int:
        """Images (present views x frames) of a micro-batch."""
        return int(inputs[1].sum()) * inputs[0].shape[2]

    def describe(self, batch: dict) -> str:
        keys = list(batch.get("key", []))
        return "clips " + ", ".join(map(str, keys[:3])) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    def loss(self, net, images, view_mask, view_index, screen_scale, screen_offset, target2d, target3d):
        """(loss, 2-D error in crop units, MPJPE in m (NaN in the 2d stage)); see the module doc."""
        from h36m.pipelines.train.losses import joint_distance, laplace_nll, mpjpe_m

        cfg = self.cfg
        nan = target2d.new_tensor(math.nan)
        out = net(images, view_mask, view_index, (screen_scale, screen_offset))
        err2d = joint_distance(out.joints2d, target2d, view_mask)
        loss2d = err2d
        if out.log_scale2d is not None:
            if cfg.confidence_loss == "rle":
                loss2d = laplace_nll(out.joints2d, out.log_scale2d, target2d, view_mask)
            else:
                loss2d = err2d + laplace_nll(out.joints2d.detach(), out.log_scale2d, target2d, view_mask)
        if cfg.stage == "2d":
            return loss2d, err2d.detach(), nan
        m = mpjpe_m(out.joints3d[view_mask], target3d[view_mask])
        return loss2d + cfg.loss3d_weight * m, err2d.detach(), m.detach()


class LiftStage:
    """The lift stage: windows of whole sequences held in memory (see the module doc)."""

    def __init__(self, cfg: TrainConfig):
        if not cfg.data:
            raise ValueError("the lift stage needs --data EXTRACTED (an extracted dataset)")
        self.cfg = cfg
        self.trainable = ("lifter",)
        self.unit = "windows/s"
        self.crop = 1.0

    @property
    def source(self) -> str:
        return self.cfg.data if self.cfg.keypoints == "gt" else self.cfg.keypoints

    def prepare(self, net, rank: int, world: int, device, stats: PoseStats) -> int:
        from h36m.h36m_tools.names import parse_subjects
        from h36m.pipelines.train.sequences import WindowBank, load_sequences

        if world > 1:
            raise ValueError("the lift stage runs in one process (its windows fit in memory): start it without "
                             "torchrun")
        cfg = self.cfg
        self.device = device
        seqs, self.missing = load_sequences(cfg.data, parse_subjects(cfg.subjects), cfg.keypoints)
        self.n_seqs = len(seqs)
        self.bank = WindowBank(seqs, net.cfg.lifter.receptive_field, net.cfg.lifter.seq2seq)
        if stats.count == 0:        # a resumed run keeps the statistics of its start
            for s in seqs:
                stats.update(s.crop01, s.pose3d)
        return math.ceil(len(self.bank) * (2 if cfg.flip else 1) / cfg.batch_size)

    def describe_start(self) -> str:
        cfg, bank = self.cfg, self.bank
        return (f"{self.n_seqs} view sequences, {len(bank)} windows of {bank.rf} frames"
                f"{' (x2 mirrored)' if cfg.flip else ''}, keypoints {cfg.keypoints}"
                + (f"; {len(self.missing)} views absent from the keypoints left out" if self.missing else ""))

    def scheduler(self, opt, total: int, steps_per_epoch: int):
        import torch

        decay = self.cfg.lr_decay
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: decay ** (step // steps_per_epoch))

    def epoch(self, epoch: int, skip: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        cfg = self.cfg
        idx, mirrored = epoch_order(len(self.bank), cfg.flip, cfg.seed, epoch)
        for k in range(skip, math.ceil(len(idx) / cfg.batch_size)):
            sel = slice(k * cfg.batch_size, (k + 1) * cfg.batch_size)
            yield idx[sel], mirrored[sel]

    def close(self) -> None:
        pass

    def inputs(self, batch, step: int, epoch: int, micro: int):
        """(window indices, mirrored?) -> (x (B, rf, 17, 2) screen-normalised, y (B, rf or 1, 17, 3) mm) on the
        device."""
        import torch

        x, y = self.bank.batch(*batch)
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)

    def count(self, inputs) -> int:
        return len(inputs[0])

    def describe(self, batch) -> str:
        keys = sorted({self.bank.key_of(int(i)) for i in batch[0]})
        return f"windows of {', '.join(keys[:3])}" + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    def loss(self, net, x, y):
        from h36m.pipelines.train.losses import mpjpe_m

        m = mpjpe_m(net.lifter(x), y)
        return m, x.new_tensor(math.nan), m.detach()


__all__ = ["make_stage", "epoch_order", "ShardStage", "LiftStage"]
