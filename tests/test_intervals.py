"""Tests of pipeline.evaluation.intervals: bootstrap, paired, seed and combined intervals against known cases.

The bootstraps are ``scipy.stats.bootstrap``; :func:`test_scipy_bootstrap_draws_the_hand_written_resamples` pins
that they resample exactly like the module's earlier hand-written percentile bootstrap (same seed, same intervals).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.intervals import (
    bootstrap_ci,
    bootstrap_means,
    clopper_pearson_ci,
    paired_bootstrap_diff,
    seed_and_val_ci,
    seed_spread_ci,
    wilson_ci,
)


def _exactly(n: int, k: int, seed: int = 0) -> np.ndarray:
    """A shuffled bool vector of length n with exactly k True."""
    c = np.zeros(n, dtype=bool)
    c[:k] = True
    np.random.default_rng(seed).shuffle(c)
    return c


def test_binomial_closed_forms_known_values():
    # Clopper-Pearson with k = 0 has the closed form 1 - (alpha/2)^(1/n).
    assert clopper_pearson_ci(0, 10) == (0.0, 0.0, pytest.approx(1 - 0.025**0.1))
    assert clopper_pearson_ci(10, 10).lo == pytest.approx(0.025**0.1)
    # Wilson at p = 0.7, n = 1000 (z = 1.959964): [0.67094, 0.72747]
    w = wilson_ci(700, 1000)
    assert w.mean == 0.7 and w.lo == pytest.approx(0.670876, abs=1e-5) and w.hi == pytest.approx(0.727593, abs=1e-5)
    cp = clopper_pearson_ci(700, 1000)
    assert cp.lo < w.lo < w.hi < cp.hi  # the exact interval is the more conservative
    with pytest.raises(ValueError):
        wilson_ci(5, 3)


def test_bootstrap_matches_exact_binomial_interval():
    """N = 1000, p = 0.7: the percentile bootstrap reproduces the binomial intervals within 0.5 points."""
    correct = _exactly(1000, 700)
    boot = bootstrap_ci(correct, n_boot=2000, seed=0)
    cp = clopper_pearson_ci(700, 1000)
    wil = wilson_ci(700, 1000)
    assert boot.mean == 0.7
    for ref in (cp, wil):
        assert abs(boot.lo - ref.lo) < 0.005 and abs(boot.hi - ref.hi) < 0.005, (boot, ref)
    assert (boot.hi - boot.lo) == pytest.approx(cp.hi - cp.lo, rel=0.1)


def test_bootstrap_coverage_is_nominal():
    """Over 300 simulated val sets of 200 images with p = 0.7, the 95% interval covers p 92-98% of the time."""
    rng = np.random.default_rng(123)
    covered = 0
    reps = 300
    for r in range(reps):
        ci = bootstrap_ci(rng.random(200) < 0.7, n_boot=1000, seed=r)
        covered += ci.lo <= 0.7 <= ci.hi
    assert 0.92 <= covered / reps <= 0.98, covered / reps


def test_bootstrap_deterministic_given_seed_and_shapes():
    c = _exactly(500, 300)
    assert bootstrap_ci(c, seed=3) == bootstrap_ci(c, seed=3)
    assert bootstrap_ci(c, seed=3) != bootstrap_ci(c, seed=4)
    assert bootstrap_ci(c.astype(np.int64), seed=3) == bootstrap_ci(c, seed=3)
    m = bootstrap_means(np.stack([c, ~c], axis=1), n_boot=7)
    assert m.shape == (7, 2) and np.allclose(m.sum(axis=1), 1.0)  # same indices for both columns
    assert bootstrap_ci(np.ones(50, bool)) == (1.0, 1.0, 1.0)
    wide, narrow = bootstrap_ci(c, level=0.99), bootstrap_ci(c, level=0.8)
    assert wide.lo < narrow.lo < narrow.hi < wide.hi
    for bad in (np.zeros(0), np.zeros((3, 4))):
        with pytest.raises(ValueError):
            bootstrap_ci(bad)
    with pytest.raises(ValueError):
        bootstrap_ci(c, level=1.5)


def _hand_percentile_bootstrap(columns: list[np.ndarray], stat, n_boot: int, seed: int, level: float = 0.95):
    """The earlier hand-written percentile bootstrap: ``rng.integers(0, N, (n_boot, N))``, the same rows for every column."""
    n = columns[0].shape[0]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boot = stat(*(c.astype(np.float64)[idx].mean(axis=1) for c in columns))
    return np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]), boot


def test_scipy_bootstrap_draws_the_hand_written_resamples():
    """Same seed, same resampled indices, same percentile bounds as a hand-written bootstrap (to rounding)."""
    rng = np.random.default_rng(11)
    for n, p in ((400, 0.1), (1000, 0.7)):
        u = rng.random(n)
        a, b = u < p, (u + 0.1 * rng.standard_normal(n)) < p + 0.05  # correlated pair
        for seed in (0, 5):
            (lo, hi), boot = _hand_percentile_bootstrap([a], lambda m: m, 1000, seed)
            ci = bootstrap_ci(a, n_boot=1000, seed=seed)
            assert ci.lo == pytest.approx(lo, abs=1e-12) and ci.hi == pytest.approx(hi, abs=1e-12)
            assert np.allclose(bootstrap_means(a, 1000, seed), boot, atol=1e-12, rtol=0)
            (lo, hi), _ = _hand_percentile_bootstrap([a, b], lambda ma, mb: mb - ma, 1000, seed)
            d = paired_bootstrap_diff(a, b, n_boot=1000, seed=seed)
            assert d.lo == pytest.approx(lo, abs=1e-12) and d.hi == pytest.approx(hi, abs=1e-12)


def test_same_seed_same_interval_for_every_bootstrap():
    rng = np.random.default_rng(3)
    a, b = rng.random(600) < 0.4, rng.random(600) < 0.5
    c = rng.random((3, 600)) < 0.45
    for f, args in ((bootstrap_ci, (a,)), (paired_bootstrap_diff, (a, b)), (seed_and_val_ci, (c,))):
        first, again, other = f(*args, n_boot=500, seed=9), f(*args, n_boot=500, seed=9), f(*args, n_boot=500, seed=10)
        assert first == again, f.__name__
        assert first != other and first[0] == other[0], f.__name__  # the estimate is not resampled; the bounds are
    assert np.array_equal(bootstrap_means(a, 50, seed=2), bootstrap_means(a, 50, seed=2))


def test_paired_interval_narrower_than_unpaired_when_correlated():
    """Correlated models (shared image difficulty): the paired interval is much narrower than the unpaired one
    (a and b resampled independently), about sqrt(1 - rho) times; for independent models both are alike."""
    rng = np.random.default_rng(21)
    n = 1000
    u = rng.random(n)
    a = (u + 0.05 * rng.standard_normal(n)) < 0.6
    b = (u + 0.05 * rng.standard_normal(n)) < 0.63
    rho = np.corrcoef(a, b)[0, 1]
    assert rho > 0.8

    def unpaired_width(x, y):
        diffs = bootstrap_means(y, 2000, seed=1) - bootstrap_means(x, 2000, seed=2)
        lo, hi = np.quantile(diffs, [0.025, 0.975])
        return hi - lo

    paired = paired_bootstrap_diff(a, b, n_boot=2000)
    assert paired.hi - paired.lo < 0.6 * unpaired_width(a, b)
    assert (paired.hi - paired.lo) == pytest.approx(unpaired_width(a, b) * math.sqrt(1 - rho), rel=0.25)
    ia, ib = rng.random(n) < 0.6, rng.random(n) < 0.63  # independent: pairing changes little
    ind = paired_bootstrap_diff(ia, ib, n_boot=2000)
    assert (ind.hi - ind.lo) == pytest.approx(unpaired_width(ia, ib), rel=0.15)


@pytest.mark.slow
def test_paired_diff_coverage_is_nominal():
    """300 simulated val sets of 300 images, two correlated models with a true gain of 4 points: the 95% paired
    interval covers it 92-98% of the time."""
    rng = np.random.default_rng(99)
    reps, covered = 300, 0
    for r in range(reps):
        u = rng.random(300)  # image difficulty, shared by both models
        a = u < 0.50
        b = (u + 0.05 * rng.standard_normal(300)) < 0.54  # P(b) = 0.54 exactly (0.54 is 9 sd from 0 and 1)
        ci = paired_bootstrap_diff(a, b, n_boot=1000, seed=r)
        covered += ci.lo <= 0.04 <= ci.hi
    assert 0.92 <= covered / reps <= 0.98, covered / reps


def test_paired_diff_excludes_zero_when_b_fixes_5_percent():
    a = _exactly(1000, 700)
    b = a.copy()
    b[np.flatnonzero(~a)[:50]] = True  # 5% of the images: wrong under a, right under b
    d = paired_bootstrap_diff(a, b)
    assert d.mean == pytest.approx(0.05)
    assert 0 < d.lo < 0.05 < d.hi
    assert paired_bootstrap_diff(b, a).hi < 0  # and the reverse is reliably worse


def test_pairing_resolves_what_separate_intervals_cannot():
    """A 2-point gain on 2% disagreeing images: separate intervals overlap, the paired one excludes 0."""
    a = _exactly(1000, 700)
    b = a.copy()
    b[np.flatnonzero(~a)[:20]] = True
    ca, cb = bootstrap_ci(a), bootstrap_ci(b)
    assert ca.hi > cb.lo  # the two accuracies' intervals overlap
    d = paired_bootstrap_diff(a, b)
    assert d.lo > 0
    assert d.hi - d.lo < 0.5 * (ca.hi - ca.lo)


def test_paired_diff_covers_zero_for_identical_or_balanced():
    a = _exactly(1000, 700)
    assert paired_bootstrap_diff(a, a.copy()) == (0.0, 0.0, 0.0)
    b = a.copy()
    b[np.flatnonzero(~a)[:10]] = True  # 10 fixed ...
    b[np.flatnonzero(a)[:10]] = False  # ... and 10 broken: no real difference
    d = paired_bootstrap_diff(a, b)
    assert d.mean == pytest.approx(0.0, abs=1e-12) and d.lo < 0 < d.hi
    with pytest.raises(ValueError):
        paired_bootstrap_diff(a, a[:-1])


def test_seed_spread_t_interval():
    ci = seed_spread_ci([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n)
    assert ci.mean == pytest.approx(0.6) and ci.lo == pytest.approx(0.6 - half) and ci.hi == pytest.approx(0.6 + half)
    one = seed_spread_ci([0.42])
    assert one.mean == 0.42 and math.isnan(one.lo) and math.isnan(one.hi)
    same = seed_spread_ci([0.3, 0.3])
    assert same == (0.3, 0.3, 0.3)
    with pytest.raises(ValueError):
        seed_spread_ci([])


def test_seed_and_val_single_seed_is_the_val_bootstrap():
    c = _exactly(1000, 700)[None, :]
    r = seed_and_val_ci(c, n_boot=2000)
    b = bootstrap_ci(c[0], n_boot=2000)
    assert r.n_seeds == 1 and math.isnan(r.se_seed) and r.df == math.inf
    assert abs(r.lo - b.lo) < 0.004 and abs(r.hi - b.hi) < 0.004
    assert r.se_val == pytest.approx(math.sqrt(0.21 / 1000), rel=0.1)


def test_seed_and_val_adds_the_seed_spread():
    """Per-seed shifts widen the interval beyond the val-only one, with few-seed t quantiles."""
    rng = np.random.default_rng(5)
    n = 2000
    base = rng.random(n)
    shifted = np.stack([base < p for p in (0.60, 0.70, 0.80)])  # seeds that differ by 10 points
    r = seed_and_val_ci(shifted)
    val_only = bootstrap_ci(shifted.mean(axis=0))
    assert r.mean == pytest.approx(shifted.mean())
    assert r.se_seed == pytest.approx(0.1 / math.sqrt(3), rel=0.1)
    assert r.df < 3  # dominated by the seed term: S - 1 = 2 degrees of freedom
    assert r.lo < val_only.lo - 0.1 and r.hi > val_only.hi + 0.1


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.slow
def test_seed_and_val_coverage_under_random_effects():
    """c_si ~ Bernoulli(sigmoid(0.8 + a_s + b_i)): seed effects a_s, image difficulties b_i.

    The combined interval covers the expected accuracy at least ~95% of the time (it
    is slightly conservative); a bootstrap over all S x N entries as if independent,
    ignoring the seed clustering, covers much less.
    """
    rng = np.random.default_rng(7)
    sd_seed, sd_img, s_count, n = 0.25, 1.5, 3, 300
    big = 2_000_000  # Monte Carlo of the expected accuracy over seeds and images (error ~3e-4)
    truth = float(_logistic(0.8 + sd_seed * rng.standard_normal(big) + sd_img * rng.standard_normal(big)).mean())
    reps, ours, naive = 200, 0, 0
    for r in range(reps):
        a = sd_seed * rng.standard_normal((s_count, 1))
        b = sd_img * rng.standard_normal((1, n))
        c = rng.random((s_count, n)) < _logistic(0.8 + a + b)
        ci = seed_and_val_ci(c, n_boot=400, seed=r)
        ours += ci.lo <= truth <= ci.hi
        flat = bootstrap_ci(c.ravel(), n_boot=400, seed=r)
        naive += flat.lo <= truth <= flat.hi
    assert ours / reps >= 0.92, ours / reps
    assert naive / reps < ours / reps - 0.05, (naive / reps, ours / reps)


def test_seed_and_val_input_checks():
    with pytest.raises(ValueError):
        seed_and_val_ci(np.ones(10, bool))  # needs (S, N)
    with pytest.raises(ValueError):
        seed_and_val_ci(np.full((2, 3), np.nan))
