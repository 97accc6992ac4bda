"""Dedup's decisions: which pretraining samples to remove, and why (pure functions of the codes, no I/O).

The samples are in shard-key order; "earlier" means a smaller key, and the first is kept.
Reasons, in order of precedence (:data:`pipeline.io.removal.REMOVAL_REASONS`): ``withdrawn``
(listed, never compared), ``duplicate_id`` (:meth:`Candidates.remove_duplicate_ids`),
``eval-contamination`` (:func:`remove_eval_contamination`), ``exact``
(:meth:`Candidates.remove_exact`) and ``near`` (:func:`remove_near`, the sub-quadratic
search of :mod:`pipeline.vision.near_index`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.vision.near_index import build_index, keep_first, range_pairs

__all__ = ["Candidates", "candidates", "remove_eval_contamination", "remove_near", "removal_counts"]


@dataclass
class Candidates:
    """The pretraining samples dedup compares, and its decisions so far.

    Attributes:
        keys, ids, shas: per sample (key order), its shard key, ``source:id`` and canonical-pixel SHA-256.
        codes: uint8 (N, hash_size**2 / 8), the stored pHashes.
        alive: bool (N,), not removed yet.
        removed: the removal rows ``{key, id, reason, duplicate_of, distance}`` (withdrawn samples first).
    """

    keys: list[str]
    ids: list[str]
    shas: list[str]
    codes: np.ndarray
    alive: np.ndarray
    removed: list[dict]

    def remove(self, r: int, reason: str, duplicate_of: str | None, distance: int | None) -> None:
        """Mark sample ``r`` removed for ``reason`` (a duplicate of ``duplicate_of`` at Hamming ``distance``)."""
        self.alive[r] = False
        self.removed.append(
            {"key": self.keys[r], "id": self.ids[r], "reason": reason, "duplicate_of": duplicate_of, "distance": distance}
        )

    def remove_duplicate_ids(self) -> None:
        """The same id in two units (e.g. one key in two input tars): keep the first by key."""
        first_with_id: dict[str, int] = {}
        for r in range(len(self.keys)):
            f = first_with_id.setdefault(self.ids[r], r)
            if f != r:
                self.remove(r, "duplicate_id", self.keys[f], None)

    def remove_exact(self) -> None:
        """Exact duplicates: same canonical pixels as an earlier surviving sample."""
        first_of: dict[str, int] = {}
        for r in range(len(self.keys)):
            if not self.alive[r]:
                continue
            f = first_of.setdefault(self.shas[r], r)
            if f != r:
                self.remove(r, "exact", self.keys[f], 0)


def candidates(hashed: list[dict], hash_size: int) -> Candidates:
    """:class:`Candidates` from the per-shard results of :func:`pipeline.vision.dedup_codes.hash_shard` (key order),
    their withdrawn samples already removed."""
    nbytes = hash_size**2 // 8
    keys = [k for h in hashed for k in h["keys"]]
    codes = np.concatenate([h["codes"] for h in hashed]) if hashed else np.zeros((0, nbytes), np.uint8)
    removed = [
        {"key": k, "id": i, "reason": "withdrawn", "duplicate_of": None, "distance": None}
        for h in hashed
        for k, i in h["withdrawn"]
    ]
    return Candidates(
        keys=keys,
        ids=[i for h in hashed for i in h["ids"]],
        shas=[s for h in hashed for s in h["sha256"]],
        codes=codes,
        alive=np.ones(len(keys), dtype=bool),
        removed=removed,
    )


def remove_eval_contamination(cand: Candidates, ev: list[tuple[str, str, np.ndarray]], sources: list[str], radius: int) -> dict:
    """Remove every surviving pretraining sample within ``radius`` of an eval image, or with its pixels.

    Args:
        cand: the candidates (updated in place).
        ev: ``(eval id, pixel sha256, pHash)`` of the eval images (:func:`pipeline.vision.dedup_codes.hash_eval_units`).
        sources: the eval set names (each gets a report entry, images or not).
        radius: ``dedup.eval_radius``, Hamming bits.

    Returns:
        The ``eval_contamination.json`` content: eval set -> ``images``, ``contaminated`` (eval images with
        a pretraining copy), ``ids`` (those, sorted), ``contaminated_fraction``.
    """
    nbytes = cand.codes.shape[1]
    ev_ids = [e[0] for e in ev]
    ev_codes = np.stack([e[2] for e in ev]) if ev else np.zeros((0, nbytes), np.uint8)
    qi, di, dist = range_pairs(build_index(cand.codes, radius), ev_codes, radius)
    sha_to_rows: dict[str, list[int]] = {}
    for r, s in enumerate(cand.shas):
        sha_to_rows.setdefault(s, []).append(r)
    extra = [(q, r) for q, e in enumerate(ev) for r in sha_to_rows.get(e[1], [])]
    if extra:
        qi = np.concatenate([qi, [q for q, _ in extra]]).astype(np.int64)
        di = np.concatenate([di, [r for _, r in extra]]).astype(np.int64)
        dist = np.concatenate([dist, np.zeros(len(extra), np.int64)])
    best: dict[int, tuple[int, int]] = {}
    for q, r, d in zip(qi.tolist(), di.tolist(), dist.tolist()):
        if r not in best or (d, q) < best[r]:
            best[r] = (d, q)
    for r in sorted(best):
        if not cand.alive[r]:
            continue
        d, q = best[r]
        cand.remove(r, "eval-contamination", ev_ids[q], d)
    contaminated = sorted({ev_ids[q] for q in set(qi.tolist())})
    report: dict = {}
    for s in sources:
        report.setdefault(s, {"images": 0, "contaminated": 0, "ids": []})
    for eid in ev_ids:
        report[eid.split(":", 1)[0]]["images"] += 1
    for eid in contaminated:
        rep = report[eid.split(":", 1)[0]]
        rep["contaminated"] += 1
        rep["ids"].append(eid)
    for rep in report.values():
        rep["contaminated_fraction"] = round(rep["contaminated"] / rep["images"], 6) if rep["images"] else 0.0
    return report


def remove_near(cand: Candidates, radius: int, near: bool):
    """Near duplicates among the survivors: within ``radius`` of an earlier kept sample (if ``near``).

    Returns:
        ``(index, rows)``: the faiss binary index over the survivors' codes before the near search
        (what the stage saves) and int64 ``rows`` (their positions in ``cand``).
    """
    rows = np.flatnonzero(cand.alive)
    index = build_index(cand.codes[rows], radius)
    if near and len(rows):
        qi, di, dist = range_pairs(index, cand.codes[rows], radius)
        keep, dup_of, dup_dist = keep_first(len(rows), qi, di, dist)
        for j in np.flatnonzero(~keep):
            r, f = rows[j], rows[dup_of[j]]
            cand.remove(r, "near", cand.keys[f], int(dup_dist[j]))
    return index, rows


def removal_counts(cand: Candidates, eval_report: dict) -> dict:
    """The manifest's decision counts: samples, removed, kept, per reason, eval images and contaminated."""
    by_reason = {
        r: sum(1 for x in cand.removed if x["reason"] == r)
        for r in ("withdrawn", "duplicate_id", "eval-contamination", "exact", "near")
    }
    return {
        "samples": len(cand.keys) + by_reason["withdrawn"],
        "removed": len(cand.removed),
        "kept": int(cand.alive.sum()),
        **{k.replace("-", "_"): v for k, v in by_reason.items()},
        "eval_images": sum(r["images"] for r in eval_report.values()),
        "eval_contaminated": sum(r["contaminated"] for r in eval_report.values()),
    }
