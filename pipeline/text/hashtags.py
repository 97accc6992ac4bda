"""Hashtag extraction, normalization and per-image caps.

**Extraction** (:func:`extract_hashtags`, for ``#words`` in captions) follows what ends a
hashtag on Instagram: a hashtag is ``#`` (or the full-width ``＃``) followed by letters,
digits and ``_``; "spaces and special characters, like $ or %, won't work" (Instagram Help
Center, "Tag your Instagram post with hashtags", help.instagram.com/351460621611097). So
``&``, ``.``, ``-``, ``'``, emoji and every other punctuation or symbol end the tag. Letters
and digits are those of any script: Unicode categories ``L*`` (letters), ``M*`` (combining
marks: Arabic harakat, Devanagari and Thai vowel signs are part of a word) and ``Nd``
(decimal digits), plus the zero-width (non-)joiners U+200C/U+200D inside a word (Persian and
Indic spelling; twitter-text's hashtag rule counts them too). Emoji variation selectors
(U+FE00-U+FE0F, U+E0100-U+E01EF) are not word characters. A ``#`` directly after a word
character or ``&`` starts no hashtag (``page.html#top``, the HTML entity ``&#39;``), as in
twitter-text.

**Normalization** (:func:`normalize_hashtag`; Mahajan et al. 2018 use hashtags as typed by
users, we only make equal-looking tags equal):

1. Unicode NFKC (full-width and compatibility forms folded),
2. removing control and format characters (Unicode categories Cc, Cf) and variation selectors,
3. casefolding,
4. stripping leading ``#`` and surrounding whitespace, punctuation ``.,;:!?"'()[]{}`` and
   underscores (``#smileys_&_emotion`` is cut at ``&`` to ``smileys_``, which becomes
   ``smileys``),
5. joining inner whitespace runs with ``_`` (WordNet's multi-word form:
   ``"brown bear"`` -> ``brown_bear``; ``brownbear`` stays as typed and is split later
   by the vocabulary stage).

Tags given as a list (an index's ``tags`` column, img2dataset's ``tags``/``hashtags``
fields) are normalized the same way but not re-split: ``t-shirt`` stays ``t-shirt``.

**Caps** (:func:`cap_hashtags`, applied by ingest after normalization and deduplication):
at most :data:`MAX_HASHTAGS` tags per image and :data:`MAX_HASHTAG_CHARS` characters per
tag (``ingest.max_hashtags``, ``ingest.max_hashtag_chars``). Longer tags are dropped, not
truncated (a cut tag is a different word); tags beyond the count are dropped, keeping the
first ones. See the constants for where the figures come from.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, NamedTuple

from pipeline.config import IngestConfig

# The caps are declared once, as the defaults of ``ingest.max_hashtags`` / ``ingest.max_hashtag_chars``
# (pipeline.config.IngestConfig); where the figures come from:
# Instagram: "You can add up to 30 hashtags to a post" (Instagram Help Center, "Tag your
# Instagram post with hashtags", help.instagram.com/351460621611097).
MAX_HASHTAGS: int = IngestConfig.max_hashtags
# Project choice: Instagram documents no length limit for one hashtag. 72 characters keep
# every tag that could name a WordNet 3.0 noun synset, the label space of the vocab stage:
# the longest noun lemma, blood-oxygenation_level_dependent_functional_magnetic_resonance_imaging,
# has 71 characters (measured over all 119,034 noun lemmas with NLTK's reader). Longer "tags"
# seen in scraped captions are run-together sentences or junk.
MAX_HASHTAG_CHARS: int = IngestConfig.max_hashtag_chars

_HASH = "#\uff03"  # '#' and the full-width number sign
_JOINERS = "\u200c\u200d"  # zero-width non-joiner / joiner (Persian, Indic scripts)
_HASH_RE = re.compile(f"[{_HASH}]")
_WS_RE = re.compile(r"\s+", re.UNICODE)
_STRIP = " \t\r\n#.,;:!?\"'()[]{}_"


def _is_variation_selector(ch: str) -> bool:
    o = ord(ch)
    return 0xFE00 <= o <= 0xFE0F or 0xE0100 <= o <= 0xE01EF


def is_hashtag_char(ch: str) -> bool:
    """True if the one-character string ``ch`` can be part of a hashtag in a caption.

    Letters (``L*``), combining marks (``M*``) and decimal digits (``Nd``) of any script, and
    ``_``; not variation selectors. (Zero-width joiners are accepted only inside a tag, by
    :func:`extract_hashtags`.)
    """
    if ch == "_":
        return True
    cat = unicodedata.category(ch)
    if cat[0] in "LM":
        return not _is_variation_selector(ch)
    return cat == "Nd"


def _keep_char(ch: str) -> bool:
    if ch in "\t\n\r ":
        return True
    return unicodedata.category(ch) not in ("Cc", "Cf") and not _is_variation_selector(ch)


def normalize_hashtag(tag: str) -> str:
    """Return the normalized form of one tag (``str``); ``''`` if nothing is left.

    The steps are in the module docstring. No length limit is applied here (see
    :func:`cap_hashtags`).

    >>> normalize_hashtag("#Smileys_")
    'smileys'
    """
    s = unicodedata.normalize("NFKC", tag)
    s = "".join(ch for ch in s if _keep_char(ch))
    s = s.casefold().strip(_STRIP)
    return _WS_RE.sub("_", s)


def normalize_hashtags(tags: Iterable[str]) -> list[str]:
    """Normalize each tag, drop empty ones, deduplicate keeping the first occurrence."""
    seen: dict[str, None] = {}
    for t in tags:
        n = normalize_hashtag(t)
        if n and n not in seen:
            seen[n] = None
    return list(seen)


class CappedTags(NamedTuple):
    """Result of :func:`cap_hashtags`."""

    kept: list[str]  # the tags kept, in their order
    too_long: int  # tags dropped for having more than max_chars characters
    over_count: int  # tags dropped after the first max_count


def cap_hashtags(tags: Iterable[str], max_count: int = MAX_HASHTAGS, max_chars: int = MAX_HASHTAG_CHARS) -> CappedTags:
    """Drop tags longer than ``max_chars`` characters (code points), then keep the first ``max_count``.

    Args:
        tags: normalized, deduplicated tags (:func:`normalize_hashtags`).
        max_count: tags kept per image (>= 1); Instagram allows 30 per post.
        max_chars: longest tag kept, in characters (>= 1).
    Returns:
        :class:`CappedTags` ``(kept, too_long, over_count)``; ``kept`` may be empty.
    Raises:
        ValueError: ``max_count`` or ``max_chars`` below 1.
    """
    if max_count < 1 or max_chars < 1:
        raise ValueError(f"max_count and max_chars must be >= 1, got {max_count} and {max_chars}")
    tags = list(tags)
    short = [t for t in tags if len(t) <= max_chars]
    return CappedTags(short[:max_count], len(tags) - len(short), max(0, len(short) - max_count))


def extract_hashtags(caption: str) -> list[str]:
    """Return the ``#words`` of a caption, without the ``#`` and not yet normalized.

    The rule (what starts and what ends a hashtag) is in the module docstring.

    >>> extract_hashtags("sunset at the beach #Sunset #beach_life! #smileys_&_emotion")
    ['Sunset', 'beach_life', 'smileys_']
    """
    out: list[str] = []
    n = len(caption)
    for m in _HASH_RE.finditer(caption):
        i = m.start()
        prev = caption[i - 1] if i else ""
        if prev and (prev == "&" or prev in _JOINERS or is_hashtag_char(prev)):
            continue
        j = i + 1
        while j < n and (is_hashtag_char(caption[j]) or (j > i + 1 and caption[j] in _JOINERS)):
            j += 1
        tag = caption[i + 1 : j].rstrip(_JOINERS)
        if tag:
            out.append(tag)
    return out
