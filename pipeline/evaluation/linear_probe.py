"""Feature transfer: a linear classifier on frozen features (Mahajan et al. 2018, sec. 3).

Recipe (after Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?",
sec. 3: multinomial logistic regression on the penultimate-layer features, L2
regularization chosen on a split held out from the training set, then refit on the
whole training set):

1. :func:`extract_features`: the frozen trunk's globally pooled features (the penultimate
   layer, ``forward_head(forward_features(x), pre_logits=True)``, or the pooled outputs of
   several residual stages concatenated, as Goyal et al. 2019 probe each stage; the
   transfer stage's ``transfer.probe_stages``), eval preprocessing, no augmentation, the
   autocast used for training, features kept in float32;
2. :func:`fit_probe`: standardize the features (mean 0, variance 1 per dimension,
   statistics from the fit part only), then an L2-regularized multinomial logistic
   regression (scikit-learn, L-BFGS) for each C of a small grid on the fit part; the C
   with the best held-out top-1 (ties: lower held-out log-loss, then the smaller C, i.e.
   more regularization) is refit on all the training features;
3. :func:`topk_correct`: per-image top-1 / top-5 hits on the val features, so the caller
   can also count a "lower-bound" accuracy with contaminated images marked wrong.

scikit-learn's C is the inverse regularization strength on the *summed* log-loss:
``min_w 0.5 ||w||^2 + C sum_i loss_i``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pipeline.evaluation.target_data import stratified_holdout
from pipeline.progress import progress_bar
from pipeline.vision.transforms import normalize

if TYPE_CHECKING:
    from pipeline.train.models import ResNeXt

__all__ = ["ProbeResult", "extract_features", "fit_probe", "topk_correct"]


@torch.no_grad()
def extract_features(
    model: ResNeXt,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    total: int | None = None,
    progress: bool = False,
    desc: str = "features",
    stages: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled trunk features of uint8 image batches.

    Args:
        model: a model with ``forward_features`` and ``forward_head(pre_logits=True)``; put in eval mode here.
        batches: ``(uint8 (B, 3, S, S), int64 (B,))`` pairs (see :mod:`pipeline.evaluation.target_data`).
        stages: None: the penultimate features (``num_features``); else residual stage names
            (``layer1``..``layer4``) whose pooled outputs are concatenated
            (:meth:`pipeline.train.models.ResNeXt.pooled_stage_features`).
    Returns:
        (features float32 (N, D), labels int64 (N,)).
    """
    model.eval()
    feats, labels = [], []
    with progress_bar(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for x, y in batches:
            x = normalize(x.to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                if stages is None:
                    f = model.forward_head(model.forward_features(x), pre_logits=True)
                else:
                    f = model.pooled_stage_features(x, stages)
            feats.append(f.float().cpu())
            labels.append(torch.as_tensor(y))
            bar.update(len(x))
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy().astype(np.int64)


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N,): whether each label is among the ``k`` highest scores of its row (k capped at the classes)."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


@dataclass
class ProbeResult:
    """A fitted probe: the chosen C, the grid's held-out scores, and the refit model."""

    best_C: float
    grid: list[dict] = field(default_factory=list)  # per C: {"C", "holdout_top1", "holdout_log_loss", "seconds"}
    model: Pipeline | None = None  # StandardScaler + LogisticRegression, refit on all training features
    seconds: float = 0.0  # grid search + refit
    num_classes: int = 0  # width of :meth:`scores` (classes absent from the training labels score -inf)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Class scores (N, C) in the order of the labels 0..C-1 (absent classes score -inf)."""
        assert self.model is not None
        clf = self.model[-1]
        raw = self.model.decision_function(x)
        if raw.ndim == 1:  # two classes present: sklearn returns one score
            raw = np.stack([-raw, raw], axis=1)
        out = np.full((len(x), int(self.num_classes)), -np.inf, dtype=np.float64)
        out[:, clf.classes_] = raw
        return out


def _fit(
    C: float, x: np.ndarray, y: np.ndarray, max_iter: int, seed: int, tol: float, init: LogisticRegression | None = None
) -> LogisticRegression:
    """One L-BFGS fit on standardized features, warm-started from ``init``'s weights if given."""
    clf = LogisticRegression(C=C, max_iter=max_iter, tol=tol, random_state=seed, warm_start=init is not None)
    if init is not None:
        clf.coef_, clf.intercept_ = init.coef_.copy(), init.intercept_.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported by iterations == max_iter instead
        return clf.fit(x, y)


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    Cs: Sequence[float],
    *,
    num_classes: int,
    holdout_fraction: float = 0.2,
    max_iter: int = 1000,
    tol: float = 1e-4,
    seed: int = 0,
    blas_threads: int | None = 1,
    progress: bool = False,
    desc: str = "probe",
) -> ProbeResult:
    """Choose C on a stratified held-out part of ``(x, y)``, then refit on all of it.

    The grid is fitted in increasing C (decreasing regularization), each fit warm-started
    from the previous solution, and the refit from the chosen one: the regularization path
    the way glmnet walks it, several times fewer L-BFGS iterations than cold starts on
    these poorly conditioned 2048-d features.

    Args:
        x: float32 (N, D) training features; y: int64 (N,) labels in ``[0, num_classes)``.
        Cs: the grid of inverse regularization strengths (one value: no search).
        holdout_fraction: share of each class held out to choose C (at least one image per class
            with 2+ images; see :func:`pipeline.evaluation.target_data.stratified_holdout`).
        blas_threads: BLAS threads during the fits (None = the library's default). 1 by default:
            on the 2-core demo machine, with other processes busy, multi-threaded OpenBLAS made
            the same fits 5-15x slower (threads spin waiting for each other).
    Returns:
        :class:`ProbeResult` (``scores(val_x)`` gives the val scores).
    Raises:
        ValueError: an empty grid or fewer than 2 classes in ``y``.
    """
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return _fit_probe(x, y, Cs, num_classes, holdout_fraction, max_iter, tol, seed, progress, desc)


def _fit_probe(x, y, Cs, num_classes, holdout_fraction, max_iter, tol, seed, progress, desc) -> ProbeResult:
    t0 = time.perf_counter()
    if not len(Cs):
        raise ValueError("the C grid is empty")
    if len(np.unique(y)) < 2:
        raise ValueError("the linear probe needs at least 2 classes in the training features")
    grid: list[dict] = []
    fit_pos, hold_pos = stratified_holdout(y, holdout_fraction, seed)
    warm: dict[float, LogisticRegression] = {}
    if len(Cs) > 1 and len(hold_pos) and len(np.unique(y[fit_pos])) >= 2:
        scaler = StandardScaler().fit(x[fit_pos])
        xf, xh = scaler.transform(x[fit_pos]), scaler.transform(x[hold_pos])
        prev = None
        for C in progress_bar(sorted(float(c) for c in Cs), desc=desc, unit="C", disable=not progress, leave=False):
            t = time.perf_counter()
            clf = _fit(C, xf, y[fit_pos], max_iter, seed, tol, prev)
            res = ProbeResult(best_C=C, model=make_pipeline(scaler, clf), num_classes=num_classes)
            top1 = float(topk_correct(res.scores(x[hold_pos]), y[hold_pos], 1).mean())
            ll = float(log_loss(y[hold_pos], clf.predict_proba(xh), labels=clf.classes_))
            grid.append(
                {
                    "C": C,
                    "holdout_top1": top1,
                    "holdout_log_loss": ll,
                    "iterations": int(np.max(clf.n_iter_)),
                    "seconds": round(time.perf_counter() - t, 3),
                }
            )
            warm[C] = prev = clf
        best = min(grid, key=lambda g: (-g["holdout_top1"], g["holdout_log_loss"], g["C"]))["C"]
    else:
        best = float(Cs[0])
    scaler = StandardScaler().fit(x)
    clf = _fit(best, scaler.transform(x), y, max_iter, seed, tol, warm.get(best))
    return ProbeResult(
        best_C=best, grid=grid, model=make_pipeline(scaler, clf), seconds=time.perf_counter() - t0, num_classes=num_classes
    )
