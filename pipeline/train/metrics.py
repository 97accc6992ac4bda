"""Held-out hashtag prediction metrics (scikit-learn), as in Mahajan et al. 2018 (sec. 3.1).

* precision@1: the share of samples whose top-scoring class is one of their labels.
* mAP: mean over classes (with at least one positive) of the average precision of the
  class scores (``sklearn.metrics.average_precision_score``, macro average).
* The prior baseline ("chance" for a model that learnt nothing from pixels): every
  sample gets the training class frequencies as scores.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score


def precision_at_1(scores: np.ndarray, targets: np.ndarray) -> float:
    """scores (N, C) float, targets (N, C) {0, 1}: share of rows whose argmax is a positive."""
    if len(scores) == 0:
        return float("nan")
    top = scores.argmax(axis=1)
    return float(targets[np.arange(len(top)), top].mean())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mAP over the classes that have at least one positive in ``targets``."""
    cols = np.flatnonzero(targets.sum(axis=0) > 0)
    if len(cols) == 0:
        return float("nan")
    return float(average_precision_score(targets[:, cols], scores[:, cols], average="macro"))


def prior_baseline(class_freq: np.ndarray, targets: np.ndarray) -> dict:
    """precision@1 and mAP when every sample is scored with the class frequencies (C,)."""
    # constant scores per class: its AP equals its prevalence (sklearn scores ties together)
    scores = np.tile(np.asarray(class_freq, dtype=np.float64), (len(targets), 1))
    return {"precision_at_1": precision_at_1(scores, targets), "mAP": mean_average_precision(scores, targets)}
