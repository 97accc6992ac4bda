"""A shard-level epoch plan: which shards (or parts of shards) each rank trains on, from a table of shards alone.

The plan of :mod:`pipeline.train.epoch_plan` replicates every sample of the corpus on every rank before the
first step (memory and time linear in the corpus). This plan needs, on every rank, only the vocab stage's shard
table (:func:`pipeline.io.shard_labels.read_shard_table`: shards x {samples, expected items}) and, on rank ``r``,
the weights of the shards rank ``r`` trains on:

1. **Shard order.** The shards are permuted by ``default_rng([seed, epoch, 1])``.
2. **Deal.** Along that order each shard occupies an interval of expected items (the sum of its samples'
   weights, ``expected_<scheme>``); the total ``M`` is cut into ``world`` equal intervals and rank ``r`` takes
   the shards, or the parts of shards, inside ``[r M / world, (r + 1) M / world)``. A shard cut by a boundary
   is split by sample position, in proportion to the cut (its samples are in key order: a
   :class:`ShardSlice` is a contiguous run of rows). Every sample of every shard goes to exactly one rank.
3. **Replication inside a shard.** Sample ``i`` of shard ``s`` appears ``floor(w_i)`` or ``floor(w_i) + 1``
   times, the extra copy with probability ``frac(w_i)``, one uniform draw per sample of the shard from
   ``default_rng([seed, epoch, 2, s])``: the expected copies of each sample are its weight, as in
   :func:`pipeline.train.epoch_plan.replication_counts` (SWAG's replication, Singh et al. 2022; Mahajan et al.
   2018 sec. 2.1), and do not depend on the world size or on which rank holds the sample.
4. **Steps.** After replication each rank knows its own item count ``n_r``; the ranks exchange these ``world``
   integers once an epoch (:func:`step_sizes` then gives everyone the same ``T = ceil(max_r n_r / batch)`` and
   every rank's batch sizes, so the global batch of each step is known everywhere, as in the whole-corpus plan).

Per rank, the state is the shard table (a few numbers a shard) plus the rank's own items: independent of the
corpus size at a fixed share per rank. Balance: ranks' expected items differ by at most a fraction of one
shard's (the split by position assumes the weights spread evenly inside a shard); the realized counts differ
by the replication's randomness too, absorbed by the per-rank batch sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

__all__ = [
    "ShardSlice",
    "StepSizes",
    "deal_shards",
    "expand_copies",
    "rank_items",
    "replicate_shard",
    "step_sizes",
    "stochastic_round",
]


@dataclass(frozen=True)
class ShardSlice:
    """Rows ``start:stop`` (positions in the shard's labels, key order) of ingest shard ``shard``."""

    shard: int
    start: int
    stop: int


def deal_shards(
    shards: np.ndarray, samples: np.ndarray, expected: np.ndarray, *, seed: int, epoch: int, world: int
) -> list[list[ShardSlice]]:
    """Each rank's shard slices for one epoch, in training order (steps 1-2 of the module docstring).

    Args:
        shards: int64 (S,), shard numbers; ``samples``: int64 (S,), kept samples per shard (>= 1);
            ``expected``: float64 (S,), expected items per shard (sum of weights, > 0).
        seed, epoch: the plan's randomness; ``world``: ranks.

    Returns:
        ``world`` lists of :class:`ShardSlice` (a rank may get none when there are fewer items than ranks).

    Raises:
        ValueError: arrays of different lengths, a shard without samples or with expected items <= 0, world < 1.
    """
    shards, samples, expected = np.asarray(shards, np.int64), np.asarray(samples, np.int64), np.asarray(expected, float)
    if not (shards.shape == samples.shape == expected.shape):
        raise ValueError("deal_shards: shards, samples and expected differ in length")
    if world < 1 or (samples.size and (samples.min() < 1 or expected.min() <= 0)):
        raise ValueError("deal_shards: world >= 1, and every shard needs samples and expected items > 0")
    order = np.random.default_rng([seed, epoch, 1]).permutation(len(shards))
    ends = np.cumsum(expected[order])
    total = float(ends[-1]) if ends.size else 0.0
    starts = ends - expected[order]
    out: list[list[ShardSlice]] = [[] for _ in range(world)]
    for k, j in enumerate(order):
        lo, hi, n = float(starts[k]), float(ends[k]), int(samples[j])
        first, last = int(lo * world // total), min(world - 1, int(hi * world // total))
        cut = 0
        for r in range(first, last + 1):
            if r == last:
                stop = n
            else:
                boundary = (r + 1) * total / world
                stop = min(n, max(cut, round((boundary - lo) / (hi - lo) * n)))
            if stop > cut:
                out[r].append(ShardSlice(int(shards[j]), cut, stop))
            cut = stop
    return out


def replicate_shard(weights: np.ndarray, shard: int, *, seed: int, epoch: int) -> np.ndarray:
    """Copies of each sample of one shard this epoch: int64 (n,), ``floor(w) + (u < frac(w))``, expectation ``weights``.

    ``weights``: float64 (n,), the shard's replication weights in key order (all of them, also for a rank that
    holds a slice: the draws are per shard, so the ranks sharing a shard agree).
    """
    return stochastic_round(weights, np.random.default_rng([seed, epoch, 2, int(shard)]))


def stochastic_round(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int64 (n,): ``floor(w) + (u < frac(w))`` with one uniform ``u`` per weight from ``rng``; expectation ``weights``
    (the replication of both epoch plans)."""
    u = rng.random(len(weights))
    base = np.floor(weights)
    return (base + (u < weights - base)).astype(np.int64)


def expand_copies(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each sample repeated by its copies: ``(sample, copy)``, int64 (counts.sum(),) each, copy running 0..c-1."""
    counts = np.asarray(counts, dtype=np.int64)
    sample = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    # copy number of each item: its position minus the position of its sample's first copy
    return sample, np.arange(sample.size, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


def rank_items(slices: list[ShardSlice], weights_of, *, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rank's items in stream order (step 3): ``(shard, row, copy)``, int64 (n_r,) each.

    Args:
        slices: the rank's :class:`ShardSlice` list from :func:`deal_shards`.
        weights_of: callable ``shard -> float64 (n,)`` weights of the whole shard (e.g. a column of
            :func:`pipeline.io.shard_labels.read_shard_labels`); called once per slice.
    """
    shard_parts, row_parts, rep_parts = [], [], []
    for sl in slices:
        counts = replicate_shard(np.asarray(weights_of(sl.shard), float), sl.shard, seed=seed, epoch=epoch)[sl.start : sl.stop]
        sample, copy = expand_copies(counts)
        rep_parts.append(copy)
        row_parts.append(sample + sl.start)
        shard_parts.append(np.full(sample.size, sl.shard, dtype=np.int64))
    if not row_parts:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), empty.copy()
    return np.concatenate(shard_parts), np.concatenate(row_parts), np.concatenate(rep_parts)


@dataclass(frozen=True)
class StepSizes:
    """Every rank's batch sizes in one epoch, without a (world, T) array: ``T = ceil(max_r n_r / batch_size)``
    steps, rank ``r``'s ``n_r`` items cut into ``T`` batches, the first ``n_r % T`` of ``n_r // T + 1`` items and
    the rest of ``n_r // T`` (as :func:`pipeline.train.epoch_plan.make_epoch_plan` cuts them). O(world) memory:
    the array would be T x world integers (125 MB an epoch at 10^9 samples on 8 ranks of batch 64).

    Attributes:
        counts: int64 (world,) every rank's items; ``steps``: T.
    """

    counts: np.ndarray
    steps: int

    @classmethod
    def from_counts(cls, items_per_rank: np.ndarray | list[int], batch_size: int) -> StepSizes:
        """Raises:
        ValueError: ``batch_size < 1``, or a rank would get an empty batch (fewer items than steps: use a
            smaller batch size or fewer ranks)."""
        per = np.asarray(items_per_rank, dtype=np.int64)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        steps = int(-(-per.max() // batch_size)) if per.size else 0
        if steps and per.min() < steps:
            raise ValueError(f"{per.tolist()} items on {len(per)} ranks cannot fill {steps} steps; use a smaller batch_size")
        return cls(per, steps)

    @property
    def num_items(self) -> int:
        """Items of the epoch, all ranks."""
        return int(self.counts.sum())

    def rank_sizes(self, rank: int) -> Iterator[int]:
        """Rank ``rank``'s batch sizes, step by step."""
        n = int(self.counts[rank])
        base, extra = divmod(n, self.steps) if self.steps else (0, 0)
        for t in range(self.steps):
            yield base + (t < extra)

    def global_batch(self, step: int) -> int:
        """Items in step ``step`` summed over ranks."""
        return int((self.counts // self.steps).sum() + (step < self.counts % self.steps).sum())

    def array(self) -> np.ndarray:
        """The sizes as int64 (world, T)."""
        if not self.steps:
            return np.zeros((len(self.counts), 0), dtype=np.int64)
        t = np.arange(self.steps)[None, :]
        return (self.counts[:, None] // self.steps + (t < (self.counts % self.steps)[:, None])).astype(np.int64)


def step_sizes(items_per_rank: np.ndarray | list[int], batch_size: int) -> np.ndarray:
    """Batch sizes int64 (world, T) from every rank's item count: :meth:`StepSizes.from_counts` as an array.

    Raises:
        ValueError: see :meth:`StepSizes.from_counts`.
    """
    return StepSizes.from_counts(items_per_rank, batch_size).array()
