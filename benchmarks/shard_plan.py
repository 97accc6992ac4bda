"""Pretraining's epoch plan at 10^6-10^8 samples: the whole-corpus plan against the shard-level plan, per rank.

``python -m benchmarks.shard_plan [--sizes 1000000,10000000,100000000] [--worlds 1,2,8] [--json FILE]``

A synthetic corpus of labels only: shards of 10,000 samples, replication weights drawn per shard (gamma with
mean 1, as the demo's sqrt weights are spread; the plan reads weights, not classes). Each configuration runs in
a fresh process (peak RSS: the child's ``ru_maxrss``, imports included: ``rss_after_imports_gb``) and times what
a rank does before its first step:

- **whole-corpus** (:func:`pipeline.train.epoch_plan.make_epoch_plan`, today's training path): the rank holds
  every sample's key (52-byte numpy unicode), CSR classes (2 a sample) and weight, and plans the whole epoch;
- **shard-level** (:mod:`pipeline.train.shard_plan`): the rank holds the shard table, deals the shards, reads
  the weights of its own shards and replicates them. The weights come from a generator seeded per shard
  (a stand-in for reading ``vocab/shard_labels/NNNNNN.parquet``); the Parquet read of one real 10,000-sample
  labels file is timed apart and added per sample read.

Ranks are simulated in one process (the plan is metadata): rank 0 of ``world``. The projection to 10^9 and
3.5 x 10^9 is linear in the rank's samples (N / world) for the shard-level plan, and in N for the whole-corpus
one, from a least-squares line over the sizes measured.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARD = 10_000
SIZES = (1_000_000, 10_000_000, 100_000_000)
WORLDS = (1, 2, 8)
OLD_MAX = 10_000_000  # the whole-corpus plan past this needs more memory than this machine has (see docs)


def _weights(shard: int) -> np.ndarray:
    return np.random.default_rng([99, shard]).gamma(1.3, 1 / 1.3, SHARD)


def _child(kind: str, n: int, world: int) -> dict:
    """One rank's set-up, in this process: seconds and peak RSS (GB)."""
    from pipeline.train.epoch_plan import SampleIndex, make_epoch_plan
    from pipeline.train.shard_plan import deal_shards, rank_items

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    t0 = time.perf_counter()
    n_shards = n // SHARD
    if kind == "whole":
        keys = np.array([f"{s:06d}_{p:06d}" for s in range(n_shards) for p in range(SHARD)])
        indptr = np.arange(0, 2 * n + 1, 2, dtype=np.int64)
        indices = np.zeros(2 * n, dtype=np.int64)
        weights = np.concatenate([_weights(s) for s in range(n_shards)])
        t_data = time.perf_counter() - t0
        plan = make_epoch_plan(SampleIndex(keys, indptr, indices, weights), seed=0, epoch=0, world=world, batch_size=64)
        items = len(plan.rank_items(0)[0])
        read = n
    else:
        shards = np.arange(n_shards, dtype=np.int64)
        samples = np.full(n_shards, SHARD, dtype=np.int64)
        expected = np.array([_weights(s).sum() for s in range(n_shards)])  # the table vocab writes
        t_data = time.perf_counter() - t0
        deal = deal_shards(shards, samples, expected, seed=0, epoch=0, world=world)
        _, rows, _ = rank_items(deal[0], _weights, seed=0, epoch=0)
        items = len(rows)
        read = sum(sl.stop - sl.start for sl in deal[0])
    seconds = time.perf_counter() - t0
    return {
        "kind": kind,
        "samples": n,
        "world": world,
        "seconds": round(seconds, 3),
        "data_seconds": round(t_data, 3),
        "rank0_items": items,
        "samples_read": read,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        "rss_after_imports_gb": round(base, 3),
    }


def parquet_read_us_per_sample() -> float:
    """Microseconds a sample to read one 10,000-sample shard labels file's weights (best of 5)."""
    from pipeline.io.shard_labels import read_shard_labels, write_shard_labels

    keys = np.array([f"000000_{p:06d}" for p in range(SHARD)])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shard_labels"
        write_shard_labels(
            folder, keys, keys, np.arange(0, 2 * SHARD + 1, 2), np.zeros(2 * SHARD, np.int32), {"sqrt": _weights(0)}
        )
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            read_shard_labels(folder, 0, ["weight_sqrt"]).column(0).to_numpy()
            best = min(best, time.perf_counter() - t)
    return best / SHARD * 1e6


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(prog="python -m benchmarks.shard_plan", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--worlds", default=",".join(map(str, WORLDS)))
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=3, metavar=("KIND", "N", "WORLD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), int(args.child[2]))))
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    worlds = [int(x) for x in args.worlds.split(",")]
    us = parquet_read_us_per_sample()
    rows = []
    for n in sizes:
        for world in worlds:
            for kind in ("whole", "shard"):
                if kind == "whole" and n > OLD_MAX:
                    continue
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.shard_plan", "--child", kind, str(n), str(world)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if kind == "shard":
                    r["with_parquet_read_s"] = round(r["seconds"] + r["samples_read"] * us / 1e6, 3)
                print(json.dumps(r))
                rows.append(r)
    fits = {}
    for kind in ("whole", "shard"):
        for world in worlds:
            pts = [
                (r["samples"] / (1 if kind == "whole" else world), r.get("with_parquet_read_s", r["seconds"]), r["peak_rss_gb"])
                for r in rows
                if r["kind"] == kind and r["world"] == world
            ]
            if len(pts) < 2:
                continue
            x = np.array([p[0] for p in pts])
            bt, at = np.polyfit(x, [p[1] for p in pts], 1)
            bm, am = np.polyfit(x, [p[2] for p in pts], 1)
            proj = {}
            for big in (1e9, 3.5e9):
                xb = big / (1 if kind == "whole" else world)
                proj[f"{big:.2g}"] = {"seconds": round(at + bt * xb, 1), "peak_rss_gb": round(am + bm * xb, 2)}
            fits[f"{kind}_world{world}"] = {
                "us_per_sample": round(bt * 1e6, 3),
                "bytes_per_sample": round(bm * 1e9, 1),
                "points": len(pts),
                "projected": proj,
            }
    res = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "parquet_read_us_per_sample": round(us, 4),
        "rows": rows,
        "fits": fits,
    }
    print(json.dumps(fits, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


__all__ = ["parquet_read_us_per_sample", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
