"""The pretraining stage's final outputs: the trunk and ``model.json``, ``data_audit.json``, the manifest counts.

The counts hold the step plan, the held-out levels, the numerics and the ranks. Held-out
levels: the last evaluation (``heldout_*``), the step-0 one of the random init (``scratch_*``)
and the class-prior baseline (``prior_*``, :func:`pipeline.train.metrics.prior_baseline`),
so a manifest shows whether training beat chance and the untrained model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.io.atomic import write_json
from pipeline.io.run_folder import EVAL_FILE, METRICS_FILE, MODEL_FILE, TRUNK_FILE
from pipeline.train.metrics import prior_baseline
from pipeline.train.models import export_trunk
from pipeline.train.precision import hardware_record

__all__ = ["data_audit", "logged_rows", "pretrain_counts", "write_model_files"]


def write_model_files(out: Path, model, *, model_name: str, num_classes: int, image_size: int) -> None:
    """Export the trained trunk (``trunk.pth`` + ``trunk.safetensors``, :func:`pipeline.train.models.export_trunk`)
    and ``model.json`` (model name, num_classes, image_size, the trunk files, num_features) into ``out``.

    Raises:
        OSError: from the file system.
    """
    pth, _ = export_trunk(model, out / Path(TRUNK_FILE).stem)
    write_json(
        out / MODEL_FILE,
        {
            "model": model_name,
            "num_classes": num_classes,
            "image_size": image_size,
            "trunk": [pth.name, TRUNK_FILE],
            "num_features": model.num_features,
        },
    )


def data_audit(seen: list[list[str]]) -> dict:
    """``data_audit.json`` from every rank's ``"<epoch>/<key>"`` list: sizes per rank, distinct per rank,
    the overlap between ranks (0 when their samples are disjoint) and the union."""
    sets = [set(x) for x in seen]
    overlap = set.intersection(*sets) if len(sets) > 1 else set()
    return {
        "per_rank": [len(x) for x in seen],
        "distinct_per_rank": [len(x) for x in sets],
        "overlap_between_ranks": len(overlap),
        "union": len(set().union(*sets)),
    }


def logged_rows(path: Path) -> list[dict]:
    """The rows of a JSON-lines file this stage wrote (``metrics.jsonl``, ``eval.jsonl``); [] if it does not exist."""
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def pretrain_counts(
    out: Path,
    stats: dict,
    *,
    pt,
    plan,
    info,
    class_counts: np.ndarray,
    samples,
    precision,
    threads,
    nice: int,
    decoded_info: dict,
    checksums: list[float],
) -> dict:
    """The ``counts`` of the pretrain manifest.

    ``stats``: :func:`pipeline.train.train_loop.train`'s (its ``final_loss`` replaced by the last
    logged step's loss, also when a rerun resumed from the final checkpoint and trained no step);
    ``plan``: the :class:`pipeline.train.recipe.StepPlan`; ``class_counts``: int64 (C,) samples per class (the
    vocab's); ``samples``: the :class:`pipeline.train.shard_samples.ShardSamples` (its held-out set on this,
    the main, rank); ``precision``/``threads``: the hardware choice and thread plan.
    """
    all_evals = logged_rows(out / EVAL_FILE)
    steps_logged = logged_rows(out / METRICS_FILE)
    if steps_logged:
        stats["final_loss"] = steps_logged[-1]["loss"]
    num_classes = int(class_counts.size)
    held = samples.heldout
    chance = prior_baseline(class_counts / max(1, class_counts.sum()), held.indptr, held.indices) if len(held.keys) else {}
    final = all_evals[-1] if all_evals else {}
    step0 = next((e for e in all_evals if e["step"] == 0), {})
    return {
        **stats,
        "epochs": pt.epochs,
        "total_steps": plan.total_steps,
        "global_batch": plan.global_batch,
        "accum": plan.accum,
        "world": info.world,
        "peak_lr": plan.peak_lr,
        "warmup_steps": plan.warmup_steps,
        "num_classes": num_classes,
        "train_samples": samples.num_train,
        "heldout_samples": samples.num_heldout,
        "heldout_evaluated": samples.num_heldout_eval,
        "train_shards": int(len(samples.shards)),
        "epoch_items": plan.epoch_items,
        "heldout_precision_at_1": final.get("precision_at_1"),
        "heldout_mAP": final.get("mAP"),
        "scratch_precision_at_1": step0.get("precision_at_1"),
        "scratch_mAP": step0.get("mAP"),
        "prior_precision_at_1": chance.get("precision_at_1"),
        "prior_mAP": chance.get("mAP"),
        "precision": precision.precision,
        "channels_last": precision.channels_last,
        "device": str(info.device),
        "hardware": {**hardware_record(precision, threads, info.device), "worker_nice": nice, "compile": bool(pt.compile)},
        "decoded_cache": decoded_info,
        "rank_weight_checksums": checksums,
        "ranks_weights_identical": len(set(checksums)) == 1,
    }
