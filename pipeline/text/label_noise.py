"""Synthetic label noise: a seeded fraction of each sample's hashtags replaced by random ones.

Mahajan et al. 2018 measure robustness to noisy hashtags by replacing a share p of the hashtags
with random ones and report that transfer accuracy falls only a little (about 1 point at p = 10%,
about 2 at 25%; the exact sampling of the replacements is not restated here). ``vocab.label_noise``
does this before the vocabulary is built: each hashtag occurrence is replaced with
probability ``rate`` by a hashtag drawn from the occurrence-weighted marginal of the kept samples,
never by itself (a draw equal to the replaced hashtag is drawn again). The draws depend on the
sample key and the rate only (:func:`pipeline.seeding.item_seed`), so the noise of a
sample does not depend on shard order, on other samples or on the run seed, and a run folder
reproduces it exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipeline.seeding import item_seed

__all__ = ["NoiseCounts", "NoiseTable", "noise_table", "replace_hashtags", "replace_with_table"]


@dataclass
class NoiseCounts:
    """What :func:`replace_hashtags` did (recorded in the vocab manifest's ``counts.label_noise``)."""

    rate: float  # the requested probability per hashtag occurrence
    occurrences: int  # hashtag occurrences in the input
    replaced: int  # of which replaced

    def to_dict(self) -> dict:
        return {
            "rate": self.rate,
            "occurrences": self.occurrences,
            "replaced": self.replaced,
            "replaced_share": round(self.replaced / self.occurrences, 6) if self.occurrences else 0.0,
        }


@dataclass(frozen=True)
class NoiseTable:
    """The replacement draw of :func:`replace_with_table`: ``rate``, the distinct hashtags sorted (``vocab``) and
    the cumulative share of their occurrences, float64 (V,) (``cdf``), from the marginal of the whole corpus."""

    rate: float
    vocab: tuple[str, ...]
    cdf: np.ndarray


def noise_table(marginal: Counter, rate: float) -> NoiseTable:
    """The :class:`NoiseTable` of a hashtag -> occurrences ``marginal`` (the kept samples' hashtags, summed over
    every shard).

    Raises:
        ValueError: ``rate`` outside [0, 1], or > 0 while the corpus has fewer than 2 distinct hashtags.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label noise rate must be in [0, 1], got {rate}")
    vocab = sorted(marginal)  # a fixed order, so draws do not depend on the input order
    if rate > 0 and len(vocab) < 2:
        raise ValueError("label noise needs at least 2 distinct hashtags to draw replacements from")
    cdf = np.cumsum([marginal[t] for t in vocab], dtype=np.float64)
    if cdf.size:
        cdf /= cdf[-1]
    return NoiseTable(rate, tuple(vocab), cdf)


def replace_with_table(keys: list[str], tag_lists: list[list[str]], table: NoiseTable) -> tuple[list[list[str]], int]:
    """:func:`replace_hashtags` for some of the corpus's samples, with the corpus's :class:`NoiseTable`: (new hashtag
    lists, occurrences replaced). A sample's draws depend on its key and the rate only, so a shard's samples get
    the same hashtags as in a whole-corpus call."""
    if table.rate == 0.0:
        return [list(t) for t in tag_lists], 0
    cut = int(round(table.rate * 1_000_000))
    vocab, cdf = table.vocab, table.cdf
    out: list[list[str]] = []
    replaced = 0
    for key, tags in zip(keys, tag_lists):
        rng = np.random.default_rng(item_seed("label_noise", f"{cut}:{key}"))
        new: list[str] = []
        for tag in tags:
            if rng.integers(1_000_000) < cut:
                pick = tag
                while pick == tag:
                    pick = vocab[int(np.searchsorted(cdf, rng.random(), side="right"))]
                replaced += 1
                tag = pick
            if tag not in new:
                new.append(tag)
        out.append(new)
    return out, replaced


def replace_hashtags(keys: list[str], tag_lists: list[list[str]], rate: float) -> tuple[list[list[str]], NoiseCounts]:
    """Replace each hashtag occurrence with probability ``rate`` by a random other hashtag (see the module).

    Args:
        keys: the sample keys (N,), the seed of each sample's draws.
        tag_lists: the N samples' normalized hashtags (not modified).
        rate: probability per occurrence, in [0, 1].

    Returns:
        The new hashtag lists (a sample's duplicates after replacement are kept once, first
        occurrence order) and the counts.

    Raises:
        ValueError: ``rate`` outside [0, 1], ``keys`` and ``tag_lists`` of different lengths,
            or a replacement asked for while the corpus has fewer than 2 distinct hashtags.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label noise rate must be in [0, 1], got {rate}")
    if len(keys) != len(tag_lists):
        raise ValueError(f"{len(keys)} keys but {len(tag_lists)} hashtag lists")
    occurrences = sum(len(t) for t in tag_lists)
    if rate == 0.0:
        return [list(t) for t in tag_lists], NoiseCounts(rate, occurrences, 0)
    table = noise_table(Counter(tag for tags in tag_lists for tag in tags), rate)
    out, replaced = replace_with_table(keys, tag_lists, table)
    return out, NoiseCounts(rate, occurrences, replaced)
