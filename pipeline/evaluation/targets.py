"""The transfer suite's targets: each one opened and checked before any work, its data settings and val subset.

A target is a folder in the ImageNet layout (``<root>/<train_split>/<class>/<img>``,
``<root>/<val_split>/<class>/<img>``) with its effective recipe
(:func:`pipeline.config.transfer_recipe`). Its data settings are ``low_data_per_class`` labelled
images per class (seeded, stratified, nested subsets) and the "full" setting (``None``: all
training images, at most ``max_train_per_class`` per class).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import transfer_recipe
from pipeline.errors import ConfigError
from pipeline.evaluation.target_data import emoji_groups, open_split, per_class_order, relative_paths

__all__ = ["Target", "open_targets", "val_subset", "setting_label", "groups_of"]

log = logging.getLogger(__name__)


@dataclass
class Target:
    """One target of the suite, opened (its folders checked) before any work."""

    name: str
    recipe: dict
    train_set: Any
    val_set: Any
    # zero-byte image files left out of each split ({"train": [<class>/<file>], "val": [...]}): counted in results.json
    empty_files: dict = field(default_factory=dict)
    # non-empty files whose first bytes are no image format's, left out the same way
    unreadable_files: dict = field(default_factory=dict)
    # int64 (N train,): images of one emoji family share an id (the target's emoji_index; else one id per image), so
    # the held-out parts that choose the probe's C and the fine-tuning lr hold emoji the fit part never saw, as val does
    train_groups: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.train_set.classes)


def open_targets(tc) -> list[Target]:
    """Every target of ``transfer.targets``, its splits opened and checked, in config order.

    Raises:
        FileNotFoundError: a split folder or an ``emoji_index`` file is missing.
        pipeline.errors.ConfigError: train and val classes differ, or fewer than 2 classes.
    """
    out = []
    for name in tc.targets:
        r = transfer_recipe(tc, name)
        empty: dict[str, list[str]] = {"train": [], "val": []}
        unreadable: dict[str, list[str]] = {"train": [], "val": []}
        train_set = open_split(r["root"], r["train_split"], empty["train"], unreadable["train"])
        val_set = open_split(r["root"], r["val_split"], empty["val"], unreadable["val"])
        for what, found in (("zero-byte", empty), ("unreadable (not an image format)", unreadable)):
            for split, files in found.items():
                if files:
                    msg = "transfer target %s: %d %s image file(s) in %s left out, e.g. %s"
                    log.warning(msg, name, len(files), what, split, files[:3])
        where = f"transfer.targets.{name}.root"
        if train_set.classes != val_set.classes:
            raise ConfigError(
                f"config error at {where}: the class folders of {r['train_split']!r} and {r['val_split']!r} "
                f"differ ({len(train_set.classes)} vs {len(val_set.classes)} classes)"
            )
        if len(train_set.classes) < 2:
            raise ConfigError(f"config error at {where}: the target needs >= 2 classes, found {len(train_set.classes)}")
        if r["emoji_index"] and not Path(r["emoji_index"]).is_file():
            raise FileNotFoundError(f"transfer.targets.{name}.emoji_index: file {r['emoji_index']} does not exist")
        groups = emoji_groups(r["emoji_index"], relative_paths(train_set))
        out.append(Target(name, r, train_set, val_set, empty, unreadable, groups))
    return out


def val_subset(labels, max_images: int | None, seed: int) -> np.ndarray:
    """All val positions, or a stratified seeded subset of ``max_images`` (classes taken round-robin)."""
    n = len(labels)
    if max_images is None or max_images >= n:
        return np.arange(n)
    order = per_class_order(labels, seed, salt="val")
    ranked = sorted((r, c, int(i)) for c, o in enumerate(order) for r, i in enumerate(o))
    return np.sort(np.array([i for _, _, i in ranked[:max_images]], dtype=np.int64))


def groups_of(t: Target, idx: np.ndarray) -> np.ndarray | None:
    """The emoji-family group ids (:attr:`Target.train_groups`) of training positions ``idx``; None when the target has
    no emoji index (every image its own group: :func:`pipeline.evaluation.target_data.stratified_holdout` then splits
    images as it always did)."""
    if t.train_groups is None or not t.recipe.get("emoji_index"):
        return None
    return t.train_groups[np.asarray(idx, np.int64)]


def setting_label(k: int | None) -> str:
    """A data setting's name in logs and ``lr_selection.setting``: ``"full"`` for None, else the images per class."""
    return "full" if k is None else str(int(k))
