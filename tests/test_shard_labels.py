"""Per-shard labels (pipeline.io.shard_labels) written by the vocab stage: the same rows as labels.npz, shard by shard."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.io.labels import load_labels
from pipeline.io.manifest import read_manifest
from pipeline.io.shard_labels import read_shard_labels, read_shard_table, shard_labels_path, write_shard_labels
from pipeline.io.shards import shard_of_keys, shard_paths


def test_vocab_writes_each_shards_labels_equal_to_labels_npz(prepared_fixture):
    folder = prepared_fixture / "vocab" / "shard_labels"
    labels = load_labels(prepared_fixture)
    table = read_shard_table(folder)
    shards = table.column("shard").to_pylist()
    assert shards == sorted(set(shard_of_keys(labels.keys).tolist()))  # every shard with a kept sample, once
    assert len(shards) > 1 and len(shards) <= len(shard_paths(prepared_fixture))
    assert sum(table.column("samples").to_pylist()) == len(labels)
    keys, ids, classes, weights = [], [], [], {s: [] for s in ("natural", "sqrt", "uniform")}
    for s, n, exp_sqrt in zip(shards, table.column("samples").to_pylist(), table.column("expected_sqrt").to_pylist()):
        t = read_shard_labels(folder, s)
        assert t.num_rows == n
        assert np.isclose(sum(t.column("weight_sqrt").to_pylist()), exp_sqrt)
        keys += t.column("key").to_pylist()
        ids += t.column("id").to_pylist()
        classes += t.column("classes").to_pylist()
        for k in weights:
            weights[k] += t.column(f"weight_{k}").to_pylist()
    assert keys == labels.keys.tolist() and ids == labels.ids.tolist()
    assert classes == [labels.classes_of(k) for k in labels.keys]
    for k, w in weights.items():
        assert np.array_equal(np.asarray(w), labels.weights(k))
    man = read_manifest(prepared_fixture / "vocab")
    assert man["outputs"]["shard_labels"]["shards"] == len(shards)
    # one shard's file holds that shard alone; a column read alone; an unknown column refused
    one = read_shard_labels(folder, shards[1], ["key"])
    assert one.column_names == ["key"] and {k[:6] for k in one.column("key").to_pylist()} == {f"{shards[1]:06d}"}
    with pytest.raises(KeyError, match="weight_zipf"):
        read_shard_labels(folder, shards[0], ["weight_zipf"])
    with pytest.raises(FileNotFoundError, match="no kept sample"):
        read_shard_labels(folder, 999_999)


def test_rewrite_replaces_the_folder_whole(tmp_path):
    folder = tmp_path / "shard_labels"
    keys = np.array(["000000_000001", "000000_000004", "000002_000000"])
    ids = np.array(["a:1", "a:4", "b:0"])
    indptr = np.array([0, 2, 3, 4], dtype=np.int64)
    indices = np.array([0, 3, 1, 2], dtype=np.int32)
    write_shard_labels(folder, keys, ids, indptr, indices, {"natural": np.ones(3)})
    assert shard_labels_path(folder, 2).is_file()
    assert pq.read_table(shard_labels_path(folder, 0)).column("classes").to_pylist() == [[0, 3], [1]]
    # a second vocab run without shard 2: its file is gone, nothing of the first run is left beside the new one
    out = write_shard_labels(folder, keys[:2], ids[:2], indptr[:3], indices[:3], {"natural": np.array([0.5, 1.5])})
    assert out["shards"] == 1 and not shard_labels_path(folder, 2).exists()
    assert read_shard_table(folder).column("expected_natural").to_pylist() == [2.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_labels"]
    with pytest.raises(ValueError, match="sorted"):
        write_shard_labels(folder, keys[::-1], ids, indptr, indices, {"natural": np.ones(3)})
