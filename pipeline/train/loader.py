"""The streaming training loader over the canonical shards (WebDataset tars).

The data path is a chain of small stages, each testable alone: the epoch plan fixes which
items each rank and batch get (pretraining: the shard-level plan of :mod:`pipeline.train.shard_samples`,
whose items each worker generates shard slice by shard slice; held-out evaluation, tests and benchmarks: the
whole-corpus plan of :mod:`pipeline.train.epoch_plan` over a :class:`SampleIndex`); then, in each
DataLoader worker,

    the rank's items in stream order (key, classes, copy, shard, byte offset of the image member:
    :func:`pipeline.io.shards.member_offsets`, from the shard index ingest wrote) -> the seeded shuffle
    buffer (webdataset's algorithm with a private RNG, :func:`shuffle_items`) -> batches of the plan's
    sizes, this worker's only (skipping those already trained on: resume) -> each image member read by
    offset -> decode + augment -> collate.

Every worker runs the same item stream and buffer (cheap: no image is read for another worker's
batch), so worker ``w`` of ``W`` keeps batches ``b`` with ``(b - skip) % W == w``; PyTorch's
DataLoader returns worker batches round-robin, so batches arrive in plan order and a resumed run
sees exactly the batches an uninterrupted one would (the maintainer of webdataset does
not support exact mid-epoch resume; this loader does). A worker reads only its own
items' bytes: reading every tar in every worker and keeping 1/W of the batches paid the
tar parsing W times (benchmarks/RESULTS.md, loader).

Augmentation (train; the transforms are :mod:`pipeline.vision.transforms`, shared with
transfer): random-resized crop (scale 0.08-1, ratio 3/4-4/3, torchvision's algorithm) to
``image_size`` px and horizontal flip, seeded per item by (seed, epoch, key, copy), so it
does not depend on the worker count. Eval: resize the shorter side to
``image_size * 256/224`` then centre crop (the WSL models' eval recipe).
Images leave the workers as uint8 and :func:`normalize` runs on the device (4x less to copy
to a GPU); on a CPU device the workers normalize (``normalize_in_workers``): the main
process's elementwise passes on torch's thread pool, while the workers hold the cores, cost
about 0.5 ms of CPU per image in barrier waits (benchmarks/RESULTS.md, loader).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import random
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Mapping, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.io.shards import member_offsets, read_exact
from pipeline.seeding import item_seed
from pipeline.train.epoch_plan import EpochPlan, SampleIndex, make_epoch_plan
from pipeline.train.shard_samples import StreamPlan
from pipeline.vision.transforms import decode, eval_transform, normalize, train_transform

log = logging.getLogger(__name__)
T = TypeVar("T")


def shuffle_items(items: Iterable[T], rng: random.Random, buffer: int) -> Iterator[T]:
    """``items`` through a shuffle buffer of ``buffer`` items (webdataset's ``shuffle`` algorithm: fill the
    buffer, swap a random slot with the last, emit it; shuffle the rest at the end), holding at most
    ``buffer`` items at a time."""
    if buffer <= 1:
        yield from items
        return
    buf: list[T] = []
    for it in items:
        buf.append(it)
        if len(buf) >= buffer:
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def shuffle_order(n: int, rng: random.Random, buffer: int) -> np.ndarray:
    """The output order of :func:`shuffle_items` over ``n`` items: int64 (n,) positions."""
    return np.fromiter(shuffle_items(range(n), rng, buffer), dtype=np.int64, count=n)


class MemberReader:
    """Byte ranges of shard tars by shard number, each tar's file kept open. A context manager:
    the files are closed on exit. The offsets come from the plan (:meth:`ShardStream.set_epoch`
    looked them up), so no shard index is read here: a worker reads only image bytes.

    ``read`` raises ``RuntimeError`` when fewer bytes than asked are left (a truncated shard)."""

    def __init__(self, shards: dict[int, str]) -> None:
        self.shards = shards
        self._files: dict[int, BinaryIO] = {}

    def read(self, shard: int, offset: int, size: int) -> bytes:
        fh = self._files.get(shard)
        if fh is None:
            fh = self._files[shard] = open(self.shards[shard], "rb")
        return read_exact(fh, offset, size, self.shards[shard])

    def __enter__(self) -> MemberReader:
        return self

    def __exit__(self, *exc) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


class ShardStream(IterableDataset):
    """One rank's batches for one epoch, as an IterableDataset for ``DataLoader(batch_size=None)``.

    ``index``: a :class:`SampleIndex` (every rank plans the whole index with
    :func:`pipeline.train.epoch_plan.make_epoch_plan`; held-out evaluation, tests, benchmarks), or a callable
    ``epoch -> StreamPlan`` (pretraining: :meth:`pipeline.train.shard_samples.ShardSamples.rank_stream`), called
    by :meth:`set_epoch` in the main process: each worker then generates the rank's items slice by slice and
    streams them through the shuffle buffer, so no process holds the rank's share of the corpus. Both give the
    same batches for the same items (tested).

    With ``decoded`` (a :class:`pipeline.train.decoded_cache.DecodedCache`), images come from the
    decoded copy instead of the tars; the batches are the same bit for bit.

    Yields dicts: ``images`` uint8 (B, 3, S, S) (float32 normalized if ``normalize_in_workers``),
    ``labels`` int64 (B, K) padded with -1, ``keys`` list of B str, ``copies`` list of B int (the copy number of
    each replicated sample), ``step`` int (batch index in the epoch), ``global_batch`` int
    (items in this step over all ranks).

    Call :meth:`set_epoch` before iterating (in the main process; DataLoader workers get
    a copy when the iterator starts, so use non-persistent workers).
    """

    def __init__(
        self,
        shards: Mapping[int, str | Path],
        index: SampleIndex | Callable[[int], StreamPlan],
        *,
        seed: int,
        rank: int,
        world: int,
        batch_size: int,
        image_size: int,
        train: bool = True,
        shuffle_buffer: int = 1000,
        normalize_in_workers: bool = False,
        decoded=None,
    ) -> None:
        super().__init__()
        self.decoded = decoded  # a pipeline.train.decoded_cache.DecodedCache holding every sample, or None: decode the shards
        self.shards = {int(k): str(v) for k, v in shards.items()}
        self._planner = index if callable(index) else None
        self.index = index if isinstance(index, SampleIndex) else None
        self.seed, self.rank, self.world = seed, rank, world
        self.batch_size, self.image_size = batch_size, image_size
        self.train, self.shuffle_buffer = train, shuffle_buffer
        self.normalize_in_workers = normalize_in_workers
        self.plan: EpochPlan | StreamPlan | None = None
        self.skip_batches = 0
        # byte offset and size of each index row's image member, looked up on first use (-1: not yet)
        n = 0 if self.index is None else len(self.index.keys)
        self._row_offset = np.full(n, -1, dtype=np.int64)
        self._row_size = np.full(n, -1, dtype=np.int64)

    def __getstate__(self) -> dict:
        # DataLoader workers get the epoch's plan and index, never the planner (it may hold a process group)
        return {**self.__dict__, "_planner": None}

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> EpochPlan | StreamPlan:
        """Plan ``epoch``; the first ``skip_batches`` batches are skipped without decoding them.

        With a :class:`SampleIndex`, also looks up where each of the rank's items lies in its shard
        (:func:`member_offsets`; a streamed plan's workers look up each shard as they reach it).

        Raises:
            RuntimeError: a planned sample is missing from its shard, or its shard from the run.
        """
        self.skip_batches = skip_batches
        if self._planner is not None:
            self.plan = self._planner(epoch)
            return self.plan
        else:
            assert self.index is not None  # a SampleIndex or a planner (__init__)
            self.plan = make_epoch_plan(self.index, seed=self.seed, epoch=epoch, world=self.world, batch_size=self.batch_size)
        # look up positions in the main process (the shard index, read once per shard per process), so
        # the workers, started fresh every epoch, inherit them instead of scanning the tars again
        if self.decoded is None:
            self._locate(self.plan.rank_items(self.rank)[0])
        return self.plan

    def __len__(self) -> int:
        return 0 if self.plan is None else self.plan.steps - self.skip_batches

    # -- stages -----------------------------------------------------------------------
    def _locate(self, rows: np.ndarray) -> None:
        """Fill the byte offset and size of the image member of every index row in ``rows`` not yet known.

        Raises:
            RuntimeError: a row's shard is not in the run, or the row's sample is not in its shard.
        """
        assert self.index is not None  # set_epoch() set it
        keys, shard_of = self.index.keys, self.index.shard_of
        todo = np.unique(rows[self._row_offset[rows] < 0])
        for s in np.unique(shard_of[todo]):
            s = int(s)
            in_shard = todo[shard_of[todo] == s]
            if s not in self.shards:
                raise RuntimeError(f"rank {self.rank}: shard {s:06d} of planned sample {keys[in_shard[0]]} is not in the run")
            members = member_offsets(self.shards[s])
            for r in in_shard:
                try:
                    self._row_offset[r], self._row_size[r] = members[keys[r]]
                except KeyError:
                    raise RuntimeError(
                        f"rank {self.rank}: planned sample {keys[r]} not found in shard {self.shards[s]} "
                        "(were the shards changed after vocab?)"
                    ) from None

    def _indexed_items(self) -> Iterator[tuple[str, np.ndarray, int, int, int, int]]:
        """The rank's items of an :class:`EpochPlan` in stream order: (key, classes, copy, shard, offset, size)."""
        assert isinstance(self.plan, EpochPlan) and self.index is not None  # set_epoch() made them
        rows, reps = self.plan.rank_items(self.rank)
        idx = self.index
        for r, rep in zip(rows.tolist(), reps.tolist()):
            yield str(idx.keys[r]), idx.classes(r), rep, int(idx.shard_of[r]), int(self._row_offset[r]), int(self._row_size[r])

    def _streamed_items(self) -> Iterator[tuple[str, np.ndarray, int, int, int, int]]:
        """The rank's items of a :class:`StreamPlan`, each shard's member offsets read when it is reached.

        Raises:
            RuntimeError: a planned sample is missing from its shard, or its shard from the run.
        """
        assert isinstance(self.plan, StreamPlan)  # set_epoch() made it
        shard, members = -1, {}
        for key, classes, rep, s in self.plan.items():
            if self.decoded is not None:  # images come from the decoded cache: no offsets
                yield key, classes, rep, s, -1, -1
                continue
            if s != shard:
                if s not in self.shards:
                    raise RuntimeError(f"rank {self.rank}: shard {s:06d} of planned sample {key} is not in the run")
                shard, members = s, member_offsets(self.shards[s])
            try:
                off, size = members[key]
            except KeyError:
                raise RuntimeError(
                    f"rank {self.rank}: planned sample {key} not found in shard {self.shards[s]} "
                    "(were the shards changed after vocab?)"
                ) from None
            yield key, classes, rep, s, off, size

    def _make_batch(self, step: int, items: list, global_batch: int, reader: MemberReader) -> dict:
        assert self.plan is not None  # set_epoch() made it (__iter__ checks)
        images, labels, keys, copies = [], [], [], []
        for key, classes, rep, shard, off, size in items:
            if self.decoded is not None:
                img = Image.fromarray(self.decoded.get(key))
            else:
                img = decode(reader.read(shard, off, size), self.image_size)
            if self.train:
                rng = random.Random(item_seed("aug", self.seed, self.plan.epoch, key, rep))
                images.append(train_transform(img, self.image_size, rng))
            else:
                images.append(eval_transform(img, self.image_size))
            labels.append(classes)
            keys.append(key)
            copies.append(rep)
        k = max(1, max(len(x) for x in labels))
        lab_np = np.full((len(items), k), -1, dtype=np.int64)
        for i, x in enumerate(labels):
            lab_np[i, : len(x)] = x
        lab = torch.from_numpy(lab_np)
        batch = torch.stack(images)
        if self.normalize_in_workers:
            batch = normalize(batch)
        return {"images": batch, "labels": lab, "keys": keys, "copies": copies, "step": step, "global_batch": global_batch}

    def __iter__(self) -> Iterator[dict]:
        if self.plan is None:
            raise RuntimeError("call set_epoch(epoch) before iterating")
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        items = self._indexed_items() if isinstance(self.plan, EpochPlan) else self._streamed_items()
        if self.train:  # the seeded shuffle buffer: every worker runs the same one and keeps its own batches
            rng = random.Random(item_seed("buffer", self.seed, self.plan.epoch, self.rank))
            items = shuffle_items(items, rng, self.shuffle_buffer)
        with MemberReader(self.shards) as reader:
            for step, size in enumerate(self.plan.rank_batch_sizes(self.rank)):
                chunk = list(itertools.islice(items, size))
                if len(chunk) < size:
                    raise RuntimeError(self._mismatch(step))
                if step >= self.skip_batches and (step - self.skip_batches) % nworkers == wid:
                    yield self._make_batch(step, chunk, self.plan.global_batch(step), reader)
            if next(items, None) is not None:
                raise RuntimeError(self._mismatch(self.plan.steps))

    def _mismatch(self, step: int) -> str:
        assert self.plan is not None
        return (
            f"rank {self.rank}: epoch {self.plan.epoch}'s items do not fill its planned batches (step {step}): "
            "were the vocab stage's shard labels changed during the run?"
        )


def _lower_priority(nice: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: raise the worker's niceness by ``nice`` (POSIX; no-op elsewhere)."""
    if nice and hasattr(os, "nice"):
        os.nice(nice)


def make_loader(stream: ShardStream, num_workers: int, pin_memory: bool = False, worker_nice: int = 0) -> DataLoader:
    """A DataLoader over a :class:`ShardStream` (batches are built in the workers).

    Workers are not persistent: each epoch starts fresh workers holding that epoch's
    plan (persistent workers keep stale copies and grow memory at epoch ends). The loader
    draws its workers' base seed from a private generator, not torch's global RNG: a run
    resumed mid-epoch creates one more loader than an uninterrupted one, and must not
    shift the global RNG that the model (and the checkpoints' RNG state) see.

    ``worker_nice`` > 0 lowers the workers' CPU priority: where they share cores with the
    training step (CPU training), the step's threads then are not descheduled by a decoding
    worker while the prefetched batches last.
    """
    generator = torch.Generator().manual_seed(item_seed("dataloader", stream.seed) >> 1)
    init = functools.partial(_lower_priority, worker_nice) if (worker_nice and num_workers) else None
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        generator=generator,
        worker_init_fn=init,
    )


def worker_nice(requested: int | None, device_type: str, decoded: bool) -> int:
    """The loader workers' niceness: ``requested``, or (None) 19 on a CPU training from the decoded cache, else 0.

    From the decoded cache a worker only crops, flips and normalizes (about 0.3 ms of CPU per
    image); at the lowest priority it runs in the gaps the step's threads leave instead of
    preempting them (train step 0.97x the bare loop instead of 0.89x on 2 AVX2 cores,
    benchmarks/train_step). Decoding workers need real CPU share and keep priority 0, as do
    GPU runs, whose workers have cores of their own.
    """
    if requested is not None:
        return int(requested)
    return 19 if (device_type == "cpu" and decoded) else 0


def pretrain_streams(
    shards: Mapping[int, str | Path],
    train_idx: SampleIndex | Callable[[int], StreamPlan],
    held_idx: SampleIndex,
    *,
    pt,
    seed: int,
    rank: int,
    world: int,
    normalize_in_workers: bool,
    decoded=None,
) -> tuple[ShardStream, ShardStream | None]:
    """The pretraining stage's two streams: this rank's training batches and rank 0's held-out batches.

    ``train_idx``: the training samples or this rank's planner (see :class:`ShardStream`); ``held_idx``: the
    held-out samples (empty on ranks that do not evaluate); ``pt``: the pretrain config section (batch_size,
    image_size, shuffle_buffer). The held-out stream (eval transform, batches of ``2 x batch_size``, one rank)
    is None without held-out samples.
    """
    stream = ShardStream(
        shards,
        train_idx,
        seed=seed,
        rank=rank,
        world=world,
        batch_size=pt.batch_size,
        image_size=pt.image_size,
        shuffle_buffer=pt.shuffle_buffer,
        normalize_in_workers=normalize_in_workers,
        decoded=decoded,
    )
    held = (
        ShardStream(
            shards,
            held_idx,
            seed=seed,
            rank=0,
            world=1,
            batch_size=pt.batch_size * 2,
            image_size=pt.image_size,
            train=False,
            decoded=decoded,
        )
        if len(held_idx.keys)
        else None
    )
    return stream, held


def loader_niceness(requested: int | None, device_type: str, decoded: bool, workers: int) -> int:
    """:func:`worker_nice`, logged when the ``workers`` loader workers run at a raised niceness."""
    nice = worker_nice(requested, device_type, decoded)
    if nice and workers:
        log.info(
            "loader workers at niceness +%d (%s)",
            nice,
            "pretrain.worker_nice"
            if requested is not None
            else "auto: CPU training from the decoded cache; set pretrain.worker_nice=0 on a shared machine",
        )
    return nice
