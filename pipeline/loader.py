"""The streaming training loader over the canonical shards (WebDataset tars).

The data path is a chain of small stages, each testable alone (the webdataset /
open_clip style): the epoch plan fixes which items each rank and batch get
(:mod:`pipeline.epoch_plan`); then, in each DataLoader worker,

    rank's shards in plan order -> tar reading (``webdataset.tarfile_to_samples``)
    -> match keys to the plan (skip unlabelled, removed and held-out samples; repeat
       replicated ones) -> seeded shuffle buffer -> keep this worker's batches, skip the
       batches already trained on (resume, before any decoding) -> decode + augment
    -> collate.

Worker ``w`` of ``W`` builds batches ``b`` with ``(b - skip) % W == w``; PyTorch's DataLoader
returns worker batches round-robin, so batches arrive in plan order and a resumed run
sees exactly the batches an uninterrupted one would (the maintainer of webdataset does
not support exact mid-epoch resume; this loader does).

Augmentation (train): random-resized crop (scale 0.08-1, ratio 3/4-4/3, torchvision's
algorithm) to ``image_size`` px and horizontal flip, seeded per item by
(seed, epoch, key, copy), so it does not depend on the worker count. Eval: resize the
shorter side to ``image_size * 256/224`` then centre crop (the WSL models' eval recipe).
Images leave the workers as uint8 and :func:`normalize` runs on the device (4x less to copy
to a GPU); on a CPU device the workers normalize (``normalize_in_workers``): the main
process's elementwise passes on torch's thread pool, while the workers hold the cores, cost
about 0.5 ms of CPU per image in barrier waits (benchmarks/RESULTS.md, loader).
"""

from __future__ import annotations

import hashlib
import io
import math
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.epoch_plan import EpochPlan, SampleIndex, make_epoch_plan
from pipeline.shards import IMAGE_MEMBER_EXTS

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def item_seed(*parts) -> int:
    """A 64-bit seed from any parts (stable across processes and Python runs)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def heldout_mask(keys: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic held-out split by key hash: about ``fraction`` of samples are True.

    The split depends only on the key, never on the seed, so every run and sweep holds
    out the same samples.
    """
    if fraction <= 0:
        return np.zeros(len(keys), dtype=bool)
    cut = int(fraction * 10_000)
    return np.array([item_seed("heldout", k) % 10_000 < cut for k in keys], dtype=bool)


def rrc_box(width: int, height: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Random-resized-crop box (left, top, right, bottom) in px: torchvision's algorithm.

    Ten tries at a random area fraction in ``scale`` and log-uniform aspect ratio in
    ``ratio``; else the centre crop clamped to ``ratio`` (Szegedy et al. 2015 augmentation).
    """
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def decode(blob: bytes, size: int) -> Image.Image:
    """Decode a shard image to RGB (JPEG drafted to >= 2x ``size`` px for speed)."""
    img = Image.open(io.BytesIO(blob))
    if img.format == "JPEG":
        img.draft("RGB", (2 * size, 2 * size))
    return img.convert("RGB")


def train_transform(img: Image.Image, size: int, rng: random.Random) -> torch.Tensor:
    """Random-resized crop + flip: uint8 tensor (3, size, size)."""
    box = rrc_box(img.width, img.height, rng)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1)


def eval_transform(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to size*256/224 px, centre crop: uint8 tensor (3, size, size)."""
    short = max(size, round(size * 256 / 224))
    scale = short / min(img.width, img.height)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    out = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 normalized with the ImageNet mean and std, on its device.

    A floating-point batch is taken as already normalized (by the loader workers,
    ``ShardStream(normalize_in_workers=True)``) and returned unchanged.
    """
    if images.is_floating_point():
        return images
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float().div_(255.0) - mean) / std


class ShardStream(IterableDataset):
    """One rank's batches for one epoch, as an IterableDataset for ``DataLoader(batch_size=None)``.

    Yields dicts: ``images`` uint8 (B, 3, S, S) (float32 normalized if ``normalize_in_workers``), ``labels`` int64 (B, K) padded with -1,
    ``keys`` list of B str, ``step`` int (batch index in the epoch), ``global_batch`` int
    (items in this step over all ranks).

    Call :meth:`set_epoch` before iterating (in the main process; DataLoader workers get
    a copy when the iterator starts, so use non-persistent workers).
    """

    def __init__(self, shards: dict[int, str | Path], index: SampleIndex, *, seed: int, rank: int, world: int,
                 batch_size: int, image_size: int, train: bool = True, shuffle_buffer: int = 1000,
                 normalize_in_workers: bool = False) -> None:
        super().__init__()
        self.shards = {int(k): str(v) for k, v in shards.items()}
        self.index = index
        self.seed, self.rank, self.world = seed, rank, world
        self.batch_size, self.image_size = batch_size, image_size
        self.train, self.shuffle_buffer = train, shuffle_buffer
        self.normalize_in_workers = normalize_in_workers
        self.plan: EpochPlan | None = None
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> EpochPlan:
        """Plan ``epoch``; the first ``skip_batches`` batches are skipped without decoding."""
        self.plan = make_epoch_plan(self.index, seed=self.seed, epoch=epoch, world=self.world,
                                    batch_size=self.batch_size)
        self.skip_batches = skip_batches
        return self.plan

    def __len__(self) -> int:
        return 0 if self.plan is None else self.plan.steps - self.skip_batches

    # -- stages -----------------------------------------------------------------------
    def _matched(self, rows: np.ndarray, reps: np.ndarray) -> Iterator[tuple[int, int, dict]]:
        """Tar samples matched to the plan's items in order: (row, copy, sample)."""
        keys = self.index.keys
        shard_seq = []
        for r in rows:
            s = int(self.index.shard_of[r])
            if not shard_seq or shard_seq[-1] != s:
                shard_seq.append(s)
        pos = 0
        urls = [self.shards[s] for s in shard_seq]
        samples = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
        for sample in samples:
            if pos >= len(rows):
                break
            while pos < len(rows) and sample["__key__"] == keys[rows[pos]]:
                yield int(rows[pos]), int(reps[pos]), sample
                pos += 1
        if pos != len(rows):
            raise RuntimeError(f"rank {self.rank}: {len(rows) - pos} planned samples not found in shards "
                               f"(first missing key {keys[rows[pos]]}); were the shards changed after vocab?")

    def _shuffled(self, items: Iterator) -> Iterator:
        """A seeded shuffle buffer (webdataset's algorithm with a private RNG)."""
        if not self.train or self.shuffle_buffer <= 1:
            yield from items
            return
        rng = random.Random(item_seed("buffer", self.seed, self.plan.epoch, self.rank))
        buf: list = []
        for it in items:
            buf.append(it)
            if len(buf) >= self.shuffle_buffer:
                j = rng.randrange(len(buf))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def _make_batch(self, step: int, items: list, global_batch: int) -> dict:
        images, labels, keys = [], [], []
        for row, rep, sample in items:
            key = sample["__key__"]
            ext = next(e for e in IMAGE_MEMBER_EXTS if e in sample)
            img = decode(sample[ext], self.image_size)
            if self.train:
                rng = random.Random(item_seed("aug", self.seed, self.plan.epoch, key, rep))
                images.append(train_transform(img, self.image_size, rng))
            else:
                images.append(eval_transform(img, self.image_size))
            labels.append(self.index.classes(row))
            keys.append(key)
        k = max(1, max(len(x) for x in labels))
        lab = torch.full((len(items), k), -1, dtype=torch.int64)
        for i, x in enumerate(labels):
            lab[i, : len(x)] = torch.from_numpy(np.asarray(x, dtype=np.int64))
        batch = torch.stack(images)
        if self.normalize_in_workers:
            batch = normalize(batch)
        return {"images": batch, "labels": lab, "keys": keys, "step": step, "global_batch": global_batch}

    def __iter__(self) -> Iterator[dict]:
        if self.plan is None:
            raise RuntimeError("call set_epoch(epoch) before iterating")
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        rows, reps = self.plan.rank_items(self.rank)
        sizes = self.plan.batch_sizes[self.rank]
        ends = np.cumsum(sizes)
        step, pending = 0, []
        for pos, item in enumerate(self._shuffled(self._matched(rows, reps))):
            while pos >= ends[step]:
                step += 1
            if step < self.skip_batches or (step - self.skip_batches) % nworkers != wid:
                continue
            pending.append(item)
            if len(pending) == sizes[step]:
                yield self._make_batch(step, pending, self.plan.global_batch(step))
                pending = []


def make_loader(stream: ShardStream, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over a :class:`ShardStream` (batches are built in the workers).

    Workers are not persistent: each epoch starts fresh workers holding that epoch's
    plan (persistent workers keep stale copies and grow memory at epoch ends). The loader
    draws its workers' base seed from a private generator, not torch's global RNG: a run
    resumed mid-epoch creates one more loader than an uninterrupted one, and must not
    shift the global RNG that the model (and the checkpoints' RNG state) see.
    """
    generator = torch.Generator().manual_seed(item_seed("dataloader", stream.seed) >> 1)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None, generator=generator)
