"""The pretraining feature bank of the feature-space decontamination, sharded over ranks and kept on disk (issue 24).

- :func:`test_two_ranks_hold_the_one_process_bank_and_search_it_alike`: 2 gloo ranks each embed their block of the
  fixture's ingest shards; their parts concatenated are the one-process bank row for row (same samples, same
  features), and the merged nearest-neighbour search, pair similarities, ids and same-hexcode pairs equal the
  one-process answers;
- :func:`test_the_bank_is_embedded_once_and_reused`: a second open with the same key reads the part instead of
  embedding; another key removes the stale bank; a part whose row count no longer matches is embedded again.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.evaluation.nn_bank import BankPart, open_bank
from pipeline.evaluation.nn_decontam import PretrainSample, l2_normalize, pretraining_samples
from pipeline.io.run_folder import NN_BANK_DIR, TRANSFER, path
from pipeline.train.distributed import DistInfo

DIM = 12


def _extract(calls: list | None = None):
    """Fake pooled features of uint8 image batches: per-channel means and spreads of 2x2 quadrants (float32 (B, 12))."""

    def extract(batches):
        feats, labels = [], []
        for x, y in batches:
            if calls is not None:
                calls.append(len(x))
            q = x.float().unfold(2, x.shape[2] // 2, x.shape[2] // 2).unfold(3, x.shape[3] // 2, x.shape[3] // 2)
            feats.append(torch.cat([q.mean(dim=(4, 5)).flatten(1)[:, :6], q.std(dim=(4, 5)).flatten(1)[:, :6]], 1))
            labels.append(torch.as_tensor(y))
        return torch.cat(feats).numpy().astype(np.float32), torch.cat(labels).numpy()

    return extract


def _open(run_dir, ranks: DistInfo, key: str = "k", calls: list | None = None, center: bool = False) -> BankPart:
    return open_bank(
        run_dir, ranks, key, _extract(calls), size=32, dim=DIM, batch_size=7, workers=0, center=center, progress=False
    )


def _one(rank: int = 0, world: int = 1) -> DistInfo:
    return DistInfo(rank, world, rank, torch.device("cpu"), "gloo" if world > 1 else None)


def _answers(bank: BankPart, queries: np.ndarray, run_dir) -> dict:
    rng = np.random.default_rng(1)
    sims, idx = bank.nearest(queries, "Flat", 1, 0)
    qi, gj = rng.integers(0, len(queries), 40), rng.integers(0, bank.total, 40)
    codes = [s.hexcode for s in pretraining_samples(run_dir)[::-7]] + [None, "not-an-emoji"]  # later ranks first
    pi, pj, with_one = bank.hexcode_pairs(codes)
    return {
        "sims": sims,
        "idx": idx,
        "pairs": bank.pair_similarities(queries, qi, gj),
        "ids": bank.ids(np.array([0, bank.total - 1, -1])),
        "hex": (pi, pj, with_one),
        "mean": bank.mean,
    }


def _queries() -> np.ndarray:
    rng = np.random.default_rng(0)
    return l2_normalize(rng.normal(size=(25, DIM)).astype(np.float32))


def _synthetic(ranks: DistInfo) -> BankPart:
    """50 rows of 8 hexcodes spread over both halves (every rank holds rows of every code), rank ``r`` its block;
    rows 10 and 40 equal (a tie the lowest row must win)."""
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(50, DIM)).astype(np.float32)
    feats[40] = feats[10]
    samples = [PretrainSample("s.tar", f"k{j}", f"id{j}", f"c{j % 8}" if j % 5 else None) for j in range(50)]
    block = slice(ranks.rank * 25, (ranks.rank + 1) * 25) if ranks.world == 2 else slice(0, 50)
    return BankPart(ranks, samples[block], block.start, 50, feats[block], None, 0.0, False)


def _synthetic_answers(bank: BankPart) -> dict:
    q = np.vstack([_queries(), l2_normalize(np.asarray(_synthetic(_one()).features[10:11]))])
    codes = ["c7", None, "c1", "c3", "zz", "c1"]  # pairs of each code on both ranks: (i, j) order interleaves them
    pi, pj, with_one = bank.hexcode_pairs(codes)
    sims, idx = bank.nearest(q, "Flat", 1, 0)
    return {"pi": pi, "pj": pj, "with_one": with_one, "sims": sims, "idx": idx, "pairs": bank.pair_similarities(q, pi, pj)}


def _rank(rank: int, world: int, pg_file: str, run_dir: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{pg_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        bank = _open(run_dir, _one(rank, world), key="two", center=True)
        ans = _answers(bank, _queries(), run_dir)
        np.savez(
            f"{out}/rank{rank}.npz",
            features=np.asarray(bank.features),
            offset=bank.offset,
            total=bank.total,
            keys=np.array([s.key for s in bank.samples]),
            sims=ans["sims"],
            idx=ans["idx"],
            pairs=ans["pairs"],
            ids=np.array([str(i) for i in ans["ids"]]),
            pi=ans["hex"][0],
            pj=ans["hex"][1],
            with_one=ans["hex"][2],
            mean=ans["mean"],
            **{f"syn_{k}": v for k, v in _synthetic_answers(_synthetic(_one(rank, world))).items()},
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_hold_the_one_process_bank_and_search_it_alike(prepared_fixture, tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    run = tmp_path / "run"
    for stage in ("ingest", "dedup"):
        shutil.copytree(prepared_fixture / stage, run / stage)
    one = _open(run, _one(), key="one", center=True)
    ref = _answers(one, _queries(), run)
    mp.spawn(_rank, args=(2, str(tmp_path / "pg"), str(run), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    assert len(r0["keys"]) and len(r1["keys"])  # each rank embedded a block of shards
    assert int(r0["offset"]) == 0 and int(r1["offset"]) == len(r0["keys"]) and int(r0["total"]) == one.total
    assert list(r0["keys"]) + list(r1["keys"]) == [s.key for s in pretraining_samples(run)]
    np.testing.assert_allclose(np.concatenate([r0["features"], r1["features"]]), np.asarray(one.features), atol=1e-5)
    for r in (r0, r1):  # every rank returns the one-process answers
        np.testing.assert_allclose(r["mean"], ref["mean"], atol=1e-5)
        np.testing.assert_array_equal(r["idx"], ref["idx"])
        np.testing.assert_allclose(r["sims"], ref["sims"], atol=1e-5)
        np.testing.assert_allclose(r["pairs"], ref["pairs"], atol=1e-5)
        assert list(r["ids"]) == [str(i) for i in ref["ids"]]
        np.testing.assert_array_equal(r["pi"], ref["hex"][0])
        np.testing.assert_array_equal(r["pj"], ref["hex"][1])
        assert int(r["with_one"]) == ref["hex"][2]
    assert len(ref["hex"][0]) > 0 and ref["ids"][-1] is None
    syn = _synthetic_answers(_synthetic(_one()))
    assert syn["idx"][-1] == 10 and len(syn["pi"]) == 5 + 6 + 5 + 6 and syn["with_one"] == 4
    for r in (r0, r1):
        for k, v in syn.items():
            np.testing.assert_allclose(r[f"syn_{k}"], v, atol=1e-6, err_msg=k)
    parts = sorted(p.name for p in path(run, TRANSFER, NN_BANK_DIR).iterdir())
    assert parts == ["two"]  # rank 0 removed the one-process bank of another key
    assert sorted(p.name for p in (path(run, TRANSFER, NN_BANK_DIR) / "two").iterdir()) == [
        "part-00000-of-00002.json",
        "part-00000-of-00002.npy",
        "part-00001-of-00002.json",
        "part-00001-of-00002.npy",
    ]


def test_the_bank_is_embedded_once_and_reused(prepared_fixture, tmp_path):
    run = tmp_path / "run"
    for stage in ("ingest", "dedup"):
        shutil.copytree(prepared_fixture / stage, run / stage)
    calls: list[int] = []
    first = _open(run, _one(), calls=calls)
    n = len(pretraining_samples(run))
    assert first.total == n == sum(calls) and not first.reused and first.features.shape == (n, DIM)
    assert first.mean is None  # transfer.nn_center=false
    calls.clear()
    again = _open(run, _one(), calls=calls)
    assert again.reused and calls == [] and np.array_equal(np.asarray(again.features), np.asarray(first.features))
    centred = _open(run, _one(), calls=calls, center=True)  # centring is applied on read: the same part serves it
    assert centred.reused and calls == []
    np.testing.assert_allclose(centred.mean, np.asarray(first.features, np.float64).mean(axis=0), rtol=1e-5)
    part = path(run, TRANSFER, NN_BANK_DIR) / "k" / "part-00000-of-00001.json"
    part.write_text(part.read_text().replace(f'"rows": {n}', f'"rows": {n - 1}'))
    redo = _open(run, _one(), calls=calls)  # a part that does not match the samples is embedded again
    assert not redo.reused and sum(calls) == n
    other = _open(run, _one(), key="other", calls=calls)
    assert sorted(p.name for p in path(run, TRANSFER, NN_BANK_DIR).iterdir()) == ["other"] and not other.reused
    assert not list(path(run, TRANSFER, NN_BANK_DIR).rglob(".*tmp*"))  # no temp file left


def test_streamed_exact_search_is_the_exact_index():
    from pipeline.evaluation.nn_bank import stream_exact
    from pipeline.evaluation.nn_decontam import nearest

    rng = np.random.default_rng(3)
    bank = l2_normalize(rng.normal(size=(1000, 16)))
    bank[700] = bank[3]  # a tie across chunks: the earlier row wins, as in one index
    q = np.vstack([l2_normalize(bank[:300] + 0.3 * rng.normal(size=(300, 16))), bank[3:4]])
    s, i = stream_exact(q, bank, chunk=64)
    es, ei = nearest(q, bank)
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_allclose(s, es, atol=1e-5)
    assert i[-1] == 3 and len(set(i.tolist())) > 100
    s0, i0 = stream_exact(q, bank[:0])
    assert (s0 == -1).all() and (i0 == -1).all()


def test_scale_benchmark_projects_from_its_own_fit(tmp_path):
    """benchmarks.nn_index.scale on tiny parts: the projection is the fitted seconds per row and query times a
    10^8-image bank's part and 50,000 queries, and the extrapolation factor is said."""
    import sys

    from conftest import REPO

    if str(REPO) not in sys.path:  # benchmarks/ is not an installed package: import it from the checkout
        sys.path.insert(0, str(REPO))
    from benchmarks.nn_index import scale

    out = scale((2_048, 4_096, 8_192), d=32, queries=50, folder=str(tmp_path))
    assert len(out["seconds"]) == 3 and all(s > 0 for s in out["seconds"])
    per_pair = out["fit"]["b_us_per_row"] * 1e-6 / 50
    for w, p in out["projection_1e8_bank_50k_queries"].items():
        assert p["rows_per_rank"] == int(1e8) // int(w)
        assert abs(p["hours"] - per_pair * 50_000 * 1e8 / int(w) / 3600) <= 0.01 + 1e-3 * p["hours"]
        assert p["flat_index_gb_per_rank"] == round(4 * 32 * 1e8 / int(w) / 1e9, 1)
    assert out["extrapolation_factor"][8] == round(1e8 / 8 / 8_192, 1)
    assert not list(tmp_path.iterdir())  # the synthetic part is removed
