"""The synchronous-SGD training loop: accumulation, DDP, bf16 autocast, logging, resume.

One optimizer step covers ``accum`` micro-batches on each of ``world`` ranks. Each
rank's loss is scaled so that DDP's gradient *average* over ranks equals the gradient
of the mean loss over all images of the step (Goyal et al. 2017, sec. 3, "normalize
the per-worker loss by the total minibatch size kn, not the per-worker size n"):

    scaled = mean_local_loss x n_local x world / n_step_total

where ``n_step_total`` (all ranks, all micro-batches of the step) comes from the epoch
plan, so it is exact even for uneven final batches. Micro-batches other than the last
of a step run under ``no_sync`` (no allreduce). Every rank does the same number of
micro-batches (the plan guarantees it), so DDP never waits on a finished rank.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np
import torch

from pipeline.io.atomic import write_text
from pipeline.progress import progress_bar
from pipeline.train.distributed import DistInfo, barrier
from pipeline.train.loader import ShardStream, make_loader
from pipeline.train.losses import microbatch_loss_scale
from pipeline.train.metrics import labels_to_csr, mean_average_precision, precision_at_1
from pipeline.train.targets import batch_multi_hot, batch_soft_targets
from pipeline.vision.transforms import normalize

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Counters saved in checkpoints: optimizer steps done, and the data position."""

    step: int = 0  # optimizer steps completed
    epoch: int = 0  # epoch in progress
    batches: int = 0  # micro-batches of ``epoch`` already trained on (this rank; same on all)


@dataclass
class LoopSettings:
    """What the loop needs besides the model, optimizer and data: the pretrain config section and what is derived.

    From ``pt`` (:class:`pipeline.config.PretrainConfig`, or its DictConfig) the loop reads
    ``epochs``, ``loss``, ``checkpoint_every_steps``, ``eval_every_steps`` (0 = at each epoch end),
    ``progress`` and ``audit_data`` (keep the (epoch, key) of every sample trained on); the rest
    is derived by the stage from the config, the samples and the machine.
    """

    pt: Any  # the pretrain config section
    accum: int  # micro-batches per optimizer step (pipeline.train.recipe.accumulation)
    total_steps: int  # optimizer steps of the whole run (pipeline.train.recipe.StepPlan)
    num_classes: int  # from the vocab stage's labels
    autocast_dtype: torch.dtype | None  # the resolved precision (pipeline.train.precision.PrecisionChoice)
    channels_last: bool  # the resolved memory layout
    workers: int  # loader workers per rank (pipeline.system.thread_plan)
    metrics_file: Path  # where rank 0 appends one row per optimizer step
    pin_memory: bool = False
    worker_nice: int = 0  # niceness added to the loader workers (pipeline.train.loader.worker_nice)


TEST_KILL_ENV = "PIPELINE_TEST_KILL_RANK_AT_STEP"


def _test_kill_hook(spec: str | None, rank: int, step: int) -> None:
    """Test hook, off unless ``PIPELINE_TEST_KILL_RANK_AT_STEP=RANK:STEP:MARKER_FILE`` is set (by
    tests/test_crash_safety.py): rank RANK SIGKILLs itself after optimizer step STEP (and its
    checkpoint), once: it creates MARKER_FILE first and does nothing while that file exists,
    so the job torchrun restarts runs through."""
    if not spec:
        return
    r, s, marker = spec.split(":", 2)
    if int(r) == rank and int(s) == step and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)


ESTIMATE_AFTER_STEPS = 10
ESTIMATE_AFTER_SECONDS = 30.0


def cost_estimate(images: int, seconds: float, steps_done: int, steps_left: int, images_per_step: float) -> str:
    """One log line: measured img/s over the first steps and the estimated time left (minutes).

    (The first steps include warm-up costs, so the estimate errs on the long side.)
    """
    ips = images / seconds if seconds > 0 else float("nan")
    left_s = steps_left * images_per_step / ips if ips and ips > 0 else float("nan")
    return (
        f"pretrain: {ips:.0f} img/s measured over the first {steps_done} steps; {steps_left} steps "
        f"(~{steps_left * images_per_step:,.0f} images) left: about {left_s / 60:.1f} min"
    )


def steps_in_epoch(micro_batches: int, accum: int) -> int:
    """Optimizer steps in an epoch of ``micro_batches`` (the last step may be short)."""
    return math.ceil(micro_batches / accum)


def targets_for(loss_name: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C) float32 targets: soft 1/k targets for softmax, multi-hot for sigmoid."""
    return batch_soft_targets(labels, num_classes) if loss_name == "softmax" else batch_multi_hot(labels, num_classes)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    stream: ShardStream,
    *,
    device: torch.device,
    num_classes: int,
    autocast_dtype: torch.dtype | None,
    channels_last: bool,
    workers: int = 0,
) -> dict:
    """Held-out precision@1 and mAP of ``model`` over ``stream`` (eval transform, rank 0 only).

    Holds the scores, float32 (N, C), and the targets as CSR (:mod:`pipeline.train.metrics`).
    """
    was_training = model.training
    model.eval()
    scores, indptrs, indices = [], [np.zeros(1, np.int64)], []
    stream.set_epoch(0)
    for batch in make_loader(stream, workers):
        x = normalize(batch["images"].to(device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(x)
        scores.append(logits.float().cpu().numpy())
        ip, ix = labels_to_csr(batch["labels"])  # sparse targets: never a dense (N, C) multi-hot
        indptrs.append(ip[1:] + indptrs[-1][-1])
        indices.append(ix)
    model.train(was_training)
    if not scores:
        return {"precision_at_1": float("nan"), "mAP": float("nan"), "samples": 0}
    s, ip, ix = np.concatenate(scores), np.concatenate(indptrs), np.concatenate(indices)
    return {"precision_at_1": precision_at_1(s, ip, ix), "mAP": mean_average_precision(s, ip, ix), "samples": int(len(s))}


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")


def _step_of(line: str) -> int | None:
    try:
        return json.loads(line).get("step", 0)
    except ValueError:  # a partial last line: the append was cut by a crash or a full disk
        return None


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop metric rows of steps > ``after_step`` (a resumed run rewrites them), and partial lines."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
        if line.strip() and (step := _step_of(line)) is not None and step <= after_step
    ]
    write_text(path, "".join(line + "\n" for line in keep))


def train(
    *,
    model: torch.nn.Module,
    ddp_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    stream: ShardStream,
    info: DistInfo,
    settings: LoopSettings,
    state: LoopState,
    save: Callable[[LoopState], None],
    run_eval: Callable[[int], dict | None],
    max_steps: int | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict:
    """Train from ``state`` to the end (or ``max_steps``); return throughput statistics.

    ``save(state)`` is called (on every rank; it writes on rank 0) every
    ``pretrain.checkpoint_every_steps`` optimizer steps and at the end. ``run_eval(step)`` is
    called at the evaluation points. ``scaler``: fp16 loss scaling (``torch.amp.GradScaler``;
    None or disabled for fp32/bf16, where it is a pass-through).

    After the first :data:`ESTIMATE_AFTER_STEPS` steps (or :data:`ESTIMATE_AFTER_SECONDS`),
    rank 0 logs the measured img/s and the estimated time left, so a slow machine shows in
    the first minute, not after hours.
    """
    scaler = scaler or torch.amp.GradScaler(info.device.type, enabled=False)
    dev = info.device
    s = settings
    loss_name, eval_every = str(s.pt.loss), s.pt.eval_every_steps
    images_seen, t_wait, t_total = 0, 0.0, 0.0
    seen_keys: list[str] = []
    last_loss = float("nan")
    stop_at = min(s.total_steps, max_steps) if max_steps else s.total_steps
    bar = progress_bar(
        total=stop_at, initial=state.step, unit="step", desc="pretrain", disable=not (s.pt.progress and info.is_main)
    )
    estimated = False
    run_start_step = state.step
    ddp_model.train()
    # on a distributed job (the only one calling no_sync) wrap_model has wrapped the model in DistributedDataParallel
    ddp = cast("torch.nn.parallel.DistributedDataParallel", ddp_model)
    done = state.step >= stop_at
    kill_spec = os.environ.get(TEST_KILL_ENV)
    while state.epoch < s.pt.epochs and not done:
        plan = stream.set_epoch(state.epoch, skip_batches=state.batches)
        loader = make_loader(stream, s.workers, pin_memory=s.pin_memory, worker_nice=s.worker_nice)
        micro = 0
        window_loss, window_n = 0.0, 0
        t_step0 = time.perf_counter()
        t_wait_step = 0.0
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            t_wait_step += time.perf_counter() - t0
            b = batch["step"]
            first_of_step = (b // s.accum) * s.accum
            step_batches = range(first_of_step, min(first_of_step + s.accum, plan.steps))
            n_step_total = sum(plan.global_batch(j) for j in step_batches)
            last_micro = b == step_batches[-1]
            x = normalize(batch["images"].to(dev, non_blocking=True))
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = targets_for(loss_name, batch["labels"].to(dev, non_blocking=True), s.num_classes)
            sync = contextlib.nullcontext() if (last_micro or not info.distributed) else ddp.no_sync()
            with sync:
                with torch.autocast(dev.type, dtype=s.autocast_dtype or torch.float32, enabled=s.autocast_dtype is not None):
                    logits = ddp_model(x)
                loss = loss_fn(logits.float(), y)
                n_local = x.shape[0]
                scaler.scale(loss * microbatch_loss_scale(n_local, n_step_total, info.world)).backward()
            if s.pt.audit_data:
                seen_keys.extend(f"{state.epoch}/{k}" for k in batch["keys"])
            window_loss += loss.item() * n_local
            window_n += n_local
            micro += 1
            state.batches = b + 1
            if not last_micro:
                continue
            scaler.step(optimizer)  # optimizer.step(), or skipped on inf/NaN fp16 gradients
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state.step += 1
            now = time.perf_counter()
            dt = now - t_step0
            images_seen += n_step_total
            t_total += dt
            t_wait += t_wait_step
            last_loss = window_loss / max(1, window_n)
            if info.is_main:
                row = {
                    "step": state.step,
                    "epoch": state.epoch,
                    "loss": round(last_loss, 6),
                    "lr": optimizer.param_groups[0]["lr"],
                    "images": n_step_total,
                    "images_per_second": round(n_step_total / dt, 2) if dt > 0 else None,
                    "data_wait_fraction": round(t_wait_step / dt, 4) if dt > 0 else None,
                }
                _append_jsonl(s.metrics_file, row)
                bar.set_postfix(
                    loss=f"{last_loss:.3f}",
                    img_s=f"{images_seen / max(t_total, 1e-9):.0f}",
                    wait=f"{t_wait / max(t_total, 1e-9):.0%}",
                    refresh=False,
                )
                bar.update(1)
                done_here = state.step - run_start_step
                if not estimated and (done_here >= ESTIMATE_AFTER_STEPS or t_total >= ESTIMATE_AFTER_SECONDS):
                    estimated = True
                    log.info(
                        "%s",
                        cost_estimate(images_seen, t_total, done_here, stop_at - state.step, images_seen / max(1, done_here)),
                    )
            window_loss, window_n = 0.0, 0
            if eval_every and state.step % eval_every == 0:
                run_eval(state.step)  # before the checkpoint: a run resumed from it must not miss this eval
            if state.step % s.pt.checkpoint_every_steps == 0 and state.step < stop_at:
                save(state)
            _test_kill_hook(kill_spec, info.rank, state.step)
            if state.step >= stop_at:
                done = True
                break
            t_step0 = time.perf_counter()
            t_wait_step = 0.0
        del it, loader
        if done and state.batches < plan.steps:
            break
        state.epoch += 1
        state.batches = 0
        if not eval_every:
            run_eval(state.step)
    bar.close()
    if done and (eval_every == 0 or state.step % eval_every) and state.batches:
        run_eval(state.step)  # stopped mid-epoch by max_steps: evaluate where we stopped
    save(state)
    barrier(info)
    return {
        "steps": state.step,
        "images_seen_this_run": images_seen,
        "train_seconds_this_run": round(t_total, 3),
        "images_per_second": round(images_seen / t_total, 2) if t_total else None,
        "data_wait_fraction": round(t_wait / t_total, 4) if t_total else None,
        "final_loss": last_loss,
        "seen_keys": seen_keys,
    }
