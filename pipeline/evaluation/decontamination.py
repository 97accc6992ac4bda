"""Decontamination of a target's val set: which scored val images the pretraining data already holds.

Two checks, each giving a lower-bound accuracy (Mahajan et al. 2018) that counts the flagged val
images as wrong:

- :func:`contaminated_paths`: the val images dedup's pHash check found (near) duplicated in the
  pretraining data (dedup's ``eval_contamination.json``, the ``data.eval_sets`` entry whose
  ``root/split`` is the target's val folder);
- :func:`decontaminate`: (unless :func:`feature_check_skip` says why not) the val images whose
  nearest pretraining image in the pretrained trunk's feature space is above a threshold
  calibrated on known copies (:mod:`pipeline.evaluation.nn_decontam`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from torch.utils.data import Subset

from pipeline.evaluation import nn_decontam as nd
from pipeline.evaluation.ranks import gather_rows, rank_block
from pipeline.evaluation.suite_context import SuiteContext
from pipeline.evaluation.targets import Target
from pipeline.io.removal import removed_rows
from pipeline.io.run_folder import read_eval_contamination
from pipeline.io.shards import shard_paths
from pipeline.seeding import item_seed

log = logging.getLogger(__name__)

__all__ = ["feature_check_skip", "contaminated_paths", "decontaminate"]


def feature_check_skip(run_dir, enabled: bool) -> str | None:
    """Why the feature-space check cannot run (logged as a warning), or None when it can.

    It needs ``transfer.nn_decontam=true`` and the pretraining images: finished ingest shards and
    dedup's removals in ``run_dir`` (a run folder holding only dedup/ and pretrain/ has none).
    """
    if not enabled:
        return "transfer.nn_decontam=false"
    try:
        shard_paths(run_dir)
        removed_rows(run_dir)
    except FileNotFoundError as exc:  # e.g. a run folder holding only dedup/ and pretrain/
        reason = f"the pretraining images cannot be read: {exc}"
        log.warning("transfer: no feature-space decontamination: %s", reason)
        return reason
    return None


def _same_folder(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def contaminated_paths(run_dir, eval_sets, val_folder) -> tuple[str | None, set[str] | None]:
    """The ``<class>/<file>`` paths of this target's val images that dedup found in the pretraining data.

    Looks for the ``data.eval_sets`` entry (imagefolder format) whose ``root/split`` is
    ``val_folder`` and reads its ids from ``<run_dir>/dedup/eval_contamination.json``
    (:func:`pipeline.io.run_folder.read_eval_contamination`).

    Returns:
        (eval set name, set of relative paths); (None, None) when dedup did not check this
        val folder (no such eval set, or no contamination file).
    """
    report = read_eval_contamination(run_dir)
    if report is None:
        return None, None
    for es in eval_sets or []:
        fmt = getattr(es.format, "value", es.format)
        if fmt != "imagefolder" or not es.split or not _same_folder(Path(es.root) / es.split, val_folder):
            continue
        if es.name not in report:
            continue
        prefix = es.name + ":"
        return es.name, {i[len(prefix) :] if i.startswith(prefix) else i for i in report[es.name].get("ids", [])}
    return None, None


def decontaminate(st: SuiteContext, t: Target, model, val_feats: np.ndarray, val_idx: np.ndarray, val_rel: list[str]) -> dict:
    """Feature-space decontamination of target ``t``'s scored val images (:mod:`pipeline.evaluation.nn_decontam`).

    Collective: every rank of the job calls it with the same ``val_feats`` (all scored val images, float32 (N, D));
    the bank is searched where it lives (:class:`pipeline.evaluation.nn_bank.BankPart`) and the known copies are
    embedded in rank blocks, so every rank returns the same section.

    Returns:
        the ``contamination.features`` section of the target's results, with ``flagged`` (N,) bool
        and ``similarity`` (N,) float32 under the keys ``_flagged`` / ``_similarity`` (popped by the caller).
    """
    tc, r, ranks = st.tc, t.recipe, st.ranks
    t0 = time.perf_counter()
    bank = st.pretraining_bank(model)
    vx = nd.l2_normalize(val_feats, bank.mean)
    sims, nn_idx = bank.nearest(vx, str(tc.nn_index), int(tc.nn_nprobe), int(st.cfg.seed))
    n = len(vx)
    rng = np.random.default_rng(item_seed("nn-decontam", st.cfg.seed, t.name))
    # known copies of a seeded sample of the scored val images, embedded in rank blocks
    pos = np.sort(rng.choice(n, size=min(int(tc.nn_known_copies), n), replace=False))
    samples = [t.val_set.samples[int(i)] for i in val_idx]
    copies = nd.KnownCopies(samples, t.val_set.loader, pos, st.size, st.cfg.seed)
    block = range(len(copies))[rank_block(len(copies), ranks)]
    mine = np.zeros((0, int(model.num_features)), np.float32)
    if len(block):
        mine = nd.pooled_features(
            lambda b: st.features(model, b, len(block), f"{t.name}: features known copies"),
            Subset(copies, block),
            tc.eval_batch_size,
            st.workers,
        )
    cx = gather_rows(ranks, mine)
    cx = nd.l2_normalize(cx, bank.mean)
    rows = np.array([p for p, _ in copies.items], dtype=np.int64)
    copy_sims = (cx * vx[rows]).sum(axis=1)
    threshold, rule = nd.calibrate(copy_sims, float(tc.nn_copy_quantile), tc.nn_threshold)
    kinds = np.array([k for _, k in copies.items])
    by_kind = {}
    for k in nd.COPY_KINDS:  # each kind alone: its scores, and how many val images its own 1st percentile would flag
        ks = copy_sims[kinds == k]
        by_kind[k] = {
            "n": int(len(ks)),
            "share_above": nd.share_above(ks, threshold),
            **nd.quantiles(ks),
            "val_flagged_at_its_quantile": int((sims >= np.quantile(ks, float(tc.nn_copy_quantile))).sum()) if len(ks) else None,
        }
    # known non-copies: random pretraining images; the same emoji by another vendor where the target says which
    m = bank.total
    non_copies = {}
    if m:
        n_non = int(tc.nn_non_copies)
        vi, bi = rng.integers(0, n, size=n_non), rng.integers(0, m, size=n_non)
        rs = bank.pair_similarities(vx, vi, bi)
        non_copies["random"] = {
            "kind": "random pretraining images",
            "n": n_non,
            "share_above": nd.share_above(rs, threshold),
            **nd.quantiles(rs),
        }
    if r["emoji_index"] and m:
        codes = nd.emoji_hexcodes(r["emoji_index"], [val_rel[i] for i in val_idx])
        pi, pj, with_match = bank.hexcode_pairs(codes)
        if len(pi) > int(tc.nn_non_copies):
            pick = np.sort(rng.choice(len(pi), size=int(tc.nn_non_copies), replace=False))
            pi, pj = pi[pick], pj[pick]
        ss = bank.pair_similarities(vx, pi, pj) if len(pi) else np.zeros(0, np.float32)
        non_copies["same_emoji"] = {
            "kind": "the same emoji drawn by another vendor (pretraining sample of the same hexcode)",
            "n": int(len(pi)),
            "val_images_with_one": int(with_match),
            "share_above": nd.share_above(ss, threshold),
            **nd.quantiles(ss),
        }
    flagged = sims >= threshold
    top = [int(i) for i in np.argsort(-sims)[:10] if nn_idx[i] >= 0]
    top_ids = bank.ids(nn_idx[top])
    matches = [
        {"val": val_rel[int(val_idx[i])], "pretraining": pid, "similarity": round(float(sims[i]), 4)}
        for i, pid in zip(top, top_ids)
    ]
    sec = round(time.perf_counter() - t0, 3)
    log.info(
        "%s: feature decontamination: threshold %.4f (%s); %d of %d val images above it; known copies above: "
        "%.1f%%; non-copies above: %s (%.1fs)",
        t.name,
        threshold,
        rule,
        int(flagged.sum()),
        n,
        100 * float((copy_sims >= threshold).mean()),
        ", ".join(f"{k} {100 * v['share_above']:.1f}%" for k, v in non_copies.items() if v.get("share_above") is not None),
        sec,
    )
    return {
        "checked": True,
        "index": str(tc.nn_index),  # the faiss index of the search (Flat: exact)
        "nprobe": int(tc.nn_nprobe) if "IVF" in str(tc.nn_index) else None,
        "threshold": round(threshold, 6),
        "rule": rule,
        "count": int(flagged.sum()),
        "centered": bank.mean is not None,
        "quantile": float(tc.nn_copy_quantile),
        "pretraining_images": m,
        "known_copies": {
            "val_images": int(len(pos)),
            "n": int(len(copy_sims)),
            "kinds": list(nd.COPY_KINDS),
            "share_above": nd.share_above(copy_sims, threshold),
            **nd.quantiles(copy_sims),
            "by_kind": by_kind,
        },
        "non_copies": non_copies,
        "max_similarity": nd.quantiles(sims),
        "top_matches": matches,
        "seconds": sec,
        "_flagged": flagged,
        "_similarity": sims,
    }
