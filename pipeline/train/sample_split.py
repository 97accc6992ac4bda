"""The pretraining samples: the deterministic held-out split and the training / held-out sample indexes.

The split is by key hash (:func:`heldout_mask`), never by seed, so every run and sweep of a
run folder holds out the same samples; the indexes (:class:`pipeline.train.epoch_plan.SampleIndex`)
carry each sample's classes and resampling weight from the vocab stage's labels.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import ConfigError
from pipeline.io.labels import Labels, load_labels
from pipeline.io.shard_labels import FRACTION_BUCKETS, HELDOUT_BUCKETS
from pipeline.seeding import key_buckets
from pipeline.train.epoch_plan import SampleIndex

__all__ = [
    "FRACTION_BUCKETS",
    "HELDOUT_BUCKETS",
    "build_indexes",
    "fraction_cut",
    "fraction_mask",
    "heldout_cut",
    "heldout_eval_cut",
    "heldout_mask",
]


def heldout_cut(fraction: float) -> int:
    """Samples whose held-out bucket (:func:`pipeline.seeding.key_buckets` ``("heldout", key, HELDOUT_BUCKETS)``)
    is below this are held out: ``int(fraction x 10,000)``, 0 for ``fraction <= 0``."""
    return int(fraction * HELDOUT_BUCKETS) if fraction > 0 else 0


def heldout_eval_cut(max_samples: int, expected_heldout: float) -> int:
    """Held-out samples whose ``fraction_bucket`` (an independent key hash, ``FRACTION_BUCKETS`` buckets) is below
    this are the candidates for evaluation: every bucket when ``max_samples`` is 0 or the held-out set is expected
    to fit, else enough buckets for ``max_samples`` plus 5 binomial standard deviations (and 10), so that the
    ``max_samples`` candidates with the lowest (bucket, key) are the same whatever the world size (the caller
    keeps those)."""
    if max_samples <= 0 or expected_heldout <= max_samples:
        return FRACTION_BUCKETS
    want = max_samples + 5 * max_samples**0.5 + 10
    return min(FRACTION_BUCKETS, int(np.ceil(FRACTION_BUCKETS * want / expected_heldout)))


def fraction_cut(fraction: float) -> int:
    """Training samples whose ``("data_fraction", key)`` bucket is below this are kept (``FRACTION_BUCKETS`` at 1)."""
    return FRACTION_BUCKETS if fraction >= 1 else int(round(fraction * FRACTION_BUCKETS))


def heldout_mask(keys: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic held-out split by key hash: bool (N,), about ``fraction`` of samples True.

    The split depends only on the key, never on the seed, so every run and sweep holds
    out the same samples.
    """
    if fraction <= 0:
        return np.zeros(len(keys), dtype=bool)
    return key_buckets("heldout", keys, HELDOUT_BUCKETS) < heldout_cut(fraction)


def fraction_mask(keys: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic nested subset by key hash: bool (N,), about ``fraction`` True; every key kept at a
    fraction is kept at every larger one (the threshold on the same hash only grows)."""
    if fraction >= 1:
        return np.ones(len(keys), dtype=bool)
    return key_buckets("data_fraction", keys, FRACTION_BUCKETS) < fraction_cut(fraction)


def build_indexes(
    run_dir, scheme: str, heldout_fraction: float, data_fraction: float = 1.0
) -> tuple[SampleIndex, SampleIndex, Labels]:
    """Training and held-out :class:`SampleIndex` from the vocab stage's labels.

    Held-out samples (by key hash) are excluded from training; of the rest, ``data_fraction`` is
    kept (:func:`fraction_mask`: nested, the same held-out set for every fraction); training weights
    are renormalized to mean 1; held-out samples get weight 1 (each seen once).

    Raises:
        pipeline.errors.ConfigError: ``heldout_fraction`` or ``data_fraction`` leaves no training sample.
        FileNotFoundError: the vocab stage has not written its labels in ``run_dir``.
    """
    labels = load_labels(run_dir)
    full = SampleIndex(
        np.asarray(labels.keys),
        labels.indptr.astype(np.int64),
        labels.indices.astype(np.int64),
        labels.weights(scheme).astype(np.float64),
    )
    held = heldout_mask(full.keys, heldout_fraction)
    train_idx = full.subset(~held)
    if len(train_idx.keys) == 0:
        raise ConfigError("config error at pretrain.heldout_fraction: no training samples left")
    if data_fraction < 1:
        train_idx = train_idx.subset(fraction_mask(train_idx.keys, data_fraction))
        if len(train_idx.keys) == 0:
            raise ConfigError(f"config error at pretrain.data_fraction: {data_fraction} leaves no training sample")
    train_idx.weights = train_idx.weights / train_idx.weights.mean()
    held_idx = full.subset(held)
    held_idx.weights = np.ones(len(held_idx.keys))
    return train_idx, held_idx, labels
