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
   regression for each C of a small grid on the fit part; the C with the best held-out
   top-1 (ties: lower held-out log-loss, then the smaller C, i.e. more regularization) is
   refit on all the training features. The fits are scikit-learn's objective solved in torch
   (:mod:`pipeline.evaluation.probe_solver`): full-batch L-BFGS on the device when the features
   fit its memory budget, else minibatch Adam over the rows of a (memory-mapped) array;
   scikit-learn's ``LogisticRegression`` is the reference the tests hold it to
   (``tests/test_linear_probe.py``: the same predictions and the same chosen C);
3. :func:`topk_correct`: per-image top-1 / top-5 hits on the val features, so the caller
   can also count a "lower-bound" accuracy with contaminated images marked wrong.

scikit-learn's C is the inverse regularization strength on the *summed* log-loss:
``min_w 0.5 ||w||^2 + C sum_i loss_i``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch

from pipeline.evaluation.probe_solver import (
    LinearClassifier,
    SGDSettings,
    Standardizer,
    choose_solver,
    global_classes,
    global_count,
    holdout_scores,
    lbfgs_fit,
    load_standardized,
    sgd_fit,
)
from pipeline.evaluation.target_data import stratified_holdout
from pipeline.progress import progress_bar
from pipeline.vision.transforms import normalize

if TYPE_CHECKING:
    from pipeline.train.models import ResNeXt

__all__ = ["ProbeResult", "SGDSettings", "extract_features", "fit_probe", "topk_correct"]


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
    # per C: {"C", "holdout_top1", "holdout_log_loss", "iterations", "seconds", "solver"}
    grid: list[dict] = field(default_factory=list)
    model: LinearClassifier | None = None  # standardization + linear layer, refit on all training features
    seconds: float = 0.0  # grid search + refit
    num_classes: int = 0  # width of :meth:`scores` (classes absent from the training labels score -inf)
    solver: str = ""  # "lbfgs" or "sgd" (what "auto" chose)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Class scores float64 (N, num_classes) of raw features ``x`` (float32 (N, D), an array or a memmap),
        in the order of the labels 0..num_classes-1 (absent classes score -inf)."""
        assert self.model is not None
        out = np.full((len(x), int(self.num_classes)), -np.inf, dtype=np.float64)
        out[:, self.model.classes] = self.model.logits(x)
        return out


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
    solver: str = "auto",
    device: torch.device | str | None = None,
    memory_budget_mb: float | None = None,
    sgd: SGDSettings | None = None,
    holdout: np.ndarray | None = None,
) -> ProbeResult:
    """Choose C on a stratified held-out part of ``(x, y)``, then refit on all of it.

    The grid is fitted in increasing C (decreasing regularization), each fit warm-started
    from the previous solution, and the refit from the chosen one: the regularization path
    the way glmnet walks it, several times fewer L-BFGS iterations than cold starts on
    these poorly conditioned 2048-d features.

    Args:
        x: float32 (N, D) training features (an array, or a ``numpy.memmap`` read in blocks);
            y: int64 (N,) labels in ``[0, num_classes)``. Under ``torch.distributed``: this rank's rows
            (see :mod:`pipeline.evaluation.probe_solver`).
        Cs: the grid of inverse regularization strengths (scikit-learn's C; one value: no search).
        holdout_fraction: share of each class held out to choose C (at least one image per class
            with 2+ images; see :func:`pipeline.evaluation.target_data.stratified_holdout`).
        max_iter, tol: L-BFGS iterations at most and its stopping tolerance on max |gradient|
            (scikit-learn's meaning; the SGD path runs ``sgd.epochs`` instead).
        blas_threads: torch intra-op threads during CPU fits (restored after; None = as set). 1 by
            default: on the 2-core demo machine, with other processes busy, multi-threaded BLAS made
            the same fits 5-15x slower (threads spin waiting for each other).
        solver: ``"auto"`` (L-BFGS when :func:`pipeline.evaluation.probe_solver.lbfgs_bytes` of all
            N rows fits ``memory_budget_mb``, else SGD), ``"lbfgs"`` or ``"sgd"``.
        device: where the fits compute (None: the CPU).
        memory_budget_mb: MiB the L-BFGS path may hold on ``device`` (None: half the free CUDA
            memory, or half the physical memory on the CPU).
        sgd: the minibatch solver's settings (None: :class:`SGDSettings` defaults).
        holdout: bool (N,), the rows held out to choose C (None: :func:`pipeline.evaluation.target_data.stratified_holdout`
            of ``y`` with ``holdout_fraction`` and ``seed``). Under ``torch.distributed`` pass it: each rank's rows of
            the split made over all ranks' rows, so that C is chosen as in one process.
    Returns:
        :class:`ProbeResult` (``scores(val_x)`` gives the val scores).
    Raises:
        ValueError: an empty grid, fewer than 2 classes in ``y``, or an unknown solver.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    threads = torch.get_num_threads()
    if dev.type == "cpu" and blas_threads is not None:
        torch.set_num_threads(blas_threads)
    try:
        budget = None if memory_budget_mb is None else int(memory_budget_mb * 2**20)
        split = holdout_fraction if holdout is None else np.asarray(holdout, dtype=bool)
        return _fit_probe(x, y, Cs, num_classes, split, max_iter, tol, seed, progress, desc, solver, dev, budget, sgd)
    finally:
        torch.set_num_threads(threads)


def _fit_probe(x, y, Cs, num_classes, split, max_iter, tol, seed, progress, desc, solver, dev, budget, sgd):
    t0 = time.perf_counter()
    if not len(Cs):
        raise ValueError("the C grid is empty")
    y = np.asarray(y, dtype=np.int64)
    classes = global_classes(y, num_classes, dev)
    if len(classes) < 2:
        raise ValueError("the linear probe needs at least 2 classes in the training features")
    k_out = 1 if len(classes) == 2 else len(classes)  # two classes: one logit vector, as scikit-learn
    chosen = choose_solver(solver, len(y), x.shape[1], k_out, dev, budget)  # on this rank's rows
    if global_count(int(chosen == "sgd"), dev) > 0:  # every rank the same solver: SGD if any rank's rows do not fit
        chosen = "sgd"
    settings = sgd or SGDSettings()

    def fit(C: float, rows: np.ndarray | None, std: Standardizer, xs: torch.Tensor | None, init) -> LinearClassifier:
        yi = np.searchsorted(classes, y if rows is None else y[rows])
        if xs is not None:
            W, b, it = lbfgs_fit(xs, torch.from_numpy(yi).to(dev), k_out, C, max_iter=max_iter, tol=tol, init=init)
        else:
            rows = np.arange(len(y)) if rows is None else rows
            W, b, it = sgd_fit(x, rows, yi, std, k_out, C, settings=settings, seed=seed, device=dev, init=init)
        return LinearClassifier(std, W, b, classes, it, chosen, str(dev))

    grid: list[dict] = []
    if isinstance(split, np.ndarray):  # the caller's split (every rank's rows of one split)
        if split.shape != y.shape:
            raise ValueError(f"holdout has {split.shape[0]} entries for {len(y)} rows")
        fit_pos, hold_pos = np.flatnonzero(~split), np.flatnonzero(split)
    else:
        fit_pos, hold_pos = stratified_holdout(y, split, seed)
    warm: dict[float, LinearClassifier] = {}
    if len(Cs) > 1 and global_count(len(hold_pos), dev) > 0:
        std = Standardizer.fit(x, fit_pos, dev)
        xs = load_standardized(x, fit_pos, std, dev) if chosen == "lbfgs" else None
        prev = None
        for C in progress_bar(sorted(float(c) for c in Cs), desc=desc, unit="C", disable=not progress, leave=False):
            t = time.perf_counter()
            clf = fit(C, fit_pos, std, xs, prev)
            top1, ll = holdout_scores(clf, x, hold_pos, y[hold_pos], dev)
            grid.append(
                {
                    "C": C,
                    "holdout_top1": top1,
                    "holdout_log_loss": ll,
                    "iterations": clf.n_iter,
                    "seconds": round(time.perf_counter() - t, 3),
                    "solver": chosen,
                }
            )
            warm[C] = prev = clf
        del xs
        best = min(grid, key=lambda g: (-g["holdout_top1"], g["holdout_log_loss"], g["C"]))["C"]
    else:
        best = float(Cs[0])
    std = Standardizer.fit(x, None, dev)
    xs = load_standardized(x, None, std, dev) if chosen == "lbfgs" else None
    clf = fit(best, None, std, xs, warm.get(best))
    return ProbeResult(
        best_C=best, grid=grid, model=clf, seconds=time.perf_counter() - t0, num_classes=num_classes, solver=chosen
    )
