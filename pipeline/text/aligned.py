"""A vocabulary aligned with a transfer target's classes (the ``target_aligned`` kind).

Mahajan et al. 2018 (section 3.1, "hashtag vocabulary") find that pretraining on the 1.5k
hashtags that are synonyms of ImageNet-1k's synsets transfers to ImageNet better than the
17k of all WordNet nouns: the vocabulary should match the target. This module builds such a
set for any target whose classes have English names (the Fluent Emoji subgroups:
``animal-mammal``, ``food-fruit``, ``musical-instrument`` ...):

1. **Class name -> words**: the name with ``-``/``_``/spaces as separators; the whole name is
   tried first as one WordNet lemma (``musical-instrument`` -> ``musical_instrument``,
   ``body-parts`` -> ``body_part``), else each word (``animal``, ``mammal``); words without
   a noun sense (``other``, ``keycap``) are skipped, and so are modifiers: words with more
   adjective than noun senses (``marine``, ``sweet``, ``open``), unless no other word is left.
2. **Word -> root synset**: a word's sense is chosen from the other words of the class
   names it appears in (:func:`pipeline.text.sense_choice.choose_senses` over the names, any
   synset allowed), so ``plant`` in ``plant-flower`` and ``plant-other`` is ``plant.n.02``
   (the organism), not WordNet's first sense (an industrial building).
3. **Roots -> allowed synsets**: every root and all its hyponyms (instance hyponyms too).
   A hashtag then becomes its first WordNet sense among the allowed synsets
   (:class:`pipeline.text.wordnet_canon.HashtagMapper`), so ``#puppy`` stays ``puppy.n.01``
   (under ``mammal.n.01``) and ``#theme`` is dropped. A root whose hyponyms are more than
   :data:`MAX_ROOT_SHARE` of WordNet's noun synsets (``object.n.01`` of ``other-object``:
   36k of 82k) aligns nothing and is skipped (listed under ``too_general``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.text.sense_choice import SenseSettings, choose_senses
from pipeline.text.wordnet_canon import WordNetNouns

__all__ = ["MAX_ROOT_SHARE", "read_class_names", "class_name_words", "aligned_roots", "aligned_synsets"]

MAX_ROOT_SHARE = 0.25  # of the noun synsets of WordNet 3.0 (82,115)


def read_class_names(folder: str | os.PathLike) -> list[str]:
    """The target's class names: the names of the sub-folders of ``folder`` (an ImageFolder split), sorted.

    Raises:
        FileNotFoundError: ``folder`` missing or without sub-folders (with the setting's name).
    """
    d = Path(folder)
    names = sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
    if not names:
        raise FileNotFoundError(f"vocab.align_classes: no class folders in {d} (an ImageFolder split: <class>/<image>)")
    return names


def class_name_words(name: str, nouns: WordNetNouns) -> list[str]:
    """The words of class ``name`` that have a noun sense (step 1 of the module doc)."""
    joined = re.sub(r"[-\s]+", "_", name.strip().casefold())
    if "_" in joined and nouns.senses(joined):
        return [joined]
    words = [w for w in joined.split("_") if w and nouns.senses(w)]
    heads = [w for w in words if not nouns.mostly_adjective(w)]
    return heads or words


def aligned_roots(class_names: list[str], nouns: WordNetNouns) -> dict[str, list[str]]:
    """Class name -> its root synsets (steps 1-2 of the module doc), in the names' order.

    Returns:
        e.g. ``{"animal-mammal": ["animal.n.01", "mammal.n.01"], "other": []}``.
    """
    words = {name: class_name_words(name, nouns) for name in class_names}
    settings = SenseSettings(min_samples=1, root="entity.n.01", margin=1.0, skip_adjectives=False)
    choices = choose_senses(list(words.values()), nouns, settings)
    roots: dict[str, list[str]] = {}
    for name, ws in words.items():
        chosen = [choices[w].chosen if w in choices else nouns.senses(w)[0] for w in ws]
        roots[name] = list(dict.fromkeys(c for c in chosen if c))
    return roots


def aligned_synsets(roots: dict[str, list[str]], nouns: WordNetNouns) -> tuple[frozenset[str], list[str]]:
    """Every root synset and all its hyponyms (step 3 of the module doc).

    Returns:
        ``(allowed, too_general)``: the allowed synset names, and the roots skipped because their
        hyponyms exceed :data:`MAX_ROOT_SHARE` of the noun synsets (sorted).
    """
    limit = MAX_ROOT_SHARE * sum(1 for _ in nouns.wn.all_synsets(pos="n"))
    allowed: set[str] = set()
    too_general = []
    for name in sorted({r for rs in roots.values() for r in rs}):
        below = {x.name() for x in nouns.synset(name).closure(lambda z: z.hyponyms() + z.instance_hyponyms())}
        if len(below) > limit:
            too_general.append(name)
            continue
        allowed.add(name)
        allowed.update(below)
    return frozenset(allowed), too_general
