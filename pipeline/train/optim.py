"""SGD, the linear scaling rule, and the warmup + decay learning-rate schedule.

The recipe is Goyal et al. 2017, as Mahajan et al. 2018 used it at minibatch 8,064:
- linear scaling rule (sec. 2.1): ``lr = 0.1 * kn / 256`` (8k batch -> 3.2);
- gradual warmup (sec. 2.2): from 0.1 linearly up to the scaled rate over the first
  epochs (5 in Goyal et al.), then the usual decay (/10 at epochs 30, 60, 80 of 90);
  Mahajan et al. halved the rate in steps instead (unverified details); ``cosine``
  is offered as the common modern alternative;
- Nesterov momentum 0.9, weight decay 1e-4 not applied to BN gamma/beta (sec. 5.1);
  we also exempt all biases (only the classifier's bias in these models).

Momentum correction (Goyal et al. sec. 3, Remark 2) is not needed here: PyTorch's SGD
keeps the buffer ``v = m*v + g`` *without* the learning rate and steps ``w -= lr*v``
(their eq. 9), so a changing rate does not rescale past momentum.

The schedule is a ``LambdaLR`` over optimizer *steps* (call ``scheduler.step()`` after
each ``optimizer.step()``), driven by the pure function :func:`lr_at`; its position is in
``scheduler.state_dict()`` and the rates in ``optimizer.state_dict()``, so a resumed run
continues on the same curve.
"""

from __future__ import annotations

import math
from typing import Sequence, TypedDict

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["SCHEDULES", "lr_at", "make_optimizer", "make_schedule", "param_groups", "resolve_milestones", "scaled_lr"]

SCHEDULES = ("step", "cosine", "constant")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float = 1e-4) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    No weight decay on normalization-layer parameters (BN gamma and beta; Goyal et al.
    2017, sec. 5.1) nor on any bias; everything else (conv and linear weights) gets
    ``weight_decay``. Frozen parameters (``requires_grad=False``) and repeats of a shared
    parameter are left out.

    Returns:
        ``[{"name": "decay", "params": [...], "weight_decay": wd},
        {"name": "no_decay", "params": [...], "weight_decay": 0.0}]`` (both always present,
        possibly empty), in module order.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, _NORM_TYPES) or name == "bias":
                no_decay.append(p)
            else:
                decay.append(p)
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


def scaled_lr(global_batch: int, base_lr: float = 0.1, reference_batch: int = 256) -> float:
    """Linear scaling rule (Goyal et al. 2017, sec. 2.1): ``base_lr * global_batch / reference_batch``.

    ``global_batch`` is the samples per optimizer step over all ranks and accumulated
    micro-batches (kn). ``scaled_lr(8192) == 3.2``; Mahajan et al.'s 8,064 gives 3.15.

    Raises:
        ValueError: for a non-positive batch or learning rate.
    """
    if global_batch <= 0 or reference_batch <= 0 or base_lr <= 0:
        raise ValueError("global_batch, reference_batch and base_lr must be > 0")
    return base_lr * global_batch / reference_batch


def make_optimizer(
    model: nn.Module, lr: float, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 1e-4
) -> torch.optim.SGD:
    """SGD with Nesterov momentum 0.9 and weight decay on :func:`param_groups`' decay group
    (Goyal et al. 2017, sec. 5.1). ``lr`` is the peak rate (see :func:`scaled_lr`);
    :func:`make_schedule` scales it per step."""
    return torch.optim.SGD(
        param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


def resolve_milestones(milestones: Sequence[int | float], total_steps: int) -> list[int]:
    """Milestones as sorted step numbers.

    All ``int``: explicit steps. All ``float`` in (0, 1]: fractions of ``total_steps``
    (rounded), e.g. Goyal et al.'s epochs 30, 60, 80 of 90 are ``[1/3, 2/3, 8/9]``.

    Raises:
        ValueError: mixed kinds, fractions outside (0, 1], or negative steps.
    """
    ms = list(milestones)
    steps = [m for m in ms if isinstance(m, int) and not isinstance(m, bool)]
    if len(steps) == len(ms):
        if any(m < 0 for m in steps):
            raise ValueError(f"milestone steps must be >= 0, got {ms}")
        return sorted(steps)
    if all(isinstance(m, float) for m in ms):
        if any(not 0.0 < m <= 1.0 for m in ms):
            raise ValueError(f"fractional milestones must be in (0, 1], got {ms}")
        return sorted(round(m * total_steps) for m in ms)
    raise ValueError(f"milestones must be all ints (steps) or all floats (fractions), got {ms}")


def lr_at(
    step: int,
    *,
    kind: str,
    total_steps: int,
    warmup_steps: int,
    warmup_start_lr: float,
    peak_lr: float,
    milestones: Sequence[int | float] = (),
    gamma: float = 0.1,
    final_lr_fraction: float = 0.0,
) -> float:
    """The learning rate during optimizer step ``step`` (0-based).

    - warmup, ``step < warmup_steps``: ``warmup_start_lr + (peak_lr - warmup_start_lr) *
      step / warmup_steps`` (Goyal et al. 2017, sec. 2.2: from 0.1 linearly to the scaled rate);
    - ``step``: ``peak_lr * gamma ** (number of milestones <= step)``; milestones count from
      step 0 (not from the warmup's end), as ints (steps) or floats (fractions of total_steps);
    - ``cosine``: ``final + (peak_lr - final) * (1 + cos(pi * p)) / 2`` with
      ``final = final_lr_fraction * peak_lr`` and ``p`` the progress from ``warmup_steps``
      to ``total_steps`` (clamped to [0, 1], so it stays at ``final`` afterwards);
    - ``constant``: ``peak_lr``.

    Returns:
        the learning rate (float, same units as ``peak_lr``).
    Raises:
        ValueError: unknown kind, negative step, or inconsistent step counts.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {list(SCHEDULES)}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need total_steps > 0 and 0 <= warmup_steps <= total_steps, got {total_steps}, {warmup_steps}")
    if step < warmup_steps:
        return warmup_start_lr + (peak_lr - warmup_start_lr) * step / warmup_steps
    if kind == "step":
        passed = sum(1 for m in resolve_milestones(milestones, total_steps) if m <= step)
        return peak_lr * gamma**passed
    if kind == "cosine":
        final = final_lr_fraction * peak_lr
        span = total_steps - warmup_steps
        p = min(1.0, (step - warmup_steps) / span) if span > 0 else 1.0
        return final + (peak_lr - final) * 0.5 * (1.0 + math.cos(math.pi * p))
    return peak_lr


class _ScheduleArgs(TypedDict):
    """The keyword arguments of :func:`lr_at` that :func:`make_schedule` fixes."""

    kind: str
    total_steps: int
    warmup_steps: int
    warmup_start_lr: float
    peak_lr: float
    milestones: Sequence[int | float]
    gamma: float
    final_lr_fraction: float


def make_schedule(
    optimizer: torch.optim.Optimizer,
    kind: str,
    total_steps: int,
    warmup_steps: int,
    warmup_start_lr: float,
    peak_lr: float,
    milestones: Sequence[int | float] = (),
    gamma: float = 0.1,
    final_lr_fraction: float = 0.0,
) -> LambdaLR:
    """A ``LambdaLR`` following :func:`lr_at` step by step (arguments as there).

    Build it right after the optimizer, whose ``lr`` must be ``peak_lr``: the lambda
    returns ``lr_at(step) / peak_lr`` and LambdaLR multiplies each group's initial rate by
    it (a group with another initial rate, e.g. a 10x head, follows the same curve
    scaled). Step it once per optimizer step. The lambda is a plain function, so
    ``state_dict()`` holds only the position; the curve comes from these arguments (the
    run config), and a scheduler rebuilt with them and ``load_state_dict`` resumes exactly.

    Raises:
        ValueError: bad arguments (checked once here), or no group of the optimizer has
            ``lr == peak_lr`` (a common mix-up: optimizer built at 0.1, schedule at 3.2).
    """
    args: _ScheduleArgs = {
        "kind": kind,
        "total_steps": total_steps,
        "warmup_steps": warmup_steps,
        "warmup_start_lr": warmup_start_lr,
        "peak_lr": peak_lr,
        "milestones": tuple(milestones),
        "gamma": gamma,
        "final_lr_fraction": final_lr_fraction,
    }
    if peak_lr <= 0:
        raise ValueError(f"peak_lr must be > 0, got {peak_lr}")
    lr_at(0, **args)  # validates kind, counts and milestones before training starts
    lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    if not any(math.isclose(float(lr), peak_lr, rel_tol=1e-9) for lr in lrs):
        raise ValueError(f"optimizer learning rates {lrs} do not include peak_lr={peak_lr}; build the optimizer with lr=peak_lr")

    def multiplier(step: int) -> float:
        return lr_at(step, **args) / peak_lr

    return LambdaLR(optimizer, multiplier)
