"""The trainer's input: batches of multi-view clips streamed from the tar shards of `h36m shard`, on webdataset.

    loader = make_loader(LoaderConfig("SHARDS/train-{000000..000031}.tar", batch_size=2, augment=True))
    for epoch in range(E):
        loader.set_epoch(epoch)
        for batch in loader:   # len(loader) batches, the same on every rank
            ...

Where samples go (see docs/shards.md): the shard list (brace patterns / globs expanded, in order) is shuffled with
(seed, epoch) and dealt to ranks round-robin (each rank reads all shards, keeping every world_size-th sample, when
there are fewer shards than ranks), then the same way to the rank's DataLoader workers. Each worker streams its shards
through the webdataset stages (tar -> samples -> shuffle buffer -> decode -> augment -> batch) and yields whole
batches, so `batch_size=None` in the DataLoader.
  * `equal_batches=True` (training): every rank yields exactly floor(total / (world_size * batch_size)) batches,
    total = the samples the shard index lists; a worker that runs out re-reads its shards (a new shuffle), one with
    more stops early. The batch count of a worker is fixed up front, proportional to its samples.
  * `equal_batches=False` (evaluation): every sample exactly once over all ranks and workers; the last batch of a
    worker may be short; ranks may yield different counts.
A shard that cannot be opened, is corrupt or is shorter than its index says is skipped with a ShardWarning and
counted in `loader.stats.skipped_shards`; a sample that does not decode in `stats.skipped_samples`. Never a crash.
"""
from __future__ import annotations

import gc
import glob
import json
import random
import re
import urllib.parse
import urllib.request
import warnings
import weakref
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import cv2  # noqa: F401  (decode_into's, imported here: the workers fork with it, not import it each epoch)
import numpy as np
import simplejpeg  # noqa: F401  (likewise)
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import _shuffle

from h36m.pipelines.loader.augment import random_flip
from h36m.pipelines.shards.sample import ARRAYS, MAX_VIEWS, SHARD_RE, Clip, decode_into, decode_sample
from h36m.pipelines.shards.tarstream import iter_samples, iter_tar_files

REQUIRED = ("meta.json", "cameras.json") + tuple(f"{n}.npy" for n in ARRAYS)
#: Image buffers a worker recycles beyond its prefetched messages: the message in use + one being filled.
POOL_EXTRA = 2
#: LoaderConfig.message_crops' default: a worker hands its batches over in messages of whole batches, at least
#: this many crops' worth (one batch when a batch holds that many). The DataLoader's hand-over costs about 0.5 ms of
#: CPU a message on each side (pickling, queues, waking the other process), 4 % of the decoding of a 128-crop
#: batch (2 clips of 4 x 16) on this project's VM, and the consumer's part is taken from the workers when the
#: cores are all theirs.
MESSAGE_CROPS = 512
KEYS = ("images", "pose2d", "pose3d_cam", "pose3d", "box", "view_mask", "key", "meta", "cameras")


class ShardWarning(UserWarning):
    """A shard or sample was skipped."""


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


@dataclass
class LoaderStats:
    """Counts of the current (or last) pass over the loader, gathered from all workers."""
    skipped_shards: int = 0
    skipped_samples: int = 0
    samples: int = 0
    buffers: int = 0            # image buffers the readers allocated (more than workers x (prefetch + 2): the
                                # consumer holds on to batches, so each message gets new memory)

    def add(self, other: "LoaderStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


# ----------------------------------------------------------------------------------------- URLs and the index

def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace patterns (`a-{000000..000003}.tar`), `::`-separated lists and local globs -> a list of URLs."""
    import braceexpand

    items = urls.split("::") if isinstance(urls, str) else list(urls)
    out = []
    for item in items:
        for url in braceexpand.braceexpand(str(item)):
            if _is_local(url) and any(c in url for c in "*?["):
                out += sorted(glob.glob(_local_path(url)))
            else:
                out.append(url)
    return out


def _is_local(url: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", url) or url.startswith("file:")


def _local_path(url: str) -> str:
    return urllib.parse.urlparse(url).path if url.startswith("file:") else url


def _tar_target(url: str) -> str | None:
    """The shard a URL names: itself, or for `pipe:cmd ... x.tar` the last `.tar` path or URL in the command."""
    if url.startswith("pipe:"):
        tars = re.findall(r"[^\s'\"]+\.tar\b", url[5:])
        return tars[-1] if tars else None
    return url


def _fetch_index(index_url: str) -> dict | None:
    try:
        if _is_local(index_url):
            p = Path(_local_path(index_url))
            return json.loads(p.read_text()) if p.is_file() else None
        with urllib.request.urlopen(index_url, timeout=30) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def shard_counts(urls: list[str]) -> list[int | None]:
    """Samples per shard from the `{split}-index.json` beside each shard (None where no index lists it)."""
    cache: dict[str, dict | None] = {}
    out = []
    for url in urls:
        target = _tar_target(url)
        name = target.rsplit("/", 1)[-1] if target else ""
        m = SHARD_RE.match(name)
        if not m:
            out.append(None)
            continue
        index_url = target[: len(target) - len(name)] + f"{m.group('split')}-index.json"
        if index_url not in cache:
            cache[index_url] = _fetch_index(index_url)
        index = cache[index_url] or {}
        counts = {e.get("name"): e.get("samples") for e in index.get("shards", []) if isinstance(e, dict)}
        n = counts.get(name)
        out.append(int(n) if isinstance(n, int) else None)
    return out


def open_url(url: str):
    """A binary stream for a local path, file:, http(s): (urllib, no curl needed) or pipe: URL."""
    if _is_local(url):
        return open(_local_path(url), "rb", buffering=1 << 20)
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=60)
    from webdataset.gopen import gopen

    return gopen(url, "rb")


# ----------------------------------------------------------------------------------------- who reads what

@dataclass(frozen=True)
class Unit:
    """Read shard `url`, keeping its samples number i (in tar order) with i % modulo == residue."""
    url: str
    modulo: int = 1
    residue: int = 0
    shard_samples: int | None = None     # samples in the whole shard (index), None if unknown
    report: bool = True                  # this reader counts the shard in stats.skipped_shards if it is damaged

    @property
    def samples(self) -> int | None:
        n = self.shard_samples
        return None if n is None else max(0, (n - self.residue + self.modulo - 1) // self.modulo)


@dataclass(frozen=True)
class ReaderPlan:
    """What one DataLoader worker of one rank reads, and how many batches it yields (None: all its samples once)."""
    units: tuple[Unit, ...]
    batches: int | None

    @property
    def samples(self) -> int | None:
        counts = [u.samples for u in self.units]
        return None if None in counts else sum(counts)


def _deal(units: list[Unit], parts: int, part: int) -> list[Unit]:
    """Split units into `parts` disjoint parts: whole shards when there are enough, else samples within shards."""
    if len(units) >= parts:
        return units[part::parts]
    return [Unit(u.url, u.modulo * parts, u.residue + u.modulo * part, u.shard_samples, u.report and part == 0)
            for u in units]


def _apportion(total: int, weights: list[int]) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder); all weights 0 -> even split."""
    if not weights:
        return []
    if sum(weights) == 0:
        weights = [1] * len(weights)
    raw = [total * w / sum(weights) for w in weights]
    out = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (out[i] - raw[i], i))[: total - sum(out)]:
        out[i] += 1
    return out


def plan_rank(urls: list[str], counts: list[int | None], *, rank: int, world_size: int, workers: int,
              batch_size: int, seed: int, epoch: int, shuffle_shards: bool, equal_batches: bool
              ) -> list[ReaderPlan]:
    """The plans of the `max(workers, 1)` readers of one rank (pure: the same inputs give the same plans on every
    rank, and the ranks' parts are disjoint)."""
    order = list(range(len(urls)))
    if shuffle_shards:
        order = [int(i) for i in np.random.default_rng([seed, epoch]).permutation(len(urls))]
    units = [Unit(urls[i], shard_samples=counts[i]) for i in order]
    mine = _deal(units, world_size, rank)
    readers = max(workers, 1)
    parts = [tuple(_deal(mine, readers, w)) for w in range(readers)]
    known = None not in counts
    if equal_batches and known:
        total = sum(c for c in counts)
        per_rank = total // (world_size * batch_size)
        quotas = _apportion(per_rank, [ReaderPlan(p, None).samples for p in parts])
        return [ReaderPlan(p, q) for p, q in zip(parts, quotas)]
    return [ReaderPlan(p, None) for p in parts]


def plan_batches(plans: list[ReaderPlan], batch_size: int) -> int | None:
    """Batches a rank yields under its plans, None if unknown (no index)."""
    if all(p.batches is not None for p in plans):
        return sum(p.batches for p in plans)
    if any(p.samples is None for p in plans):
        return None
    return sum(-(-p.samples // batch_size) for p in plans)


# ----------------------------------------------------------------------------------------- worker stages

class _Reader:
    """One worker's stream: shards -> raw samples -> shuffle -> clips with images -> batches, with its counts."""

    def __init__(self, plan: ReaderPlan, batch_size: int, shuffle: int, shuffle_mb: float, augment: bool,
                 rng_seed: list[int], pool: "ImagePool | None" = None, pass_id: int = 1,
                 message_crops: int = MESSAGE_CROPS):
        self.plan, self.batch_size, self.shuffle, self.shuffle_mb = plan, batch_size, shuffle, shuffle_mb
        self.message_crops = message_crops
        self.augment, self.pool, self.pass_id = augment, pool, pass_id
        self.rng = np.random.default_rng(rng_seed)
        self.stats = LoaderStats()
        self.reported = LoaderStats()
        self.bad_urls: set[str] = set()
        self.tar_buffer = bytearray(1 << 20)      # reused for every shard

    def _skip_shard(self, unit: Unit, why: str) -> None:
        if unit.url not in self.bad_urls:
            self.bad_urls.add(unit.url)
            if unit.report:
                self.stats.skipped_shards += 1
                warnings.warn(f"{unit.url}: shard skipped ({why})", ShardWarning, stacklevel=2)

    def read_unit(self, unit: Unit) -> Iterator[dict]:
        """Raw samples of one unit (grouped as webdataset groups them); an error ends the shard, which is counted
        once as skipped."""
        errors: list[Exception] = []
        try:
            stream = open_url(unit.url)
        except Exception as e:
            self._skip_shard(unit, f"cannot open: {e}")
            return
        n = 0
        try:
            for i, raw in enumerate(iter_samples(iter_tar_files(stream, buffer=self.tar_buffer), unit.url)):
                n = i + 1
                mine = i % unit.modulo == unit.residue
                missing = incomplete(raw)
                if missing:         # a sample cut short: the tar is damaged there
                    errors.append(ValueError(f"sample {raw.get('__key__')} is incomplete ({missing})"))
                    if mine:
                        self.stats.skipped_samples += 1
                elif mine:
                    yield raw
        except (EOFError, OSError, ValueError) as e:      # truncated / damaged tar, a failing pipe or connection
            errors.append(e)
        finally:
            try:
                stream.close()
            except Exception as e:
                errors.append(e)
        if errors:
            e = errors[0]
            self._skip_shard(unit, f"{type(e).__name__}: {str(e.args[0] if e.args else e)[:200]}")
        elif unit.shard_samples is not None and n < unit.shard_samples:
            self._skip_shard(unit, f"{n} samples, its index lists {unit.shard_samples}")

    def raw_samples(self, repeat: bool) -> Iterator[dict]:
        """The plan's samples, shuffled within a pass (a buffer of `shuffle` samples, fewer if they would take more
        than `shuffle_mb`: see `shuffle_size`); with `repeat`, pass after pass (shards reshuffled) until a pass
        yields nothing, so no sample comes twice before all came once."""
        import itertools

        units = list(self.plan.units)
        while True:
            got = 0

            def one_pass():
                nonlocal got
                for unit in units:
                    if unit.url not in self.bad_urls:
                        for raw in self.read_unit(unit):
                            got += 1
                            yield raw

            stream = one_pass()
            if self.shuffle > 1:
                rng = random.Random(int(self.rng.integers(2 ** 63)))
                first = next(stream, None)
                if first is not None:
                    size = shuffle_size(self.shuffle, self.shuffle_mb, sample_bytes(first))
                    stream = _shuffle(itertools.chain([first], stream), bufsize=size, initial=max(1, size // 4),
                                      rng=rng)
            yield from stream
            if not repeat or got == 0:
                return
            units = [units[i] for i in self.rng.permutation(len(units))]

    def _skip_sample(self, url: str, key: str, e: Exception) -> None:
        self.stats.skipped_samples += 1
        warnings.warn(f"{url}: sample {key} skipped ({e})", ShardWarning, stacklevel=3)

    def clips(self, raws: Iterator[dict]) -> Iterator[Clip]:
        """Annotations decoded and checked, flipped when augmenting (images are decoded into the batch later)."""
        shape = None
        for raw in raws:
            try:
                clip = decode_sample(raw)
                s = (clip.frames, int(clip.meta["crop_size"]))
                if shape is None:
                    shape = s
                elif s != shape:
                    raise ValueError(f"{s[0]} frames of {s[1]} px, this stream has {shape[0]} of {shape[1]} px")
                if clip.views > MAX_VIEWS:
                    raise ValueError(f"{clip.views} views, at most {MAX_VIEWS}")
            except ValueError as e:
                self._skip_sample(raw.get("__url__", "?"), raw.get("__key__", "?"), e)
                continue
            yield random_flip(clip, self.rng) if self.augment else clip

    def messages(self, clips: Iterator[Clip], quota: int | None) -> Iterator[dict]:
        """Messages of whole batches: `per` batches of `batch_size` clips (`per` = batches_per_message of the first
        clip's size), collated together, their JPEGs decoded straight into one image buffer (per * batch_size,
        MAX_VIEWS, F, S, S, 3) (in shared memory inside a worker, so handing it to the main process copies nothing);
        the buffer itself goes as `_images` only when the consumer has not mapped it yet (see ImagePool), and the
        consumer splits the message into batches of its (B, MAX_VIEWS, F, 3, S, S) views. With a `quota` (training),
        `quota` whole batches in all; without, every clip, the last batch perhaps short."""
        B = self.batch_size
        images, slot, send, batch, size = None, None, None, [], 0
        left = None if quota is None else quota * B           # clips still to send
        for clip in clips:
            if images is None:
                if not size:         # clips a message holds: no more than this reader will send in all
                    size = batches_per_message(B, clip.views * clip.frames, self.message_crops) * B
                    most = left if left is not None else self.plan.samples
                    if most:
                        size = min(size, -(-most // B) * B)
                crop = int(clip.meta["crop_size"])
                shape = (size, MAX_VIEWS, clip.frames, crop, crop, 3)       # the last message may use less
                images, slot = self.pool.take(shape, self.pass_id) if self.pool else (_new_images(shape), None)
                if slot is not None and not slot.new:      # the consumer has this buffer mapped already
                    send = None
                else:
                    send = images
                    self.stats.buffers += 1
            try:
                decode_into(images[len(batch)].numpy(), clip)
            except ValueError as e:
                self._skip_sample(clip.source, clip.key, e)
                continue
            self.stats.samples += 1
            batch.append(clip)
            if len(batch) == size or len(batch) == left:
                yield {**collate(batch), "_images": send, "_slot": slot}
                if left is not None:
                    left -= len(batch)
                    if left == 0:
                        return
                images, batch = None, []
        if left is not None:
            batch = batch[: len(batch) // B * B]                # training yields whole batches only
        if batch:
            yield {**collate(batch), "_images": send, "_slot": slot}

    def _delta(self) -> LoaderStats:
        d = LoaderStats(*(getattr(self.stats, f.name) - getattr(self.reported, f.name) for f in fields(LoaderStats)))
        self.reported = LoaderStats(**vars(self.stats))
        return d

    def __iter__(self) -> Iterator[dict]:
        quota = self.plan.batches
        made = 0
        if quota != 0:
            for message in self.messages(self.clips(self.raw_samples(repeat=quota is not None)), quota):
                yield {**message, "_batch": self.batch_size, "_stats": self._delta()}
                made += -(-len(message["key"]) // self.batch_size)
            if quota is not None and made < quota:
                warnings.warn(f"a reader yielded {made} of {quota} batches: no readable samples left in "
                              f"{[u.url for u in self.plan.units]}", ShardWarning, stacklevel=2)
        yield {"_stats": self._delta()}


def batches_per_message(batch_size: int, crops_per_clip: int, message_crops: int = MESSAGE_CROPS) -> int:
    """Whole batches in one worker -> consumer message: the fewest holding `message_crops` crops, at least 1."""
    return max(1, -(-message_crops // (batch_size * crops_per_clip)))


def sample_bytes(raw: dict) -> int:
    """Bytes of a raw sample's members (what it holds in the shuffle buffer)."""
    return sum(len(v) for v in raw.values() if isinstance(v, (bytes, bytearray, memoryview)))


def shuffle_size(samples: int, mb: float, sample_size: int) -> int:
    """Samples the shuffle buffer holds: `samples`, but no more than fit in `mb` MB at `sample_size` bytes each
    (at least 2, so there is still something to shuffle)."""
    return max(2, min(samples, int(mb * 2 ** 20) // max(sample_size, 1)))


def _new_images(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor, in shared memory when in a DataLoader worker (sent without a copy)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(int(np.prod(shape)), device="cpu")
    return torch.empty(0, dtype=torch.uint8).new(storage).view(shape)


@dataclass(frozen=True)
class Slot:
    """Buffer k of worker w's ImagePool; `new`: the consumer has not mapped this buffer yet, so it travels with the
    batch."""
    worker: int
    k: int
    new: bool


#: ImagePool flag of a buffer the consumer holds (0: free; p > 0: filled in pass p, on its way to the consumer).
HELD = -1


class ImagePool:
    """The image buffers of one worker, reused once the consumer has let go of them, pass after pass.

    A new buffer for every batch costs a page fault per 4 kB on first touch, which costs about as much as decoding
    the JPEGs into it; sending a shared-memory buffer costs the consumer a connection to the worker (to receive its
    file descriptor) and a fresh mapping. So a buffer travels once, with the first batch it holds; later batches in
    it send only its Slot, and the consumer (ShardLoader) keeps the mapping as long as the loader lives.
    `flags` (K,) int32 live in shared memory, one per buffer: 0 free; p > 0 filled by pass p and on its way (set
    here); HELD once the consumer has it (set on arrival), back to 0 when the last reference to that batch's images
    dies (a weakref finalizer on the images' storage, which is the batch's own, so views and numpy arrays of the
    images keep it busy). A buffer filled in an earlier pass that never arrived (the consumer left that pass
    midway and the DataLoader dropped its batches) is free again, and travels again if it never arrived once.
    With all K busy (a consumer holding on to batches) the worker takes a fresh buffer, so it never waits."""

    def __init__(self, flags: torch.Tensor, worker: int):
        self.flags, self.worker = flags, worker
        self.buffers: dict[int, torch.Tensor] = {}
        self.mapped: set[int] = set()       # buffers the consumer is known to have mapped (a batch in it arrived)

    def take(self, shape: tuple[int, ...], pass_id: int) -> tuple[torch.Tensor, Slot | None]:
        """A buffer of `shape` for a batch of pass `pass_id` (> 0) and its Slot (None: a fresh buffer, not pooled)."""
        for k in range(self.flags.shape[0]):
            flag = int(self.flags[k])
            if flag == 0 or 0 < flag < pass_id:
                buf = self.buffers.get(k)
                if flag == 0 and buf is not None:
                    self.mapped.add(k)
                if buf is None or tuple(buf.shape) != tuple(shape):
                    buf = self.buffers[k] = _new_images(shape)
                    self.mapped.discard(k)
                self.flags[k] = pass_id
                return buf, Slot(self.worker, k, k not in self.mapped)
        return _new_images(shape), None


def _release(flags: torch.Tensor, worker: int, k: int) -> None:
    flags[worker, k] = 0


def incomplete(raw: dict) -> str | None:
    """What a raw sample lacks (its members other than JPEGs, and V x F JPEGs as meta.json says), None if whole."""
    lack = [e for e in REQUIRED if e not in raw]
    if lack:
        return f"no {', '.join(lack)}"
    try:
        meta = json.loads(bytes(raw["meta.json"]))
        want = len(meta["cameras"]) * len(meta["frames"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None                         # decode_sample reports a bad meta.json as a bad sample
    got = sum(1 for k in raw if k.endswith(".jpg"))
    return None if got >= want else f"{got} of {want} JPEGs"


def decode_chw(clip: Clip) -> Clip:
    """Decode the JPEGs into `clip.images` (V, F, 3, H, W) uint8 RGB (mirrored if the clip was flipped): the loader's
    layout, a channels-last view of a (V, F, H, W, 3) array."""
    size = int(clip.meta["crop_size"])
    images = np.empty((clip.views, clip.frames, size, size, 3), np.uint8)
    decode_into(images, clip)
    clip.images = images.transpose(0, 1, 4, 2, 3)
    return clip


def collate(clips: list[Clip]) -> dict:
    """Clips (same F and crop size) -> the batch dict without its images, views zero-padded to MAX_VIEWS."""
    B, V, F = len(clips), MAX_VIEWS, clips[0].frames
    pose2d = np.zeros((B, V, F, 17, 2), np.float32)
    pose3d_cam = np.zeros((B, V, F, 17, 3), np.float32)
    box = np.zeros((B, V, F, 4), np.float32)
    mask = np.zeros((B, V), bool)
    for b, c in enumerate(clips):
        n = c.views
        pose2d[b, :n], pose3d_cam[b, :n], box[b, :n] = c.pose2d, c.pose3d_cam, c.box
        mask[b, :n] = True
    return {"pose2d": pose2d, "pose3d_cam": pose3d_cam,
            "pose3d": np.stack([c.pose3d for c in clips]).astype(np.float32), "box": box, "view_mask": mask,
            "key": [c.key for c in clips], "meta": [c.meta for c in clips], "cameras": [c.cameras for c in clips]}


#: Batch entries that travel from the workers as numpy arrays (pickled inline: no shared-memory segment and file
#: descriptor each) and become tensors in the main process.
SMALL = ("pose2d", "pose3d_cam", "pose3d", "box", "view_mask")


def _worker_init(worker_id: int) -> None:
    """A DataLoader worker's first act: move the objects it inherited from the main process (torch's millions) out
    of the cyclic garbage collector's reach. Otherwise the worker's first full collections walk them all, writing to
    each object's header, which copies every page of the inherited heap (copy-on-write): seconds of CPU at the start
    of every epoch. (`gc.freeze` only relinks the collector's lists; the worker's own objects are collected as
    usual.)"""
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
        if self.pool is None:
            self.pool = ImagePool(self.flags[w], w)
        cfg = self.cfg
        yield from _Reader(self.plans(epoch)[w], cfg.batch_size, cfg.shuffle, cfg.shuffle_mb, cfg.augment,
                           [cfg.seed, epoch, self.rank, w], self.pool, pass_id, cfg.message_crops)


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
            raise TypeError("batches per epoch unknown: no {split}-index.json found beside the shards")
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
                weakref.finalize(hwc.untyped_storage(), _release, flags, slot.worker, slot.k)
            B, n = item.pop("_batch"), len(item["key"])
            for i in range(0, n, B):            # the message's batches: views of its image buffer and arrays
                out = {"images": hwc[i: min(i + B, n)].permute(0, 1, 2, 5, 3, 4)}
                for k, v in item.items():
                    out[k] = torch.from_numpy(v[i: i + B]) if k in SMALL else v[i: i + B]
                yield out


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
