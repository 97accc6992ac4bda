"""What the vocab stage records of a :class:`pipeline.text.vocabulary.ClassTable`: ``vocab.json``,
``unmapped.json``, the manifest's counts and the class-frequency curves of ``class_frequency.png``."""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np

from pipeline.config import VocabKind
from pipeline.text.resampling import SCHEMES, class_mass
from pipeline.text.vocabulary import ClassTable, Vocabulary

__all__ = [
    "class_records",
    "frequency_curves",
    "mass_curves",
    "unmapped_table",
    "vocab_counts",
    "vocab_document",
    "vocab_totals",
]


def class_records(vocab: ClassTable, info: Callable[[str], dict]) -> list[dict]:
    """Per class, in index order: ``index``, ``id``, ``info(id)`` (synset, wnid, lemma, definition), ``samples``
    (n_c) and ``hashtags`` (member hashtag -> samples)."""
    return [
        {"index": i, "id": c, **info(c), "samples": int(vocab.counts[i]), "hashtags": vocab.members[i]}
        for i, c in enumerate(vocab.classes)
    ]


def unmapped_table(vocab: ClassTable) -> dict[str, int]:
    """``unmapped.json``: hashtag -> samples for every hashtag no class could take, most frequent first (ties by tag)."""
    return dict(sorted(vocab.unmapped.items(), key=lambda kv: (-kv[1], kv[0])))


def vocab_totals(samples, vocab: ClassTable, by_reason: Counter, kept: int) -> dict:
    """``totals`` of ``vocab.json`` (``samples``: anything with ``seen`` and ``removed``, e.g.
    :class:`pipeline.text.shard_vocab.TagCounts`): samples seen, removed by dedup (and by reason), kept (``kept`` of them
    labelled), excluded for lack of a class, and the hashtag occurrences unmapped or in dropped classes."""
    eligible = samples.seen - samples.removed
    return {
        "samples_seen": samples.seen,
        "samples_removed_by_dedup": samples.removed,
        "removed_by_reason": dict(sorted(by_reason.items())),
        "samples_kept": kept,
        "samples_excluded_no_label": eligible - kept,
        "kept_share": round(kept / eligible, 6) if eligible else 0.0,
        "hashtag_occurrences": vocab.occurrences,
        "unmapped_occurrences": sum(vocab.unmapped.values()),
        "unmapped_hashtags": len(vocab.unmapped),
        "dropped_classes": len(vocab.dropped),
        "dropped_class_occurrences": sum(vocab.dropped.values()),
    }


def vocab_document(
    kind: VocabKind,
    min_count: int,
    top_k: int,
    vocab: ClassTable,
    totals: dict,
    info: Callable[[str], dict],
    choice: dict | None = None,
) -> dict:
    """The content of ``vocab.json``: kind, min_count, top_k (``topk`` only), num_classes, totals, classes
    (:func:`class_records`), the resampling schemes with their formula and (``target_aligned``,
    ``visual_nouns``) ``choice``: how the kind chose its synsets."""
    return {
        "kind": kind.value,
        "min_count": min_count,
        "top_k": top_k if kind is VocabKind.topk else None,
        "num_classes": len(vocab.classes),
        "totals": totals,
        "classes": class_records(vocab, info),
        "resampling": {
            "schemes": SCHEMES,
            "formula": "w_i = Z * mean_{c in C_i} n_c^(alpha-1), mean(w) = 1; class mass ~ n_c^alpha (pipeline.text.resampling)",
        },
        **({"choice": choice} if choice else {}),
    }


def vocab_counts(vocab: ClassTable, totals: dict, table_seconds: float, warm_seconds: float, mapped: int) -> dict:
    """The manifest's ``counts``: classes, the totals (without ``removed_by_reason``), the time to build the
    class table and the canonicalization rates (distinct hashtags mapped per second, cold and warm mapper cache;
    ``mapped`` of them)."""
    return {
        "classes": len(vocab.classes),
        **{k: v for k, v in totals.items() if k != "removed_by_reason"},
        "table_build_seconds": round(table_seconds, 3),
        "distinct_hashtags": mapped,
        "canonicalize_hashtags_per_s": round(mapped / vocab.map_seconds) if vocab.map_seconds > 0 else None,
        "canonicalize_hashtags_per_s_warm": round(mapped / warm_seconds) if warm_seconds > 0 else None,
    }


def frequency_curves(vocab: Vocabulary, weights: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """The curves of ``class_frequency.png`` from whole-corpus labels and weights: :func:`mass_curves` of the class
    masses of each scheme's weights (:func:`pipeline.text.resampling.class_mass`)."""
    masses = {s: class_mass(vocab.indptr, vocab.indices, w, len(vocab.classes)) for s, w in weights.items()}
    return mass_curves(masses, vocab.counts)


def mass_curves(masses: dict[str, np.ndarray], counts: np.ndarray) -> tuple[dict, dict]:
    """The curves of ``class_frequency.png``: per scheme, the class masses float64 (C,) (summed over shards by the
    vocab stage) and the single-label target ``n_c ** alpha`` scaled to the same total."""
    n = np.asarray(counts, dtype=np.float64)
    targets = {s: n**a * (masses[s].sum() / (n**a).sum()) for s, a in SCHEMES.items()}
    return masses, targets
