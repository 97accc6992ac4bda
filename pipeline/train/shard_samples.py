"""The pretraining samples, read shard by shard: the training shard table, the held-out set, each rank's epoch.

This is the training path of :mod:`pipeline.pretrain`: no rank reads the whole-corpus ``labels.npz`` or plans
the whole corpus. From the vocab stage's per-shard labels (:mod:`pipeline.io.shard_labels`):

1. **Split** (:meth:`ShardSamples.split`): a shard's samples whose ``heldout_bucket`` is below
   :func:`pipeline.train.sample_split.heldout_cut` are held out (the samples
   :func:`pipeline.train.sample_split.heldout_mask` holds out: the split of every run before this path); of the
   rest, those whose ``fraction_bucket`` is below :func:`pipeline.train.sample_split.fraction_cut` train
   (``pretrain.data_fraction``, nested).
2. **Training table** (:class:`ShardSamples`): rank ``r`` splits shards ``r::world`` once; the ranks exchange one
   row per shard (training samples, sum of training weights) and the held-out rows. Training weights are scaled
   by ``N_train / sum of training weights`` (mean 1 over the training samples, as
   :func:`pipeline.train.sample_split.build_indexes` renormalizes them).
3. **Epochs**: the shard-level plan of :mod:`pipeline.train.shard_plan`: shards dealt to ranks by expected items,
   replication inside each shard seeded per (seed, epoch, shard), and the step sizes from every rank's item
   count. The counts of all epochs are exchanged once, at start (:meth:`ShardSamples.epoch_sizes`: the learning
   rate schedule needs the run's total steps); :meth:`ShardSamples.rank_stream` then gives one rank's epoch as
   its shard slices, whose items (key, classes, copy) :class:`pipeline.train.loader.ShardStream` generates
   slice by slice as it reaches them.

State per rank: the shard table (4 numbers a shard), the held-out set (rank 0), and while streaming one shard
slice's labels and the shuffle buffer's items (per loader worker): independent of the corpus size and of the
rank's share (``benchmarks/shard_plan.py`` measures it). The whole-corpus plan of
:mod:`pipeline.train.epoch_plan` held every sample of every epoch on every rank.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from pipeline.errors import ConfigError
from pipeline.io.shard_labels import BUCKET_COLUMNS, read_shard_labels, read_shard_table
from pipeline.seeding import key_buckets
from pipeline.train.epoch_plan import SampleIndex
from pipeline.train.sample_split import HELDOUT_BUCKETS, fraction_cut, heldout_cut, heldout_eval_cut
from pipeline.train.shard_plan import ShardSlice, StepSizes, deal_shards, expand_copies, replicate_shard

__all__ = ["DATA_PLAN", "ShardSamples", "ShardSplit", "StreamPlan"]

log = logging.getLogger(__name__)
# the data plan a checkpoint's data position records (an int, as positions are): 2 = this shard-level plan;
# checkpoints without one were written by the whole-corpus plan (1) and cannot resume exactly on this one
DATA_PLAN = 2


@dataclass
class StreamPlan:
    """One rank's items of one epoch, generated shard slice by shard slice (:meth:`items`): the rank holds one
    slice's labels at a time, never its whole share (:class:`pipeline.train.loader.ShardStream` streams it
    through its shuffle buffer).

    Attributes:
        sizes: every rank's batch sizes (:class:`pipeline.train.shard_plan.StepSizes`); ``epoch``, ``rank``, ``seed``;
        slices: the rank's :class:`pipeline.train.shard_plan.ShardSlice` list in stream order;
        samples: the :class:`ShardSamples` that reads them.
    """

    sizes: StepSizes
    epoch: int
    rank: int
    seed: int
    slices: list[ShardSlice]
    samples: ShardSamples

    @property
    def steps(self) -> int:
        """Steps (batches per rank) in this epoch."""
        return self.sizes.steps

    @property
    def num_items(self) -> int:
        """Items in this epoch, all ranks."""
        return self.sizes.num_items

    def global_batch(self, step: int) -> int:
        """Items in step ``step`` summed over ranks."""
        return self.sizes.global_batch(step)

    def rank_batch_sizes(self, rank: int) -> Iterator[int]:
        """Rank ``rank``'s batch sizes, step by step."""
        return self.sizes.rank_sizes(rank)

    def items(self) -> Iterator[tuple[str, np.ndarray, int, int]]:
        """``(key, classes int64 (k,), copy number, shard)`` of each of the rank's items, in stream order."""
        for sl in self.slices:
            keys, indptr, indices, copy = self.samples.slice_items(sl, self.epoch, self.seed)
            for i in range(keys.size):
                yield str(keys[i]), indices[indptr[i] : indptr[i + 1]], int(copy[i]), sl.shard


@dataclass
class ShardSplit:
    """One shard's rows split for pretraining (positions are rows of the shard's labels file, key order).

    Attributes:
        train: int64 (n_train,) positions of the training rows; ``held``: int64 (n_held,) of the held-out rows.
        weights: float64 (n_train,) the training rows' replication weights as the vocab stage wrote them (not scaled).
        table: the columns read (pyarrow), for the rows' keys and classes when asked for.
    """

    train: np.ndarray
    held: np.ndarray
    weights: np.ndarray
    table: pa.Table


def _csr(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys str (n,), indptr int64 (n+1,), indices int64 (nnz,)) of a labels table's ``key`` and ``classes``."""
    keys = np.asarray(table.column("key").to_pylist(), dtype=str)
    classes = table.column("classes").combine_chunks()
    lengths = np.diff(classes.offsets.to_numpy())
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return keys, indptr, classes.flatten().to_numpy().astype(np.int64)


def _first_heldout(parts: list[tuple], max_samples: int) -> list[tuple]:
    """The held-out parts ``(shard, keys, indptr, indices, fraction buckets)`` (shard order) cut to the
    ``max_samples`` samples with the lowest (bucket, key); all of them when ``max_samples`` is 0 or not exceeded."""
    total = sum(p[1].size for p in parts)
    if max_samples <= 0 or total <= max_samples:
        return parts
    buckets = np.concatenate([p[4] for p in parts])
    keys = np.concatenate([p[1] for p in parts])
    keep = np.zeros(total, dtype=bool)
    keep[np.lexsort((keys, buckets))[:max_samples]] = True
    out, start = [], 0
    for shard, k, indptr, indices, b in parts:
        m = keep[start : start + k.size]
        start += k.size
        if m.any():
            rows = np.flatnonzero(m)
            lengths = np.diff(indptr)[rows]
            take = np.concatenate([np.arange(indptr[r], indptr[r + 1]) for r in rows]).astype(np.int64)
            out.append((shard, k[rows], np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), indices[take], b[rows]))
    return out


def _index(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> SampleIndex:
    """One :class:`SampleIndex` from (keys, indptr, indices, weights) parts in key order."""
    if not parts:
        return SampleIndex(np.zeros(0, dtype=str), np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0))
    indptr = [np.zeros(1, np.int64)]
    base = 0
    for p in parts:
        indptr.append(p[1][1:] + base)
        base += int(p[1][-1])
    return SampleIndex(
        np.concatenate([p[0] for p in parts]),
        np.concatenate(indptr),
        np.concatenate([p[2] for p in parts]),
        np.concatenate([p[3] for p in parts]).astype(np.float64),
    )


class ShardSamples:
    """The training shard table and held-out set of a run folder, and each rank's epochs (module docstring).

    Args:
        folder: ``<run_dir>/vocab/shard_labels``.
        scheme: resampling scheme (a ``weight_<scheme>`` column: natural, sqrt, uniform).
        heldout_fraction, data_fraction: as ``pretrain.heldout_fraction`` / ``pretrain.data_fraction``.
        rank, world: this rank of how many (the split's work is shared; every rank ends with the same table).
        gather: ``obj -> [obj of rank 0, ..., obj of rank world-1]`` (``pipeline.train.distributed.gather_objects``;
            the identity in a list on one process).
        keep_heldout: keep the held-out set on this rank (rank 0 evaluates; the others only count it).
        heldout_eval_max: evaluate at most this many held-out samples (0: all): those with the lowest
            ``fraction_bucket``, then key (:func:`pipeline.train.sample_split.heldout_eval_cut`), the same set for
            every world size; only they are exchanged and kept. The rest of the held-out set is still not trained on.

    Attributes:
        shards: int64 (S,) shards with training samples; ``train_samples``: int64 (S,); ``expected``: float64 (S,)
        expected items per epoch (scaled weights summed); ``num_train``, ``num_heldout`` (held out of training),
        ``num_heldout_eval`` (evaluated): ints; ``heldout``: :class:`SampleIndex` of the evaluated held-out samples
        (weights 1; empty where not kept).

    Raises:
        FileNotFoundError: the vocab stage did not write per-shard labels (re-run vocab).
        pipeline.errors.ConfigError: the scheme has no weights, or no training sample is left.
    """

    def __init__(
        self,
        folder: str | Path,
        scheme: str,
        heldout_fraction: float,
        data_fraction: float,
        *,
        rank: int = 0,
        world: int = 1,
        gather: Callable[[object], list] = lambda obj: [obj],
        keep_heldout: bool = True,
        heldout_eval_max: int = 0,
    ) -> None:
        t0 = time.perf_counter()
        self.folder, self.scheme, self.rank, self.world, self.gather = Path(folder), scheme, rank, world, gather
        self.held_cut, self.frac_cut = heldout_cut(heldout_fraction), fraction_cut(data_fraction)
        table = read_shard_table(self.folder)
        if f"expected_{scheme}" not in table.column_names:
            raise ConfigError(f"config error at pretrain.resampling: the vocab stage wrote no {scheme!r} weights")
        all_shards = table.column("shard").to_numpy()
        expected_held = float(table.column("samples").to_numpy().sum()) * self.held_cut / HELDOUT_BUCKETS
        eval_cut = heldout_eval_cut(heldout_eval_max, expected_held)
        rows, held_parts = [], []
        for s in all_shards[rank::world]:
            sp = self.split(int(s), labels=self.held_cut > 0)
            # shard, training samples, their weight sum, samples kept by the held-out split (before data_fraction),
            # held-out samples
            kept = int((self._buckets(sp.table, "heldout_bucket") >= self.held_cut).sum())
            rows.append((int(s), sp.train.size, float(sp.weights.sum()), kept, sp.held.size))
            if sp.held.size:
                bucket = self._buckets(sp.table, "fraction_bucket")[sp.held]
                cand = bucket < eval_cut
                if cand.any():
                    keys, indptr, indices = _csr(sp.table.take(pa.array(sp.held[cand])))
                    held_parts.append((int(s), keys, indptr, indices, bucket[cand]))
        gathered = gather((rows, held_parts))
        stats = sorted(r for g in gathered for r in g[0])
        arr = np.array([r[:3] for r in stats], dtype=np.float64).reshape(-1, 3)
        if sum(r[3] for r in stats) == 0:
            raise ConfigError("config error at pretrain.heldout_fraction: no training samples left")
        has = arr[:, 1] > 0
        self.shards = arr[has, 0].astype(np.int64)
        self.train_samples = arr[has, 1].astype(np.int64)
        self.num_train = int(self.train_samples.sum())
        if self.num_train == 0:
            raise ConfigError(f"config error at pretrain.data_fraction: {data_fraction} leaves no training sample")
        self.scale = self.num_train / float(arr[has, 2].sum())
        self.expected = arr[has, 2] * self.scale
        self.num_heldout = int(sum(r[4] for r in stats))
        held = _first_heldout(sorted((p for g in gathered for p in g[1]), key=lambda p: p[0]), heldout_eval_max)
        self.num_heldout_eval = int(sum(p[1].size for p in held))
        self.heldout = _index([(k, ip, ix, np.ones(k.size)) for _, k, ip, ix, _ in held] if keep_heldout else [])
        self._counts: np.ndarray | None = None  # (world, epochs) items per rank and epoch (epoch_sizes)
        self._batch_size = 0
        log.info(
            "training samples: %d in %d shards, %d held out, %d of them evaluated (%.1f s, rank %d split %d shards)",
            self.num_train,
            len(self.shards),
            self.num_heldout,
            self.num_heldout_eval,
            time.perf_counter() - t0,
            rank,
            len(all_shards[rank::world]),
        )

    # -- one shard ----------------------------------------------------------------------
    @staticmethod
    def _buckets(table: pa.Table, column: str) -> np.ndarray:
        """A bucket column as int64, computed from the keys when the labels predate stored buckets."""
        if column in table.column_names:
            return table.column(column).to_numpy().astype(np.int64)
        salt, modulus = BUCKET_COLUMNS[column]
        return key_buckets(salt, table.column("key").to_pylist(), modulus)

    def split(self, shard: int, labels: bool = False) -> ShardSplit:
        """Shard ``shard``'s training and held-out rows (``labels``: also read keys and classes)."""
        cols = [f"weight_{self.scheme}"] + (["key", "classes"] if labels else [])
        try:
            t = read_shard_labels(self.folder, shard, columns=cols + list(BUCKET_COLUMNS))
        except KeyError:  # labels written before the buckets were stored: hash the keys
            t = read_shard_labels(self.folder, shard, columns=list(dict.fromkeys(cols + ["key"])))
        held = self._buckets(t, "heldout_bucket") < self.held_cut
        train = ~held & (self._buckets(t, "fraction_bucket") < self.frac_cut)
        weights = t.column(cols[0]).to_numpy()
        return ShardSplit(np.flatnonzero(train), np.flatnonzero(held), weights[train], t)

    def train_weights(self, shard: int) -> np.ndarray:
        """float64 (n_train,): shard ``shard``'s training weights, scaled to mean 1 over all training samples."""
        return self.split(shard).weights * self.scale

    # -- epochs -------------------------------------------------------------------------
    def deal(self, epoch: int, seed: int):
        """Every rank's :class:`pipeline.train.shard_plan.ShardSlice` list of ``epoch`` (positions are training rows)."""
        return deal_shards(self.shards, self.train_samples, self.expected, seed=seed, epoch=epoch, world=self.world)

    def epoch_counts(self, epochs: int, seed: int) -> np.ndarray:
        """int64 (world, epochs): every rank's items in every epoch, from one pass over this rank's part of the
        training shards (``shards[rank::world]``) and one exchange of a (world, epochs) matrix.

        The deals of all epochs come from the shard table alone, so the rank that owns a shard reads its weights
        once, draws its copies for every epoch (:func:`pipeline.train.shard_plan.replicate_shard`, the draws the
        loader makes) and adds them to the ranks whose slices hold them; the exchange sums the parts. Memory:
        the deals as arrays, 4 integers per slice and epoch.
        """
        deals = []  # per epoch: (shard, rank, start, stop) int64 arrays, sorted by shard
        for e in range(epochs):
            rows = [(sl.shard, r, sl.start, sl.stop) for r, slices in enumerate(self.deal(e, seed)) for sl in slices]
            arr = np.array(sorted(rows), dtype=np.int64).reshape(-1, 4)
            deals.append(arr)
        part = np.zeros((self.world, epochs), dtype=np.int64)
        for s in self.shards[self.rank :: self.world].tolist():
            weights = self.train_weights(s)
            for e, arr in enumerate(deals):
                lo, hi = np.searchsorted(arr[:, 0], [s, s + 1])
                if lo == hi:
                    continue
                cum = np.concatenate([[0], np.cumsum(replicate_shard(weights, s, seed=seed, epoch=e))])
                for _, r, a, b in arr[lo:hi].tolist():
                    part[r, e] += cum[b] - cum[a]
        return np.sum(np.asarray(self.gather(part), dtype=np.int64).reshape(-1, self.world, epochs), axis=0)

    def epoch_sizes(self, epochs: int, seed: int, batch_size: int) -> list[StepSizes]:
        """Every epoch's batch sizes (:class:`pipeline.train.shard_plan.StepSizes`: steps and every rank's items),
        from every rank's item counts (:meth:`epoch_counts`: one pass over this rank's part of the shards).

        Raises:
            pipeline.errors.ConfigError: an epoch whose items cannot fill its steps on every rank.
        """
        self._counts = self.epoch_counts(epochs, seed)
        self._batch_size = batch_size
        try:
            return [StepSizes.from_counts(self._counts[:, e], batch_size) for e in range(epochs)]
        except ValueError as e:
            raise ConfigError(f"config error at pretrain.batch_size: {e}") from None

    def rank_stream(self, epoch: int, seed: int) -> StreamPlan:
        """This rank's epoch ``epoch`` as a :class:`StreamPlan`: its shard slices and every rank's batch sizes;
        the items are generated shard by shard when the loader reaches them. Call :meth:`epoch_sizes` first.

        Raises:
            RuntimeError: :meth:`epoch_sizes` was not called.
        """
        if self._counts is None:
            raise RuntimeError("call epoch_sizes() before rank_stream()")
        sizes = StepSizes.from_counts(self._counts[:, epoch], self._batch_size)
        return StreamPlan(sizes, epoch, self.rank, seed, self.deal(epoch, seed)[self.rank], self)

    def slice_items(self, sl: ShardSlice, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The items of one slice, in stream order: (keys str (n,), indptr int64 (n+1,), indices int64, copy int64 (n,)),
        item ``i`` having classes ``indices[indptr[i]:indptr[i+1]]`` (sample ``i`` of the slice repeated by its copies).
        """
        sp = self.split(sl.shard, labels=True)
        counts = replicate_shard(sp.weights * self.scale, sl.shard, seed=seed, epoch=epoch)[sl.start : sl.stop]
        keys, indptr, indices = _csr(sp.table.take(pa.array(sp.train[sl.start : sl.stop])))
        item, copy = expand_copies(counts)
        lengths = np.diff(indptr)[item]
        _, within = expand_copies(lengths)  # position of each class inside its item's class list
        new_indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return keys[item], new_indptr, indices[np.repeat(indptr[:-1][item], lengths) + within], copy

    def __getstate__(self) -> dict:
        # DataLoader workers stream slices: they need the table, not the exchange or the held-out set
        return {**self.__dict__, "gather": None, "heldout": None}

    def all_keys(self) -> np.ndarray:
        """str (N,): the keys of every training and held-out sample, in key order (reads every shard's labels:
        for the decoded cache, which is only built for corpora that fit its budget)."""
        out = []
        for s in read_shard_table(self.folder).column("shard").to_numpy():
            sp = self.split(int(s), labels=True)
            keep = np.sort(np.concatenate([sp.train, sp.held]))
            out.append(np.asarray(sp.table.column("key").take(pa.array(keep)).to_pylist(), dtype=str))
        return np.concatenate(out) if out else np.zeros(0, dtype=str)
