"""A DataLoader worker's stream as plain generators, one stage each, in the style of webdataset's `filters.py`:

    plan_samples(units)  raw samples of the worker's shards (tar -> grouped members), pass after pass
    -> shuffled          a seeded shuffle buffer, bounded in samples and in MB
    -> to_clips          annotations decoded and checked, flipped when augmenting
    -> to_messages       whole batches collated, their JPEGs decoded straight into one image buffer

Every stage counts what it skips in a `ReaderState` (a damaged shard once, a bad sample each time) and warns with a
`ShardWarning`; none raises on bad data.
"""
from __future__ import annotations

import itertools
import random
import warnings
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator

import numpy as np

from h36m.h36m_tools.cameras import CAMERA_IDS
from h36m.pipelines.loader.augment import random_flip
from h36m.pipelines.loader.plan import Unit
from h36m.pipelines.shards.sample import ARRAYS, MAX_VIEWS, Clip, decode_into, decode_sample, finite_problem, load_json
from h36m.pipelines.shards.tarstream import iter_samples, iter_tar_files
from h36m.pipelines.shards.urls import open_url

REQUIRED = ("meta.json", "cameras.json") + tuple(f"{n}.npy" for n in ARRAYS)
#: LoaderConfig.message_crops' default: a worker hands its batches over in messages of whole batches, at least
#: this many crops' worth (one batch when a batch holds that many). Each hand-over costs CPU on both sides (pickling,
#: queues, waking the other process), so small batches travel several to a message (docs/shards.md).
MESSAGE_CROPS = 512


class ShardWarning(UserWarning):
    """A shard or sample was skipped."""


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


@dataclass
class ReaderState:
    """What one worker's stages share: its counts, the shards found damaged this pass, one reusable tar buffer."""
    stats: LoaderStats = field(default_factory=LoaderStats)
    bad_urls: set[str] = field(default_factory=set)
    tar_buffer: bytearray = field(default_factory=lambda: bytearray(1 << 20))

    def skip_shard(self, unit: Unit, why: str) -> None:
        if unit.url not in self.bad_urls:
            self.bad_urls.add(unit.url)
            if unit.report:
                self.stats.skipped_shards += 1
                warnings.warn(f"{unit.url}: shard skipped ({why})", ShardWarning, stacklevel=3)

    def skip_sample(self, url: str, key: str, e: Exception) -> None:
        self.stats.skipped_samples += 1
        warnings.warn(f"{url}: sample {key} skipped ({e})", ShardWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------- raw samples

def unit_samples(unit: Unit, state: ReaderState) -> Iterator[dict]:
    """Raw samples of one unit (grouped as webdataset groups them); an error ends the shard, which is counted once
    as skipped."""
    errors: list[Exception] = []
    try:
        stream = open_url(unit.url)
    except Exception as e:
        state.skip_shard(unit, f"cannot open: {e}")
        return
    n = 0
    try:
        for i, raw in enumerate(iter_samples(iter_tar_files(stream, buffer=state.tar_buffer), unit.url)):
            n = i + 1
            mine = i % unit.modulo == unit.residue
            missing = incomplete(raw)
            if missing:         # a sample cut short: the tar is damaged there
                errors.append(ValueError(f"sample {raw.get('__key__')} is incomplete ({missing})"))
                if mine:
                    state.stats.skipped_samples += 1
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
        state.skip_shard(unit, f"{type(e).__name__}: {str(e.args[0] if e.args else e)[:200]}")
    elif unit.shard_samples is not None and n < unit.shard_samples:
        state.skip_shard(unit, f"{n} samples, its index lists {unit.shard_samples}")


def plan_samples(units: tuple[Unit, ...], state: ReaderState, rng: np.random.Generator, repeat: bool,
                 shuffle: int = 0, shuffle_mb: float = 256.0) -> Iterator[dict]:
    """The units' samples, shuffled within a pass (see `shuffled`; `shuffle` <= 1: in tar order); with `repeat`,
    pass after pass (units reordered by `rng`) until a pass yields nothing, so no sample comes twice before all
    came once. Damaged shards are not read again."""
    units = list(units)
    while True:
        got = 0

        def one_pass():
            nonlocal got
            for unit in units:
                if unit.url not in state.bad_urls:
                    for raw in unit_samples(unit, state):
                        got += 1
                        yield raw

        stream = one_pass()
        if shuffle > 1:
            stream = shuffled(stream, shuffle, shuffle_mb, random.Random(int(rng.integers(2 ** 63))))
        yield from stream
        if not repeat or got == 0:
            return
        units = [units[i] for i in rng.permutation(len(units))]


def shuffled(samples: Iterator[dict], size: int, mb: float, rng: random.Random) -> Iterator[dict]:
    """A shuffle buffer of `shuffle_size(size, mb, bytes of the first sample)` samples: it fills to a quarter
    before the first pick, then each new sample replaces a random pick; the rest come out in random order."""
    first = next(samples, None)
    if first is None:
        return
    bufsize = shuffle_size(size, mb, sample_bytes(first))
    initial = max(1, bufsize // 4)
    buf: list[dict] = []
    for sample in itertools.chain([first], samples):
        buf.append(sample)
        if len(buf) < bufsize:
            nxt = next(samples, None)
            if nxt is not None:
                buf.append(nxt)
        if len(buf) >= initial:
            yield _pick(buf, rng)
    while buf:
        yield _pick(buf, rng)


def _pick(buf: list, rng: random.Random):
    k = rng.randint(0, len(buf) - 1)
    item = buf[k]
    buf[k] = buf[-1]
    buf.pop()
    return item


def sample_bytes(raw: dict) -> int:
    """Bytes of a raw sample's members (what it holds in the shuffle buffer)."""
    return sum(len(v) for v in raw.values() if isinstance(v, (bytes, bytearray, memoryview)))


def shuffle_size(samples: int, mb: float, sample_size: int) -> int:
    """Samples the shuffle buffer holds: `samples`, but no more than fit in `mb` MB at `sample_size` bytes each
    (at least 2, so there is still something to shuffle)."""
    return max(2, min(samples, int(mb * 2 ** 20) // max(sample_size, 1)))


def incomplete(raw: dict) -> str | None:
    """What a raw sample lacks (its members other than JPEGs, and V x F JPEGs as meta.json says), None if whole."""
    lack = [e for e in REQUIRED if e not in raw]
    if lack:
        return f"no {', '.join(lack)}"
    try:
        meta = load_json(raw["meta.json"], "meta.json")
        want = len(meta["cameras"]) * len(meta["frames"])
    except (ValueError, KeyError, TypeError):
        return None                         # decode_sample reports a bad meta.json as a bad sample
    got = sum(1 for k in raw if k.endswith(".jpg"))
    return None if got >= want else f"{got} of {want} JPEGs"


# ----------------------------------------------------------------------------------------- clips and batches

def to_clips(raws: Iterator[dict], state: ReaderState, augment: bool, rng: np.random.Generator) -> Iterator[Clip]:
    """Annotations decoded and checked (schema, bounds, shapes against meta.json, finite values: a NaN never reaches
    training), flipped when augmenting (images are decoded into the batch later); every clip of the stream has the
    first one's frame count and crop size. A bad sample is skipped and counted, whatever is wrong with it."""
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
            bad = finite_problem(clip)
            if bad:
                raise ValueError(bad)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError) as e:     # hostile data: one sample
            state.skip_sample(raw.get("__url__", "?"), raw.get("__key__", "?"), e)
            continue
        yield random_flip(clip, rng) if augment else clip


def batches_per_message(batch_size: int, crops_per_clip: int, message_crops: int = MESSAGE_CROPS) -> int:
    """Whole batches in one worker -> consumer message: the fewest holding `message_crops` crops, at least 1."""
    return max(1, -(-message_crops // (batch_size * crops_per_clip)))


def to_messages(clips: Iterator[Clip], state: ReaderState, batch_size: int, take: Callable,
                quota: int | None = None, most: int | None = None,
                message_crops: int = MESSAGE_CROPS) -> Iterator[dict]:
    """Messages of whole batches: `per` batches of `batch_size` clips (`per` = batches_per_message of the first
    clip's size), collated together, their JPEGs decoded straight into one image buffer (per * batch_size,
    MAX_VIEWS, F, S, S, 3) from `take(shape) -> (images, slot)` (`pool.ImagePool.take`, or a fresh buffer and None);
    the buffer itself goes as `_images` only when the consumer has not mapped it yet (a new slot, or none), and the
    consumer splits the message into batches of its (B, MAX_VIEWS, F, 3, S, S) views. With a `quota` (training),
    `quota` whole batches in all; without, every clip, the last batch perhaps short. `most`: the clips this reader
    has in all, if known (no message is made larger than needed)."""
    B = batch_size
    images, slot, send, batch, size = None, None, None, [], 0
    left = None if quota is None else quota * B           # clips still to send
    for clip in clips:
        if images is None:
            if not size:         # clips a message holds: no more than this reader will send in all
                size = batches_per_message(B, clip.views * clip.frames, message_crops) * B
                bound = left if left is not None else most
                if bound:
                    size = min(size, -(-bound // B) * B)
            crop = int(clip.meta["crop_size"])
            images, slot = take((size, MAX_VIEWS, clip.frames, crop, crop, 3))      # the last message may use less
            if slot is not None and not slot.new:      # the consumer has this buffer mapped already
                send = None
            else:
                send = images
                state.stats.buffers += 1
        try:
            decode_into(images[len(batch)].numpy(), clip)
        except ValueError as e:
            state.skip_sample(clip.source, clip.key, e)
            continue
        state.stats.samples += 1
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


def collate(clips: list[Clip]) -> dict:
    """Clips (same F and crop size) -> the batch dict without its images, views zero-padded to MAX_VIEWS."""
    B, V, F = len(clips), MAX_VIEWS, clips[0].frames
    pose2d = np.zeros((B, V, F, 17, 2), np.float32)
    pose3d_cam = np.zeros((B, V, F, 17, 3), np.float32)
    box = np.zeros((B, V, F, 4), np.float32)
    mask = np.zeros((B, V), bool)
    view_index = np.zeros((B, V), np.int64)
    for b, c in enumerate(clips):
        n = c.views
        pose2d[b, :n], pose3d_cam[b, :n], box[b, :n] = c.pose2d, c.pose3d_cam, c.box
        mask[b, :n] = True
        view_index[b, :n] = [rig_position(cam) for cam in c.meta["cameras"]]
    return {"pose2d": pose2d, "pose3d_cam": pose3d_cam,
            "pose3d": np.stack([c.pose3d for c in clips]).astype(np.float32), "box": box, "view_mask": mask,
            "view_index": view_index,
            "key": [c.key for c in clips], "meta": [c.meta for c in clips], "cameras": [c.cameras for c in clips]}


def rig_position(camera_id: str) -> int:
    """A camera's position in the H36M rig (`CAMERA_IDS` order, 0-3); an unknown id counts as position 0."""
    try:
        return CAMERA_IDS.index(str(camera_id))
    except ValueError:
        return 0


def decode_chw(clip: Clip) -> Clip:
    """Decode the JPEGs into `clip.images` (V, F, 3, H, W) uint8 RGB (mirrored if the clip was flipped): the loader's
    layout, a channels-last view of a (V, F, H, W, 3) array."""
    size = int(clip.meta["crop_size"])
    images = np.empty((clip.views, clip.frames, size, size, 3), np.uint8)
    decode_into(images, clip)
    clip.images = images.transpose(0, 1, 4, 2, 3)
    return clip
