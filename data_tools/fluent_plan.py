"""Class and split planning of the Fluent Emoji targets: which image goes to which split and class.

:func:`plan_images` matches every SVG of the package to an emojibase emoji
(:mod:`data_tools.fluent_match`); :func:`build_layout` splits and chooses the classes of
the two targets, ``subgroup`` and ``group``. Class keys are emojibase's
(``en/messages.json``): 9 groups such as ``animals-nature`` and subgroups such as
``animal-mammal``, ``food-fruit``.

Split (:func:`split_units`). Train and val hold *different emoji*: every image of one
emoji, all styles and skin tones, is on one side. The unit of the split is a little
coarser than an emoji, a **family** (:func:`data_tools.fluent_match.family_key`): the
man / woman / person forms of one emoji (``man elf``, ``woman elf``, ``elf``; ``man:
blond hair``...) are near duplicates drawn alike, so they go to the same side too
(couples and families of different genders likewise). Families are drawn per subgroup,
seeded: ``round(val_fraction * n)`` of a subgroup's ``n`` families go to val, at least
``min_per_split`` on each side when ``n >= 2 * min_per_split``. One draw serves both
targets, so an emoji is in val of the group target iff it is in val of the subgroup
target. A subgroup (group) is a class when it has at least ``min_class_units`` families
(default 8: then at least 2 val and 6 train families); smaller ones are listed in the
manifest as ``dropped_classes``.

With the defaults (seed 0, val fraction 0.3, classes of >= 8 families) the 7,885 images
(1,595 emoji, 1,422 families: 991 train, 431 val) make

==========  =======  =====================  =====================  ===========================
target      classes  train images (emoji)   val images (emoji)     left out
==========  =======  =====================  =====================  ===========================
subgroup    67       4,912 (1,004)          2,262 (444)            28 subgroups of < 8 families
                                                                   (145 families, 711 images)
group       9        5,379 (1,103)          2,506 (492)            none
==========  =======  =====================  =====================  ===========================

Classes are unbalanced in images: an emoji with skin tones has 6 images in each of the
modern and flat styles, so ``people-body`` holds 4,129 of the 7,885 images, and the
smallest classes (``flags``; subgroups of 8 families) have 6 val images.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .fluent_match import ALIASES, build_label_index, family_key, load_class_keys, match_name

TARGETS = ("subgroup", "group")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Settings:
    """The knobs of the target (recorded in the manifest; a change re-renders)."""

    seed: int = 0
    val_fraction: float = 0.3
    min_per_split: int = 2
    min_class_units: int = 8
    size: int = 64


DEFAULT_SETTINGS = Settings()


@dataclass(frozen=True)
class FluentImage:
    """One Fluent SVG matched to an emoji."""

    style: str
    stem: str  # file name without .svg
    hexcode: str  # emojibase hexcode of the emoji (the skin-tone parent)
    label: str
    group: str  # emojibase group key
    subgroup: str  # emojibase subgroup key
    tone: str | None
    family: str

    @property
    def member(self) -> str:
        """Path of the SVG in the package tarball."""
        return f"package/icons/{self.style}/{self.stem}.svg"

    @property
    def filename(self) -> str:
        """``<stem>.<style>.png``."""
        return f"{self.stem}.{self.style}.png"


@dataclass
class Plan:
    """What :func:`plan_images` matched and left out."""

    images: list[FluentImage] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # "<style>/<stem>"
    duplicates: list[str] = field(default_factory=list)  # "<style>/<stem>" naming an image already matched
    no_class: list[str] = field(default_factory=list)  # "<style>/<stem>" of emoji without group/subgroup


def plan_images(
    names: Mapping[str, Iterable[str]],
    entries: list[dict],
    messages: dict,
    aliases: Mapping[str, str] = ALIASES,
) -> Plan:
    """Match the SVG stems of each style to emojibase entries.

    Args:
        names: style -> file stems (``"dog-face"``, ``"artist-dark"``).
        entries: emojibase ``en/data.json``.
        messages: emojibase ``en/messages.json``.

    Returns:
        a :class:`Plan`, images sorted by (style, stem). Two stems naming the same
        (emoji, style, tone) keep the first in sorted order; the others are ``duplicates``.
    """
    index = build_label_index(entries)
    group_keys, subgroup_keys = load_class_keys(messages)
    plan = Plan()
    seen: set[tuple[str, str, str | None]] = set()
    for style in sorted(names):
        for stem in sorted(names[style]):
            where = f"{style}/{stem}"
            found = match_name(stem, index, aliases)
            if found is None:
                plan.unmatched.append(where)
                continue
            entry, tone = found
            if entry.get("group") not in group_keys or entry.get("subgroup") not in subgroup_keys:
                plan.no_class.append(where)
                continue
            key = (entry["hexcode"], style, tone)
            if key in seen:
                plan.duplicates.append(where)
                continue
            seen.add(key)
            plan.images.append(
                FluentImage(
                    style,
                    stem,
                    entry["hexcode"],
                    entry["label"],
                    group_keys[entry["group"]],
                    subgroup_keys[entry["subgroup"]],
                    tone,
                    family_key(entry["hexcode"]),
                )
            )
    return plan


def split_units(
    unit_class: Mapping[str, str],
    val_fraction: float = 0.3,
    seed: int = 0,
    min_per_split: int = 2,
) -> dict[str, str]:
    """Assign every unit (an emoji family) to ``"train"`` or ``"val"``, stratified by class.

    For each class with ``n`` units, ``round(val_fraction * n)`` of them (half up), but
    at least ``min_per_split`` and at most ``n - min_per_split`` when
    ``n >= 2 * min_per_split``, are drawn for val by ``random.Random`` seeded with the
    seed and the class key, so one class's draw does not depend on the others.

    Args:
        unit_class: unit key -> class key.

    Returns:
        unit key -> ``"train"`` | ``"val"``.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    by_class: dict[str, list[str]] = defaultdict(list)
    for unit, cls in unit_class.items():
        by_class[cls].append(unit)
    split = {}
    for cls in sorted(by_class):
        units = sorted(by_class[cls])
        n = len(units)
        n_val = int(val_fraction * n + 0.5)
        if n >= 2 * min_per_split:
            n_val = min(max(n_val, min_per_split), n - min_per_split)
        random.Random(f"fluent_emoji:{seed}:{cls}").shuffle(units)
        for i, unit in enumerate(units):
            split[unit] = "val" if i < n_val else "train"
    return split


def family_classes(images: Iterable[FluentImage], attr: str = "subgroup") -> dict[str, str]:
    """family -> its class (``attr`` of its images; the most common, then the first sorted)."""
    votes: dict[str, Counter] = defaultdict(Counter)
    for im in images:
        votes[im.family][getattr(im, attr)] += 1
    return {fam: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for fam, c in votes.items()}


def choose_classes(
    images: Iterable[FluentImage], family_split: Mapping[str, str], attr: str, min_class_units: int, min_per_split: int
) -> tuple[list[str], dict[str, int]]:
    """Classes (values of ``attr``) with >= ``min_class_units`` families and >= ``min_per_split`` per split.

    Returns:
        (kept class keys sorted, dropped class key -> its number of families).
    """
    fams: dict[str, set[str]] = defaultdict(set)
    for im in images:
        fams[getattr(im, attr)].add(im.family)
    kept, dropped = [], {}
    for cls, fs in sorted(fams.items()):
        per_split = Counter(family_split[f] for f in fs)
        if len(fs) >= min_class_units and all(per_split[s] >= min_per_split for s in SPLITS):
            kept.append(cls)
        else:
            dropped[cls] = len(fs)
    return kept, dropped


def build_layout(plan: Plan, settings: Settings) -> dict:
    """Split and class choice for both targets.

    Returns:
        ``{"family_split": {family: split}, "targets": {target: {"classes": [...],
        "dropped": {class: n families}, "files": [(image, split, class, relpath)]}}}``
        with relpath ``<target>/<split>/<class>/<stem>.<style>.png``.
    """
    fam_class = family_classes(plan.images, "subgroup")
    family_split = split_units(fam_class, settings.val_fraction, settings.seed, settings.min_per_split)
    targets = {}
    for target in TARGETS:
        kept, dropped = choose_classes(plan.images, family_split, target, settings.min_class_units, settings.min_per_split)
        keep = set(kept)
        files = []
        for im in plan.images:
            cls = getattr(im, target)
            if cls in keep:
                split = family_split[im.family]
                files.append((im, split, cls, f"{target}/{split}/{cls}/{im.filename}"))
        targets[target] = {"classes": kept, "dropped": dropped, "files": files}
    return {"family_split": family_split, "targets": targets}
