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

BatchNorm's running statistics follow the same rule (:class:`BatchNormReplay`): each rank records the batch
statistics of its micro-batches and, after each step, every rank applies all the step's micro-batches'
updates in the order one process applies them, so the statistics val is scored with do not depend on the
world size either.

One process (``world == 1``) is the same code with every helper the identity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from pipeline.errors import ConfigError
from pipeline.train.distributed import DistInfo, gather_objects

__all__ = [
    "BatchNormReplay",
    "rank_block",
    "gather_rows",
    "sum_over_ranks",
    "sync_buffers",
    "micro_batch_size",
    "micro_batches",
]


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
    """Give every rank rank 0's buffers (BatchNorm running statistics), in place, before scoring: with
    :class:`BatchNormReplay` they are equal already; this guards models whose buffers it does not replay."""
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


class BatchNormReplay:
    """BatchNorm running statistics on W ranks updated as one process accumulating the same micro-batches updates them.

    One process runs a step's micro-batches in order, each moving every BatchNorm layer's running mean and variance
    by ``r <- (1 - momentum) r + momentum x`` towards that micro-batch's statistics ``x``. With DDP's
    ``broadcast_buffers`` the running statistics would be rank 0's alone (its micro-batches only). Here each rank
    records, per micro-batch, the statistics its BatchNorm layers used (recovered from the update they made:
    ``x = (r_after - (1 - momentum) r_before) / momentum``, then the layer is set back to ``r_before``); after the
    step every rank gathers all records and applies them in global micro-batch order (micro-batch ``j`` of the step is
    rank ``j % W``'s, :func:`micro_batches`). Every rank ends the step with the same statistics, and with those one
    process would have, up to float rounding (test: ``tests/test_transfer_distributed.py``).

    Cost per step: one ``all_gather_object`` of ``2 x channels`` floats per micro-batch (BatchNorm channels summed
    over the layers). Layers with ``momentum=None`` (a cumulative average) are left to DDP's broadcast.
    One process: every method is a no-op (the layers update themselves).
    """

    def __init__(self, model: torch.nn.Module, info: DistInfo | None) -> None:
        self.info = info
        on = info is not None and info.distributed
        self.layers = [
            m
            for m in model.modules()
            if on and isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.momentum
        ]
        self.records: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self._before: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    @property
    def active(self) -> bool:
        """True when it replays (several ranks and a model with BatchNorm layers)."""
        return bool(self.layers)

    @staticmethod
    def _stats(m: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = m.running_mean, m.running_var
        assert isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor)
        return mean, var

    @torch.no_grad()
    def before(self) -> None:
        """Remember every layer's running statistics (call before a micro-batch's forward pass)."""
        self._before = []
        for m in self.layers:
            mean, var = self._stats(m)
            tracked = m.num_batches_tracked
            self._before.append((mean.clone(), var.clone(), tracked.clone() if isinstance(tracked, torch.Tensor) else None))

    @torch.no_grad()
    def after(self, j: int) -> None:
        """Record micro-batch ``j``'s (its index in the step) statistics and set the layers back (after its backward)."""
        if not self.layers:
            return
        stats = []
        for m, (mean0, var0, tracked) in zip(self.layers, self._before):
            mom = float(m.momentum)  # type: ignore[arg-type]
            mean, var = self._stats(m)
            stats.append((((mean - (1 - mom) * mean0) / mom).cpu(), ((var - (1 - mom) * var0) / mom).cpu()))
            mean.copy_(mean0)
            var.copy_(var0)
            if tracked is not None and isinstance(m.num_batches_tracked, torch.Tensor):
                m.num_batches_tracked.copy_(tracked)
        self.records.append((j, stats))

    @torch.no_grad()
    def step(self) -> None:
        """Apply every rank's records of the step in micro-batch order, on every rank (collective)."""
        if not self.layers:
            return
        assert self.info is not None
        every = sorted((r for part in gather_objects(self.info, self.records) for r in part), key=lambda r: r[0])
        self.records = []
        for _, stats in every:
            for m, (mu, sigma2) in zip(self.layers, stats):
                mom = float(m.momentum)  # type: ignore[arg-type]
                mean, var = self._stats(m)
                mean.mul_(1 - mom).add_(mu.to(mean.device), alpha=mom)
                var.mul_(1 - mom).add_(sigma2.to(var.device), alpha=mom)
                if isinstance(m.num_batches_tracked, torch.Tensor):
                    m.num_batches_tracked.add_(1)
