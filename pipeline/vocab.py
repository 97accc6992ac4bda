"""Vocabulary stage: hashtags -> canonical classes, per-sample labels and resampling weights.

``python -m pipeline.vocab run_dir=runs/demo [vocab=wordnet_nouns|imagenet1k|topk|raw|visual_nouns|fluent_aligned] ...``

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
* ``labels.npz`` (numpy, no pickle; unless ``vocab.whole_corpus_labels=false``): ``keys`` (shard keys, sorted), ``ids``, CSR
  ``indptr``/``indices`` of class ids, ``class_counts`` and ``weights_<scheme>`` for
  every scheme of :data:`pipeline.text.resampling.SCHEMES`, so one vocabulary serves every
  resampling sweep; read it with :func:`pipeline.io.labels.load_labels`;
* ``shard_labels/NNNNNN.parquet`` + ``shard_labels/shards.parquet``: the same labels and weights per
  ingest shard, and a table of shards x {samples, expected replicated items per scheme}
  (:mod:`pipeline.io.shard_labels`), so a training rank can read only its shards;
* ``class_frequency.png``: class frequency by rank before/after each resampling scheme;
* ``senses.json`` (``visual_nouns`` only): per ambiguous hashtag, its candidate senses with
  their context scores, the chosen class and why (:mod:`pipeline.text.sense_choice`);
* ``manifest.json`` last.

Vocabulary kinds and how classes are chosen and samples labelled: :mod:`pipeline.text.vocabulary`.
"""

from __future__ import annotations

import json
import logging
import time

from pipeline.cli import hydra_entry
from pipeline.config import VocabKind, validate
from pipeline.config_views import results_config
from pipeline.executor import make_executor
from pipeline.io.atomic import remove_stale_temps, write_json, write_text
from pipeline.io.labels import write_labels
from pipeline.io.manifest import MANIFEST, canonical_hash, file_sha256, read_manifest, stage_dir, write_manifest
from pipeline.io.removal import load_removals
from pipeline.io.run_folder import (
    CLASS_FREQUENCY_PLOT,
    DEDUP,
    INGEST,
    LABELS_FILE,
    REMOVED_FILE,
    SENSES_FILE,
    SHARD_LABELS_DIR,
    UNMAPPED_FILE,
    VOCAB,
    VOCAB_FILE,
)
from pipeline.io.shard_labels import SHARD_TABLE, concat_shard_labels, publish_shard_labels, staging_folder
from pipeline.io.shards import shard_paths
from pipeline.reporting.plots import class_frequency_plot
from pipeline.system import current_partition, default_workers
from pipeline.text.sense_choice import sense_summary
from pipeline.text.shard_vocab import build_shard_vocabulary, shard_tasks
from pipeline.text.vocab_document import mass_curves, unmapped_table, vocab_counts, vocab_document, vocab_totals
from pipeline.text.vocabulary import class_mapper

log = logging.getLogger(__name__)
STAGE = VOCAB


def run_vocab(cfg) -> dict | None:
    """Run the vocabulary stage for ``cfg`` (a :class:`pipeline.config.PipelineConfig` node).

    The stage reads only metadata. Its driver runs on rank 0 (under torchrun/SLURM other ranks return at once)
    and its per-shard passes on ``data.engine`` (:mod:`pipeline.text.shard_vocab`, :mod:`pipeline.executor`): a
    local process pool, or Ray tasks on a local Ray or a cluster; the same outputs either way.

    Returns:
        The manifest (rank 0), or None on other ranks.

    Raises:
        pipeline.errors.ConfigError: bad ``vocab.*`` values, or no class reaches ``min_count``.
        FileNotFoundError: ingest (or, if required, dedup) not finished; WordNet or the
            ImageNet synset list missing. All before any output is written.
    """
    validate(cfg)
    if not current_partition().is_main:
        return None
    t0 = time.perf_counter()
    vc, run_dir = cfg.vocab, cfg.run_dir
    kind = VocabKind(vc.kind)
    # plan: the shards, dedup's removals, the class table
    ingest_man = read_manifest(stage_dir(run_dir, INGEST))
    paths = shard_paths(run_dir)  # FileNotFoundError if ingest has not finished
    assert ingest_man is not None  # it has finished: shard_paths read its manifest
    removed, dedup_man, by_reason = load_removals(run_dir, vc.require_dedup)
    inputs = {
        "ingest": ingest_man["config_hash"],
        "ingest_shards": canonical_hash(ingest_man["outputs"].get("shards")),
        "dedup": dedup_man["config_hash"] if dedup_man else None,
        "dedup_removed": file_sha256(stage_dir(run_dir, DEDUP) / REMOVED_FILE) if dedup_man else None,
    }
    t_table = time.perf_counter()
    mapper, info, table_inputs, choice = class_mapper(kind, vc.wordnet_dir, vc.imagenet_info_dir, vc.align_classes)
    inputs.update(table_inputs)
    table_seconds = time.perf_counter() - t_table
    out_dir = stage_dir(run_dir, STAGE)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    remove_stale_temps(out_dir)

    # blocks: the per-shard passes (pipeline.text.shard_vocab), run by the data engine and added up here in shard
    # order; each pass writes or returns one shard's part, so no process holds the corpus's samples
    tasks = shard_tasks(paths, removed)
    workers = default_workers(cfg.data.workers)
    with make_executor(cfg.data.engine, workers, cfg.ray.address, cfg.ray.max_retries) as executor:
        staging = staging_folder(out_dir / SHARD_LABELS_DIR)
        sv = build_shard_vocabulary(
            executor, tasks, mapper, kind, vc.min_count, vc.top_k, staging, vc.label_noise, progress=vc.progress
        )
        engine = executor.describe()
    vocab, senses = sv.table, sv.senses
    if senses is not None:
        choice = sense_summary(senses)
    noise = sv.noise
    totals = vocab_totals(sv.tags, vocab, by_reason, sv.kept)

    # write: the shard labels (published whole), labels.npz from them, unmapped, vocab.json, the plot, the manifest
    shard_labels = publish_shard_labels(out_dir / SHARD_LABELS_DIR, sv.rows)
    if vc.whole_corpus_labels:
        keys, ids, indptr, indices, weights = concat_shard_labels(out_dir / SHARD_LABELS_DIR, sv.tags.key_width, sv.tags.id_width)
        write_labels(out_dir / LABELS_FILE, keys, ids, indptr, indices, vocab.counts, weights)
        del keys, ids, indptr, indices, weights
    else:
        (out_dir / LABELS_FILE).unlink(missing_ok=True)
    write_text(out_dir / UNMAPPED_FILE, json.dumps(unmapped_table(vocab), indent=1, ensure_ascii=False) + "\n")
    if senses is not None:
        write_text(out_dir / SENSES_FILE, json.dumps(senses, indent=1, ensure_ascii=False) + "\n")
    else:
        (out_dir / SENSES_FILE).unlink(missing_ok=True)
    write_json(out_dir / VOCAB_FILE, vocab_document(kind, vc.min_count, vc.top_k, vocab, totals, info, choice))
    plot = out_dir / CLASS_FREQUENCY_PLOT
    if vc.plot:
        masses, targets = mass_curves(sv.masses, vocab.counts)
        class_frequency_plot(
            masses, plot, title=f"{kind.value}: {len(vocab.classes)} classes, {sv.kept} samples", targets=targets
        )
    else:
        plot.unlink(missing_ok=True)
    outputs = {
        "vocab": VOCAB_FILE,
        "labels": LABELS_FILE if vc.whole_corpus_labels else None,
        "shard_labels": {"dir": SHARD_LABELS_DIR, **shard_labels},
        "unmapped": UNMAPPED_FILE,
        "senses": SENSES_FILE if senses is not None else None,
        "plot": CLASS_FREQUENCY_PLOT if vc.plot else None,
        "sha256": {
            n: file_sha256(out_dir / n)
            for n in (VOCAB_FILE, LABELS_FILE, f"{SHARD_LABELS_DIR}/{SHARD_TABLE}")
            if n != LABELS_FILE or vc.whole_corpus_labels
        },
    }
    manifest = write_manifest(
        out_dir,
        stage=STAGE,
        config=results_config(cfg, "vocab"),
        inputs=inputs,
        counts={
            **vocab_counts(vocab, totals, table_seconds, sv.warm_seconds, len(sv.tags.occ)),
            **({"label_noise": noise.to_dict()} if noise else {}),
            "engine": engine,
        },
        seconds=time.perf_counter() - t0,
        outputs=outputs,
    )
    log.info(
        "vocab[%s]: %d classes, %d/%d samples kept (%.1f%%), %d unmapped hashtags",
        kind.value,
        len(vocab.classes),
        sv.kept,
        sv.tags.eligible,
        100 * totals["kept_share"],
        len(vocab.unmapped),
    )
    return manifest


def main() -> None:
    """Hydra entry point: ``python -m pipeline.vocab [overrides]``."""
    hydra_entry(run_vocab, STAGE)


if __name__ == "__main__":
    main()
