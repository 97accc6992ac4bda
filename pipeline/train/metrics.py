"""Held-out hashtag prediction metrics over sparse targets, as in Mahajan et al. 2018 (sec. 3.1).

Targets are CSR (``indptr`` int64 (N+1,), ``indices`` int (nnz,): sample ``i``'s classes are
``indices[indptr[i]:indptr[i+1]]``), never a dense (N, C) matrix: at 17k classes a dense multi-hot of 10^5
held-out samples is 13.6 GB in float64. Scores are the model's (N, C) outputs.

* precision@1: the share of samples whose top-scoring class is one of their labels.
* mAP: mean over classes (with at least one positive) of the average precision of the class scores,
  computed as scikit-learn's ``average_precision_score`` (macro) computes it, ties included (one threshold
  per distinct score; the test compares the two).
* The prior baseline ("chance" for a model that learnt nothing from pixels): every sample gets the training
  class frequencies as scores; in closed form: precision@1 is the share of samples labelled with the most
  frequent class, and each class's AP is its prevalence (constant scores: one threshold).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["average_precision", "labels_to_csr", "mean_average_precision", "precision_at_1", "prior_baseline"]


def labels_to_csr(labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr int64 (B+1,), indices int64 (nnz,))`` of a batch's labels, int64 (B, K) padded with -1."""
    lab = labels.cpu().numpy()
    valid = lab >= 0
    indptr = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int64)
    return indptr, lab[valid].astype(np.int64)


def _rows(indptr: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


def precision_at_1(scores: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> float:
    """scores float (N, C), CSR targets: share of rows whose argmax (first, on ties) is one of their classes."""
    n = len(scores)
    if n == 0:
        return float("nan")
    top = np.asarray(scores).argmax(axis=1)
    rows = _rows(indptr)
    hit = np.zeros(n, dtype=bool)
    hit[rows[indices == top[rows]]] = True
    return float(hit.mean())


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of one class: ``scores`` float (N,), ``positive`` bool (N,) with at least one True.

    scikit-learn's definition: the sum over distinct score thresholds, from the highest, of
    (recall step) x (precision at that threshold), tied scores forming one threshold.
    """
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    s, y = np.asarray(scores)[order], np.asarray(positive)[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last position of each run of equal scores
    tps = np.cumsum(y)[last].astype(np.float64)
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> float:
    """Macro mAP over the classes with at least one positive: :func:`average_precision` per class, averaged."""
    scores = np.asarray(scores)
    rows = _rows(indptr)
    by_class = np.argsort(indices, kind="mergesort")
    cls, starts = np.unique(indices[by_class], return_index=True)
    if len(cls) == 0:
        return float("nan")
    ends = np.r_[starts[1:], len(by_class)]
    aps = []
    positive = np.zeros(len(scores), dtype=bool)
    for c, a, b in zip(cls.tolist(), starts.tolist(), ends.tolist()):
        members = rows[by_class[a:b]]
        positive[members] = True
        aps.append(average_precision(scores[:, c], positive))
        positive[members] = False
    return float(np.mean(aps))


def prior_baseline(class_freq: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> dict:
    """precision@1 and mAP when every sample is scored with the class frequencies (C,) (closed form, see above)."""
    n = len(indptr) - 1
    if n == 0:
        return {"precision_at_1": float("nan"), "mAP": float("nan")}
    top = int(np.argmax(class_freq))
    rows = _rows(indptr)
    p1 = len(np.unique(rows[indices == top])) / n
    per_class = np.bincount(np.unique(np.stack([rows, indices]), axis=1)[1], minlength=len(class_freq))
    prevalence = per_class[per_class > 0] / n
    return {"precision_at_1": float(p1), "mAP": float(np.mean(prevalence)) if len(prevalence) else float("nan")}
