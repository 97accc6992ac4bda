"""Hashtag -> WordNet 3.0 noun synset canonicalization.

Mahajan et al. 2018 (section 2.1, "Hashtag vocabularies") merge hashtags that are
synonyms, i.e. lemmas of one WordNet synset (``#brownbear`` and ``#ursusarctos`` become
one class), and drop hashtags outside the chosen set. Hashtags come normalized by
:mod:`pipeline.text.hashtags` (casefolded, ``#`` stripped, inner spaces joined with ``_``).

How a normalized hashtag finds its noun senses (:meth:`WordNetNouns.senses`), in this
priority order, each step's senses appended after the previous ones (duplicates dropped):

1. **Lemma and inflection**: NLTK's ``synsets(tag, "n")``: the tag itself if it is a
   noun lemma (``brown_bear``, ``t-shirt``), then its base forms found by ``morphy``
   (irregular-plural exception list, else the suffix rules ``-s``, ``-ies -> -y``,
   ``-men -> -man`` ...): ``puppies`` -> ``puppy``, ``brown_bears`` -> ``brown_bear``.
2. **Concatenation**: the tag with ``_ - ' .`` removed, looked up in a table of every
   noun lemma with the same characters removed (built once): ``brownbear`` ->
   ``brown_bear``, ``ursusarctos`` -> ``ursus_arctos``. When several lemmas share one
   compact form, they are tried in order (fewest removed characters, then name).
3. **Concatenation + inflection**: step 2 after one noun suffix rule of step 1
   (``brownbears`` -> ``brownbear`` -> ``brown_bear``).

A lemma's senses are listed in WordNet's own order: the index files list a lemma's
synsets by decreasing frequency of the sense in the semantically tagged corpora (WordNet
3.0 ``wndb(5)``, "sense_cnt"/"synset_offset"; NLTK keeps that order). The canonical
synset of a hashtag is therefore deterministic: the **first** sense (the most frequent
one) among those the vocabulary allows. With no restriction (``wordnet_nouns``, ``topk``)
this is sense 1 of the first matching lemma; with ``imagenet1k`` it is the first sense
that is one of the 1,000 ImageNet-1k synsets, so ``tiger`` reaches ``tiger.n.02``
(Panthera tigris, ``n02129604``) although WordNet's sense 1 is "a fierce person". This
follows the paper's definition (every synonym of an IN-1k synset is in the set) and takes
its noise with it: ``plane`` becomes the carpenter's plane (``plane.n.05``), the only IN-1k
sense of the word, even on pictures of aeroplanes.

Hyponyms are *not* mapped onto a vocabulary synset (``puppy`` does not become a dog
breed): the paper's sets are synonyms of the chosen synsets only, and a hyponym walk
would be ambiguous (most dog breeds share ``dog.n.01``, which is not an IN-1k class).

Speed: :class:`HashtagMapper` caches the answer for each distinct hashtag in a dict, so
after the first occurrence a hashtag costs one dict lookup (millions per second).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

COMPACT_DROP = "_-'. "
_COMPACT_TABLE = str.maketrans("", "", COMPACT_DROP)
FETCH_HINT = "fetch it with `python -m data_tools.fetch_demo --only wordnet imagenet_info`"
_MISS = object()


def compact(text: str) -> str:
    """``text`` without the separators ``_ - ' .`` and spaces (``"brown_bear"`` -> ``"brownbear"``)."""
    return text.translate(_COMPACT_TABLE)


def wnid_of(offset: int, pos: str = "n") -> str:
    """ImageNet's synset id: the POS letter and the 8-digit data-file offset (``n02132136``)."""
    return f"{pos}{offset:08d}"


@functools.lru_cache(maxsize=4)
def open_wordnet(wordnet_dir: str):
    """Open WordNet 3.0 from ``wordnet_dir`` with NLTK (no download, no network); cached per folder.

    Args:
        wordnet_dir: folder holding ``index.noun``, ``data.noun``, ``noun.exc``, ``lexnames`` ...

    Raises:
        FileNotFoundError: if the folder or its ``lexnames``/``index.noun`` is missing.
    """
    d = Path(wordnet_dir)
    missing = [n for n in ("lexnames", "index.noun", "data.noun", "noun.exc") if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(f"WordNet 3.0 not found in {d} (missing {', '.join(missing)}); {FETCH_HINT}")
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _EnglishWordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # NLTK maps synsets to the copy of WordNet on its own data path for the
            # multilingual (OMW) functions, which we do not use; skipping it avoids a
            # lookup outside ``wordnet_dir`` and two parses of index.sense.
            return None

    # NLTK >= 3.9 refuses to read outside its data path ("Security Violation ...
    # Unauthorized path"): authorize exactly this configured folder.
    root = str(d.resolve())
    if root not in nltk.data.path:
        nltk.data.path.append(root)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return _EnglishWordNet(root, None)


class WordNetNouns:
    """The noun part of WordNet 3.0 as ordered candidate senses per hashtag.

    Args:
        wordnet_dir: see :func:`open_wordnet`.

    Raises:
        FileNotFoundError: WordNet files missing.
    """

    def __init__(self, wordnet_dir: str | os.PathLike) -> None:
        self.wn = open_wordnet(str(wordnet_dir))
        self._synsets: dict[str, object] = {}
        lemmas = sorted(self.wn.all_lemma_names(pos="n"), key=lambda s: (len(s) - len(compact(s)), s))
        table: dict[str, list[str]] = {}
        for lemma in lemmas:
            table.setdefault(compact(lemma), []).append(lemma)
        self.compact_index: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in table.items()}
        self.suffix_rules: list[tuple[str, str]] = list(self.wn.MORPHOLOGICAL_SUBSTITUTIONS["n"])

    def _lemma_senses(self, lemma: str, out: dict[str, None]) -> None:
        for s in self.wn.synsets(lemma, pos="n"):
            name = s.name()
            if name not in out:
                self._synsets.setdefault(name, s)
                out[name] = None

    def senses(self, tag: str) -> tuple[str, ...]:
        """All noun synset names ``tag`` may denote, most preferred first (see the module doc).

        Args:
            tag: a normalized hashtag (:func:`pipeline.text.hashtags.normalize_hashtag`).

        Returns:
            Synset names such as ``("brown_bear.n.01",)``; empty if nothing matches.
        """
        out: dict[str, None] = {}
        if not tag:
            return ()
        self._lemma_senses(tag, out)
        key = compact(tag)
        for lemma in self.compact_index.get(key, ()):
            self._lemma_senses(lemma, out)
        for old, new in self.suffix_rules:
            if key.endswith(old) and len(key) > len(old):
                for lemma in self.compact_index.get(key[: -len(old)] + new, ()):
                    self._lemma_senses(lemma, out)
        return tuple(out)

    def mostly_adjective(self, word: str) -> bool:
        """True when ``word`` is used more as an adjective than as a noun (``white``, ``japanese``, ``sweet``).

        A modifier rather than a thing: ``#white`` on a flag is not ``white.n.01`` (a person). Compares
        the tagged-corpus counts of the word's adjective and noun lemmas (WordNet's ``cntlist.rev``,
        from SemCor), and the numbers of senses when the word has no counts.
        """
        adj = [lemma for pos in ("a", "s") for lemma in self.wn.lemmas(word, pos=pos)]
        if not adj:
            return False
        noun = self.wn.lemmas(word, pos="n")
        adj_count, noun_count = sum(lemma.count() for lemma in adj), sum(lemma.count() for lemma in noun)
        if adj_count or noun_count:
            return adj_count > noun_count
        return len(adj) > len(noun)

    def synset(self, name: str):
        """The NLTK ``Synset`` for a name such as ``"brown_bear.n.01"`` (ValueError/WordNetError if unknown)."""
        s = self._synsets.get(name)
        if s is None:
            s = self._synsets[name] = self.wn.synset(name)
        return s

    def info(self, name: str) -> dict:
        """``{"synset", "wnid", "lemma", "definition"}`` of a synset name."""
        s = self.synset(name)
        return {"synset": name, "wnid": wnid_of(s.offset(), s.pos()), "lemma": s.lemmas()[0].name(), "definition": s.definition()}

    def from_wnid(self, wnid: str) -> str:
        """Synset name of an ImageNet wnid (``"n02132136"`` -> ``"brown_bear.n.01"``).

        Raises:
            ValueError: malformed wnid, or no such synset in this WordNet.
        """
        if len(wnid) != 9 or wnid[0] != "n" or not wnid[1:].isdigit():
            raise ValueError(f"not a noun wnid (n + 8 digits): {wnid!r}")
        try:
            s = self.wn.synset_from_pos_and_offset("n", int(wnid[1:]))
        except Exception as exc:  # nltk raises WordNetError or a bare error on a bad offset
            raise ValueError(f"wnid {wnid} is not a WordNet 3.0 noun synset: {exc}") from exc
        if s is None:
            raise ValueError(f"wnid {wnid} is not a WordNet 3.0 noun synset")
        self._synsets.setdefault(s.name(), s)
        return s.name()


@functools.lru_cache(maxsize=4)
def wordnet_nouns(wordnet_dir: str) -> WordNetNouns:
    """A :class:`WordNetNouns` shared per folder (the tables are built once per process)."""
    return WordNetNouns(wordnet_dir)


def read_imagenet1k_wnids(imagenet_info_dir: str | os.PathLike) -> list[str]:
    """The 1,000 ImageNet-1k wnids, in timm's (= the standard class index) order.

    Reads ``imagenet_synsets.txt`` (one wnid per line) from timm's ``data/_info``.

    Raises:
        FileNotFoundError: file missing (with the fetch command).
        ValueError: not exactly 1,000 distinct wnids.
    """
    p = Path(imagenet_info_dir) / "imagenet_synsets.txt"
    if not p.is_file():
        raise FileNotFoundError(f"ImageNet-1k synset list not found: {p}; {FETCH_HINT}")
    wnids = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise ValueError(f"{p}: expected 1,000 distinct wnids, got {len(wnids)} ({len(set(wnids))} distinct)")
    return wnids


class HashtagMapper:
    """Hashtag -> canonical synset name (or None), cached per distinct hashtag.

    Args:
        nouns: the WordNet noun index.
        allowed: synset names the vocabulary may use (e.g. the 1,000 ImageNet-1k
            synsets); None allows every noun synset.

    The answer for a tag is the first of ``nouns.senses(tag)`` that is allowed (module doc).
    """

    def __init__(self, nouns: WordNetNouns, allowed: Iterable[str] | None = None) -> None:
        self.nouns = nouns
        self.allowed = frozenset(allowed) if allowed is not None else None
        self.cache: dict[str, str | None] = {}

    def resolve(self, tag: str) -> str | None:
        """Uncached lookup of one tag; stores the answer in :attr:`cache`."""
        senses = self.nouns.senses(tag)
        if self.allowed is not None:
            senses = tuple(s for s in senses if s in self.allowed)
        answer = senses[0] if senses else None
        self.cache[tag] = answer
        return answer

    def __call__(self, tag: str) -> str | None:
        answer = self.cache.get(tag, _MISS)
        if answer is _MISS:
            return self.resolve(tag)
        return answer  # type: ignore[return-value]

    def map_many(self, tags: Iterable[str]) -> list[str | None]:
        """Canonical synset (or None) for each tag, in order."""
        cache = self.cache
        try:
            return [cache[t] for t in tags]  # the common case: every tag seen before
        except KeyError:
            return [self(t) for t in tags]
