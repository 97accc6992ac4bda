"""The two pretraining loops that part 6 of the GPU check times (``tests/gpu/test_throughput.py``).

(a) :func:`bare_loop`: random tensors already on the device, soft-target cross-entropy, SGD
with Nesterov momentum: nothing of the pipeline but the model. (b) :func:`pipeline_loop`:
the pipeline's own loop, :func:`pipeline.train.train_loop.train` (per step: the uint8 batch
from a DataLoader, pinned on CUDA, copied ``non_blocking``, normalized on the device, soft
targets, ``loss.item()``, the GradScaler pass-through, the LR schedule, a ``metrics.jsonl``
row) driven by :class:`SyntheticStream`, an in-memory stream, so decoding is not in it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import IterableDataset

from benchmarks.gpu_parts import finite, sync, train_steps
from pipeline.config import PretrainConfig
from pipeline.train.distributed import DistInfo
from pipeline.train.losses import make_loss
from pipeline.train.models import create_model
from pipeline.train.optim import make_optimizer, make_schedule, scaled_lr
from pipeline.train.train_loop import LoopSettings, LoopState, train


@dataclass
class SyntheticPlan:
    """What :func:`pipeline.train.train_loop.train` reads of an epoch plan: the steps and each step's global batch."""

    epoch: int
    steps: int
    batch: int

    def global_batch(self, step: int) -> int:
        return self.batch


class SyntheticStream(IterableDataset):
    """A stand-in for :class:`pipeline.train.loader.ShardStream` for :func:`pipeline.train.train_loop.train`:
    the same batch dicts (uint8 images ``(batch, 3, size, size)``, labels ``(batch, 3)`` int64
    padded with -1, keys, step, global_batch), cycling over two batches made once in memory."""

    def __init__(self, batch: int, size: int, classes: int, steps: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.seed, self.batch, self.steps = seed, batch, steps
        self.images = [torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g) for _ in range(2)]
        labels = torch.randint(0, classes, (batch, 3), generator=g)
        labels[:, 1:][torch.rand(batch, 2, generator=g) < 0.5] = -1
        self.labels = labels
        self.keys = [f"000000_{i:06d}" for i in range(batch)]
        self.plan: SyntheticPlan | None = None
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> SyntheticPlan:
        self.plan, self.skip = SyntheticPlan(epoch, self.steps, self.batch), skip_batches
        return self.plan

    def __len__(self) -> int:
        return self.steps - self.skip

    def __iter__(self):
        for step in range(self.skip, self.steps):
            yield {
                "images": self.images[step % 2],
                "labels": self.labels,
                "keys": self.keys,
                "step": step,
                "global_batch": self.batch,
            }


def bare_loop(model_name: str, batch: int, *, size: int, classes: int, steps: int, warmup: int, dev, choice) -> dict:
    """img/s of a bare loop over ``batch`` random images of ``size`` px: ``warmup`` untimed steps, then ``steps`` timed.

    Returns ``images_per_second``, ``timed_steps``, ``warmup_steps``, ``losses_finite``,
    ``peak_memory_gib`` (CUDA only, else None).

    Raises:
        torch.cuda.OutOfMemoryError: ``batch`` does not fit (see :func:`benchmarks.gpu_parts.with_oom_retry`).
    """
    torch.manual_seed(0)
    fmt = torch.channels_last if choice.channels_last else torch.contiguous_format
    model = create_model(model_name, num_classes=classes).to(dev).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
    y = torch.softmax(torch.randn(batch, classes, device=dev), dim=1)
    scaler = choice.grad_scaler_for(dev.type)

    def ce(logits, target):
        return -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        train_steps(model, opt, x, y, choice, dev, scaler, ce, warmup)
        losses, secs, _ = train_steps(model, opt, x, y, choice, dev, scaler, ce, steps)
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    finally:
        del model, opt, x, y
    return {
        "images_per_second": round(batch * steps / secs, 1),
        "timed_steps": steps,
        "warmup_steps": warmup,
        "losses_finite": finite(losses),
        "peak_memory_gib": round(peak, 2) if peak else None,
    }


def pipeline_loop(
    model_name: str, batch: int, *, size: int, classes: int, steps: int, warmup: int, dev, choice, work: Path
) -> dict:
    """img/s of :func:`pipeline.train.train_loop.train` over a :class:`SyntheticStream` of ``warmup + steps`` batches.

    The steady state comes from its own ``metrics.jsonl`` rows (written under ``work``) after
    the warm-up steps. Returns ``images_per_second``, ``timed_steps``, ``warmup_steps``,
    ``steps``, ``data_wait_fraction``, ``wall_images_per_second_incl_warmup``,
    ``losses_finite``, ``final_loss``, ``peak_memory_gib`` (CUDA only, else None).

    Raises:
        torch.cuda.OutOfMemoryError: ``batch`` does not fit.
    """
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=classes).to(dev)
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    total = warmup + steps
    peak_lr = scaled_lr(batch, 0.1, 256)
    opt = make_optimizer(model, peak_lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = make_schedule(opt, "cosine", total, 0, peak_lr, peak_lr)
    metrics = work / f"metrics_{model_name}_{batch}.jsonl"
    metrics.unlink(missing_ok=True)
    pt = dataclasses.replace(
        PretrainConfig(), epochs=1, loss="softmax", checkpoint_every_steps=10**9, eval_every_steps=0, progress=False
    )
    settings = LoopSettings(
        pt=pt,
        accum=1,
        total_steps=total,
        num_classes=classes,
        autocast_dtype=choice.autocast_dtype,
        channels_last=choice.channels_last,
        workers=0,
        metrics_file=metrics,
        pin_memory=dev.type == "cuda",
    )
    stream = SyntheticStream(batch, size, classes, total)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        sync(dev)
        t0 = time.perf_counter()
        stats = train(
            model=model,
            ddp_model=model,
            optimizer=opt,
            scheduler=sched,
            loss_fn=make_loss("softmax"),
            stream=stream,
            info=DistInfo(0, 1, 0, dev, None),
            settings=settings,
            state=LoopState(),
            save=lambda st: None,
            run_eval=lambda step: None,
            max_steps=total,
            scaler=choice.grad_scaler_for(dev.type),
        )
        sync(dev)
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    finally:
        del model, opt, sched, stream
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    steady = [r for r in rows if r["step"] > warmup and r.get("images_per_second")]
    secs = sum(r["images"] / r["images_per_second"] for r in steady)
    wait = sum(r["data_wait_fraction"] * r["images"] / r["images_per_second"] for r in steady)
    return {
        "images_per_second": round(sum(r["images"] for r in steady) / secs, 1) if secs else None,
        "timed_steps": len(steady),
        "warmup_steps": warmup,
        "steps": stats["steps"],
        "data_wait_fraction": round(wait / secs, 4) if secs else None,
        "wall_images_per_second_incl_warmup": round(batch * total / wall, 1),
        "losses_finite": finite([r["loss"] for r in rows]),
        "final_loss": rows[-1]["loss"] if rows else None,
        "peak_memory_gib": round(peak, 2) if peak else None,
    }
