"""Each rank's compute for the pretraining stage: threads, the precision every rank shares, the DDP wrapper,
and what the ranks hand in at the end (averaged BN statistics, weight checksums, the sample keys trained on)."""

from __future__ import annotations

import logging
import os
import shutil
from typing import cast

import torch

from pipeline.system import ThreadPlan, available_cores, thread_plan
from pipeline.train.distributed import (
    DistInfo,
    average_buffers,
    broadcast_object,
    data_parallel,
    gather_objects,
    weights_checksum,
)
from pipeline.train.precision import PrecisionChoice, describe_choice, resolve_for_model

__all__ = ["choose_precision", "gather_results", "grad_scaler", "set_numerics", "set_threads", "wrap_model"]

log = logging.getLogger(__name__)


def set_threads(pt, info: DistInfo) -> ThreadPlan:
    """This rank's torch threads and loader workers (:func:`pipeline.system.thread_plan`), applied.

    The cores are shared by the ``LOCAL_WORLD_SIZE`` ranks of the node; ranks other than 0 log
    warnings only.
    """
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads = thread_plan(info.device.type, available_cores(), local_world, threads=pt.threads, workers=pt.workers)
    torch.set_num_threads(threads.threads)
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    return threads


def choose_precision(pt, info: DistInfo, num_classes: int, threads: int, recorded: dict | None) -> PrecisionChoice:
    """The run's precision and layout (:mod:`pipeline.train.precision`), the same on every rank.

    Rank 0 resolves (with a timed trial of this model's step on the CPU, cached per machine)
    and broadcasts its choice; ``recorded`` (from a checkpoint) is kept by a resumed run.
    """
    choice = None
    if info.is_main:
        choice = resolve_for_model(
            pt.precision,
            pt.channels_last,
            info.device,
            model=pt.model,
            num_classes=num_classes,
            image_size=pt.image_size,
            batch_size=pt.batch_size,
            threads=threads,
            recorded=recorded,
            where="pretrain.precision",
        ).to_dict()
    choice = broadcast_object(info, choice)
    return PrecisionChoice.from_dict(choice)


def set_numerics(
    pt, info: DistInfo, model: torch.nn.Module, num_classes: int, threads: ThreadPlan, recorded: dict | None
) -> tuple[torch.nn.Module, PrecisionChoice]:
    """Choose (:func:`choose_precision`) and apply the run's precision and layout: (model, choice).

    Call it after loading a checkpoint (a resumed run keeps its numerics, ``recorded``); the
    timed trial saves and restores the RNG state. In channels-last the model keeps its Parameter
    objects, so an optimizer made before keeps them.
    """
    prec = choose_precision(pt, info, num_classes, threads.threads, recorded)
    prec.apply_global()
    if prec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    log.info("pretrain on %s", describe_choice(prec, threads))
    return model, prec


def grad_scaler(prec: PrecisionChoice, device_type: str, state: dict | None) -> torch.amp.GradScaler:
    """The precision's gradient scaler (enabled for fp16 only), restored from a checkpoint's ``state`` if any."""
    scaler = prec.grad_scaler_for(device_type)
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)
    return scaler


def wrap_model(model: torch.nn.Module, info: DistInfo, compile_model: bool) -> torch.nn.Module:
    """The module the loop calls: ``model``, ``torch.compile``\\ d if asked, in DistributedDataParallel on a multi-rank job.

    Buffers are not broadcast: BN statistics stay per rank during training (Goyal et al. 2017,
    sec. 5.3) and are averaged once at the end (:func:`gather_results`).
    """
    wrapped = model
    if compile_model:
        # torch's stubs type torch.compile as returning a Callable; for a Module it is a Module (OptimizedModule)
        wrapped = cast(torch.nn.Module, torch.compile(wrapped))
    if info.distributed:
        wrapped = data_parallel(wrapped, info.device, sync_buffers=False)
    return wrapped


def gather_results(
    info: DistInfo, model: torch.nn.Module, seen_keys: list[str] | None, decoded
) -> tuple[list[float], list[list[str]] | None]:
    """After training, on every rank: average the BN statistics, gather each rank's weight checksum and (audit)
    its ``seen_keys``; rank 0 then removes the decoded cache (every rank is done reading it).

    Returns:
        (weight checksums in rank order, every rank's seen keys or None when ``seen_keys`` is None).
    """
    average_buffers(info, model)
    checksums = gather_objects(info, weights_checksum(model))  # also: every rank is done reading the decoded cache
    if info.is_main and decoded is not None:
        shutil.rmtree(decoded.folder, ignore_errors=True)
    seen = gather_objects(info, seen_keys) if seen_keys is not None else None
    return checksums, seen
