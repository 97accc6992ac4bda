"""The columnar shard index (issue 25, item 1): Parquet written by ingest, read by column; older JSON indexes
read the same and rewritten once by ``data_tools.upgrade_shard_index``.

On the fixture corpus ingested once: every shard has a Parquet index and no JSON one; the index read by column
gives what the tar holds (keys, member offsets, metadata, the perceptual hashes of ingest); a run folder whose
indexes are turned back into format-1 JSON files (as an older ingest wrote them) gives the same dedup removals,
the same vocabulary and the same labels, byte for byte, before and after the upgrade command, whose Parquet files
equal ingest's own.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
from conftest import copy_run, stage_cfg

from data_tools.upgrade_shard_index import main as upgrade_main
from pipeline.io.shard_index import (
    code_column,
    codes_of,
    index_path,
    index_table,
    json_index_path,
    read_index,
    upgrade_indexes,
)
from pipeline.io.shards import ShardReader, index_columns, shard_paths
from pipeline.vision.dedup_codes import shard_codes


def _to_json_index(shard) -> None:
    """Replace a shard's Parquet index by the format-1 JSON index an older ingest wrote (same rows)."""
    table = read_index(shard)
    assert table is not None
    samples = []
    for row in table.to_pylist():
        s = {"key": row["key"], "members": {m["ext"]: [m["offset"], m["size"]] for m in row["members"]}}
        if row["metadata"] is not None:
            s["meta"] = json.loads(row["metadata"])
        codes = {str(h): row[code_column(h)].hex() for h in (8, 16) if row[code_column(h)] is not None}
        if codes:
            s["phash"] = codes
        samples.append(s)
    doc = {"format": 1, "tar": shard.name, "tar_bytes": shard.stat().st_size, "samples": samples}
    json_index_path(shard).write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    index_path(shard).unlink()


def test_ingest_writes_a_parquet_index_read_by_column(ingested_fixture):
    shards = shard_paths(ingested_fixture)
    assert shards and all(index_path(p).is_file() and not json_index_path(p).exists() for p in shards)
    for p in shards:
        full = read_index(p)
        assert full is not None and full.schema.metadata[b"format"] == b"2"
        with ShardReader(p) as r:
            assert full.column("key").to_pylist() == r.keys
            for key in r.keys:  # the metadata column is the .json member; the members are where the tar has them
                assert r.metadata(key) == json.loads(r.read(key, "json"))
                off, size = r.members[key]["json"]
                with open(p, "rb") as fh:
                    fh.seek(off)
                    assert json.loads(fh.read(size)) == r.metadata(key)
        # by column: only what was asked for; codes as one uint8 matrix
        part = read_index(p, ["key", code_column(8)])
        assert part.column_names == ["key", "phash64"] and part.num_rows == full.num_rows
        codes, valid = codes_of(part, 8)
        assert codes.dtype == np.uint8 and codes.shape == (full.num_rows, 8) and valid.all()
        assert [bytes(c) for c in codes] == full.column("phash64").to_pylist()
        tags = index_columns(p, ["hashtags"]).column("hashtags").to_pylist()
        assert tags == [json.loads(m)["hashtags"] for m in full.column("metadata").to_pylist()]
    with pytest.raises(KeyError, match="no column"):
        read_index(shards[0], ["key", "phash999"])


def test_codes_of_marks_the_rows_without_a_hash():
    rows = [
        {"key": "000000_000000", "members": {"png": [512, 10]}, "meta": {"id": "a", "hashtags": ["x"]}, "phash": {"8": "ff" * 8}},
        {"key": "000000_000001", "members": {"png": [1024, 10]}},
    ]
    table = index_table(rows)
    codes, valid = codes_of(table, 8)
    assert valid.tolist() == [True, False] and codes[0].tolist() == [255] * 8 and not codes[1].any()
    assert table.column("id").to_pylist() == ["a", None] and table.column("hashtags").to_pylist() == [["x"], None]
    with pytest.raises(ValueError, match="perceptual hash of 7 bytes"):
        index_table([{"key": "k", "members": {}, "phash": {"8": "ff" * 7}}])
    assert isinstance(table.column("phash256").type, pa.FixedSizeBinaryType)


@pytest.mark.slow
def test_a_run_with_json_indexes_gives_the_same_stages_before_and_after_the_upgrade(ingested_fixture, tmp_path, capsys):
    from pipeline.dedup import run_dedup
    from pipeline.vocab import run_vocab

    def dedup_and_vocab(run):
        run_dedup(stage_cfg(run))
        run_vocab(stage_cfg(run))
        files = ("dedup/removed.jsonl", "vocab/vocab.json", "vocab/labels.npz")
        return {f: hashlib.sha256((run / f).read_bytes()).hexdigest() for f in files}

    parquet = copy_run(ingested_fixture, tmp_path / "parquet", stages=("ingest",))
    old = copy_run(ingested_fixture, tmp_path / "json", stages=("ingest",))
    for p in shard_paths(old):
        _to_json_index(p)
    # an older run folder reads as it is: the same codes, the same stage outputs byte for byte
    for a, b in zip(shard_paths(parquet), shard_paths(old)):
        with ShardReader(a) as ra, ShardReader(b) as rb:
            assert ra.keys == rb.keys and ra.members == rb.members
            np.testing.assert_array_equal(shard_codes(ra, 8), shard_codes(rb, 8))
    want = dedup_and_vocab(parquet)
    assert dedup_and_vocab(old) == want

    # the upgrade: Parquet files equal to ingest's own, the JSON ones gone, the manifest naming the new files
    upgraded = copy_run(old, tmp_path / "upgraded", stages=("ingest",))
    assert upgrade_main([str(upgraded)]) == 0
    n = len(shard_paths(upgraded))
    assert f"{n} JSON shard index(es) rewritten as Parquet, 0 already Parquet" in capsys.readouterr().out
    for a, b in zip(shard_paths(parquet), shard_paths(upgraded)):
        assert index_path(b).read_bytes() == index_path(a).read_bytes() and not json_index_path(b).exists()
    man = json.loads((upgraded / "ingest" / "manifest.json").read_text())
    assert all(e["index"].endswith(".index.parquet") for e in man["outputs"]["shards"])
    assert upgrade_indexes(shard_paths(upgraded)) == (0, n)  # a rerun changes nothing
    assert dedup_and_vocab(upgraded) == want

    # an index that disagrees with its tar: one line, nothing of that shard changed
    broken = copy_run(old, tmp_path / "broken", stages=("ingest",))
    first = shard_paths(broken)[0]
    with open(first, "ab") as fh:
        fh.write(b"\0" * 512)
    assert upgrade_main([str(broken)]) == 1
    assert "changed after ingest" in capsys.readouterr().err
    assert json_index_path(first).exists() and not index_path(first).exists()
    shutil.rmtree(broken)
