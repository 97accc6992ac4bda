"""Pretraining losses: multi-label softmax (the paper's) and per-class sigmoid BCE.

Mahajan et al. 2018 (sec. 2.1 and 3.1): an image with k canonical hashtags gets the
target 1/k on each of them, and the loss is the cross-entropy between that target and
the softmax over all classes; this beat per-class sigmoids with binary cross-entropy.
The SWAG authors put it as "convert the multi-label targets to a probability by
normalizing by the number of positive labels, and then apply cross entropy"
(facebookresearch/SWAG issue 15).

Both losses accept the same target tensor, a ``(N, C)`` float multi-hot row or its
normalized 1/k soft target, so :func:`make_loss` switches between them without
touching the data path: the softmax loss normalizes each row to sum to 1 (a no-op for
soft targets), the sigmoid loss takes ``target > 0`` as the positives (a no-op for
multi-hot rows).

Gradient accumulation and DDP
-----------------------------
Goyal et al. 2017 (sec. 3, Remark 3: "normalize the per-worker loss by total minibatch
size kn, not per-worker size n"): the gradient of one optimizer step must be the gradient of the mean
loss over the *global* batch of ``B`` samples (all ranks, all micro-batches). With
``reduction="mean"`` over a micro-batch of ``b`` samples, multiply each micro-batch
loss by :func:`microbatch_loss_scale` before ``backward()``: ``b * W / B`` when DDP
averages gradients over the ``W`` ranks (PyTorch's default), ``b / B`` when gradients
are summed (a raw ``all_reduce(SUM)``). With equal micro-batches under DDP this is
``1 / accumulation_steps``. Scale the loss, never the learning rate, to do this
averaging: the learning rate follows the linear scaling rule on ``B``
(:func:`pipeline.train.optim.scaled_lr`), and with weight decay the two are not
interchangeable (Goyal et al. sec. 3, Remark 1: scaling the cross-entropy loss is not
equivalent to scaling the learning rate).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "make_loss", "microbatch_loss_scale", "multilabel_softmax_loss", "normalize_targets", "sigmoid_bce_loss"]

LossFn = Callable[..., torch.Tensor]


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != 2 or logits.shape != target.shape:
        raise ValueError(f"logits and target must both be (N, C); got {tuple(logits.shape)} and {tuple(target.shape)}")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def normalize_targets(target: torch.Tensor) -> torch.Tensor:
    """Rows of a ``(N, C)`` non-negative float target divided by their sums (1/k on each of
    k positives; Mahajan et al. 2018, sec. 2.1). All-zero rows stay zero."""
    return target / target.sum(dim=1, keepdim=True).clamp_min(torch.finfo(target.dtype).tiny)


def multilabel_softmax_loss(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy between ``softmax(logits)`` and the normalized target (Mahajan et al. 2018).

    ``loss_i = -sum_c t_ic * log_softmax(logits_i)_c`` with ``t_i = target_i / sum(target_i)``;
    computed in float32 with ``log_softmax`` (stable for any finite logits; gradient
    ``softmax - t`` is bounded by 1 per element).

    Args:
        logits: ``(N, C)`` float (any float dtype; bf16/fp16 under autocast are upcast).
        target: ``(N, C)`` non-negative float, a soft target whose rows sum to 1 (1/k on
            each of a sample's k classes) or a multi-hot row (normalized here). A row of
            zeros contributes 0 but still counts in the mean; vocab drops such images.
        reduction: "mean" over the batch (default), "sum", or "none" (``(N,)``).
    Returns:
        float32 scalar (or ``(N,)``), in nats.
    Raises:
        ValueError: on shape mismatch or an unknown reduction.
    """
    _check(logits, target)
    t = normalize_targets(target.float())
    logp = F.log_softmax(logits.float(), dim=1)
    return _reduce(-(t * logp).sum(dim=1), reduction)


def sigmoid_bce_loss(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per-class sigmoid + binary cross-entropy, the paper's comparison loss (Mahajan et al. 2018).

    ``loss_i = sum_c BCE(sigmoid(logits_ic), y_ic)`` with ``y = (target > 0)``; the default
    reduction is the *sum over classes, mean over the batch*. Why not the mean over both
    (PyTorch's default): it divides every gradient by C (1.5k to 17k hashtag classes), so
    the loss and its learning rate would depend on the vocabulary size, and the
    comparison with the softmax loss (also a per-sample sum over classes, then a batch
    mean) at the same learning rate would be unfair. Per-sample sums keep the gradient of
    each positive label at ``sigmoid(z) - 1``, as in the softmax loss's ``softmax - t``.

    Args:
        logits: ``(N, C)`` float (upcast to float32).
        target: ``(N, C)`` float multi-hot (or soft target; positives are ``target > 0``).
        reduction: "mean" over the batch of per-sample sums (default), "sum", or "none" (``(N,)``).
    Returns:
        float32 scalar (or ``(N,)``), in nats.
    Raises:
        ValueError: on shape mismatch or an unknown reduction.
    """
    _check(logits, target)
    y = (target > 0).float()
    per_elem = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
    return _reduce(per_elem.sum(dim=1), reduction)


LOSSES: dict[str, LossFn] = {"softmax": multilabel_softmax_loss, "sigmoid": sigmoid_bce_loss}


def make_loss(name: str) -> LossFn:
    """The loss ``fn(logits (N, C), target (N, C), reduction="mean") -> scalar`` by name.

    Raises:
        ValueError: for a name other than "softmax" or "sigmoid".
    """
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None


def microbatch_loss_scale(
    micro_batch_size: int, global_batch_size: int, world_size: int = 1, ranks_averaged: bool = True
) -> float:
    """Factor to multiply a micro-batch's *mean* loss by before ``backward()``.

    After all micro-batches of a step are accumulated (and reduced across ranks), the
    gradient equals that of the mean loss over the ``global_batch_size`` samples
    (Goyal et al. 2017, sec. 3, Remark 3: normalize by the total minibatch kn).

    Args:
        micro_batch_size: samples in this micro-batch on this rank (b).
        global_batch_size: samples in the whole optimizer step, all ranks and micro-batches (B).
        world_size: ranks (W).
        ranks_averaged: True for DDP (it divides the summed gradient by W): scale ``b*W/B``;
            False for a plain ``all_reduce(SUM)``: scale ``b/B``.
    Raises:
        ValueError: for non-positive sizes or b > B.
    """
    if micro_batch_size <= 0 or global_batch_size <= 0 or world_size <= 0:
        raise ValueError("batch sizes and world_size must be > 0")
    if micro_batch_size > global_batch_size:
        raise ValueError(f"micro batch {micro_batch_size} > global batch {global_batch_size}")
    return micro_batch_size * (world_size if ranks_averaged else 1) / global_batch_size
