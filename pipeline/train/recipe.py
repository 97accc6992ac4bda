"""The pretraining recipe: optimizer steps per epoch, learning-rate schedule, model and optimizer.

Mahajan et al. 2018 (sec. 2-3) and Goyal et al. 2017: synchronous SGD over a global batch of
``pretrain.global_batch`` images per optimizer step (``batch_size`` per rank and micro-batch,
``accum`` micro-batches), lr = ``base_lr`` x global_batch / ``reference_batch`` (linear scaling
rule) reached by a linear warmup, then cosine or step decay; Nesterov momentum and weight
decay (not on BN and biases) as :func:`pipeline.train.optim.make_optimizer` sets them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.errors import ConfigError
from pipeline.train.models import create_model, list_models
from pipeline.train.optim import make_optimizer, make_schedule, scaled_lr
from pipeline.train.train_loop import steps_in_epoch

__all__ = ["StepPlan", "accumulation", "build_model", "check_recipe", "plan_steps"]


def check_recipe(pt) -> None:
    """Checks of the pretrain config section ``pt`` that need the code, before any work: the model is one of
    :func:`pipeline.train.models.list_models`, and ``pretrain.tensorboard`` has its package.

    Raises:
        pipeline.errors.ConfigError: naming the key.
    """
    if pt.model not in list_models():
        raise ConfigError(f"config error at pretrain.model: unknown model {pt.model!r}; known: {list_models()}")
    if pt.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("config error at pretrain.tensorboard: the tensorboard package is not installed") from None


def accumulation(batch_size: int, global_batch: int | None, world: int) -> tuple[int, int]:
    """(global batch, micro-batches per optimizer step) for ``batch_size`` images per rank and micro-batch.

    ``global_batch`` None means ``batch_size x world`` (no accumulation).

    Raises:
        pipeline.errors.ConfigError: ``global_batch`` is not a multiple of ``batch_size x world``.
    """
    per_step = batch_size * world
    global_batch = global_batch or per_step
    if global_batch % per_step:
        raise ConfigError(
            f"config error at pretrain.global_batch: {global_batch} is not a multiple of "
            f"batch_size x world = {batch_size} x {world}"
        )
    return global_batch, global_batch // per_step


@dataclass
class StepPlan:
    """The optimizer-step schedule of a run: what every rank derives alike from the config and the samples."""

    global_batch: int  # images per optimizer step, all ranks and micro-batches
    accum: int  # micro-batches per optimizer step
    epoch_items: list[int]  # items (replicated samples) of each epoch, all ranks
    steps_per_epoch: list[int]  # optimizer steps of each epoch (its last one may be short)
    total_steps: int
    peak_lr: float  # the scaled lr (linear scaling rule)
    warmup_steps: int  # linear warmup from min(warmup_start_lr, peak_lr) to peak_lr


def plan_steps(pt, epoch_sizes: list, *, world: int) -> StepPlan:
    """The :class:`StepPlan` of the pretrain config section ``pt``.

    ``epoch_sizes``: each epoch's micro-batches and items (objects with ``steps`` and ``num_items``:
    :meth:`pipeline.train.shard_samples.ShardSamples.epoch_sizes`' :class:`pipeline.train.shard_plan.StepSizes`,
    or :class:`pipeline.train.epoch_plan.EpochPlan`). Warmup lasts
    ``pt.warmup_epochs`` of the first epoch's steps, at most all steps but one.

    Raises:
        pipeline.errors.ConfigError: see :func:`accumulation`.
    """
    global_batch, accum = accumulation(pt.batch_size, pt.global_batch, world)
    steps_per_epoch = [steps_in_epoch(int(sizes.steps), accum) for sizes in epoch_sizes]
    total_steps = sum(steps_per_epoch)
    peak = scaled_lr(global_batch, pt.base_lr, pt.reference_batch)
    warmup_steps = min(total_steps - 1, round(pt.warmup_epochs * steps_per_epoch[0])) if total_steps > 1 else 0
    items = [int(sizes.num_items) for sizes in epoch_sizes]
    return StepPlan(global_batch, accum, items, steps_per_epoch, total_steps, peak, warmup_steps)


def build_model(pt, plan: StepPlan, num_classes: int, device: torch.device, seed: int):
    """(model, optimizer, lr scheduler) of the recipe, the model initialized from ``seed`` on ``device``.

    Seeds torch, ``random`` and numpy first (``random`` is unused by training, but saved in
    checkpoints: same seed, same files). Goyal et al. warm up *from* 0.1 *to* a larger scaled
    lr; with a small global batch the scaled lr is below 0.1 and there is nothing to warm up from.
    """
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = create_model(pt.model, num_classes=num_classes).to(device)
    optimizer = make_optimizer(model, plan.peak_lr, momentum=pt.momentum, nesterov=pt.nesterov, weight_decay=pt.weight_decay)
    warmup_start = min(pt.warmup_start_lr, plan.peak_lr)
    scheduler = make_schedule(
        optimizer,
        pt.schedule,
        plan.total_steps,
        plan.warmup_steps,
        warmup_start,
        plan.peak_lr,
        milestones=list(pt.milestones),
        gamma=pt.gamma,
        final_lr_fraction=pt.final_lr_fraction,
    )
    return model, optimizer, scheduler
