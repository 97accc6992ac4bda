"""Vocabulary stage: hashtags -> canonical classes, per-sample labels and resampling weights.

``python -m pipeline.vocab run_dir=runs/demo [vocab=imagenet1k|wordnet_nouns|topk|raw] [vocab.min_count=5] ...``

(``vocab=<kind>`` picks ``conf/vocab/<kind>.yaml``; the default is ``wordnet_nouns``.)

Reads the metadata of the ingest shards (never the images), skips every sample the dedup
stage removed (``<run_dir>/dedup/removed.jsonl``; a missing dedup stage is an error unless
``vocab.require_dedup=false``), maps each normalized hashtag to a class and writes into
``<run_dir>/vocab/``:

* ``vocab.json``: ``classes`` (per class: ``index``, ``id``, ``synset`` such as
  ``brown_bear.n.01``, ``wnid`` such as ``n02132136``, ``lemma``, ``definition``,
  ``samples`` = n_c, ``hashtags`` = member hashtag -> samples) and ``totals``;
* ``unmapped.json``: hashtag -> samples for every hashtag no class could take, most
  frequent first (counted, never silently lost);
* ``labels.npz`` (numpy, no pickle): ``keys`` (shard keys, sorted), ``ids``, CSR
  ``indptr``/``indices`` of class ids, ``class_counts`` and ``weights_<scheme>`` for
  every scheme of :data:`pipeline.text.resampling.SCHEMES`, so one vocabulary serves every
  resampling sweep; read it with :func:`load_labels`;
* ``class_frequency.png``: class frequency by rank before/after each resampling scheme;
* ``manifest.json`` last.

Vocabulary kinds (Mahajan et al. 2018, section 2.1, "hashtag sets"):

* ``imagenet1k``: hashtags that are synonyms (lemmas) of the 1,000 ImageNet-1k synsets
  (the paper's ~1.5k set): a hashtag takes its first WordNet sense that is an IN-1k synset
  (:mod:`pipeline.text.wordnet_canon`); hyponyms are not mapped, as in the paper.
* ``wordnet_nouns``: any WordNet noun synset (the ~17k set), keeping classes with
  >= ``min_count`` samples.
* ``topk``: the ``top_k`` most frequent of those (the ~8.5k set), ties by synset name.
* ``raw``: normalized hashtags as classes, no WordNet (a baseline).

Class frequency ``n_c`` counts samples (a class once per sample, however many of its
synonyms the sample carries). Class indices follow decreasing ``n_c``, ties by id. A sample
keeps the classes of the vocabulary among its hashtags; samples left without a class are
excluded (the paper drops them), and ``totals`` counts them.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.io.atomic import atomic_path, remove_stale_temps, write_json, write_text
from pipeline.config import ConfigError, VocabKind, results_config, validate
from pipeline.io.manifest import canonical_hash, file_sha256, read_manifest, stage_dir, write_manifest
from pipeline.train.partition import current_partition
from pipeline.progress import progress_bar
from pipeline.io.removal import REMOVED_FILE, removed_rows
from pipeline.text.resampling import SCHEMES, all_weights, class_mass
from pipeline.io.shards import iter_metadata, shard_paths
from pipeline.text.wordnet_canon import HashtagMapper, read_imagenet1k_wnids, wordnet_nouns

log = logging.getLogger(__name__)
STAGE = "vocab"
VOCAB_FILE, LABELS_FILE, UNMAPPED_FILE, PLOT_FILE = "vocab.json", "labels.npz", "unmapped.json", "class_frequency.png"


@dataclass
class SampleTags:
    """Hashtags of the samples that survive dedup, in shard order."""

    keys: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    seen: int = 0  # samples in the shards
    removed: int = 0  # of which removed by dedup


def read_sample_tags(paths: list[Path], removed: set[str], progress: bool = False, total: int | None = None) -> SampleTags:
    """Read every sample's ``key``, ``id`` and ``hashtags`` from shard metadata, skipping ``removed`` keys."""
    out = SampleTags()
    for _, key, meta in progress_bar(iter_metadata(paths), total=total, unit="sample", desc="vocab",
                                    disable=not progress):
        out.seen += 1
        if key in removed:
            out.removed += 1
            continue
        out.keys.append(key)
        out.ids.append(meta["id"])
        out.tags.append(list(meta["hashtags"]))
    return out


class RawMapper:
    """The ``raw`` kind: every normalized hashtag is its own class (same interface as HashtagMapper)."""

    def __call__(self, tag: str) -> str:
        return tag

    def map_many(self, tags: list[str]) -> list[str]:
        return list(tags)


@dataclass
class Vocabulary:
    """The result of :func:`build_vocabulary`.

    ``indptr`` int64 (N+1,) and ``indices`` int32 (nnz,) are CSR labels of the kept samples
    (positions ``kept`` int64 (N,) into the input list), class ids sorted within a sample.
    """

    classes: list[str]  # class ids (synset names or raw hashtags), index order
    counts: np.ndarray  # int64 (C,), n_c in kept samples
    members: list[dict[str, int]]  # per class: member hashtag -> samples
    kept: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    unmapped: Counter  # hashtag -> samples, hashtags with no class candidate at all
    dropped: Counter  # class id -> samples, candidate classes cut by min_count / top_k
    occurrences: int  # hashtag occurrences seen (a tag once per sample)
    map_seconds: float  # time spent mapping the occurrences (cold cache)


def build_vocabulary(tag_lists: list[list[str]], mapper: Callable, kind: VocabKind | str, min_count: int, top_k: int) -> Vocabulary:
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
    chosen = sorted((c for c, n in n_samples.items() if n >= min_count), key=lambda c: (-n_samples[c], c))
    if kind is VocabKind.topk:
        chosen = chosen[:top_k]
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
        classes=chosen, counts=np.array([n_samples[c] for c in chosen], dtype=np.int64),
        members=[dict(members[c]) for c in chosen], kept=np.array(kept, dtype=np.int64),
        indptr=np.array(indptr, dtype=np.int64), indices=np.array(indices, dtype=np.int32),
        unmapped=unmapped, dropped=dropped, occurrences=occurrences, map_seconds=map_seconds)


def load_removals(run_dir: str | Path, require: bool) -> tuple[set[str], dict | None, Counter]:
    """Keys removed by dedup, dedup's manifest (None if absent) and removals by reason.

    Raises:
        FileNotFoundError: dedup has not finished and ``require`` is true.
    """
    man = read_manifest(stage_dir(run_dir, "dedup"))
    if man is None:
        if require:
            raise FileNotFoundError(
                f"no finished dedup stage in {run_dir} (missing {stage_dir(run_dir, 'dedup')}/manifest.json): run "
                f"`python -m pipeline.dedup run_dir={run_dir}` first, or set vocab.require_dedup=false to count "
                "every ingested sample (duplicates and withdrawn images included)")
        return set(), None, Counter()
    rows = removed_rows(run_dir)
    return {r["key"] for r in rows}, man, Counter(r.get("reason", "?") for r in rows)


def _class_records(vocab: Vocabulary, info: Callable[[str], dict]) -> list[dict]:
    return [{"index": i, "id": c, **info(c), "samples": int(vocab.counts[i]), "hashtags": vocab.members[i]}
            for i, c in enumerate(vocab.classes)]


def _write_labels(path: Path, keys: np.ndarray, ids: np.ndarray, vocab: Vocabulary, weights: dict) -> None:
    arrays = {"keys": keys, "ids": ids, "indptr": vocab.indptr, "indices": vocab.indices,
              "class_counts": vocab.counts, **{f"weights_{k}": v for k, v in weights.items()}}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def run_vocab(cfg) -> dict | None:
    """Run the vocabulary stage for ``cfg`` (a :class:`pipeline.config.PipelineConfig` node).

    The stage reads only metadata (about a second per 10k samples), so it runs in one
    process: under torchrun/SLURM, rank 0 does the work and other ranks return at once.

    Returns:
        The manifest (rank 0), or None on other ranks.

    Raises:
        pipeline.config.ConfigError: bad ``vocab.*`` values, or no class reaches ``min_count``.
        FileNotFoundError: ingest (or, if required, dedup) not finished; WordNet or the
            ImageNet synset list missing. All before any output is written.
    """
    validate(cfg)
    if not current_partition().is_main:
        return None
    t0 = time.perf_counter()
    vc, run_dir = cfg.vocab, cfg.run_dir
    kind = VocabKind(vc.kind)
    ingest_man = read_manifest(stage_dir(run_dir, "ingest"))
    paths = shard_paths(run_dir)  # FileNotFoundError if ingest has not finished
    removed, dedup_man, by_reason = load_removals(run_dir, vc.require_dedup)
    inputs = {"ingest": ingest_man["config_hash"], "ingest_shards": canonical_hash(ingest_man["outputs"].get("shards")),
              "dedup": dedup_man["config_hash"] if dedup_man else None,
              "dedup_removed": file_sha256(stage_dir(run_dir, "dedup") / REMOVED_FILE) if dedup_man else None}
    t_table = time.perf_counter()
    if kind is VocabKind.raw:
        mapper, info = RawMapper(), (lambda c: {"synset": None, "wnid": None, "lemma": c, "definition": None})
    else:
        nouns = wordnet_nouns(str(vc.wordnet_dir))
        inputs["wordnet_index_noun"] = file_sha256(Path(vc.wordnet_dir) / "index.noun")
        allowed = None
        if kind is VocabKind.imagenet1k:
            allowed = [nouns.from_wnid(w) for w in read_imagenet1k_wnids(vc.imagenet_info_dir)]
            inputs["imagenet1k_synsets"] = file_sha256(Path(vc.imagenet_info_dir) / "imagenet_synsets.txt")
        mapper, info = HashtagMapper(nouns, allowed), nouns.info
    table_seconds = time.perf_counter() - t_table

    out_dir = stage_dir(run_dir, STAGE)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)
    remove_stale_temps(out_dir)

    samples = read_sample_tags(paths, removed, vc.progress, ingest_man["counts"].get("written"))
    vocab = build_vocabulary(samples.tags, mapper, kind, vc.min_count, vc.top_k)
    if not vocab.classes:
        raise ConfigError(f"config error at vocab.min_count: no class has >= {vc.min_count} samples "
                          f"({len(samples.keys)} samples, {len(vocab.dropped)} candidate classes)")
    t_warm = time.perf_counter()
    for tags in samples.tags:
        mapper.map_many(tags)
    warm_seconds = time.perf_counter() - t_warm

    order = np.argsort(np.array(samples.keys)[vocab.kept], kind="stable")  # keys sorted for lookup
    vocab.kept, vocab.indptr, vocab.indices = _reorder(vocab, order)
    keys = np.array(samples.keys, dtype=str)[vocab.kept]
    ids = np.array(samples.ids, dtype=str)[vocab.kept]
    weights = all_weights(vocab.indptr, vocab.indices, vocab.counts)
    _write_labels(out_dir / LABELS_FILE, keys, ids, vocab, weights)

    unmapped = dict(sorted(vocab.unmapped.items(), key=lambda kv: (-kv[1], kv[0])))
    write_text(out_dir / UNMAPPED_FILE, json.dumps(unmapped, indent=1, ensure_ascii=False) + "\n")
    eligible = samples.seen - samples.removed
    totals = {
        "samples_seen": samples.seen, "samples_removed_by_dedup": samples.removed,
        "removed_by_reason": dict(sorted(by_reason.items())), "samples_kept": int(keys.size),
        "samples_excluded_no_label": eligible - int(keys.size),
        "kept_share": round(keys.size / eligible, 6) if eligible else 0.0,
        "hashtag_occurrences": vocab.occurrences, "unmapped_occurrences": sum(vocab.unmapped.values()),
        "unmapped_hashtags": len(vocab.unmapped), "dropped_classes": len(vocab.dropped),
        "dropped_class_occurrences": sum(vocab.dropped.values()),
    }
    doc = {"kind": kind.value, "min_count": vc.min_count, "top_k": vc.top_k if kind is VocabKind.topk else None,
           "num_classes": len(vocab.classes), "totals": totals, "classes": _class_records(vocab, info),
           "resampling": {"schemes": SCHEMES, "formula": "w_i = Z * mean_{c in C_i} n_c^(alpha-1), mean(w) = 1; "
                          "class mass ~ n_c^alpha (pipeline.text.resampling)"}}
    write_json(out_dir / VOCAB_FILE, doc)
    plot = out_dir / PLOT_FILE
    if vc.plot:
        from pipeline.reporting.plots import class_frequency_plot

        masses = {s: class_mass(vocab.indptr, vocab.indices, w, len(vocab.classes)) for s, w in weights.items()}
        n = vocab.counts.astype(np.float64)
        targets = {s: n ** a * (masses[s].sum() / (n ** a).sum()) for s, a in SCHEMES.items()}
        class_frequency_plot(masses, plot, title=f"{kind.value}: {len(vocab.classes)} classes, {keys.size} samples",
                             targets=targets)
    else:
        plot.unlink(missing_ok=True)

    occ = vocab.occurrences
    counts = {
        "classes": len(vocab.classes), **{k: v for k, v in totals.items() if k != "removed_by_reason"},
        "table_build_seconds": round(table_seconds, 3),
        "canonicalize_occurrences_per_s": round(occ / vocab.map_seconds) if vocab.map_seconds > 0 else None,
        "canonicalize_occurrences_per_s_warm": round(occ / warm_seconds) if warm_seconds > 0 else None,
    }
    outputs = {"vocab": VOCAB_FILE, "labels": LABELS_FILE, "unmapped": UNMAPPED_FILE,
               "plot": PLOT_FILE if vc.plot else None,
               "sha256": {n: file_sha256(out_dir / n) for n in (VOCAB_FILE, LABELS_FILE)}}
    config = results_config(cfg, "vocab")
    manifest = write_manifest(out_dir, stage=STAGE, config=config, inputs=inputs, counts=counts,
                              seconds=time.perf_counter() - t0, outputs=outputs)
    log.info("vocab[%s]: %d classes, %d/%d samples kept (%.1f%%), %d unmapped hashtags",
             kind.value, len(vocab.classes), keys.size, eligible, 100 * totals["kept_share"], len(vocab.unmapped))
    return manifest


def _reorder(vocab: Vocabulary, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permute the kept samples (and their CSR rows) by ``order``."""
    starts, ends = vocab.indptr[:-1][order], vocab.indptr[1:][order]
    lengths = ends - starts
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = (np.concatenate([vocab.indices[s:e] for s, e in zip(starts, ends)]) if order.size
               else np.zeros(0, dtype=np.int32)).astype(np.int32)
    return vocab.kept[order], indptr, indices


class Labels:
    """Per-sample labels and resampling weights of a finished vocab stage (read-only).

    Attributes:
        keys: str (N,), shard keys of the kept samples, sorted.
        ids: str (N,), their sample ids (``source:id``).
        indptr: int64 (N+1,), indices: int32 (nnz,): CSR class ids.
        class_counts: int64 (C,), n_c.
        num_classes: C.
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.keys, self.ids = arrays["keys"], arrays["ids"]
        self.indptr, self.indices, self.class_counts = arrays["indptr"], arrays["indices"], arrays["class_counts"]
        self.num_classes = int(self.class_counts.size)
        self._weights = {s: arrays[f"weights_{s}"] for s in SCHEMES}

    def __len__(self) -> int:
        return int(self.keys.size)

    def index_of(self, key: str) -> int:
        """Row of ``key`` (KeyError if the sample is not kept: removed, or without a class)."""
        i = int(np.searchsorted(self.keys, key))
        if i < self.keys.size and self.keys[i] == key:
            return i
        raise KeyError(f"sample {key!r} has no labels (removed by dedup or no in-vocabulary hashtag)")

    def __contains__(self, key: str) -> bool:
        try:
            self.index_of(key)
        except KeyError:
            return False
        return True

    def classes_of(self, key: str) -> list[int]:
        """Class ids of a sample, ascending (KeyError if it has none)."""
        i = self.index_of(key)
        return self.indices[self.indptr[i]: self.indptr[i + 1]].tolist()

    def weights(self, scheme: str) -> np.ndarray:
        """float64 (N,) replication weights of ``scheme`` (natural, sqrt, uniform), mean 1, in key order.

        Raises:
            ValueError: unknown scheme.
        """
        if scheme not in self._weights:
            raise ValueError(f"unknown resampling scheme {scheme!r}; choose one of {sorted(self._weights)}")
        return self._weights[scheme]


def load_labels(run_dir: str | Path) -> Labels:
    """:class:`Labels` of ``<run_dir>/vocab/labels.npz`` (no pickle).

    Raises:
        FileNotFoundError: the vocab stage has not finished in ``run_dir``.
        ValueError: naming the file, if it holds pickled objects (refused unread).
    """
    d = stage_dir(run_dir, STAGE)
    if read_manifest(d) is None:
        raise FileNotFoundError(f"no finished vocab stage in {run_dir} (missing {d}/manifest.json); "
                                f"run `python -m pipeline.vocab run_dir={run_dir}`")
    try:
        with np.load(d / LABELS_FILE, allow_pickle=False) as z:
            return Labels({k: z[k] for k in z.files})
    except ValueError as exc:  # "Object arrays cannot be loaded when allow_pickle=False"
        raise ValueError(f"refusing to load {d / LABELS_FILE}: {exc} (it should hold only numeric and string "
                         "arrays; a pickled object could run code when loaded)") from exc


def load_vocab(run_dir: str | Path) -> dict:
    """The content of ``<run_dir>/vocab/vocab.json`` (FileNotFoundError if the stage has not finished)."""
    d = stage_dir(run_dir, STAGE)
    if read_manifest(d) is None:
        raise FileNotFoundError(f"no finished vocab stage in {run_dir} (missing {d}/manifest.json)")
    return json.loads((d / VOCAB_FILE).read_text(encoding="utf-8"))


def main() -> None:
    """Hydra entry point: ``python -m pipeline.vocab [overrides]``."""
    from pipeline.cli import hydra_entry

    hydra_entry(run_vocab, STAGE)


if __name__ == "__main__":
    main()
