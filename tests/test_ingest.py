"""The ingest stage on the committed real fixture corpus: formats, counts, resume, ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import FIXTURE, REPO

from pipeline.ingest import run_ingest
from pipeline.io.shards import iter_metadata, iter_samples, shard_paths

REQUIRED = {"id", "key", "source", "hashtags", "width", "height", "orig_width", "orig_height", "sha256", "meta"}


def _index_lines(name: str) -> int:
    return sum(1 for line in (FIXTURE / f"{name}.jsonl").read_text().splitlines() if line.strip())


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ingest_fixture_corpus(fixture_cfg):
    cfg = fixture_cfg("ingest.shard_size=16")
    man = run_ingest(cfg)
    c = man["counts"]
    assert c["input"] == c["written"] + c["quarantined"]
    for name in ("emoji_google", "emoji_twitter", "openclipart", "tuxpaint"):
        assert c["by_source"][name]["input"] == _index_lines(name)
    metas = [m for _, _, m in iter_metadata(shard_paths(cfg.run_dir))]
    assert len(metas) == c["written"] > 0
    ids = [m["id"] for m in metas]
    assert len(ids) == len(set(ids))
    for m in metas:
        assert REQUIRED <= m.keys()
        assert max(m["width"], m["height"]) <= cfg.ingest.max_side
        assert m["hashtags"] and all(t == t.casefold() and not t.startswith("#") for t in m["hashtags"])
    srcs = Counter(m["source"] for m in metas)
    assert srcs["img2dataset"] > 0 and srcs["tuxpaint"] > 0
    # SVG stamps are rasterized, not lost
    assert any(m["source_format"] == "SVG" for m in metas)
    # every rejected sample is listed with a reason
    q = [json.loads(line) for line in (Path(cfg.run_dir) / "ingest" / "quarantine.jsonl").read_text().splitlines()]
    assert len(q) == c["quarantined"] and all(r["reason"] for r in q)
    # samples decode through webdataset with their image member
    first = next(iter_samples(shard_paths(cfg.run_dir)))
    assert {"json", "__key__"} <= first.keys() and ({"webp", "jpg"} & first.keys())


def test_imagefolder_and_csv_formats(fixture_cfg, tmp_path):
    rows = [json.loads(line) for line in (FIXTURE / "emoji_google.jsonl").read_text().splitlines()[:5]]
    csv_path = tmp_path / "index.csv"
    with open(csv_path, "w", encoding="utf-8") as fh:
        fh.write("path,tags,id\n")
        for r in rows:
            fh.write(f'{r["path"]},"{"|".join(r["tags"])}",{r["id"]}\n')
    cfg = fixture_cfg(
        "data.sources=[{name: fmnist, format: imagefolder, root: " + str(FIXTURE / "fashion_mnist") + ", split: val},"
        " {name: csv, format: folder, root: " + str(FIXTURE / "emoji_google") + ", index: " + str(csv_path) + "}]"
    )
    man = run_ingest(cfg)
    metas = {m["id"]: m for _, _, m in iter_metadata(shard_paths(cfg.run_dir))}
    fm = [m for m in metas.values() if m["source"] == "fmnist"]
    classes = sorted(p.name for p in (FIXTURE / "fashion_mnist" / "val").iterdir() if p.is_dir())
    assert sorted({m["hashtags"][0] for m in fm}) == classes
    assert all(m["width"] == 28 for m in fm)
    csv_ids = {m["id"] for m in metas.values() if m["source"] == "csv"}
    assert csv_ids == {f"csv:{r['id']}" for r in rows}
    assert man["counts"]["quarantined"] == 0


def test_csv_units_seek_to_their_rows(tmp_path):
    """A CSV index is split by byte offsets (rows spanning lines, empty lines, a max_samples cap): the units
    together read exactly the rows csv.DictReader reads, each once, and a later unit starts past the header."""
    import csv
    from types import SimpleNamespace

    from pipeline.io.readers import folder

    path = tmp_path / "index.csv"
    rows = [
        {"path": f"img{i}.png", "tags": f"dog|t{i}", "id": str(i), "caption": "two\nlines, quoted" if i % 3 == 0 else f"c{i}"}
        for i in range(11)
    ]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "tags", "id", "caption"])
        w.writeheader()
        for i, r in enumerate(rows):
            w.writerow(r)
            if i == 4:
                fh.write("\r\n")  # an empty line: no row
    src = SimpleNamespace(index=str(path), max_samples=None)
    units, info = folder.plan(src, {"source": "c", "format": "folder", "root": str(tmp_path), "encoding": "webp"}, 0, 4)
    assert info["samples"] == 11 and [u.count for u in units] == [4, 4, 3]
    assert units[0].start == len("path,tags,id,caption\r\n") and units[1].start > units[0].start
    got = [rec for u in units for _, rec in folder._folder_records(u)]
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    assert [r["caption"] for r in got] == [r["caption"] for r in rows]
    assert got[3]["tags"] == ["dog", "t3"]
    capped, info = folder.plan(
        SimpleNamespace(index=str(path), max_samples=6), {"source": "c", "format": "folder", "root": "", "encoding": "webp"}, 0, 4
    )
    assert info["samples"] == 6 and [u.count for u in capped] == [4, 2]


def test_resume_after_lost_unit_is_byte_identical(fixture_cfg):
    cfg = fixture_cfg("ingest.shard_size=16")
    run_ingest(cfg)
    out = Path(cfg.run_dir) / "ingest"
    before = _tree_bytes(out / "shards")
    q_before = (out / "quarantine.jsonl").read_bytes()
    # simulate a crash: one unit's outputs missing, a stale temp file, no manifest
    lost = json.loads((out / "parts" / "000001.json").read_text())["input"]
    (out / "parts" / "000001.json").unlink()
    (out / "shards" / "000001.tar").unlink()
    (out / "shards" / ".000002.tar.tmp-999").write_bytes(b"partial")
    (out / "manifest.json").unlink()
    man = run_ingest(cfg)
    assert man["counts"]["processed_this_run"] == lost > 0
    assert _tree_bytes(out / "shards") == before
    assert (out / "quarantine.jsonl").read_bytes() == q_before


@pytest.mark.slow
def test_config_change_redoes_stage(fixture_cfg):
    run_ingest(fixture_cfg("ingest.shard_size=16"))
    cfg = fixture_cfg("ingest.shard_size=16", "ingest.max_side=32")
    man = run_ingest(cfg)
    assert man["counts"]["processed_this_run"] == man["counts"]["input"]
    metas = [m for _, _, m in iter_metadata(shard_paths(cfg.run_dir))]
    assert max(max(m["width"], m["height"]) for m in metas) == 32


@pytest.mark.slow
def test_two_ranks_match_single_run(fixture_cfg, monkeypatch, tmp_path):
    single = fixture_cfg("ingest.shard_size=16")
    run_ingest(single)
    ref = _tree_bytes(Path(single.run_dir) / "ingest" / "shards")
    cfg = fixture_cfg("ingest.shard_size=16", f"run_dir={tmp_path / 'ranks'}")
    monkeypatch.setenv("WORLD_SIZE", "2")
    # rank 0 prepares the folder and does its half, but cannot merge before rank 1 is done
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(TimeoutError):
        run_ingest(fixture_cfg("ingest.shard_size=16", f"run_dir={tmp_path / 'ranks'}", "ingest.merge_timeout_s=1"))
    monkeypatch.setenv("RANK", "1")
    assert run_ingest(cfg) is None  # rank 1 writes parts only
    monkeypatch.setenv("RANK", "0")
    man = run_ingest(cfg)  # rank 0 finds its parts done and merges
    assert man["counts"]["processed_this_run"] == 0
    assert _tree_bytes(Path(cfg.run_dir) / "ingest" / "shards") == ref


@pytest.mark.slow
def test_cli_config_errors_fail_before_work(tmp_path):
    run_dir = tmp_path / "run"
    for override, needle in [
        ("ingest.shard_sise=5", "shard_sise"),
        ("ingest.max_side=big", "max_side"),
        ("ingest.shard_size=0", "ingest.shard_size"),
        ("data.cache=/nonexistent", "does not exist"),
    ]:
        p = subprocess.run(
            [sys.executable, "-m", "pipeline.ingest", f"run_dir={run_dir}", override], cwd=REPO, capture_output=True, text=True
        )
        assert p.returncode != 0, override
        assert needle in p.stderr + p.stdout, (override, p.stderr[-500:])
        assert not (run_dir / "ingest").exists()
