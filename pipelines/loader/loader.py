"""The trainer's input: batches of multi-view clips streamed from the tar shards of `h36m shard`.

    loader = make_loader(LoaderConfig("SHARDS/train-{000000..000031}.tar", batch_size=2, augment=True))
    for epoch in range(E):
        loader.set_epoch(epoch)
        for batch in loader:   # len(loader) batches, the same on every rank
            ...

Where samples go (see docs/shards.md): `plan` deals the shards (`shards.urls` expands the patterns) to ranks and to
each rank's DataLoader workers; each worker streams its part through the `stages` (tar -> samples -> shuffle buffer
-> clips -> messages of whole batches, decoded into buffers of its `pool`), so `batch_size=None` in the DataLoader.
This module holds the DataLoader around them and the consumer's side of the hand-over.
A shard that cannot be opened, is corrupt or is shorter than its index says is skipped with a ShardWarning and
counted in `loader.stats.skipped_shards`; a sample that does not decode in `stats.skipped_samples`. Never a crash.
"""
from __future__ import annotations

import gc
import warnings
import weakref
from dataclasses import dataclass, fields
from typing import Iterator

import cv2  # noqa: F401  (the stages' decoders, imported here: the workers fork with them, not import them each epoch)
import numpy as np
import simplejpeg  # noqa: F401  (likewise)
import torch
from torch.utils.data import IterableDataset, get_worker_info

from h36m.h36m_tools.errors import H36MError
from h36m.pipelines.loader.plan import ReaderPlan, plan_batches, plan_rank
from h36m.pipelines.loader.pool import HELD, ImagePool, new_images, release
from h36m.pipelines.loader.stages import (MESSAGE_CROPS, LoaderStats, ReaderState, ShardWarning, plan_samples,
                                          to_clips, to_messages)
from h36m.pipelines.shards.urls import expand_urls, shard_counts
from h36m.pipelines.workers import die_with_parent

#: Image buffers a worker recycles beyond its prefetched messages: the message in use + one being filled.
POOL_EXTRA = 2
KEYS = ("images", "pose2d", "pose3d_cam", "pose3d", "box", "view_mask", "view_index", "key", "meta", "cameras")


@dataclass
class LoaderConfig:
    urls: str | list[str]            # local paths, brace patterns, globs, pipe:..., http(s)://...
    batch_size: int = 2
    workers: int = 2                 # DataLoader worker processes (0 = in-process)
    shuffle: int = 256               # sample shuffle buffer (0 = off, deterministic order), in samples...
    shuffle_mb: float = 256.0        # ...and at most about this many MB of them per reader (a 128-frame clip is 5 MB)
    shuffle_shards: bool = True
    augment: bool = False            # training augmentations (flip etc.)
    seed: int = 0
    epoch: int = 0                   # changes the shuffle per epoch
    rank: int | None = None          # None: from torch.distributed if initialised, else 0
    world_size: int | None = None
    equal_batches: bool = True       # same batch count on every rank (training); False: every sample once (eval)
    pin_memory: bool = False
    prefetch: int = 2                # messages each worker may have ready ahead of the consumer (memory!)
    message_crops: int = MESSAGE_CROPS  # a message: the fewest whole batches holding this many crops (>= 1 batch)
    pool: bool = True                # recycle the workers' image buffers (pool.ImagePool); False: fresh ones


class _Reader:
    """One worker's part of one pass: its plan through the stages, as messages carrying the counts made since the
    previous message (`_stats`), and a last message of counts only."""

    def __init__(self, plan: ReaderPlan, cfg: "LoaderConfig", rng_seed: list[int], pool: ImagePool | None = None,
                 pass_id: int = 1):
        self.plan, self.cfg, self.pool, self.pass_id = plan, cfg, pool, pass_id
        self.rng = np.random.default_rng(rng_seed)
        self.state = ReaderState()
        self.reported = LoaderStats()

    def take(self, shape: tuple[int, ...]):
        return self.pool.take(shape, self.pass_id) if self.pool else (new_images(shape), None)

    def _delta(self) -> LoaderStats:
        now = self.state.stats
        d = LoaderStats(*(getattr(now, f.name) - getattr(self.reported, f.name) for f in fields(LoaderStats)))
        self.reported = LoaderStats(**vars(now))
        return d

    def __iter__(self) -> Iterator[dict]:
        cfg, quota, state = self.cfg, self.plan.batches, self.state
        made = 0
        if quota != 0:
            raws = plan_samples(self.plan.units, state, self.rng, repeat=quota is not None, shuffle=cfg.shuffle,
                                shuffle_mb=cfg.shuffle_mb)
            clips = to_clips(raws, state, cfg.augment, self.rng)
            for message in to_messages(clips, state, cfg.batch_size, self.take, quota, self.plan.samples,
                                       cfg.message_crops):
                yield {**message, "_batch": cfg.batch_size, "_stats": self._delta()}
                made += -(-len(message["key"]) // cfg.batch_size)
            if quota is not None and made < quota:
                warnings.warn(f"a reader yielded {made} of {quota} batches: no readable samples left in "
                              f"{[u.url for u in self.plan.units]}", ShardWarning, stacklevel=2)
        yield {"_stats": self._delta()}


#: Batch entries that travel from the workers as numpy arrays (pickled inline: no shared-memory segment and file
#: descriptor each) and become tensors in the main process.
SMALL = ("pose2d", "pose3d_cam", "pose3d", "box", "view_mask", "view_index")


def _worker_init(worker_id: int) -> None:
    """A DataLoader worker's first act: die with the main process (`workers.die_with_parent`: a kill -9 of the
    trainer leaves no worker behind), and move the objects it inherited from the main process (torch's millions) out
    of the cyclic garbage collector's reach. Otherwise the worker's first full collections walk them all, writing to
    each object's header, which copies every page of the inherited heap (copy-on-write): seconds of CPU at the start
    of every epoch. (`gc.freeze` only relinks the collector's lists; the worker's own objects are collected as
    usual.)"""
    die_with_parent()
    gc.freeze()


def _as_is(item):
    """The DataLoader's per-item collate: leave the batch as the worker made it (no numpy -> tensor there)."""
    return item


# ----------------------------------------------------------------------------------------- the loader

class ClipStream(IterableDataset):
    """The DataLoader's dataset: worker w of the rank reads its part of the pass the consumer has announced in
    `state` (pass number, epoch); the workers persist across passes, and so do their ImagePools."""

    def __init__(self, cfg: LoaderConfig, rank: int, world_size: int, urls: list[str], counts: list[int | None]):
        self.cfg, self.rank, self.world_size, self.urls, self.counts = cfg, rank, world_size, urls, counts
        with torch.inference_mode(False):     # written later, whatever mode the consumer is in
            self.flags = torch.zeros((max(cfg.workers, 1), cfg.prefetch + POOL_EXTRA), dtype=torch.int32)
            self.state = torch.zeros(2, dtype=torch.int64)
        if cfg.workers > 0:                   # before the workers fork: they see the consumer's writes
            self.flags.share_memory_()
            self.state.share_memory_()
        self.pool: ImagePool | None = None    # this worker's, made on its first pass

    def plans(self, epoch: int) -> list[ReaderPlan]:
        c = self.cfg
        return plan_rank(self.urls, self.counts, rank=self.rank, world_size=self.world_size, workers=c.workers,
                         batch_size=c.batch_size, seed=c.seed, epoch=epoch, shuffle_shards=c.shuffle_shards,
                         equal_batches=c.equal_batches)

    def __iter__(self):
        info = get_worker_info()
        w = info.id if info is not None else 0
        pass_id, epoch = (int(x) for x in self.state)
        cfg = self.cfg
        if self.pool is None and cfg.pool:
            self.pool = ImagePool(self.flags[w], w)
        yield from _Reader(self.plans(epoch)[w], cfg, [cfg.seed, epoch, self.rank, w], self.pool, pass_id)


class UnknownLength(H36MError, TypeError):
    """len() of a loader whose shards no index lists: a TypeError (an object without a length) that the CLI prints as
    one line naming the first such shard (an H36MError)."""


class ShardLoader:
    """Iterable over batch dicts (see KEYS); `len()` = batches per epoch on this rank when the index is found."""

    def __init__(self, cfg: LoaderConfig):
        if cfg.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
        self.cfg = cfg
        self.rank, self.world_size = _rank_world(cfg)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.urls = expand_urls(cfg.urls)
        if not self.urls:
            raise ValueError(f"no shards match {cfg.urls!r}")
        self.counts = shard_counts(self.urls)
        self.total_samples = None if None in self.counts else sum(self.counts)
        if cfg.equal_batches and self.total_samples is None and self.world_size > 1:
            warnings.warn("no shard index found for some shards: ranks may yield different batch counts",
                          ShardWarning, stacklevel=2)
        self.stats = LoaderStats()
        self.dataset = ClipStream(cfg, self.rank, self.world_size, self.urls, self.counts)
        self._passes = 0
        self._buffers: dict[tuple[int, int], np.ndarray] = {}     # the workers' pool buffers, mapped once
        # persistent workers: no fork, imports or new image buffers per epoch (pinning: in __iter__, after mapping)
        self._loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, collate_fn=_as_is, num_workers=cfg.workers, worker_init_fn=_worker_init,
            prefetch_factor=cfg.prefetch if cfg.workers else None, persistent_workers=cfg.workers > 0)

    def plans(self, epoch: int | None = None) -> list[ReaderPlan]:
        return self.dataset.plans(self.cfg.epoch if epoch is None else epoch)

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffles of `epoch` from the next pass on."""
        self.cfg.epoch = epoch

    def __len__(self) -> int:
        n = plan_batches(self.plans(), self.cfg.batch_size)
        if n is None:
            unknown = next((u for u, c in zip(self.urls, self.counts) if c is None), self.urls[0])
            raise UnknownLength(unknown, "batches per epoch unknown: no {split}-index.json found beside the shards "
                                         "lists this one (it or its index is missing, or unreachable)")
        return n

    def __iter__(self) -> Iterator[dict]:
        if self.cfg.pin_memory and torch.cuda.is_available():      # pinned in a thread, as the DataLoader's would
            yield from one_ahead(self._batches(), _pin_batch)
        else:
            yield from self._batches()

    def _batches(self) -> Iterator[dict]:
        self.stats = LoaderStats()
        self._passes += 1
        self.dataset.state[0], self.dataset.state[1] = self._passes, self.cfg.epoch    # before the workers resume
        flags, buffers = self.dataset.flags, self._buffers
        for item in self._loader:
            self.stats.add(item.pop("_stats"))
            if "key" not in item:           # a reader's last message: its counts only
                continue
            sent, slot = item.pop("_images"), item.pop("_slot")
            if slot is None:
                hwc = sent
            else:
                if sent is not None:
                    buffers[slot.worker, slot.k] = sent.numpy()
                flags[slot.worker, slot.k] = HELD
                hwc = torch.from_numpy(buffers[slot.worker, slot.k])      # a storage of this batch's own
                weakref.finalize(hwc.untyped_storage(), release, flags, slot.worker, slot.k)
            B, n = item.pop("_batch"), len(item["key"])
            for i in range(0, n, B):            # the message's batches: views of its image buffer and arrays
                out = {"images": hwc[i: min(i + B, n)].permute(0, 1, 2, 5, 3, 4)}
                for k, v in item.items():
                    out[k] = torch.from_numpy(v[i: i + B]) if k in SMALL else v[i: i + B]
                yield out


def batch_crop_size(batch: dict) -> float:
    """The crop side in px that a batch's pose2d is measured in (meta crop_size, else the image width)."""
    meta = batch.get("meta") or [{}]
    return float(meta[0].get("crop_size") or batch["images"].shape[-1])


def _pin_batch(batch: dict) -> dict:
    """The batch with its tensors copied to pinned memory (the shared image buffer is free again afterwards)."""
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def one_ahead(items: Iterator, fn) -> Iterator:
    """fn(item) for each item, in order, computed in one background thread while the consumer works on the previous
    result (so pinning the next batch overlaps the current training step); an exception in fn is raised here."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="h36m-loader") as pool:
        pending = None
        for item in items:
            nxt = pool.submit(fn, item)
            if pending is not None:
                yield pending.result()
            pending = nxt
        if pending is not None:
            yield pending.result()


def make_loader(cfg: LoaderConfig) -> ShardLoader:
    """The loader for `cfg` (see the module docstring for who reads what)."""
    return ShardLoader(cfg)


def _rank_world(cfg: LoaderConfig) -> tuple[int, int]:
    rank, world = cfg.rank, cfg.world_size
    if rank is None or world is None:
        import torch.distributed as dist

        live = dist.is_available() and dist.is_initialized()
        if rank is None:
            rank = dist.get_rank() if live else 0
        if world is None:
            world = dist.get_world_size() if live else 1
    return int(rank), int(world)
