"""Transfer stage: what the hashtag pretraining buys on a labelled target set.

``python -m pipeline.transfer run_dir=runs/demo [transfer.root=...] [transfer.low_data_per_class=[10,100]] ...``

Mahajan et al. 2018 (sec. 3) measure pretraining two ways, and so does this stage,
each against the same model from random initialization ("scratch"):

- **feature transfer** (linear probe): the frozen trunk's pooled features, standardized,
  then an L2-regularized multinomial logistic regression whose C is chosen on a
  stratified split held out from the training images and refit on all of them
  (:mod:`pipeline.linear_probe`; Kornblith et al. 2019's protocol);
- **full fine-tuning**: a new classifier and every layer trained with SGD + Nesterov,
  a lower learning rate than pretraining, a short warmup and cosine decay; top-1 and
  top-5 on val after every epoch (:mod:`pipeline.finetune`).

Each in several data settings: ``transfer.low_data_per_class`` labelled images per class
(seeded, stratified, nested subsets) and the "full" setting (all training images, at
most ``transfer.max_train_per_class`` per class; ``train_per_class: null`` in the results).

The target is any folder in the ImageNet layout (``<root>/<train_split>/<class>/<img>``,
``<root>/<val_split>/<class>/<img>``): the demo's Fashion-MNIST, or ImageNet-1k
(``+transfer=imagenet1k``). Images are RGB; val and probe features use the eval recipe
of :mod:`pipeline.loader` (shorter side to S*256/224, centre crop S) at the pretraining
image size S from ``<run_dir>/pretrain/model.json``; fine-tuning trains on random-resized
crops + flips; normalization with ImageNet's mean and std.

**Lower-bound accuracy** (Mahajan et al. 2018): val images that dedup found (near)
duplicated in the pretraining data (``<run_dir>/dedup/eval_contamination.json``, the eval
set whose ``root/split`` is this target's val folder, matched by ``<class>/<file>``) count
as wrong: ``lower_bound_top1 = correct and not contaminated / all val images``.

Reads ``<run_dir>/pretrain/{trunk.safetensors, model.json, manifest.json}``,
``<run_dir>/dedup/eval_contamination.json`` (if present) and the target folder. Writes
only ``<run_dir>/transfer/``: ``results.json`` (schema in :func:`run_transfer`),
``finetune_epochs.jsonl`` (one row per epoch per fine-tuning run), ``manifest.json`` last.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import remove_stale_temps, write_json, write_jsonl
from pipeline.config import ConfigError, to_container, validate
from pipeline.finetune import FinetuneSettings, finetune
from pipeline.hardware import PrecisionChoice, available_cores, make_step_trial, pick_device, resolve_for_run, thread_plan
from pipeline.linear_probe import extract_features, fit_probe, topk_correct
from pipeline.loader import item_seed
from pipeline.manifest import file_sha256, read_manifest, stage_dir, write_manifest
from pipeline.models import create_model, list_models, load_trunk
from pipeline.target_data import (TransformedSubset, eval_batches, fingerprint, open_split, per_class_order,
                                  relative_paths, take_per_class)

log = logging.getLogger(__name__)
STAGE = "transfer"
RESULTS = "results.json"
EPOCHS = "finetune_epochs.jsonl"


# --------------------------------------------------------------------------- inputs


def read_pretrained(run_dir) -> tuple[Path, dict, dict]:
    """The trunk path, ``model.json`` and manifest of the pretrain stage.

    Raises:
        FileNotFoundError: the pretrain stage has not finished in ``run_dir``.
    """
    pre = stage_dir(run_dir, "pretrain")
    trunk, info_file = pre / "trunk.safetensors", pre / "model.json"
    man = read_manifest(pre)
    missing = [p.name for p in (trunk, info_file) if not p.exists()] + ([] if man else ["manifest.json"])
    if missing:
        raise FileNotFoundError(f"no finished pretrain stage in {pre} (missing {', '.join(missing)}); "
                                f"run `python -m pipeline.pretrain run_dir={run_dir}` first")
    info = json.loads(info_file.read_text(encoding="utf-8"))
    if info.get("model") not in list_models():
        raise ConfigError(f"config error at pretrain: {info_file} names an unknown model {info.get('model')!r}")
    return trunk, info, man


def _same_folder(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def contaminated_paths(run_dir, eval_sets, val_folder) -> tuple[str | None, set[str] | None]:
    """The ``<class>/<file>`` paths of this target's val images that dedup found in the pretraining data.

    Looks for the ``data.eval_sets`` entry (imagefolder format) whose ``root/split`` is
    ``val_folder`` and reads its ids from ``<run_dir>/dedup/eval_contamination.json``.

    Returns:
        (eval set name, set of relative paths); (None, None) when dedup did not check this
        val folder (no such eval set, or no contamination file).
    """
    report_file = stage_dir(run_dir, "dedup") / "eval_contamination.json"
    if not report_file.exists():
        return None, None
    report = json.loads(report_file.read_text(encoding="utf-8"))
    for es in eval_sets or []:
        fmt = getattr(es.format, "value", es.format)
        if fmt != "imagefolder" or not es.split or not _same_folder(Path(es.root) / es.split, val_folder):
            continue
        if es.name not in report:
            continue
        prefix = es.name + ":"
        return es.name, {i[len(prefix):] if i.startswith(prefix) else i for i in report[es.name].get("ids", [])}
    return None, None


def val_subset(labels, max_images: int | None, seed: int) -> np.ndarray:
    """All val positions, or a stratified seeded subset of ``max_images`` (classes taken round-robin)."""
    n = len(labels)
    if max_images is None or max_images >= n:
        return np.arange(n)
    order = per_class_order(labels, seed, salt="val")
    ranked = sorted((r, c, int(i)) for c, o in enumerate(order) for r, i in enumerate(o))
    return np.sort(np.array([i for _, _, i in ranked[:max_images]], dtype=np.int64))


def choose_precision(tc, model_name: str, num_classes: int, size: int, threads: int) -> PrecisionChoice:
    """The stage's device, precision and layout (:mod:`pipeline.hardware`; a timed trial of the
    fine-tuning step on the CPU, cached per machine)."""
    device = pick_device(tc.device)
    trial = make_step_trial(lambda: create_model(model_name, num_classes=num_classes), batch_size=tc.batch_size,
                            image_size=size, num_classes=num_classes, device=device)
    return resolve_for_run(tc.precision, tc.channels_last, device, trial=trial, where="transfer.precision",
                           cache_key={"model": model_name, "image_size": size, "batch": tc.batch_size,
                                      "threads": threads, "classes": num_classes})


def _row(method, init, per_class, n_train, correct1, correct5, contaminated, *, epochs=None, best_C=None, seconds=0.0):
    n = len(correct1)
    return {"method": method, "init": init, "train_per_class": per_class, "train_images": int(n_train),
            "top1": float(correct1.mean()) if n else 0.0, "top5": float(correct5.mean()) if n else 0.0,
            "lower_bound_top1": float((correct1 & ~contaminated).sum() / n) if n else 0.0,
            "epochs": epochs, "best_C": best_C, "seconds": round(seconds, 3)}


# --------------------------------------------------------------------------- the stage


def run_transfer(cfg) -> dict:
    """Run the transfer stage for ``cfg``; return its manifest.

    ``results.json``::

        {"target": str, "num_classes": int, "image_size": int, "val_images": int,
         "contaminated_val": int, "rows": [{"method": "linear_probe" | "finetune",
           "init": "pretrained" | "scratch", "train_per_class": int | null (null = full/capped),
           "train_images": int, "top1": float, "top5": float, "lower_bound_top1": float,
           "epochs": int | null, "best_C": float | null, "seconds": float}, ...], ...}

    (accuracies as fractions; extra top-level keys: model, classes, contamination_eval_set,
    seconds per part, the probes' C grids).

    Raises:
        pipeline.config.ConfigError: bad ``transfer.*`` values, train/val classes that differ.
        FileNotFoundError: pretrain not finished, or the target folders missing; all before any work.
    """
    validate(cfg)
    t0 = time.perf_counter()
    tc = cfg.transfer
    trunk_path, info, pre_man = read_pretrained(cfg.run_dir)
    model_name = info["model"]
    size = int(tc.image_size or info["image_size"])
    train_set = open_split(tc.root, tc.train_split)
    val_set = open_split(tc.root, tc.val_split)
    if train_set.classes != val_set.classes:
        raise ConfigError(f"config error at transfer.root: the class folders of {tc.train_split!r} and {tc.val_split!r} "
                          f"differ ({len(train_set.classes)} vs {len(val_set.classes)} classes)")
    num_classes = len(train_set.classes)
    if num_classes < 2:
        raise ConfigError(f"config error at transfer.root: the target needs >= 2 classes, found {num_classes}")
    device = pick_device(tc.device)
    plan = thread_plan(device.type, available_cores(), 1, threads=tc.threads, workers=tc.workers)
    torch.set_num_threads(plan.threads)
    prec = choose_precision(tc, model_name, num_classes, size, plan.threads)
    prec.apply_global()
    autocast, channels_last, workers = prec.autocast_dtype, prec.channels_last, plan.workers
    log.info("transfer on %s: %s %s (%s); %d threads, %d loader workers", prec.facts, prec.precision,
             "channels_last" if channels_last else "NCHW", prec.reason, plan.threads, workers)

    out = stage_dir(cfg.run_dir, STAGE)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    (out / RESULTS).unlink(missing_ok=True)
    remove_stale_temps(out)

    # data settings: nested, stratified, seeded subsets of the training images
    order = per_class_order(train_set.targets, cfg.seed)
    settings: list[tuple[int | None, np.ndarray]] = [(int(k), take_per_class(order, int(k))) for k in tc.low_data_per_class]
    if tc.full:
        settings.append((None, take_per_class(order, tc.max_train_per_class)))
    feat_idx = np.unique(np.concatenate([idx for _, idx in settings]))
    val_idx = val_subset(val_set.targets, tc.max_val_images, cfg.seed)
    val_rel = relative_paths(val_set)
    cont_name, cont_paths = contaminated_paths(cfg.run_dir, cfg.data.eval_sets, Path(tc.root) / tc.val_split)
    contaminated = np.array([val_rel[i] in cont_paths for i in val_idx], dtype=bool) if cont_paths else \
        np.zeros(len(val_idx), dtype=bool)
    log.info("transfer: %s (%d classes), %s, %d val images (%d contaminated), image size %d, settings %s, %s",
             tc.target, num_classes, model_name, len(val_idx), int(contaminated.sum()), size,
             [(k, len(i)) for k, i in settings], device)

    val_images = eval_batches(TransformedSubset(val_set, val_idx, size), tc.eval_batch_size, workers,
                              tc.eval_cache_mb, tc.progress, "decode val")

    def trunk(init: str) -> torch.nn.Module:
        if init == "pretrained":
            m = load_trunk(trunk_path, model_name)
        else:  # the same random init every time (scratch probe features = scratch fine-tune start)
            torch.manual_seed(item_seed("scratch-init", cfg.seed))
            m = create_model(model_name, num_classes=0)
        m = m.to(device)
        return m.to(memory_format=torch.channels_last) if channels_last else m

    rows: list[dict] = []
    epoch_rows: list[dict] = []
    grids: list[dict] = []
    seconds = {"features": {}, "linear_probe": 0.0, "finetune": 0.0}

    def save_results() -> dict:
        res = {"target": tc.target, "num_classes": num_classes, "image_size": size, "val_images": int(len(val_idx)),
               "contaminated_val": int(contaminated.sum()), "rows": rows, "model": model_name,
               "classes": list(train_set.classes), "contamination_eval_set": cont_name,
               "contamination_checked": cont_paths is not None, "seed": cfg.seed,
               "seconds": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in seconds.items()},
               "probe_grids": grids}
        write_json(out / RESULTS, res)
        return res

    write_jsonl(out / EPOCHS, [])
    if "linear_probe" in tc.methods:
        train_feat_images = eval_batches(TransformedSubset(train_set, feat_idx, size), tc.eval_batch_size, workers,
                                         tc.eval_cache_mb, tc.progress, "decode train")
        for init in tc.inits:
            ts = time.perf_counter()
            model = trunk(init)
            fx, fy = extract_features(model, train_feat_images, device=device, autocast_dtype=autocast,
                                      channels_last=channels_last, total=len(feat_idx), progress=tc.progress,
                                      desc=f"features train {init}")
            vx, vy = extract_features(model, val_images, device=device, autocast_dtype=autocast,
                                      channels_last=channels_last, total=len(val_idx), progress=tc.progress,
                                      desc=f"features val {init}")
            del model
            seconds["features"][init] = round(time.perf_counter() - ts, 3)
            for k, idx in settings:
                pos = np.searchsorted(feat_idx, idx)
                probe = fit_probe(fx[pos], fy[pos], list(tc.probe_Cs), num_classes=num_classes,
                                  holdout_fraction=tc.probe_holdout_fraction, max_iter=tc.probe_max_iter,
                                  tol=tc.probe_tol, seed=cfg.seed, progress=tc.progress, desc=f"probe {init} {k or 'full'}")
                s = probe.scores(vx)
                rows.append(_row("linear_probe", init, k, len(idx), topk_correct(s, vy, 1), topk_correct(s, vy, 5),
                                 contaminated, best_C=probe.best_C, seconds=probe.seconds))
                grids.append({"init": init, "train_per_class": k, "best_C": probe.best_C, "grid": probe.grid})
                seconds["linear_probe"] += probe.seconds
                log.info("linear probe %s %s: top-1 %.4f top-5 %.4f (C=%g, %.1fs)", init, k or "full",
                         rows[-1]["top1"], rows[-1]["top5"], probe.best_C, probe.seconds)
                save_results()

    if "finetune" in tc.methods:
        for init in tc.inits:
            for k, idx in settings:
                st = FinetuneSettings(
                    epochs=tc.finetune_epochs, batch_size=min(tc.batch_size, len(idx)), base_lr=tc.base_lr,
                    reference_batch=tc.reference_batch, momentum=tc.momentum, nesterov=tc.nesterov,
                    weight_decay=tc.weight_decay, warmup_epochs=tc.warmup_epochs,
                    warmup_start_fraction=tc.warmup_start_fraction, min_epoch_images=tc.min_epoch_images,
                    seed=cfg.seed, autocast_dtype=autocast, grad_scaler=prec.grad_scaler, channels_last=channels_last, workers=workers,
                    progress=tc.progress)
                train_ds = TransformedSubset(train_set, idx, size, train=True, scale=(tc.crop_min_scale, 1.0))

                def on_epoch(r: dict, init=init, k=k) -> None:
                    epoch_rows.append({"init": init, "train_per_class": k, **r})
                    write_jsonl(out / EPOCHS, epoch_rows)
                    log.info("finetune %s %s epoch %d: loss %.4f top-1 %.4f top-5 %.4f (%.1fs)", init, k or "full",
                             r["epoch"], r["loss"], r["top1"], r["top5"], r["seconds"])

                res = finetune(trunk(init), train_ds, val_images, num_classes=num_classes, settings=st, device=device,
                               desc=f"finetune {init} {k or 'full'}", on_epoch=on_epoch)
                fin = res["final"]
                rows.append(_row("finetune", init, k, len(idx), fin["correct1"], fin["correct5"], contaminated,
                                 epochs=tc.finetune_epochs, seconds=res["seconds"]))
                seconds["finetune"] += res["seconds"]
                save_results()

    seconds["total"] = round(time.perf_counter() - t0, 3)
    results = save_results()
    write_jsonl(out / EPOCHS, epoch_rows)

    def headline(method: str, init: str) -> float | None:
        cands = [r for r in rows if r["method"] == method and r["init"] == init]
        full = [r for r in cands if r["train_per_class"] is None] or sorted(cands, key=lambda r: r["train_images"])[-1:]
        return full[0]["top1"] if full else None

    counts: dict = {"num_classes": num_classes, "val_images": results["val_images"],
                    "contaminated_val": results["contaminated_val"], "rows": len(rows),
                    "finetune_epoch_rows": len(epoch_rows), "image_size": size,
                    "settings": [k for k, _ in settings], "train_images": [int(len(i)) for _, i in settings]}
    for m in ("linear_probe", "finetune"):
        for i in ("pretrained", "scratch"):
            counts[f"{m}_{i}_top1"] = headline(m, i)
        a, b = counts[f"{m}_pretrained_top1"], counts[f"{m}_scratch_top1"]
        counts[f"{m}_gain_top1"] = round(a - b, 6) if a is not None and b is not None else None
    counts.update({f"features_seconds_{k}": v for k, v in seconds["features"].items()})
    counts["linear_probe_seconds"] = round(seconds["linear_probe"], 3)
    counts["finetune_seconds"] = round(seconds["finetune"], 3)
    counts["device"] = str(device)
    counts["precision"] = prec.precision
    counts["channels_last"] = channels_last
    counts["hardware"] = {"facts": prec.facts, "precision_choice": prec.to_dict(), "threads": plan.threads,
                          "workers": workers, "cores": plan.cores, "thread_reason": plan.reason,
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    resolved = to_container(cfg)
    config = {"seed": cfg.seed, "transfer": {k: v for k, v in resolved["transfer"].items() if k != "progress"}}
    dedup_man = read_manifest(stage_dir(cfg.run_dir, "dedup"))
    inputs = {"pretrain": pre_man.get("config_hash"), "trunk_sha256": file_sha256(trunk_path),
              "dedup": (dedup_man or {}).get("config_hash"),
              "target": {"train": fingerprint(train_set), "val": fingerprint(val_set)}}
    return write_manifest(out, stage=STAGE, config=config, inputs=inputs, counts=counts,
                          seconds=time.perf_counter() - t0, outputs={"results": RESULTS, "finetune_epochs": EPOCHS})


def main() -> None:
    """Hydra entry point: ``python -m pipeline.transfer [overrides]``."""
    from pipeline.cli import hydra_entry

    hydra_entry(run_transfer, STAGE)


if __name__ == "__main__":
    main()
