"""The image buffers a DataLoader worker decodes batches into, recycled once the consumer lets go of them.

A new buffer for every message costs a page fault per 4 kB on first touch (about as much as decoding the JPEGs into
it) and, in shared memory, a new mapping in the consumer. `ImagePool` keeps each worker's buffers pass after pass;
`LoaderConfig.pool = False` turns it off (a fresh buffer for every message: simpler, slower, same batches).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import get_worker_info


def new_images(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor, in shared memory when in a DataLoader worker (sent without a copy).

    `share_memory_()` (public API) moves the fresh, untouched allocation into shared memory: it copies pages that were
    never written, so it costs little beside the decoding that fills the buffer, and with the pool a worker makes only
    a few buffers in all."""
    images = torch.empty(shape, dtype=torch.uint8)
    return images if get_worker_info() is None else images.share_memory_()


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
                    buf = self.buffers[k] = new_images(shape)
                    self.mapped.discard(k)
                self.flags[k] = pass_id
                return buf, Slot(self.worker, k, k not in self.mapped)
        return new_images(shape), None


def release(flags: torch.Tensor, worker: int, k: int) -> None:
    flags[worker, k] = 0
