"""Building a vocabulary: hashtags -> classes, and the CSR labels of the samples (no I/O but the tables).

Vocabulary kinds (Mahajan et al. 2018, section 2.1, "hashtag sets"; :class:`pipeline.config.VocabKind`):

* ``imagenet1k``: hashtags that are synonyms (lemmas) of the 1,000 ImageNet-1k synsets
  (the paper's ~1.5k set): a hashtag takes its first WordNet sense that is an IN-1k synset
  (:mod:`pipeline.text.wordnet_canon`); hyponyms are not mapped, as in the paper.
* ``wordnet_nouns``: any WordNet noun synset (the ~17k set), keeping classes with
  >= ``min_count`` samples.
* ``topk``: the ``top_k`` most frequent of those (the ~8.5k set), ties by synset name.
* ``raw``: normalized hashtags as classes, no WordNet (a baseline).
* ``target_aligned``: synsets under a transfer target's class names and their hyponyms
  (:mod:`pipeline.text.aligned`; the paper's "match the target" finding for any named target).
* ``visual_nouns``: synsets under ``physical_entity.n.01`` only, each ambiguous hashtag's
  sense chosen from the hashtags it co-occurs with (:mod:`pipeline.text.sense_choice`).

Class frequency ``n_c`` counts samples (a class once per sample, however many of its
synonyms the sample carries). Class indices follow decreasing ``n_c``, ties by id. A sample
keeps the classes of the vocabulary among its hashtags; samples left without a class are
excluded (the paper drops them), and ``totals`` counts them.

:func:`class_mapper` builds the mapper of a kind (:class:`RawMapper` for ``raw``),
:func:`build_vocabulary` chooses the classes and labels the samples, :func:`sort_by_keys`
puts the kept samples in key order (the order ``labels.npz`` stores).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from pipeline.config import VocabKind
from pipeline.io.manifest import canonical_hash, file_sha256
from pipeline.text.aligned import aligned_roots, aligned_synsets, read_class_names
from pipeline.text.sense_choice import VisualNounMapper
from pipeline.text.wordnet_canon import HashtagMapper, read_imagenet1k_wnids, wordnet_nouns

__all__ = [
    "ClassTable",
    "RawMapper",
    "Vocabulary",
    "build_vocabulary",
    "choose_classes",
    "class_mapper",
    "sort_by_keys",
]


class _TagMapper(Protocol):
    def map_many(self, tags: list[str]) -> Sequence[str | None]: ...


class RawMapper:
    """The ``raw`` kind: every normalized hashtag is its own class (same interface as HashtagMapper)."""

    def __call__(self, tag: str) -> str:
        return tag

    def map_many(self, tags: list[str]) -> list[str]:
        return list(tags)


def _raw_info(c: str) -> dict:
    return {"synset": None, "wnid": None, "lemma": c, "definition": None}


def class_mapper(
    kind: VocabKind | str, wordnet_dir: str, imagenet_info_dir: str, align_classes: str = ""
) -> tuple[RawMapper | HashtagMapper, Callable, dict, dict]:
    """The hashtag -> class mapper of vocabulary ``kind``, its class-info function and the tables it read.

    Args:
        align_classes: ``target_aligned`` only: the folder whose sub-folders are the target's classes.

    Returns:
        ``(mapper, info, inputs, details)``: a :class:`RawMapper`, :class:`pipeline.text.wordnet_canon.HashtagMapper`
        or (``visual_nouns``; call its ``fit`` first) :class:`pipeline.text.sense_choice.VisualNounMapper`;
        ``info(class id) -> {synset, wnid, lemma, definition}``; ``inputs``: file name -> SHA-256 of the
        WordNet ``index.noun`` and (``imagenet1k``) ``imagenet_synsets.txt`` read, (``target_aligned``) the
        hash of the class names (empty for ``raw``); ``details``: what ``vocab.json`` records of the
        choice (``target_aligned``: class name -> root synsets, the roots too general to use).

    Raises:
        FileNotFoundError: WordNet, the ImageNet synset list or the target's class folders missing.
    """
    kind = VocabKind(kind)
    if kind is VocabKind.raw:
        return RawMapper(), _raw_info, {}, {}
    nouns = wordnet_nouns(str(wordnet_dir))
    inputs = {"wordnet_index_noun": file_sha256(Path(wordnet_dir) / "index.noun")}
    if kind is VocabKind.visual_nouns:
        return VisualNounMapper(nouns), nouns.info, inputs, {}
    allowed = None
    details: dict = {}
    if kind is VocabKind.imagenet1k:
        allowed = [nouns.from_wnid(w) for w in read_imagenet1k_wnids(imagenet_info_dir)]
        inputs["imagenet1k_synsets"] = file_sha256(Path(imagenet_info_dir) / "imagenet_synsets.txt")
    elif kind is VocabKind.target_aligned:
        names = read_class_names(align_classes)
        roots = aligned_roots(names, nouns)
        allowed_set, too_general = aligned_synsets(roots, nouns)
        allowed = list(allowed_set)
        inputs["target_class_names"] = canonical_hash(names)
        details = {"aligned_roots": roots, "too_general": too_general, "allowed_synsets": len(allowed_set)}
    return HashtagMapper(nouns, allowed), nouns.info, inputs, details


@dataclass
class ClassTable:
    """The classes of a vocabulary and what was counted to choose them (``vocab.json``'s content)."""

    classes: list[str]  # class ids (synset names or raw hashtags), index order
    counts: np.ndarray  # int64 (C,), n_c in kept samples
    members: list[dict[str, int]]  # per class: member hashtag -> samples
    unmapped: Counter  # hashtag -> samples, hashtags with no class candidate at all
    dropped: Counter  # class id -> samples, candidate classes cut by min_count / top_k
    occurrences: int  # hashtag occurrences seen (a tag once per sample)
    map_seconds: float  # time spent mapping the hashtags (cold cache)


@dataclass
class Vocabulary(ClassTable):
    """The result of :func:`build_vocabulary`: a :class:`ClassTable` and the labels of the samples.

    ``indptr`` int64 (N+1,) and ``indices`` int32 (nnz,) are CSR labels of the kept samples
    (positions ``kept`` int64 (N,) into the input list), class ids sorted within a sample.
    """

    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    indptr: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))


def choose_classes(n_samples: Counter, kind: VocabKind | str, min_count: int, top_k: int) -> list[str]:
    """The classes kept from ``n_samples`` (class -> samples): >= ``min_count`` samples, by decreasing count then
    id; ``topk``: the first ``top_k`` of them."""
    chosen = sorted((c for c, n in n_samples.items() if n >= min_count), key=lambda c: (-n_samples[c], c))
    return chosen[:top_k] if VocabKind(kind) is VocabKind.topk else chosen


def build_vocabulary(
    tag_lists: list[list[str]], mapper: _TagMapper, kind: VocabKind | str, min_count: int, top_k: int
) -> Vocabulary:
    """Choose the classes and label each sample (pure function, no I/O).

    Args:
        tag_lists: per sample, its normalized hashtags (distinct).
        mapper: ``HashtagMapper`` or ``RawMapper`` (``map_many(tags) -> class id or None each``).
        kind: vocabulary kind; ``topk`` keeps the ``top_k`` most frequent classes.
        min_count: classes need at least this many samples.
        top_k: see ``kind``.

    Returns:
        The :class:`Vocabulary`.
    """
    kind = VocabKind(kind)
    t0 = time.perf_counter()
    mapped = [mapper.map_many(tags) for tags in tag_lists]
    map_seconds = time.perf_counter() - t0
    n_samples: Counter = Counter()
    members: dict[str, Counter] = {}
    unmapped: Counter = Counter()
    per_sample: list[list[str]] = []
    occurrences = 0
    for tags, classes in zip(tag_lists, mapped):
        occurrences += len(tags)
        distinct: dict[str, None] = {}
        for t, c in zip(tags, classes):
            if c is None:
                unmapped[t] += 1
                continue
            members.setdefault(c, Counter())[t] += 1
            distinct[c] = None
        n_samples.update(distinct.keys())
        per_sample.append(list(distinct))
    chosen = choose_classes(n_samples, kind, min_count, top_k)
    index = {c: i for i, c in enumerate(chosen)}
    dropped = Counter({c: n for c, n in n_samples.items() if c not in index})
    kept, indptr, indices = [], [0], []
    for pos, classes in enumerate(per_sample):
        ids = sorted(index[c] for c in classes if c in index)
        if ids:
            kept.append(pos)
            indices.extend(ids)
            indptr.append(len(indices))
    return Vocabulary(
        classes=chosen,
        counts=np.array([n_samples[c] for c in chosen], dtype=np.int64),
        members=[dict(members[c]) for c in chosen],
        kept=np.array(kept, dtype=np.int64),
        indptr=np.array(indptr, dtype=np.int64),
        indices=np.array(indices, dtype=np.int32),
        unmapped=unmapped,
        dropped=dropped,
        occurrences=occurrences,
        map_seconds=map_seconds,
    )


def _reorder(vocab: Vocabulary, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permute the kept samples (and their CSR rows) by ``order``."""
    starts, ends = vocab.indptr[:-1][order], vocab.indptr[1:][order]
    lengths = ends - starts
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = (
        np.concatenate([vocab.indices[s:e] for s, e in zip(starts, ends)]) if order.size else np.zeros(0, dtype=np.int32)
    ).astype(np.int32)
    return vocab.kept[order], indptr, indices


def sort_by_keys(vocab: Vocabulary, keys: list[str], ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Put the kept samples of ``vocab`` in key order (in place: ``kept``, ``indptr``, ``indices``), for lookup.

    Args:
        vocab: the vocabulary built over the samples with these ``keys`` and ``ids`` (input order).

    Returns:
        ``(keys, ids)`` of the kept samples, str arrays (N,), keys sorted.
    """
    order = np.argsort(np.array(keys)[vocab.kept], kind="stable")
    vocab.kept, vocab.indptr, vocab.indices = _reorder(vocab, order)
    return np.array(keys, dtype=str)[vocab.kept], np.array(ids, dtype=str)[vocab.kept]
