"""The transfer stage's ``results.json``: its schema, its sections and rows, and the manifest counts drawn from it.

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

(accuracies as fractions; intervals at ``ci_level`` from :mod:`pipeline.evaluation.intervals`; per-image
correctness in ``correct.npz``, :mod:`pipeline.evaluation.correctness`). Readers outside the stage use
:func:`pipeline.io.run_folder.read_transfer_results`.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.intervals import accuracy_interval, difference_interval, round6
from pipeline.evaluation.targets import Target

__all__ = [
    "SCHEMA",
    "METHODS",
    "RECIPE_KEYS",
    "new_results",
    "new_target_section",
    "find_row",
    "result_row",
    "gain_entry",
    "stage_counts",
]

SCHEMA = 2
METHODS = ("linear_probe", "finetune")
RECIPE_KEYS = (
    "low_data_per_class",
    "full",
    "max_train_per_class",
    "max_val_images",
    "probe_Cs",
    "probe_seeds",
    "finetune_epochs",
    "finetune_seeds",
    "min_epoch_images",
    "batch_size",
    "device_batch",
    "label_smoothing",
    "ema_decay",
    "test_image_size",
    "crop_min_scale",
    "base_lr",
    "finetune_lr_grid",
    "lr_select_setting",
    "lr_select_epochs",
    "lr_select_max_images",
    "warmup_epochs",
    "eval_every_epoch",
)
"""The recipe keys a target's section repeats (``TARGET.recipe``)."""


def new_results(tc, target_names: list[str], model_name: str, size: int, seed: int) -> dict:
    """The top level of ``results.json`` before any target ran (``targets`` empty, ``seconds`` {})."""
    return {
        "schema": SCHEMA,
        "targets": {},
        "target_order": list(target_names),
        "model": model_name,
        "image_size": size,
        "seed": int(seed),
        "ci": {
            "level": float(tc.ci_level),
            "n_boot": int(tc.n_boot),
            "note": "percentile bootstrap over the val images; with several seeds, seed spread and val "
            "bootstrap combined (pipeline.evaluation.intervals.seed_and_val_ci); differences: paired",
        },
        "pretraining_bank": None,
        "seconds": {},
    }


def new_target_section(
    t: Target,
    *,
    size: int,
    n_val: int,
    phash: np.ndarray,
    phash_eval_set: str | None,
    phash_checked: bool,
    probe_stages,
    nn_skip: str | None,
) -> dict:
    """A target's section (``TARGET``) before any run: its data, recipe and pHash contamination; no rows yet.

    Args:
        phash: (n_val,) bool, the scored val images dedup's pHash check flagged.
        nn_skip: why the feature-space check is skipped (its ``reason``), or None.
    """
    r = t.recipe
    return {
        "target": t.name,
        "num_classes": t.num_classes,
        "classes": list(t.train_set.classes),
        "image_size": size,
        "train_images_available": len(t.train_set),
        "val_images_available": len(t.val_set),
        "val_images": int(n_val),
        "contaminated_val": int(phash.sum()),
        # zero-byte image files of the target's folders, left out (at most 100 listed per split)
        "empty_files": {k: {"count": len(v), "files": v[:100]} for k, v in t.empty_files.items()},
        # non-empty files that are no image (their first bytes), left out the same way
        "unreadable_files": {k: {"count": len(v), "files": v[:100]} for k, v in t.unreadable_files.items()},
        "recipe": {k: r[k] for k in RECIPE_KEYS},
        "probe_stages": list(probe_stages),
        "overridden": list(r["overridden"]),
        "contamination": {
            "phash": {"checked": phash_checked, "eval_set": phash_eval_set, "count": int(phash.sum())},
            "features": {"checked": False, "reason": nn_skip},
        },
        "lr_selection": None,
        "finetune_base_lr": None,
        "rows": [],
        "gains": [],
        "probe_grids": [],
        "seconds": {"lr_selection": 0.0, "decontamination": 0.0, "features": {}, "linear_probe": 0.0, "finetune": 0.0},
    }


def find_row(section: dict, method: str, init: str, k: int | None) -> dict:
    """The row of ``section`` for (method, init, train_per_class ``k``).

    Raises:
        StopIteration: no such row yet.
    """
    return next(x for x in section["rows"] if x["method"] == method and x["init"] == init and x["train_per_class"] == k)


def result_row(
    method: str,
    init: str,
    k: int | None,
    correct: dict[str, np.ndarray],
    meta: dict,
    *,
    key: str,
    phash: np.ndarray,
    nn_flag: np.ndarray | None,
    ci: dict,
) -> dict:
    """One row of ``TARGET.rows`` from the per-image correctness of its seeds.

    Args:
        correct: ``{"top1": (S, N) bool, "top5": (S, N) bool}`` (and ``ema_top1``, ``ema_top5``: the weight
            average's, fine-tuning with ``ema_decay``), row s = seed s.
        meta: ``train_images``, ``seeds``, ``seconds`` and, as the method has them, ``epochs``, ``best_C``,
            ``best_C_per_seed``, ``base_lr``, ``head_init``, ``head_C_per_seed``.
        key: the row's ``correct.npz`` key prefix (:func:`pipeline.evaluation.correctness.correctness_key`).
        phash, nn_flag: (N,) bool, the val images flagged by pHash / in feature space (None: not checked;
            its lower bound is then null).
        ci: ``n_boot``, ``seed``, ``level`` of :func:`pipeline.evaluation.intervals.accuracy_interval`.
    """
    c, m = correct, meta
    row = {"method": method, "init": init, "train_per_class": k, "train_images": m["train_images"], "seeds": m["seeds"]}
    for metric in ("top1", "top5", "ema_top1", "ema_top5"):
        if metric not in c:  # the weight average's scores: only with transfer.ema_decay
            continue
        iv = accuracy_interval(c[metric], **ci)
        row[metric], row[f"{metric}_ci"] = iv["mean"], [iv["lo"], iv["hi"]]
        row[f"{metric}_per_seed"] = [round6(x) for x in c[metric].mean(axis=1)]
        if metric == "top1":
            row["ci_method"] = iv["method"]
            row.update({f"top1_{x}": iv[x] for x in ("se_seed", "se_val") if x in iv})
    for lb, mask in (("lower_bound_top1", phash), ("lower_bound_top1_nn", nn_flag)):
        if mask is None:
            row[lb], row[f"{lb}_ci"] = None, None
        else:
            iv = accuracy_interval(c["top1"] & ~mask[None, :], **ci)
            row[lb], row[f"{lb}_ci"] = iv["mean"], [iv["lo"], iv["hi"]]
    row.update(
        {
            "epochs": m.get("epochs"),
            "best_C": m.get("best_C"),
            "best_C_per_seed": m.get("best_C_per_seed"),
            "base_lr": m.get("base_lr"),
            # fine-tuning: the head it started from ("random" or "probe": LP-FT) and the head probe's C per seed
            "head_init": m.get("head_init"),
            "head_C_per_seed": m.get("head_C_per_seed"),
            "seconds": round(m["seconds"], 3),
            "correct_key": key,
        }
    )
    return row


def gain_entry(section: dict, method: str, k: int | None, pretrained: np.ndarray, scratch: np.ndarray, ci: dict) -> dict:
    """One entry of ``TARGET.gains``: pretrained minus scratch top-1 of (method, ``k``), with its paired interval.

    Args:
        pretrained, scratch: (S, N) bool top-1 correctness of the two inits (the same seeds and val images).
        ci: as for :func:`result_row`.
    """
    d = difference_interval(pretrained, scratch, **ci)
    return {
        "method": method,
        "train_per_class": k,
        "metric": "top1",
        "pretrained": find_row(section, method, "pretrained", k)["top1"],
        "scratch": find_row(section, method, "scratch", k)["top1"],
        **d,
    }


def stage_counts(results: dict, epoch_rows: int, size: int) -> dict:
    """The manifest's ``counts`` drawn from ``results.json``: per target its sizes, lr, flagged images, and the
    top-1 of each method and init in the full setting (else the largest low-data one) with the gain."""
    counts: dict = {
        "targets": {},
        "rows": sum(len(s["rows"]) for s in results["targets"].values()),
        "finetune_epoch_rows": epoch_rows,
        "image_size": size,
    }
    for name, sec in results["targets"].items():
        c: dict = {
            "num_classes": sec["num_classes"],
            "val_images": sec["val_images"],
            "contaminated_val": sec["contaminated_val"],
            "nn_flagged_val": sec["contamination"]["features"].get("count"),
            "finetune_base_lr": sec["finetune_base_lr"],
            "rows": len(sec["rows"]),
            "settings": sec["recipe"]["low_data_per_class"] + ([None] if sec["recipe"]["full"] else []),
            "seconds": sec["seconds"]["total"],
        }
        for m in METHODS:
            for i in ("pretrained", "scratch"):
                cands = [x for x in sec["rows"] if x["method"] == m and x["init"] == i]
                full = [x for x in cands if x["train_per_class"] is None] or sorted(cands, key=lambda x: x["train_images"])[-1:]
                c[f"{m}_{i}_top1"] = full[0]["top1"] if full else None
            a, b = c[f"{m}_pretrained_top1"], c[f"{m}_scratch_top1"]
            c[f"{m}_gain_top1"] = round(a - b, 6) if a is not None and b is not None else None
        counts["targets"][name] = c
    counts["pretraining_bank_images"] = (results["pretraining_bank"] or {}).get("images")
    return counts


def transfer_targets(res: dict | None) -> dict[str, dict]:
    """The per-target sections of a ``transfer/results.json`` in suite order (a pre-suite file with
    top-level ``rows`` is read as one target)."""
    if not isinstance(res, dict):
        return {}
    if isinstance(res.get("targets"), dict):
        order = [n for n in res.get("target_order") or [] if n in res["targets"]]
        order += [n for n in res["targets"] if n not in order]
        return {n: res["targets"][n] for n in order}
    if "rows" in res:
        return {str(res.get("target", "target")): res}
    return {}
