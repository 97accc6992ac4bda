"""System facts (foundation layer): this machine, the cores this process may use, and its rank.

One place answers, for every stage, benchmark and data tool:

* **which machine**: :class:`HardwareFacts` / :func:`detect_facts` (CPU capability and model,
  native bf16, GPU name and compute capability, cores), :func:`pick_device`;
* **how many cores**: :func:`available_cores` (the smallest of CPU affinity, the cgroup quota
  and ``SLURM_CPUS_PER_TASK``); :func:`default_workers` (worker processes per rank) and
  :func:`thread_plan` (intra-op threads vs loader workers per rank) split them;
* **which rank of how many** (scale-out by data partition): :func:`current_partition` reads
  torchrun's ``RANK``/``WORLD_SIZE`` or SLURM's ``SLURM_PROCID``/``SLURM_NTASKS`` (a plain
  local run is rank 0 of 1 and uses a process pool instead); work units are assigned
  round-robin by :func:`assign` (unit ``i`` goes to rank ``i % world``), deterministic and
  balanced for units of equal size. It is the one reader of these variables
  (:func:`pipeline.train.distributed.init_distributed` uses it too).

The precision and memory-layout policy built on these facts is :mod:`pipeline.train.precision`.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence, TypedDict, TypeVar

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

# --------------------------------------------------------------------------- machine facts


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
    return platform.processor() or platform.machine()


def cpu_bf16_native() -> bool:
    """True where oneDNN runs bf16 natively on this CPU (AVX512-BF16 / AMX); False where it emulates it."""
    import torch  # on first use: the core and rank functions serve processes that never load torch (data_tools)

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
    import torch  # on first use (see cpu_bf16_native)

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
        pipeline.errors.ConfigError: ``cuda`` requested where CUDA is not available.
    """
    import torch  # on first use (see cpu_bf16_native)

    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("config error at device: cuda requested but CUDA is not available on this machine")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# --------------------------------------------------------------------------- cores per rank


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


def default_workers(requested: int) -> int:
    """Worker processes to use per rank: ``requested`` if > 0, else :func:`available_cores` divided
    by the local world size (``LOCAL_WORLD_SIZE``, set by torchrun; 1 otherwise), at least 1."""
    if requested > 0:
        return requested
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cores() // max(1, local_world))


# --------------------------------------------------------------------------- rank of world


@dataclass(frozen=True)
class Partition:
    """This process's place: ``rank`` in ``[0, world)``."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone merges per-partition outputs and writes manifests."""
        return self.rank == 0


def current_partition(env: Mapping[str, str] | None = None) -> Partition:
    """Read the partition from the environment (torchrun first, then SLURM).

    Raises:
        ValueError: if the variables are not integers or rank is outside [0, world).
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if "WORLD_SIZE" in environ:
        rank, world = environ.get("RANK", "0"), environ["WORLD_SIZE"]
    elif "SLURM_NTASKS" in environ:
        rank, world = environ.get("SLURM_PROCID", "0"), environ["SLURM_NTASKS"]
    else:
        return Partition()
    try:
        r, w = int(rank), int(world)
    except ValueError as exc:
        raise ValueError(f"bad rank/world size in environment: rank={rank!r} world={world!r}") from exc
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank {r} is outside world size {w}")
    return Partition(r, w)


def assign(items: Sequence[T], part: Partition) -> list[T]:
    """The items of ``part``: every ``world``-th item starting at ``rank``."""
    return list(items[part.rank :: part.world])
