"""How the transfer stage splits its work over the ranks of a torchrun/SLURM job, and gathers it back.

Every list of images a part of the stage reads (val images, training images whose features the
linear probe needs, held-out images of the lr selection) is cut into ``world`` contiguous blocks,
rank r taking block r (:func:`rank_block`): no image is read twice and none is padded in (as
``DistributedSampler`` pads the last ranks to equal lengths, which would double-count val images).
Per-image results come back in rank order (:func:`gather_rows`), i.e. in the list's own order, so
every rank holds the same arrays a single process computes.

A fine-tuning step's batch is cut into micro-batches of ``device_batch`` images dealt round-robin
to the ranks (:func:`micro_batches`): with ``transfer.device_batch`` set, which images share a
BatchNorm batch and each image's augmentation do not depend on the world size, so a run on W ranks
computes the same gradients as one process accumulating W micro-batches, up to floating point.

One process (``world == 1``) is the same code with every helper the identity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from pipeline.errors import ConfigError
from pipeline.train.distributed import DistInfo, gather_objects

__all__ = ["rank_block", "gather_rows", "sum_over_ranks", "sync_buffers", "micro_batch_size", "micro_batches"]


def rank_block(n: int, info: DistInfo) -> slice:
    """Rank ``info.rank``'s contiguous block of ``n`` items: ``[r n / W, (r + 1) n / W)`` (sizes differ by at most 1)."""
    return slice(info.rank * n // info.world, (info.rank + 1) * n // info.world)


def gather_rows(info: DistInfo, rows: np.ndarray) -> np.ndarray:
    """Every rank's ``rows`` (its block's per-image values, (n_r, ...)) concatenated in rank order ((n, ...))."""
    if not info.distributed:
        return rows
    return np.concatenate(gather_objects(info, rows))


def sum_over_ranks(info: DistInfo, *values: float) -> list[float]:
    """The sums over the ranks of ``values`` (float64; the values themselves in one process)."""
    if not info.distributed:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


@torch.no_grad()
def sync_buffers(info: DistInfo, model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), in place: what DDP's ``broadcast_buffers``
    does before each training forward, done before scoring so every rank scores the same model."""
    if not info.distributed:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def micro_batch_size(device_batch: int | None, batch_size: int, world: int, where: str = "transfer.device_batch") -> int:
    """Images per forward pass on one rank: ``device_batch``, or ``batch_size / world`` when it is None.

    Raises:
        pipeline.errors.ConfigError: ``batch_size`` is not a multiple of the micro-batch x ``world`` (a step's
            images would not split evenly over the ranks), or the micro-batch is below 2 images.
    """
    micro = int(device_batch) if device_batch is not None else batch_size // world
    if micro < 2 or batch_size % (micro * world):
        raise ConfigError(
            f"config error at {where}: a fine-tuning step's {batch_size} images (transfer.batch_size) do not split into "
            f"micro-batches of {micro} over {world} rank(s); set transfer.batch_size to a multiple of "
            f"{'device_batch' if device_batch is not None else '2'} x world size, or device_batch to a divisor of "
            "batch_size / world size"
        )
    return micro


def micro_batches(batch: list, micro: int, world: int, rank: int) -> list[list]:
    """Rank ``rank``'s micro-batches of one step's ``batch`` (a list of items).

    The batch is cut into contiguous micro-batches of ``micro`` items (a last one of a single item joins
    the one before: BatchNorm needs 2), micro-batch j going to rank ``j % world``. A rank may get none
    (a short last batch of an epoch): it still joins the step's gradient all-reduce
    (:func:`pipeline.evaluation.finetune.finetune`).
    """
    chunks = [batch[s : s + micro] for s in range(0, len(batch), micro)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks[-2] = chunks[-2] + chunks.pop()
    return chunks[rank::world]
