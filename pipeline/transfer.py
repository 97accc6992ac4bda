"""Transfer stage: what the hashtag pretraining buys on a suite of labelled targets.

``python -m pipeline.transfer run_dir=runs/demo ['transfer/target=[fashion_mnist]'] [transfer.KEY=...]
[transfer.targets.NAME.KEY=...]``

**The suite.** ``transfer.targets`` maps a name to a target folder in the ImageNet layout
(``<root>/<train_split>/<class>/<img>``, ``<root>/<val_split>/<class>/<img>``), filled by the
``transfer/target`` config group (``conf/transfer/target/<name>.yaml``, each with a
``# @package transfer.targets.<name>`` header). ``conf/config.yaml`` selects
``[fluent_emoji_subgroup, fashion_mnist]``: the in-domain Fluent Emoji target (67 emoji
subgroups, val emoji never seen in train) and the out-of-domain Fashion-MNIST.
``'transfer/target=[fashion_mnist]'`` runs one; ``+transfer=imagenet1k
transfer.targets.imagenet1k.root=/path/to/imagenet`` runs ImageNet-1k alone with its recipe.
The other ``transfer.*`` keys are the recipe every target shares; a target file may override
the keys listed in ``pipeline.config.TARGET_RECIPE_KEYS`` (its values win over
``transfer.KEY=`` on the command line; use ``transfer.targets.NAME.KEY=`` for one target).
Every target's config and folders are checked before any work.

Mahajan et al. 2018 (sec. 3) measure pretraining two ways, and so does this stage, each
against the same model from random initialization ("scratch"):

- **feature transfer** (linear probe): the frozen trunk's pooled features (of the residual
  stages ``transfer.probe_stages``, concatenated; default layer2-4), standardized,
  then an L2-regularized multinomial logistic regression whose C is chosen on a stratified
  split held out from the training images and refit on all of them
  (:mod:`pipeline.evaluation.linear_probe`; Kornblith et al. 2019's protocol);
- **full fine-tuning**: a new classifier and every layer trained with SGD + Nesterov, a short
  warmup and cosine decay (:mod:`pipeline.evaluation.finetune`); val scored after the last epoch
  (``transfer.eval_every_epoch=true``: after every epoch).

Each in several data settings: ``low_data_per_class`` labelled images per class (seeded,
stratified, nested subsets) and the "full" setting (all training images, at most
``max_train_per_class`` per class; ``train_per_class: null`` in the results).

**Learning rate, chosen without val.** Before anything touches the val images, each
``finetune_lr_grid`` value is tried once per target: a short fine-tuning run
(``lr_select_epochs`` epochs of at most ``lr_select_max_images`` images, pretrained init) on
80% of the training images of the ``lr_select_setting`` setting (default ``largest``: the
full setting), scored on the stratified other 20% (``lr_select_holdout_fraction``); the best
held-out top-1 (ties: lower loss, then the smaller lr) is used for every fine-tuning run of
that target, pretrained and scratch alike. Cost: one short run per grid value; with the demo
defaults (grid ``[0.1, 0.4]``, 1 epoch of <= 1,500 images at 64 px) 20-24 s per target on 2
CPU cores (10-12 s per value), about 10% of the stage. Short runs favour the smaller rate
(both demo targets chose 0.1). A grid of one value (or none) skips the search and uses ``base_lr``.

**Error bars.** Every accuracy carries a 95% interval (``ci_level``) from
:mod:`pipeline.evaluation.intervals`: a percentile bootstrap over the val images (``n_boot`` resamples)
for a single run; for the low-data settings, which are repeated over seeded draws of the
labelled subset (``probe_seeds``, default 10, for the probe; ``finetune_seeds``, default 1,
for fine-tuning: each seed also seeds the new head, the augmentation and the scratch init),
``seed_and_val_ci`` (seed spread and val bootstrap together; t with Welch-Satterthwaite df).
Every run of a target is scored on the same val images. The pretrained-minus-scratch
difference has its own interval: a paired bootstrap on the same val images (one seed), or
``seed_and_val_ci`` of the per-image differences (pretrained and scratch share each seed's
subset); the report says "no measurable gain" when the interval covers 0. Per-image
correctness is stored in ``correct.npz`` (:func:`load_correctness`) so every interval can be
recomputed.

**Lower-bound accuracy** (Mahajan et al. 2018), two of them: ``lower_bound_top1`` counts the
val images that dedup's pHash check found (near) duplicated in the pretraining data as
wrong (``<run_dir>/dedup/eval_contamination.json``, the ``data.eval_sets`` entry whose
``root/split`` is this target's val folder); ``lower_bound_top1_nn`` counts the val images
whose nearest pretraining image in the pretrained trunk's feature space is above a
calibrated cosine threshold as wrong (:mod:`pipeline.evaluation.nn_decontam`; ``transfer.nn_decontam``).

Images are RGB; val and probe features use the eval recipe of :mod:`pipeline.train.loader` at the
pretraining image size S from ``<run_dir>/pretrain/model.json``; fine-tuning trains on
random-resized crops + flips; ImageNet normalization.

**Budget** (``make demo``: 2 CPU cores, resnext_mini at 64 px, fp32 channels_last, ~125-150
img/s per training step): the demo defaults are 10 (Fashion-MNIST) / 5 (Fluent) labelled
images per class and the full setting capped at 200 / 40 per class (2,000 / 2,195 images),
2,000 of Fashion-MNIST's 10,000 val images / all 2,262 Fluent ones, 2 fine-tuning epochs of
>= 1,000 images with val scored after the last one only, 10 probe seeds on layer2-4
features and 1 fine-tuning seed, lr grid [0.1, 0.4]. Measured on that machine (AVX2,
2026-12-01, fresh-clone ``make demo``, 8-epoch trunk): the stage 9.1 min, Fluent 5.8 min (lr
selection 27 s; feature decontamination 48 s, most of it embedding the 11,447 pretraining
images once per stage; probe features 31 s and fits 115 s; 4 fine-tuning runs 115 s),
Fashion-MNIST 3.3 min (lr 24 s, decontamination 4 s, probe features 25 s and fits 26 s,
fine-tuning 111 s).

Reads ``<run_dir>/pretrain/{trunk.safetensors, model.json, manifest.json}``,
``<run_dir>/dedup/{eval_contamination.json, removed.jsonl}``, the ingest shards (feature
decontamination) and the target folders. Writes only ``<run_dir>/transfer/``:
``results.json`` (schema in :func:`run_transfer`), ``correct.npz``, ``finetune_epochs.jsonl``
(one row per epoch per fine-tuning run), ``manifest.json`` last.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io.atomic import remove_stale_temps, write_bytes, write_json, write_jsonl
from pipeline.config import ConfigError, results_config, transfer_recipe, validate
from pipeline.evaluation.finetune import FinetuneSettings, finetune
from pipeline.train.hardware import (PrecisionChoice, available_cores, describe_choice, hardware_record, pick_device,
                               resolve_for_model, thread_plan)
from pipeline.evaluation.intervals import bootstrap_ci, paired_bootstrap_diff, seed_and_val_ci
from pipeline.evaluation.linear_probe import extract_features, fit_probe, topk_correct
from pipeline.train.loader import item_seed
from pipeline.io.manifest import file_sha256, read_manifest, stage_dir, write_manifest
from pipeline.train.models import create_model, list_models, load_trunk
from pipeline.evaluation.target_data import (TransformedSubset, eval_batches, fingerprint, open_split, per_class_order,
                                  relative_paths, stratified_holdout, take_per_class)

log = logging.getLogger(__name__)
STAGE = "transfer"
RESULTS = "results.json"
EPOCHS = "finetune_epochs.jsonl"
CORRECT = "correct.npz"
SCHEMA = 2
METHODS = ("linear_probe", "finetune")


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


# --------------------------------------------------------------------------- intervals


def _r(x: float) -> float:
    return round(float(x), 6)


def accuracy_interval(correct: np.ndarray, *, n_boot: int, seed: int, level: float) -> dict:
    """Mean and interval of per-image correctness ``(S, N)`` (S seeded runs on the same N val images).

    One seed: percentile bootstrap over the val images (:func:`pipeline.evaluation.intervals.bootstrap_ci`);
    several: :func:`pipeline.evaluation.intervals.seed_and_val_ci` (seed spread + val bootstrap; its t interval
    clipped to [0, 1]).

    Returns:
        ``{"mean", "lo", "hi", "method"}`` (+ ``se_seed``, ``se_val``, ``df`` with seeds).
    """
    c = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    if c.shape[0] == 1:
        ci = bootstrap_ci(c[0], n_boot=n_boot, seed=seed, level=level)
        return {"mean": _r(ci.mean), "lo": _r(ci.lo), "hi": _r(ci.hi), "method": "val bootstrap"}
    s = seed_and_val_ci(c, n_boot=n_boot, seed=seed, level=level)
    return {"mean": _r(s.mean), "lo": _r(max(0.0, s.lo)), "hi": _r(min(1.0, s.hi)),
            "method": f"{s.n_seeds} seeds + val bootstrap", "se_seed": _r(s.se_seed), "se_val": _r(s.se_val),
            "df": _r(s.df) if math.isfinite(s.df) else None}


def difference_interval(pretrained: np.ndarray, scratch: np.ndarray, *, n_boot: int, seed: int, level: float) -> dict:
    """``accuracy(pretrained) - accuracy(scratch)`` with its interval, on the same val images.

    One seed: paired bootstrap (:func:`pipeline.evaluation.intervals.paired_bootstrap_diff`); several:
    :func:`pipeline.evaluation.intervals.seed_and_val_ci` of the per-image differences (seed s gave both
    initializations the same labelled subset), clipped to [-1, 1]. ``measurable`` is False when
    the interval covers 0.
    """
    a = np.atleast_2d(np.asarray(scratch, dtype=np.float64))
    b = np.atleast_2d(np.asarray(pretrained, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"pretrained and scratch correctness differ in shape: {b.shape} vs {a.shape}")
    if a.shape[0] == 1:
        ci = paired_bootstrap_diff(a[0], b[0], n_boot=n_boot, seed=seed, level=level)
        out = {"diff": _r(ci.mean), "lo": _r(ci.lo), "hi": _r(ci.hi), "ci_method": "paired val bootstrap"}
    else:
        s = seed_and_val_ci(b - a, n_boot=n_boot, seed=seed, level=level)
        # a difference of two accuracies lies in [-1, 1]: the t interval (few seeds) is clipped to it
        out = {"diff": _r(s.mean), "lo": _r(max(-1.0, s.lo)), "hi": _r(min(1.0, s.hi)),
               "ci_method": f"{s.n_seeds} paired seeds + val bootstrap",
               "se_seed": _r(s.se_seed), "se_val": _r(s.se_val)}
    out["measurable"] = bool(out["lo"] > 0 or out["hi"] < 0)
    out["verdict"] = "gain" if out["lo"] > 0 else "loss" if out["hi"] < 0 else "no measurable gain"
    return out


# --------------------------------------------------------------------------- per-image correctness


def _corr_key(target: str, method: str, init: str, per_class: int | None) -> str:
    return f"{target}/{method}/{init}/{'full' if per_class is None else int(per_class)}"


def save_correctness(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``correct.npz``: bool arrays bit-packed along the last axis (``np.packbits``), others as they are.

    Keys: ``<target>/<method>/<init>/<per class|full>/top1`` and ``.../top5`` (S, N) bool (row s =
    seed s), ``<target>/phash`` and ``<target>/nn`` (N,) bool (val images flagged), ``<target>/nn_similarity``
    (N,) float16 (max cosine similarity to a pretraining image), ``<target>/val_ids`` (N,) str.
    """
    out = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.dtype == bool:
            out[k + "|bits"] = np.packbits(v, axis=-1)
            out[k + "|shape"] = np.asarray(v.shape, dtype=np.int64)
        else:
            out[k] = v
    buf = io.BytesIO()
    np.savez_compressed(buf, **out)
    write_bytes(path, buf.getvalue())


def load_correctness(run_dir) -> dict[str, np.ndarray]:
    """``<run_dir>/transfer/correct.npz`` as ``{key: array}`` with the bool arrays unpacked (see :func:`save_correctness`)."""
    out: dict[str, np.ndarray] = {}
    with np.load(stage_dir(run_dir, STAGE) / CORRECT, allow_pickle=False) as z:
        for k in z.files:
            if k.endswith("|bits"):
                name = k[: -len("|bits")]
                shape = tuple(int(x) for x in z[name + "|shape"])
                out[name] = np.unpackbits(z[k], axis=-1, count=shape[-1]).astype(bool).reshape(shape)
            elif not k.endswith("|shape"):
                out[k] = z[k]
    return out


# --------------------------------------------------------------------------- the stage


@dataclass
class Target:
    """One target of the suite, opened (its folders checked) before any work."""

    name: str
    recipe: dict
    train_set: Any
    val_set: Any

    @property
    def num_classes(self) -> int:
        return len(self.train_set.classes)


def open_targets(tc) -> list[Target]:
    """Every target of ``transfer.targets``, its splits opened and checked, in config order.

    Raises:
        FileNotFoundError: a split folder or an ``emoji_index`` file is missing.
        pipeline.config.ConfigError: train and val classes differ, or fewer than 2 classes.
    """
    out = []
    for name in tc.targets:
        r = transfer_recipe(tc, name)
        train_set = open_split(r["root"], r["train_split"])
        val_set = open_split(r["root"], r["val_split"])
        where = f"transfer.targets.{name}.root"
        if train_set.classes != val_set.classes:
            raise ConfigError(f"config error at {where}: the class folders of {r['train_split']!r} and {r['val_split']!r} "
                              f"differ ({len(train_set.classes)} vs {len(val_set.classes)} classes)")
        if len(train_set.classes) < 2:
            raise ConfigError(f"config error at {where}: the target needs >= 2 classes, found {len(train_set.classes)}")
        if r["emoji_index"] and not Path(r["emoji_index"]).is_file():
            raise FileNotFoundError(f"transfer.targets.{name}.emoji_index: file {r['emoji_index']} does not exist")
        out.append(Target(name, r, train_set, val_set))
    return out


def _setting_label(k: int | None) -> str:
    return "full" if k is None else str(int(k))


def _planned_images(n: int, epochs: int, batch: int, min_epoch: int, max_epoch: int | None) -> int:
    """Training images a fine-tuning run will see (the sum of its epoch plans' sizes, without building them)."""
    per = max(1, math.ceil(min_epoch / n)) * n if n else 0
    if max_epoch is not None:
        per = min(per, max(2, int(max_epoch)))
    per -= per % batch if per % batch == 1 else 0
    return epochs * per


class _Stage:
    """Shared state of one transfer-stage run: device, precision, the trunks, the pretraining feature bank."""

    def __init__(self, cfg, trunk_path: Path, model_name: str, size: int, device, prec: PrecisionChoice, workers: int,
                 out: Path) -> None:
        self.cfg, self.tc = cfg, cfg.transfer
        self.trunk_path, self.model_name, self.size = trunk_path, model_name, size
        self.device, self.prec, self.workers, self.out = device, prec, workers, out
        self.autocast, self.channels_last = prec.autocast_dtype, prec.channels_last
        self.progress = bool(self.tc.progress)
        self.bank: dict | None = None
        self.arrays: dict[str, np.ndarray] = {}
        self.epoch_rows: list[dict] = []
        self.nn_skip: str | None = None  # why there is no feature-space decontamination (None: there is)

    def trunk(self, init: str, seed: int) -> torch.nn.Module:
        if init == "pretrained":
            m = load_trunk(self.trunk_path, self.model_name)
        else:  # the same random init for a given seed (scratch probe features = scratch fine-tune start)
            torch.manual_seed(item_seed("scratch-init", seed))
            m = create_model(self.model_name, num_classes=0)
        m = m.to(self.device)
        return m.to(memory_format=torch.channels_last) if self.channels_last else m

    def features(self, model, batches, total: int, desc: str, stages=None) -> tuple[np.ndarray, np.ndarray]:
        return extract_features(model, batches, device=self.device, autocast_dtype=self.autocast,
                                channels_last=self.channels_last, total=total, progress=self.progress, desc=desc,
                                stages=stages)

    def settings(self, r: dict, *, epochs: int, n: int, base_lr: float, seed: int, max_epoch_images=None,
                 eval_every_epoch: bool) -> FinetuneSettings:
        return FinetuneSettings(
            epochs=epochs, batch_size=min(int(r["batch_size"]), n), base_lr=base_lr, reference_batch=r["reference_batch"],
            momentum=r["momentum"], nesterov=r["nesterov"], weight_decay=r["weight_decay"], warmup_epochs=r["warmup_epochs"],
            warmup_start_fraction=r["warmup_start_fraction"], min_epoch_images=r["min_epoch_images"],
            max_epoch_images=max_epoch_images, eval_every_epoch=eval_every_epoch, seed=seed, autocast_dtype=self.autocast,
            grad_scaler=self.prec.grad_scaler, channels_last=self.channels_last, workers=self.workers, progress=self.progress)

    # -- the pretraining images, for the feature-space decontamination (once per stage) --------------
    def pretraining_bank(self, model) -> dict:
        if self.bank is None:
            from pipeline.evaluation.nn_decontam import ShardImages, l2_normalize, pooled_features, pretraining_samples

            t = time.perf_counter()
            samples = pretraining_samples(self.cfg.run_dir)
            ds = ShardImages(self.cfg.run_dir, samples, self.size)
            feats = pooled_features(lambda b: self.features(model, b, len(ds), "features pretraining images"), ds,
                                    self.tc.eval_batch_size, self.workers)
            mean = feats.mean(axis=0) if (self.tc.nn_center and len(feats)) else None
            self.bank = {"samples": samples, "features": l2_normalize(feats, mean), "mean": mean,
                         "seconds": round(time.perf_counter() - t, 3)}
            log.info("feature decontamination: %d pretraining images embedded in %.1fs", len(samples), self.bank["seconds"])
        return self.bank

    def save_arrays(self) -> None:
        save_correctness(self.out / CORRECT, self.arrays)


def select_lr(st: _Stage, t: Target, idx: np.ndarray, setting: int | None) -> dict:
    """Choose the fine-tuning lr of target ``t`` on a stratified held-out part of the training images ``idx``.

    Only ``t.train_set`` is read (the val split is not touched). Each grid value gets a short
    run from the pretrained trunk on the fit part, scored on the held-out part.

    Returns:
        ``{"chosen_base_lr", "setting", "init", "fit_images", "holdout_images", "epochs", "max_epoch_images",
        "grid": [{"base_lr", "holdout_top1", "holdout_top5", "holdout_loss", "seconds"}], "seconds", "skipped"}``.
    """
    r = t.recipe
    grid = sorted({float(x) for x in r["finetune_lr_grid"]})
    base = {"setting": _setting_label(setting), "init": "pretrained", "epochs": int(r["lr_select_epochs"]),
            "max_epoch_images": r["lr_select_max_images"], "grid": [], "seconds": 0.0}
    if len(grid) < 2:
        return {**base, "chosen_base_lr": float(grid[0] if grid else r["base_lr"]), "fit_images": 0, "holdout_images": 0,
                "skipped": "fewer than 2 values in finetune_lr_grid"}
    labels = np.asarray(t.train_set.targets)[idx]
    fit_pos, hold_pos = stratified_holdout(labels, float(r["lr_select_holdout_fraction"]), st.cfg.seed, salt="lr-holdout")
    fit_idx, hold_idx = idx[fit_pos], idx[hold_pos]
    base.update(fit_images=int(len(fit_idx)), holdout_images=int(len(hold_idx)))
    if len(fit_idx) < 2 or len(hold_idx) < 1:
        return {**base, "chosen_base_lr": float(r["base_lr"]), "skipped": "too few training images to hold some out"}
    t0 = time.perf_counter()
    hold = eval_batches(TransformedSubset(t.train_set, hold_idx, st.size), st.tc.eval_batch_size, st.workers,
                        r["eval_cache_mb"], st.progress, f"{t.name}: decode lr holdout")
    fit = TransformedSubset(t.train_set, fit_idx, st.size, train=True, scale=(r["crop_min_scale"], 1.0))
    for lr in grid:
        s = st.settings(r, epochs=int(r["lr_select_epochs"]), n=len(fit_idx), base_lr=lr, seed=st.cfg.seed,
                        max_epoch_images=r["lr_select_max_images"], eval_every_epoch=False)
        res = finetune(st.trunk("pretrained", st.cfg.seed), fit, hold, num_classes=t.num_classes, settings=s,
                       device=st.device, desc=f"{t.name}: lr {lr:g}")
        fin = res["final"]
        base["grid"].append({"base_lr": lr, "holdout_top1": _r(fin["top1"]), "holdout_top5": _r(fin["top5"]),
                             "holdout_loss": _r(fin["loss"]), "train_images": int(res["train_images"]),
                             "seconds": round(res["seconds"], 3)})
        log.info("%s: lr selection, base_lr %g: held-out top-1 %.4f, loss %.4f (%.1fs)", t.name, lr, fin["top1"],
                 fin["loss"], res["seconds"])
    best = min(base["grid"], key=lambda g: (-g["holdout_top1"], g["holdout_loss"], g["base_lr"]))
    base["seconds"] = round(time.perf_counter() - t0, 3)
    return {**base, "chosen_base_lr": best["base_lr"], "skipped": None}


def decontaminate(st: _Stage, t: Target, model, val_feats: np.ndarray, val_idx: np.ndarray, val_rel: list[str]) -> dict:
    """Feature-space decontamination of target ``t``'s scored val images (:mod:`pipeline.evaluation.nn_decontam`).

    Returns:
        the ``contamination.features`` section of the target's results, with ``flagged`` (N,) bool
        and ``similarity`` (N,) float32 under the keys ``_flagged`` / ``_similarity`` (popped by the caller).
    """
    from pipeline.evaluation import nn_decontam as nd

    tc, r = st.tc, t.recipe
    t0 = time.perf_counter()
    bank = st.pretraining_bank(model)
    vx = nd.l2_normalize(val_feats, bank["mean"])
    sims, nn_idx = nd.nearest(vx, bank["features"])
    n = len(vx)
    rng = np.random.default_rng(item_seed("nn-decontam", st.cfg.seed, t.name))
    # known copies of a seeded sample of the scored val images
    pos = np.sort(rng.choice(n, size=min(int(tc.nn_known_copies), n), replace=False))
    samples = [t.val_set.samples[int(i)] for i in val_idx]
    copies = nd.KnownCopies(samples, t.val_set.loader, pos, st.size, st.cfg.seed)
    cx = nd.l2_normalize(nd.pooled_features(lambda b: st.features(model, b, len(copies), f"{t.name}: features known copies"),
                                            copies, tc.eval_batch_size, st.workers), bank["mean"])
    rows = np.array([p for p, _ in copies.items], dtype=np.int64)
    copy_sims = (cx * vx[rows]).sum(axis=1)
    threshold, rule = nd.calibrate(copy_sims, float(tc.nn_copy_quantile), tc.nn_threshold)
    kinds = np.array([k for _, k in copies.items])
    by_kind = {}
    for k in nd.COPY_KINDS:  # each kind alone: its scores, and how many val images its own 1st percentile would flag
        ks = copy_sims[kinds == k]
        by_kind[k] = {"n": int(len(ks)), "share_above": nd.share_above(ks, threshold), **nd.quantiles(ks),
                      "val_flagged_at_its_quantile": int((sims >= np.quantile(ks, float(tc.nn_copy_quantile))).sum())
                      if len(ks) else None}
    # known non-copies: random pretraining images; the same emoji by another vendor where the target says which
    m = len(bank["features"])
    non_copies = {}
    if m:
        k = int(tc.nn_non_copies)
        vi, bi = rng.integers(0, n, size=k), rng.integers(0, m, size=k)
        rs = (vx[vi] * bank["features"][bi]).sum(axis=1)
        non_copies["random"] = {"kind": "random pretraining images", "n": k, "share_above": nd.share_above(rs, threshold),
                                **nd.quantiles(rs)}
    if r["emoji_index"] and m:
        codes = nd.emoji_hexcodes(r["emoji_index"], [val_rel[i] for i in val_idx])
        by_code: dict[str, list[int]] = {}
        for j, s in enumerate(bank["samples"]):
            if s.hexcode:
                by_code.setdefault(s.hexcode, []).append(j)
        pairs = [(i, j) for i, c in enumerate(codes) if c for j in by_code.get(c, [])]
        with_match = sum(1 for c in codes if c and c in by_code)
        if len(pairs) > int(tc.nn_non_copies):
            pick = rng.choice(len(pairs), size=int(tc.nn_non_copies), replace=False)
            pairs = [pairs[int(p)] for p in np.sort(pick)]
        if pairs:
            pi = np.array([p[0] for p in pairs]); pj = np.array([p[1] for p in pairs])
            ss = (vx[pi] * bank["features"][pj]).sum(axis=1)
        else:
            ss = np.zeros(0, np.float32)
        non_copies["same_emoji"] = {"kind": "the same emoji drawn by another vendor (pretraining sample of the same hexcode)",
                                    "n": len(pairs), "val_images_with_one": int(with_match),
                                    "share_above": nd.share_above(ss, threshold), **nd.quantiles(ss)}
    flagged = sims >= threshold
    top = np.argsort(-sims)[:10]
    matches = [{"val": val_rel[int(val_idx[i])], "pretraining": bank["samples"][int(nn_idx[i])].id,
                "similarity": round(float(sims[i]), 4)} for i in top if nn_idx[i] >= 0]
    sec = round(time.perf_counter() - t0, 3)
    log.info("%s: feature decontamination: threshold %.4f (%s); %d of %d val images above it; known copies above: "
             "%.1f%%; non-copies above: %s (%.1fs)", t.name, threshold, rule, int(flagged.sum()), n,
             100 * float((copy_sims >= threshold).mean()),
             ", ".join(f"{k} {100 * v['share_above']:.1f}%" for k, v in non_copies.items() if v.get("share_above") is not None),
             sec)
    return {"checked": True, "threshold": round(threshold, 6), "rule": rule, "count": int(flagged.sum()),
            "centered": bank["mean"] is not None, "quantile": float(tc.nn_copy_quantile),
            "pretraining_images": m, "known_copies": {"val_images": int(len(pos)), "n": int(len(copy_sims)),
                                                      "kinds": list(nd.COPY_KINDS),
                                                      "share_above": nd.share_above(copy_sims, threshold),
                                                      **nd.quantiles(copy_sims), "by_kind": by_kind},
            "non_copies": non_copies, "max_similarity": nd.quantiles(sims), "top_matches": matches, "seconds": sec,
            "_flagged": flagged, "_similarity": sims}


def run_target(st: _Stage, t: Target, write: callable) -> dict:
    """Every method, init, data setting and seed of one target; returns its section of ``results.json``.

    ``write(section)`` is called whenever a part finishes (partial results survive a crash).
    """
    cfg, r, name = st.cfg, t.recipe, t.name
    t0 = time.perf_counter()
    methods, inits = list(r["methods"]), list(r["inits"])
    seed0 = int(cfg.seed)
    train_labels = np.asarray(t.train_set.targets)
    low = [int(k) for k in r["low_data_per_class"]]
    # data settings: seeded stratified nested subsets of the training images, one draw per seed
    orders: dict[int, list[np.ndarray]] = {}

    def subset(k: int | None, s: int) -> np.ndarray:
        sd = seed0 + s
        if sd not in orders:
            orders[sd] = per_class_order(train_labels, sd)
        return take_per_class(orders[sd], k if k is not None else r["max_train_per_class"])

    settings: list[int | None] = low + ([None] if r["full"] else [])

    def n_seeds(method: str, k: int | None) -> int:
        return 1 if k is None else int(r["probe_seeds"] if method == "linear_probe" else r["finetune_seeds"])

    val_idx = val_subset(t.val_set.targets, r["max_val_images"], seed0)
    val_rel = relative_paths(t.val_set)
    n_val = len(val_idx)
    cont_name, cont_paths = contaminated_paths(cfg.run_dir, cfg.data.eval_sets, Path(r["root"]) / r["val_split"])
    phash = np.array([val_rel[i] in cont_paths for i in val_idx], dtype=bool) if cont_paths else np.zeros(n_val, bool)
    st.arrays[f"{name}/val_ids"] = np.array([val_rel[i] for i in val_idx])
    st.arrays[f"{name}/phash"] = phash
    nn_flag: np.ndarray | None = None
    res: dict = {
        "target": name, "num_classes": t.num_classes, "classes": list(t.train_set.classes), "image_size": st.size,
        "train_images_available": len(t.train_set), "val_images_available": len(t.val_set), "val_images": int(n_val),
        "contaminated_val": int(phash.sum()),
        "recipe": {k: r[k] for k in ("low_data_per_class", "full", "max_train_per_class", "max_val_images", "probe_Cs",
                                     "probe_seeds", "finetune_epochs", "finetune_seeds", "min_epoch_images", "batch_size",
                                     "crop_min_scale", "base_lr", "finetune_lr_grid", "lr_select_setting",
                                     "lr_select_epochs", "lr_select_max_images", "warmup_epochs", "eval_every_epoch")},
        "probe_stages": list(st.tc.probe_stages),
        "overridden": list(r["overridden"]),
        "contamination": {"phash": {"checked": cont_paths is not None, "eval_set": cont_name, "count": int(phash.sum())},
                          "features": {"checked": False, "reason": st.nn_skip}},
        "lr_selection": None, "finetune_base_lr": None, "rows": [], "gains": [], "probe_grids": [],
        "seconds": {"lr_selection": 0.0, "decontamination": 0.0, "features": {}, "linear_probe": 0.0, "finetune": 0.0},
    }
    log.info("transfer target %s: %d classes, %d train / %d val images (%d scored, %d pHash-contaminated), settings %s",
             name, t.num_classes, len(t.train_set), len(t.val_set), n_val, int(phash.sum()),
             [(_setting_label(k), len(subset(k, 0))) for k in settings])
    ci = {"n_boot": int(st.tc.n_boot), "level": float(st.tc.ci_level), "seed": seed0}
    correct: dict[tuple, dict[str, np.ndarray]] = {}  # (method, init, k) -> {"top1": (S, N), "top5": (S, N)}
    meta: dict[tuple, dict] = {}

    def make_row(method: str, init: str, k: int | None) -> dict:
        c, m = correct[(method, init, k)], meta[(method, init, k)]
        key = _corr_key(name, method, init, k)
        st.arrays[key + "/top1"], st.arrays[key + "/top5"] = c["top1"], c["top5"]
        row = {"method": method, "init": init, "train_per_class": k, "train_images": m["train_images"],
               "seeds": m["seeds"]}
        for metric in ("top1", "top5"):
            iv = accuracy_interval(c[metric], **ci)
            row[metric], row[f"{metric}_ci"] = iv["mean"], [iv["lo"], iv["hi"]]
            row[f"{metric}_per_seed"] = [_r(x) for x in c[metric].mean(axis=1)]
            if metric == "top1":
                row["ci_method"] = iv["method"]
                row.update({f"top1_{x}": iv[x] for x in ("se_seed", "se_val") if x in iv})
        for lb, mask in (("lower_bound_top1", phash), ("lower_bound_top1_nn", nn_flag)):
            if mask is None:
                row[lb], row[f"{lb}_ci"] = None, None
            else:
                iv = accuracy_interval(c["top1"] & ~mask[None, :], **ci)
                row[lb], row[f"{lb}_ci"] = iv["mean"], [iv["lo"], iv["hi"]]
        row.update({"epochs": m.get("epochs"), "best_C": m.get("best_C"), "best_C_per_seed": m.get("best_C_per_seed"),
                    "base_lr": m.get("base_lr"), "seconds": round(m["seconds"], 3), "correct_key": key})
        return row

    def finish(method: str, init: str, k: int | None) -> None:
        res["rows"].append(make_row(method, init, k))
        other = {"pretrained": "scratch", "scratch": "pretrained"}[init]
        if (method, other, k) in correct:
            pre, scr = (correct[(method, "pretrained", k)], correct[(method, "scratch", k)])
            d = difference_interval(pre["top1"], scr["top1"], **ci)
            res["gains"].append({"method": method, "train_per_class": k, "metric": "top1",
                                 "pretrained": res_row(method, "pretrained", k)["top1"],
                                 "scratch": res_row(method, "scratch", k)["top1"], **d})
        st.save_arrays()
        write(res)

    def res_row(method, init, k) -> dict:
        return next(x for x in res["rows"] if x["method"] == method and x["init"] == init and x["train_per_class"] == k)

    # 1. the fine-tuning lr, on training images only (before the val images are read)
    ft_lr = float(r["base_lr"])
    if "finetune" in methods:
        sel = str(r["lr_select_setting"])
        sel_k = (None if r["full"] else max(low)) if sel == "largest" else None if sel == "full" else int(sel)
        lrs = select_lr(st, t, subset(sel_k, 0), sel_k)
        ft_lr = float(lrs["chosen_base_lr"])
        res["lr_selection"], res["finetune_base_lr"] = lrs, ft_lr
        res["seconds"]["lr_selection"] = lrs["seconds"]
        if not lrs.get("skipped"):
            log.info("%s: fine-tuning base_lr %g chosen on %d held-out training images (setting %s, grid %s)", name, ft_lr,
                     lrs["holdout_images"], lrs["setting"], [g["base_lr"] for g in lrs["grid"]])
        write(res)

    # 2. the val images, decoded once
    val_images = eval_batches(TransformedSubset(t.val_set, val_idx, st.size), st.tc.eval_batch_size, st.workers,
                              r["eval_cache_mb"], st.progress, f"{name}: decode val")
    val_feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # 3. feature-space decontamination (the pretrained trunk; its val features serve the probe too)
    if st.nn_skip is None:
        model = st.trunk("pretrained", seed0)
        vx, vy = st.features(model, val_images, n_val, f"{name}: features val pretrained")
        val_feats["pretrained"] = (vx, vy)
        dec = decontaminate(st, t, model, vx, val_idx, val_rel)
        del model
        nn_flag = dec.pop("_flagged")
        st.arrays[f"{name}/nn"] = nn_flag
        st.arrays[f"{name}/nn_similarity"] = dec.pop("_similarity").astype(np.float16)
        res["contamination"]["features"] = dec
        res["seconds"]["decontamination"] = dec["seconds"]
        st.save_arrays()
        write(res)

    # 4. linear probe: frozen features of every seed's subsets, one fit per setting and seed
    if "linear_probe" in methods:
        probe_sets = {(k, s): subset(k, s) for k in settings for s in range(n_seeds("linear_probe", k))}
        feat_idx = np.unique(np.concatenate(list(probe_sets.values())))
        train_images = eval_batches(TransformedSubset(t.train_set, feat_idx, st.size), st.tc.eval_batch_size,
                                    st.workers, r["eval_cache_mb"], st.progress, f"{name}: decode train")
        stages = tuple(st.tc.probe_stages)
        for init in inits:
            ts = time.perf_counter()
            model = st.trunk(init, seed0)
            fx, fy = st.features(model, train_images, len(feat_idx), f"{name}: features train {init}", stages)
            # the decontamination's val features are the penultimate layer's: reused when the probe uses only that
            reuse = val_feats.pop(init, None) if stages == ("layer4",) else None
            vx, vy = reuse or st.features(model, val_images, n_val, f"{name}: features val {init}", stages)
            del model
            res["seconds"]["features"][init] = round(time.perf_counter() - ts, 3)
            for k in settings:
                S = n_seeds("linear_probe", k)
                c1, c5, Cs, secs = np.zeros((S, n_val), bool), np.zeros((S, n_val), bool), [], 0.0
                for s in range(S):
                    idx = probe_sets[(k, s)]
                    pos = np.searchsorted(feat_idx, idx)
                    probe = fit_probe(fx[pos], fy[pos], list(r["probe_Cs"]), num_classes=t.num_classes,
                                      holdout_fraction=r["probe_holdout_fraction"], max_iter=r["probe_max_iter"],
                                      tol=r["probe_tol"], seed=seed0 + s, progress=st.progress,
                                      desc=f"{name}: probe {init} {_setting_label(k)} seed {s}")
                    sc = probe.scores(vx)
                    c1[s], c5[s] = topk_correct(sc, vy, 1), topk_correct(sc, vy, 5)
                    Cs.append(probe.best_C)
                    secs += probe.seconds
                    res["probe_grids"].append({"init": init, "train_per_class": k, "seed": s, "best_C": probe.best_C,
                                               "grid": probe.grid})
                correct[("linear_probe", init, k)] = {"top1": c1, "top5": c5}
                meta[("linear_probe", init, k)] = {"train_images": int(len(probe_sets[(k, 0)])), "seeds": list(range(S)),
                                                   "best_C": Cs[0], "best_C_per_seed": Cs, "seconds": secs}
                res["seconds"]["linear_probe"] += secs
                finish("linear_probe", init, k)
                row = res_row("linear_probe", init, k)
                log.info("%s: linear probe %s %s: top-1 %.4f [%.4f, %.4f] over %d seed(s) (C=%s, %.1fs)", name, init,
                         _setting_label(k), row["top1"], *row["top1_ci"], S, Cs, secs)
    val_feats.clear()

    # 5. fine-tuning: every init x setting x seed, all with the chosen lr
    if "finetune" in methods:
        runs = [(init, k, s) for init in inits for k in settings for s in range(n_seeds("finetune", k))]
        epochs, eval_every = int(r["finetune_epochs"]), bool(r["eval_every_epoch"])
        planned = {(k, s): _planned_images(len(subset(k, s)), epochs, min(int(r["batch_size"]), len(subset(k, s))),
                                           int(r["min_epoch_images"]), None) for _, k, s in runs}
        store: dict[tuple, dict] = {}
        rate = eval_s = None
        for n_run, (init, k, s) in enumerate(runs):
            idx = subset(k, s)
            stt = st.settings(r, epochs=epochs, n=len(idx), base_lr=ft_lr, seed=seed0 + s, eval_every_epoch=eval_every)
            train_ds = TransformedSubset(t.train_set, idx, st.size, train=True, scale=(r["crop_min_scale"], 1.0))

            def on_epoch(row: dict, init=init, k=k, s=s) -> None:
                st.epoch_rows.append({"target": name, "init": init, "train_per_class": k, "seed": s, "base_lr": ft_lr, **row})
                write_jsonl(st.out / EPOCHS, st.epoch_rows)
                log.info("%s: finetune %s %s seed %d epoch %d: loss %.4f%s (%.1fs)", name, init, _setting_label(k), s,
                         row["epoch"], row["loss"],
                         "" if row["top1"] is None else f" top-1 {row['top1']:.4f} top-5 {row['top5']:.4f}", row["seconds"])

            out = finetune(st.trunk(init, seed0 + s), train_ds, val_images, num_classes=t.num_classes, settings=stt,
                           device=st.device, desc=f"{name}: finetune {init} {_setting_label(k)} seed {s}", on_epoch=on_epoch)
            fin = out["final"]
            store.setdefault((init, k), {"top1": [], "top5": [], "seconds": 0.0})
            store[(init, k)]["top1"].append(fin["correct1"])
            store[(init, k)]["top5"].append(fin["correct5"])
            store[(init, k)]["seconds"] += out["seconds"]
            res["seconds"]["finetune"] += out["seconds"]
            if n_run == 0:
                rate = out["train_images"] / max(1e-9, out["train_seconds"])
                eval_s = out["eval_seconds"]
                left = runs[1:]
                est = sum(planned[(kk, ss)] / rate + eval_s for _, kk, ss in left)
                log.info("%s: %d fine-tuning runs left, about %.1f min (first run: %.0f img/s training, %.1fs scoring val)",
                         name, len(left), est / 60, rate, eval_s)
            if s == n_seeds("finetune", k) - 1:
                d = store.pop((init, k))
                correct[("finetune", init, k)] = {"top1": np.stack(d["top1"]), "top5": np.stack(d["top5"])}
                meta[("finetune", init, k)] = {"train_images": int(len(subset(k, 0))), "seeds": list(range(s + 1)),
                                               "epochs": epochs, "base_lr": ft_lr, "seconds": d["seconds"]}
                finish("finetune", init, k)
                row = res_row("finetune", init, k)
                log.info("%s: finetune %s %s: top-1 %.4f [%.4f, %.4f] over %d seed(s)", name, init, _setting_label(k),
                         row["top1"], *row["top1_ci"], s + 1)
    res["seconds"]["linear_probe"] = round(res["seconds"]["linear_probe"], 3)
    res["seconds"]["finetune"] = round(res["seconds"]["finetune"], 3)
    res["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    write(res)
    log.info("transfer target %s done in %.1f min", name, res["seconds"]["total"] / 60)
    return res


def run_transfer(cfg) -> dict:
    """Run the transfer suite for ``cfg``; return the stage's manifest.

    ``results.json``::

        {"schema": 2, "targets": {NAME: TARGET, ...}, "target_order": [NAME, ...], "model": str,
         "image_size": int, "seed": int, "ci": {"level", "n_boot", "note"},
         "pretraining_bank": {"images", "seconds"} | null, "seconds": {"total", NAME: float, ...}}

        TARGET = {"target": NAME, "num_classes", "classes", "image_size", "val_images" (scored),
          "val_images_available", "train_images_available", "contaminated_val" (pHash),
          "recipe": {the effective recipe}, "overridden": [keys the target set],
          "lr_selection": {"chosen_base_lr", "setting", "init", "fit_images", "holdout_images", "epochs",
                           "grid": [{"base_lr", "holdout_top1", "holdout_loss", ...}], "seconds", "skipped"} | null,
          "finetune_base_lr": float | null,
          "contamination": {"phash": {"checked", "eval_set", "count"},
                            "features": {"checked", "threshold", "rule", "count", "pretraining_images",
                                         "known_copies": {...}, "non_copies": {"random": {...}, "same_emoji": {...}},
                                         "max_similarity": {...}, "top_matches": [...], "seconds"}},
          "rows": [{"method": "linear_probe" | "finetune", "init": "pretrained" | "scratch",
                    "train_per_class": int | null (null = full/capped), "train_images": int, "seeds": [int],
                    "top1": float, "top1_ci": [lo, hi], "top1_per_seed": [float], "ci_method": str,
                    "top5", "top5_ci", "top5_per_seed", "lower_bound_top1", "lower_bound_top1_ci",
                    "lower_bound_top1_nn" | null, "lower_bound_top1_nn_ci" | null,
                    "epochs": int | null, "best_C": float | null, "best_C_per_seed", "base_lr": float | null,
                    "seconds": float, "correct_key": str}, ...],
          "gains": [{"method", "train_per_class", "metric": "top1", "pretrained", "scratch",
                     "diff", "lo", "hi", "ci_method", "measurable": bool, "verdict": "gain" | "loss" | "no measurable gain"}],
          "probe_grids": [...], "seconds": {...}}

    (accuracies as fractions; intervals at ``ci_level``; per-image correctness in ``correct.npz``).

    Raises:
        pipeline.config.ConfigError: bad ``transfer.*`` values, train/val classes that differ.
        FileNotFoundError: pretrain not finished, or a target folder missing; all before any work. (Without
            finished ingest and dedup stages in the run folder the feature-space check is skipped, with the
            reason in ``contamination.features.reason`` and a warning.)
    """
    validate(cfg)
    t0 = time.perf_counter()
    tc = cfg.transfer
    trunk_path, info, pre_man = read_pretrained(cfg.run_dir)
    model_name = info["model"]
    size = int(tc.image_size or info["image_size"])
    targets = open_targets(tc)
    nn_skip = None if tc.nn_decontam else "transfer.nn_decontam=false"
    if tc.nn_decontam:
        from pipeline.io.removal import removed_rows
        from pipeline.io.shards import shard_paths

        try:
            shard_paths(cfg.run_dir)
            removed_rows(cfg.run_dir)
        except FileNotFoundError as exc:  # e.g. a run folder holding only dedup/ and pretrain/
            nn_skip = f"the pretraining images cannot be read: {exc}"
            log.warning("transfer: no feature-space decontamination: %s", nn_skip)
    device = pick_device(tc.device)
    plan = thread_plan(device.type, available_cores(), 1, threads=tc.threads, workers=tc.workers)
    torch.set_num_threads(plan.threads)
    # a timed trial of the fine-tuning step on the CPU (cached per machine)
    prec = resolve_for_model(tc.precision, tc.channels_last, device, model=model_name, num_classes=targets[0].num_classes,
                             image_size=size, batch_size=tc.batch_size, threads=plan.threads, where="transfer.precision")
    prec.apply_global()
    log.info("transfer on %s; targets %s", describe_choice(prec, plan), [t.name for t in targets])

    out = stage_dir(cfg.run_dir, STAGE)
    out.mkdir(parents=True, exist_ok=True)
    for f in ("manifest.json", RESULTS, CORRECT):
        (out / f).unlink(missing_ok=True)
    remove_stale_temps(out)
    write_jsonl(out / EPOCHS, [])
    st = _Stage(cfg, trunk_path, model_name, size, device, prec, plan.workers, out)
    st.nn_skip = nn_skip
    results: dict = {"schema": SCHEMA, "targets": {}, "target_order": [t.name for t in targets], "model": model_name,
                     "image_size": size, "seed": int(cfg.seed),
                     "ci": {"level": float(tc.ci_level), "n_boot": int(tc.n_boot),
                            "note": "percentile bootstrap over the val images; with several seeds, seed spread and val "
                                    "bootstrap combined (pipeline.evaluation.intervals.seed_and_val_ci); differences: paired"},
                     "pretraining_bank": None, "seconds": {}}

    def write(section: dict) -> None:
        results["targets"][section["target"]] = section
        if st.bank is not None:
            results["pretraining_bank"] = {"images": len(st.bank["samples"]), "seconds": st.bank["seconds"]}
        write_json(out / RESULTS, results)

    for t in targets:
        sec = run_target(st, t, write)
        results["seconds"][t.name] = sec["seconds"]["total"]
    results["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    write_json(out / RESULTS, results)
    write_jsonl(out / EPOCHS, st.epoch_rows)

    counts: dict = {"targets": {}, "rows": sum(len(s["rows"]) for s in results["targets"].values()),
                    "finetune_epoch_rows": len(st.epoch_rows), "image_size": size}
    for name, sec in results["targets"].items():
        c: dict = {"num_classes": sec["num_classes"], "val_images": sec["val_images"],
                   "contaminated_val": sec["contaminated_val"],
                   "nn_flagged_val": sec["contamination"]["features"].get("count"),
                   "finetune_base_lr": sec["finetune_base_lr"], "rows": len(sec["rows"]),
                   "settings": sec["recipe"]["low_data_per_class"] + ([None] if sec["recipe"]["full"] else []),
                   "seconds": sec["seconds"]["total"]}
        for m in METHODS:
            for i in ("pretrained", "scratch"):
                cands = [x for x in sec["rows"] if x["method"] == m and x["init"] == i]
                full = [x for x in cands if x["train_per_class"] is None] or sorted(cands, key=lambda x: x["train_images"])[-1:]
                c[f"{m}_{i}_top1"] = full[0]["top1"] if full else None
            a, b = c[f"{m}_pretrained_top1"], c[f"{m}_scratch_top1"]
            c[f"{m}_gain_top1"] = round(a - b, 6) if a is not None and b is not None else None
        counts["targets"][name] = c
    counts["pretraining_bank_images"] = (results["pretraining_bank"] or {}).get("images")
    counts["device"] = str(device)
    counts["precision"] = prec.precision
    counts["channels_last"] = prec.channels_last
    counts["hardware"] = hardware_record(prec, plan, device)
    config = results_config(cfg, "seed", "transfer")
    dedup_man = read_manifest(stage_dir(cfg.run_dir, "dedup"))
    inputs = {"pretrain": pre_man.get("config_hash"), "trunk_sha256": file_sha256(trunk_path),
              "dedup": (dedup_man or {}).get("config_hash"),
              "targets": {t.name: {"train": fingerprint(t.train_set), "val": fingerprint(t.val_set)} for t in targets}}
    return write_manifest(out, stage=STAGE, config=config, inputs=inputs, counts=counts,
                          seconds=time.perf_counter() - t0,
                          outputs={"results": RESULTS, "correct": CORRECT, "finetune_epochs": EPOCHS})


def main() -> None:
    """Hydra entry point: ``python -m pipeline.transfer [overrides]``."""
    from pipeline.cli import hydra_entry

    hydra_entry(run_transfer, STAGE)


if __name__ == "__main__":
    main()
