"""A prepared check of the CUDA paths, for the day a GPU is lent: one command, under 8 minutes.

``python -m benchmarks.gpu_check [--out DIR] [--dry-run] [--budget-s 420] [--only PART ...]``

On a lent machine (an NVIDIA H200 with 16 CPU cores was the one planned for), from a bare
checkout (the check itself needs no internet and no demo data; ``make install`` needs the
packages, from the machine's pip cache or PyPI)::

    make install && .venv/bin/python -m benchmarks.gpu_check

(``--out DIR`` to write the two files elsewhere, e.g. a folder that is copied back.)

It uses only the committed fixture corpus (``tests/fixtures/corpus``) and data made on the
fly, and writes ``gpu_check.json`` (rewritten after every part, so a run cut short still
leaves the parts it finished) and ``gpu_check.md`` (one table, also printed at the end)
into ``--out`` (default ``benchmarks/gpu_check/``). Exit status 0 when no part failed.

Parts, each timed, each in its own ``try`` (a failing part is recorded with its error and
traceback, the next one runs) and each under a time limit:

1. **facts**: :func:`pipeline.train.hardware.pick_device`, :func:`~pipeline.train.hardware.detect_facts`,
   the policy's choice :func:`~pipeline.train.hardware.resolve_precision` ``("auto", None, facts)``
   (bf16 + channels_last + TF32 expected on an H200), :func:`~pipeline.train.hardware.thread_plan`,
   :func:`~pipeline.train.hardware.available_cores`, torch / CUDA / cuDNN versions, GPU name,
   capability and memory; one :func:`~pipeline.train.hardware.make_step_trial` of the chosen setting.
2. **precision**: a few training steps of ``resnext_mini`` (``pipeline.train.models.create_model``,
   the pipeline's optimizer and loss) in bf16 autocast + channels_last, fp16 autocast with a
   ``GradScaler``, and fp32 (TF32); asserts finite losses, the autocast dtype of the logits,
   the channels_last layout of inputs and weights, an enabled scaler with a finite scale.
3. **compile**: ``torch.compile`` (inductor) of the ``resnext_mini`` training step: the
   compile time (first step), img/s after, against eager, and the graph breaks.
4. **pinned_loader**: the fixture corpus through ingest, dedup and vocab (in process), then
   one epoch of :class:`pipeline.train.loader.ShardStream` + :func:`pipeline.train.loader.make_loader`
   ``(pin_memory=True)`` with the CUDA thread plan's workers, each batch copied with
   ``non_blocking=True`` and normalized on the GPU; asserts every batch arrives pinned.
5. **fixture_pipeline**: ``python -m pipeline.run`` over the fixture (``data=fixture``,
   ``vocab.kind=raw vocab.min_count=2``, a one-epoch ``resnext_mini`` pretraining,
   ``pretrain.device=cuda transfer.device=cuda``, energy measured) in a temp run folder, as a
   subprocess with a timeout; the transfer target is a small ImageNet-layout folder built
   from the fixture's Fashion-MNIST images, the suite's only target (``transfer/target=[fashion_mnist]
   transfer.targets.fashion_mnist.root=...``); ``vocab.wordnet_dir`` points at a folder that
   does not exist (``kind=raw`` needs no WordNet). Records each stage's seconds
   (``run/energy.json``) and the pretrain and transfer manifests' ``counts.hardware``.
6. **throughput**: pretraining img/s of ``resnext101_32x8d`` and ``resnext101_32x4d`` at
   224 px, batch 64 (halved on out-of-memory, recorded), bf16 autocast + channels_last,
   warm-up steps dropped, ``torch.cuda.synchronize()`` around the timing:
   (a) a bare loop: random tensors already on the GPU, soft-target cross-entropy,
   SGD with Nesterov momentum; (b) the pipeline's own loop, :func:`pipeline.train.train_loop.train`
   (per step: the uint8 batch from a pinned DataLoader copied ``non_blocking``, normalized
   on the GPU, soft targets, ``loss.item()``, the GradScaler pass-through, the LR schedule,
   a ``metrics.jsonl`` row) driven by an in-memory synthetic stream, so decoding is not
   in it (part 4 times the decoding path); figures from its own metrics rows.
   Both against the published anchors below.

Anchors (other GPUs, other software: a ratio says where we stand, not a goal):

- NVIDIA DeepLearningExamples, ``PyTorch/Classification/ConvNets/resnext101-32x4d/README.md``
  (ResNeXt101-32x4d for PyTorch), training performance, 1 GPU, mixed precision (AMP, NHWC,
  batch 128, DALI data): **908.40 img/s** in the table "NVIDIA DGX A100 (8x A100 40GB)"
  (pytorch-20.06 NGC container); the README's later revision gives **1211 img/s** in
  "NVIDIA DGX A100 (8x A100 80GB)" (pytorch-21.03 container). Both are recorded.
- timm (huggingface/pytorch-image-models) benchmark, ``results/benchmark-train-amp-nhwc-
  pt112-cu113-rtx3090.csv`` (RTX 3090, AMP, channels_last, PyTorch 1.12, batch 128, 224 px):
  ``resnext101_32x8d`` **312.8 img/s** (~313; 276 img/s in the NCHW file, the figure
  :mod:`pipeline.reporting.full_scale` projects from), ``resnext101_32x4d`` 609.0 img/s.

How long: the parts' limits come from ``--budget-s`` (default 420 s, 7 minutes): before each
part the time left is checked; a part that would not fit is recorded as ``skipped``; a part
that runs past its limit is stopped (``timeout``) and the next one runs. On the H200 the
whole check is expected (not yet measured there) to take about 3-5 minutes, most of it the
inductor compile and the fixture pipeline.

``--dry-run`` runs the same code on the CPU with everything shrunk (32 px, batches of 4-8,
1-2 timed steps, ``resnext_mini`` in place of the ResNeXt-101s, ``device=cpu``, no pinned
memory, the ``aot_eager`` compile backend instead of inductor, whose C++ build takes minutes
on a small CPU, the policy's fp32 instead of bf16 in part 6, where most CPUs only emulate
bf16), so the one run on a GPU cannot fail for a trivial reason (imports, argument names,
paths, config keys); ``tests/test_gpu_check.py`` runs it: 36-100 s on 2 shared CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import IterableDataset

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "corpus"
DEFAULT_OUT = REPO / "benchmarks" / "gpu_check"
JSON_NAME = "gpu_check.json"
MD_NAME = "gpu_check.md"
SCHEMA = 1

PART_NAMES = ("facts", "precision", "compile", "pinned_loader", "fixture_pipeline", "throughput")
TITLES = {
    "facts": "facts and the precision policy",
    "precision": "bf16 / fp16+GradScaler / fp32 steps (resnext_mini)",
    "compile": "torch.compile train step vs eager",
    "pinned_loader": "ShardStream + make_loader(pin_memory=True), non_blocking copies",
    "fixture_pipeline": "python -m pipeline.run on the fixture",
    "throughput": "ResNeXt-101 pretraining img/s vs anchors",
}
MD_COLUMNS = ("part", "check", "status", "seconds", "result", "vs anchor")
STATUSES = ("pending", "running", "ok", "failed", "timeout", "skipped")  # a part's "status" in gpu_check.json

ANCHORS = [
    {
        "id": "nvidia_dle_a100_40gb",
        "label": "NVIDIA DLE, A100 40GB",
        "model": "resnext101_32x4d",
        "images_per_second": 908.40,
        "device": "1x A100 40GB (DGX A100)",
        "precision": "AMP fp16, NHWC",
        "batch": 128,
        "image_size": 224,
        "source": "NVIDIA DeepLearningExamples PyTorch/Classification/ConvNets/resnext101-32x4d/README.md, "
        "'Training performance: NVIDIA DGX A100 (8x A100 40GB)', 1 GPU, mixed precision "
        "(pytorch-20.06 NGC container, DALI)",
    },
    {
        "id": "nvidia_dle_a100_80gb",
        "label": "NVIDIA DLE, A100 80GB",
        "model": "resnext101_32x4d",
        "images_per_second": 1211.0,
        "device": "1x A100 80GB (DGX A100)",
        "precision": "AMP fp16, NHWC",
        "batch": 128,
        "image_size": 224,
        "source": "NVIDIA DeepLearningExamples PyTorch/Classification/ConvNets/resnext101-32x4d/README.md (later "
        "revision), 'Training performance: NVIDIA DGX A100 (8x A100 80GB)', 1 GPU, mixed precision "
        "(pytorch-21.03 NGC container)",
    },
    {
        "id": "timm_rtx3090_32x8d",
        "label": "timm, RTX 3090",
        "model": "resnext101_32x8d",
        "images_per_second": 312.8,
        "device": "1x RTX 3090",
        "precision": "AMP, channels_last",
        "batch": 128,
        "image_size": 224,
        "source": "timm (huggingface/pytorch-image-models) results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv",
    },
    {
        "id": "timm_rtx3090_32x4d",
        "label": "timm, RTX 3090",
        "model": "resnext101_32x4d",
        "images_per_second": 609.01,
        "device": "1x RTX 3090",
        "precision": "AMP, channels_last",
        "batch": 128,
        "image_size": 224,
        "source": "timm (huggingface/pytorch-image-models) results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv",
    },
]


def _log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """What every part runs at: the GPU check, or the shrunk CPU dry run."""

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
    # seconds: a part starts only with at least `need` left; it is stopped after `cap`
    need: dict = field(
        default_factory=lambda: {
            "facts": 10,
            "precision": 15,
            "compile": 60,
            "pinned_loader": 20,
            "fixture_pipeline": 60,
            "throughput": 60,
        }
    )
    cap: dict = field(
        default_factory=lambda: {
            "facts": 60,
            "precision": 90,
            "compile": 150,
            "pinned_loader": 90,
            "fixture_pipeline": 200,
            "throughput": 180,
        }
    )


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
    """The GPU sizes, or (``dry``) the same parts shrunk to seconds on a CPU."""
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
        need={k: 1 for k in PART_NAMES},
        cap={k: 240 for k in PART_NAMES},
    )


# --------------------------------------------------------------------------- context and helpers


@dataclass
class Ctx:
    """What the parts share."""

    dry: bool
    sizes: Sizes
    work: Path
    dev: Any = None  # torch.device
    facts: Any = None  # HardwareFacts (part 1; parts detect them again if it failed)
    auto: Any = None  # PrecisionChoice of "auto" (part 1)
    outcome: dict = field(default_factory=dict)


class PartTimeout(BaseException):
    """A part ran past its limit (BaseException: no ``except Exception`` inside a part swallows it)."""


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise :class:`PartTimeout` in the main thread after ``seconds`` (SIGALRM; no-op where unavailable)."""
    if not hasattr(signal, "setitimer") or seconds <= 0:
        yield
        return

    def _fire(signum, frame):
        raise PartTimeout(f"stopped after its limit of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _sync(dev) -> None:
    import torch

    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _free(dev) -> None:
    import torch

    gc.collect()
    if dev is not None and dev.type == "cuda":
        torch.cuda.empty_cache()


def _facts(ctx: Ctx):
    from pipeline.train.hardware import detect_facts

    if ctx.facts is None:
        ctx.facts = detect_facts(ctx.dev)
    return ctx.facts


def _choice(ctx: Ctx, precision: str, channels_last: bool | None = True):
    """The pipeline's :class:`PrecisionChoice` for ``precision`` on this device.

    On the CPU (dry run) the policy refuses fp16 for training; the same choice is then built
    by hand (torch runs fp16 autocast and a GradScaler on the CPU), so the code path is the same.
    """
    from pipeline.config import ConfigError
    from pipeline.train.hardware import PrecisionChoice, resolve_precision

    try:
        return resolve_precision(precision, channels_last, _facts(ctx), where="gpu_check")
    except ConfigError:
        if ctx.dev.type != "cpu":
            raise
        return PrecisionChoice(
            precision,
            bool(channels_last),
            grad_scaler=precision == "fp16",
            reason="dry run: built by hand (the policy refuses it on a CPU)",
            device="cpu",
            facts=_facts(ctx).describe(),
        )


def _random_batch(dev, batch: int, size: int, classes: int, channels_last: bool, seed: int = 0):
    """Random normalized-like images and 1/k soft targets (1-3 classes per image), on ``dev``."""
    import torch

    from pipeline.train.targets import batch_soft_targets

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, classes, (batch, 3), generator=g)
    labels[:, 1:][torch.rand(batch, 2, generator=g) < 0.5] = -1
    y = batch_soft_targets(labels, classes)
    x = x.to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(dev)


def _train_steps(model, opt, x, y, choice, dev, scaler, loss_fn, n: int) -> tuple[list[float], float, Any]:
    """``n`` forward + backward + optimizer steps; (losses, synchronized seconds, last logits' dtype)."""
    import torch

    _sync(dev)
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
    _sync(dev)
    secs = time.perf_counter() - t0
    return ([float(v) for v in torch.stack(losses).cpu()] if losses else []), secs, dtype


def with_oom_retry(fn: Callable[[int], dict], batch: int, min_batch: int, dev=None) -> dict:
    """``fn(batch)``, halving ``batch`` on CUDA out-of-memory down to ``min_batch``.

    Returns ``fn``'s dict with ``batch`` (the one that ran) and ``oom_batches`` (those that did not fit).

    Raises:
        torch.cuda.OutOfMemoryError: even ``min_batch`` does not fit.
    """
    import torch

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
        _free(dev)
        if batch // 2 < min_batch:
            raise torch.cuda.OutOfMemoryError(f"out of memory at batch sizes {tried} (min {min_batch})")
        _log(f"out of memory at batch {batch}; retrying with {batch // 2}")
        batch //= 2


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


class CheckFailed(AssertionError):
    """Some checks of a part failed; ``partial`` is the part's result, recorded anyway."""

    def __init__(self, message: str, partial: dict) -> None:
        super().__init__(message)
        self.partial = partial


def _checks_ok(checks: dict, res: dict) -> None:
    """Raise :class:`CheckFailed` (carrying ``res``) naming the checks that are False."""
    bad = [k for k, v in checks.items() if not v]
    if bad:
        raise CheckFailed("checks failed: " + "; ".join(bad), res)


def merge_overrides(overrides: list[str]) -> list[str]:
    """Hydra overrides with one value per key: a later ``key=value`` replaces an earlier one, in place."""
    out: dict[str, str] = {}
    for o in overrides:
        out[o.split("=", 1)[0]] = o
    return list(out.values())


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from pipeline.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _rel(text: str, ctx: Ctx) -> str:
    """A command or message without this machine's paths (the work folder, the repo)."""
    return str(text).replace(str(ctx.work), "<work>").replace(str(REPO) + os.sep, "").replace(str(REPO), ".")


# --------------------------------------------------------------------------- part 1


def part_facts(ctx: Ctx) -> dict:
    """Facts, the policy's choice, thread plan, versions, GPU memory; one timed trial of the choice."""
    import torch

    from pipeline.train.hardware import available_cores, detect_facts, make_step_trial, resolve_precision, thread_plan
    from pipeline.train.models import create_model

    s = ctx.sizes
    facts = detect_facts(ctx.dev)
    ctx.facts = facts
    auto = resolve_precision("auto", None, facts)
    ctx.auto = auto
    plan = thread_plan(ctx.dev.type, facts.cores)
    res: dict = {
        "device": str(ctx.dev),
        "describe": facts.describe(),
        "facts": asdict(facts),
        "precision_choice": auto.to_dict(),
        "thread_plan": asdict(plan),
        "available_cores": available_cores(),
        "os_cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
    }
    with contextlib.suppress(Exception):
        import torchvision

        res["torchvision"] = torchvision.__version__
    # inductor's GPU kernels (triton) build a small C launcher at run time: a C compiler and Python.h
    import sysconfig

    res["c_compiler"] = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    res["python_h"] = (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()
    with contextlib.suppress(Exception):
        import triton

        res["triton"] = triton.__version__
    if ctx.dev.type == "cuda":
        try:
            props = torch.cuda.get_device_properties(ctx.dev)
            free, _ = torch.cuda.mem_get_info(ctx.dev)
            res.update(
                gpu_name=props.name,
                gpu_capability=f"{props.major}.{props.minor}",
                gpu_memory_gib=round(props.total_memory / 2**30, 2),
                gpu_free_gib=round(free / 2**30, 2),
                gpu_multiprocessors=props.multi_processor_count,
                gpu_count=torch.cuda.device_count(),
                bf16_supported=bool(torch.cuda.is_bf16_supported()),
            )
        except Exception as exc:  # a detail missing must not lose the rest of the facts
            res["gpu_info_error"] = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,power.limit", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            res["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()[:200]
    auto.apply_global()
    trial = make_step_trial(
        lambda: create_model("resnext_mini", num_classes=s.mini_classes),
        batch_size=s.mini_batch,
        image_size=s.mini_size,
        num_classes=s.mini_classes,
        device=ctx.dev,
        steps=s.trial_steps,
        warmup=s.trial_warmup,
    )
    ips = trial(auto.precision, auto.channels_last)
    res["trial_images_per_second"] = round(ips, 1)
    res["trial"] = f"make_step_trial resnext_mini {s.mini_size}px batch {s.mini_batch}, {auto.precision}" + (
        " channels_last" if auto.channels_last else ""
    )
    checks = {"trial img/s > 0": ips > 0, "choice device matches": auto.device == ctx.dev.type}
    if ctx.dev.type == "cuda":
        cap = facts.gpu_capability or (0, 0)
        checks["auto is bf16 on a bf16 GPU"] = (auto.precision == "bf16") == bool(facts.gpu_bf16)
        checks["channels_last on a tensor-core GPU"] = auto.channels_last == (cap >= (7, 0))
        checks["TF32 on sm >= 8.0"] = auto.tf32 == (cap >= (8, 0))
    res["checks"] = checks
    res["summary"] = (
        f"{facts.describe()}; auto -> {auto.precision}{' channels_last' if auto.channels_last else ''}"
        f"{' tf32' if auto.tf32 else ''}; torch {torch.__version__} CUDA {torch.version.cuda}; "
        f"{res.get('gpu_memory_gib', '-')} GiB; trial {ips:.0f} img/s; {plan.workers} workers"
    )
    _checks_ok(checks, res)
    return res


# --------------------------------------------------------------------------- part 2


def part_precision(ctx: Ctx) -> dict:
    """bf16 + channels_last, fp16 + GradScaler, fp32 (TF32): a few steps each of resnext_mini."""
    import torch

    from pipeline.train.losses import make_loss
    from pipeline.train.models import create_model
    from pipeline.train.optim import make_optimizer

    s = ctx.sizes
    loss_fn = make_loss("softmax")
    variants: dict = {}
    checks: dict = {}
    expect = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    for prec in ("bf16", "fp16", "fp32"):
        choice = _choice(ctx, prec, True)
        choice.apply_global()
        torch.manual_seed(0)
        model = create_model("resnext_mini", num_classes=s.mini_classes).to(ctx.dev)
        model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(model, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
        scaler = choice.grad_scaler_for(ctx.dev.type)
        x, y = _random_batch(ctx.dev, s.mini_batch, s.mini_size, s.mini_classes, True)
        _train_steps(model, opt, x, y, choice, ctx.dev, scaler, loss_fn, s.mini_warmup)  # cuDNN autotune
        losses, secs, dtype = _train_steps(model, opt, x, y, choice, ctx.dev, scaler, loss_fn, s.mini_steps)
        v = {
            "losses": [round(x, 5) for x in losses],
            "logits_dtype": str(dtype).replace("torch.", ""),
            "grad_scaler": scaler.is_enabled(),
            "images_per_second": round(s.mini_batch * s.mini_steps / secs, 1),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "choice": choice.to_dict(),
        }
        if scaler.is_enabled():
            v["scale"] = float(scaler.get_scale())
            checks[f"{prec}: scaler scale finite > 0"] = math.isfinite(v["scale"]) and v["scale"] > 0
        checks[f"{prec}: finite losses"] = _finite(losses)
        checks[f"{prec}: logits in {v['logits_dtype']}"] = dtype == expect[prec]
        checks[f"{prec}: input channels_last"] = x.is_contiguous(memory_format=torch.channels_last)
        checks[f"{prec}: weights channels_last"] = model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        checks[f"{prec}: GradScaler enabled iff fp16"] = scaler.is_enabled() == (prec == "fp16")
        if ctx.dev.type == "cuda":
            checks[f"{prec}: TF32 flag as the policy says"] = v["tf32_matmul"] == choice.tf32
        variants[prec] = v
        del model, opt, x, y
        _free(ctx.dev)
    if ctx.auto is not None:
        ctx.auto.apply_global()
    summary = "; ".join(
        f"{p} {v['images_per_second']:.0f} img/s, loss {v['losses'][-1]:.3f}"
        + (f", scale {v['scale']:.0f}" if "scale" in v else "")
        for p, v in variants.items()
    )
    res = {
        "model": "resnext_mini",
        "batch": s.mini_batch,
        "image_size": s.mini_size,
        "steps": s.mini_steps,
        "variants": variants,
        "checks": checks,
        "summary": summary,
    }
    _checks_ok(checks, res)
    return res


# --------------------------------------------------------------------------- part 3


def part_compile(ctx: Ctx) -> dict:
    """torch.compile of the training step (the pipeline compiles the model: ``pretrain.compile=true``)."""
    import torch

    from pipeline.train.losses import make_loss
    from pipeline.train.models import create_model
    from pipeline.train.optim import make_optimizer

    s = ctx.sizes
    choice = ctx.auto or _choice(ctx, "auto", None)
    choice.apply_global()
    loss_fn = make_loss("softmax")
    torch.manual_seed(0)
    model = create_model("resnext_mini", num_classes=s.mini_classes).to(ctx.dev)
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    scaler = choice.grad_scaler_for(ctx.dev.type)
    x, y = _random_batch(ctx.dev, s.compile_batch, s.compile_size, s.mini_classes, choice.channels_last)
    n, b = s.compile_steps, s.compile_batch
    _train_steps(model, opt, x, y, choice, ctx.dev, scaler, loss_fn, s.compile_warmup)
    eager_losses, eager_s, _ = _train_steps(model, opt, x, y, choice, ctx.dev, scaler, loss_fn, n)
    torch._dynamo.reset()
    with contextlib.suppress(Exception):
        torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model, backend=s.compile_backend)
    first_losses, compile_s, _ = _train_steps(compiled, opt, x, y, choice, ctx.dev, scaler, loss_fn, 1)
    _train_steps(compiled, opt, x, y, choice, ctx.dev, scaler, loss_fn, s.compile_warmup)
    comp_losses, comp_s, _ = _train_steps(compiled, opt, x, y, choice, ctx.dev, scaler, loss_fn, n)
    breaks = None
    with contextlib.suppress(Exception):
        breaks = int(sum(torch._dynamo.utils.counters["graph_break"].values()))
    eager_ips, comp_ips = b * n / eager_s, b * n / comp_s
    res = {
        "model": "resnext_mini",
        "backend": s.compile_backend,
        "batch": b,
        "image_size": s.compile_size,
        "precision": choice.precision,
        "channels_last": choice.channels_last,
        "timed_steps": n,
        "compile_seconds_first_step": round(compile_s, 2),
        "eager_images_per_second": round(eager_ips, 1),
        "compiled_images_per_second": round(comp_ips, 1),
        "speedup": round(comp_ips / eager_ips, 3),
        "graph_breaks": breaks,
        "losses": [round(v, 5) for v in eager_losses + first_losses + comp_losses],
    }
    checks = {"finite losses (eager and compiled)": _finite(eager_losses + first_losses + comp_losses)}
    res["checks"] = checks
    res["summary"] = (
        f"{s.compile_backend}: first step (compile) {compile_s:.1f} s; {comp_ips:.0f} img/s compiled vs "
        f"{eager_ips:.0f} eager ({comp_ips / eager_ips:.2f}x); graph breaks {breaks}"
    )
    del compiled, model, opt, x, y
    torch._dynamo.reset()
    _free(ctx.dev)
    _checks_ok(checks, res)
    return res


# --------------------------------------------------------------------------- part 4


def _fixture_overrides(ctx: Ctx, run_dir: Path) -> list[str]:
    s = ctx.sizes
    dev = s.device
    return [
        "data=fixture",
        f"data.cache={FIXTURE}",
        f"run_dir={run_dir}",
        "vocab.kind=raw",
        "vocab.min_count=2",
        "vocab.plot=false",
        f"vocab.wordnet_dir={ctx.work / 'no_wordnet'}",
        f"vocab.imagenet_info_dir={ctx.work / 'no_imagenet_info'}",
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
        *s.pipe_extra,
    ]


def part_pinned_loader(ctx: Ctx) -> dict:
    """Shards of the fixture (ingest, dedup, vocab in process), one epoch of the pinned loader."""
    import torch

    from pipeline.io.shards import shard_paths
    from pipeline.run import run_pipeline
    from pipeline.train.hardware import thread_plan
    from pipeline.train.loader import ShardStream, make_loader
    from pipeline.train.sample_split import build_indexes
    from pipeline.vision.transforms import normalize

    s = ctx.sizes
    run_dir = ctx.work / "loader_run"
    t0 = time.perf_counter()
    cfg = _compose(
        merge_overrides(
            _fixture_overrides(ctx, run_dir)
            + [
                "run.stages=[ingest,dedup,vocab]",
                "run.report=false",
                "energy.enabled=false",
                f"ingest.workers={s.prep_workers}",
                f"dedup.workers={s.prep_workers}",
            ]
        )
    )
    stages = run_pipeline(cfg)["stages"]
    prep_s = time.perf_counter() - t0
    train_idx, _, labels = build_indexes(run_dir, "sqrt", 0.0)
    shards = {int(p.stem): p for p in shard_paths(run_dir)}
    stream = ShardStream(
        shards,
        train_idx,
        seed=0,
        rank=0,
        world=1,
        batch_size=s.loader_batch,
        image_size=s.loader_size,
        normalize_in_workers=False,
    )
    plan = stream.set_epoch(0)
    workers = (
        s.loader_workers
        if s.loader_workers is not None
        else max(1, min(thread_plan(ctx.dev.type, _facts(ctx).cores).workers, plan.steps))
    )
    pin = s.pin_memory and ctx.dev.type == "cuda"
    loader = make_loader(stream, workers, pin_memory=pin)
    n_img = n_batches = pinned = 0
    first_s = None
    checksum = torch.zeros((), device=ctx.dev)
    _sync(ctx.dev)
    t1 = time.perf_counter()
    for batch in loader:
        if first_s is None:
            first_s = time.perf_counter() - t1
        imgs = batch["images"]
        pinned += int(imgs.is_pinned()) if pin else 0
        x = normalize(imgs.to(ctx.dev, non_blocking=True))
        lab = batch["labels"].to(ctx.dev, non_blocking=True)
        checksum += x.float().mean() + (lab >= 0).sum()
        n_img += imgs.shape[0]
        n_batches += 1
    _sync(ctx.dev)
    epoch_s = time.perf_counter() - t1
    total = float(checksum)
    del loader
    res = {
        "prepare_stages": stages,
        "prepare_seconds": round(prep_s, 2),
        "shards": len(shards),
        "samples": int(len(train_idx.keys)),
        "classes": int(labels.num_classes),
        "batch": s.loader_batch,
        "image_size": s.loader_size,
        "workers": workers,
        "pin_memory": pin,
        "batches": n_batches,
        "planned_batches": int(plan.steps),
        "images": n_img,
        "pinned_batches": pinned,
        "first_batch_seconds": round(first_s or 0.0, 3),
        "epoch_seconds": round(epoch_s, 3),
        "images_per_second": round(n_img / epoch_s, 1) if epoch_s > 0 else None,
    }
    checks = {
        "all planned batches arrived": n_batches == plan.steps and n_img > 0,
        "finite device checksum": math.isfinite(total),
    }
    if pin:
        checks["every batch pinned"] = pinned == n_batches
    res["checks"] = checks
    res["summary"] = (
        f"{n_img} images in {n_batches} batches ({s.loader_size} px), {workers} workers, "
        f"pinned {pinned}/{n_batches}: {res['images_per_second']} img/s "
        f"(first batch {first_s or 0:.2f} s); shards prepared in {prep_s:.1f} s"
    )
    _checks_ok(checks, res)
    return res


# --------------------------------------------------------------------------- part 5


def build_target(dst: Path, classes: int | None, train_per_class: int, val_per_class: int) -> dict:
    """A small ImageNet-layout target (``<dst>/{train,val}/<class>/<img>``) copied from the
    fixture's Fashion-MNIST images: the first ``classes`` classes, the first images of each."""
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


def _first(obj, key: str):
    """The first value of ``key`` in nested dicts/lists (depth first), or None."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            found = _first(v, key)
            if found is not None:
                return found
    return None


def _last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"stages"' in line:
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return None


def part_fixture_pipeline(ctx: Ctx, limit_s: float) -> dict:
    """``python -m pipeline.run`` over the fixture, every stage on the check's device, as a subprocess."""
    from pipeline.io.manifest import read_manifest, stage_dir

    s = ctx.sizes
    run_dir = ctx.work / "fixture_run"
    target = ctx.work / "target"
    tgt = build_target(target, s.target_classes, s.target_train, s.target_val)
    overrides = merge_overrides(_fixture_overrides(ctx, run_dir) + transfer_target_overrides(target))
    cmd = [sys.executable, "-m", "pipeline.run", *overrides]
    env = {
        **os.environ,
        "PIPELINE_CACHE_DIR": os.environ.get("PIPELINE_CACHE_DIR") or str(ctx.work / "cache"),
        "HYDRA_FULL_ERROR": "1",
        "PIPELINE_PROGRESS": "off",
    }
    log_file = ctx.work / "fixture_pipeline.log"
    timeout = max(10.0, limit_s - 5.0)
    t0 = time.perf_counter()
    with open(log_file, "w", encoding="utf-8") as fh, open(ctx.work / "fixture_pipeline.out", "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=fh, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException as exc:  # timeout, or the part's deadline: end the whole process group we started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            with contextlib.suppress(Exception):
                exc.partial = {
                    "command": _rel("python -m pipeline.run " + " ".join(overrides), ctx),
                    "wall_seconds": round(time.perf_counter() - t0, 2),
                    "stderr_tail": _rel(log_file.read_text(errors="replace")[-4000:], ctx),
                }
            raise
    wall = time.perf_counter() - t0
    stdout = (ctx.work / "fixture_pipeline.out").read_text(errors="replace")
    stderr = log_file.read_text(errors="replace")
    res: dict = {
        "command": _rel("python -m pipeline.run " + " ".join(overrides), ctx),
        "returncode": rc,
        "wall_seconds": round(wall, 2),
        "target": tgt,
        "wordnet_dir_exists": (ctx.work / "no_wordnet").exists(),
    }
    out = _last_json(stdout)
    res["stages"] = (out or {}).get("stages")
    res["report_written"] = bool((out or {}).get("report")) and (run_dir / "report.md").exists()
    energy_file = run_dir / "run" / "energy.json"
    energy = json.loads(energy_file.read_text()) if energy_file.exists() else {}
    res["stage_seconds"] = {k: v.get("wall_seconds") for k, v in energy.items()}
    res["energy"] = {}
    for k, v in energy.items():
        cc = v.get("codecarbon") if isinstance(v.get("codecarbon"), dict) else {}
        res["energy"][k] = {
            "status": v.get("status"),
            "gpus": v.get("gpus"),
            "estimate_kwh": (v.get("estimate") or {}).get("kwh"),
            "codecarbon_kwh": cc.get("kwh"),
            "codecarbon_gpu_kwh": cc.get("gpu_kwh"),
            "codecarbon_measurement": cc.get("measurement"),
            "codecarbon_error": v.get("codecarbon_error"),
        }
    mans = {st: read_manifest(stage_dir(run_dir, st)) for st in ("ingest", "dedup", "vocab", "pretrain", "transfer")}
    res["manifest_seconds"] = {
        st: round(m["seconds"], 2) if m and m.get("seconds") is not None else None for st, m in mans.items()
    }
    pc = (mans["pretrain"] or {}).get("counts") or {}
    tc = (mans["transfer"] or {}).get("counts") or {}
    res["pretrain"] = {
        k: pc.get(k)
        for k in (
            "device",
            "precision",
            "channels_last",
            "steps",
            "images_per_second",
            "data_wait_fraction",
            "final_loss",
            "num_classes",
            "hardware",
        )
    }
    # (the transfer manifest may hold one block per target: take the first of each key)
    res["transfer"] = {
        k: _first(tc, k) for k in ("device", "rows", "hardware", "linear_probe_pretrained_top1", "finetune_gain_top1")
    }
    res["vocab_kind"] = (((mans["vocab"] or {}).get("config") or {}).get("vocab") or {}).get("kind")
    want = ctx.dev.type
    checks = {
        "exit status 0": rc == 0,
        "every stage ran": res["stages"] == dict.fromkeys(("ingest", "dedup", "vocab", "pretrain", "transfer"), "ran"),
        f"pretrain on {want}": str(pc.get("device", "")).startswith(want),
        f"transfer on {want}": str(res["transfer"]["device"] or "").startswith(want),
        "no WordNet needed (vocab.kind=raw, wordnet_dir absent)": not res["wordnet_dir_exists"],
    }
    if ctx.auto is not None:
        got = ((pc.get("hardware") or {}).get("precision_choice") or {}).get("precision")
        checks[f"pretrain precision = policy's auto ({ctx.auto.precision})"] = got == ctx.auto.precision
    res["checks"] = checks
    if rc != 0:
        res["stderr_tail"] = _rel(stderr[-4000:], ctx)
    secs = ", ".join(f"{k} {v:.1f}" for k, v in res["stage_seconds"].items() if v is not None)
    res["summary"] = (
        f"rc {rc} in {wall:.0f} s; stages s: {secs}; pretrain {pc.get('device')} {pc.get('precision')} "
        f"{pc.get('images_per_second')} img/s; transfer {res['transfer']['device']}, "
        f"{res['transfer']['rows']} rows"
    )
    _checks_ok(checks, res)
    return res


# --------------------------------------------------------------------------- part 6


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
    the same batch dicts (uint8 images, labels padded with -1, keys, step, global_batch),
    cycling over two batches made once in memory, so the loop is timed without decoding."""

    def __init__(self, batch: int, size: int, classes: int, steps: int, seed: int = 0) -> None:
        import torch

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
    """img/s of a bare loop: random inputs on the device, soft-target CE, SGD + Nesterov (no pipeline code but the model)."""
    import torch

    from pipeline.train.models import create_model

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
        _train_steps(model, opt, x, y, choice, dev, scaler, ce, warmup)
        losses, secs, _ = _train_steps(model, opt, x, y, choice, dev, scaler, ce, steps)
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    finally:
        del model, opt, x, y
    return {
        "images_per_second": round(batch * steps / secs, 1),
        "timed_steps": steps,
        "warmup_steps": warmup,
        "losses_finite": _finite(losses),
        "peak_memory_gib": round(peak, 2) if peak else None,
    }


def pipeline_loop(
    model_name: str, batch: int, *, size: int, classes: int, steps: int, warmup: int, dev, choice, work: Path
) -> dict:
    """img/s of :func:`pipeline.train.train_loop.train` over a :class:`SyntheticStream` (steady state from its metrics rows)."""
    import dataclasses

    import torch

    from pipeline.config import PretrainConfig
    from pipeline.train.distributed import DistInfo
    from pipeline.train.losses import make_loss
    from pipeline.train.models import create_model
    from pipeline.train.optim import make_optimizer, make_schedule, scaled_lr
    from pipeline.train.train_loop import LoopSettings, LoopState, train

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
        _sync(dev)
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
        _sync(dev)
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    finally:
        del model, opt, sched, stream
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    steady = [r for r in rows if r["step"] > warmup and r.get("images_per_second")]
    secs = sum(r["images"] / r["images_per_second"] for r in steady)
    return {
        "images_per_second": round(sum(r["images"] for r in steady) / secs, 1) if secs else None,
        "timed_steps": len(steady),
        "warmup_steps": warmup,
        "steps": stats["steps"],
        "data_wait_fraction": round(sum(r["data_wait_fraction"] * r["images"] / r["images_per_second"] for r in steady) / secs, 4)
        if secs
        else None,
        "wall_images_per_second_incl_warmup": round(batch * total / wall, 1),
        "losses_finite": _finite([r["loss"] for r in rows]),
        "final_loss": rows[-1]["loss"] if rows else None,
        "peak_memory_gib": round(peak, 2) if peak else None,
    }


def part_throughput(ctx: Ctx) -> dict:
    """ResNeXt-101 32x8d and 32x4d at 224 px: (a) bare loop, (b) pipeline.train.train_loop.train; vs the anchors."""
    s = ctx.sizes
    choice = _choice(ctx, s.big_precision, True)  # bf16 (the dry run: what the CPU runs fast, without emulation)
    choice.apply_global()
    kw = dict(size=s.big_size, classes=s.big_classes, steps=s.big_steps, warmup=s.big_warmup, dev=ctx.dev, choice=choice)
    models: dict = {}
    rows: list[dict] = []
    checks: dict = {}
    for target, measured in s.big_models:
        m: dict = {"measured_model": measured}
        m["bare"] = with_oom_retry(lambda b: bare_loop(measured, b, **kw), s.big_batch, s.big_min_batch, ctx.dev)  # noqa: B023 (called here)
        _free(ctx.dev)
        b_pipe = m["bare"]["batch"]
        m["pipeline"] = with_oom_retry(
            lambda b: pipeline_loop(measured, b, work=ctx.work, **kw),  # noqa: B023 (called here)
            b_pipe,
            s.big_min_batch,
            ctx.dev,
        )
        _free(ctx.dev)
        bare, pipe = m["bare"]["images_per_second"], m["pipeline"]["images_per_second"]
        m["pipeline_over_bare"] = round(pipe / bare, 3) if bare and pipe else None
        checks[f"{target}: finite losses"] = m["bare"]["losses_finite"] and m["pipeline"]["losses_finite"]
        m["vs_anchors"] = {}
        for a in ANCHORS:
            if a["model"] != target:
                continue
            comparable = measured == target
            m["vs_anchors"][a["id"]] = {
                "label": a["label"],
                "anchor_images_per_second": a["images_per_second"],
                "bare_ratio": round(bare / a["images_per_second"], 3) if comparable and bare else None,
                "pipeline_ratio": round(pipe / a["images_per_second"], 3) if comparable and pipe else None,
            }
        models[target] = m
        name = target if measured == target else f"{target} (dry run: {measured})"
        for kind in ("bare", "pipeline"):
            r = m[kind]
            vs = [
                f"{v[f'{kind}_ratio']:.2f}x {v['label']} ({v['anchor_images_per_second']:g} img/s)"
                for v in m["vs_anchors"].values()
                if v[f"{kind}_ratio"] is not None
            ]
            what = "bare loop" if kind == "bare" else "pipeline.train.train_loop.train"
            rows.append(
                {
                    "check": f"{name}, {what}",
                    "status": "ok",
                    "result": f"{r['images_per_second']} img/s (batch {r['batch']}"
                    + (f", OOM at {r['oom_batches']}" if r["oom_batches"] else "")
                    + (f", {r['peak_memory_gib']} GiB peak" if r.get("peak_memory_gib") else "")
                    + (f", {m['pipeline_over_bare']:.2f}x bare" if kind == "pipeline" and m["pipeline_over_bare"] else "")
                    + ")",
                    "vs_anchor": "; ".join(vs) if vs else ("n/a (dry run)" if ctx.dry else "-"),
                }
            )
    res = {
        "precision": choice.precision,
        "channels_last": choice.channels_last,
        "image_size": s.big_size,
        "batch_requested": s.big_batch,
        "classes": s.big_classes,
        "timed_steps": s.big_steps,
        "warmup_steps": s.big_warmup,
        "models": models,
        "rows": rows,
        "checks": checks,
        "pipeline_measure": "pipeline.train.train_loop.train over an in-memory synthetic stream (workers=0, "
        "pin_memory on CUDA); steady state from its metrics.jsonl rows after the warm-up steps",
        "anchors": ANCHORS,
    }
    res["summary"] = "; ".join(
        f"{t}: bare {m['bare']['images_per_second']}, pipeline {m['pipeline']['images_per_second']} img/s"
        for t, m in models.items()
    )
    _checks_ok(checks, res)
    return res


# --------------------------------------------------------------------------- report


def _fmt_s(v) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "-"


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_md(doc: dict) -> str:
    """The one table of ``gpu_check.md`` (a header line with the machine, then a row per part,
    and a row per throughput measurement)."""
    facts = (doc["parts"].get("facts") or {}).get("result") or {}
    head = [
        f"# GPU check{' (dry run, CPU)' if doc['dry_run'] else ''}",
        "",
        f"{doc.get('started_at', '')}; device {doc.get('device')}; {facts.get('describe', '')}; torch "
        f"{doc.get('torch')} (CUDA {doc.get('torch_cuda')}); budget {doc['budget_s']:.0f} s, elapsed "
        f"{doc.get('elapsed_s', 0):.0f} s; {'complete' if doc.get('complete') else 'incomplete'}. "
        f"Command: `{doc.get('command')}`",
        "",
    ]
    lines = ["| " + " | ".join(MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
    for name in PART_NAMES:
        p = doc["parts"][name]
        res = p.get("result") or {}
        result = res.get("summary") or p.get("error") or p.get("reason") or ""
        if p.get("error") and res.get("summary"):
            result = f"{res['summary']} -- {p['error']}"
        lines.append(
            "| "
            + " | ".join(
                _md_cell(c) for c in (f"{p['part']} {name}", p["title"], p["status"], _fmt_s(p.get("seconds")), result, "")
            )
            + " |"
        )
        for r in res.get("rows") or []:
            lines.append(
                "| "
                + " | ".join(
                    _md_cell(c) for c in (f"{p['part']} {name}", r["check"], r["status"], "", r["result"], r["vs_anchor"])
                )
                + " |"
            )
    notes = [
        "",
        "Anchors: "
        + "; ".join(
            f"{a['model']} {a['images_per_second']:g} img/s on {a['device']} "
            f"({a['precision']}, batch {a['batch']}): {a['source']}"
            for a in ANCHORS
        ),
    ]
    return "\n".join(head + lines + notes) + "\n"


def _write(doc: dict, out: Path) -> None:
    from pipeline.io.atomic import write_text

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / JSON_NAME, json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")
    write_text(out / MD_NAME, render_md(doc))


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default=str(DEFAULT_OUT), help="folder for gpu_check.json and gpu_check.md (default benchmarks/gpu_check/)"
    )
    ap.add_argument("--dry-run", action="store_true", help="the same parts on the CPU, shrunk to about a minute")
    ap.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of all parts (default 420 s)")
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="PART",
        help=f"run only these parts (names or numbers: {', '.join(PART_NAMES)})",
    )
    ap.add_argument("--batch", type=int, default=None, help="throughput batch size (default 64; 4 in a dry run)")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; aot_eager in a dry run)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder (run folders, logs)")
    return ap.parse_args(argv)


def _selected(only: list[str] | None) -> list[str]:
    if not only:
        return list(PART_NAMES)
    out = []
    for o in only:
        if o.isdigit() and 1 <= int(o) <= len(PART_NAMES):
            out.append(PART_NAMES[int(o) - 1])
        elif o in PART_NAMES:
            out.append(o)
        else:
            raise SystemExit(f"error: unknown part {o!r}; parts are {', '.join(PART_NAMES)} (or 1-{len(PART_NAMES)})")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    t_start = time.monotonic()
    out = Path(args.out)
    selected = _selected(args.only)
    sizes = make_sizes(args.dry_run, args.compile_backend, args.batch)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    os.environ.setdefault("PIPELINE_CACHE_DIR", str(work / "cache"))
    cmd = "python -m benchmarks.gpu_check" + (
        " " + " ".join(argv if argv is not None else sys.argv[1:]) if (argv if argv is not None else sys.argv[1:]) else ""
    )
    ctx = Ctx(dry=args.dry_run, sizes=sizes, work=work)
    doc: dict = {
        "schema": SCHEMA,
        "tool": "benchmarks.gpu_check",
        "command": _rel(cmd, ctx).replace(str(out), "<out>"),
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "started_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "finished_at": None,
        "elapsed_s": 0.0,
        "complete": False,
        "device": None,
        "torch": None,
        "torch_cuda": None,
        "sizes": {k: v for k, v in asdict(sizes).items() if k not in ("need", "cap")},
        "parts": {
            n: {
                "part": i + 1,
                "title": TITLES[n],
                "status": "pending",
                "seconds": None,
                "limit_s": None,
                "result": None,
                "error": None,
            }
            for i, n in enumerate(PART_NAMES)
        },
        "anchors": ANCHORS,
    }
    rc = 0
    try:
        import torch

        from pipeline.train.hardware import pick_device

        doc["torch"], doc["torch_cuda"] = torch.__version__, torch.version.cuda
        try:
            ctx.dev = pick_device(sizes.device)
            doc["device"] = str(ctx.dev)
        except Exception as exc:  # no CUDA on a GPU run: nothing can run; say so in the outputs
            hint = f"torch {torch.__version__} is built for CUDA {torch.version.cuda}"
            with contextlib.suppress(Exception):
                smi = subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                hint += f"; nvidia-smi: {(smi.stdout or smi.stderr).strip()[:300]}"
            for n in PART_NAMES:
                doc["parts"][n].update(
                    status="failed" if n == "facts" else "skipped",
                    error=f"{type(exc).__name__}: {exc} ({hint})" if n == "facts" else None,
                    reason=None if n == "facts" else "no device (see part 1); --dry-run runs on the CPU",
                )
            rc = 1
            selected = []
        _write(doc, out)
        for i, name in enumerate(PART_NAMES):
            p = doc["parts"][name]
            if name not in selected:
                if p["status"] == "pending":
                    p.update(status="skipped", reason="not selected (--only)")
                continue
            elapsed = time.monotonic() - t_start
            remaining = args.budget_s - elapsed
            need = sizes.need[name]
            reserve = sum(sizes.need[n] for n in PART_NAMES[i + 1 :] if n in selected)
            if remaining < need:
                p.update(
                    status="skipped",
                    reason=f"would not fit: needs ~{need} s, {max(0, remaining):.0f} s of the {args.budget_s:.0f} s budget left",
                )
                _log(f"part {i + 1} {name}: skipped ({p['reason']})")
                _write(doc, out)
                continue
            limit = min(sizes.cap[name], max(need, remaining - reserve))
            p.update(status="running", limit_s=round(limit, 1))
            _write(doc, out)
            _log(f"part {i + 1} {name}: running (limit {limit:.0f} s)")
            t0 = time.perf_counter()
            try:
                with _deadline(limit + (10 if name == "fixture_pipeline" else 0)):
                    res = part_fixture_pipeline(ctx, limit) if name == "fixture_pipeline" else globals()[f"part_{name}"](ctx)
                p.update(status="ok", result=res)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # PartTimeout, subprocess.TimeoutExpired, AssertionError, any error
                timeout = isinstance(exc, (PartTimeout, subprocess.TimeoutExpired))
                p.update(
                    status="timeout" if timeout else "failed",
                    error=_rel(f"{type(exc).__name__}: {exc}", ctx)[:2000],
                    traceback=_rel(traceback.format_exc(), ctx)[-6000:],
                )
                partial = getattr(exc, "partial", None)
                if partial:
                    p["result"] = partial
                rc = 1
            finally:
                p["seconds"] = round(time.perf_counter() - t0, 2)
                with contextlib.suppress(Exception):
                    _free(ctx.dev)
            _log(
                f"part {i + 1} {name}: {p['status']} ({p['seconds']:.1f} s)" + (f": {p['error'][:300]}" if p.get("error") else "")
            )
            doc["elapsed_s"] = round(time.monotonic() - t_start, 1)
            _write(doc, out)
        doc["complete"] = True
    finally:
        doc["elapsed_s"] = round(time.monotonic() - t_start, 1)
        doc["finished_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _write(doc, out)
        if args.keep_work:
            _log(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(render_md(doc), end="")
    return rc


if __name__ == "__main__":
    sys.exit(main())
