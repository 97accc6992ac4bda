"""The fine-tuning head fitted as a linear probe first (LP-FT, Kumar et al. 2022, sec. 4), on every rank.

Fine-tuning starts from a new classifier. A random one (N(0, 0.01^2), Goyal et al. 2017) sends large,
noisy gradients into the trunk in the first steps, and on a few hundred labelled images those steps
distort the pretrained features before the head has learned anything: the demo's fine-tuning ended
below a linear probe on the same trunk. Kumar et al. 2022 ("Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution", ICLR) fit the head as a linear probe on the frozen
penultimate features, then fine-tune every layer from there (LP-FT).

:func:`probe_head` does the first part with the stage's probe (:func:`pipeline.evaluation.linear_probe.fit_probe`:
L2 logistic regression, C chosen on a stratified held-out part of the images, then refit on all) on the
penultimate features of the run's training images, eval-preprocessed (no augmentation), once the trunk's BatchNorm
statistics are those of these images (:func:`recalibrate_bn`: fine-tuning normalizes with batch statistics, so the
head is fitted on features normalized alike). The standardized
probe is folded into a ``Linear`` layer on raw features: ``W = coef / scale``, ``b = intercept - W mean``.
Under ``torch.distributed`` each rank embeds its block of the images and the probe's solver all-reduces,
so every rank gets the same head.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.optim.swa_utils import update_bn

from pipeline.evaluation.linear_probe import fit_probe
from pipeline.evaluation.ranks import rank_block
from pipeline.evaluation.suite_context import SuiteContext
from pipeline.evaluation.target_data import TransformedSubset, eval_batches, stratified_holdout
from pipeline.evaluation.targets import Target, groups_of
from pipeline.train.models import ResNeXt
from pipeline.vision.transforms import normalize

__all__ = ["probe_head", "linear_from_probe", "start_head", "recalibrate_bn", "RECALIBRATION_IMAGES"]

RECALIBRATION_IMAGES = 4096  # training images whose statistics become the trunk's BatchNorm statistics (all, below that)


def linear_from_probe(
    coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray, mean: np.ndarray, scale: np.ndarray, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``Linear(D, num_classes)``'s float32 weight (num_classes, D) and bias (num_classes,) computing the probe's logits
    on raw features.

    Args:
        coef: (K, D) weights on standardized features, or (1, D) for two classes (logits ``[0, w x + b]``);
            intercept: (K,) or (1,); classes: int64 (K,) (or the 2 classes) the rows stand for;
            mean, scale: (D,) the standardization.
    Classes absent from the probe's training labels get zero weights and the lowest bias of the others, so they
    start unlikely and can still be learned.
    """
    coef = np.asarray(coef, np.float64) / np.asarray(scale, np.float64)[None, :]
    intercept = np.asarray(intercept, np.float64) - coef @ np.asarray(mean, np.float64)
    classes = np.asarray(classes, np.int64)
    if coef.shape[0] == 1 and len(classes) == 2:  # binary: class 0's logit is 0
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    W = np.zeros((num_classes, coef.shape[1]), np.float64)
    b = np.full(num_classes, float(intercept.min()), np.float64)
    W[classes], b[classes] = coef, intercept
    return torch.from_numpy(W.astype(np.float32)), torch.from_numpy(b.astype(np.float32))


def recalibrate_bn(model: ResNeXt, batches, st: SuiteContext) -> None:
    """Set ``model``'s BatchNorm running statistics to those of ``batches`` (AdaBN, Li et al. 2016, "Revisiting Batch
    Normalization for Practical Domain Adaptation"), with :func:`torch.optim.swa_utils.update_bn` (the plain average
    over the batches of their statistics, in training mode, no gradients), before the head's probe.

    Fine-tuning's forward passes normalize with each batch's statistics. A probe fitted on features normalized with
    other running statistics (a random init's 0 and 1, or the pretraining images') would not fit the features the
    head then receives: on the demo a scratch run started from such a probe ended near chance. Every rank passes the
    same batches, so the statistics do not depend on the world size. Leaves ``model`` in eval mode.
    """

    def inputs():
        for x, _ in batches:
            x = normalize(x.to(st.device, non_blocking=True))
            yield x.contiguous(memory_format=torch.channels_last) if st.channels_last else x

    update_bn(inputs(), model, device=None)
    model.eval()


def probe_head(
    st: SuiteContext, t: Target, model: ResNeXt, idx: np.ndarray, seed: int, desc: str
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The LP-FT head of ``model`` for the training images ``idx`` of target ``t`` (positions in ``t.train_set``), on the
    features the fine-tuned head reads (the recipe's ``finetune_head_stages``; null: the penultimate layer), after
    :func:`recalibrate_bn` has set ``model``'s BatchNorm statistics to those of (up to 4,096 of) these images, in place.

    Collective under ``torch.distributed`` (every rank calls it with the same arguments). ``model`` is left in eval mode.

    Returns:
        (weight float32 (num_classes, D), bias float32 (num_classes,), info ``{"best_C", "images", "seconds"}``), D the
        width of those features (2,048 for layer4; 3,584 for layer2-4).
    """
    r = t.recipe
    # the BatchNorm statistics: from the same images on every rank (at most RECALIBRATION_IMAGES, evenly spaced)
    calib = idx[np.unique(np.linspace(0, len(idx) - 1, min(len(idx), RECALIBRATION_IMAGES)).round().astype(np.int64))]
    recalibrate_bn(
        model,
        eval_batches(TransformedSubset(t.train_set, calib, st.size), st.tc.eval_batch_size, st.workers, 0, False, desc),
        st,
    )
    block = rank_block(len(idx), st.ranks)
    batches = eval_batches(
        TransformedSubset(t.train_set, idx[block], st.size), st.tc.eval_batch_size, st.workers, 0, False, f"{desc}: decode"
    )
    stages = tuple(r["finetune_head_stages"]) if r["finetune_head_stages"] else None  # the features the head reads
    fx, fy = st.features(model, batches, len(idx[block]), f"{desc}: features", stages)
    labels = np.asarray(t.train_set.targets)[idx]
    _, hold = stratified_holdout(labels, r["probe_holdout_fraction"], seed, salt="head-holdout", groups=groups_of(t, idx))
    held = np.zeros(len(idx), bool)
    held[hold] = True
    probe = fit_probe(
        fx,
        fy,
        list(r["probe_Cs"]),
        num_classes=t.num_classes,
        holdout=held[block],
        max_iter=r["probe_max_iter"],
        tol=r["probe_tol"],
        seed=seed,
        solver=str(r["probe_solver"]),
        device=st.device,
        memory_budget_mb=r["probe_memory_mb"],
        desc=f"{desc}: head probe",
    )
    lin = probe.model
    assert lin is not None
    W, b = linear_from_probe(lin.coef, lin.intercept, lin.classes, lin.std.mean, lin.std.scale, t.num_classes)
    return W, b, {"best_C": probe.best_C, "images": int(len(idx)), "seconds": round(probe.seconds, 3)}


def start_head(
    st: SuiteContext, t: Target, model: ResNeXt, idx: np.ndarray, seed: int, desc: str
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, dict | None]:
    """The head a fine-tuning run of target ``t`` starts from, by its recipe's ``finetune_head_init``: ``(None, None)``
    for ``"random"`` (:func:`pipeline.evaluation.finetune.finetune` draws one), else :func:`probe_head`'s
    ``((weight, bias), info)``. Collective under ``torch.distributed`` for ``"probe"``."""
    if t.recipe["finetune_head_init"] != "probe":
        return None, None
    W, b, info = probe_head(st, t, model, np.asarray(idx, np.int64), seed, desc)
    return (W, b), info
