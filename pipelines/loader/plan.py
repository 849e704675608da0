"""Who reads what: the shard list dealt to ranks and to each rank's DataLoader workers, and the batches each yields.

The shard list is shuffled with (seed, epoch) and dealt to ranks round-robin (each rank reads all shards, keeping
every world_size-th sample, when there are fewer shards than ranks), then the same way to the rank's workers.
  * `equal_batches=True` (training): every rank yields exactly floor(total / (world_size * batch_size)) batches,
    total = the samples the shard index lists; a worker that runs out re-reads its shards (a new shuffle), one with
    more stops early. The batch count of a worker is fixed up front, proportional to its samples.
  * `equal_batches=False` (evaluation): every sample exactly once over all ranks and workers.
Pure functions: the same inputs give the same plans on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
