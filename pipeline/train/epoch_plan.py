"""The deterministic order of one training epoch, computed from metadata alone.

Every rank computes the same plan from (seed, epoch) and the labelled sample index, so
ranks agree on the epoch's length and on every step's global batch without talking:

1. **Resampling by replication.** Sample ``i`` with weight ``w_i`` (natural / uniform /
   sqrt, from the vocab stage; mean 1) appears ``floor(w_i)`` or ``floor(w_i) + 1``
   times, the extra copy with probability ``w_i - floor(w_i)`` (stochastic rounding,
   one uniform draw per sample from ``default_rng([seed, epoch])``). The expected
   number of copies is ``w_i``, as in SWAG's replication of tail images (Singh et al.
   2022) and Mahajan et al.'s square-root resampling (2018, sec. 2.1).
2. **Shard order.** Shards are permuted by ``default_rng([seed, epoch, 1])``; the global
   sequence is the shards' replicated samples, shard after shard, in key order.
3. **Rank split.** The global sequence of ``N`` items is cut into ``world`` contiguous
   chunks of ``N // world`` or ``N // world + 1`` items (rank ``r`` reads only the shards
   its chunk touches). No item is lost or repeated, whatever the shard sizes.
4. **Steps.** ``T = ceil(max_r n_r / batch_size)`` steps; rank ``r`` cuts its ``n_r`` items
   into ``T`` batches of ``floor`` or ``ceil(n_r / T)`` items, so every rank takes the same
   number of steps (DDP never waits on a rank that ran out) and the global batch of step
   ``t`` is ``batch_sizes[:, t].sum()``, known to all ranks (used to normalize the loss:
   Goyal et al. 2017, sec. 3, "normalize the per-worker loss by the total minibatch").

Within a rank, the loader shuffles further with a seeded buffer (see
:mod:`pipeline.train.loader`); the plan fixes which items each batch position holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.io.shards import shard_of_keys
from pipeline.train.shard_plan import StepSizes, expand_copies, stochastic_round


@dataclass
class SampleIndex:
    """The labelled training samples: shard keys (sorted) with classes and weights.

    Attributes:
        keys: (N,) str, shard keys ``UUUUUU_PPPPPP`` in sorted order (shard = ``UUUUUU``).
        indptr, indices: CSR class ids: sample ``i`` has classes ``indices[indptr[i]:indptr[i+1]]``.
        weights: (N,) float64 replication weights (mean 1 over the samples).
    """

    keys: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.keys) == len(self.weights) == len(self.indptr) - 1):
            raise ValueError("keys, weights and indptr disagree on the number of samples")
        if len(self.keys) and np.any(self.keys[1:] < self.keys[:-1]):
            raise ValueError("keys must be sorted")
        self.shard_of = shard_of_keys(self.keys)

    def classes(self, i: int | np.integer) -> np.ndarray:
        """Class ids (int64) of sample ``i``."""
        return self.indices[self.indptr[i] : self.indptr[i + 1]]

    def subset(self, mask: np.ndarray) -> SampleIndex:
        """The samples where the boolean ``mask`` is True (weights kept as they are)."""
        rows = np.flatnonzero(mask)
        lengths = np.diff(self.indptr)[rows]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.concatenate([self.classes(i) for i in rows]) if len(rows) else np.zeros(0, np.int64)
        return SampleIndex(self.keys[rows], indptr, indices.astype(np.int64), self.weights[rows])


class PlanSteps:
    """Steps and global batches of an epoch plan with ``batch_sizes``: int64 (world, steps)."""

    batch_sizes: np.ndarray

    @property
    def steps(self) -> int:
        """Steps (batches per rank) in this epoch."""
        return int(self.batch_sizes.shape[1])

    @property
    def num_items(self) -> int:
        """Items (samples with replication) in this epoch, all ranks."""
        return int(self.batch_sizes.sum())

    def global_batch(self, step: int) -> int:
        """Items in step ``step`` summed over ranks."""
        return int(self.batch_sizes[:, step].sum())

    def rank_batch_sizes(self, rank: int) -> list[int]:
        """Rank ``rank``'s batch sizes, step by step."""
        return self.batch_sizes[rank].tolist()


@dataclass
class EpochPlan(PlanSteps):
    """One epoch's item order and batch boundaries for all ranks.

    Attributes:
        rows, reps: (N,) int64: the global sequence of items as (sample row, copy number).
        chunk_bounds: (world + 1,) int64: rank ``r`` holds items ``chunk_bounds[r]:chunk_bounds[r+1]``.
        batch_sizes: (world, steps) int64.
    """

    epoch: int
    rows: np.ndarray
    reps: np.ndarray
    chunk_bounds: np.ndarray
    batch_sizes: np.ndarray

    def rank_items(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, reps) of rank ``rank`` in stream order (before the loader's buffer shuffle)."""
        a, b = self.chunk_bounds[rank], self.chunk_bounds[rank + 1]
        return self.rows[a:b], self.reps[a:b]


def replication_counts(weights: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Copies of each sample this epoch: ``floor(w) + (u < frac(w))`` with u ~ U[0, 1).

    Returns:
        (N,) int64; its expectation is ``weights``.
    """
    return stochastic_round(weights, np.random.default_rng([seed, epoch]))


def make_epoch_plan(index: SampleIndex, *, seed: int, epoch: int, world: int, batch_size: int) -> EpochPlan:
    """Compute the epoch plan (see the module docstring for the recipe).

    Raises:
        ValueError: if the epoch has fewer items than ranks or ``batch_size < 1``.
    """
    if batch_size < 1 or world < 1:
        raise ValueError("batch_size and world must be >= 1")
    counts = replication_counts(index.weights, seed, epoch)
    shards = np.unique(index.shard_of)
    order = np.random.default_rng([seed, epoch, 1]).permutation(shards)
    rows_parts, reps_parts = [], []
    starts = np.searchsorted(index.shard_of, order)
    ends = np.searchsorted(index.shard_of, order, side="right")
    for a, b in zip(starts, ends):
        r = np.arange(a, b, dtype=np.int64)
        c = counts[a:b]
        sample, copy = expand_copies(c)
        rows_parts.append(r[sample])
        reps_parts.append(copy)
    rows = np.concatenate(rows_parts) if rows_parts else np.zeros(0, np.int64)
    reps = np.concatenate(reps_parts) if reps_parts else np.zeros(0, np.int64)
    n = len(rows)
    if n < world:
        raise ValueError(f"epoch {epoch} has {n} items, fewer than {world} ranks: not enough labelled data")
    per = np.full(world, n // world, dtype=np.int64)
    per[: n % world] += 1
    bounds = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
    try:
        sizes = StepSizes.from_counts(per, batch_size).array()
    except ValueError as e:
        raise ValueError(f"epoch {epoch}: {e}") from None
    return EpochPlan(epoch, rows, reps, bounds, sizes)
