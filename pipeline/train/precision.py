"""Precision and memory-layout policy: one place for every stage and the benchmarks.

The fastest numerically sound setting depends on the hardware, and machines differ: on a
CPU with native bf16 (AVX512-BF16 or AMX) bf16 autocast ran ResNeXt about 1.65x faster than
fp32; on an AVX2-only CPU the same autocast is emulated and ran 13x *slower* than fp32
with channels_last (11 vs 142 img/s, resnext_mini, 64 px, batch 64, 2 threads). So
``precision=auto`` never assumes; :func:`resolve_precision` decides from facts and, on
the CPU, from a short timed trial of the actual training step:

- **CUDA**: bf16 autocast where ``torch.cuda.is_bf16_supported()``; else fp16 autocast with
  a gradient scaler (compute capability >= 7.0, tensor cores); else fp32. TF32 matmuls and
  convolutions are allowed on Ampere and newer (capability >= 8.0). channels_last on
  tensor-core GPUs (>= 7.0). No trial: these are the documented fast paths (PyTorch AMP
  and memory-format recipes), and ``python -m benchmarks.gpu_check`` measures them.
- **CPU**: bf16 is a candidate only where oneDNN reports native bf16
  (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``); channels_last and NCHW are both
  candidates when ``channels_last`` is left to ``auto``. Each candidate runs a few
  forward + backward + SGD steps of a fresh copy of the model on random data (like
  ``cudnn.benchmark``); the fastest wins. The verdict is cached per machine, torch
  version, model, image size, batch and thread count (:func:`pipeline.train.precision_trial.cache_file`), so the trial
  (a few seconds) is paid once.

An explicit ``precision=bf16`` on a CPU that only emulates it still runs, with a warning
that gives the measured slowdown. An explicit choice the device cannot run at all (bf16
or fp16 on a GPU without it) is a :class:`pipeline.errors.ConfigError`.

The choice changes results (bf16 and fp32 runs of the same seed differ), so it is
recorded (:meth:`PrecisionChoice.to_dict`) in every manifest and checkpoint, it is part of
the stage key (``pipeline.run``), and a run resumed from a checkpoint keeps the precision
it started with (:func:`resolve_for_run`).

The machine facts it decides from (:class:`pipeline.system.HardwareFacts`), the device and the
split of cores into threads and loader workers (:func:`pipeline.system.thread_plan`) are
:mod:`pipeline.system`'s.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import TypedDict

import torch

from pipeline.errors import ConfigError
from pipeline.system import HardwareFacts, ThreadPlan, detect_facts
from pipeline.train.models import create_model
from pipeline.train.precision_trial import (
    AUTOCAST_DTYPES,
    TRIAL_MARGIN,
    TRIAL_ROUNDS,
    TrialFn,
    cache_file,
    interleaved_trials,
    make_step_trial,
    read_cache,
    write_cache,
)

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# --------------------------------------------------------------------------- facts


# --------------------------------------------------------------------------- threads


# --------------------------------------------------------------------------- precision


@dataclass
class PrecisionChoice:
    """The resolved numeric setting of a stage on one device.

    Attributes:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast dtype; weights stay fp32).
        channels_last: NHWC memory layout for the model and its inputs.
        grad_scaler: fp16 needs a ``torch.amp.GradScaler`` (loss scaling) to keep small gradients.
        tf32: TF32 matmuls/convolutions allowed (CUDA Ampere+).
        reason: why, in words (native support, trial timings, an explicit request, a resumed run).
        trial: candidate -> measured img/s of the trial, when one ran.
        device: ``str(device)``; facts: :meth:`HardwareFacts.describe`.
    """

    precision: str
    channels_last: bool
    grad_scaler: bool = False
    tf32: bool = False
    reason: str = ""
    trial: dict = field(default_factory=dict)
    device: str = "cpu"
    facts: str = ""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """``torch.bfloat16`` / ``torch.float16`` for autocast, None for fp32."""
        return AUTOCAST_DTYPES[self.precision]

    def autocast(self, device_type: str):
        """The autocast context of this choice (a no-op for fp32)."""
        dt = self.autocast_dtype
        return torch.autocast(device_type, dtype=dt or torch.float32, enabled=dt is not None)

    def grad_scaler_for(self, device_type: str) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16 (a pass-through otherwise)."""
        return torch.amp.GradScaler(device_type, enabled=self.grad_scaler)

    def apply_global(self) -> None:
        """Process-wide switches of this choice (TF32 on CUDA)."""
        if self.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.backends.cudnn.benchmark = True

    def key(self) -> dict:
        """The part that changes results (stage keys, checkpoint recipe)."""
        return {"precision": self.precision, "channels_last": self.channels_last, "tf32": self.tf32}

    def to_dict(self) -> dict:
        """JSON-able record for manifests, checkpoints and the report."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PrecisionChoice:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def preferred_candidate(cands: list[tuple[str, bool]], rates: list[float]) -> tuple[str, bool]:
    """The first of ``cands`` (in preference order: fp32 before bf16, channels_last before NCHW) whose trial rate
    (img/s, one per candidate) is within :data:`TRIAL_MARGIN` of the fastest.

    A timed trial of a few interleaved rounds on a shared machine moves by a few percent: taking the faster of
    two candidates that close is a coin flip, and a run's numerics (and its fine-tuning results) would change
    between two runs of the same code. Within the margin the choice is fixed; beyond it the faster one wins.
    """
    fastest = max(rates)
    return next(c for c, r in zip(cands, rates) if r >= fastest / (1 + TRIAL_MARGIN))


def _candidates(facts: HardwareFacts, precision: str, channels_last: bool | None) -> list[tuple[str, bool]]:
    precs = [precision] if precision != "auto" else (["fp32", "bf16"] if facts.cpu_bf16_native else ["fp32"])
    layouts = [channels_last] if channels_last is not None else [True, False]
    return [(p, c) for p in precs for c in layouts]


class _ChoiceWhere(TypedDict):
    """The :class:`PrecisionChoice` fields naming the device and its facts."""

    device: str
    facts: str


def resolve_precision(
    requested: str,
    channels_last: bool | None,
    facts: HardwareFacts,
    *,
    trial: TrialFn | None = None,
    cache_key: dict | None = None,
    use_cache: bool = True,
    where: str = "precision",
) -> PrecisionChoice:
    """Resolve ``precision`` (auto | fp32 | bf16 | fp16) and ``channels_last`` (None = auto) for ``facts``.

    Args:
        requested: the configured precision.
        channels_last: the configured layout; None lets the policy (or trial) choose.
        facts: the machine (:func:`detect_facts`, or mocked).
        trial: times one candidate ``(precision, channels_last) -> img/s`` (:func:`make_step_trial`);
            None skips trials (the facts alone decide; channels_last then defaults to True).
        cache_key: what identifies the model and batch in the trial cache (model, image size,
            batch, threads); the machine's facts and torch version are added.
        where: the config key named in errors and warnings.

    Returns:
        the :class:`PrecisionChoice`.

    Raises:
        pipeline.errors.ConfigError: an unknown precision, or one the device cannot run
            (bf16 on a GPU without bf16, fp16 on a CPU).
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"config error at {where}: must be one of {list(PRECISIONS)}, got {requested!r}")
    dev = "cuda" if facts.device_type == "cuda" else "cpu"
    base: _ChoiceWhere = {"device": dev, "facts": facts.describe()}
    if facts.device_type == "cuda":
        cap = facts.gpu_capability or (0, 0)
        tf32 = cap >= (8, 0)
        cl = channels_last if channels_last is not None else cap >= (7, 0)
        if requested == "bf16" and not facts.gpu_bf16:
            raise ConfigError(f"config error at {where}: bf16 is not supported on {facts.gpu_name}; use auto, fp16 or fp32")
        if requested == "fp16" and cap < (5, 3):
            raise ConfigError(f"config error at {where}: fp16 is not supported on {facts.gpu_name} (sm {cap})")
        if requested == "auto":
            p = "bf16" if facts.gpu_bf16 else ("fp16" if cap >= (7, 0) else "fp32")
            why = {
                "bf16": "GPU supports bf16",
                "fp16": "GPU has fp16 tensor cores but no bf16: fp16 + gradient scaler",
                "fp32": "GPU has neither bf16 nor fp16 tensor cores",
            }[p]
        else:
            p, why = requested, f"{requested} requested"
        return PrecisionChoice(p, cl, grad_scaler=p == "fp16", tf32=tf32, reason=why + ("; TF32 allowed" if tf32 else ""), **base)

    # CPU
    if requested == "fp16":
        raise ConfigError(
            f"config error at {where}: fp16 autocast is not supported for training on the CPU; use auto, bf16 or fp32"
        )
    cands = _candidates(facts, requested, channels_last)
    if requested == "bf16" and not facts.cpu_bf16_native:
        # runs, but say how much slower it is than fp32 on this CPU
        timings = {}
        if trial is not None:
            cl = True if channels_last is None else channels_last
            timings = {
                "bf16" + ("_cl" if cl else ""): round(trial("bf16", cl), 2),
                "fp32" + ("_cl" if cl else ""): round(trial("fp32", cl), 2),
            }
            b, f = timings.values()
            ratio = f"{f / b:.1f}x slower than fp32 ({b:.0f} vs {f:.0f} img/s measured)" if b > 0 else "slower than fp32"
        else:
            ratio = "typically an order of magnitude slower than fp32 (13x measured on an AVX2 CPU)"
        msg = (
            f"{where}=bf16 on a CPU without native bf16 ({facts.cpu_capability}): oneDNN emulates it, {ratio}; "
            f"use {where}=auto or fp32 for speed"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning(msg)
        return PrecisionChoice("bf16", True if channels_last is None else channels_last, reason=msg, trial=timings, **base)
    if len(cands) == 1 or trial is None:
        p, cl = cands[0] if len(cands) == 1 else (cands[0][0], True)
        if requested == "auto" and not facts.cpu_bf16_native:
            why = f"CPU {facts.cpu_capability} has no native bf16: fp32"
        elif requested == "auto":
            why = "native bf16 CPU, no trial: fp32 (bf16 only after a trial shows it is faster)"
        else:
            why = f"{requested} requested"
        return PrecisionChoice(p, cl, reason=why, **base)

    key = json.dumps(
        {
            "torch": torch.__version__,
            "cpu": facts.cpu_model,
            "capability": facts.cpu_capability,
            "bf16_native": facts.cpu_bf16_native,
            "candidates": cands,
            **(cache_key or {}),
        },
        sort_keys=True,
    )
    path = cache_file()
    cached = read_cache(path).get(key) if use_cache else None
    if cached:
        timings = cached["timings"]
        src = "cached"
    else:
        t0 = time.perf_counter()
        timings = interleaved_trials(trial, cands, TRIAL_ROUNDS)
        src = f"measured in {time.perf_counter() - t0:.1f} s"
        if use_cache:
            write_cache(path, key, {"timings": timings, "when": time.strftime("%Y-%m-%d %H:%M:%S")})
    names = [f"{p}{'_cl' if cl else ''}" for p, cl in cands]  # candidate order, also when read from the cache
    timings = {k: timings[k] for k in names}
    best = preferred_candidate(cands, [timings[k] for k in names])
    shown = ", ".join(f"{k} {timings[k]:.0f}" for k in names)
    native = "native bf16" if facts.cpu_bf16_native else "no native bf16"
    why = (
        f"CPU {facts.cpu_capability} ({native}); trial img/s: {shown} -> {best[0]}{' channels_last' if best[1] else ''}"
        f" (the first in that order within {TRIAL_MARGIN:.0%} of the fastest)"
    )
    log.info("%s precision trial (%s, cache %s): %s", where, src, path, why)
    return PrecisionChoice(best[0], best[1], reason=why, trial=timings, **base)


def resolve_for_run(
    requested: str,
    channels_last: bool | None,
    device: torch.device,
    *,
    recorded: dict | None = None,
    trial: TrialFn | None = None,
    cache_key: dict | None = None,
    where: str = "precision",
    facts: HardwareFacts | None = None,
) -> PrecisionChoice:
    """:func:`resolve_precision` for a stage that may be resuming.

    ``recorded`` is the choice stored by an earlier, unfinished run of the same stage (its
    checkpoint): when the config asks for ``auto`` the recorded precision and layout are
    kept, whatever ``auto`` would pick on this machine, so a resumed run continues with the
    numerics it started with. An explicit request equal to the recorded one is kept too.

    Raises:
        pipeline.errors.ConfigError: the recorded precision cannot run on this device (e.g. a
            run started in bf16 on a GPU resumed on a GPU without bf16); the message says to
            start over in a new run folder or with ``run.force``.
    """
    facts = facts or detect_facts(device)
    if recorded and requested in ("auto", recorded.get("precision")):
        prev = PrecisionChoice.from_dict(recorded)
        try:  # can this device run it? (warns where it is emulated)
            resolve_precision(prev.precision, prev.channels_last, facts, trial=None, where=where)
        except ConfigError as exc:
            raise ConfigError(
                f"config error at {where}: this run started in {prev.precision} ({prev.facts}) and cannot "
                f"resume here: {exc}. Start over with run.force=[<stage>] or a new run_dir"
            ) from None
        log.info(
            "%s: the resumed run keeps its %s %s (chosen on %s: %s)",
            where,
            prev.precision,
            "channels_last" if prev.channels_last else "NCHW",
            prev.facts,
            prev.reason,
        )
        return prev  # the record is unchanged, so a resumed run's outputs equal an uninterrupted run's
    return resolve_precision(requested, channels_last, facts, trial=trial, cache_key=cache_key, where=where)


def resolve_for_model(
    requested: str,
    channels_last: bool | None,
    device: torch.device,
    *,
    model: str,
    num_classes: int,
    image_size: int,
    batch_size: int,
    threads: int,
    recorded: dict | None = None,
    where: str = "precision",
) -> PrecisionChoice:
    """:func:`resolve_for_run` with the timed trial of ``model``'s own training step (a fresh
    ``pipeline.train.models.create_model(model, num_classes)``, ``batch_size`` x 3 x ``image_size``^2),
    its verdict cached under (model, image size, batch, threads, classes)."""
    trial = make_step_trial(
        lambda: create_model(model, num_classes=num_classes),
        batch_size=batch_size,
        image_size=image_size,
        num_classes=num_classes,
        device=device,
    )
    return resolve_for_run(
        requested,
        channels_last,
        device,
        recorded=recorded,
        trial=trial,
        where=where,
        cache_key={"model": model, "image_size": image_size, "batch": batch_size, "threads": threads, "classes": num_classes},
    )


def hardware_record(prec: PrecisionChoice, plan: ThreadPlan, device: torch.device) -> dict:
    """The ``counts.hardware`` record of a stage's manifest (read by ``pipeline.run`` and the report)."""
    return {
        "facts": prec.facts,
        "precision_choice": prec.to_dict(),
        "threads": plan.threads,
        "workers": plan.workers,
        "cores": plan.cores,
        "thread_reason": plan.reason,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def describe_choice(prec: PrecisionChoice, plan: ThreadPlan) -> str:
    """One log line: where a stage runs, in which numerics and why, with how many threads and workers."""
    return (
        f"{prec.facts}: {prec.precision} {'channels_last' if prec.channels_last else 'NCHW'} ({prec.reason}); "
        f"{plan.threads} threads, {plan.workers} loader workers ({plan.reason})"
    )


__all__ = [
    "PrecisionChoice",
    "describe_choice",
    "hardware_record",
    "resolve_for_model",
    "resolve_for_run",
    "resolve_precision",
]
