"""Fetch Microsoft's Fluent Emoji SVGs and render them as an in-domain transfer target.

Two steps, both run by ``python -m data_tools.fetch_demo`` (source ``fluent_emoji``):

1. **fetch** (:func:`fetch_fluent_emoji`): ``npm pack fluentui-emoji@1.3.0`` (MIT; the
   Fluent Emoji artwork, Copyright (c) Microsoft Corporation, repackaged on npm by
   Mohammad Abu Mattar) into ``<cache>/fluentui_emoji_npm/``: the 23.8 MB tarball is kept
   as is (its SHA-256 pinned), with its ``LICENSE`` and ``package.json`` beside it and a
   ``.complete.json`` marker counting the SVGs of ``package/icons/<style>/<name>.svg``:
   3,145 ``modern``, 3,145 ``flat`` and 1,595 ``high-contrast``. The labels come from
   emojibase-data 17.0.0 of the ``npm`` source, fetched first if missing.
2. **render** (:func:`convert_fluent_emoji`): every SVG whose name matches an emojibase
   emoji is rendered at 64x64, composited on white, as an RGB PNG, into two targets in the
   ImageNet folder layout::

       <cache>/fluent_emoji/subgroup/{train,val}/<subgroup-key>/<name>.<style>.png
       <cache>/fluent_emoji/group/{train,val}/<group-key>/<name>.<style>.png

   e.g. ``subgroup/train/animal-mammal/dog-face.modern.png``. Class keys are emojibase's
   (``en/messages.json``): 9 groups such as ``animals-nature`` and subgroups such as
   ``animal-mammal``, ``food-fruit``. The group target holds the same images (hard links
   where the file system allows) plus those of subgroups too small to be classes.

Matching (no labels ship with the SVGs). A file name is the CLDR short name slugified
(:func:`slugify`: accents removed, lower case, apostrophes dropped, runs of other
characters -> ``-``), so ``dog-face`` is emojibase's ``dog face``. Skin-tone variants
end in ``-default``, ``-light``, ``-medium-light``, ``-medium``, ``-medium-dark`` or
``-dark`` (``artist-dark``); the suffix is removed only when the full name matches
nothing (``horizontal-traffic-light`` is an emoji, not a tone of one) and, for a tone
other than ``-default``, only when the emoji has skin tones in emojibase. Names that
Microsoft spells differently from CLDR (``blackbird``, ``hugging-face``,
``knocked-out-face``, ``person-elf``, ``keycap-hashtag``...) are in :data:`ALIASES`
(without them 107 modern, 107 flat and 32 high-contrast names match nothing and 1,563
emoji are found; ``pinata`` matches ``piñata`` by the accent removal). With them, every
file of the package matches (7,885 files, 1,595 distinct emoji); names that still match
nothing would be left out, counted and listed in ``manifest.json``.

Split (:func:`split_units`). Train and val hold *different emoji*: every image of one
emoji, all styles and skin tones, is on one side. The unit of the split is a little
coarser than an emoji, a **family** (:func:`family_key`): the man / woman / person forms
of one emoji (``man elf``, ``woman elf``, ``elf``; ``man: blond hair``...) are near
duplicates drawn alike, so they go to the same side too (couples and families of
different genders likewise). Families are drawn per subgroup, seeded:
``round(val_fraction * n)`` of a subgroup's ``n`` families go to val, at least
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

Output files besides the images: ``manifest.json`` (inputs, seed, thresholds, counts
per split and class, left-out names, dropped classes), ``emoji.jsonl`` (one row per
emoji: hexcode, label, family, emojibase group and subgroup, split, files
``<style>/<stem>``, and ``classes``: target -> its class there, for the targets it is
in) and ``.complete.json``. The render is resumable: it runs in
``<cache>/.fluent_emoji.partial/`` whose images are written atomically and kept by a
rerun with the same plan; a finished output with the same inputs and settings is
skipped. Rendering the 7,885 images takes about 155 CPU seconds: 2.3 to 3.7 minutes with
2 worker processes on 2 (shared) CPU cores; the output is 36 MB.

Run alone: ``python -m data_tools.fetch_fluent_emoji --cache data/raw [--workers N]``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import tarfile
import unicodedata
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from pipeline.io.atomic import fsync_dir

from .common import (
    LOG,
    SourceError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    cache_parser,
    is_safe_relpath,
    marker_fingerprint,
    png_size,
    progress,
    read_marker,
    remove_path,
    run,
    run_cli,
    sha256_file,
    staged_dir,
    write_marker,
)
from .convert_emoji import normalize_hexcode
from .fetch_npm import EMOJIBASE_DATA, fetch_npm
from .index_io import SOURCES_JSON, converted_dir, update_sources

SOURCE = "fluent_emoji"
PACKAGE = "fluentui-emoji"
VERSION = "1.3.0"
PACKAGE_DIR = "fluentui_emoji_npm"
TARBALL = f"{PACKAGE}-{VERSION}.tgz"
TARBALL_SHA256 = "ec892e607e854859b812c7d827801756adc19955b0ef56d4ae8afcddd19492c5"
STYLES = ("modern", "flat", "high-contrast")
EXPECTED_SVGS = {"modern": 3145, "flat": 3145, "high-contrast": 1595}
EMOJIBASE_MESSAGES = "node_modules/emojibase-data/en/messages.json"
OUT_DIR = "fluent_emoji"
TARGETS = ("subgroup", "group")
SPLITS = ("train", "val")
LICENSE = (
    "MIT (Fluent Emoji, Copyright (c) Microsoft Corporation; npm fluentui-emoji 1.3.0 by Mohammad Abu Mattar); "
    "labels: emojibase-data 17.0.0, MIT"
)

# Longest first: "-medium-light" must be tried before "-light".
TONE_SUFFIXES = ("-medium-light", "-medium-dark", "-default", "-medium", "-light", "-dark")

ALIASES: dict[str, str] = {
    # Fluent name (tone suffix removed) -> emojibase label, where Microsoft's name is not
    # the slug of the CLDR name: older CLDR names, Microsoft's own, slug collisions.
    "blackbird": "black bird",
    "hugging-face": "smiling face with open hands",  # CLDR's name before v14
    "knocked-out-face": "face with crossed-out eyes",
    "pouting-face": "enraged face",  # CLDR's name before 2021
    "red-triangle": "red triangle pointed up",
    "phoenix-bird": "phoenix",
    "stuffedbread": "stuffed flatbread",
    "stuffedbread-flat": "stuffed flatbread",  # the flat style's file
    "keycap-asterisk": "keycap: *",  # "keycap: *" and "keycap: #" both slugify to "keycap"
    "keycap-hashtag": "keycap: #",
    "man-blonde-hair": "man: blond hair",
    "person-blonde-hair": "person: blond hair",
    "woman-blonde-hair": "woman: blond hair",
    "man-deaf": "deaf man",
    "person-deaf": "deaf person",
    "woman-deaf": "deaf woman",
    "man-merpeople": "merman",
    "person-merpeople": "merperson",
    "woman-merpeople": "mermaid",
    "man-with-bunny-ears": "men with bunny ears",
    "person-with-bunny-ears": "people with bunny ears",
    "woman-with-bunny-ears": "women with bunny ears",
    "man-wrestling": "men wrestling",
    "person-wrestling": "people wrestling",
    "woman-wrestling": "women wrestling",
    "person-elf": "elf",
    "person-fairy": "fairy",
    "person-genie": "genie",
    "person-mage": "mage",
    "person-superhero": "superhero",
    "person-supervillain": "supervillain",
    "person-vampire": "vampire",
    "person-zombie": "zombie",
}

_SKIN = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"}
_GENDER = {"2640", "2642"}
_ADULT = {"1F468": "1F9D1", "1F469": "1F9D1"}  # man, woman -> person
# Gendered pairs/triples that are separate code points rather than ZWJ sequences.
_FAMILY_OF = {
    "1F474": "1F9D3",
    "1F475": "1F9D3",  # old man, old woman -> older person
    "1F466": "1F9D2",
    "1F467": "1F9D2",  # boy, girl -> child
    "1F934": "1FAC5",
    "1F478": "1FAC5",  # prince, princess -> person with crown
    "1F57A": "1F483",  # man dancing -> woman dancing
    "1F385": "1F9D1-200D-1F384",
    "1F936": "1F9D1-200D-1F384",  # Santa, Mrs. Claus -> mx claus
    "1F46B": "1F9D1-200D-1F91D-200D-1F9D1",
    "1F46C": "1F9D1-200D-1F91D-200D-1F9D1",
    "1F46D": "1F9D1-200D-1F91D-200D-1F9D1",  # woman and man / men / women holding hands
}


# --------------------------------------------------------------------------- matching


def slugify(text: str) -> str:
    """Fluent Emoji's file-name form of a CLDR name: ``"Piñata"`` -> ``"pinata"``.

    Accents are removed (NFKD, combining marks dropped), apostrophes dropped, the rest
    lower-cased with every run of characters other than ``a-z0-9`` turned into one ``-``
    (none at either end): ``"man’s shoe"`` -> ``"mans-shoe"``, ``"keycap: 1"`` -> ``"keycap-1"``.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("'", "").replace("\u2019", "")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def split_tone(stem: str) -> tuple[str, str | None]:
    """``"artist-medium-dark"`` -> ``("artist", "medium-dark")``; no tone suffix -> ``(stem, None)``."""
    for suffix in TONE_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)], suffix[1:]
    return stem, None


@dataclass(frozen=True)
class LabelIndex:
    """Emojibase entries by the slug of their label, and by label.

    Attributes:
        by_slug: slug -> entry, for slugs that exactly one emojibase label has.
        by_label: label -> entry (for :data:`ALIASES`).
        collisions: slug -> the labels sharing it (left out of ``by_slug``).
    """

    by_slug: dict[str, dict]
    by_label: dict[str, dict]
    collisions: dict[str, list[str]]


def build_label_index(entries: Iterable[dict]) -> LabelIndex:
    """Index emojibase ``data.json`` entries (top level; skin variants are matched by suffix)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    by_label = {}
    for e in entries:
        if e.get("label") and e.get("hexcode"):
            groups[slugify(e["label"])].append(e)
            by_label[e["label"]] = e
    by_slug = {s: es[0] for s, es in groups.items() if len(es) == 1}
    collisions = {s: sorted(e["label"] for e in es) for s, es in groups.items() if len(es) > 1}
    return LabelIndex(by_slug, by_label, collisions)


def _lookup(name: str, index: LabelIndex, aliases: Mapping[str, str]) -> dict | None:
    if name in aliases:
        return index.by_label.get(aliases[name])
    return index.by_slug.get(name)


def match_name(stem: str, index: LabelIndex, aliases: Mapping[str, str] = ALIASES) -> tuple[dict, str | None] | None:
    """The emojibase entry a Fluent file stem names, and its tone; None if there is none.

    The full stem is tried first (alias, then slug); then the stem without its tone
    suffix, accepted for ``-default`` always and for the other tones only if the entry
    has ``skins``. Returns ``(entry, tone)`` with tone e.g. ``"medium-dark"`` or None.
    """
    entry = _lookup(stem, index, aliases)
    if entry is not None:
        return entry, None
    base, tone = split_tone(stem)
    if tone is None:
        return None
    entry = _lookup(base, index, aliases)
    if entry is None or (tone != "default" and not entry.get("skins")):
        return None
    return entry, tone


def family_key(hexcode: str) -> str:
    """The split unit of an emoji: its hexcode without skin tones and gender.

    ``FE0F``, skin-tone modifiers and ZWJ + ``♀``/``♂`` are removed, man and woman
    (``1F468``, ``1F469``) become person (``1F9D1``) anywhere in the sequence, and a few
    gendered code points map to their neutral form (old man -> older person, boy ->
    child, prince -> person with crown...). So ``man elf`` (``1F9DD-200D-2642-FE0F``),
    ``woman elf`` and ``elf`` (``1F9DD``) share the family ``1F9DD``, and ``man health
    worker`` (``1F468-200D-2695-FE0F``) is in ``health worker``'s (``1F9D1-200D-2695``).
    """
    parts = [p for p in normalize_hexcode(hexcode).split("-") if p not in _SKIN]
    kept: list[str] = []
    i = 0
    while i < len(parts):
        if parts[i] == "200D" and i + 1 < len(parts) and parts[i + 1] in _GENDER:
            i += 2
            continue
        kept.append(_ADULT.get(parts[i], parts[i]))
        i += 1
    key = "-".join(kept)
    return _FAMILY_OF.get(key, key)


def load_class_keys(messages: dict) -> tuple[dict[int, str], dict[int, str]]:
    """(group number -> key, subgroup number -> key) from emojibase ``en/messages.json``.

    Raises:
        ValueError: if ``groups`` or ``subgroups`` is missing or malformed.
    """
    try:
        groups = {int(g["order"]): str(g["key"]) for g in messages["groups"]}
        subgroups = {int(g["order"]): str(g["key"]) for g in messages["subgroups"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"emojibase messages.json: no groups/subgroups order+key ({exc})") from exc
    return groups, subgroups


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


# --------------------------------------------------------------------------- split


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


# --------------------------------------------------------------------------- render


def render_svg(data: bytes, size: int = 64) -> bytes:
    """Rasterize SVG bytes to a ``size`` x ``size`` RGB PNG (alpha composited on white).

    cairosvg fits the drawing into the square keeping its aspect ratio (the few
    32x33 view boxes get a thin white margin); ``unsafe=False``: no external files.

    Raises:
        ValueError: if cairosvg cannot render the SVG.
    """
    import cairosvg  # lazily: needs the system libcairo2
    from PIL import Image as PILImage

    try:
        png = cairosvg.svg2png(bytestring=data, output_width=size, output_height=size, unsafe=False)
    except Exception as exc:  # noqa: BLE001 - cairosvg raises many types on bad input
        raise ValueError(f"cairosvg: {type(exc).__name__}: {exc}"[:300]) from exc
    img = PILImage.open(io.BytesIO(png)).convert("RGBA")
    if img.size != (size, size):
        img = img.resize((size, size), PILImage.LANCZOS)
    canvas = PILImage.new("RGBA", img.size, (255, 255, 255, 255))
    canvas.alpha_composite(img)
    out = io.BytesIO()
    canvas.convert("RGB").save(out, format="PNG", optimize=False)
    return out.getvalue()


def _render_job(job: tuple[bytes, str, int]) -> str:
    data, dest, size = job
    atomic_write_bytes(dest, render_svg(data, size))
    return dest


def _complete_png(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size > 0 and png_size(path) == (size, size)
    except (OSError, ValueError):
        return False


def read_svgs(tarball: Path, members: set[str] | None = None) -> dict[str, bytes]:
    """``package/icons/<style>/<name>.svg`` member -> bytes, from the npm tarball.

    Only regular files with safe relative names are read (``members``: only these).
    """
    out = {}
    with tarfile.open(tarball, "r:gz") as tf:
        for m in tf:
            name = m.name
            if not (m.isfile() and is_safe_relpath(name)):
                continue
            if not (name.startswith("package/icons/") and name.endswith(".svg")):
                continue
            if members is not None and name not in members:
                continue
            fh = tf.extractfile(m)
            if fh is not None:
                out[name] = fh.read()
    return out


def svg_names(members: Iterable[str]) -> dict[str, list[str]]:
    """style -> stems, from ``package/icons/<style>/<stem>.svg`` member names (other styles ignored)."""
    names: dict[str, list[str]] = {s: [] for s in STYLES}
    for name in members:
        parts = name.split("/")
        if len(parts) == 4 and parts[:2] == ["package", "icons"] and parts[2] in names and parts[3].endswith(".svg"):
            names[parts[2]].append(parts[3][: -len(".svg")])
    return names


# --------------------------------------------------------------------------- fetch


def verify_tarball(tarball: Path) -> dict[str, int]:
    """Check the tarball's SHA-256 and SVG counts per style; return the counts.

    Raises:
        SourceError: on a checksum or count mismatch, or an unreadable tarball.
    """
    digest = sha256_file(tarball)
    if digest != TARBALL_SHA256:
        raise SourceError(SOURCE, f"{tarball.name}: SHA-256 {digest}, expected {TARBALL_SHA256}")
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            names = svg_names(m.name for m in tf if m.isfile())
    except (OSError, tarfile.TarError) as exc:
        raise SourceError(SOURCE, f"cannot read {tarball.name}: {exc}") from exc
    counts = {f"svg_{s}": len(names[s]) for s in STYLES}
    for s in STYLES:
        if counts[f"svg_{s}"] != EXPECTED_SVGS[s]:
            raise SourceError(SOURCE, f"expected {EXPECTED_SVGS[s]:,} {s} SVGs, found {counts[f'svg_{s}']:,}")
    return counts


def fetch_fluent_emoji(cache: Path, force: bool = False, keep_downloads: bool = False) -> dict:
    """``npm pack fluentui-emoji@1.3.0`` into ``<cache>/fluentui_emoji_npm/``; return the marker.

    The emojibase labels of the ``npm`` source are fetched too when missing (a complete
    ``npm`` source is skipped). ``keep_downloads`` is accepted for a uniform signature:
    the tarball is the kept artifact.

    Raises:
        SourceError: npm failed, or the checksum or a count check failed.
    """
    cache = Path(cache)
    if read_marker(cache / "npm") is None:
        LOG.info("%s: needs emojibase-data of the npm source; fetching it", SOURCE)
        fetch_npm(cache)
    dest = cache / PACKAGE_DIR
    if not force and (marker := read_marker(dest)) is not None:
        LOG.info("%s: already complete (%s), skipping", SOURCE, dest)
        return marker
    with staged_dir(dest) as tmp:
        LOG.info("%s: npm pack %s@%s", SOURCE, PACKAGE, VERSION)
        run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", ".", "--silent"], SOURCE, cwd=tmp)
        tarball = tmp / TARBALL
        if not tarball.is_file():
            raise SourceError(SOURCE, f"npm pack produced no {TARBALL}")
        counts = verify_tarball(tarball)
        with tarfile.open(tarball, "r:gz") as tf:
            for name in ("LICENSE", "package.json"):
                fh = tf.extractfile(f"package/{name}")
                if fh is not None:
                    atomic_write_bytes(tmp / name, fh.read())
        LOG.info("%s: verified %s", SOURCE, ", ".join(f"{k}={v:,}" for k, v in counts.items()))
        marker = write_marker(
            tmp, SOURCE, versions={PACKAGE: VERSION}, tarball=TARBALL, sha256=TARBALL_SHA256, counts=counts, license=LICENSE
        )
    return marker


# --------------------------------------------------------------------------- convert


@dataclass(frozen=True)
class Settings:
    """The knobs of the target (recorded in the manifest; a change re-renders)."""

    seed: int = 0
    val_fraction: float = 0.3
    min_per_split: int = 2
    min_class_units: int = 8
    size: int = 64


def _load_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(SOURCE, f"cannot read {what} {path}: {exc}") from exc


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


def _counts(files: list[tuple[FluentImage, str, str, str]]) -> dict:
    out: dict = {}
    for split in SPLITS:
        rows = [(im, cls) for im, s, cls, _ in files if s == split]
        per_class: dict[str, dict[str, int]] = {}
        for cls in sorted({c for _, c in rows}):
            ims = [im for im, c in rows if c == cls]
            per_class[cls] = {
                "images": len(ims),
                "emoji": len({im.hexcode for im in ims}),
                "families": len({im.family for im in ims}),
            }
        out[split] = {
            "images": len(rows),
            "emoji": len({im.hexcode for im, _ in rows}),
            "families": len({im.family for im, _ in rows}),
            "per_class": per_class,
        }
    return out


def _plan_digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    tmp = dst.with_name(f".{dst.name}.link")
    remove_path(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def render_target(
    svgs: Mapping[str, bytes],
    plan: Plan,
    out: Path,
    settings: Settings = Settings(),
    workers: int = 1,
    inputs: dict | None = None,
) -> dict:
    """Render ``plan`` into the folder ``out`` (both targets, manifest, emoji.jsonl).

    ``out`` is filled in place: images already there (whole PNGs of the right size,
    written atomically by an earlier run of the same plan) are kept, the others are
    rendered by ``workers`` processes (1: in this process). Callers that want an
    all-or-nothing folder render into a partial folder and rename it (as
    :func:`convert_fluent_emoji` does).

    Args:
        svgs: tarball member (``package/icons/<style>/<stem>.svg``) -> SVG bytes.
        inputs: recorded as ``inputs`` in the manifest (versions, fingerprints).

    Returns:
        the manifest (also written to ``out/manifest.json``).

    Raises:
        SourceError: an SVG of the plan is missing or cannot be rendered.
    """
    out = Path(out)
    layout = build_layout(plan, settings)
    # Render each image once, into its subgroup file if it has one, else its group file.
    first: dict[tuple[str, str], str] = {}
    links: list[tuple[str, str]] = []
    for target in TARGETS:
        for im, _split, _cls, rel in layout["targets"][target]["files"]:
            key = (im.style, im.stem)
            if key in first:
                links.append((first[key], rel))
            else:
                first[key] = rel
    jobs = []
    members = {(im.style, im.stem): im.member for im in plan.images}
    for key, rel in first.items():
        dest = out / rel
        if _complete_png(dest, settings.size):
            continue
        data = svgs.get(members[key])
        if data is None:
            raise SourceError(SOURCE, f"{members[key]} is not in the tarball")
        jobs.append((data, str(dest), settings.size))
    LOG.info(
        "%s: %d images to render (%d already there), %d links, %d worker(s)",
        SOURCE,
        len(jobs),
        len(first) - len(jobs),
        len(links),
        workers,
    )
    for _data, dest, _ in jobs:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
    try:
        if workers <= 1:
            for job in progress(jobs, desc=SOURCE, unit="img"):
                _render_job(job)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in progress(pool.map(_render_job, jobs, chunksize=16), total=len(jobs), desc=SOURCE, unit="img"):
                    pass
    except ValueError as exc:
        raise SourceError(SOURCE, f"render failed: {exc}") from exc
    for src, dst in links:
        _link_or_copy(out / src, out / dst)

    family_split = layout["family_split"]
    by_emoji: dict[str, dict] = {}
    for im in plan.images:
        row = by_emoji.setdefault(
            im.hexcode,
            {
                "hexcode": im.hexcode,
                "label": im.label,
                "family": im.family,
                "group": im.group,
                "subgroup": im.subgroup,
                "split": family_split[im.family],
                "files": [],
            },
        )
        row["files"].append(f"{im.style}/{im.stem}")
    for target in TARGETS:
        for im, _s, _c, rel in layout["targets"][target]["files"]:
            by_emoji[im.hexcode].setdefault("classes", {})[target] = rel.split("/")[2]
    rows = sorted(by_emoji.values(), key=lambda r: r["hexcode"])
    atomic_write_jsonl(out / "emoji.jsonl", rows)
    styles = Counter(im.style for im in plan.images)
    manifest = {
        "what": "Fluent Emoji rendered as an ImageNet-layout transfer target; train/val split by emoji family",
        "license": LICENSE,
        "inputs": inputs or {},
        "settings": asdict(settings),
        "split_unit": "family: an emoji with all its styles and skin tones, and its man/woman/person forms "
        "(data_tools.fetch_fluent_emoji.family_key)",
        "image": {
            "width": settings.size,
            "height": settings.size,
            "mode": "RGB",
            "format": "png",
            "background": "white",
            "file": "<target>/<split>/<class>/<stem>.<style>.png",
        },
        "counts": {
            "svg_files": sum(len(v) for v in svg_names(svgs).values()),
            "matched_images": len(plan.images),
            "matched_images_per_style": dict(sorted(styles.items())),
            "distinct_emoji": len(by_emoji),
            "families": len(family_split),
            "families_per_split": dict(sorted(Counter(family_split.values()).items())),
            "left_out_files": len(plan.unmatched) + len(plan.duplicates) + len(plan.no_class),
        },
        "left_out": {"unmatched": plan.unmatched, "duplicates": plan.duplicates, "no_class": plan.no_class},
        "targets": {},
    }
    for target in TARGETS:
        t = layout["targets"][target]
        manifest["targets"][target] = {
            "root": target,
            "classes": t["classes"],
            "n_classes": len(t["classes"]),
            "dropped_classes": t["dropped"],
            "images_not_in_target": len(plan.images) - len(t["files"]),
            "counts": _counts(t["files"]),
        }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def default_workers() -> int:
    """Render processes by default: the CPUs this process may use, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus))


def convert_fluent_emoji(cache: Path, force: bool = False, workers: int | None = None, settings: Settings = Settings()) -> dict:
    """Render ``<cache>/fluent_emoji/`` and record both targets in ``converted/sources.json``.

    Skipped (the existing manifest returned) when ``<cache>/fluent_emoji/.complete.json``
    records the same inputs and settings, unless ``force``. An interrupted render resumes
    from ``<cache>/.fluent_emoji.partial/`` if its plan is unchanged.

    Returns:
        the manifest.

    Raises:
        SourceError: an input is not fetched or unreadable, or a render failed.
    """
    cache = Path(cache)
    pkg, npm = cache / PACKAGE_DIR, cache / "npm"
    fp_pkg, fp_npm = marker_fingerprint(pkg), marker_fingerprint(npm)
    if fp_pkg is None or fp_npm is None:
        raise SourceError(
            SOURCE,
            f"{pkg if fp_pkg is None else npm} is not complete: run `python -m data_tools.fetch_demo --only npm fluent_emoji`",
        )
    inputs = {
        "package": f"{PACKAGE}@{VERSION}",
        "tarball_sha256": TARBALL_SHA256,
        "labels": "emojibase-data@17.0.0",
        "package_marker_sha256": fp_pkg,
        "npm_marker_sha256": fp_npm,
    }
    final = cache / OUT_DIR
    state = {"inputs": inputs, "settings": asdict(settings)}
    digest = _plan_digest(state)
    done = read_marker(final)
    if not force and done is not None and done.get("plan_sha256") == digest and (final / "manifest.json").is_file():
        LOG.info("%s: %s already complete, skipping", SOURCE, final)
        manifest = _load_json(final / "manifest.json", "manifest")
    else:
        entries = _load_json(npm / EMOJIBASE_DATA, "emojibase data")
        messages = _load_json(npm / EMOJIBASE_MESSAGES, "emojibase messages")
        try:
            svgs = read_svgs(pkg / TARBALL)
            plan = plan_images(svg_names(svgs), entries, messages)
        except (OSError, tarfile.TarError, ValueError) as exc:
            raise SourceError(SOURCE, str(exc)) from exc
        if plan.unmatched:
            LOG.warning(
                "%s: %d SVGs match no emojibase emoji (left out): %s", SOURCE, len(plan.unmatched), ", ".join(plan.unmatched[:10])
            )
        partial = final.with_name(f".{final.name}.partial")
        plan_file = partial / ".plan.json"
        if partial.exists() and (force or not plan_file.is_file() or _load_json(plan_file, "plan").get("plan_sha256") != digest):
            remove_path(partial)
        partial.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_file, {"plan_sha256": digest, **state})
        manifest = render_target(svgs, plan, partial, settings, workers or default_workers(), inputs)
        write_marker(partial, SOURCE, plan_sha256=digest, counts=manifest["counts"])
        plan_file.unlink()
        old = final.with_name(f".{final.name}.old")
        remove_path(old)
        if final.exists():
            os.replace(final, old)
        os.replace(partial, final)
        fsync_dir(final.parent)
        remove_path(old)
        c = manifest["counts"]
        LOG.info(
            "%s: wrote %s (%s images of %s emoji, %s left out)",
            SOURCE,
            final,
            f"{c['matched_images']:,}",
            f"{c['distinct_emoji']:,}",
            c["left_out_files"],
        )
    for target in TARGETS:
        t = manifest["targets"][target]
        entry = {
            "format": "imagefolder",
            "root": f"{OUT_DIR}/{target}",
            "splits": {s: f"{OUT_DIR}/{target}/{s}" for s in SPLITS},
            "classes": f"{OUT_DIR}/manifest.json",
            "count": sum(t["counts"][s]["images"] for s in SPLITS),
            "counts": {s: t["counts"][s]["images"] for s in SPLITS},
            "n_classes": t["n_classes"],
            "license": LICENSE,
            "input_fingerprint": fp_pkg,
        }
        update_sources(converted_dir(cache) / SOURCES_JSON, f"{SOURCE}_{target}", entry)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m data_tools.fetch_fluent_emoji [--cache data/raw] [--workers N] [--force]``."""
    ap = cache_parser(__doc__)
    ap.add_argument("--workers", type=int, default=None, help=f"render processes (default: {default_workers()})")
    ap.add_argument("--force", action="store_true", help="fetch and render again")
    ap.add_argument("--seed", type=int, default=Settings.seed, help="split seed (default 0)")
    ap.add_argument("--val-fraction", type=float, default=Settings.val_fraction)
    ap.add_argument(
        "--min-class-units", type=int, default=Settings.min_class_units, help="smallest class, in emoji families (default 8)"
    )
    args = ap.parse_args(argv)
    settings = Settings(seed=args.seed, val_fraction=args.val_fraction, min_class_units=args.min_class_units)

    def action() -> None:
        fetch_fluent_emoji(args.cache, force=args.force)
        convert_fluent_emoji(args.cache, force=args.force, workers=args.workers, settings=settings)

    return run_cli(action)


if __name__ == "__main__":
    raise SystemExit(main())
