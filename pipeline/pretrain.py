"""Pretraining stage: a ResNeXt with multi-label softmax on the hashtag shards, DDP, resumable.

``python -m pipeline.pretrain run_dir=runs/demo [pretrain.model=resnext_mini] ...``
``torchrun --nproc_per_node=N -m pipeline.pretrain run_dir=... `` (DDP; gloo on CPU, NCCL on GPU)

Recipe (Mahajan et al. 2018, sec. 2-3; Goyal et al. 2017): synchronous SGD with Nesterov
momentum 0.9, weight decay 1e-4 (not on BN and biases), lr = 0.1 x global_batch / 256
(linear scaling rule) reached by a linear warmup from 0.1, then cosine or step decay;
zero-init last BN gamma per residual block; FC init N(0, 0.01^2); random-resized crop
and flip; per-sample replication for the chosen resampling; the 1/k soft target with
softmax cross-entropy, or per-class sigmoid + BCE.

Writes into ``<run_dir>/pretrain/`` (rank 0 only): ``checkpoints/step_NNNNNNNN.pt``
(atomic, loadable with ``weights_only=True``), ``metrics.jsonl`` (per optimizer step:
loss, lr, images/s, data-wait fraction), ``eval.jsonl`` (held-out precision@1 and mAP),
``trunk.pth`` + ``trunk.safetensors`` (the trained trunk without its classifier, for
torchvision's constructor with ``strict=True``), ``model.json`` and ``manifest.json``.
A killed run restarts from the last checkpoint and ends with the same weights as an
uninterrupted one (bitwise on CPU).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time

import numpy as np
import torch

from pipeline.io.atomic import remove_stale_temps, write_json
from pipeline.io.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from pipeline.config import ConfigError, results_config, resume_recipe, to_container, validate
from pipeline.train.decoded_cache import DecodedCache, build_decoded_cache, estimate_bytes
from pipeline.train.distributed import (DistInfo, average_buffers, barrier, broadcast_object, cleanup, gather_objects,
                                  init_distributed, weights_checksum)
from pipeline.train.hardware import (PrecisionChoice, available_cores, describe_choice, hardware_record, resolve_for_model,
                               thread_plan)
from pipeline.train.epoch_plan import SampleIndex, make_epoch_plan
from pipeline.train.loader import ShardStream, heldout_mask
from pipeline.train.losses import make_loss
from pipeline.io.manifest import read_manifest, stage_dir, write_manifest
from pipeline.evaluation.metrics import prior_baseline
from pipeline.train.models import create_model, export_trunk, list_models
from pipeline.train.optim import make_optimizer, make_schedule, scaled_lr
from pipeline.io.shards import shard_paths
from pipeline.train.train_loop import LoopSettings, LoopState, evaluate, steps_in_epoch, train, truncate_metrics
from pipeline.vocab import load_labels

log = logging.getLogger(__name__)
STAGE = "pretrain"


def build_indexes(run_dir, scheme: str, heldout_fraction: float) -> tuple[SampleIndex, SampleIndex, object]:
    """Training and held-out :class:`SampleIndex` from the vocab stage's labels.

    Held-out samples (by key hash) are excluded from training; training weights are
    renormalized to mean 1; held-out samples get weight 1 (each seen once).
    """
    labels = load_labels(run_dir)
    full = SampleIndex(np.asarray(labels.keys), labels.indptr.astype(np.int64), labels.indices.astype(np.int64),
                       labels.weights(scheme).astype(np.float64))
    held = heldout_mask(full.keys, heldout_fraction)
    train_idx = full.subset(~held)
    if len(train_idx.keys) == 0:
        raise ConfigError("config error at pretrain.heldout_fraction: no training samples left")
    train_idx.weights = train_idx.weights / train_idx.weights.mean()
    held_idx = full.subset(held)
    held_idx.weights = np.ones(len(held_idx.keys))
    return train_idx, held_idx, labels


def choose_precision(pt, info: DistInfo, num_classes: int, threads: int, recorded: dict | None) -> PrecisionChoice:
    """The run's precision and layout (:mod:`pipeline.train.hardware`), the same on every rank.

    Rank 0 resolves (with a timed trial of this model's step on the CPU, cached per machine)
    and broadcasts its choice; ``recorded`` (from a checkpoint) is kept by a resumed run.
    """
    choice = None
    if info.is_main:
        choice = resolve_for_model(pt.precision, pt.channels_last, info.device, model=pt.model, num_classes=num_classes,
                                   image_size=pt.image_size, batch_size=pt.batch_size, threads=threads,
                                   recorded=recorded, where="pretrain.precision").to_dict()
    choice = broadcast_object(info, choice)
    return PrecisionChoice.from_dict(choice)


def run_pretrain(cfg) -> dict | None:
    """Run (or resume) pretraining; return the manifest on rank 0, None elsewhere.

    Raises:
        pipeline.config.ConfigError: bad values (e.g. a global batch that is not a multiple
            of batch_size x world), before any work.
        FileNotFoundError: ingest or vocab has not finished in ``run_dir``.
    """
    validate(cfg)
    pt = cfg.pretrain
    if pt.model not in list_models():
        raise ConfigError(f"config error at pretrain.model: unknown model {pt.model!r}; known: {list_models()}")
    if pt.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("config error at pretrain.tensorboard: the tensorboard package is not installed") from None
    t0 = time.perf_counter()
    info = init_distributed(pt.device)
    try:
        return _run(cfg, pt, info, t0)
    finally:
        cleanup(info)


def _run(cfg, pt, info: DistInfo, t0: float) -> dict | None:
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads = thread_plan(info.device.type, available_cores(), local_world, threads=pt.threads, workers=pt.workers)
    torch.set_num_threads(threads.threads)
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    out = stage_dir(cfg.run_dir, STAGE)
    per_step = pt.batch_size * info.world
    global_batch = pt.global_batch or per_step
    if global_batch % per_step:
        raise ConfigError(f"config error at pretrain.global_batch: {global_batch} is not a multiple of "
                          f"batch_size x world = {pt.batch_size} x {info.world}")
    accum = global_batch // per_step
    train_idx, held_idx, labels = build_indexes(cfg.run_dir, str(pt.resampling),
                                                pt.heldout_fraction)
    num_classes = labels.num_classes
    shards = {int(p.stem): p for p in shard_paths(cfg.run_dir)}
    plans = [make_epoch_plan(train_idx, seed=cfg.seed, epoch=e, world=info.world, batch_size=pt.batch_size)
             for e in range(pt.epochs)]
    steps_per_epoch = [steps_in_epoch(p.steps, accum) for p in plans]
    total_steps = sum(steps_per_epoch)
    peak = scaled_lr(global_batch, pt.base_lr, pt.reference_batch)
    warmup_steps = min(total_steps - 1, round(pt.warmup_epochs * steps_per_epoch[0])) if total_steps > 1 else 0

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)  # unused by training, but saved in checkpoints: same seed, same files
    np.random.seed(cfg.seed)
    model = create_model(pt.model, num_classes=num_classes).to(info.device)
    optimizer = make_optimizer(model, peak, momentum=pt.momentum, nesterov=pt.nesterov, weight_decay=pt.weight_decay)
    # Goyal et al. warm up *from* 0.1 *to* a larger scaled lr; with a small global batch the
    # scaled lr is below 0.1 and there is nothing to warm up from.
    warmup_start = min(pt.warmup_start_lr, peak)
    scheduler = make_schedule(optimizer, pt.schedule, total_steps, warmup_steps, warmup_start, peak,
                              milestones=list(pt.milestones), gamma=pt.gamma, final_lr_fraction=pt.final_lr_fraction)
    state = LoopState()
    ckpt_dir = out / "checkpoints"
    resolved = to_container(cfg)
    last = latest_checkpoint(ckpt_dir) if ckpt_dir.exists() else None
    recorded = None
    scaler_state = None
    if last is not None:
        got = load_checkpoint(last, model, optimizer, scheduler, restore_rng=True)
        if resume_recipe(got["config"]) != resume_recipe(resolved):
            raise ConfigError(f"config error at pretrain: {last} was written with another pretrain config; "
                              f"use a new run_dir or delete {ckpt_dir} to start over")
        pos = got["data_position"]
        state = LoopState(step=got["step"], epoch=pos["epoch"], batches=pos["batches"])
        recorded = got["extra"].get("precision_choice")
        scaler_state = got["extra"].get("grad_scaler")
        log.info("resuming from %s (step %d, epoch %d, batch %d)", last, state.step, state.epoch, state.batches)
    elif info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").unlink(missing_ok=True)
    # after the checkpoint (a resumed run keeps its numerics); the trial saves and restores the RNG state
    prec = choose_precision(pt, info, num_classes, threads.threads, recorded)
    prec.apply_global()
    if prec.channels_last:
        model = model.to(memory_format=torch.channels_last)  # same Parameter objects: the optimizer keeps them
    log.info("pretrain on %s", describe_choice(prec, threads))
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)  # e.g. a checkpoint half-written when the last run was killed
        truncate_metrics(out / "metrics.jsonl", state.step)
        truncate_metrics(out / "eval.jsonl", state.step)
    barrier(info)

    ddp_model = model
    if pt.compile:
        ddp_model = torch.compile(ddp_model)
    if info.distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            ddp_model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            broadcast_buffers=False)
    scaler = prec.grad_scaler_for(info.device.type)
    if scaler_state and scaler.is_enabled():
        scaler.load_state_dict(scaler_state)
    decoded, decoded_info = open_decoded_cache(pt, info, out, np.concatenate([train_idx.keys, held_idx.keys]), shards)
    stream = ShardStream(shards, train_idx, seed=cfg.seed, rank=info.rank, world=info.world,
                         batch_size=pt.batch_size, image_size=pt.image_size, shuffle_buffer=pt.shuffle_buffer,
                         normalize_in_workers=info.device.type == "cpu" and threads.workers > 0, decoded=decoded)
    held_stream = ShardStream(shards, held_idx, seed=cfg.seed, rank=0, world=1, batch_size=pt.batch_size * 2,
                              image_size=pt.image_size, train=False, decoded=decoded) if len(held_idx.keys) else None

    def save(st: LoopState) -> None:
        if info.is_main:
            save_checkpoint(checkpoint_path(ckpt_dir, st.step), model=model, optimizer=optimizer, scheduler=scheduler,
                            step=st.step, epoch=st.epoch, data_position={"epoch": st.epoch, "batches": st.batches},
                            config=resolved, extra={"num_classes": num_classes, "model": pt.model,
                                                    "precision_choice": prec.to_dict(),
                                                    "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None})
            prune_checkpoints(ckpt_dir, pt.keep_checkpoints)

    evals: list[dict] = []

    def run_eval(step: int) -> dict | None:
        if not info.is_main or held_stream is None:
            return None
        r = evaluate(model, held_stream, device=info.device, num_classes=num_classes, autocast_dtype=prec.autocast_dtype,
                     channels_last=prec.channels_last)
        r["step"] = step
        evals.append(r)
        # a rerun after a kill may redo an eval that is already logged (the step-0 eval of a run
        # killed before its first checkpoint, an epoch-end eval after the checkpoint of that step)
        truncate_metrics(out / "eval.jsonl", step - 1)
        with open(out / "eval.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
        log.info("held-out eval at step %d: precision@1 %.4f, mAP %.4f (%d samples)", step,
                 r["precision_at_1"], r["mAP"], r["samples"])
        return r

    if state.step == 0 and info.is_main and held_stream is not None:
        run_eval(0)  # the from-scratch (random init) level
    nice = worker_nice(pt.worker_nice, info.device.type, decoded is not None)
    if nice and threads.workers:
        log.info("loader workers at niceness +%d (%s)", nice, "pretrain.worker_nice" if pt.worker_nice is not None
                 else "auto: CPU training from the decoded cache; set pretrain.worker_nice=0 on a shared machine")
    settings = LoopSettings(
        epochs=pt.epochs, accum=accum, total_steps=total_steps, loss_name=str(pt.loss),
        num_classes=num_classes, autocast_dtype=prec.autocast_dtype, channels_last=prec.channels_last,
        checkpoint_every=pt.checkpoint_every_steps, eval_every=pt.eval_every_steps, workers=threads.workers, worker_nice=nice,
        progress=pt.progress, metrics_file=out / "metrics.jsonl", pin_memory=info.device.type == "cuda",
        record_keys=pt.audit_data)
    stats = train(model=model, ddp_model=ddp_model, optimizer=optimizer, scheduler=scheduler,
                  loss_fn=make_loss(settings.loss_name), stream=stream, info=info, settings=settings, state=state,
                  save=save, run_eval=run_eval, max_steps=pt.max_steps, scaler=scaler)
    average_buffers(info, model)
    checksums = gather_objects(info, weights_checksum(model))  # also: every rank is done reading the decoded cache
    if info.is_main and decoded is not None:
        shutil.rmtree(decoded.folder, ignore_errors=True)
    audit = None
    seen = gather_objects(info, stats.pop("seen_keys")) if pt.audit_data else None
    if not info.is_main:
        return None
    if seen is not None:
        sets = [set(x) for x in seen]
        overlap = set.intersection(*sets) if len(sets) > 1 else set()
        audit = {"per_rank": [len(x) for x in seen], "distinct_per_rank": [len(x) for x in sets],
                 "overlap_between_ranks": len(overlap), "union": len(set().union(*sets))}
        write_json(out / "data_audit.json", audit)
    export_trunk(model, out / "trunk")
    write_json(out / "model.json", {"model": pt.model, "num_classes": num_classes, "image_size": pt.image_size,
                                    "trunk": ["trunk.pth", "trunk.safetensors"], "num_features": model.num_features})
    all_evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()] if (out / "eval.jsonl").exists() else []
    steps_logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").exists() else []
    if steps_logged:  # the last step's loss, also when a rerun resumed from the final checkpoint (no step this run)
        stats["final_loss"] = steps_logged[-1]["loss"]
    held_targets = np.zeros((len(held_idx.keys), num_classes))
    for i in range(len(held_idx.keys)):
        held_targets[i, held_idx.classes(i)] = 1
    chance = prior_baseline(labels.class_counts / max(1, labels.class_counts.sum()), held_targets) if len(held_idx.keys) else {}
    final = all_evals[-1] if all_evals else {}
    step0 = next((e for e in all_evals if e["step"] == 0), {})
    counts = {
        **stats, "epochs": pt.epochs, "total_steps": total_steps, "global_batch": global_batch, "accum": accum,
        "world": info.world, "peak_lr": peak, "warmup_steps": warmup_steps, "num_classes": num_classes,
        "train_samples": int(len(train_idx.keys)), "heldout_samples": int(len(held_idx.keys)),
        "epoch_items": [p.num_items for p in plans],
        "heldout_precision_at_1": final.get("precision_at_1"), "heldout_mAP": final.get("mAP"),
        "scratch_precision_at_1": step0.get("precision_at_1"), "scratch_mAP": step0.get("mAP"),
        "prior_precision_at_1": chance.get("precision_at_1"), "prior_mAP": chance.get("mAP"),
        "precision": prec.precision, "channels_last": prec.channels_last, "device": str(info.device),
        "hardware": {**hardware_record(prec, threads, info.device), "worker_nice": nice, "compile": bool(pt.compile)},
        "decoded_cache": decoded_info,
        "rank_weight_checksums": checksums, "ranks_weights_identical": len(set(checksums)) == 1,
    }
    inputs = {s: (read_manifest(stage_dir(cfg.run_dir, s)) or {}).get("config_hash") for s in ("ingest", "dedup", "vocab")}
    config = results_config(cfg, "seed", "pretrain")
    return write_manifest(out, stage=STAGE, config=config, inputs=inputs, counts=counts,
                          seconds=time.perf_counter() - t0,
                          outputs={"trunk": "trunk.safetensors", "metrics": "metrics.jsonl", "eval": "eval.jsonl",
                                   "checkpoints": "checkpoints/"})


def worker_nice(requested: int | None, device_type: str, decoded: bool) -> int:
    """The loader workers' niceness: ``requested``, or (None) 19 on a CPU training from the decoded cache, else 0.

    From the decoded cache a worker only crops, flips and normalizes (about 0.3 ms of CPU per
    image); at the lowest priority it runs in the gaps the step's threads leave instead of
    preempting them (train step 0.97x the bare loop instead of 0.89x on 2 AVX2 cores,
    benchmarks/train_step). Decoding workers need real CPU share and keep priority 0, as do
    GPU runs, whose workers have cores of their own.
    """
    if requested is not None:
        return int(requested)
    return 19 if (device_type == "cpu" and decoded) else 0


def open_decoded_cache(pt, info: DistInfo, out, keys: np.ndarray, shards: dict) -> tuple[DecodedCache | None, dict]:
    """The decoded uint8 copy of every sample in ``keys`` (:mod:`pipeline.train.decoded_cache`), or None.

    ``pretrain.decoded_cache``: "on", "off", or "auto" (on when the size estimate
    ``N x 3 x (2 x image_size)^2`` bytes fits in ``pretrain.decoded_cache_max_gb``). The main
    rank builds it in ``<stage>/decoded_cache/`` with all the cores it may use (a resumed run
    reuses a complete one); the other ranks wait at a barrier and open it.

    Returns:
        (cache or None, a record for the manifest: mode, enabled, reason, images, bytes, build seconds).
    """
    est = estimate_bytes(len(keys), pt.image_size)
    budget = pt.decoded_cache_max_gb * 1e9
    if pt.decoded_cache == "off" or (pt.decoded_cache == "auto" and est > budget):
        why = ("pretrain.decoded_cache=off" if pt.decoded_cache == "off" else
               f"estimate {est / 1e9:.1f} GB > decoded_cache_max_gb {pt.decoded_cache_max_gb:g}")
        log.info("decoded cache: not used (%s); the loader decodes the shards every epoch", why)
        return None, {"mode": pt.decoded_cache, "enabled": False, "reason": why}
    t = time.perf_counter()
    folder = out / "decoded_cache"
    if info.is_main:
        build_decoded_cache(folder, keys, shards, pt.image_size, workers=available_cores(), progress=pt.progress)
    barrier(info)
    cache = DecodedCache(folder)
    size = int(sum(int(h) * int(w) * 3 for h, w in zip(cache.heights, cache.widths)))
    return cache, {"mode": pt.decoded_cache, "enabled": True, "images": len(cache), "bytes": size,
                   "estimate_bytes": est, "seconds": round(time.perf_counter() - t, 2),
                   "reason": "pretrain.decoded_cache=on" if pt.decoded_cache == "on" else
                   f"estimate {est / 1e9:.2f} GB <= decoded_cache_max_gb {pt.decoded_cache_max_gb:g}"}


def main() -> None:
    """Hydra entry point: ``python -m pipeline.pretrain [overrides]`` (also under torchrun)."""
    from pipeline.cli import hydra_entry

    hydra_entry(run_pretrain, STAGE)


if __name__ == "__main__":
    main()
