"""Pretraining's epoch plan at 10^6-10^8 samples: the whole-corpus plan against the shard-level plan, per rank.

``python -m benchmarks.shard_plan [--sizes 1000000,10000000,100000000] [--worlds 1,2,8] [--json FILE]``

A synthetic corpus of labels only: shards of 10,000 samples, replication weights drawn per shard (gamma with
mean 1, as the demo's sqrt weights are spread; the plan reads weights, not classes). Each configuration runs in
a fresh process (peak RSS: the child's ``ru_maxrss``, imports included: ``rss_after_imports_gb``) and times what
a rank does before its first step:

- **whole-corpus** (:func:`pipeline.train.epoch_plan.make_epoch_plan`, the training path until 2026-12-07): the rank holds
  every sample's key (52-byte numpy unicode), CSR classes (2 a sample) and weight, and plans the whole epoch;
- **shard-level** (the training path, :class:`pipeline.train.shard_samples.ShardSamples`): over real per-shard
  labels files written first (``vocab/shard_labels/`` as the vocab stage writes them: keys, ids, 2 classes a
  sample, weights, hash buckets; the buckets are drawn at random here instead of hashed, which changes nothing
  the rank does), rank 0 splits its 1/world of the shards (no held-out set: the stand-in below needs every
  sample to train; a held-out set adds its keys and classes, ``heldout_fraction`` of them), computes its item counts
  of all ``--epochs`` epochs (the schedule needs every epoch's steps), then streams its items of epoch 0
  through the loader's shuffle buffer (1,000) up to the first batch of 64: ``seconds`` and ``peak_rss_gb``
  stop there (what a rank does before its first step, less the byte offsets of the shard tars, not made
  here); then it streams the rest of the epoch's items (no images): ``epoch_stream_seconds``, and the peak
  RSS over the whole epoch in ``peak_rss_gb`` (flat if nothing accumulates). The other ranks' answers to the
  two exchanges are stood in for: their table rows from ``shards.parquet``, and their parts of the item
  counts (rank 0 computes its own part, as it would; every rank's count is then set to the mean, which
  changes nothing it times).

Ranks are simulated in one process (the plan is metadata): rank 0 of ``world``. The projection to 10^9 and
3.5 x 10^9 is linear in the rank's samples (N / world) for the shard-level plan, and in N for the whole-corpus
one, from a least-squares line over the sizes measured.
"""

from __future__ import annotations

import argparse
import itertools
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


def write_corpus(folder: Path, n: int) -> float:
    """Write ``n // SHARD`` synthetic shard labels files and the shard table into ``folder``; seconds taken."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.io.shard_labels import SHARD_TABLE, shard_labels_path

    t = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    pos = np.char.zfill(np.arange(SHARD).astype(str), 6)
    offsets = pa.array(np.arange(0, 2 * SHARD + 1, 2, dtype=np.int32))
    rng = np.random.default_rng(7)
    table: dict[str, list] = {"shard": [], "samples": [], "expected_sqrt": []}
    for s in range(n // SHARD):
        keys = pa.array(np.char.add(f"{s:06d}_", pos).tolist(), pa.string())
        w = _weights(s)
        classes = pa.ListArray.from_arrays(offsets, pa.array(rng.zipf(1.6, 2 * SHARD).astype(np.int32) % 17_000))
        cols = {"key": keys, "id": keys, "classes": classes, "weight_sqrt": pa.array(w)}
        cols["heldout_bucket"] = pa.array(rng.integers(0, 10_000, SHARD, dtype=np.int32))
        cols["fraction_bucket"] = pa.array(rng.integers(0, 1_000_000, SHARD, dtype=np.int32))
        pq.write_table(pa.table(cols), shard_labels_path(folder, s), compression="zstd")
        table["shard"].append(s), table["samples"].append(SHARD), table["expected_sqrt"].append(float(w.sum()))
    pq.write_table(pa.table(table), folder / SHARD_TABLE)
    return time.perf_counter() - t


def _child(kind: str, n: int, world: int, folder: str = "", epochs: int = 8) -> dict:
    """One rank's set-up, in this process: seconds and peak RSS (GB)."""
    import random

    from pipeline.io.shard_labels import read_shard_table
    from pipeline.train.epoch_plan import SampleIndex, make_epoch_plan
    from pipeline.train.loader import shuffle_items
    from pipeline.train.shard_samples import ShardSamples

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
        table = read_shard_table(folder).to_pydict()
        others = [
            (s, m, e, m) for s, m, e in zip(table["shard"], table["samples"], table["expected_sqrt"]) if s % world
        ]  # the other ranks' rows (every sample trains)

        def exchange(obj):
            if isinstance(obj, tuple):  # the table exchange: (rows, held-out parts)
                return [obj, (others, [])]
            # the count exchange: rank 0 computed its part; the sum of all parts is stood in for by its mean
            return [np.full_like(obj, world * int(obj.sum()) // obj.size)]

        samples = ShardSamples(folder, "sqrt", 0.0, 1.0, rank=0, world=world, gather=exchange)
        t_data = time.perf_counter() - t0
        samples.epoch_sizes(epochs, 0, batch_size=64)
        plan = samples.rank_stream(0, 0)
        stream = shuffle_items(plan.items(), random.Random(0), 1000)
        first = list(itertools.islice(stream, 64))  # what a loader worker holds before its first batch
        t_first = time.perf_counter() - t0
        rss_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        rest = sum(1 for _ in stream)  # the rest of the epoch's items, streamed (no images)
        items = len(first) + rest
        read = sum(sl.stop - sl.start for sl in plan.slices)
    seconds = time.perf_counter() - t0
    if kind == "shard":
        seconds, extra = (
            t_first,
            {
                "epoch_stream_seconds": round(time.perf_counter() - t0, 3),
                "peak_rss_first_batch_gb": round(rss_first, 3),
            },
        )
    else:
        extra = {}
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
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(prog="python -m benchmarks.shard_plan", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--worlds", default=",".join(map(str, WORLDS)))
    ap.add_argument("--epochs", type=int, default=8, help="epochs whose item counts a rank computes at start")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=5, metavar=("KIND", "N", "WORLD", "FOLDER", "EPOCHS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, n, world, folder, epochs = args.child
        print(json.dumps(_child(kind, int(n), int(world), folder, int(epochs))))
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    worlds = [int(x) for x in args.worlds.split(",")]
    rows, written = [], {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "shard_labels"
            written[n] = round(write_corpus(folder, n), 1)
            for world in worlds:
                for kind in ("whole", "shard"):
                    if kind == "whole" and n > OLD_MAX:
                        continue
                    cmd = [sys.executable, "-m", "benchmarks.shard_plan", "--child", kind, str(n), str(world)]
                    out = subprocess.run(cmd + [str(folder), str(args.epochs)], capture_output=True, text=True, check=True)
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    print(json.dumps(r), flush=True)
                    rows.append(r)
    fits = {}
    for kind in ("whole", "shard"):
        for world in worlds:
            pts = [
                (r["samples"] / (1 if kind == "whole" else world), r["seconds"], r["peak_rss_gb"])
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
        "epochs": args.epochs,
        "corpus_write_seconds": written,
        "rows": rows,
        "fits": fits,
    }
    print(json.dumps(fits, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


__all__ = ["main", "write_corpus"]

if __name__ == "__main__":
    raise SystemExit(main())
