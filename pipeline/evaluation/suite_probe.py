"""The linear probe part of a target's suite run (:class:`pipeline.evaluation.suite.TargetRun`), on every rank.

Each rank extracts the frozen trunk's features of its block of the training images and of the scored val
images (:func:`pipeline.evaluation.ranks.rank_block`); each (setting, seed) fit chooses C on one stratified
split of all the setting's images and fits over every rank's rows (:func:`pipeline.evaluation.linear_probe.fit_probe`);
the val hits are gathered in order. A finished (init, setting) is recorded and, in a rerun, restored.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from pipeline.evaluation.linear_probe import fit_probe, topk_correct
from pipeline.evaluation.ranks import gather_rows, rank_block
from pipeline.evaluation.results import find_row
from pipeline.evaluation.target_data import TransformedSubset, eval_batches, stratified_holdout
from pipeline.evaluation.targets import groups_of, setting_label
from pipeline.io.run_folder import transfer_run_name
from pipeline.train.distributed import broadcast_object

if TYPE_CHECKING:
    from pipeline.evaluation.suite import TargetRun

log = logging.getLogger(__name__)

__all__ = ["run_probe", "restore_probe", "record_probe"]


def restore_probe(run: TargetRun, inits: list[str], settings: list[int | None] | None = None) -> bool:
    """Whether every linear probe of ``inits`` x ``settings`` (default: all) finished in an earlier run of the
    stage; if so their rows are restored (in order) and True returned, else nothing is done."""
    recs, name = run.st.records, run.t.name
    parts = [
        (i, k, transfer_run_name("linear_probe", i, k)) for i in inits for k in (run.settings if settings is None else settings)
    ]
    ranks = run.st.ranks
    if recs is None or not broadcast_object(ranks, ranks.is_main and all(recs.done(name, p) for _, _, p in parts)):
        return False
    for init, k, p in parts:
        rec = run.load(p)
        assert rec is not None  # done() above
        run.correct[("linear_probe", init, k)], run.meta[("linear_probe", init, k)] = rec["correct"], rec["meta"]
        run.res["probe_grids"] += rec["grids"]
        run.res["seconds"]["features"][init] = rec["features_seconds"]
        run.res["seconds"]["linear_probe"] += rec["meta"]["seconds"]
        run.finish("linear_probe", init, k)
        log.info("%s: linear probe %s %s finished in an earlier run of the stage: kept", name, init, setting_label(k))
    return True


def record_probe(run: TargetRun, init: str, k: int | None) -> None:
    """Record the finished linear probe (init, setting ``k``), all its seeds (:meth:`restore_probe` reads it)."""
    if run.st.records is not None:
        key, res = ("linear_probe", init, k), run.res
        grids = [g for g in res["probe_grids"] if g["init"] == init and g["train_per_class"] == k]
        rec = {
            "correct": run.correct[key],
            "meta": run.meta[key],
            "grids": grids,
            "features_seconds": res["seconds"]["features"][init],
        }
        run.st.records.save(run.t.name, transfer_run_name("linear_probe", init, k), rec)


def run_probe(run: TargetRun) -> None:
    """4. Linear probe: frozen features of every seed's subsets, one fit per setting and seed."""
    st, t, r, name, res, seed0 = run.st, run.t, run.t.recipe, run.t.name, run.res, run.seed0
    if restore_probe(run, run.inits):  # every probe finished in an earlier run of the stage
        return
    run.decode_val()
    probe_sets = {(k, s): run.subset(k, s) for k in run.settings for s in range(run.n_seeds("linear_probe", k))}
    feat_idx = np.unique(np.concatenate(list(probe_sets.values())))
    mine = feat_idx[rank_block(len(feat_idx), st.ranks)]  # the training images whose features this rank holds
    train_images = eval_batches(
        TransformedSubset(t.train_set, mine, st.size),
        st.tc.eval_batch_size,
        st.workers,
        r["eval_cache_mb"],
        st.progress,
        f"{name}: decode train",
    )
    stages = tuple(st.tc.probe_stages)
    for init in run.inits:
        if restore_probe(run, [init]):
            continue
        ts = time.perf_counter()
        model = st.trunk(init, seed0)
        fx, fy = st.features(model, train_images, len(mine), f"{name}: features train {init}", stages)
        # the decontamination's val features are the penultimate layer's: reused when the probe uses only that
        reuse = run.val_feats.pop(init, None) if stages == ("layer4",) else None
        assert run.val_images is not None  # decode_val() ran
        vx, vy = reuse or st.features(model, run.val_images, len(run.val_images), f"{name}: features val {init}", stages)
        del model
        res["seconds"]["features"][init] = round(time.perf_counter() - ts, 3)
        for k in run.settings:
            if restore_probe(run, [init], [k]):
                continue
            S = run.n_seeds("linear_probe", k)
            c1, c5, Cs, secs = np.zeros((S, run.n_val), bool), np.zeros((S, run.n_val), bool), [], 0.0
            for s in range(S):
                idx = probe_sets[(k, s)]
                # C is chosen on one split of all the setting's images; each rank fits on its rows of it
                groups = groups_of(t, idx)  # emoji targets: whole emoji families held out
                _, hold = stratified_holdout(run.train_labels[idx], r["probe_holdout_fraction"], seed0 + s, groups=groups)
                held = np.zeros(len(idx), bool)
                held[hold] = True
                here = np.isin(idx, mine, assume_unique=True)
                pos = np.searchsorted(mine, idx[here])
                probe = fit_probe(
                    fx[pos],
                    fy[pos],
                    list(r["probe_Cs"]),
                    num_classes=t.num_classes,
                    holdout=held[here],
                    max_iter=r["probe_max_iter"],
                    tol=r["probe_tol"],
                    seed=seed0 + s,
                    solver=str(r["probe_solver"]),
                    device=st.device,
                    memory_budget_mb=r["probe_memory_mb"],
                    progress=st.progress,
                    desc=f"{name}: probe {init} {setting_label(k)} seed {s}",
                )
                sc = probe.scores(vx)  # this rank's val block, gathered in order
                c1[s], c5[s] = gather_rows(st.ranks, topk_correct(sc, vy, 1)), gather_rows(st.ranks, topk_correct(sc, vy, 5))
                Cs.append(probe.best_C)
                secs += probe.seconds
                res["probe_grids"].append(
                    {"init": init, "train_per_class": k, "seed": s, "best_C": probe.best_C, "grid": probe.grid}
                )
            run.correct[("linear_probe", init, k)] = {"top1": c1, "top5": c5}
            run.meta[("linear_probe", init, k)] = {
                "train_images": int(len(probe_sets[(k, 0)])),
                "seeds": list(range(S)),
                "best_C": Cs[0],
                "best_C_per_seed": Cs,
                "seconds": secs,
            }
            res["seconds"]["linear_probe"] += secs
            run.finish("linear_probe", init, k)
            record_probe(run, init, k)
            row = find_row(res, "linear_probe", init, k)
            log.info(
                "%s: linear probe %s %s: top-1 %.4f [%.4f, %.4f] over %d seed(s) (C=%s, %.1fs)",
                name,
                init,
                setting_label(k),
                row["top1"],
                *row["top1_ci"],
                S,
                Cs,
                secs,
            )
