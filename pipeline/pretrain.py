"""Pretraining stage: a ResNeXt with multi-label softmax on the hashtag shards, DDP, resumable.

``python -m pipeline.pretrain run_dir=runs/demo [pretrain.model=resnext_mini] ...``
``torchrun --nproc_per_node=N -m pipeline.pretrain run_dir=... `` (DDP; gloo on CPU, NCCL on GPU)

Recipe (Mahajan et al. 2018, sec. 2-3; Goyal et al. 2017; :mod:`pipeline.train.recipe`): synchronous
SGD with Nesterov momentum 0.9, weight decay 1e-4 (not on BN and biases), lr = 0.1 x global_batch / 256
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
uninterrupted one (bitwise on CPU; :mod:`pipeline.train.resume`).
"""

from __future__ import annotations

import functools
import logging
import time

from pipeline.cli import hydra_entry
from pipeline.config import to_container, validate
from pipeline.config_views import results_config
from pipeline.io.atomic import write_json
from pipeline.io.labels import vocab_class_counts
from pipeline.io.manifest import read_manifest, stage_dir, write_manifest
from pipeline.io.run_folder import (
    CHECKPOINT_DIR,
    DATA_AUDIT_FILE,
    DEDUP,
    EVAL_FILE,
    INGEST,
    METRICS_FILE,
    SHARD_LABELS_DIR,
    TRUNK_FILE,
    VOCAB,
    path,
)
from pipeline.io.shards import shard_paths
from pipeline.train.decoded_cache import open_decoded_cache
from pipeline.train.distributed import DistInfo, barrier, cleanup, gather_objects, init_distributed
from pipeline.train.heldout_eval import HeldoutEval
from pipeline.train.loader import loader_niceness, pretrain_streams
from pipeline.train.losses import make_loss
from pipeline.train.rank_setup import gather_results, grad_scaler, set_numerics, set_threads, wrap_model
from pipeline.train.recipe import accumulation, build_model, check_recipe, plan_steps
from pipeline.train.resume import checkpoint_saver, prepare_stage_dir, resume_point
from pipeline.train.shard_samples import ShardSamples
from pipeline.train.stage_outputs import data_audit, pretrain_counts, write_model_files
from pipeline.train.train_loop import LoopSettings, train

log = logging.getLogger(__name__)
STAGE = "pretrain"


def run_pretrain(cfg) -> dict | None:
    """Run (or resume) pretraining; return the manifest on rank 0, None elsewhere.

    Raises:
        pipeline.errors.ConfigError: bad values (e.g. a global batch that is not a multiple
            of batch_size x world), before any work.
        FileNotFoundError: ingest or vocab has not finished in ``run_dir``.
    """
    validate(cfg)
    pt = cfg.pretrain
    check_recipe(pt)
    t0 = time.perf_counter()
    info = init_distributed(pt.device)
    try:
        return _run(cfg, pt, info, t0)
    finally:
        cleanup(info)


def _run(cfg, pt, info: DistInfo, t0: float) -> dict | None:
    threads = set_threads(pt, info)
    out = stage_dir(cfg.run_dir, STAGE)
    accumulation(pt.batch_size, pt.global_batch, info.world)  # a bad global batch fails before any file is read
    class_counts = vocab_class_counts(cfg.run_dir)
    num_classes = int(class_counts.size)
    samples = ShardSamples(
        path(cfg.run_dir, VOCAB, SHARD_LABELS_DIR),
        str(pt.resampling),
        pt.heldout_fraction,
        pt.data_fraction,
        rank=info.rank,
        world=info.world,
        gather=functools.partial(gather_objects, info),
        keep_heldout=info.is_main,
        heldout_eval_max=pt.heldout_eval_max,
    )
    shards = {int(p.stem): p for p in shard_paths(cfg.run_dir)}
    plan = plan_steps(pt, samples.epoch_sizes(pt.epochs, cfg.seed, pt.batch_size), world=info.world)
    model, optimizer, scheduler = build_model(pt, plan, num_classes, info.device, cfg.seed)
    resolved = to_container(cfg)
    start = resume_point(out, model, optimizer, scheduler, resolved, info.is_main)
    model, prec = set_numerics(pt, info, model, num_classes, threads, start.precision_choice)
    if info.is_main:
        prepare_stage_dir(out, start.state.step)
    barrier(info)
    ddp_model = wrap_model(model, info, pt.compile)
    scaler = grad_scaler(prec, info.device.type, start.grad_scaler)
    decoded, decoded_info = open_decoded_cache(pt, info, out, samples.num_train + samples.num_heldout, samples.all_keys, shards)
    stream, held_stream = pretrain_streams(
        shards,
        functools.partial(samples.rank_stream, seed=cfg.seed),
        samples.heldout,
        pt=pt,
        seed=cfg.seed,
        rank=info.rank,
        world=info.world,
        decoded=decoded,
        normalize_in_workers=info.device.type == "cpu" and threads.workers > 0,
    )
    save = checkpoint_saver(
        out,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        config=resolved,
        keep=pt.keep_checkpoints,
        is_main=info.is_main,
        num_classes=num_classes,
        model_name=pt.model,
        precision=prec,
        scaler=scaler,
    )
    run_eval = HeldoutEval(model, held_stream, info, prec, num_classes, out / EVAL_FILE)
    if start.state.step == 0 and run_eval.enabled:
        run_eval(0)  # the from-scratch (random init) level
    nice = loader_niceness(pt.worker_nice, info.device.type, decoded is not None, threads.workers)
    settings = LoopSettings(
        pt,
        accum=plan.accum,
        total_steps=plan.total_steps,
        num_classes=num_classes,
        autocast_dtype=prec.autocast_dtype,
        channels_last=prec.channels_last,
        workers=threads.workers,
        metrics_file=out / METRICS_FILE,
        pin_memory=info.device.type == "cuda",
        worker_nice=nice,
    )
    stats = train(
        model=model,
        ddp_model=ddp_model,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=make_loss(str(pt.loss)),
        stream=stream,
        info=info,
        settings=settings,
        state=start.state,
        save=save,
        run_eval=run_eval,
        max_steps=pt.max_steps,
        scaler=scaler,
    )
    checksums, seen = gather_results(info, model, stats.pop("seen_keys") if pt.audit_data else None, decoded)
    if not info.is_main:
        return None
    if seen is not None:
        write_json(out / DATA_AUDIT_FILE, data_audit(seen))
    write_model_files(out, model, model_name=pt.model, num_classes=num_classes, image_size=pt.image_size)
    counts = pretrain_counts(
        out,
        stats,
        pt=pt,
        plan=plan,
        info=info,
        class_counts=class_counts,
        samples=samples,
        precision=prec,
        threads=threads,
        nice=nice,
        decoded_info=decoded_info,
        checksums=checksums,
    )
    inputs = {s: (read_manifest(stage_dir(cfg.run_dir, s)) or {}).get("config_hash") for s in (INGEST, DEDUP, VOCAB)}
    return write_manifest(
        out,
        stage=STAGE,
        config=results_config(cfg, "seed", "pretrain"),
        inputs=inputs,
        counts=counts,
        seconds=time.perf_counter() - t0,
        outputs={"trunk": TRUNK_FILE, "metrics": METRICS_FILE, "eval": EVAL_FILE, "checkpoints": CHECKPOINT_DIR + "/"},
    )


def main() -> None:
    """Hydra entry point: ``python -m pipeline.pretrain [overrides]`` (also under torchrun)."""
    hydra_entry(run_pretrain, STAGE)


if __name__ == "__main__":
    main()
