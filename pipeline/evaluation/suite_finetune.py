"""The fine-tuning part of a target's suite run (:class:`pipeline.evaluation.suite.TargetRun`), on every rank.

Every init x setting x seed with the target's chosen lr (:func:`pipeline.evaluation.finetune.finetune`: DDP over
the ranks, val scored on each rank's block and gathered); a finished run is recorded and, in a rerun, restored
with its epoch rows; a run killed midway continues from its checkpoint (:mod:`pipeline.evaluation.resume`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import numpy as np

from pipeline.evaluation.finetune import FinetuneSettings, finetune, planned_images
from pipeline.evaluation.head_init import start_head
from pipeline.evaluation.results import find_row
from pipeline.evaluation.resume import run_identity
from pipeline.evaluation.target_data import TransformedSubset
from pipeline.evaluation.targets import setting_label
from pipeline.io.atomic import write_jsonl
from pipeline.io.run_folder import EPOCHS_FILE, transfer_run_name

if TYPE_CHECKING:
    from pipeline.evaluation.suite import TargetRun

log = logging.getLogger(__name__)

__all__ = ["run_finetunes", "finetune_run"]


def finetune_run(
    run: TargetRun,
    init: str,
    k: int | None,
    s: int,
    stt: FinetuneSettings,
    train_ds: TransformedSubset,
    on_epoch: Callable[[dict], None],
) -> dict:
    """One fine-tuning run: an earlier run's record (its epoch rows given to ``on_epoch`` again), or trained (from
    its checkpoint, if a killed run left one) and recorded; returns :func:`pipeline.evaluation.finetune.finetune`'s dict."""
    st, t, part = run.st, run.t, transfer_run_name("finetune", init, k, s)
    recs = st.records
    rec = run.load(part)
    if rec is not None:
        for row in rec["epochs"]:
            on_epoch(row)
        log.info("%s: %s finished in an earlier run of the stage: kept", t.name, part)
        return rec
    ident = run_identity(t.name, part, num_classes=t.num_classes, train_images=len(train_ds), settings=stt)
    model = st.trunk(init, run.seed0 + s)
    head, head_info = start_head(
        st, t, model, train_ds.indices, run.seed0 + s, f"{t.name}: finetune {init} {setting_label(k)} seed {s}"
    )
    out = finetune(
        model,
        train_ds,
        run.finetune_val(),
        num_classes=t.num_classes,
        settings=stt,
        device=st.device,
        desc=f"{t.name}: finetune {init} {setting_label(k)} seed {s}",
        on_epoch=on_epoch,
        checkpoints=recs.checkpoints(t.name, part, ident) if recs is not None else None,
        ranks=st.ranks,
        head=head,
    )
    if head_info is not None:
        out["head"] = head_info
    if recs is not None:
        recs.save(t.name, part, out)
    return out


def run_finetunes(run: TargetRun) -> None:
    """5. Fine-tuning: every init x setting x seed, all with the chosen lr."""
    st, t, r, name, res, seed0, ft_lr = run.st, run.t, run.t.recipe, run.t.name, run.res, run.seed0, run.ft_lr
    runs = [(init, k, s) for init in run.inits for k in run.settings for s in range(run.n_seeds("finetune", k))]
    epochs, eval_every = int(r["finetune_epochs"]), bool(r["eval_every_epoch"])
    planned = {
        (k, s): planned_images(
            len(run.subset(k, s)),
            epochs,
            min(int(r["batch_size"]), len(run.subset(k, s))),
            int(r["min_epoch_images"]),
            None,
        )
        for _, k, s in runs
    }
    store: dict[tuple, dict] = {}
    rate = eval_s = None
    for n_run, (init, k, s) in enumerate(runs):
        idx = run.subset(k, s)
        stt = st.settings(r, epochs=epochs, n=len(idx), base_lr=ft_lr, seed=seed0 + s, eval_every_epoch=eval_every)
        train_ds = TransformedSubset(t.train_set, idx, st.size, train=True, scale=(r["crop_min_scale"], 1.0))

        def on_epoch(row: dict, init=init, k=k, s=s) -> None:
            st.epoch_rows.append({"target": name, "init": init, "train_per_class": k, "seed": s, "base_lr": ft_lr, **row})
            if st.is_main:
                write_jsonl(st.out / EPOCHS_FILE, st.epoch_rows)
            log.info(
                "%s: finetune %s %s seed %d epoch %d: loss %.4f%s (%.1fs)",
                name,
                init,
                setting_label(k),
                s,
                row["epoch"],
                row["loss"],
                "" if row["top1"] is None else f" top-1 {row['top1']:.4f} top-5 {row['top5']:.4f}",
                row["seconds"],
            )

        out = finetune_run(run, init, k, s, stt, train_ds, on_epoch)
        fin = out["final"]
        store.setdefault((init, k), {"top1": [], "top5": [], "seconds": 0.0, "head_C": []})
        store[(init, k)]["head_C"].append(out.get("head", {}).get("best_C"))
        store[(init, k)]["top1"].append(fin["correct1"])
        store[(init, k)]["top5"].append(fin["correct5"])
        if "ema" in fin:  # the weight average, scored beside the raw weights
            store[(init, k)].setdefault("ema_top1", []).append(fin["ema"]["correct1"])
            store[(init, k)].setdefault("ema_top5", []).append(fin["ema"]["correct5"])
        store[(init, k)]["seconds"] += out["seconds"]
        res["seconds"]["finetune"] += out["seconds"]
        if n_run == 0:
            rate = out["train_images"] / max(1e-9, out["train_seconds"])
            eval_s = out["eval_seconds"]
            left = runs[1:]
            est = sum(planned[(kk, ss)] / rate + eval_s for _, kk, ss in left)
            log.info(
                "%s: %d fine-tuning runs left, about %.1f min (first run: %.0f img/s training, %.1fs scoring val)",
                name,
                len(left),
                est / 60,
                rate,
                eval_s,
            )
        if s == run.n_seeds("finetune", k) - 1:
            d = store.pop((init, k))
            run.correct[("finetune", init, k)] = {m: np.stack(d[m]) for m in ("top1", "top5", "ema_top1", "ema_top5") if m in d}
            run.meta[("finetune", init, k)] = {
                "train_images": int(len(run.subset(k, 0))),
                "seeds": list(range(s + 1)),
                "epochs": epochs,
                "base_lr": ft_lr,
                "seconds": d["seconds"],
                "head_init": r["finetune_head_init"],
                "head_C_per_seed": d["head_C"] if r["finetune_head_init"] == "probe" else None,
            }
            run.finish("finetune", init, k)
            row = find_row(res, "finetune", init, k)
            log.info(
                "%s: finetune %s %s: top-1 %.4f [%.4f, %.4f] over %d seed(s)",
                name,
                init,
                setting_label(k),
                row["top1"],
                *row["top1_ci"],
                s + 1,
            )
