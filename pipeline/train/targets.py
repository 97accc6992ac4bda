"""The multi-label training targets the losses (:mod:`pipeline.train.losses`) compare the logits with.

Targets (Mahajan et al. 2018, section 2.2; SWAG authors in facebookresearch/SWAG issue 15):
an image with ``k`` canonical labels gets the target ``1/k`` on each of them, and the loss
is the cross-entropy of the softmax against that distribution (:func:`soft_target`); the
per-class sigmoid / binary cross-entropy alternative uses :func:`multi_hot`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["batch_multi_hot", "batch_soft_targets", "soft_target", "multi_hot"]


def _unique_ids(class_ids: Sequence[int] | torch.Tensor | np.ndarray, num_classes: int) -> torch.Tensor:
    ids = torch.as_tensor(np.asarray(class_ids, dtype=np.int64).reshape(-1))
    if ids.numel() == 0:
        raise ValueError("a sample needs at least one class id (samples without labels are excluded by vocab)")
    if int(ids.min()) < 0 or int(ids.max()) >= num_classes:
        raise ValueError(f"class ids must be in [0, {num_classes}), got {ids.tolist()}")
    return torch.unique(ids)


def batch_multi_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Padded class ids (N, K) int64 (-1 = none) -> multi-hot (N, C) float32, on their device.

    The per-class sigmoid / binary cross-entropy target; repeated ids count once.
    """
    out = torch.zeros(labels.shape[0], num_classes, dtype=torch.float32, device=labels.device)
    valid = labels >= 0
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)
    out[rows[valid], labels[valid]] = 1.0
    return out


def batch_soft_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Padded class ids (N, K) int64 (-1 = none) -> soft targets (N, C) float32, ``1/k`` on each.

    Mahajan et al. 2018, section 2.2; SWAG issue 15: "convert the multi-label targets to a
    probability by normalizing by the number of positive labels, and then apply cross
    entropy". Use with ``torch.nn.functional.cross_entropy(logits, targets)``.
    """
    hot = batch_multi_hot(labels, num_classes)
    return hot / hot.sum(dim=1, keepdim=True).clamp_min(1.0)


def soft_target(class_ids: Sequence[int] | torch.Tensor | np.ndarray, num_classes: int) -> torch.Tensor:
    """One sample's soft target (:func:`batch_soft_targets` for a single row).

    Args:
        class_ids: the sample's class ids (repeats count once).
        num_classes: C.

    Returns:
        torch.float32 (C,), sums to 1.

    Raises:
        ValueError: no class ids, or an id outside ``[0, C)``.
    """
    return batch_soft_targets(_unique_ids(class_ids, num_classes)[None], num_classes)[0]


def multi_hot(class_ids: Sequence[int] | torch.Tensor | np.ndarray, num_classes: int) -> torch.Tensor:
    """One sample's multi-hot target (:func:`batch_multi_hot` for a single row).

    Returns:
        torch.float32 (C,) of zeros and ones.

    Raises:
        ValueError: as :func:`soft_target`.
    """
    return batch_multi_hot(_unique_ids(class_ids, num_classes)[None], num_classes)[0]
