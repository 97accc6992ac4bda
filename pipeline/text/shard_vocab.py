"""The vocabulary stage's work, shard by shard: per-shard counts (map) added up in shard order (reduce), so no
process holds a Python object per sample of the corpus.

The passes over the shards (each a function of one :class:`ShardTask` and a small shared table, run by a
:class:`pipeline.executor.Executor`):

1. :func:`count_tags`: samples seen and removed by dedup, hashtag occurrences and samples per hashtag. With
   ``vocab.label_noise`` this runs twice: first for the marginal the replacements are drawn from
   (:func:`pipeline.text.label_noise.noise_table`), then on the noisy hashtags.
2. ``visual_nouns`` only, :func:`count_cooccurrence`: for the ambiguous hashtags, the samples shared with each
   other hashtag (what :func:`pipeline.text.sense_choice.choose_senses` scores senses with).
3. :func:`count_classes`: samples per class, once the driver has mapped the **distinct** hashtags to classes
   (a class counts once per sample however many of its hashtags the sample carries).
4. :func:`weight_sums`: once the driver has chosen the classes, each shard's kept samples and the sum of their
   unscaled weights per resampling scheme (:func:`pipeline.text.resampling.raw_sample_weights`); the corpus's mean
   scales every weight to mean 1, as :func:`pipeline.text.resampling.sample_weights` does.
5. :func:`write_shard`: each shard's labels and weights into its Parquet file
   (:func:`pipeline.io.shard_labels.write_shard_file`); returns its row of the shard table and its class masses.

Every pass re-reads its shard's ``key``, ``id`` and ``hashtags`` columns (cheap: 1.4 µs a sample from Parquet) and
holds one shard's samples. The tables the driver keeps are the size of the distinct hashtags and classes. The
labels equal :func:`pipeline.text.vocabulary.build_vocabulary`'s over the whole corpus (tested); weights may
differ from the whole-corpus call in the last bit (the mean is summed shard by shard), the same on every executor.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import VocabKind
from pipeline.errors import ConfigError
from pipeline.executor import Executor
from pipeline.io.shard_labels import write_shard_file
from pipeline.io.shards import index_columns, parse_key
from pipeline.text.label_noise import NoiseCounts, NoiseTable, noise_table, replace_with_table
from pipeline.text.resampling import SCHEMES, class_mass, raw_sample_weights
from pipeline.text.sense_choice import VisualNounMapper, ambiguous_tags, cooccurrence
from pipeline.text.vocabulary import ClassTable, choose_classes

__all__ = [
    "ShardTask",
    "ShardVocabulary",
    "TagCounts",
    "build_shard_vocabulary",
    "shard_tasks",
    "count_classes",
    "count_cooccurrence",
    "count_tags",
    "shard_labels",
    "weight_sums",
    "write_shard",
]


@dataclass(frozen=True)
class ShardTask:
    """One shard's work: its tar ``path``, number and the keys dedup removed from it."""

    path: str
    shard: int
    removed: frozenset[str] = frozenset()


@dataclass
class _Shard:
    """A shard's samples dedup kept, in tar order, as arrays: keys and ids str (n,), and its hashtag occurrences as
    ``parent`` int64 (occ,) (the sample of each) and ``code`` int64 (occ,) (an index into ``tags``, the shard's
    distinct hashtags); ``seen`` samples in the shard, ``replaced`` occurrences by label noise."""

    keys: np.ndarray
    ids: np.ndarray
    parent: np.ndarray
    code: np.ndarray
    tags: list[str]
    seen: int
    replaced: int

    def pairs(self, lut: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The distinct (sample, ``lut[code]``) pairs with ``lut[code] >= 0``, sorted by sample then value: int64
        (pairs,) samples and values (``width`` > every value)."""
        v = lut[self.code] if self.code.size else np.zeros(0, dtype=np.int64)
        ok = v >= 0
        u = np.unique(self.parent[ok] * width + v[ok])
        return u // width, u % width

    def lists(self) -> list[list[str]]:
        """Per sample, its hashtags (Python lists: the co-occurrence pass only)."""
        out: list[list[str]] = [[] for _ in range(self.keys.size)]
        for p, c in zip(self.parent.tolist(), self.code.tolist()):
            out[p].append(self.tags[c])
        return out


def _load(task: ShardTask, noise: NoiseTable | None) -> _Shard:
    """The :class:`_Shard` of ``task`` with ``noise`` applied (None: none). The hashtags are dictionary-encoded by
    Arrow, so no Python object is made per hashtag occurrence (but with label noise, whose draws are per sample);
    the shard's keys and ids pass through Python strings on their way to numpy (one shard at a time)."""
    table = index_columns(task.path, ["key", "id", "hashtags"])
    seen = table.num_rows
    if task.removed:
        table = table.filter(pc.invert(pc.is_in(table.column("key"), value_set=pa.array(sorted(task.removed)))))
    lists = table.column("hashtags").combine_chunks()
    replaced = 0
    if noise is not None and noise.rate > 0:
        new, replaced = replace_with_table(table.column("key").to_pylist(), lists.to_pylist(), noise)
        lists = pa.array(new, pa.list_(pa.string()))
    enc = pc.dictionary_encode(pc.list_flatten(lists))
    return _Shard(
        keys=np.asarray(table.column("key").to_numpy(zero_copy_only=False)).astype(str),
        ids=np.asarray(table.column("id").to_numpy(zero_copy_only=False)).astype(str),
        parent=np.asarray(pc.list_parent_indices(lists), dtype=np.int64),
        code=np.asarray(enc.indices, dtype=np.int64),
        tags=enc.dictionary.to_pylist(),
        seen=seen,
        replaced=replaced,
    )


@dataclass
class TagCounts:
    """Hashtag counts of a shard, or of the corpus (:meth:`add`): samples ``seen`` and ``removed`` by dedup,
    hashtag ``occurrences`` (and ``replaced`` by label noise), ``occ`` hashtag -> occurrences, ``samples`` hashtag ->
    samples carrying it."""

    seen: int = 0
    removed: int = 0
    occurrences: int = 0
    replaced: int = 0
    occ: Counter = field(default_factory=Counter)
    samples: Counter = field(default_factory=Counter)
    key_width: int = 1  # the longest key and id of the samples dedup kept (labels.npz's string widths)
    id_width: int = 1

    def add(self, other: TagCounts) -> TagCounts:
        """Add ``other`` into this one; returns self."""
        self.seen += other.seen
        self.removed += other.removed
        self.occurrences += other.occurrences
        self.replaced += other.replaced
        self.occ.update(other.occ)
        self.samples.update(other.samples)
        self.key_width = max(self.key_width, other.key_width)
        self.id_width = max(self.id_width, other.id_width)
        return self

    @property
    def eligible(self) -> int:
        """Samples dedup kept."""
        return self.seen - self.removed


def count_tags(task: ShardTask, noise: NoiseTable | None) -> TagCounts:
    """Pass 1: the shard's :class:`TagCounts`."""
    sh = _load(task, noise)
    t = len(sh.tags)
    occ = np.bincount(sh.code, minlength=t)
    samples = np.bincount(sh.pairs(np.arange(t), max(t, 1))[1], minlength=t)
    return TagCounts(
        seen=sh.seen,
        removed=sh.seen - sh.keys.size,
        occurrences=int(sh.code.size),
        replaced=sh.replaced,
        occ=Counter(dict(zip(sh.tags, occ.tolist()))),
        samples=Counter({tag: n for tag, n in zip(sh.tags, samples.tolist()) if n}),
        key_width=max(1, sh.keys.dtype.itemsize // 4),
        id_width=max(1, sh.ids.dtype.itemsize // 4),
    )


def count_cooccurrence(task: ShardTask, shared: tuple[NoiseTable | None, set[str]]) -> dict[str, Counter]:
    """Pass 2 (``visual_nouns``): ambiguous hashtag -> other hashtag -> samples carrying both, in this shard;
    ``shared`` = (noise, the ambiguous hashtags)."""
    noise, ambiguous = shared
    return cooccurrence(_load(task, noise).lists(), keep=ambiguous)[1]


def count_classes(task: ShardTask, shared: tuple[NoiseTable | None, dict[str, str | None]]) -> Counter:
    """Pass 3: class -> samples of this shard carrying it (a class once per sample); ``shared`` = (noise, hashtag ->
    class or None)."""
    noise, tag_class = shared
    sh = _load(task, noise)
    names: dict[str, int] = {}
    lut = np.array([-1 if (c := tag_class.get(t)) is None else names.setdefault(c, len(names)) for t in sh.tags], dtype=np.int64)
    n = np.bincount(sh.pairs(lut, max(len(names), 1))[1], minlength=len(names))
    return Counter(dict(zip(names, n.tolist())))


def shard_labels(
    task: ShardTask, noise: NoiseTable | None, tag_class: dict[str, str | None], index: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The shard's kept samples (at least one class of ``index``) in key order: keys str (n,), ids str (n,), CSR
    indptr int64 (n+1,) and indices int32 (nnz,), class ids ascending within a sample."""
    sh = _load(task, noise)
    lut = np.array([index.get(c, -1) if (c := tag_class.get(t)) is not None else -1 for t in sh.tags], dtype=np.int64)
    sample, cid = sh.pairs(lut, max(len(index), 1))
    kept, per = np.unique(sample, return_counts=True)
    keys, ids = sh.keys[kept], sh.ids[kept]
    indptr = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    if order.size and not np.array_equal(order, np.arange(order.size)):  # tar order is key order for ingest's shards
        starts, ends = indptr[:-1][order], indptr[1:][order]
        cid = np.concatenate([cid[a:b] for a, b in zip(starts, ends)])
        indptr = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        keys, ids = keys[order], ids[order]
    return keys, ids, indptr, cid.astype(np.int32)


def weight_sums(task: ShardTask, shared: tuple) -> tuple[int, dict[str, float]]:
    """Pass 4: (kept samples, scheme -> sum of their unscaled weights); ``shared`` = (noise, hashtag -> class,
    class -> index, n_c int64 (C,))."""
    noise, tag_class, index, counts = shared
    _, _, indptr, indices = shard_labels(task, noise, tag_class, index)
    return int(indptr.size - 1), {
        s: float(np.sum(raw_sample_weights(indptr, indices, counts, a))) if indptr.size > 1 else 0.0 for s, a in SCHEMES.items()
    }


def write_shard(task: ShardTask, shared: tuple) -> tuple[dict | None, dict[str, np.ndarray]]:
    """Pass 5: write the shard's labels file into ``folder`` (:func:`pipeline.io.shard_labels.write_shard_file`; a
    shard without kept samples has none); returns (its shard-table row or None, scheme -> class masses float64
    (C,)). ``shared`` = (noise, hashtag -> class, class -> index, n_c int64 (C,), scheme -> the corpus's mean
    unscaled weight, folder)."""
    noise, tag_class, index, counts, means, folder = shared
    keys, ids, indptr, indices = shard_labels(task, noise, tag_class, index)
    if keys.size == 0:
        return None, {s: np.zeros(len(counts)) for s in SCHEMES}
    weights = {s: raw_sample_weights(indptr, indices, counts, a) / means[s] for s, a in SCHEMES.items()}
    row = write_shard_file(Path(folder), task.shard, keys, ids, indptr, indices, weights)
    return row, {s: class_mass(indptr, indices, w, len(counts)) for s, w in weights.items()}


@dataclass
class ShardVocabulary:
    """What :func:`build_shard_vocabulary` made: the :class:`pipeline.text.vocabulary.ClassTable`, the corpus's
    :class:`TagCounts`, the samples kept (with a class), the shard table's rows, the class masses per scheme
    (float64 (C,)), the sense choices (``visual_nouns``), the seconds to map the distinct hashtags again (warm),
    what label noise replaced (``vocab.label_noise`` > 0)."""

    table: ClassTable
    tags: TagCounts
    kept: int
    rows: list[dict]
    masses: dict[str, np.ndarray]
    senses: list[dict] | None
    warm_seconds: float
    noise: NoiseCounts | None = None


def build_shard_vocabulary(
    executor: Executor,
    tasks: list[ShardTask],
    mapper,
    kind: VocabKind | str,
    min_count: int,
    top_k: int,
    folder: Path,
    label_noise: float = 0.0,
    progress: bool = False,
) -> ShardVocabulary:
    """The vocabulary of the shards of ``tasks`` and their labels files written into ``folder`` (a staging folder:
    :func:`pipeline.io.shard_labels.publish_shard_labels` makes it visible), by the passes of the module docstring.

    Args:
        mapper: the kind's mapper (:func:`pipeline.text.vocabulary.class_mapper`; a ``VisualNounMapper`` is fitted
            here, from counts).

    Raises:
        pipeline.errors.ConfigError: no class reaches ``min_count``.
        ValueError: ``label_noise`` > 0 on a corpus of fewer than 2 distinct hashtags.
    """
    kw = {"progress": progress}
    noise = None
    tags = TagCounts()
    for part in executor.imap(count_tags, tasks, None, desc="vocab: hashtags", **kw):
        tags.add(part)
    noise_counts = None
    if label_noise > 0:
        noise = noise_table(tags.occ, label_noise)
        before = tags.occurrences
        tags = TagCounts()
        for part in executor.imap(count_tags, tasks, noise, desc="vocab: label noise", **kw):
            tags.add(part)
        noise_counts = NoiseCounts(label_noise, before, tags.replaced)
    senses = None
    if isinstance(mapper, VisualNounMapper):
        ambiguous = ambiguous_tags(tags.samples, mapper.nouns, mapper.settings)
        co: dict[str, Counter] = {}
        for co_part in executor.imap(count_cooccurrence, tasks, (noise, ambiguous), desc="vocab: co-occurrence", **kw):
            for t, row in co_part.items():
                co.setdefault(t, Counter()).update(row)
        senses = mapper.fit_counts(tags.samples, co, tags.eligible)
    distinct = sorted(tags.occ)
    t0 = time.perf_counter()
    tag_class = dict(zip(distinct, mapper.map_many(distinct)))
    map_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    mapper.map_many(distinct)
    warm_seconds = time.perf_counter() - t0
    n_samples: Counter = Counter()
    for cls_part in executor.imap(count_classes, tasks, (noise, tag_class), desc="vocab: classes", **kw):
        n_samples.update(cls_part)
    chosen = choose_classes(n_samples, kind, min_count, top_k)
    if not chosen:
        raise ConfigError(
            f"config error at vocab.min_count: no class has >= {min_count} samples "
            f"({tags.eligible} samples, {len(n_samples)} candidate classes)"
        )
    index = {c: i for i, c in enumerate(chosen)}
    counts = np.array([n_samples[c] for c in chosen], dtype=np.int64)
    members: dict[str, dict[str, int]] = {c: {} for c in chosen}
    unmapped: Counter = Counter()
    for t in distinct:
        c = tag_class[t]
        if c is None:
            unmapped[t] = tags.occ[t]
        elif c in members:
            members[c][t] = tags.occ[t]
    table = ClassTable(
        classes=chosen,
        counts=counts,
        members=[members[c] for c in chosen],
        unmapped=unmapped,
        dropped=Counter({c: n for c, n in n_samples.items() if c not in index}),
        occurrences=tags.occurrences,
        map_seconds=map_seconds,
    )
    # the corpus's mean unscaled weight per scheme, summed shard by shard in shard order (the same on any executor)
    kept, sums = 0, dict.fromkeys(SCHEMES, 0.0)
    for n, w_part in executor.imap(weight_sums, tasks, (noise, tag_class, index, counts), desc="vocab: weights", **kw):
        kept += n
        for s in SCHEMES:
            sums[s] += w_part[s]
    means = {s: sums[s] / kept for s in SCHEMES}
    rows: list[dict] = []
    masses = {s: np.zeros(len(chosen)) for s in SCHEMES}
    shared = (noise, tag_class, index, counts, means, str(folder))
    for table_row, m_part in executor.imap(write_shard, tasks, shared, desc="vocab: labels", **kw):
        if table_row is not None:
            rows.append(table_row)
        for s in SCHEMES:
            masses[s] += m_part[s]
    records = None if senses is None else [c.to_dict() for c in senses.values()]
    return ShardVocabulary(table, tags, kept, rows, masses, records, warm_seconds, noise_counts)


def shard_tasks(paths: list[Path], removed: set[str]) -> list[ShardTask]:
    """One :class:`ShardTask` per shard tar, each with the removed keys of its own shard (keys ``UUUUUU_PPPPPP``)."""
    by_shard: dict[int, set[str]] = {}
    for key in removed:
        by_shard.setdefault(parse_key(key)[0], set()).add(key)
    return [ShardTask(str(p), int(p.stem), frozenset(by_shard.get(int(p.stem), ()))) for p in paths]
