"""Word-sense choice from co-occurring hashtags, and the ``visual_nouns`` vocabulary's mapper.

The ``wordnet_nouns`` kind gives every hashtag WordNet's first (most frequent) noun sense
(:mod:`pipeline.text.wordnet_canon`), so on the demo corpus ``#plant`` on flower images
becomes ``plant.n.01`` (an industrial building), and ``#theme`` becomes ``subject.n.01``,
a class no image can show. The ``visual_nouns`` kind changes two things:

1. **Sense from context** (a taxonomic variant of simplified Lesk, Kilgarriff & Rosenzweig
   2000, where a gloss's words are replaced by WordNet's is-a links): for a hashtag ``t``
   with several noun senses, its context is the ``context`` hashtags most often on the same
   samples, each weighted by ``co-occurrences x log(N / n_h)`` (``N`` samples, ``n_h`` the
   samples carrying ``h``: a tag on every image says nothing). A context hashtag supports
   a candidate sense ``s`` of ``t`` when one of its first ``context_senses`` senses lies at
   most ``down`` hyponym levels below ``s`` (``#flower`` under ``plant.n.02``, the
   organism) or at most ``up`` hypernym levels above it (``#animal`` above ``bird.n.01``
   is too far at 3 levels; ``#duck`` below it counts). A sense's score is the weight of
   the context hashtags that support it. The most supported sense replaces the default
   only when its score is at least ``margin`` times the default's (WordNet's sense order is
   a strong prior; a near tie keeps it).
2. **Physical entities only**: a class must be a synset under ``physical_entity.n.01``
   (objects, living things, substances, places: what a picture can show). A hashtag whose
   chosen sense (in context, else WordNet's first) is abstract maps to nothing
   (``unmapped.json``): ``#theme`` (``subject.n.01``) and ``#shape`` are dropped rather than
   given a rare physical sense (``shape`` as a human body). So does a hashtag with more
   adjective than noun senses in WordNet (``#white`` is not ``white.n.01``, a person).

Every ambiguous hashtag with at least ``min_samples`` samples gets a record (candidates,
scores, the choice and why), which the vocab stage writes to ``senses.json``; rarer
hashtags take their default sense without a context (they cannot make a class alone).

The co-occurrence counts are held in memory per hashtag (fine for the demo's ~11k samples
and ~15k distinct hashtags; a corpus of billions would count pairs in a separate pass).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from pipeline.text.wordnet_canon import HashtagMapper, WordNetNouns

__all__ = [
    "PHYSICAL_ROOT",
    "SenseChoice",
    "SenseSettings",
    "ambiguous_tags",
    "cooccurrence",
    "choose_senses",
    "choose_senses_from_counts",
    "sense_summary",
    "VisualNounMapper",
]

PHYSICAL_ROOT = "physical_entity.n.01"


@dataclass(frozen=True)
class SenseSettings:
    """Knobs of the sense choice (module doc); the defaults are the ``visual_nouns`` kind's."""

    context: int = 30  # co-occurring hashtags looked at, most frequent first
    context_senses: int = 3  # senses of each context hashtag tried, WordNet order
    down: int = 5  # max hyponym levels from a candidate sense down to a context sense
    up: int = 2  # max hypernym levels from a candidate sense up to a context sense
    margin: float = 1.5  # the best sense replaces the default only at >= margin x its score
    min_samples: int = 5  # hashtags with fewer samples take their default sense without context
    root: str = PHYSICAL_ROOT
    skip_adjectives: bool = True  # a hashtag with more adjective than noun senses (#white, #seasonal) maps to nothing


@dataclass
class SenseChoice:
    """The record of one hashtag's sense choice (a row of ``senses.json``)."""

    hashtag: str
    samples: int
    candidates: list[str]  # every noun sense, WordNet order
    scores: list[float]  # context support per candidate (same order)
    default: str  # WordNet's first sense
    chosen: str | None  # the class, or None when the hashtag maps to nothing
    reason: str  # "context", "default", "context/default sense not physical", "mostly an adjective"
    context: list[str] = field(default_factory=list)  # the co-occurring hashtags looked at

    def to_dict(self) -> dict:
        return {
            "hashtag": self.hashtag,
            "samples": self.samples,
            "chosen": self.chosen,
            "reason": self.reason,
            "default": self.default,
            "changed": self.chosen != self.default,
            "candidates": dict(zip(self.candidates, [round(s, 2) for s in self.scores])),
            "context": self.context,
        }


def cooccurrence(tag_lists: Sequence[Sequence[str]], keep: set[str] | None = None) -> tuple[Counter, dict[str, Counter]]:
    """Samples per hashtag and, for the hashtags in ``keep`` (all when None), the samples shared with each other tag.

    Args:
        tag_lists: per sample, its normalized hashtags (duplicates count once).

    Returns:
        ``(n, co)``: ``n[t]`` samples carrying ``t``; ``co[t][h]`` samples carrying both ``t`` and ``h`` (``h != t``).
    """
    n: Counter = Counter()
    co: dict[str, Counter] = {}
    for tags in tag_lists:
        distinct = set(tags)
        n.update(distinct)
        for t in distinct:
            if keep is not None and t not in keep:
                continue
            row = co.setdefault(t, Counter())
            for h in distinct:
                if h != t:
                    row[h] += 1
    return n, co


class _Taxonomy:
    """Bounded hypernym closures of synsets, cached (is-a tests of the sense scores)."""

    def __init__(self, nouns: WordNetNouns) -> None:
        self.nouns = nouns
        self._up: dict[tuple[str, int], frozenset[str]] = {}

    def ancestors(self, name: str, depth: int | None = None) -> frozenset[str]:
        """``name`` and its hypernyms (instance hypernyms too) up to ``depth`` levels (None: all)."""
        key = (name, -1 if depth is None else depth)
        found = self._up.get(key)
        if found is None:
            s = self.nouns.synset(name)
            above = s.closure(lambda z: z.hypernyms() + z.instance_hypernyms(), depth=-1 if depth is None else depth)
            found = self._up[key] = frozenset([name, *(a.name() for a in above)])
        return found

    def under(self, name: str, root: str) -> bool:
        return root in self.ancestors(name)


def _score(cand: str, context: list[tuple[list[str], float]], tax: _Taxonomy, st: SenseSettings) -> float:
    near_up = tax.ancestors(cand, st.up)
    total = 0.0
    for senses, weight in context:
        if any(y != cand and (y in near_up or cand in tax.ancestors(y, st.down)) for y in senses):
            total += weight
    return total


def choose_senses(
    tag_lists: Sequence[Sequence[str]], nouns: WordNetNouns, settings: SenseSettings = SenseSettings()
) -> dict[str, SenseChoice]:
    """Choose the sense of every ambiguous hashtag with >= ``settings.min_samples`` samples (module doc).

    Args:
        tag_lists: per sample, its normalized hashtags.
        nouns: the WordNet noun index.

    Returns:
        hashtag -> :class:`SenseChoice`, most frequent hashtag first (ties by tag). Hashtags with
        one noun sense or none are not listed (nothing to choose).
    """
    n, _ = cooccurrence(tag_lists, keep=set())
    _, co = cooccurrence(tag_lists, keep=ambiguous_tags(n, nouns, settings))
    return choose_senses_from_counts(n, co, len(tag_lists), nouns, settings)


def ambiguous_tags(n: Counter, nouns: WordNetNouns, settings: SenseSettings = SenseSettings()) -> set[str]:
    """The hashtags whose sense :func:`choose_senses` chooses: >= ``settings.min_samples`` samples (``n``: hashtag ->
    samples) and more than one noun sense."""
    return {t for t, k in n.items() if k >= settings.min_samples and len(nouns.senses(t)) > 1}


def choose_senses_from_counts(
    n: Counter, co: dict[str, Counter], total: int, nouns: WordNetNouns, settings: SenseSettings = SenseSettings()
) -> dict[str, SenseChoice]:
    """:func:`choose_senses` from the corpus's counts (summed over shards by the vocab stage): ``n`` hashtag -> samples,
    ``co`` ambiguous hashtag -> co-occurring hashtag -> samples (:func:`cooccurrence`), ``total`` samples."""
    st = settings
    tax = _Taxonomy(nouns)
    ambiguous = ambiguous_tags(n, nouns, st)
    out: dict[str, SenseChoice] = {}
    for t in sorted(ambiguous, key=lambda t: (-n[t], t)):
        candidates = list(nouns.senses(t))
        top = sorted(co[t].items(), key=lambda kv: (-kv[1], kv[0]))[: st.context]  # ties by tag: no hash order
        context = [(list(nouns.senses(h)[: st.context_senses]), k * math.log(total / n[h])) for h, k in top]
        scores = [_score(c, context, tax, st) for c in candidates]
        default = candidates[0]
        best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
        chosen: str | None = default
        reason = "default"
        if best != 0 and scores[best] > 0 and scores[best] >= st.margin * scores[0]:
            chosen, reason = candidates[best], "context"
        if chosen is not None and not tax.under(chosen, st.root):
            chosen, reason = None, f"{reason} sense not physical"
        elif st.skip_adjectives and nouns.mostly_adjective(t):
            chosen, reason = None, "mostly an adjective"
        out[t] = SenseChoice(t, n[t], candidates, scores, default, chosen, reason, [h for h, _ in top])
    return out


def sense_summary(records: list[dict]) -> dict:
    """What ``vocab.json`` records of the sense choice: hashtags looked at, changed from their default, by reason."""
    by_reason = Counter(r["reason"] for r in records)
    return {
        "root": PHYSICAL_ROOT,
        "ambiguous_hashtags": len(records),
        "changed_from_default": sum(1 for r in records if r["changed"]),
        "by_reason": dict(sorted(by_reason.items())),
    }


class VisualNounMapper(HashtagMapper):
    """Hashtag -> physical-entity synset in context (the ``visual_nouns`` kind), cached per hashtag.

    A :class:`pipeline.text.wordnet_canon.HashtagMapper` (same cache and ``map_many``) whose
    :meth:`resolve` applies this kind's rules; call :meth:`fit` with the corpus's hashtags first,
    which chooses the ambiguous hashtags' senses. Until then (and for hashtags :meth:`fit` did not
    see), a hashtag takes WordNet's first sense if it is physical and not mostly an adjective.
    """

    def __init__(self, nouns: WordNetNouns, settings: SenseSettings = SenseSettings()) -> None:
        super().__init__(nouns)
        self.settings = settings
        self.choices: dict[str, SenseChoice] = {}
        self._tax = _Taxonomy(nouns)

    def fit(self, tag_lists: Sequence[Sequence[str]]) -> dict[str, SenseChoice]:
        """Choose senses from ``tag_lists`` (:func:`choose_senses`); returns the records."""
        n, _ = cooccurrence(tag_lists, keep=set())
        _, co = cooccurrence(tag_lists, keep=ambiguous_tags(n, self.nouns, self.settings))
        return self.fit_counts(n, co, len(tag_lists))

    def fit_counts(self, n: Counter, co: dict[str, Counter], total: int) -> dict[str, SenseChoice]:
        """Choose senses from the corpus's counts (:func:`choose_senses_from_counts`: the vocab stage sums them over
        shards); returns the records."""
        self.choices = choose_senses_from_counts(n, co, total, self.nouns, self.settings)
        self.cache = {t: c.chosen for t, c in self.choices.items()}
        return self.choices

    def resolve(self, tag: str) -> str | None:
        """Uncached lookup of a tag :meth:`fit` did not choose for; stores the answer in :attr:`cache`."""
        senses = self.nouns.senses(tag)
        answer = senses[0] if senses and self._tax.under(senses[0], self.settings.root) else None
        if answer is not None and self.settings.skip_adjectives and self.nouns.mostly_adjective(tag):
            answer = None
        self.cache[tag] = answer
        return answer
