"""Hashtag normalization and extraction.

A hashtag is normalized (Mahajan et al. 2018 use hashtags as typed by users; we only
make equal-looking tags equal) by:

1. Unicode NFKC (full-width and compatibility forms folded),
2. removing control and format characters (Unicode categories Cc, Cf),
3. casefolding,
4. stripping leading ``#`` and surrounding whitespace and punctuation ``.,;:!?"'``,
5. joining inner whitespace runs with ``_`` (WordNet's multi-word form:
   ``"brown bear"`` -> ``brown_bear``; ``brownbear`` stays as typed and is split later
   by the vocabulary stage).

Tags are then deduplicated within an image, keeping first-seen order.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

_HASHTAG_RE = re.compile(r"#(\w[\w\-']*)", re.UNICODE)
_WS_RE = re.compile(r"\s+", re.UNICODE)
_STRIP = " \t\r\n#.,;:!?\"'()[]{}"
MAX_TAG_CHARS = 100


def normalize_hashtag(tag: str) -> str:
    """Return the normalized form of one tag ('' if nothing is left).

    Tags longer than :data:`MAX_TAG_CHARS` characters after normalization are truncated.
    """
    s = unicodedata.normalize("NFKC", tag)
    s = "".join(ch for ch in s if unicodedata.category(ch) not in ("Cc", "Cf") or ch in "\t\n\r ")
    s = s.casefold().strip(_STRIP)
    s = _WS_RE.sub("_", s)
    return s[:MAX_TAG_CHARS]


def normalize_hashtags(tags: Iterable[str]) -> list[str]:
    """Normalize each tag, drop empty ones, deduplicate keeping the first occurrence."""
    seen: dict[str, None] = {}
    for t in tags:
        n = normalize_hashtag(t)
        if n and n not in seen:
            seen[n] = None
    return list(seen)


def extract_hashtags(caption: str) -> list[str]:
    """Return the ``#words`` of a caption, without the ``#`` and not yet normalized.

    >>> extract_hashtags("sunset at the beach #Sunset #beach_life!")
    ['Sunset', 'beach_life']
    """
    return _HASHTAG_RE.findall(caption)
