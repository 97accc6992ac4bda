"""Device, precision, memory layout and thread policy: one place for every stage and the benchmarks.

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
  version, model, image size, batch and thread count (:func:`cache_file`), so the trial
  (a few seconds) is paid once.

An explicit ``precision=bf16`` on a CPU that only emulates it still runs, with a warning
that gives the measured slowdown. An explicit choice the device cannot run at all (bf16
or fp16 on a GPU without it) is a :class:`pipeline.config.ConfigError`.

The choice changes results (bf16 and fp32 runs of the same seed differ), so it is
recorded (:meth:`PrecisionChoice.to_dict`) in every manifest and checkpoint, it is part of
the stage key (``pipeline.run``), and a run resumed from a checkpoint keeps the precision
it started with (:func:`resolve_for_run`).

Threads and loader workers come from the cores this process may actually use
(:func:`available_cores`: CPU affinity, cgroup quota, ``SLURM_CPUS_PER_TASK``), split
between local ranks (:func:`thread_plan`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, TypedDict

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CACHE_ENV = "PIPELINE_CACHE_DIR"  # where trial verdicts are cached (default ~/.cache/hashtag-pretrain)


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class HardwareFacts:
    """What the policy decides from. Tests build these by hand to mock a machine.

    Attributes:
        device_type: ``"cpu"`` or ``"cuda"``.
        cpu_capability: ``torch.backends.cpu.get_cpu_capability()`` (``"AVX2"``, ``"AVX512"``, ...).
        cpu_bf16_native: oneDNN executes bf16 natively (AVX512-BF16 or AMX).
        cpu_model: the CPU's model name (``/proc/cpuinfo``), for the cache key and reports.
        gpu_name: ``torch.cuda.get_device_name`` (None on CPU).
        gpu_capability: CUDA compute capability, e.g. ``(9, 0)`` (None on CPU).
        gpu_bf16: ``torch.cuda.is_bf16_supported()`` (False on CPU).
        cores: cores this process may use (:func:`available_cores`).
    """

    device_type: str
    cpu_capability: str
    cpu_bf16_native: bool
    cpu_model: str = ""
    gpu_name: str | None = None
    gpu_capability: tuple[int, int] | None = None
    gpu_bf16: bool = False
    cores: int = 1

    def describe(self) -> str:
        """One line for logs: ``cpu AVX2 (no native bf16), 2 cores`` or ``cuda NVIDIA H200 (sm 9.0, bf16)``."""
        if self.device_type == "cuda":
            cap = ".".join(map(str, self.gpu_capability or ()))
            return f"cuda {self.gpu_name} (sm {cap}, {'bf16' if self.gpu_bf16 else 'no bf16'}), {self.cores} CPU cores"
        bf = "native bf16" if self.cpu_bf16_native else "no native bf16"
        return f"cpu {self.cpu_capability} ({bf}), {self.cores} cores"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_bf16_native() -> bool:
    """True where oneDNN runs bf16 natively on this CPU (AVX512-BF16 / AMX); False where it emulates it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if q > 0 and p > 0:
            return q / p
    except (OSError, ValueError):
        pass
    return None


def available_cores(environ: dict | None = None, affinity: int | None = None, cgroup: float | None | str = "read") -> int:
    """Cores this process may use: the smallest of its CPU affinity, the cgroup quota (rounded
    up) and ``SLURM_CPUS_PER_TASK``; at least 1. Arguments override the readings (tests)."""
    env = os.environ if environ is None else environ
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    n = affinity
    quota = _cgroup_cpu_limit() if cgroup == "read" else cgroup
    if isinstance(quota, (int, float)) and quota > 0:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    slurm = env.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, int(n))


class _CommonFacts(TypedDict):
    """The :class:`HardwareFacts` fields that :func:`detect_facts` reads the same way on every device."""

    cpu_capability: str
    cpu_bf16_native: bool
    cpu_model: str
    cores: int


def detect_facts(device: torch.device) -> HardwareFacts:
    """The facts of this machine for ``device``."""
    common: _CommonFacts = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_native": cpu_bf16_native(),
        "cpu_model": _cpu_model(),
        "cores": available_cores(),
    }
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return HardwareFacts(
            "cuda",
            gpu_name=torch.cuda.get_device_name(idx),
            gpu_capability=tuple(torch.cuda.get_device_capability(idx)),  # type: ignore[arg-type]
            gpu_bf16=bool(torch.cuda.is_bf16_supported()),
            **common,
        )
    return HardwareFacts("cpu", **common)


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` if CUDA is available, else ``cpu``; ``cuda``/``cpu`` as asked.

    Raises:
        pipeline.config.ConfigError: ``cuda`` requested where CUDA is not available.
    """
    from pipeline.config import ConfigError

    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("config error at device: cuda requested but CUDA is not available on this machine")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# --------------------------------------------------------------------------- threads


@dataclass(frozen=True)
class ThreadPlan:
    """Intra-op threads of the training process and DataLoader workers, per rank."""

    threads: int
    workers: int
    cores: int  # cores available to this rank
    reason: str


def thread_plan(device_type: str, cores: int, local_world: int = 1, threads: int = 0, workers: int | None = None) -> ThreadPlan:
    """Split this machine's cores between training threads and decoding workers, per local rank.

    On a CPU device the training step is the bottleneck (decoding a 64 px image costs
    ~0.1-1.5 ms of a core against ~7 ms per image of training at ~140 img/s), so every core
    trains and ``cores // 4`` workers (1 to 8) decode in the gaps. On a GPU the data path
    is the bottleneck (Zhao et al. 2022: data stalls up to 56% of trainer time), so all but
    two cores of the rank decode (1 to 16 workers) and the main process keeps 2 threads.
    ``threads`` > 0 and ``workers`` not None override the plan.
    """
    per_rank = max(1, cores // max(1, local_world))
    if device_type == "cuda":
        t, w = min(2, per_rank), max(1, min(16, per_rank - 2))
        why = f"cuda: {per_rank} cores per rank, {w} decoding workers, {t} main threads"
    else:
        t, w = per_rank, max(1, min(8, per_rank // 4))
        why = f"cpu: {per_rank} cores per rank, all train; {w} decoding worker(s)"
    if threads:
        t, why = threads, why + f"; threads={threads} set"
    if workers is not None:
        w, why = workers, why + f"; workers={workers} set"
    return ThreadPlan(threads=t, workers=w, cores=per_rank, reason=why)


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
        return _DTYPES[self.precision]

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


TrialFn = Callable[[str, bool], float]  # (precision, channels_last) -> img/s


def cache_file() -> Path:
    """The per-machine cache of trial verdicts: ``$PIPELINE_CACHE_DIR/precision_trials.json``
    (default ``$XDG_CACHE_HOME`` or ``~/.cache``, subfolder ``hashtag-pretrain``)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hashtag-pretrain"
    )
    return Path(root) / "precision_trials.json"


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, value: dict) -> None:
    from pipeline.io.atomic import write_json

    data = _read_cache(path)
    data[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data)
    except OSError as exc:  # a read-only home must not stop training
        log.warning("could not cache the precision trial in %s: %s", path, exc)


def _candidates(facts: HardwareFacts, precision: str, channels_last: bool | None) -> list[tuple[str, bool]]:
    precs = [precision] if precision != "auto" else (["fp32", "bf16"] if facts.cpu_bf16_native else ["fp32"])
    layouts = [channels_last] if channels_last is not None else [True, False]
    return [(p, c) for p in precs for c in layouts]


TRIAL_ROUNDS = 2  # rounds over the candidates; each candidate's best round counts


def _interleaved(trial: TrialFn, cands: list[tuple[str, bool]], rounds: int) -> dict:
    """img/s per candidate: the best of ``rounds`` interleaved rounds (the first candidate of the
    first round also pays the process's one-time costs, and a busy machine slows some rounds)."""
    best: dict[str, float] = {}
    for _ in range(max(1, rounds)):
        for p, cl in cands:
            k = f"{p}{'_cl' if cl else ''}"
            best[k] = max(best.get(k, 0.0), round(trial(p, cl), 2))
    return best


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
        pipeline.config.ConfigError: an unknown precision, or one the device cannot run
            (bf16 on a GPU without bf16, fp16 on a CPU).
    """
    from pipeline.config import ConfigError

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
    cached = _read_cache(path).get(key) if use_cache else None
    if cached:
        timings = cached["timings"]
        src = "cached"
    else:
        t0 = time.perf_counter()
        timings = _interleaved(trial, cands, TRIAL_ROUNDS)
        src = f"measured in {time.perf_counter() - t0:.1f} s"
        if use_cache:
            _write_cache(path, key, {"timings": timings, "when": time.strftime("%Y-%m-%d %H:%M:%S")})
    best = max(cands, key=lambda c: timings[f"{c[0]}{'_cl' if c[1] else ''}"])
    names = [f"{p}{'_cl' if cl else ''}" for p, cl in cands]  # candidate order, also when read from the cache
    timings = {k: timings[k] for k in names}
    shown = ", ".join(f"{k} {timings[k]:.0f}" for k in names)
    native = "native bf16" if facts.cpu_bf16_native else "no native bf16"
    why = f"CPU {facts.cpu_capability} ({native}); trial img/s: {shown} -> {best[0]}{' channels_last' if best[1] else ''}"
    log.info("%s precision trial (%s, cache %s): %s", where, src, path, why)
    return PrecisionChoice(best[0], best[1], reason=why, trial=timings, **base)


def make_step_trial(
    build_model: Callable[[], torch.nn.Module],
    *,
    batch_size: int,
    image_size: int,
    num_classes: int,
    device: torch.device,
    steps: int = 3,
    warmup: int = 2,
) -> TrialFn:
    """A trial function: img/s of ``steps`` timed forward + backward + SGD steps of a fresh model.

    ``build_model()`` makes a new model each call (the run's own model is never touched);
    torch's RNG state is saved and restored around it, so a trial changes no result. Inputs
    are random (B, 3, S, S) float32 images and soft targets (B, C).
    """

    def run(precision: str, channels_last: bool) -> float:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(0)
            model = build_model().to(device)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            x = torch.randn(batch_size, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
            y = torch.softmax(torch.randn(batch_size, max(1, num_classes), device=device), dim=1)
            dt = _DTYPES[precision]
            t0 = 0.0
            for i in range(warmup + steps):
                if i == warmup:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                with torch.autocast(device.type, dtype=dt or torch.float32, enabled=dt is not None):
                    out = model(x)
                loss = -(y * torch.log_softmax(out.float(), dim=1)).sum(1).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt_s = time.perf_counter() - t0
            del model, opt
        return batch_size * steps / dt_s if dt_s > 0 else 0.0

    return run


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
        pipeline.config.ConfigError: the recorded precision cannot run on this device (e.g. a
            run started in bf16 on a GPU resumed on a GPU without bf16); the message says to
            start over in a new run folder or with ``run.force``.
    """
    from pipeline.config import ConfigError

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
    from pipeline.train.models import create_model

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
    "HardwareFacts",
    "PrecisionChoice",
    "ThreadPlan",
    "available_cores",
    "cache_file",
    "cpu_bf16_native",
    "describe_choice",
    "detect_facts",
    "hardware_record",
    "make_step_trial",
    "pick_device",
    "resolve_for_model",
    "resolve_for_run",
    "resolve_precision",
    "thread_plan",
]
