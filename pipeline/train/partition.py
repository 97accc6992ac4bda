"""Scale-out by data partition: which rank of how many this process is.

Ranks come from torchrun (``RANK``, ``WORLD_SIZE``) or SLURM (``SLURM_PROCID``,
``SLURM_NTASKS``); a plain local run is rank 0 of 1 and uses a process pool instead.
Work units are assigned round-robin (unit ``i`` goes to rank ``i % world``), which is
deterministic and balances units of equal size. :func:`current_partition` is the one reader
of these variables (:func:`pipeline.train.distributed.init_distributed` uses it too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

T = TypeVar("T")


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
