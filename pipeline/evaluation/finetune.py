"""Full fine-tuning on the target set: every layer trained, a new classifier, val scored after each epoch or the last.

Recipe (the same for the pretrained and the random initialization, so the difference
is what pretraining buys; Kornblith et al. 2019 compare fine-tuning and training from
random initialization the same way):

- a new head (``reset_classifier(num_classes, head_stages)``: N(0, 0.01^2) weights, zero bias, Goyal et al.
  2017 sec. 5.1), or a given ``head`` (LP-FT, :mod:`pipeline.evaluation.head_init`); every layer trained, BN
  in training mode;
- SGD with Nesterov momentum 0.9, weight decay 1e-4 (not on BN and biases)
  (:func:`pipeline.train.optim.make_optimizer`); peak rate ``base_lr * batch / 256`` (linear scaling
  rule), ``base_lr`` chosen per target from ``transfer.finetune_lr_grid`` by runs on a held-out part of
  the *training* images, the same for both inits (:func:`pipeline.evaluation.lr_selection.select_lr`;
  ``max_epoch_images`` and ``eval_every_epoch=False`` below serve those runs). The first demo chose it on
  Fashion-MNIST's val images, which made those numbers optimistic;
- a short linear warmup (from 10% of the peak, a fraction of an epoch) then cosine decay
  to 0 over the run (:func:`pipeline.train.optim.make_schedule`), per optimizer step;
- random-resized crop + horizontal flip on the training images (the crop's minimum area
  ``transfer.crop_min_scale``: 0.35 on the demo, whose 28 px clothes fill the frame;
  ImageNet's 0.08 left the training loss far above the eval one there); eval
  preprocessing on val; cross-entropy loss; the precision and layout of :mod:`pipeline.train.precision` (fp16 with
  loss scaling on GPUs without bf16).

Mahajan et al. 2018's own fine-tuning schedule is not restated here (unverified).

Low-data settings: an "epoch" is at least ``min_epoch_images`` training images, i.e.
``ceil(min_epoch_images / n)`` shuffled passes over a small set of ``n`` images, so a low-data run
still takes enough optimizer steps to move. Each pass is a fresh seeded shuffle,
and each image's augmentation is seeded by (seed, epoch, pass, image), independent of
the DataLoader workers, so a run is reproducible.

A run given its :class:`pipeline.evaluation.resume.FinetuneCheckpoints` writes a checkpoint at every
epoch end but the last and every ``every_steps`` optimizer steps, and starts from the last one
if there is one: the epoch plan is rebuilt and continued at the checkpoint's batch, so a resumed
run ends with the same weights, rows and correctness as an uninterrupted one (bitwise on the CPU).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from pipeline.evaluation.linear_probe import topk_correct
from pipeline.evaluation.ranks import BatchNormReplay, gather_rows, micro_batches, sum_over_ranks, sync_buffers
from pipeline.evaluation.resume import FinetuneCheckpoints, FinetunePosition
from pipeline.evaluation.target_data import TransformedSubset
from pipeline.progress import progress_bar
from pipeline.seeding import item_seed
from pipeline.train.distributed import DistInfo, data_parallel
from pipeline.train.optim import make_optimizer, make_schedule, scaled_lr
from pipeline.vision.transforms import normalize

if TYPE_CHECKING:
    from pipeline.train.models import ResNeXt

__all__ = ["FinetuneSettings", "settings_from_recipe", "epoch_batches", "planned_images", "evaluate", "finetune"]


@dataclass
class FinetuneSettings:
    """What one fine-tuning run needs besides the model and the data (see the module docstring).

    No field has a default: the recipe fields come from the effective per-target recipe
    (:func:`pipeline.config.transfer_recipe`, whose defaults are ``pipeline.config.TransferConfig``'s)
    through :func:`settings_from_recipe`; the others are this run's derived and runtime values.
    """

    # the recipe (transfer.* / transfer.targets.NAME.*)
    batch_size: int  # images per step over all ranks: the recipe's batch_size, at most the training images
    device_batch: int  # images per forward pass on one rank (pipeline.evaluation.ranks.micro_batch_size)
    label_smoothing: float  # of the training cross-entropy (0: none)
    ema_decay: float | None  # an EMA of the weights scored beside them (None: none)
    head_stages: tuple[str, ...] | None  # the stages the new classifier reads (None: the penultimate layer)
    reference_batch: int  # images base_lr refers to (linear scaling rule)
    momentum: float
    nesterov: bool
    weight_decay: float  # not on BN parameters and biases
    warmup_epochs: float
    warmup_start_fraction: float  # warmup starts at this fraction of the peak rate
    min_epoch_images: int  # an epoch is at least this many images (passes over a small set)
    # this run
    epochs: int  # finetune_epochs, or lr_select_epochs for an lr-selection run
    base_lr: float  # per reference_batch images: the lr chosen for the target, or the grid value tried
    max_epoch_images: int | None  # cut every epoch to this many images (short lr-selection runs; None = no cut)
    eval_every_epoch: bool  # score ``val`` after every epoch (False: after the last one only)
    seed: int  # seeds the head, the epoch order and the augmentation
    autocast_dtype: torch.dtype | None  # the resolved precision (None = fp32)
    grad_scaler: bool  # fp16 loss scaling (pipeline.train.precision.PrecisionChoice.grad_scaler)
    channels_last: bool  # the resolved memory layout
    activation_checkpointing: bool  # recompute each residual block's activations in the backward pass (same gradients)
    workers: int  # DataLoader worker processes
    progress: bool  # tqdm progress bars


def settings_from_recipe(
    recipe: dict,
    *,
    n: int,
    device_batch: int,
    epochs: int,
    base_lr: float,
    seed: int,
    eval_every_epoch: bool,
    max_epoch_images: int | None,
    autocast_dtype: torch.dtype | None,
    grad_scaler: bool,
    channels_last: bool,
    workers: int,
    progress: bool,
) -> FinetuneSettings:
    """The :class:`FinetuneSettings` of one run on ``n`` training images from a target's effective recipe.

    Args:
        recipe: :func:`pipeline.config.transfer_recipe` of the target (``batch_size``, ``reference_batch``,
            ``momentum``, ``nesterov``, ``weight_decay``, ``warmup_epochs``, ``warmup_start_fraction``,
            ``min_epoch_images`` are read; the batch is capped at ``n``).
        n: training images of the run.
        device_batch: images per forward pass on one rank (:func:`pipeline.evaluation.ranks.micro_batch_size`).
        epochs, base_lr, seed, eval_every_epoch, max_epoch_images: this run's values (the caller derives them:
            ``finetune_epochs`` or ``lr_select_epochs``, the chosen or tried lr, ...).
        autocast_dtype, grad_scaler, channels_last, workers, progress: the resolved runtime
            (:class:`pipeline.train.precision.PrecisionChoice`, the thread plan).
    Raises:
        KeyError: a recipe key is missing.
    """
    return FinetuneSettings(
        batch_size=min(int(recipe["batch_size"]), n),
        device_batch=int(device_batch),
        label_smoothing=float(recipe["label_smoothing"]),
        ema_decay=None if recipe["ema_decay"] is None else float(recipe["ema_decay"]),
        head_stages=tuple(recipe["finetune_head_stages"]) if recipe["finetune_head_stages"] else None,
        activation_checkpointing=bool(recipe["activation_checkpointing"]),
        reference_batch=recipe["reference_batch"],
        momentum=recipe["momentum"],
        nesterov=recipe["nesterov"],
        weight_decay=recipe["weight_decay"],
        warmup_epochs=recipe["warmup_epochs"],
        warmup_start_fraction=recipe["warmup_start_fraction"],
        min_epoch_images=recipe["min_epoch_images"],
        epochs=epochs,
        base_lr=base_lr,
        max_epoch_images=max_epoch_images,
        eval_every_epoch=eval_every_epoch,
        seed=seed,
        autocast_dtype=autocast_dtype,
        grad_scaler=grad_scaler,
        channels_last=channels_last,
        workers=workers,
        progress=progress,
    )


def epoch_batches(
    n: int, batch_size: int, epoch: int, seed: int, min_epoch_images: int = 0, max_epoch_images: int | None = None
) -> list[list[tuple[int, int]]]:
    """Batches of one epoch over ``n`` training images: lists of (position, augmentation seed).

    The epoch is ``max(1, ceil(min_epoch_images / n))`` passes, each a seeded permutation, cut
    to its first ``max_epoch_images`` items if given; a final batch of fewer than 2 images is
    dropped (BatchNorm needs 2).

    Raises:
        ValueError: if ``n < 2`` or ``batch_size < 2``.
    """
    if n < 2 or batch_size < 2:
        raise ValueError(f"fine-tuning needs >= 2 images and batch_size >= 2, got {n} and {batch_size}")
    passes = max(1, math.ceil(min_epoch_images / n))
    items: list[tuple[int, int]] = []
    for p in range(passes):
        rng = np.random.default_rng(item_seed("finetune-order", seed, epoch, p))
        items += [(int(i), item_seed("finetune-aug", seed, epoch, p, int(i))) for i in rng.permutation(n)]
    if max_epoch_images is not None:
        items = items[: max(2, int(max_epoch_images))]
    batches = [items[s : s + batch_size] for s in range(0, len(items), batch_size)]
    if len(batches[-1]) < 2:
        batches.pop()
    return batches


def planned_images(n: int, epochs: int, batch: int, min_epoch: int, max_epoch: int | None) -> int:
    """Training images a fine-tuning run will see (the sum of its epoch plans' sizes, without building them)."""
    per = max(1, math.ceil(min_epoch / n)) * n if n else 0
    if max_epoch is not None:
        per = min(per, max(2, int(max_epoch)))
    per -= per % batch if per % batch == 1 else 0
    return epochs * per


def _prep(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = normalize(x.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    ranks: DistInfo | None = None,
) -> dict:
    """Top-1 / top-5 of a classifier on uint8 image batches.

    Args:
        batches: ``(uint8 (B, 3, S, S), int64 (B,))`` batches; with ``ranks``, this rank's block of the scored
            images (:func:`pipeline.evaluation.ranks.rank_block`), the per-image results gathered in rank order.
    Returns:
        ``{"top1", "top5", "loss", "correct1": bool (N,), "correct5": bool (N,)}`` over all N scored images.
    """
    model.eval()
    c1, c5, losses, n = [], [], 0.0, 0
    for x, y in batches:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(_prep(x, device, channels_last)).float()
        y = torch.as_tensor(y).to(device)
        losses += float(F.cross_entropy(logits, y, reduction="sum"))
        n += len(y)
        s, t = logits.cpu().numpy(), y.cpu().numpy()
        c1.append(topk_correct(s, t, 1))
        c5.append(topk_correct(s, t, 5))
    correct1 = np.concatenate(c1) if c1 else np.zeros(0, bool)
    correct5 = np.concatenate(c5) if c5 else np.zeros(0, bool)
    if ranks is not None and ranks.distributed:
        correct1, correct5 = gather_rows(ranks, correct1), gather_rows(ranks, correct5)
        losses, total = sum_over_ranks(ranks, losses, n)
        n = int(total)
    return {
        "top1": float(correct1.mean()) if n else 0.0,
        "top5": float(correct5.mean()) if n else 0.0,
        "loss": losses / max(1, n),
        "correct1": correct1,
        "correct5": correct5,
    }


def finetune(
    model: ResNeXt,
    train: TransformedSubset,
    val: Iterable,
    *,
    num_classes: int,
    settings: FinetuneSettings,
    device: torch.device,
    desc: str = "finetune",
    on_epoch: Callable[[dict], None] | None = None,
    checkpoints: FinetuneCheckpoints | None = None,
    ranks: DistInfo | None = None,
    head: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Replace the head of ``model`` and train all its layers on ``train``; evaluate on ``val`` after each
    epoch (``settings.eval_every_epoch``) or after the last one.

    Each optimizer step's batch (``settings.batch_size`` images of the epoch plan, :func:`epoch_batches`) is cut
    into micro-batches of ``settings.device_batch`` images dealt to the ranks (:func:`pipeline.evaluation.ranks.micro_batches`);
    each micro-batch's cross-entropy is weighted by its share of the step's images, gradients are accumulated
    over a rank's micro-batches and averaged over the ranks by DistributedDataParallel (NCCL on GPUs, gloo on
    CPUs), so every step is the mean gradient of its whole batch at any world size. A rank without a
    micro-batch in a step (a short last batch) joins the all-reduce with a zero-weighted pass in eval mode.
    BatchNorm statistics: each micro-batch its own in training (as per-GPU BN in Goyal et al. 2017, sec. 5.3);
    the running statistics are updated by every micro-batch of the step in the order one process would
    (:class:`pipeline.evaluation.ranks.BatchNormReplay`), the same on every rank.

    Args:
        model: a model with ``reset_classifier`` (pretrained trunk or fresh init), on ``device``.
        train: the training images (``train=True`` augmentation), the same on every rank.
        val: a re-iterable of ``(uint8 images, labels)`` batches (e.g. :class:`pipeline.evaluation.target_data.EvalImages`):
            with ``ranks``, this rank's block of the scored images (:func:`evaluate`).
        on_epoch: called with each epoch's row (``epoch, loss, lr, top1, top5, val_loss, seconds, images, passes,
            steps``; the val fields None for an epoch not scored), in order; a resumed run calls it first with the
            rows of the epochs its checkpoint had finished.
        checkpoints: where the run's checkpoints go and what they must match (None: no checkpoints). With a
            checkpoint there the run continues from it (every rank reads it; rank 0 alone writes).
        ranks: this process's place in a torchrun/SLURM job (None or one rank: one process).
        head: the new classifier's float32 weight (num_classes, D) and bias (num_classes,) to start from (LP-FT:
            :func:`pipeline.evaluation.head_init.probe_head`); None: a random one.
    Returns:
        ``{"epochs": [rows], "final": evaluate(...) of the last epoch, "seconds", "steps", "train_seconds",
        "eval_seconds", "train_images"}`` (a resumed run's seconds include those before the checkpoint); the
        same on every rank.
    Raises:
        pipeline.errors.CheckpointError: the run's checkpoint is unreadable, does not fit, or was written by
            another run or recipe.
    """
    st = settings
    world, rank = (ranks.world, ranks.rank) if ranks is not None else (1, 0)
    t0 = time.perf_counter()
    torch.manual_seed(item_seed("finetune-head", st.seed))
    model.reset_classifier(num_classes, st.head_stages)
    if head is not None:
        fc = model.get_classifier()
        assert isinstance(fc, torch.nn.Linear)
        fc.load_state_dict({"weight": head[0], "bias": head[1]})  # LP-FT: the probe's weights
    model.to(device)
    if st.channels_last:
        model.to(memory_format=torch.channels_last)
    model.set_grad_checkpointing(st.activation_checkpointing)
    # the weight average: a library's (torch.optim.swa_utils), BN buffers averaged too
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(st.ema_decay), use_buffers=True) if st.ema_decay else None
    plans = [
        epoch_batches(len(train), st.batch_size, e, st.seed, st.min_epoch_images, st.max_epoch_images) for e in range(st.epochs)
    ]
    total_steps = sum(len(p) for p in plans)
    peak = scaled_lr(st.batch_size, st.base_lr, st.reference_batch)
    warmup = min(total_steps - 1, round(st.warmup_epochs * len(plans[0]))) if total_steps > 1 else 0
    optimizer = make_optimizer(model, peak, momentum=st.momentum, nesterov=st.nesterov, weight_decay=st.weight_decay)
    scheduler = make_schedule(optimizer, "cosine", total_steps, warmup, st.warmup_start_fraction * peak, peak)
    scaler = torch.amp.GradScaler(device.type, enabled=st.grad_scaler)
    ck = checkpoints
    pos = ck.resume(model, optimizer, scheduler, scaler, ema) if ck is not None else None
    if pos is None:
        pos = FinetunePosition(lr_last=peak)
    else:
        t0 -= pos.seconds
        for done in pos.rows:
            if on_epoch is not None:
                on_epoch(done)
    net: torch.nn.Module = model
    bn_replay = BatchNormReplay(model, ranks)  # running statistics as one process updates them (a no-op on one)
    if world > 1:  # after the checkpoint: DDP's constructor broadcasts rank 0's weights and is the ranks' first meeting
        assert ranks is not None
        net = data_parallel(model, device, sync_buffers=not bn_replay.active)  # the replay keeps the ranks' BN statistics equal

    def save() -> None:
        assert ck is not None
        now = time.perf_counter()
        pos.seconds, pos.epoch_seconds = now - t0, now - te
        if rank == 0:
            ck.save(model, optimizer, scheduler, scaler, pos, ema)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=st.autocast_dtype or torch.float32, enabled=st.autocast_dtype is not None):
            return net(_prep(x, device, st.channels_last)).float()

    final: dict = {}
    for epoch in range(pos.epoch, len(plans)):
        plan = plans[epoch]
        mine = [micro_batches(b, st.device_batch, world, rank) for b in plan]  # this rank's micro-batches of each step
        # what this rank decodes per step: its micro-batches, or the step's first image for an idle rank's pass
        sampler = [[it for c in m for it in c] or plan[i][:1] for i, m in enumerate(mine)]
        te = time.perf_counter() - pos.epoch_seconds
        model.train()
        loader = DataLoader(train, batch_sampler=sampler[pos.batches :], num_workers=st.workers, pin_memory=device.type == "cuda")
        bar = progress_bar(
            loader,
            total=len(plan),
            initial=pos.batches,
            desc=f"{desc} ep {epoch + 1}/{st.epochs}",
            unit="batch",
            disable=not st.progress,
            leave=False,
        )
        for x, y in bar:
            step_images, sizes = len(plan[pos.batches]), [len(c) for c in mine[pos.batches]]
            pos.lr_last = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            y = y.to(device)
            loss_sum = 0.0  # this rank's summed cross-entropy over its images of the step
            if not sizes:  # no micro-batch here: a zero-weighted pass in eval mode (no BN update) joins the all-reduce
                model.eval()
                scaler.scale(forward(x[:1]).sum() * 0.0).backward()
                model.train()
            start = 0
            for j, n in enumerate(sizes):
                sync = j == len(sizes) - 1 or world == 1
                bn_replay.before()
                with contextlib.nullcontext() if sync else net.no_sync():  # type: ignore[operator]
                    ce = F.cross_entropy(forward(x[start : start + n]), y[start : start + n], label_smoothing=st.label_smoothing)
                    # the step's mean over all its images: each micro-batch weighted by its share; DDP averages over ranks
                    weight = n * world / step_images
                    scaler.scale(ce * weight if weight != 1.0 else ce).backward()
                bn_replay.after(j * world + rank)  # this rank's j-th micro-batch is the step's (j W + rank)-th
                loss_sum += float(ce.detach()) * n
                start += n
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            bn_replay.step()
            if ema is not None:
                ema.update_parameters(model)
            pos.step += 1
            pos.batches += 1
            if world > 1:
                (loss_sum,) = sum_over_ranks(ranks, loss_sum)  # type: ignore[arg-type]
            pos.loss_sum += loss_sum
            pos.seen += step_images
            bar.set_postfix(loss=f"{loss_sum / step_images:.3f}", lr=f"{pos.lr_last:.2e}", refresh=False)
            if ck is not None and ck.due(pos.step) and pos.batches < len(plan):
                save()  # inside the epoch (its end has its own checkpoint, after val is scored)
        bar.close()
        pos.train_images += pos.seen
        scored = st.eval_every_epoch or epoch == len(plans) - 1
        if scored:
            tv = time.perf_counter()
            if ranks is not None:
                sync_buffers(ranks, model)
            final = evaluate(
                model, val, device=device, autocast_dtype=st.autocast_dtype, channels_last=st.channels_last, ranks=ranks
            )
            if ema is not None:  # scored beside the raw weights
                if ranks is not None:
                    sync_buffers(ranks, ema)
                final["ema"] = evaluate(
                    ema.module, val, device=device, autocast_dtype=st.autocast_dtype, channels_last=st.channels_last, ranks=ranks
                )
            pos.eval_seconds += time.perf_counter() - tv
        row = {
            "epoch": epoch + 1,
            "loss": round(pos.loss_sum / max(1, pos.seen), 6),
            "lr": pos.lr_last,
            "top1": final["top1"] if scored else None,
            "top5": final["top5"] if scored else None,
            "val_loss": round(final["loss"], 6) if scored else None,
            **(
                {"ema_top1": final["ema"]["top1"] if scored else None, "ema_top5": final["ema"]["top5"] if scored else None}
                if ema
                else {}
            ),
            "seconds": round(time.perf_counter() - te, 3),
            "images": pos.seen,
            "passes": max(1, math.ceil(st.min_epoch_images / len(train))),
            "steps": pos.step,
        }
        pos.rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
        pos.next_epoch(peak)
        te = time.perf_counter()
        if ck is not None and pos.epoch < len(plans):
            save()  # the epoch's end (after the last epoch the caller records the finished run instead)
    seconds = time.perf_counter() - t0
    return {
        "epochs": pos.rows,
        "final": final,
        "seconds": seconds,
        "steps": pos.step,
        "eval_seconds": pos.eval_seconds,
        "train_seconds": seconds - pos.eval_seconds,
        "train_images": pos.train_images,
    }
