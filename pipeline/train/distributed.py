"""Process-group set-up for DistributedDataParallel: torchrun or SLURM, CUDA or CPU.

``torchrun --nproc_per_node=N -m pipeline.pretrain ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; under SLURM (one task per GPU, e.g.
hydra-submitit-launcher) they are derived from ``SLURM_PROCID``, ``SLURM_NTASKS`` and
``SLURM_LOCALID`` when ``WORLD_SIZE`` is absent (``MASTER_ADDR``/``MASTER_PORT`` must be
exported by the job script; under submitit they are exported from
``submitit.helpers.TorchDistributedEnvironment``). The backend is NCCL where CUDA is present, else gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.system import current_partition, pick_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job and its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when not distributed

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints and manifests."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _from_submitit() -> None:
    """Under submitit (hydra-submitit-launcher, SLURM or local executor) with several tasks: export
    RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR (the first node) and MASTER_PORT
    (an existing one, else one seeded by the job id, so every task picks the same)."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    if env.world_size > 1:
        addr = os.environ.get("MASTER_ADDR")
        # keep CUDA_VISIBLE_DEVICES: pick_device selects cuda:<local_rank> among the node's GPUs itself
        env.export(set_cuda_visible_devices=False, overwrite=True)
        if addr:  # one exported by the job script wins
            os.environ["MASTER_ADDR"] = addr


def export_rank_env() -> None:
    """Set torch's RANK/WORLD_SIZE/LOCAL_RANK from submitit or SLURM if unset (the main job needs them early)."""
    _from_slurm()


def _from_slurm() -> None:
    """Export RANK/WORLD_SIZE/LOCAL_RANK for a multi-task SLURM job without them (torch's env:// rendezvous
    reads them); the rank and world come from :func:`pipeline.system.current_partition`."""
    _from_submitit()
    if "WORLD_SIZE" not in os.environ and "SLURM_NTASKS" in os.environ:
        part = current_partition()
        if part.world > 1:
            os.environ["RANK"] = str(part.rank)
            os.environ["WORLD_SIZE"] = str(part.world)
            os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group if this is a multi-process job; return where we are.

    Rank and world size: :func:`pipeline.system.current_partition` (torchrun, then SLURM).

    Raises:
        ValueError: the rank variables are not integers, or the rank is outside the world size.
    """
    _from_slurm()
    part = current_partition()
    world, rank = part.world, part.rank
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        from datetime import timedelta

        timeout = timedelta(seconds=timeout_s)
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is not None and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun (--max-restarts) restarts the workers against the same agent store: without a
            # per-attempt prefix the new ranks can read the dead ranks' addresses and fail to connect
            # (seen with torch 2.14 + gloo in 2 of 3 restarts; tests/test_crash_safety.py)
            store = dist.PrefixStore(
                f"pipeline/attempt_{restart}",
                dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timeout),
            )
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
    return DistInfo(rank, world, local_rank, dev, backend)


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (no-op when not distributed)."""
    if info.distributed:
        dist.barrier()


def all_equal(info: DistInfo, value: float) -> bool:
    """True if ``value`` is the same on every rank (a cheap divergence check)."""
    if not info.distributed:
        return True
    t = torch.tensor([value, -value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0].item() == value and -t[1].item() == value)


def cleanup(info: DistInfo) -> None:
    """Leave the process group."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(info: DistInfo, obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(info: DistInfo, obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` when not distributed)."""
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def weights_checksum(model: torch.nn.Module) -> float:
    """A float64 checksum of all parameters and buffers (equal weights -> equal sums)."""
    total = 0.0
    for i, t in enumerate(model.state_dict().values()):
        if t.is_floating_point():
            total += float(t.detach().double().sum().item()) * (1 + 1e-3 * i)
    return total


@torch.no_grad()
def average_buffers(info: DistInfo, model: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, in place.

    During training BN statistics stay per rank, as in Goyal et al. 2017 (sec. 5.3); at the
    end they are averaged once so every rank holds the same, more representative model.
    """
    if not info.distributed:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(info.world)


def data_parallel(module: torch.nn.Module, device: torch.device, sync_buffers: bool) -> torch.nn.Module:
    """``module`` in DistributedDataParallel on ``device`` (CUDA: that GPU; CPU: gloo), with or without
    broadcasting rank 0's buffers (BatchNorm running statistics) at every forward pass.

    torch >= 2.14 names that ``forward_sync_buffers`` and deprecates ``broadcast_buffers``; older
    releases (which the project's version range allows) know only ``broadcast_buffers``. Either way the
    buffers are broadcast once at construction, with the weights: every caller builds the model equal
    on all ranks first, so that changes nothing.
    """
    import inspect

    ddp = torch.nn.parallel.DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters:
        return ddp(module, device_ids=ids, forward_sync_buffers=sync_buffers)
    return ddp(module, device_ids=ids, broadcast_buffers=sync_buffers)
