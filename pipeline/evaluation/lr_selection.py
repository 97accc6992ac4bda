"""The fine-tuning learning rate of a target, chosen on held-out training images (never on val).

Each ``finetune_lr_grid`` value gets one fine-tuning run (``lr_select_epochs`` epochs of at
most ``lr_select_max_images`` images, pretrained init, starting from the head the real runs start from)
on a stratified part of the training images of the ``lr_select_setting`` setting (whole emoji families held
out on the emoji targets: :func:`pipeline.evaluation.targets.groups_of`), scored on the other
``lr_select_holdout_fraction``; the best
held-out top-1 (ties: lower loss, then the smaller lr) is used for every fine-tuning run of the
target, pretrained and scratch alike. A grid of fewer than 2 values skips the search (``base_lr``).
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np

from pipeline.evaluation.finetune import finetune
from pipeline.evaluation.head_init import start_head
from pipeline.evaluation.intervals import round6
from pipeline.evaluation.ranks import rank_block
from pipeline.evaluation.suite_context import SuiteContext
from pipeline.evaluation.target_data import TransformedSubset, eval_batches, stratified_holdout
from pipeline.evaluation.targets import Target, groups_of, setting_label

log = logging.getLogger(__name__)

__all__ = ["select_lr", "lr_select_setting"]


def lr_select_setting(recipe: dict) -> int | None:
    """The data setting whose training images the lr selection splits (``lr_select_setting``).

    ``"largest"``: the full setting (None) if on, else the largest low-data one; ``"full"``: None;
    else the images per class it names (``"10"`` -> 10).
    """
    sel = str(recipe["lr_select_setting"])
    low = [int(k) for k in recipe["low_data_per_class"]]
    return (None if recipe["full"] else max(low)) if sel == "largest" else None if sel == "full" else int(sel)


def select_lr(st: SuiteContext, t: Target, idx: np.ndarray, setting: int | None) -> dict:
    """Choose the fine-tuning lr of target ``t`` on a stratified held-out part of the training images ``idx``.

    Only ``t.train_set`` is read (the val split is not touched). Each grid value gets a short
    run from the pretrained trunk on the fit part, scored on the held-out part.

    Returns:
        ``{"chosen_base_lr", "setting", "init", "fit_images", "holdout_images", "epochs", "max_epoch_images",
        "grid": [{"base_lr", "holdout_top1", "holdout_top5", "holdout_loss", "seconds"}], "seconds", "skipped"}``.
    """
    r = t.recipe
    grid = sorted({float(x) for x in r["finetune_lr_grid"]})
    base = {
        "setting": setting_label(setting),
        "init": "pretrained",
        "epochs": int(r["lr_select_epochs"]),
        "max_epoch_images": r["lr_select_max_images"],
        "grid": [],
        "seconds": 0.0,
    }
    if len(grid) < 2:
        return {
            **base,
            "chosen_base_lr": float(grid[0] if grid else r["base_lr"]),
            "fit_images": 0,
            "holdout_images": 0,
            "skipped": "fewer than 2 values in finetune_lr_grid",
        }
    labels = np.asarray(t.train_set.targets)[idx]
    fit_pos, hold_pos = stratified_holdout(
        labels, float(r["lr_select_holdout_fraction"]), st.cfg.seed, salt="lr-holdout", groups=groups_of(t, idx)
    )
    fit_idx, hold_idx = idx[fit_pos], idx[hold_pos]
    base.update(fit_images=int(len(fit_idx)), holdout_images=int(len(hold_idx)))
    if len(fit_idx) < 2 or len(hold_idx) < 1:
        return {**base, "chosen_base_lr": float(r["base_lr"]), "skipped": "too few training images to hold some out"}
    t0 = time.perf_counter()
    hold = eval_batches(  # this rank's block of the held-out images (pipeline.evaluation.ranks)
        TransformedSubset(t.train_set, hold_idx[rank_block(len(hold_idx), st.ranks)], st.size),
        st.tc.eval_batch_size,
        st.workers,
        r["eval_cache_mb"],
        st.progress,
        f"{t.name}: decode lr holdout",
    )
    fit = TransformedSubset(t.train_set, fit_idx, st.size, train=True, scale=(r["crop_min_scale"], 1.0))
    # the runs start where the real ones do (LP-FT: BatchNorm statistics and a probe's head of the fit part, shared by
    # every lr; each run fine-tunes its own copy of that trunk)
    start = st.trunk("pretrained", st.cfg.seed)
    head, _ = start_head(st, t, start, fit_idx, st.cfg.seed, f"{t.name}: lr selection")
    for lr in grid:
        s = st.settings(
            r,
            epochs=int(r["lr_select_epochs"]),
            n=len(fit_idx),
            base_lr=lr,
            seed=st.cfg.seed,
            max_epoch_images=r["lr_select_max_images"],
            eval_every_epoch=False,
        )
        res = finetune(
            copy.deepcopy(start),
            fit,
            hold,
            num_classes=t.num_classes,
            settings=s,
            device=st.device,
            desc=f"{t.name}: lr {lr:g}",
            ranks=st.ranks,
            head=head,
        )
        fin = res["final"]
        base["grid"].append(
            {
                "base_lr": lr,
                "holdout_top1": round6(fin["top1"]),
                "holdout_top5": round6(fin["top5"]),
                "holdout_loss": round6(fin["loss"]),
                "train_images": int(res["train_images"]),
                "seconds": round(res["seconds"], 3),
            }
        )
        log.info(
            "%s: lr selection, base_lr %g: held-out top-1 %.4f, loss %.4f (%.1fs)",
            t.name,
            lr,
            fin["top1"],
            fin["loss"],
            res["seconds"],
        )
    best = min(base["grid"], key=lambda g: (-g["holdout_top1"], g["holdout_loss"], g["base_lr"]))
    base["seconds"] = round(time.perf_counter() - t0, 3)
    return {**base, "chosen_base_lr": best["base_lr"], "skipped": None}
