"""Name matching of the Fluent Emoji SVGs: file stem -> emojibase emoji, and the split unit.

No labels ship with the SVGs. A file name is the CLDR short name slugified
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
nothing are left out, counted and listed in ``manifest.json``
(:mod:`data_tools.fluent_plan` applies the matching to a whole package).

:func:`family_key` gives the unit of the train/val split: an emoji with its man / woman /
person forms (see :func:`data_tools.fluent_plan.split_units`).
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

from .convert_emoji import normalize_hexcode

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
