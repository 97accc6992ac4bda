"""Class-frequency resampling weights (the training targets: :mod:`pipeline.train.targets`).

Resampling (Mahajan et al. 2018, section 2.1, "Resampling", and the comparison of
natural, uniform and square-root sampling in its experiments): hashtag frequencies are Zipfian,
so sampling images as they come (``natural``) shows the head classes far more often than
the tail. With ``n_c`` the number of (kept) samples labelled with class ``c``, a scheme
with exponent ``alpha`` aims at a **target sampling mass of class c proportional to
n_c ** alpha**:

===========  =====  ==========================================================
scheme       alpha  target mass of class c
===========  =====  ==========================================================
natural      1      n_c (no resampling)
sqrt         1/2    sqrt(n_c) (the paper's best, together with uniform)
uniform      0      1 (every class equally often)
===========  =====  ==========================================================

A sample ``i`` with classes ``C_i`` gets the replication weight

    w_i = Z * mean_{c in C_i} n_c ** (alpha - 1)

(the mean over its classes, so a multi-label sample counts as the average of its classes'
single-label weights; the paper does not say how multi-label images combine, this is our
choice), with ``Z`` chosen so the mean weight over the kept samples is 1:
an epoch still draws as many samples as there are kept samples. For single-label samples
the expected class mass is exactly ``sum_{i: C_i = {c}} w_i = Z * n_c * n_c**(alpha-1) =
Z * n_c**alpha``; multi-label samples make it approximate: where head classes co-occur
with tail ones (emoji carry ~6 tags each) the head keeps more mass than the target, which
``class_frequency.png`` shows next to the single-label ideal. The training loader draws
samples with probability ``w_i / sum(w)`` (e.g. ``torch.utils.data.WeightedRandomSampler``
with ``num_samples=N``) or replicates sample ``i`` about ``w_i`` times.
"""

from __future__ import annotations

import numpy as np

SCHEMES: dict[str, float] = {"natural": 1.0, "sqrt": 0.5, "uniform": 0.0}


def _check_csr(indptr: np.ndarray, indices: np.ndarray, num_classes: int) -> None:
    if indptr.ndim != 1 or indptr.size < 1 or indptr[0] != 0 or indptr[-1] != indices.size:
        raise ValueError(f"bad CSR indptr: must start at 0 and end at len(indices)={indices.size}")
    if np.any(np.diff(indptr) < 0):
        raise ValueError("bad CSR indptr: must be non-decreasing")
    if indices.size and (indices.min() < 0 or indices.max() >= num_classes):
        raise ValueError(f"class ids must be in [0, {num_classes}), got [{indices.min()}, {indices.max()}]")


def class_counts(indptr: np.ndarray, indices: np.ndarray, num_classes: int) -> np.ndarray:
    """``n_c``: how many samples carry each class.

    Args:
        indptr: int (N+1,), CSR row pointers; sample ``i``'s classes are ``indices[indptr[i]:indptr[i+1]]``.
        indices: int (nnz,), class ids in ``[0, num_classes)``, distinct within a sample.
        num_classes: C.

    Returns:
        int64 (C,).

    Raises:
        ValueError: malformed CSR arrays.
    """
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    _check_csr(indptr, indices, num_classes)
    return np.bincount(indices, minlength=num_classes).astype(np.int64)


def sample_weights(indptr: np.ndarray, indices: np.ndarray, counts: np.ndarray, alpha: float) -> np.ndarray:
    """Per-sample replication weights ``w_i = Z * mean_{c in C_i} n_c ** (alpha - 1)``, mean 1.

    Args:
        indptr, indices: CSR labels as in :func:`class_counts`; every sample needs >= 1 class.
        counts: int (C,), ``n_c`` (:func:`class_counts` of the same labels).
        alpha: exponent of the target class mass ``n_c ** alpha`` (1 natural, 0.5 sqrt, 0 uniform).

    Returns:
        float64 (N,), positive, mean exactly 1 (up to rounding); all ones for alpha = 1.

    Raises:
        ValueError: a sample without classes, a used class with ``n_c = 0``, malformed CSR.
    """
    indptr, indices = np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.float64)
    _check_csr(indptr, indices, counts.size)
    k = np.diff(indptr)
    n = k.size
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    if np.any(k == 0):
        raise ValueError(f"{int(np.sum(k == 0))} samples have no class; drop them before weighting")
    if np.any(counts[indices] <= 0):
        raise ValueError("a class used by some sample has count n_c <= 0; counts must come from the same labels")
    w = raw_sample_weights(indptr, indices, counts, alpha)
    return w / w.mean()


def raw_sample_weights(indptr: np.ndarray, indices: np.ndarray, counts: np.ndarray, alpha: float) -> np.ndarray:
    """float64 (N,): ``mean_{c in C_i} n_c ** (alpha - 1)``, the weights of :func:`sample_weights` before they are
    scaled to mean 1 (the vocab stage scales each shard's by the corpus's mean). Every sample needs >= 1 class."""
    indptr, indices = np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    k = np.diff(indptr)
    per_label = np.asarray(counts, dtype=np.float64)[indices] ** (alpha - 1.0)
    rows = np.repeat(np.arange(k.size), k)
    return np.bincount(rows, weights=per_label, minlength=k.size) / k


def all_weights(indptr: np.ndarray, indices: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`sample_weights` for every scheme of :data:`SCHEMES`: ``{"natural": (N,), "sqrt": ..., "uniform": ...}``."""
    return {name: sample_weights(indptr, indices, counts, alpha) for name, alpha in SCHEMES.items()}


def class_mass(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray, num_classes: int) -> np.ndarray:
    """Expected number of times each class is seen per epoch: ``m_c = sum_{i: c in C_i} w_i``.

    Returns:
        float64 (C,); with natural weights this equals ``n_c``.
    """
    indptr, indices = np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    _check_csr(indptr, indices, num_classes)
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    return np.bincount(indices, weights=np.asarray(weights, dtype=np.float64)[rows], minlength=num_classes)
