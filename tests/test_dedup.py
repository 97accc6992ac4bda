"""Dedup on real near-duplicate pairs of the fixture corpus; withdrawn ids; decontamination."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import FIXTURE, make_cfg

from data_tools.dedup_precision import identity
from pipeline.dedup import run_dedup
from pipeline.io.removal import removed_keys
from pipeline.io.shards import iter_metadata, shard_paths
from pipeline.vision.near_index import build_index, keep_first, range_pairs


@pytest.fixture
def dedup_run(ingested_fixture, tmp_path):
    """A private copy of the session's ingested fixture run (dedup writes beside ingest)."""
    run = tmp_path / "run"
    shutil.copytree(ingested_fixture / "ingest", run / "ingest")
    return run


def _cfg(run, *extra):
    return make_cfg("data=fixture", f"data.cache={FIXTURE}", f"run_dir={run}", "dedup.progress=false", "dedup.workers=1", *extra)


def _rows(run):
    return [json.loads(x) for x in (Path(run) / "dedup" / "removed.jsonl").read_text().splitlines()]


def test_real_duplicates_found_and_unrelated_kept(dedup_run):
    man = run_dedup(_cfg(dedup_run))
    metas = {k: m for _, k, m in iter_metadata(shard_paths(dedup_run))}
    by_id = {m["id"]: m for m in metas.values()}
    rows = {r["id"]: r for r in _rows(dedup_run)}
    # the symlinked openclipart pair decodes to the same pixels: one copy removed as exact
    floppies = ["openclipart:computer/floppy_frederic_moser_01.png", "openclipart:office/floppy_frederic_moser_01.png"]
    assert rows[floppies[1]]["reason"] == "exact" and floppies[0] not in rows
    assert rows[floppies[1]]["duplicate_of"] == by_id[floppies[0]]["key"]
    # skin-tone variants of one emoji (same vendor) are near duplicates of the first kept one
    for vendor in ("emoji_google", "emoji_twitter"):
        waving = [f"{vendor}:1f44b-1f3f{c}" for c in "bcdef"]
        removed = [w for w in waving if w in rows and rows[w]["reason"] == "near"]
        assert len(removed) >= 3, (vendor, removed)
    # no near removal joins two images that show different things (flags excepted: see docs/stages/dedup.md)
    # the img2dataset fixture tars hold JPEG re-encodings of fixture images, padded to a
    # square (img2dataset's "border" mode): copies of square originals are caught; of the
    # padded ones, border trimming before pHash brings 5 of 10 within the radius (0 without)
    i2d = {i: m for i, m in by_id.items() if i.startswith("img2dataset:")}
    square = [i for i, m in i2d.items() if m["meta"]["original_width"] == m["meta"]["original_height"]]
    assert len(square) >= 8 and all(i in rows and rows[i]["reason"] in ("near", "exact") for i in square)
    padded = [i for i in i2d if i not in square]
    assert len(padded) == 10 and sum(i in rows and rows[i]["reason"] == "near" for i in padded) >= 5
    for r in rows.values():
        if r["reason"] == "near" and not r["id"].startswith("img2dataset:"):
            a, b = identity(by_id[r["id"]]), identity(metas[r["duplicate_of"]])
            assert a == b, (r["id"], metas[r["duplicate_of"]]["id"], r["distance"])
    c = man["counts"]
    assert c["kept"] + c["removed"] == c["samples"] == len(metas)
    assert c["exact"] >= 1 and c["near"] >= 6


def test_withdrawn_ids_never_reach_the_index(dedup_run, tmp_path):
    metas = [m for _, _, m in iter_metadata(shard_paths(dedup_run))]
    gone = [metas[3]["id"], metas[10]["id"]]
    wd = tmp_path / "withdrawn.txt"
    wd.write_text("# people who withdrew their photos\n" + "\n".join(gone) + "\n")
    man = run_dedup(_cfg(dedup_run, f"dedup.withdrawn={wd}"))
    rows = _rows(dedup_run)
    assert {r["id"] for r in rows if r["reason"] == "withdrawn"} == set(gone)
    gone_keys = {m["key"] for m in metas if m["id"] in gone}
    assert gone_keys <= removed_keys(dedup_run)
    index_keys = set((dedup_run / "dedup" / "index_keys.txt").read_text().split())
    assert not gone_keys & index_keys
    assert faiss.read_index_binary(str(dedup_run / "dedup" / "phash.index")).ntotal == len(index_keys)
    assert man["counts"]["withdrawn"] == 2


def test_eval_contamination_removes_pretraining_copies(dedup_run, tmp_path):
    # an eval set holding two pretraining images (one re-encoded as JPEG) and real Fashion-MNIST
    ev = tmp_path / "eval" / "val"
    shutil.copytree(FIXTURE / "fashion_mnist" / "val", ev)
    (ev / "leak").mkdir()
    shutil.copy(FIXTURE / "emoji_google" / "1f44d.png", ev / "leak" / "a.png")
    from PIL import Image

    banana = Image.open(FIXTURE / "tuxpaint" / "food" / "fruit" / "banana.png").convert("RGBA")
    white = Image.new("RGBA", banana.size, (255, 255, 255, 255))
    white.alpha_composite(banana)
    white.convert("RGB").save(ev / "leak" / "b.jpg", quality=90)
    man = run_dedup(_cfg(dedup_run, "data.eval_sets=[{name: ev, format: imagefolder, root: " + str(ev.parent) + ", split: val}]"))
    rep = json.loads((dedup_run / "dedup" / "eval_contamination.json").read_text())["ev"]
    assert set(rep["ids"]) >= {"ev:leak/a.png", "ev:leak/b.jpg"}
    assert rep["images"] == 32
    contaminated = {r["id"] for r in _rows(dedup_run) if r["reason"] == "eval-contamination"}
    assert {"emoji_google:1f44d", "tuxpaint:food/fruit/banana.png"} <= contaminated
    assert man["counts"]["eval_contaminated"] == rep["contaminated"]


def test_multi_index_search_equals_brute_force():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (3000, 8), dtype=np.uint8)
    for i in range(0, 600, 3):  # plant near pairs at distances 0..10
        codes[i + 1] = codes[i]
        flip = rng.choice(64, size=i % 11, replace=False)
        bits = np.unpackbits(codes[i + 1])
        bits[flip] ^= 1
        codes[i + 1] = np.packbits(bits)
    for radius in (0, 1, 2, 3, 4, 5, 6, 8, 10):
        got = set(zip(*[a.tolist() for a in range_pairs(build_index(codes, radius), codes, radius)[:2]]))
        flat = faiss.IndexBinaryFlat(64)
        flat.add(codes)
        lims, d, ids = flat.range_search(codes, radius + 1)
        want = {(q, int(j)) for q in range(len(codes)) for j in ids[lims[q] : lims[q + 1]]}
        assert got == want and len(got) > len(codes)
        assert isinstance(build_index(codes, radius), faiss.IndexBinaryMultiHash)
    # the layouts: radius 1 on 64 bits keeps 2 substrings of 24 bits, exact match; radius 4 uses
    # 3 substrings of 21 bits probed with 1 flipped bit instead of 5 of 12 (4,096 buckets)
    layout = {r: (ix.nhash, ix.b, ix.nflip) for r in (1, 4) for ix in [build_index(codes, r)]}
    assert layout == {1: (2, 24, 0), 4: (3, 21, 1)}


def test_keep_first_is_greedy_over_kept_items():
    # 0-1 close, 1-2 close, 0-2 far: 1 goes (dup of 0), 2 stays (its only neighbour 1 was removed)
    qi = np.array([1, 0, 2, 1])
    di = np.array([0, 1, 1, 2])
    dist = np.array([2, 2, 3, 3])
    keep, dup_of, _ = keep_first(3, qi, di, dist)
    assert keep.tolist() == [True, False, True] and dup_of.tolist() == [-1, 0, -1]
