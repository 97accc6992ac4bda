"""The dedup stage at 10^5-10^7 samples, per executor: time, peak memory, pairs per radius.

``python -m benchmarks.dedup_stage [--sizes 100000,1000000,10000000] [--kinds local-1,local-2,ray-2] [--json F]``

A synthetic corpus of shard metadata only: shards of 10,000 samples whose Parquet index holds the columns dedup
reads (``key``, ``id``, ``sha256``, ``phash64``; the tar is a 1 KB stand-in, never read), an ingest manifest
naming them, no eval set. The codes keep the demo's bit statistics and add duplicate families of realistic shape:

- 90% of samples are distinct images: a random demo code with Poisson(16) random bits flipped (two such codes
  are ~24+ bits apart: not near duplicates);
- 9.9% are copies from a pool of N/50 originals (the same kind of codes), the original drawn uniformly for 80%
  of them (families of ~5) and by Zipf(1.6) popularity for 20% (a heavy tail: the most copied image, a meme, is
  0.85% of the corpus), each copy with Poisson(1) bits flipped and the same pixels (SHA-256) for 30% of them;
- 0.1% are one "blank" family (a logo or an empty frame): one code, 0 or 1 bit flipped, distinct pixels;
- 0.01% reuse an earlier sample's id.

``local-1`` is one process with one thread (``OMP_NUM_THREADS=1``: faiss would use every core), ``local-2`` a pool
of 2 single-threaded workers beside the driver, ``ray-2`` a local Ray of 2 CPUs. Each configuration runs the whole
stage (:func:`pipeline.dedup.run_dedup`, ``dedup.near_radius=4``) in a fresh process: seconds, the driver's peak RSS
(``ru_maxrss``, imports included) and the largest pool worker's (``RUSAGE_CHILDREN``; Ray's workers are not
children), the counts per reason, the distinct codes, the partitions and the pairs found. ``--radii`` also counts
the pairs among the distinct codes at other radii (in process).
The fit (least squares over the sizes measured) gives µs and bytes per sample for the projection.
To time another checkout (the code before this module), run its stage with ``--child`` from that checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARD = 10_000
SIZES = (100_000, 1_000_000, 10_000_000)


def _flip(codes: np.ndarray, k: np.ndarray, rng) -> np.ndarray:
    """Flip ``k[i]`` random bits of each code (uint8 (n, 8)); a flip may repeat a bit (then it cancels)."""
    bits = np.unpackbits(codes, axis=1)
    rows = np.repeat(np.arange(len(codes)), k)
    cols = rng.integers(0, 64, len(rows))
    np.bitwise_xor.at(bits, (rows, cols), 1)
    return np.packbits(bits, axis=1)


def write_corpus(run: Path, n: int, real: np.ndarray) -> float:
    """Write ``n // SHARD`` synthetic shards and an ingest manifest under ``run/ingest``; seconds taken."""
    import pyarrow as pa

    from pipeline.io.manifest import write_manifest
    from pipeline.io.shard_index import write_index

    t0 = time.perf_counter()
    folder = run / "ingest" / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    pool = _flip(real[rng.integers(0, len(real), max(1, n // 50))], rng.poisson(16, max(1, n // 50)), rng)
    pool_sha = rng.integers(0, 2**63, len(pool))
    blank = real[rng.integers(0, len(real))][None, :]
    shards = []
    for s in range(n // SHARD):
        r = np.random.default_rng([11, s])
        kind = r.choice(4, size=SHARD, p=[0.9, 0.099, 0.001, 0.0])
        codes = _flip(real[r.integers(0, len(real), SHARD)], r.poisson(16, SHARD), r)
        sha = r.integers(0, 2**63, SHARD)
        fam = np.flatnonzero(kind == 1)
        orig = np.where(r.random(len(fam)) < 0.8, r.integers(0, len(pool), len(fam)), (r.zipf(1.6, len(fam)) - 1) % len(pool))
        codes[fam] = _flip(pool[orig], r.poisson(1, len(fam)), r)
        same = r.random(len(fam)) < 0.3
        sha[fam[same]] = pool_sha[orig[same]]
        bl = np.flatnonzero(kind == 2)
        codes[bl] = _flip(np.repeat(blank, len(bl), 0), r.integers(0, 2, len(bl)), r)
        ids = [f"synthetic:{s}:{i}" for i in range(SHARD)]
        for i in np.flatnonzero(r.random(SHARD) < 1e-4).tolist():
            ids[i] = f"synthetic:{max(0, s - 1)}:{i}"  # an id an earlier shard holds
        table = pa.table(
            {
                "key": pa.array([f"{s:06d}_{i:06d}" for i in range(SHARD)]),
                "id": pa.array(ids),
                "sha256": pa.array([f"{int(x):016x}" * 4 for x in sha]),
                "phash64": pa.array([c.tobytes() for c in codes], pa.binary(8)),
            }
        )
        tar = folder / f"{s:06d}.tar"
        tar.write_bytes(b"\0" * 1024)
        write_index(tar, 1024, table)
        shards.append({"path": f"shards/{s:06d}.tar", "sha256": f"{s:064x}"})
    write_manifest(
        run / "ingest", stage="ingest", config={}, inputs={}, counts={"samples": n}, seconds=0, outputs={"shards": shards}
    )
    return time.perf_counter() - t0


def _child(kind: str, n: int, run: str, extra: list[str]) -> dict:
    from benchmarks.common import compose_cfg
    from pipeline.dedup import run_dedup

    engine, workers = kind.split("-")
    overrides = [f"run_dir={run}", "dedup.progress=false", f"dedup.workers={workers}", "data.eval_sets=[]"]
    if engine == "ray":
        overrides.append("data.engine=ray")
    overrides += extra
    cfg = compose_cfg(*overrides)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    t0 = time.perf_counter()
    man = run_dedup(cfg)
    seconds = time.perf_counter() - t0
    c = man["counts"]
    return {
        "kind": kind,
        "samples": n,
        "overrides": extra,
        "seconds": round(seconds, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        "rss_after_imports_gb": round(rss0, 3),
        "worker_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6, 3),
        "counts": {k: c.get(k) for k in ("removed", "duplicate_id", "exact", "near", "kept", "codes_seconds")},
        "near_search": c.get("near_search"),
    }


def pairs_per_radius(run: Path, radii: list[int]) -> dict:
    """Pairs among the distinct codes of the whole corpus at each radius, the most pairs one code is in, and
    seconds (the search in process, partitions of 32,768 codes as the stage's default)."""
    from pipeline.executor import LocalExecutor
    from pipeline.io.shards import shard_paths
    from pipeline.vision.duplicates import distinct_rows
    from pipeline.vision.shard_dedup import ScanShared, near_pairs, partition_items, scan_shard

    ex = LocalExecutor(1)
    parts = ex.map(scan_shard, list(enumerate(map(str, shard_paths(run)))), ScanShared(hash_size=8))
    codes = np.concatenate([p.codes for p in parts])
    first, _ = distinct_rows(codes)
    codes = codes[first]
    out = {"distinct_codes": len(codes)}
    for r in radii:
        t0 = time.perf_counter()
        p = max(1, -(-len(codes) * (r + 1) // 32_768)) if len(codes) * (r + 1) > 32_768 else 1
        found = ex.map(near_pairs, partition_items(codes, r, p), (r, p))
        ends = np.concatenate([f[k] for f in found for k in (0, 1)])
        out[str(r)] = {
            "pairs": int(len(ends) // 2),
            "max_pairs_of_a_code": int(np.bincount(ends).max()) if len(ends) else 0,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.common import per_sample_slopes, run_child
    from benchmarks.near_search import load_codes

    ap = argparse.ArgumentParser(prog="python -m benchmarks.dedup_stage", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--kinds", default="local-1,local-2,ray-2")
    ap.add_argument("--radii", default="", help="e.g. 2,4,6: also count pairs per radius")
    ap.add_argument("--run-dir", default="runs/demo", help="a demo run folder: the real codes")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", default=None, help="write the corpora here and keep them (else a temp folder)")
    ap.add_argument("--set", action="append", default=[], help="a config override for every run, e.g. dedup.save_index=false")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "N", "RUN"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, n, run = args.child
        print(json.dumps(_child(kind, int(n), run, args.set)))
        return 0
    real = load_codes(Path(args.run_dir))
    rows, written, radii = [], {}, {}
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(args.keep or tmp) / f"corpus-{n}"
            if not (run / "ingest" / "manifest.json").exists():
                written[n] = round(write_corpus(run, n, real), 1)
            for kind in filter(None, args.kinds.split(",")):
                cmd = [sys.executable, "-m", "benchmarks.dedup_stage", "--child", kind, str(n), str(run)]
                cmd += [f"--set={o}" for o in args.set]
                env = dict(os.environ)
                if kind == "local-1":  # one process on one core: faiss's OpenMP would use every core
                    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
                r = run_child(cmd, env)
                if r is not None:
                    rows.append(r)
            if args.radii:
                radii[n] = pairs_per_radius(run, [int(x) for x in args.radii.split(",")])
                print(json.dumps({"samples": n, "pairs_per_radius": radii[n]}), flush=True)
    fields = {
        "us_per_sample": ("seconds", 1e6),
        "driver_bytes_per_sample": ("peak_rss_gb", 1e9),
        "worker_bytes_per_sample": ("worker_rss_gb", 1e9),
    }
    fits = per_sample_slopes(rows, args.kinds.split(","), fields)
    res = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "corpus_write_seconds": written,
        "rows": rows,
        "pairs_per_radius": radii,
        "fits": fits,
    }
    print(json.dumps(fits, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


__all__ = ["main", "write_corpus", "pairs_per_radius"]

if __name__ == "__main__":
    raise SystemExit(main())
