"""The transfer suite on one target: lr selection, val decontamination, linear probe and fine-tuning runs.

:func:`run_target` runs every method x init x data setting x seed of a target in this order
(Mahajan et al. 2018, sec. 3: feature transfer and full fine-tuning, each against the same model
from random initialization):

1. the fine-tuning lr, on held-out training images only, before the val images are read
   (:mod:`pipeline.evaluation.lr_selection`);
2. the scored val images, decoded once (the same for every run of the target);
3. feature-space decontamination with the pretrained trunk, whose val features serve the probe too
   (:mod:`pipeline.evaluation.decontamination`);
4. the linear probe: frozen features of every seed's subsets, one fit per setting and seed
   (:mod:`pipeline.evaluation.suite_probe`, :mod:`pipeline.evaluation.linear_probe`);
5. fine-tuning: every init x setting x seed, all with the chosen lr (:mod:`pipeline.evaluation.suite_finetune`,
   :mod:`pipeline.evaluation.finetune`).

Data settings are seeded stratified nested subsets of the training images, one draw per seed;
the low-data settings are repeated over ``probe_seeds`` / ``finetune_seeds`` draws (seed s also
seeds the new head, the augmentation and the scratch init), the full setting runs once. Rows and
gains are built by :mod:`pipeline.evaluation.results`; the section is written after every part.

Each finished part (the lr selection, the decontamination, each probe (init, setting), each fine-tuning
run) is recorded as it finishes and, in a rerun of the stage with the same key, read back instead of
redone; a fine-tuning run killed midway continues from its checkpoint (:mod:`pipeline.evaluation.resume`).
The val images are decoded only when a part still has to run.

Mahajan et al. 2018 (sec. 3) measure pretraining two ways, and so does the transfer stage, each
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
correctness is stored in ``correct.npz`` (:func:`pipeline.evaluation.correctness.load_correctness`) so every interval can be
recomputed.

**Lower-bound accuracy** (Mahajan et al. 2018), two of them: ``lower_bound_top1`` counts the
val images that dedup's pHash check found (near) duplicated in the pretraining data as
wrong (``<run_dir>/dedup/eval_contamination.json``, the ``data.eval_sets`` entry whose
``root/split`` is this target's val folder); ``lower_bound_top1_nn`` counts the val images
whose nearest pretraining image in the pretrained trunk's feature space is above a
calibrated cosine threshold as wrong (:mod:`pipeline.evaluation.nn_decontam`; ``transfer.nn_decontam``).

Images are RGB; val and probe features use the eval recipe of :mod:`pipeline.vision.transforms` at the
pretraining image size S from ``<run_dir>/pretrain/model.json``; fine-tuning trains on
random-resized crops + flips; ImageNet normalization.

The linear probe's and fine-tuning's parts live in :mod:`pipeline.evaluation.suite_probe` and
:mod:`pipeline.evaluation.suite_finetune`; how every part splits over the ranks of a torchrun/SLURM job,
in :mod:`pipeline.evaluation.ranks`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.evaluation import lr_selection
from pipeline.evaluation.correctness import correctness_key
from pipeline.evaluation.decontamination import contaminated_paths, decontaminate
from pipeline.evaluation.ranks import gather_rows, rank_block
from pipeline.evaluation.results import gain_entry, new_target_section, result_row
from pipeline.evaluation.suite_context import SuiteContext
from pipeline.evaluation.suite_finetune import run_finetunes
from pipeline.evaluation.suite_probe import run_probe
from pipeline.evaluation.target_data import (
    EvalImages,
    TransformedSubset,
    eval_batches,
    per_class_order,
    relative_paths,
    take_per_class,
)
from pipeline.evaluation.targets import Target, setting_label, val_subset
from pipeline.train.distributed import broadcast_object

log = logging.getLogger(__name__)

__all__ = ["run_target", "TargetRun"]


class TargetRun:
    """One target's runs: its data settings and seeded subsets, scored val images, and the rows as they finish.

    ``write(section)`` is called whenever a part finishes (partial results survive a crash).
    """

    def __init__(self, st: SuiteContext, t: Target, write: Callable[[dict], None]) -> None:
        self.st, self.t, self.write = st, t, write
        cfg, r, name = st.cfg, t.recipe, t.name
        self.t0 = time.perf_counter()
        self.methods, self.inits = list(r["methods"]), list(r["inits"])
        self.seed0 = int(cfg.seed)
        self.train_labels = np.asarray(t.train_set.targets)
        self.low = [int(k) for k in r["low_data_per_class"]]
        self.orders: dict[int, list[np.ndarray]] = {}  # seed -> per-class order of the training images
        self.settings: list[int | None] = self.low + ([None] if r["full"] else [])
        self.val_idx = val_subset(t.val_set.targets, r["max_val_images"], self.seed0)
        self.val_rel = relative_paths(t.val_set)
        self.n_val = n_val = len(self.val_idx)
        self.val_block = rank_block(n_val, st.ranks)  # the val images this rank scores
        cont_name, cont_paths = contaminated_paths(cfg.run_dir, cfg.data.eval_sets, Path(r["root"]) / r["val_split"])
        self.phash = (
            np.array([self.val_rel[i] in cont_paths for i in self.val_idx], dtype=bool) if cont_paths else np.zeros(n_val, bool)
        )
        st.arrays[f"{name}/val_ids"] = np.array([self.val_rel[i] for i in self.val_idx])
        st.arrays[f"{name}/phash"] = self.phash
        self.nn_flag: np.ndarray | None = None
        self.res = new_target_section(
            t,
            size=st.size,
            n_val=n_val,
            phash=self.phash,
            phash_eval_set=cont_name,
            phash_checked=cont_paths is not None,
            probe_stages=st.tc.probe_stages,
            nn_skip=st.nn_skip,
        )
        log.info(
            "transfer target %s: %d classes, %d train / %d val images (%d scored, %d pHash-contaminated), settings %s",
            name,
            t.num_classes,
            len(t.train_set),
            len(t.val_set),
            n_val,
            int(self.phash.sum()),
            [(setting_label(k), len(self.subset(k, 0))) for k in self.settings],
        )
        self.ci = {"n_boot": int(st.tc.n_boot), "level": float(st.tc.ci_level), "seed": self.seed0}
        self.correct: dict[tuple, dict[str, np.ndarray]] = {}  # (method, init, k) -> {"top1": (S, N), "top5": (S, N)}
        self.meta: dict[tuple, dict] = {}
        self.ft_lr = float(r["base_lr"])
        self.val_images: EvalImages | None = None  # decode_val()
        self.test_val_images: EvalImages | None = None  # finetune_val(), at test_image_size
        self.val_feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def subset(self, k: int | None, s: int) -> np.ndarray:
        """Training positions of setting ``k`` (None: full, capped at ``max_train_per_class``) for seed ``s``."""
        sd = self.seed0 + s
        if sd not in self.orders:
            self.orders[sd] = per_class_order(self.train_labels, sd)
        return take_per_class(self.orders[sd], k if k is not None else self.t.recipe["max_train_per_class"])

    def n_seeds(self, method: str, k: int | None) -> int:
        """Seeded draws of ``method`` in setting ``k`` (the full setting: 1)."""
        r = self.t.recipe
        return 1 if k is None else int(r["probe_seeds"] if method == "linear_probe" else r["finetune_seeds"])

    def finish(self, method: str, init: str, k: int | None) -> None:
        """Add the row of (method, init, k), its gain once both inits ran, store its arrays and write the section."""
        st, c = self.st, self.correct[(method, init, k)]
        key = correctness_key(self.t.name, method, init, k)
        for metric, arr in c.items():  # top1, top5 (and ema_top1, ema_top5 with a weight average)
            st.arrays[f"{key}/{metric}"] = arr
        self.res["rows"].append(
            result_row(
                method, init, k, c, self.meta[(method, init, k)], key=key, phash=self.phash, nn_flag=self.nn_flag, ci=self.ci
            )
        )
        other = {"pretrained": "scratch", "scratch": "pretrained"}[init]
        if (method, other, k) in self.correct:
            pre, scr = self.correct[(method, "pretrained", k)], self.correct[(method, "scratch", k)]
            self.res["gains"].append(gain_entry(self.res, method, k, pre["top1"], scr["top1"], self.ci))
        st.save_arrays()
        self.write(self.res)

    def once(self, part: str, compute: Callable[[], dict]) -> dict:
        """The record of ``part`` of this target: an earlier run's (:class:`pipeline.evaluation.resume.RunRecords`), or
        ``compute()``'s, recorded."""
        recs = self.st.records
        rec = self.load(part)
        if rec is not None:
            log.info("%s: %s finished in an earlier run of the stage: kept", self.t.name, part)
            return rec
        rec = compute()
        if recs is not None:
            recs.save(self.t.name, part, rec)
        return rec

    def load(self, part: str) -> dict | None:
        """The record of a finished ``part`` (None: not finished), as rank 0 reads it, on every rank."""
        recs, ranks = self.st.records, self.st.ranks
        rec = recs.load(self.t.name, part) if recs is not None and ranks.is_main else None
        return broadcast_object(ranks, rec) if recs is not None else None

    def choose_lr(self) -> None:
        """1. The fine-tuning lr, on training images only (before the val images are read)."""
        r, res = self.t.recipe, self.res
        sel_k = lr_selection.lr_select_setting(r)
        lrs = self.once("lr_selection", lambda: lr_selection.select_lr(self.st, self.t, self.subset(sel_k, 0), sel_k))
        self.ft_lr = float(lrs["chosen_base_lr"])
        res["lr_selection"], res["finetune_base_lr"] = lrs, self.ft_lr
        res["seconds"]["lr_selection"] = lrs["seconds"]
        if not lrs.get("skipped"):
            log.info(
                "%s: fine-tuning base_lr %g chosen on %d held-out training images (setting %s, grid %s)",
                self.t.name,
                self.ft_lr,
                lrs["holdout_images"],
                lrs["setting"],
                [g["base_lr"] for g in lrs["grid"]],
            )
        self.write(res)

    def finetune_val(self) -> EvalImages:
        """The val images fine-tuning is scored on: at ``test_image_size`` when the recipe sets one (FixRes), else the
        scored val images of :meth:`decode_val`; this rank's block, decoded once."""
        st, r, test = self.st, self.t.recipe, self.t.recipe["test_image_size"]
        if test is None or int(test) == st.size:
            self.decode_val()
            assert self.val_images is not None  # decode_val() ran
            return self.val_images
        if self.test_val_images is None:
            self.test_val_images = eval_batches(
                TransformedSubset(self.t.val_set, self.val_idx[self.val_block], int(test)),
                st.tc.eval_batch_size,
                st.workers,
                r["eval_cache_mb"],
                st.progress,
                f"{self.t.name}: decode val at {int(test)} px",
            )
        return self.test_val_images

    def decode_val(self) -> None:
        """2. The scored val images, decoded once (on first use: not when every part finished in an earlier run); this
        rank's block of them (:func:`pipeline.evaluation.ranks.rank_block`)."""
        st, r = self.st, self.t.recipe
        if self.val_images is not None:
            return
        self.val_images = eval_batches(
            TransformedSubset(self.t.val_set, self.val_idx[self.val_block], st.size),
            st.tc.eval_batch_size,
            st.workers,
            r["eval_cache_mb"],
            st.progress,
            f"{self.t.name}: decode val",
        )

    def decontaminate(self) -> None:
        """3. Feature-space decontamination (the pretrained trunk; its val features serve the probe too)."""
        st, name, res = self.st, self.t.name, self.res

        def compute() -> dict:
            self.decode_val()
            model = st.trunk("pretrained", self.seed0)
            vx, vy = st.features(model, self.val_images, len(self.val_images or ()), f"{name}: features val pretrained")
            self.val_feats["pretrained"] = (vx, vy)
            all_vx = gather_rows(st.ranks, vx)
            # every rank searches its part of the pretraining feature bank (pipeline.evaluation.nn_bank)
            dec = {**decontaminate(st, self.t, model, all_vx, self.val_idx, self.val_rel), "_bank": st.bank_info}
            return broadcast_object(st.ranks, dec)  # rank 0's numbers everywhere (the ranks computed the same)

        dec = self.once("decontamination", compute)
        bank = dec.pop("_bank")
        st.bank_info = st.bank_info or bank
        self.nn_flag = dec.pop("_flagged")
        st.arrays[f"{name}/nn"] = self.nn_flag
        st.arrays[f"{name}/nn_similarity"] = dec.pop("_similarity").astype(np.float16)
        res["contamination"]["features"] = dec
        res["seconds"]["decontamination"] = dec["seconds"]
        st.save_arrays()
        self.write(res)


def run_target(st: SuiteContext, t: Target, write: Callable[[dict], None]) -> dict:
    """Every method, init, data setting and seed of one target; returns its section of ``results.json``.

    ``write(section)`` is called whenever a part finishes (partial results survive a crash).
    """
    run = TargetRun(st, t, write)
    res = run.res
    if "finetune" in run.methods:
        run.choose_lr()
    if st.nn_skip is None:
        run.decontaminate()
    if "linear_probe" in run.methods:
        run_probe(run)
    run.val_feats.clear()
    if "finetune" in run.methods:
        run_finetunes(run)
    res["seconds"]["linear_probe"] = round(res["seconds"]["linear_probe"], 3)
    res["seconds"]["finetune"] = round(res["seconds"]["finetune"], 3)
    res["seconds"]["total"] = round(time.perf_counter() - run.t0, 3)
    write(res)
    log.info("transfer target %s done in %.1f min", t.name, res["seconds"]["total"] / 60)
    return res
