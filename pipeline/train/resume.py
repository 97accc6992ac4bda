"""Resume handling of the pretraining stage: restart from the last checkpoint, save checkpoints, tidy the folder.

A killed run restarts from ``<stage>/checkpoints/``'s last checkpoint (model, optimizer,
scheduler, RNG states, data position, precision choice, gradient scaler) and ends with the same
weights as an uninterrupted one (bitwise on CPU). A checkpoint of another pretrain recipe
(:func:`pipeline.config_views.resume_recipe`) is refused, never silently continued.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.config_views import resume_recipe
from pipeline.errors import ConfigError
from pipeline.io.atomic import remove_stale_temps
from pipeline.io.run_folder import CHECKPOINT_DIR, EVAL_FILE, MANIFEST, METRICS_FILE
from pipeline.train.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from pipeline.train.shard_samples import DATA_PLAN
from pipeline.train.train_loop import LoopState, truncate_metrics

__all__ = ["ResumePoint", "checkpoint_saver", "prepare_stage_dir", "resume_point"]

log = logging.getLogger(__name__)


@dataclass
class ResumePoint:
    """Where a run starts: the loop counters, and what a resumed run keeps from its checkpoint."""

    state: LoopState = field(default_factory=LoopState)
    precision_choice: dict | None = None  # pipeline.train.precision.PrecisionChoice.to_dict() of the checkpoint
    grad_scaler: dict | None = None  # the fp16 gradient scaler's state_dict, or None


def resume_point(out: Path, model, optimizer, scheduler, config: dict, is_main: bool) -> ResumePoint:
    """Load the last checkpoint in ``out/checkpoints`` into model, optimizer and scheduler (and the RNGs), if any.

    Without one, rank 0 creates ``out`` and removes a stale ``manifest.json`` (the stage is redone).

    Raises:
        pipeline.errors.ConfigError: the checkpoint was written with another pretrain recipe than
            ``config`` (the resolved run config), or by another data path (its ``data_position`` has no
            ``plan`` equal to :data:`pipeline.train.shard_samples.DATA_PLAN`).
    """
    ckpt_dir = out / CHECKPOINT_DIR
    last = latest_checkpoint(ckpt_dir) if ckpt_dir.exists() else None
    if last is None:
        if is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / MANIFEST).unlink(missing_ok=True)
        return ResumePoint()
    got = load_checkpoint(last, model, optimizer, scheduler, restore_rng=True)
    if resume_recipe(got["config"]) != resume_recipe(config):
        raise ConfigError(
            f"config error at pretrain: {last} was written with another pretrain config; "
            f"use a new run_dir or delete {ckpt_dir} to start over"
        )
    pos = got["data_position"]
    if pos.get("plan") != DATA_PLAN:
        raise ConfigError(
            f"config error at pretrain: {last} was written by the whole-corpus data path (before the shard-level "
            f"epoch plan), whose batches differ, so it cannot resume exactly; use a new run_dir or delete {ckpt_dir}"
        )
    state = LoopState(step=got["step"], epoch=pos["epoch"], batches=pos["batches"])
    log.info("resuming from %s (step %d, epoch %d, batch %d)", last, state.step, state.epoch, state.batches)
    return ResumePoint(state, got["extra"].get("precision_choice"), got["extra"].get("grad_scaler"))


def prepare_stage_dir(out: Path, step: int) -> None:
    """Rank 0, before training: remove temp files a killed run left (e.g. a half-written checkpoint) and the
    metric and eval rows of steps after ``step`` (a resumed run writes them again)."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    truncate_metrics(out / METRICS_FILE, step)
    truncate_metrics(out / EVAL_FILE, step)


def checkpoint_saver(
    out: Path,
    *,
    model,
    optimizer,
    scheduler,
    config: dict,
    keep: int,
    is_main: bool,
    num_classes: int,
    model_name: str,
    precision,
    scaler,
) -> Callable[[LoopState], None]:
    """``save(state)`` for :func:`pipeline.train.train_loop.train`: rank 0 writes ``checkpoints/step_NNNNNNNN.pt``
    (atomic; the data position, the resolved ``config``, the precision choice and the gradient scaler's
    state with it) and keeps the last ``keep``; other ranks do nothing."""
    ckpt_dir = out / CHECKPOINT_DIR

    def save(st: LoopState) -> None:
        if is_main:
            save_checkpoint(
                checkpoint_path(ckpt_dir, st.step),
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                step=st.step,
                epoch=st.epoch,
                data_position={"epoch": st.epoch, "batches": st.batches, "plan": DATA_PLAN},
                config=config,
                extra={
                    "num_classes": num_classes,
                    "model": model_name,
                    "precision_choice": precision.to_dict(),
                    "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
                },
            )
            prune_checkpoints(ckpt_dir, keep)

    return save
