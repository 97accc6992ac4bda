"""Dedup's decisions: which pretraining samples to remove, and why (numpy over the codes and digests, no I/O).

The samples are rows ``0..N-1`` in shard-key order; "earlier" means a smaller row, and the first is kept.
Reasons, in order of precedence (:data:`pipeline.io.removal.REMOVAL_REASONS`): ``withdrawn`` (listed, never
compared; not a row here), ``duplicate_id`` (:meth:`Decisions.remove_duplicate_ids`), ``eval-contamination``
(:meth:`Decisions.remove_eval_contamination`), ``exact`` (:meth:`Decisions.remove_exact`) and ``near``
(:meth:`Decisions.remove_near`: the greedy of :func:`pipeline.vision.near_index.keep_first` over the distinct codes,
then each sample of a code). Each step sees only the samples the earlier steps kept. No Python object per sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pipeline.vision.near_index import keep_first

__all__ = ["REASONS", "Decisions", "distinct_rows", "eval_report"]

REASONS = ("duplicate_id", "eval-contamination", "exact", "near")  # reason codes 1..4 of Decisions.reason


def distinct_rows(digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group rows by equal byte strings.

    Args:
        digests: uint8 (N, k).

    Returns:
        ``(first, inverse)``: int64 (U,), the first row of each distinct value, in row order; int64 (N,), the
        group (0..U-1, numbered by first row) of each row.
    """
    n, k = digests.shape
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if k % 8:
        digests = np.concatenate([digests, np.zeros((n, 8 - k % 8), np.uint8)], axis=1)
    words = np.ascontiguousarray(digests).view(">u8")  # (n, words): byte order kept, so any grouping is exact
    order = np.lexsort(words.T[::-1])  # stable: within a group, rows stay in order
    sw = words[order]
    head = np.ones(n, bool)
    head[1:] = (sw[1:] != sw[:-1]).any(axis=1)
    group_sorted = np.cumsum(head) - 1  # group of each sorted row, numbered in value order
    first_by_value = order[head]  # the first row of each group (stable sort)
    rank = np.empty(len(first_by_value), np.int64)  # groups renumbered by their first row
    rank[np.argsort(first_by_value, kind="stable")] = np.arange(len(first_by_value))
    inverse = np.empty(n, np.int64)
    inverse[order] = rank[group_sorted]
    return np.sort(first_by_value).astype(np.int64), inverse


@dataclass
class Decisions:
    """Per sample (row), whether it was removed, why, and of what it is a duplicate.

    Attributes:
        n: samples compared (withdrawn ones are not rows).
        reason: int8 (n,), 0 kept, else 1 + the index in :data:`REASONS`.
        duplicate_of: int64 (n,), the earlier row kept in its place (-1 if none), or for eval contamination the
            eval image (index into the eval list).
        distance: int64 (n,), Hamming bits to it (0 for duplicate ids: their rows are written with ``null``).
        contaminated: int64, the eval images with any pretraining copy (sorted, unique).
    """

    n: int
    reason: np.ndarray = field(init=False)
    duplicate_of: np.ndarray = field(init=False)
    distance: np.ndarray = field(init=False)
    contaminated: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        self.reason = np.zeros(self.n, np.int8)
        self.duplicate_of = np.full(self.n, -1, np.int64)
        self.distance = np.zeros(self.n, np.int64)

    @property
    def alive(self) -> np.ndarray:
        """bool (n,): not removed."""
        return self.reason == 0

    def _remove(self, rows: np.ndarray, reason: str, dup_of: np.ndarray, dist: np.ndarray | int) -> None:
        self.reason[rows] = REASONS.index(reason) + 1
        self.duplicate_of[rows] = dup_of
        self.distance[rows] = dist

    def _first_alive(self, digests: np.ndarray, reason: str) -> None:
        rows = np.flatnonzero(self.alive)
        first, inv = distinct_rows(digests[rows])
        later = rows[first[inv]] != rows
        self._remove(rows[later], reason, rows[first[inv]][later], 0)

    def remove_duplicate_ids(self, idh: np.ndarray) -> None:
        """The same id in two units (e.g. one key in two input tars): keep the first. ``idh``: uint8 (n, 16)."""
        self._first_alive(idh, "duplicate_id")

    def remove_eval_contamination(self, rows: np.ndarray, q: np.ndarray, dist: np.ndarray) -> None:
        """Remove every surviving row with a pair ``(rows, q, dist)`` (int64, from
        :func:`pipeline.vision.shard_dedup.scan_shard`: within the eval radius or the same pixels), as a duplicate of
        its closest eval image (ties: the first); every eval image with a pair counts as contaminated."""
        self.contaminated = np.unique(q)
        if len(rows) == 0:
            return
        order = np.lexsort((q, dist, rows))
        r, qq, d = rows[order], q[order], dist[order]
        head = np.ones(len(r), bool)
        head[1:] = r[1:] != r[:-1]
        r, qq, d = r[head], qq[head], d[head]
        live = self.alive[r]
        self._remove(r[live], "eval-contamination", qq[live], d[live])

    def remove_exact(self, sha: np.ndarray) -> None:
        """Exact duplicates: the same canonical pixels (``sha``: uint8 (n, 16)) as an earlier surviving sample."""
        self._first_alive(sha, "exact")

    def remove_near(
        self, codes: np.ndarray, find_pairs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> None:
        """Near duplicates among the survivors: within the radius of an earlier kept sample, as a duplicate of the
        closest one (ties: the earliest), the greedy of :func:`pipeline.vision.near_index.keep_first` over samples.

        Run over the distinct codes: samples with one code are all within the radius of each other, so of each
        code at most its first sample is kept. The greedy over the distinct codes in the order of their first
        samples decides the first samples; a later sample of a kept code is a duplicate of the code's first
        (distance 0); a later sample of a removed code points to the closest kept code whose first sample comes
        before it. The result equals the greedy over every sample (tested).

        Args:
            codes: uint8 (n, nbytes), every row's code.
            find_pairs: distinct codes uint8 (U, nbytes) -> ``(later, earlier, dist)`` int64, every pair within
                the radius once (:func:`pipeline.vision.shard_dedup.near_pairs` over partitions).
        """
        rows = np.flatnonzero(self.alive)
        first, inv = distinct_rows(codes[rows])
        qi, di, dist = find_pairs(codes[rows[first]])
        keep, dup_c, dist_c = keep_first(len(first), qi, di, dist)
        is_first = np.zeros(len(rows), bool)
        is_first[first] = True
        # first samples of removed codes
        gone = np.flatnonzero(~keep)
        self._remove(rows[first[gone]], "near", rows[first[dup_c[gone]]], dist_c[gone])
        # later samples of kept codes
        later = ~is_first & keep[inv]
        self._remove(rows[later], "near", rows[first[inv[later]]], 0)
        # later samples of removed codes: the closest kept neighbour code whose first sample is earlier
        todo = np.flatnonzero(~is_first & ~keep[inv])
        if len(todo) == 0:
            return
        codes_todo = np.zeros(len(first), bool)
        codes_todo[inv[todo]] = True
        fwd = codes_todo[qi] & keep[di]  # (code, kept neighbour) from both directions of each pair, selected first
        bwd = codes_todo[di] & keep[qi]
        c = np.concatenate([qi[fwd], di[bwd]])
        x = np.concatenate([di[fwd], qi[bwd]])
        d = np.concatenate([dist[fwd], dist[bwd]])
        del fwd, bwd
        order = np.lexsort((x, d, c))  # per code: by distance, then earliest (code ids are in first-sample order)
        c, x, d = c[order], x[order], d[order]
        starts, ends = np.searchsorted(c, inv[todo]), np.searchsorted(c, inv[todo], side="right")
        dup = np.empty(len(todo), np.int64)
        dd = np.empty(len(todo), np.int64)
        for t, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
            for k in range(s, e):
                if first[x[k]] < todo[t]:  # the kept code's first sample comes before this one
                    dup[t], dd[t] = first[x[k]], d[k]
                    break
            else:  # unreachable: the code's own first sample had a kept earlier neighbour
                raise AssertionError(f"no kept neighbour for sample {rows[todo[t]]}")
        self._remove(rows[todo], "near", rows[dup], dd)

    def counts(self) -> dict:
        """Removed samples per reason (``eval-contamination`` as ``eval_contamination``)."""
        per = np.bincount(self.reason, minlength=len(REASONS) + 1)
        return {r.replace("-", "_"): int(per[i + 1]) for i, r in enumerate(REASONS)}


def eval_report(ev_ids: list[str], sources: list[str], contaminated: np.ndarray) -> dict:
    """The ``eval_contamination.json`` content: eval set -> ``images``, ``contaminated`` (eval images with a
    pretraining copy), ``ids`` (those, sorted), ``contaminated_fraction``.

    Args:
        ev_ids: the eval images' ids (``set:id``); ``sources``: the eval set names (each gets an entry);
        contaminated: int64 indices into ``ev_ids``.
    """
    report: dict = {s: {"images": 0, "contaminated": 0, "ids": []} for s in sources}
    for eid in ev_ids:
        report.setdefault(eid.split(":", 1)[0], {"images": 0, "contaminated": 0, "ids": []})["images"] += 1
    for eid in sorted({ev_ids[q] for q in contaminated.tolist()}):
        rep = report[eid.split(":", 1)[0]]
        rep["contaminated"] += 1
        rep["ids"].append(eid)
    for rep in report.values():
        rep["contaminated_fraction"] = round(rep["contaminated"] / rep["images"], 6) if rep["images"] else 0.0
    return report
