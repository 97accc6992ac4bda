"""Resampling weights (natural / sqrt / uniform) and the multi-label training targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.text.resampling import SCHEMES, all_weights, class_counts, class_mass, sample_weights
from pipeline.train.targets import multi_hot, soft_target


def _csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    indices = np.array([c for r in rows for c in r], dtype=np.int32)
    return indptr, indices


def test_sqrt_weights_hand_made_count():
    # class 0 on 4 samples, class 1 on 1 sample; one extra sample carries both.
    rows = [[0], [0], [0], [0], [1], [0, 1]]
    indptr, indices = _csr(rows)
    counts = class_counts(indptr, indices, 2)
    assert counts.tolist() == [5, 2]
    w = sample_weights(indptr, indices, counts, 0.5)
    # by hand: n_c^(-1/2) = 1/sqrt(5) for class 0, 1/sqrt(2) for class 1; the two-class
    # sample takes the mean; then divide by the mean of the six raw weights.
    a, b = 5**-0.5, 2**-0.5
    raw = np.array([a, a, a, a, b, (a + b) / 2])
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-12)
    assert w.dtype == np.float64 and w.shape == (6,)
    assert w.mean() == pytest.approx(1.0)
    # the rarer class's samples weigh more
    assert w[4] > w[0]


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_single_label_class_mass_is_proportional_to_count_power_alpha(scheme):
    rng = np.random.default_rng(0)
    n = np.array([1000, 310, 97, 30, 9, 3, 1])  # Zipf-like counts
    labels = rng.permutation(np.repeat(np.arange(n.size), n))
    indptr, indices = _csr([[int(c)] for c in labels])
    counts = class_counts(indptr, indices, n.size)
    w = sample_weights(indptr, indices, counts, SCHEMES[scheme])
    assert w.mean() == pytest.approx(1.0)  # epoch length unchanged
    m = class_mass(indptr, indices, w, n.size)
    target = n.astype(float) ** SCHEMES[scheme]
    np.testing.assert_allclose(m / m.sum(), target / target.sum(), rtol=1e-10)
    if scheme == "uniform":
        np.testing.assert_allclose(m, m[0])


def test_natural_weights_are_ones_and_all_schemes_present():
    indptr, indices = _csr([[0], [1, 2], [2]])
    ws = all_weights(indptr, indices, class_counts(indptr, indices, 3))
    assert set(ws) == {"natural", "sqrt", "uniform"}
    np.testing.assert_array_equal(ws["natural"], np.ones(3))
    # natural class mass is the class count itself
    np.testing.assert_allclose(class_mass(indptr, indices, ws["natural"], 3), [1, 1, 2])


def test_weights_reject_samples_without_class_and_bad_counts():
    indptr, indices = _csr([[0], [], [1]])
    with pytest.raises(ValueError, match="no class"):
        sample_weights(indptr, indices, np.array([1, 1]), 0.5)
    indptr, indices = _csr([[0], [1]])
    with pytest.raises(ValueError, match="n_c"):
        sample_weights(indptr, indices, np.array([1, 0]), 0.5)
    with pytest.raises(ValueError, match="class ids"):
        class_counts(indptr, np.array([0, 5]), 2)


def test_soft_target_puts_one_over_k_on_each_class():
    t = soft_target([3, 0, 7], 10)
    assert t.dtype == torch.float32 and t.shape == (10,)
    assert float(t.sum()) == pytest.approx(1.0)
    assert torch.allclose(t[[0, 3, 7]], torch.full((3,), 1 / 3))
    assert int((t > 0).sum()) == 3
    # repeats count once; a single label is a one-hot target
    assert torch.equal(soft_target([2, 2], 4), torch.tensor([0.0, 0.0, 1.0, 0.0]))
    # with probability targets, cross-entropy = -sum_c t_c log softmax(z)_c
    z = torch.randn(10)
    ce = torch.nn.functional.cross_entropy(z[None], t[None])
    assert float(ce) == pytest.approx(float(-(t * torch.log_softmax(z, 0)).sum()), rel=1e-5)


def test_multi_hot_and_target_errors():
    assert torch.equal(multi_hot([1, 3], 4), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="at least one"):
        soft_target([], 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        multi_hot([4], 4)
