"""95% confidence intervals for accuracies: val-image bootstrap, seeds, and both.

Everything takes per-image correctness (``bool`` or 0/1 arrays, one entry per val image)
rather than accuracies, so the val set's sampling noise can be resampled, and returns
``CI(mean, lo, hi)`` (a named tuple: ``mean, lo, hi = ...`` works). The bootstraps are
``scipy.stats.bootstrap`` (``method='percentile'``, ``vectorized=True``, ``paired=True`` for
paired differences) with ``rng=numpy.random.default_rng(seed)``: deterministic given ``seed``.
The resamples are drawn in batches of at most ``_MAX_DRAWS // N``, so the resampled indices, and
the intervals, are the same as those of this module's earlier hand-written bootstrap.

- :func:`bootstrap_ci`: percentile bootstrap over val images (Efron & Tibshirani 1993,
  *An Introduction to the Bootstrap*, ch. 13): resample the N images with replacement
  ``n_boot`` times, take the ``(1-level)/2`` and ``(1+level)/2`` quantiles of the
  resampled accuracies. The question it answers: how much would the accuracy move on
  another val set of N images from the same distribution, the model fixed.
- :func:`paired_bootstrap_diff`: the same for the difference of two models scored on
  the same images, with the *same* resampled indices for both (a paired bootstrap), so
  the per-image agreement of the two models cancels out: a difference of 2 points
  between models that disagree on 2% of the images is clearly non-zero, while two
  independent intervals of width ~6 points would overlap.
- :func:`seed_spread_ci`: Student-t interval over independent seeded runs (each seed
  draws its own low-data training subset and initialization), ``mean +- t * s / sqrt(n)``.
- :func:`seed_and_val_ci`: both sources at once for the low-data settings, where the
  seed-to-seed spread and the val sampling noise are of similar size (Bouthillier et al.
  2021, "Accounting for variance in machine learning benchmarks", MLSys: the data
  sampling and the seeds both have to be varied, and ignoring either understates the
  uncertainty). See its docstring for the method and why not a plain two-way bootstrap.
- :func:`wilson_ci`, :func:`clopper_pearson_ci`: binomial-proportion intervals (Wilson
  1927; Clopper & Pearson 1934, exact), closed forms for a single accuracy that the
  bootstrap should reproduce (tests/test_intervals.py checks it does).
- :func:`accuracy_interval`, :func:`difference_interval`: the transfer stage's entries of
  ``results.json`` (an accuracy over S seeds x N val images; pretrained minus scratch, paired),
  built on the above and rounded to 6 digits.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple, Sequence

import numpy as np
from scipy import stats

__all__ = [
    "CI",
    "SeedValCI",
    "bootstrap_ci",
    "bootstrap_means",
    "clopper_pearson_ci",
    "paired_bootstrap_diff",
    "seed_and_val_ci",
    "seed_spread_ci",
    "wilson_ci",
    "accuracy_interval",
    "difference_interval",
    "round6",
]

_MAX_DRAWS = 1 << 22  # resampled indices drawn at once (32 MB of int64): bounds memory for large N


class CI(NamedTuple):
    """A point estimate and its confidence interval ``[lo, hi]`` (NaN where undefined)."""

    mean: float
    lo: float
    hi: float


class SeedValCI(NamedTuple):
    """:func:`seed_and_val_ci`'s result: the interval and what it is made of.

    Attributes:
        mean, lo, hi: the accuracy over all seeds and images, and its interval.
        se_seed: standard error from the spread of the per-seed accuracies (NaN for one seed).
        se_val: bootstrap standard error over val images of the seed-averaged correctness.
        df: degrees of freedom of the t quantile (Welch-Satterthwaite; inf for one seed).
        n_seeds, n_images: S and N.
    """

    mean: float
    lo: float
    hi: float
    se_seed: float
    se_val: float
    df: float
    n_seeds: int
    n_images: int


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _check_n_boot(n_boot: int) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def _as_values(x, name: str, ndim: int = 1) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.shape[-1] == 0 or arr.size == 0:
        raise ValueError(f"{name} is empty")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has NaN or infinite entries")
    return arr


def _batch(n: int) -> int:
    """Resamples per batch: at most ``_MAX_DRAWS`` resampled indices in memory at once."""
    return max(1, _MAX_DRAWS // n)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x.mean(axis=axis)


def _mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return b.mean(axis=axis) - a.mean(axis=axis)


def _percentile_bootstrap(data: tuple[np.ndarray, ...], statistic, *, n_boot: int, seed: int, level: float, paired: bool):
    """``scipy.stats.bootstrap`` over axis 0 (the val images) with this module's settings.

    Returns:
        ``scipy.stats._resampling.BootstrapResult``; its ``bootstrap_distribution`` has the resamples on the last axis.
    """
    with warnings.catch_warnings():  # n_boot = 1: scipy's standard error (ddof 1) of one resample warns; unused then
        warnings.filterwarnings("ignore", "Degrees of freedom <= 0", RuntimeWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        return stats.bootstrap(
            data,
            statistic,
            n_resamples=n_boot,
            batch=_batch(data[0].shape[0]),
            vectorized=True,
            paired=paired,
            axis=0,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(seed),
        )


def bootstrap_means(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of the rows of ``values``.

    ``scipy.stats.bootstrap``'s bootstrap distribution of the mean (rows resampled along axis 0).

    Args:
        values: float or bool, shape (N,) or (N, K): one row per val image; with K
            columns (e.g. two models) every column is resampled with the same indices.
        n_boot: number of bootstrap resamples.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        float64, shape (n_boot,) or (n_boot, K).

    Raises:
        ValueError: ``values`` not of shape (N,) or (N, K) with N > 0, or ``n_boot < 1``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (1, 2) or values.shape[0] == 0:
        raise ValueError(f"values must have shape (N,) or (N, K) with N > 0, got {values.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if values.shape[0] == 1:  # one image: every resample is that image (scipy needs N >= 2)
        return np.repeat(values, n_boot, axis=0)
    # one sample of shape (N, K): scipy resamples axis 0 with the same indices for every column
    res = _percentile_bootstrap((values,), _mean, n_boot=n_boot, seed=seed, level=0.95, paired=False)
    return np.moveaxis(np.asarray(res.bootstrap_distribution, dtype=np.float64), -1, 0)


def bootstrap_ci(correct: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> CI:
    """Accuracy and its percentile-bootstrap interval over val images.

    Args:
        correct: bool (or 0/1, or per-image scores in [0, 1]), shape (N,): one entry per val image.
        n_boot: bootstrap resamples (1,000 gives bounds to about +-0.2 points at N = 1,000).
        seed: seed of the resampling.
        level: coverage, e.g. 0.95.

    Returns:
        ``CI(mean, lo, hi)``: mean = the observed accuracy (not the bootstrap mean).

    Raises:
        ValueError: ``correct`` empty, not 1-D or not finite; ``n_boot < 1``; ``level`` outside (0, 1).
    """
    _check_level(level)
    values = _as_values(correct, "correct")
    _check_n_boot(n_boot)
    mean = float(values.mean())
    if values.size == 1:  # one image: a degenerate bootstrap (scipy needs N >= 2)
        return CI(mean, mean, mean)
    ci = _percentile_bootstrap((values,), _mean, n_boot=n_boot, seed=seed, level=level, paired=False).confidence_interval
    return CI(mean, float(ci.low), float(ci.high))


def paired_bootstrap_diff(
    correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> CI:
    """``accuracy(b) - accuracy(a)`` on the same val images, with a paired percentile bootstrap.

    Both vectors are resampled with the same indices, so the interval reflects only the
    images on which the two models disagree. It excludes 0 when b is reliably better
    (``lo > 0``) or worse (``hi < 0``).

    ``scipy.stats.bootstrap`` with ``paired=True``: one set of resampled image indices per resample, used for both.

    Args:
        correct_a, correct_b: bool or 0/1, shape (N,), entry i for the same val image i.
        n_boot, seed, level: as in :func:`bootstrap_ci`.

    Returns:
        ``CI(diff, lo, hi)``.

    Raises:
        ValueError: the vectors differ in shape, are empty or not finite; ``n_boot < 1``; ``level`` outside (0, 1).
    """
    _check_level(level)
    a = _as_values(correct_a, "correct_a")
    b = _as_values(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b must have the same shape, got {a.shape} and {b.shape}")
    _check_n_boot(n_boot)
    diff = float(b.mean() - a.mean())
    if a.size == 1:  # one image: a degenerate bootstrap (scipy needs N >= 2)
        return CI(diff, diff, diff)
    ci = _percentile_bootstrap((a, b), _mean_diff, n_boot=n_boot, seed=seed, level=level, paired=True).confidence_interval
    return CI(diff, float(ci.low), float(ci.high))


def _t_quantile(level: float, df: float) -> float:
    q = (1.0 + level) / 2.0
    return float(stats.t.ppf(q, df)) if math.isfinite(df) else float(stats.norm.ppf(q))


def seed_spread_ci(values: Sequence[float], level: float = 0.95) -> CI:
    """Student-t interval of the mean of per-seed accuracies.

    ``mean +- t_{(1+level)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (ddof 1) of the ``n`` values, each from an independently seeded run.

    With n = 1 the spread cannot be estimated: returns ``CI(value, nan, nan)`` (report
    the single run's val bootstrap instead, and say that seeds were not varied).

    Args:
        values: per-seed accuracies (floats), length n >= 1.

    Raises:
        ValueError: if ``values`` is empty or not finite.
    """
    _check_level(level)
    v = _as_values(list(values), "values")
    n = v.size
    mean = float(v.mean())
    if n == 1:
        return CI(mean, math.nan, math.nan)
    half = _t_quantile(level, n - 1) * float(v.std(ddof=1)) / math.sqrt(n)
    return CI(mean, mean - half, mean + half)


def seed_and_val_ci(correct: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> SeedValCI:
    """Accuracy over S seeded runs scored on the same N val images, and an interval for both sources of noise.

    Method (a variance sum with a bootstrap term; chosen over a two-way bootstrap):

    1. seed term: the per-seed accuracies ``acc_s = correct[s].mean()`` vary because
       each seed draws its own training subset and initialization;
       ``se_seed^2 = var(acc_s, ddof=1) / S``, the t-interval's standard error.
    2. val term: ``se_val^2`` = the bootstrap variance over val images (Efron &
       Tibshirani 1993, ch. 6) of the mean of the seed-averaged correctness
       ``correct.mean(axis=0)``: how the result would move on another val set.
    3. ``mean +- t_df * sqrt(se_seed^2 + se_val^2)``, with df from Welch-Satterthwaite
       (``S - 1`` seed degrees of freedom, ``N - 1`` for the val term).

    Under a random-effects model ``c_si = mu + a_s + b_i + e_si`` the sum estimates
    ``var(a)/S + var(b)/N + 2 var(e)/(S N)``: the interaction term is counted twice,
    so the interval is slightly conservative, like the two-way ("pigeonhole") bootstrap
    (Owen 2007, Ann. Appl. Stat.) that resamples seeds and images jointly. That
    bootstrap is not used because with the usual S = 3-5 seeds, resampling seeds
    has only a handful of distinct outcomes and its percentiles act like normal
    quantiles, far too narrow (t with 2 df is 4.30, not 1.96); the t quantile keeps the
    few-seeds penalty. Bouthillier et al. (2021) recommend varying both the data and
    the seeds and reporting both; ``se_seed`` and ``se_val`` are returned for that.

    With S = 1 the seed term is unknown: the result is the val-only interval (t with
    infinite df, i.e. normal, on ``se_val``), ``se_seed`` and ``df`` are NaN/inf, and the
    interval understates the uncertainty by the missing seed spread.

    Args:
        correct: bool or 0/1 (or floats, e.g. ``correct_b - correct_a`` for a paired
            difference when seed s gives both models the same training subset), shape
            (S, N): row s = seed s, column i = the same val image i in every row.
        n_boot, seed: the val bootstrap's resamples and seed.
        level: coverage.

    Returns:
        :class:`SeedValCI`.
    """
    _check_level(level)
    c = _as_values(correct, "correct", ndim=2)
    s_count, n = c.shape
    mean = float(c.mean())
    _check_n_boot(n_boot)
    var_val = 0.0  # one image or one resample: no val spread can be estimated
    if n > 1 and n_boot > 1:
        boot = _percentile_bootstrap((c.mean(axis=0),), _mean, n_boot=n_boot, seed=seed, level=level, paired=False)
        var_val = float(boot.standard_error) ** 2  # std (ddof 1) of the bootstrap distribution
    if s_count == 1:
        half = _t_quantile(level, math.inf) * math.sqrt(var_val)
        return SeedValCI(mean, mean - half, mean + half, math.nan, math.sqrt(var_val), math.inf, 1, n)
    var_seed = float(c.mean(axis=1).var(ddof=1)) / s_count
    total = var_seed + var_val
    denom = var_seed**2 / (s_count - 1) + (var_val**2 / (n - 1) if n > 1 else 0.0)
    df = total**2 / denom if denom > 0 else math.inf
    half = _t_quantile(level, df) * math.sqrt(total)
    return SeedValCI(mean, mean - half, mean + half, math.sqrt(var_seed), math.sqrt(var_val), df, s_count, n)


def wilson_ci(k: int, n: int, level: float = 0.95) -> CI:
    """Wilson score interval of a binomial proportion ``k / n`` (Wilson 1927).

    Returns:
        ``CI(k / n, lo, hi)``.
    """
    _check_level(level)
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = _t_quantile(level, math.inf)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return CI(p, max(0.0, centre - half), min(1.0, centre + half))


def clopper_pearson_ci(k: int, n: int, level: float = 0.95) -> CI:
    """Exact (Clopper & Pearson 1934) interval of a binomial proportion ``k / n``, from beta quantiles.

    Returns:
        ``CI(k / n, lo, hi)``; ``lo`` is 0 when k = 0 and ``hi`` 1 when k = n.
    """
    _check_level(level)
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    alpha = 1.0 - level
    lo = float(stats.beta.ppf(alpha / 2, k, n - k + 1)) if k > 0 else 0.0
    hi = float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k)) if k < n else 1.0
    return CI(k / n, lo, hi)


# --------------------------------------------------------------------------- the transfer stage's intervals


def round6(x: float) -> float:
    """``x`` as a float rounded to 6 digits: how ``results.json`` stores accuracies and interval ends."""
    return round(float(x), 6)


def accuracy_interval(correct: np.ndarray, *, n_boot: int, seed: int, level: float) -> dict:
    """Mean and interval of per-image correctness ``(S, N)`` (S seeded runs on the same N val images).

    One seed: percentile bootstrap over the val images (:func:`bootstrap_ci`); several:
    :func:`seed_and_val_ci` (seed spread + val bootstrap; its t interval clipped to [0, 1]).

    Returns:
        ``{"mean", "lo", "hi", "method"}`` (+ ``se_seed``, ``se_val``, ``df`` with seeds), values rounded to 6 digits.
    """
    c = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    if c.shape[0] == 1:
        ci = bootstrap_ci(c[0], n_boot=n_boot, seed=seed, level=level)
        return {"mean": round6(ci.mean), "lo": round6(ci.lo), "hi": round6(ci.hi), "method": "val bootstrap"}
    s = seed_and_val_ci(c, n_boot=n_boot, seed=seed, level=level)
    return {
        "mean": round6(s.mean),
        "lo": round6(max(0.0, s.lo)),
        "hi": round6(min(1.0, s.hi)),
        "method": f"{s.n_seeds} seeds + val bootstrap",
        "se_seed": round6(s.se_seed),
        "se_val": round6(s.se_val),
        "df": round6(s.df) if math.isfinite(s.df) else None,
    }


def difference_interval(pretrained: np.ndarray, scratch: np.ndarray, *, n_boot: int, seed: int, level: float) -> dict:
    """``accuracy(pretrained) - accuracy(scratch)`` with its interval, on the same val images.

    One seed: paired bootstrap (:func:`paired_bootstrap_diff`); several: :func:`seed_and_val_ci` of the
    per-image differences (seed s gave both initializations the same labelled subset), clipped to [-1, 1].
    ``measurable`` is False when the interval covers 0.

    Returns:
        ``{"diff", "lo", "hi", "ci_method", "measurable", "verdict"}`` (+ ``se_seed``, ``se_val`` with seeds);
        ``verdict`` is ``"gain"``, ``"loss"`` or ``"no measurable gain"``.
    Raises:
        ValueError: the two correctness arrays differ in shape.
    """
    a = np.atleast_2d(np.asarray(scratch, dtype=np.float64))
    b = np.atleast_2d(np.asarray(pretrained, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"pretrained and scratch correctness differ in shape: {b.shape} vs {a.shape}")
    if a.shape[0] == 1:
        ci = paired_bootstrap_diff(a[0], b[0], n_boot=n_boot, seed=seed, level=level)
        out: dict[str, Any] = {
            "diff": round6(ci.mean),
            "lo": round6(ci.lo),
            "hi": round6(ci.hi),
            "ci_method": "paired val bootstrap",
        }
    else:
        s = seed_and_val_ci(b - a, n_boot=n_boot, seed=seed, level=level)
        # a difference of two accuracies lies in [-1, 1]: the t interval (few seeds) is clipped to it
        out = {
            "diff": round6(s.mean),
            "lo": round6(max(-1.0, s.lo)),
            "hi": round6(min(1.0, s.hi)),
            "ci_method": f"{s.n_seeds} paired seeds + val bootstrap",
            "se_seed": round6(s.se_seed),
            "se_val": round6(s.se_val),
        }
    out["measurable"] = bool(out["lo"] > 0 or out["hi"] < 0)
    out["verdict"] = "gain" if out["lo"] > 0 else "loss" if out["hi"] < 0 else "no measurable gain"
    return out
