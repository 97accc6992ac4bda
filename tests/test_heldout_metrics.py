"""Held-out metrics over CSR targets (pipeline.train.metrics) against scikit-learn on dense multi-hot targets,
the computation they replace: equal, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from pipeline.train.metrics import labels_to_csr, mean_average_precision, precision_at_1, prior_baseline


def _case(seed, n=300, c=40, ties=False):
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 4, n)
    indices = np.concatenate([rng.choice(c - 5, size=m, replace=False) for m in k])  # the last 5 classes: no positive
    indptr = np.concatenate([[0], np.cumsum(k)])
    scores = rng.normal(size=(n, c)).astype(np.float32)
    if ties:
        scores = np.round(scores, 1)  # many tied scores inside each class
    dense = np.zeros((n, c))
    for i in range(n):
        dense[i, indices[indptr[i] : indptr[i + 1]]] = 1
    return scores, indptr, indices, dense


@pytest.mark.parametrize("ties", [False, True])
def test_sparse_metrics_equal_sklearn_on_dense_targets(ties):
    for seed in range(5):
        scores, indptr, indices, dense = _case(seed, ties=ties)
        cols = np.flatnonzero(dense.sum(axis=0) > 0)
        ref_map = average_precision_score(dense[:, cols], scores[:, cols], average="macro")
        assert mean_average_precision(scores, indptr, indices) == pytest.approx(ref_map, abs=1e-12)
        top = scores.argmax(axis=1)
        assert precision_at_1(scores, indptr, indices) == dense[np.arange(len(top)), top].mean()


def test_prior_baseline_closed_form_equals_constant_scores():
    scores, indptr, indices, dense = _case(7)
    freq = np.bincount(indices, minlength=dense.shape[1]) / len(indices)
    const = np.tile(freq, (len(dense), 1))
    cols = np.flatnonzero(dense.sum(axis=0) > 0)
    got = prior_baseline(freq, indptr, indices)
    assert got["mAP"] == pytest.approx(average_precision_score(dense[:, cols], const[:, cols], average="macro"), abs=1e-12)
    assert got["precision_at_1"] == dense[:, int(np.argmax(freq))].mean()


def test_batch_labels_to_csr_drops_padding():
    indptr, indices = labels_to_csr(torch.tensor([[3, 1, -1], [0, -1, -1], [2, 4, 5]]))
    assert indptr.tolist() == [0, 2, 3, 6] and indices.tolist() == [3, 1, 0, 2, 4, 5]
