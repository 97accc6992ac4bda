"""The run-folder contract: which stage writes which file, what reads what, and the readers.

A run folder (``run_dir``) holds one sub-folder per stage; each stage writes only its own
folder and writes ``manifest.json`` last (:mod:`pipeline.io.manifest`). This module is the
one owner of the folder's layout: the stage graph (:data:`STAGES`, :data:`UPSTREAM`), the
file names of every stage's outputs, and readers for the files other stages, the report,
``pipeline.summarize``, ``pipeline.audit``, the benchmarks and the notebooks read. Nothing
else spells a file name of another stage's folder.

Layout (``<run_dir>/``)::

    ingest/    shards/NNNNNN.tar + NNNNNN.index.parquet, quarantine.jsonl, plan.json, manifest.json
    dedup/     removed.jsonl, eval_contamination.json, manifest.json
    vocab/     vocab.json, labels.npz (pipeline.io.labels), shard_labels/, unmapped.json, class_frequency.png, manifest.json
    pretrain/  trunk.safetensors, model.json, metrics.jsonl, eval.jsonl, checkpoints/, data_audit.json, manifest.json
    transfer/  results.json, finetune_epochs.jsonl, correct.npz, runs/ (resume state), manifest.json
    run/       stages.json (stage keys), energy.json (per-stage energy), ranks.json, error.txt
    report.md, report/*.png
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.io import atomic
from pipeline.io.manifest import MANIFEST, read_manifest, stage_dir

__all__ = [
    "STAGES",
    "UPSTREAM",
    "DIST_STAGES",
    "MANIFEST",
    "stage_dir",
    "read_manifest",
    "read_json",
    "read_jsonl",
    "INGEST",
    "DEDUP",
    "VOCAB",
    "PRETRAIN",
    "TRANSFER",
    "RUN",
    "REPORT_FILE",
    "PLOT_DIR",
    "QUARANTINE_FILE",
    "PLAN_FILE",
    "REMOVED_FILE",
    "EVAL_CONTAMINATION_FILE",
    "VOCAB_FILE",
    "LABELS_FILE",
    "SHARD_LABELS_DIR",
    "UNMAPPED_FILE",
    "SENSES_FILE",
    "CLASS_FREQUENCY_PLOT",
    "TRUNK_FILE",
    "MODEL_FILE",
    "METRICS_FILE",
    "EVAL_FILE",
    "CHECKPOINT_DIR",
    "DATA_AUDIT_FILE",
    "RESULTS_FILE",
    "EPOCHS_FILE",
    "CORRECT_FILE",
    "RUNS_DIR",
    "NN_BANK_DIR",
    "RUNS_KEY_FILE",
    "RUN_RECORD_FILE",
    "RUN_ARRAYS_FILE",
    "transfer_run_name",
    "transfer_run_dir",
    "STAGE_STATE_FILE",
    "ENERGY_FILE",
    "RANKS_FILE",
    "ERROR_FILE",
    "path",
    "read_eval_contamination",
    "read_model_info",
    "read_metrics",
    "read_evals",
    "read_transfer_results",
    "read_stage_state",
    "read_energy_records",
    "read_error",
    "PHASH_INDEX_FILE",
    "INDEX_KEYS_FILE",
    "SHARD_DIR",
    "PART_DIR",
]

INGEST, DEDUP, VOCAB, PRETRAIN, TRANSFER = "ingest", "dedup", "vocab", "pretrain", "transfer"
RUN = "run"  # the orchestrator's own folder (pipeline.run)

STAGES: tuple[str, ...] = (INGEST, DEDUP, VOCAB, PRETRAIN, TRANSFER)
"""The stages in the order ``pipeline.run`` runs them."""

UPSTREAM: dict[str, tuple[str, ...]] = {
    INGEST: (),
    DEDUP: (INGEST,),
    VOCAB: (DEDUP,),
    PRETRAIN: (VOCAB,),
    TRANSFER: (PRETRAIN, DEDUP),
}
"""Stage -> the stages whose outputs it reads (its key includes theirs)."""

DIST_STAGES: tuple[str, ...] = (INGEST, PRETRAIN, TRANSFER)
"""Stages that split their work over the ranks of a multi-task job."""

# ingest/
SHARD_DIR = "shards"  # NNNNNN.tar + NNNNNN.index.parquet (pipeline.io.shards, pipeline.io.shard_index)
QUARANTINE_FILE = "quarantine.jsonl"  # one JSON row per rejected input: id, source, reason
PLAN_FILE = "plan.json"  # the input units and their fingerprints
PART_DIR = "parts"  # NNNNNN.json per unit: what it wrote and rejected (ingest's resume record, read by ingest only)
# dedup/
REMOVED_FILE = "removed.jsonl"  # one JSON row per removed sample: key, reason (pipeline.io.removal)
EVAL_CONTAMINATION_FILE = "eval_contamination.json"  # eval set -> images, contaminated, ids
PHASH_INDEX_FILE = "phash.index"  # the faiss binary index of the kept samples' pHashes the near search used
INDEX_KEYS_FILE = "index_keys.txt"  # the shard key of each row of phash.index, one per line
# vocab/
VOCAB_FILE = "vocab.json"  # classes (synset, lemma, hashtags, samples), resampling, counts
LABELS_FILE = "labels.npz"  # per-sample labels, CSR (pipeline.io.labels.Labels)
SHARD_LABELS_DIR = "shard_labels"  # the same labels per ingest shard, Parquet, + shards.parquet (pipeline.io.shard_labels)
UNMAPPED_FILE = "unmapped.json"  # hashtags no class took, with counts
SENSES_FILE = "senses.json"  # kind=visual_nouns: each ambiguous hashtag's sense choice (pipeline.text.sense_choice)
CLASS_FREQUENCY_PLOT = "class_frequency.png"
# pretrain/
TRUNK_FILE = "trunk.safetensors"  # the trained trunk's weights (no head)
MODEL_FILE = "model.json"  # model name, num_classes, image_size
METRICS_FILE = "metrics.jsonl"  # one row per logged optimizer step
EVAL_FILE = "eval.jsonl"  # one row per held-out evaluation (precision@1, mAP)
CHECKPOINT_DIR = "checkpoints"
DATA_AUDIT_FILE = "data_audit.json"  # pretrain.audit_data: per-rank sample keys are disjoint
# transfer/
RESULTS_FILE = "results.json"  # the suite's rows, intervals and differences (schema 2)
EPOCHS_FILE = "finetune_epochs.jsonl"  # one row per fine-tuning epoch
CORRECT_FILE = "correct.npz"  # per-run correctness vectors over the val images (paired differences)
# transfer/runs/: the resume state (pipeline.evaluation.resume), kept after the stage so a rerun redoes nothing
RUNS_DIR = "runs"  # <target>/<part>/: one folder per finished or running part (transfer_run_dir)
RUNS_KEY_FILE = "key.json"  # runs/key.json: the key (config, inputs, numerics) the records belong to
RUN_RECORD_FILE = "record.json"  # a finished part's rows and numbers; written last: its presence means done
NN_BANK_DIR = "nn_bank"  # <key>/part-RRRRR-of-WWWWW.npy|json: the pretraining feature bank per rank (evaluation.nn_bank)
RUN_ARRAYS_FILE = "record.npz"  # the finished part's arrays (per-image correctness, similarities)
# a running fine-tuning run's folder also holds its last checkpoint, step_NNNNNNNN.pt (pipeline.train.checkpoint)
# run/
STAGE_STATE_FILE = "stages.json"  # stage -> key, manifest hash, upstream hashes, code version
ENERGY_FILE = "energy.json"  # stage -> energy record (pipeline.reporting.energy)
RANKS_FILE = "ranks.json"  # rank 0 tells the other tasks of a job which stage to join
ERROR_FILE = "error.txt"  # traceback of the job's last failure
# the run folder itself
REPORT_FILE = "report.md"
PLOT_DIR = "report"


def path(run_dir: str | os.PathLike, stage: str, name: str) -> Path:
    """``<run_dir>/<stage>/<name>``.

    Raises:
        ValueError: if ``stage`` is neither a stage of :data:`STAGES` nor ``run``.
    """
    if stage not in STAGES and stage != RUN:
        raise ValueError(f"unknown stage folder {stage!r}; stages are {list(STAGES)} and {RUN!r}")
    return stage_dir(run_dir, stage) / name


def transfer_run_name(method: str, init: str, setting: int | None, seed: int | None = None) -> str:
    """The folder name of one transfer run: ``<method>-<init>-<setting>[-seed<seed>]``.

    ``setting`` is the labelled images per class (``None``: the full setting, named ``full``; else
    ``<k>perclass``); ``seed`` None for a part that holds all seeds of its setting (the linear probe).
    E.g. ``finetune-scratch-10perclass-seed0``, ``linear_probe-pretrained-full``.
    """
    name = f"{method}-{init}-{'full' if setting is None else f'{int(setting)}perclass'}"
    return name if seed is None else f"{name}-seed{int(seed)}"


def transfer_run_dir(run_dir: str | os.PathLike, target: str, part: str) -> Path:
    """``<run_dir>/transfer/runs/<target>/<part>``: where one part of a target keeps its record and checkpoints.

    ``part`` is :func:`transfer_run_name` of a run, or ``lr_selection`` / ``decontamination``.

    Raises:
        ValueError: a target or part name that is empty or not a single path component.
    """
    for what, name in (("target", target), ("part", part)):
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise ValueError(f"transfer {what} name {name!r} cannot name a folder")
    return path(run_dir, TRANSFER, RUNS_DIR) / target / part


def read_json(p: str | os.PathLike) -> Any:
    """The JSON content of ``p``, or None if the file does not exist (a stage not run).

    Raises:
        ValueError: naming the file, if it exists but is not valid JSON.
    """
    return atomic.read_json(p, missing_ok=True)


def read_jsonl(p: str | os.PathLike) -> list[dict]:
    """The rows of a JSON-lines file another stage wrote or is appending to; [] if it does not exist.

    A last line cut by a crash or a writer still appending is skipped.

    Raises:
        ValueError: naming the file and line, for a bad line that is not the last one.
    """
    return atomic.read_jsonl(p, missing_ok=True, torn_tail_ok=True)


def read_eval_contamination(run_dir) -> dict | None:
    """dedup's ``eval_contamination.json``: eval set name -> {images, contaminated, ids}; None if not run."""
    return read_json(path(run_dir, DEDUP, EVAL_CONTAMINATION_FILE))


def read_model_info(run_dir) -> dict | None:
    """pretrain's ``model.json``: {model, num_classes, image_size, ...}; None if not run."""
    return read_json(path(run_dir, PRETRAIN, MODEL_FILE))


def read_metrics(run_dir) -> list[dict]:
    """pretrain's ``metrics.jsonl``: one row per logged step (step, loss, lr, images_per_second, ...)."""
    return read_jsonl(path(run_dir, PRETRAIN, METRICS_FILE))


def read_evals(run_dir) -> list[dict]:
    """pretrain's ``eval.jsonl``: one row per held-out evaluation (step, precision_at_1, mAP)."""
    return read_jsonl(path(run_dir, PRETRAIN, EVAL_FILE))


def read_transfer_results(run_dir) -> dict | None:
    """transfer's ``results.json`` (schema 2: ``targets.<name>.rows``, ``gains``, intervals); None if not run."""
    return read_json(path(run_dir, TRANSFER, RESULTS_FILE))


def read_stage_state(run_dir) -> dict:
    """``run/stages.json``: stage -> {key, manifest, upstream, code_version}; {} before the first run."""
    return read_json(path(run_dir, RUN, STAGE_STATE_FILE)) or {}


def read_energy_records(run_dir) -> dict:
    """``run/energy.json``: stage -> energy record (kWh, seconds, ...); {} if none was measured."""
    return read_json(path(run_dir, RUN, ENERGY_FILE)) or {}


def read_error(run_dir) -> str | None:
    """``run/error.txt``: the traceback of the job's last failure, or None."""
    p = path(run_dir, RUN, ERROR_FILE)
    return p.read_text(encoding="utf-8", errors="replace") if p.is_file() else None


__all__ += ["read_vocab", "read_unmapped", "read_finetune_epochs"]


def read_vocab(run_dir) -> dict | None:
    """vocab's ``vocab.json``: {kind, num_classes, min_count, top_k, classes: [{id, lemma, hashtags, samples}],
    totals, ...}; None if not run."""
    return read_json(path(run_dir, VOCAB, VOCAB_FILE))


def read_finetune_epochs(run_dir) -> list[dict]:
    """transfer's ``finetune_epochs.jsonl``: one row per fine-tuning epoch (target, init, train_per_class, seed,
    epoch, loss, top1, top5, ...); [] if not run."""
    return read_jsonl(path(run_dir, TRANSFER, EPOCHS_FILE))


def read_unmapped(run_dir) -> dict | None:
    """vocab's ``unmapped.json``: the hashtags no class took, with their counts; None if not run."""
    return read_json(path(run_dir, VOCAB, UNMAPPED_FILE))
