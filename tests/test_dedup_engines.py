"""Dedup's scalable form (pipeline.vision.shard_dedup, pipeline.vision.duplicates): the partitioned search finds
every pair once, the greedy over distinct codes equals the greedy over samples, and every executor (in process, a
2-process pool with many partitions, a local Ray of 2 CPUs with a worker killed in the near search) writes
byte-identical outputs on the fixture's real shards, with withdrawn ids and an eval set."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE, die_once, make_cfg, ray_killing_once

from pipeline.dedup import run_dedup
from pipeline.io.shards import iter_metadata, shard_paths
from pipeline.vision.duplicates import Decisions
from pipeline.vision.near_index import keep_first
from pipeline.vision.shard_dedup import near_pairs, partition_items

OUTPUTS = ("removed.jsonl", "eval_contamination.json", "index_keys.txt", "phash.index")


def _families(seed: int, n: int, nbytes: int = 8) -> np.ndarray:
    """uint8 (n, nbytes): a few random base codes, each repeated exactly and with 1-5 bits flipped, shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(2, n // 12), nbytes), dtype=np.uint8)
    codes = base[rng.integers(0, len(base), n)]
    bits = np.unpackbits(codes, axis=1)
    for i in np.flatnonzero(rng.random(n) < 0.6):  # 40% exact copies of their base, the rest 1-5 bits off
        bits[i, rng.choice(nbytes * 8, rng.integers(1, 6), replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def _brute_pairs(codes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (later, earlier, distance) within ``radius``, by a dense N x N popcount."""
    bits = np.unpackbits(codes, axis=1).astype(np.int16)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    later, earlier = np.nonzero(np.tril(dist <= radius, k=-1))
    return later.astype(np.int64), earlier.astype(np.int64), dist[later, earlier].astype(np.int64)


def _partitioned(codes: np.ndarray, radius: int, partitions: int):
    found = [near_pairs(it, (radius, partitions)) for it in partition_items(codes, radius, partitions)]
    return tuple(np.concatenate([f[k] for f in found]) if found else np.zeros(0, np.int64) for k in range(3))


@pytest.mark.parametrize("nbytes,radius", [(8, 4), (8, 2), (8, 0), (32, 10)])
def test_partitions_find_every_pair_once(nbytes, radius):
    codes = np.unique(_families(1, 600, nbytes), axis=0)  # the search runs over distinct codes
    codes = codes[np.random.default_rng(2).permutation(len(codes))]
    want = set(zip(*(a.tolist() for a in _brute_pairs(codes, radius))))
    assert radius == 0 or len(want) > 50
    for partitions in (1, 3, 40):
        got = list(zip(*(a.tolist() for a in _partitioned(codes, radius, partitions))))
        assert len(got) == len(set(got)) and set(got) == want, partitions


@pytest.mark.parametrize("seed", range(4))
def test_greedy_over_distinct_codes_equals_the_greedy_over_samples(seed):
    codes = _families(seed, 500)
    rng = np.random.default_rng(seed + 10)
    dec = Decisions(len(codes))
    dead = rng.random(len(codes)) < 0.1  # removed by an earlier reason: not compared
    dec.reason[dead] = 3
    dec.remove_near(codes, lambda c: _partitioned(c, 4, 1 + seed * 5))
    # the reference: keep_first over every surviving sample, with every pair found by brute force
    rows = np.flatnonzero(~dead)
    q, d, dist = _brute_pairs(codes[rows], 4)
    keep, dup_of, dup_dist = keep_first(len(rows), np.concatenate([q, d]), np.concatenate([d, q]), np.concatenate([dist, dist]))
    assert (~keep).sum() > 100 and (dup_dist[~keep] == 0).sum() > 20 and (dup_dist[~keep] > 0).sum() > 20
    np.testing.assert_array_equal(dec.reason[rows] == 4, ~keep)
    np.testing.assert_array_equal(dec.duplicate_of[rows][~keep], rows[dup_of[~keep]])
    np.testing.assert_array_equal(dec.distance[rows][~keep], dup_dist[~keep])
    assert (dec.reason[dead] == 3).all()


# --- the stage on the fixture, every executor ---------------------------------------------------------------------


def install_kill_once() -> None:
    """Ray's ``worker_process_setup_hook``: the first near-search task any worker runs kills its own worker (a node
    lost mid-stage); Ray's workers resolve the pass by name, so they run this wrapper."""
    import pipeline.vision.shard_dedup as sd

    sd.near_pairs = die_once(sd.near_pairs)


@pytest.fixture
def dedup_inputs(ingested_fixture, tmp_path):
    """The fixture's ingest, two withdrawn ids and an eval set holding one pretraining image: overrides for each run."""
    metas = [m for _, _, m in iter_metadata(shard_paths(ingested_fixture))]
    wd = tmp_path / "withdrawn.txt"
    wd.write_text(metas[3]["id"] + "\n" + metas[40]["id"] + "\n")
    ev = tmp_path / "eval" / "val"
    shutil.copytree(FIXTURE / "fashion_mnist" / "val", ev)
    (ev / "leak").mkdir()
    shutil.copy(FIXTURE / "emoji_google" / "1f44d.png", ev / "leak" / "a.png")
    evs = "data.eval_sets=[{name: ev, format: imagefolder, root: " + str(ev.parent) + ", split: val}]"
    return ingested_fixture, [f"dedup.withdrawn={wd}", evs]


def _run(inputs, tmp_path, name, *overrides) -> Path:
    ingested, common = inputs
    run = tmp_path / name
    shutil.copytree(ingested / "ingest", run / "ingest")
    cfg = make_cfg("data=fixture", f"data.cache={FIXTURE}", f"run_dir={run}", "dedup.progress=false", *common, *overrides)
    run_dedup(cfg)
    return run / "dedup"


def _same(a: Path, b: Path) -> None:
    for f in OUTPUTS:
        assert filecmp.cmp(a / f, b / f, shallow=False), f


@pytest.mark.slow
def test_every_executor_writes_identical_outputs(dedup_inputs, tmp_path):
    one = _run(dedup_inputs, tmp_path, "one", "dedup.workers=1")
    rows = [json.loads(x) for x in (one / "removed.jsonl").read_text().splitlines()]
    reasons = {r["reason"] for r in rows}
    assert {"withdrawn", "eval-contamination", "exact", "near"} <= reasons
    assert [r["key"] for r in rows] == sorted(r["key"] for r in rows)
    # a pool of 2 with the search cut into many partitions
    pool = _run(dedup_inputs, tmp_path, "pool", "dedup.workers=2", "dedup.partition_size=40")
    _same(one, pool)
    search = json.loads((pool / "manifest.json").read_text())["counts"]["near_search"]
    assert search["partitions"] > 5 and search["pairs"] > 10
    # a local Ray of 2 CPUs, one of whose workers dies in the near search: Ray runs the task again
    marker = tmp_path / "killed"
    with ray_killing_once("test_dedup_engines.install_kill_once", marker):
        on_ray = _run(dedup_inputs, tmp_path, "ray", "data.engine=ray", "ray.max_retries=2", "dedup.partition_size=40")
    assert marker.exists()  # a worker was killed, and the stage still finished
    _same(one, on_ray)


def test_shards_out_of_key_order_still_give_a_sorted_removal_list(ingested_fixture, tmp_path):
    """ "Earlier" follows the ingest manifest's shard order; with shards listed out of key order (a hand-edited or
    merged manifest) removed.jsonl is still sorted by key (the writer's fallback), and holds the same samples
    up to which copy of each duplicate pair is kept."""
    one = _run((ingested_fixture, []), tmp_path, "in-order", "dedup.workers=1")
    run = tmp_path / "reversed"
    shutil.copytree(ingested_fixture / "ingest", run / "ingest")
    man_path = run / "ingest" / "manifest.json"
    man = json.loads(man_path.read_text())
    man["outputs"]["shards"] = man["outputs"]["shards"][::-1]
    man_path.write_text(json.dumps(man))
    assert len(man["outputs"]["shards"]) > 2
    run_dedup(make_cfg("data=fixture", f"data.cache={FIXTURE}", f"run_dir={run}", "dedup.progress=false", "dedup.workers=1"))
    a = [json.loads(x) for x in (one / "removed.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (run / "dedup" / "removed.jsonl").read_text().splitlines()]
    assert [r["key"] for r in b] == sorted(r["key"] for r in b)
    assert len(a) == len(b) and {r["key"] for r in a} != {r["key"] for r in b}  # the other copy of a pair is kept


def test_without_the_saved_index(dedup_inputs, tmp_path):
    """``dedup.save_index=false`` (the O(N) faiss index in the driver left out at scale): the same removals and eval
    report, no phash.index or index_keys.txt, and none left from an earlier run."""
    one = _run(dedup_inputs, tmp_path, "one", "dedup.workers=1")
    run = tmp_path / "without"
    shutil.copytree(one, run / "dedup")  # an earlier run's index files: removed, not kept as if they were current
    ingested, common = dedup_inputs
    shutil.copytree(ingested / "ingest", run / "ingest")
    overrides = ["data=fixture", f"data.cache={FIXTURE}", f"run_dir={run}", "dedup.progress=false", "dedup.workers=1"]
    man = run_dedup(make_cfg(*overrides, *common, "dedup.save_index=false"))
    out = run / "dedup"
    assert not (out / "phash.index").exists() and not (out / "index_keys.txt").exists()
    assert man["outputs"]["index"] is None and man["outputs"]["index_keys"] is None
    for f in ("removed.jsonl", "eval_contamination.json"):
        assert filecmp.cmp(one / f, out / f, shallow=False), f
