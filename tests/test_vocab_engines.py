"""The vocab stage's per-shard passes (pipeline.text.shard_vocab) on the fixture's real shards: the labels equal the
whole-corpus build (build_vocabulary), and every executor (in process, a 2-process pool, a local Ray of 2 CPUs with
a worker killed mid-stage) writes byte-identical outputs."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import die_once, ray_killing_once, stage_cfg

from pipeline.io.labels import load_labels, load_vocab
from pipeline.io.removal import load_removals
from pipeline.io.sample_tags import read_sample_tags
from pipeline.io.shards import shard_paths
from pipeline.text.label_noise import replace_hashtags
from pipeline.text.resampling import all_weights
from pipeline.text.vocabulary import RawMapper, build_vocabulary, sort_by_keys
from pipeline.vocab import run_vocab

OUTPUTS = ("vocab.json", "unmapped.json", "labels.npz", "shard_labels/shards.parquet")


def _run(prepared, tmp_path, name, *overrides):
    run = tmp_path / name
    for st in ("ingest", "dedup"):
        shutil.copytree(prepared / st, run / st)
    run_vocab(stage_cfg(run, "vocab.kind=raw", "vocab.min_count=2", *overrides))
    return run


def _same_outputs(a: Path, b: Path) -> None:
    va, vb = a / "vocab", b / "vocab"
    for f in OUTPUTS:
        assert filecmp.cmp(va / f, vb / f, shallow=False), f
    files = sorted(p.name for p in (va / "shard_labels").iterdir())
    assert files == sorted(p.name for p in (vb / "shard_labels").iterdir()) and len(files) > 2
    assert all(filecmp.cmp(va / "shard_labels" / f, vb / "shard_labels" / f, shallow=False) for f in files)


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_shard_passes_equal_the_whole_corpus_build(prepared_fixture, tmp_path, noise):
    run = _run(prepared_fixture, tmp_path, "run", f"vocab.label_noise={noise}", "data.workers=2")
    removed, _, _ = load_removals(run, True)
    samples = read_sample_tags(shard_paths(run), removed)
    tags = replace_hashtags(samples.keys, samples.tags, noise)[0] if noise else samples.tags
    want = build_vocabulary(tags, RawMapper(), "raw", 2, 1)
    keys, ids = sort_by_keys(want, samples.keys, samples.ids)
    got, doc = load_labels(run), load_vocab(run)
    assert [c["id"] for c in doc["classes"]] == want.classes and doc["totals"]["samples_kept"] == keys.size > 0
    np.testing.assert_array_equal(got.keys, keys)
    np.testing.assert_array_equal(got.ids, ids)
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.class_counts, want.counts)
    for scheme, w in all_weights(want.indptr, want.indices, want.counts).items():  # the mean summed shard by shard
        np.testing.assert_allclose(got.weights(scheme), w, rtol=1e-13, atol=0)
    assert sum(c["samples"] for c in doc["classes"]) == int(want.counts.sum())
    assert doc["totals"]["unmapped_hashtags"] == len(want.unmapped)


def install_kill_once() -> None:
    """Ray's ``worker_process_setup_hook`` for the test below: in every Ray worker, the class-count pass kills its
    own worker the first time any worker runs it (a node lost mid-stage); Ray's workers resolve the pass by name, so
    they run this wrapper."""
    import pipeline.text.shard_vocab as sv

    sv.count_classes = die_once(sv.count_classes)


@pytest.mark.slow
def test_every_executor_writes_identical_outputs(prepared_fixture, tmp_path):
    pytest.importorskip("ray")
    one = _run(prepared_fixture, tmp_path, "one", "data.workers=1")
    pool = _run(prepared_fixture, tmp_path, "pool", "data.workers=2")
    _same_outputs(one, pool)
    # a local Ray of 2 CPUs, one of whose workers dies in the class-count pass: Ray runs the task again
    marker = tmp_path / "killed"
    with ray_killing_once("test_vocab_engines.install_kill_once", marker):
        on_ray = _run(prepared_fixture, tmp_path, "ray", "data.engine=ray", "ray.max_retries=2")
    assert marker.exists()  # a worker was killed, and the stage still finished
    _same_outputs(one, on_ray)


def test_without_the_whole_corpus_view(prepared_fixture, tmp_path):
    """``vocab.whole_corpus_labels=false``: no labels.npz, the per-shard labels and vocab.json as with it."""
    with_npz = _run(prepared_fixture, tmp_path, "with", "data.workers=1")
    run = _run(prepared_fixture, tmp_path, "without", "data.workers=1", "vocab.whole_corpus_labels=false")
    out = run / "vocab"
    assert not (out / "labels.npz").exists()
    man = json.loads((out / "manifest.json").read_text())
    assert man["outputs"]["labels"] is None and "labels.npz" not in man["outputs"]["sha256"]
    for f in ("vocab.json", "unmapped.json", "shard_labels/shards.parquet"):
        assert filecmp.cmp(with_npz / "vocab" / f, out / f, shallow=False), f
