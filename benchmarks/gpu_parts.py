"""The reusable pieces of the GPU check (``tests/gpu``): sizes, training steps, OOM retry, the fixture run's overrides.

The checks themselves are pytest tests under ``tests/gpu`` (one module per part, see
:data:`benchmarks.gpu_check.PART_FILES`); :mod:`benchmarks.gpu_check` runs them and writes
the report and lists the parts and the throughput anchors (it imports no torch);
:mod:`benchmarks.gpu_loops` holds the two throughput loops of part 6. This module is what
they share: the sizes of a GPU run and of the shrunk CPU dry run (:func:`make_sizes`), a few timed training steps
(:func:`train_steps`), the out-of-memory retry (:func:`with_oom_retry`), the pipeline's
precision choice for a forced setting (:func:`choice_for`), and the fixture run's Hydra
overrides and transfer target (:func:`fixture_overrides`, :func:`build_target`).
"""

from __future__ import annotations

import gc
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from hydra import compose, initialize_config_dir

from pipeline.cli import CONF_DIR
from pipeline.errors import ConfigError
from pipeline.system import HardwareFacts
from pipeline.train.precision import PrecisionChoice, resolve_precision
from pipeline.train.targets import batch_soft_targets

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "corpus"

# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """What every part runs at: the GPU check, or the shrunk CPU dry run (sizes in px, counts in images/steps)."""

    device: str
    mini_batch: int = 64  # parts 1-2: resnext_mini steps
    mini_size: int = 64
    mini_steps: int = 5
    mini_warmup: int = 1  # part 2: untimed steps first (cuDNN autotune)
    mini_classes: int = 100
    trial_steps: int = 3  # part 1: make_step_trial of the policy's choice
    trial_warmup: int = 2
    compile_backend: str = "inductor"
    compile_batch: int = 256
    compile_size: int = 64
    compile_steps: int = 10
    compile_warmup: int = 3
    loader_batch: int = 16
    loader_size: int = 224
    loader_workers: int | None = None  # None: the CUDA thread plan's workers (capped at the epoch's batches)
    prep_workers: int = 1  # part 4's in-process ingest and dedup (1: no spawned pool, the same path as the dry run)
    pin_memory: bool = True
    target_classes: int | None = None  # None: all 10 fixture Fashion-MNIST classes
    target_train: int = 5
    target_val: int = 3
    pipe_extra: tuple[str, ...] = ()
    big_models: tuple[tuple[str, str], ...] = (
        ("resnext101_32x8d", "resnext101_32x8d"),
        ("resnext101_32x4d", "resnext101_32x4d"),
    )  # (target, measured)
    big_batch: int = 64
    big_min_batch: int = 8
    big_size: int = 224
    big_precision: str = "bf16"  # part 6 autocast (channels_last always)
    big_classes: int = 1000
    big_steps: int = 25
    big_warmup: int = 5


GPU_PIPE = (
    "ingest.workers=4",
    "dedup.workers=4",
    "pretrain.image_size=64",
    "pretrain.batch_size=16",
    "transfer.batch_size=16",
    "transfer.min_epoch_images=32",
    "transfer.probe_Cs=[0.1,1.0]",
    "transfer.workers=4",
    "energy.enabled=true",
)
DRY_PIPE = (
    "ingest.workers=1",
    "dedup.workers=1",
    "pretrain.image_size=32",
    "pretrain.batch_size=8",
    "pretrain.max_steps=2",
    "pretrain.workers=0",
    "pretrain.threads=1",
    "transfer.batch_size=4",
    "transfer.min_epoch_images=8",
    "transfer.workers=0",
    "transfer.threads=1",
    "transfer.probe_Cs=[1.0]",
    "pretrain.channels_last=true",
    "transfer.channels_last=true",  # one candidate: no CPU precision trial
    "energy.enabled=true",
    "energy.codecarbon=false",
)


def make_sizes(dry: bool, compile_backend: str | None = None, batch: int | None = None) -> Sizes:
    """The GPU sizes, or (``dry``) the same parts shrunk to seconds on a CPU.

    The dry run: 32 px, batches of 4-8, 1-2 timed steps, ``resnext_mini`` in place of the
    ResNeXt-101s, no pinned memory, the ``aot_eager`` compile backend (inductor's C++ build
    takes minutes on a small CPU) and the policy's own choice in part 6 (most CPUs only emulate bf16).
    """
    if not dry:
        return Sizes(device="cuda", compile_backend=compile_backend or "inductor", pipe_extra=GPU_PIPE, big_batch=batch or 64)
    return Sizes(
        device="cpu",
        mini_batch=4,
        mini_size=32,
        mini_steps=1,
        mini_warmup=0,
        mini_classes=10,
        trial_steps=1,
        trial_warmup=1,
        compile_backend=compile_backend or "aot_eager",
        compile_batch=4,
        compile_size=32,
        compile_steps=1,
        compile_warmup=1,
        loader_batch=8,
        loader_size=32,
        loader_workers=1,
        pin_memory=False,
        target_classes=2,
        target_train=3,
        target_val=2,
        pipe_extra=DRY_PIPE,
        big_models=(("resnext101_32x8d", "resnext_mini"), ("resnext101_32x4d", "resnext_mini")),
        big_batch=batch or 4,
        big_min_batch=2,
        big_size=32,
        big_precision="auto",
        big_classes=10,
        big_steps=1,
        big_warmup=1,
    )


# --------------------------------------------------------------------------- device and steps


def sync(dev: torch.device | None) -> None:
    """``torch.cuda.synchronize`` on a CUDA device (timings end only when the kernels have)."""
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)


def free(dev: torch.device | None) -> None:
    """Collect garbage and return the CUDA caching allocator's free blocks."""
    gc.collect()
    if dev is not None and dev.type == "cuda":
        torch.cuda.empty_cache()


def finite(values) -> bool:
    """All of ``values`` (floats) finite."""
    return all(math.isfinite(v) for v in values)


def choice_for(precision: str, channels_last: bool | None, facts: HardwareFacts, dev: torch.device) -> PrecisionChoice:
    """The pipeline's :class:`PrecisionChoice` for ``precision`` on this device.

    On the CPU (dry run) the policy refuses fp16 for training; the same choice is then built
    by hand (torch runs fp16 autocast and a GradScaler on the CPU), so the code path is the same.

    Raises:
        pipeline.errors.ConfigError: the policy refuses ``precision`` on a CUDA device.
    """
    try:
        return resolve_precision(precision, channels_last, facts, where="gpu_check")
    except ConfigError:
        if dev.type != "cpu":
            raise
        return PrecisionChoice(
            precision,
            bool(channels_last),
            grad_scaler=precision == "fp16",
            reason="dry run: built by hand (the policy refuses it on a CPU)",
            device="cpu",
            facts=facts.describe(),
        )


def random_batch(dev: torch.device, batch: int, size: int, classes: int, channels_last: bool, seed: int = 0):
    """Random normalized-like images ``(batch, 3, size, size)`` float32 and 1/k soft targets
    ``(batch, classes)`` (1-3 classes per image), both on ``dev``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, classes, (batch, 3), generator=g)
    labels[:, 1:][torch.rand(batch, 2, generator=g) < 0.5] = -1
    y = batch_soft_targets(labels, classes)
    x = x.to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(dev)


def train_steps(model, opt, x, y, choice, dev, scaler, loss_fn, n: int) -> tuple[list[float], float, Any]:
    """``n`` forward + backward + optimizer steps on one batch, under ``choice``'s autocast.

    Returns (the ``n`` losses as floats, synchronized seconds, the last logits' dtype or None).
    """
    sync(dev)
    t0 = time.perf_counter()
    losses, dtype = [], None
    for _ in range(n):
        with choice.autocast(dev.type):
            logits = model(x)
        dtype = logits.dtype
        loss = loss_fn(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    sync(dev)
    secs = time.perf_counter() - t0
    return ([float(v) for v in torch.stack(losses).cpu()] if losses else []), secs, dtype


def with_oom_retry(fn: Callable[[int], dict], batch: int, min_batch: int, dev: torch.device | None = None) -> dict:
    """``fn(batch)``, halving ``batch`` on CUDA out-of-memory down to ``min_batch``.

    Returns ``fn``'s dict with ``batch`` (the one that ran) and ``oom_batches`` (those that did not fit).

    Raises:
        torch.cuda.OutOfMemoryError: even ``min_batch`` does not fit.
    """
    tried: list[int] = []
    while True:
        oom = False
        try:
            out = fn(batch)
        except torch.cuda.OutOfMemoryError:
            oom = True  # handled below, outside the except block, once the failed frames are released
        if not oom:
            return {**out, "batch": batch, "oom_batches": tried}
        tried.append(batch)
        free(dev)
        if batch // 2 < min_batch:
            raise torch.cuda.OutOfMemoryError(f"out of memory at batch sizes {tried} (min {min_batch})")
        batch //= 2


# --------------------------------------------------------------------------- the fixture run


def merge_overrides(overrides: list[str]) -> list[str]:
    """Hydra overrides with one value per key: a later ``key=value`` replaces an earlier one, in place."""
    out: dict[str, str] = {}
    for o in overrides:
        out[o.split("=", 1)[0]] = o
    return list(out.values())


def compose_config(overrides: list[str]):
    """``conf/config.yaml`` composed with ``overrides`` (Hydra's compose API)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def fixture_overrides(sizes: Sizes, run_dir: Path, work: Path) -> list[str]:
    """Overrides of a run over the committed fixture corpus on ``sizes.device``: ``vocab.kind=raw``
    (no WordNet: ``vocab.wordnet_dir`` is a folder under ``work`` that does not exist), a one-epoch
    ``resnext_mini`` pretraining, then ``sizes.pipe_extra``."""
    dev = sizes.device
    return [
        "data=fixture",
        f"data.cache={FIXTURE}",
        f"run_dir={run_dir}",
        "vocab.kind=raw",
        "vocab.min_count=2",
        "vocab.plot=false",
        f"vocab.wordnet_dir={work / 'no_wordnet'}",
        f"vocab.imagenet_info_dir={work / 'no_imagenet_info'}",
        "ingest.progress=false",
        "dedup.progress=false",
        "vocab.progress=false",
        "ingest.shard_size=16",
        "pretrain.model=resnext_mini",
        "pretrain.epochs=1",
        "pretrain.progress=false",
        "pretrain.heldout_fraction=0.1",
        "pretrain.checkpoint_every_steps=100",
        f"pretrain.device={dev}",
        f"transfer.device={dev}",
        "transfer.low_data_per_class=[2]",
        "transfer.finetune_epochs=1",
        "transfer.progress=false",
        *sizes.pipe_extra,
    ]


def build_target(dst: Path, classes: int | None, train_per_class: int, val_per_class: int) -> dict:
    """A small ImageNet-layout target (``<dst>/{train,val}/<class>/<img>``) copied from the
    fixture's Fashion-MNIST images: the first ``classes`` classes, the first images of each.

    Returns ``{"classes": n, "train": images, "val": images}``.
    """
    src = FIXTURE / "fashion_mnist"
    names = sorted(p.name for p in (src / "train").iterdir() if p.is_dir())[:classes]
    counts = {}
    for split, k in (("train", train_per_class), ("val", val_per_class)):
        n = 0
        for c in names:
            files = sorted(p for p in (src / split / c).iterdir() if p.is_file())[:k]
            (dst / split / c).mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copyfile(f, dst / split / c / f.name)
            n += len(files)
        counts[split] = n
    return {"classes": len(names), **counts}


def transfer_target_overrides(target: Path, name: str = "fashion_mnist") -> list[str]:
    """Overrides that make ``target`` the transfer suite's only target (``transfer.targets.<name>``,
    selected by the ``transfer/target`` config group; conf/transfer/target/fashion_mnist.yaml)."""
    return [f"transfer/target=[{name}]", f"transfer.targets.{name}.root={target}"]
