"""Near-duplicate search growth: time and memory at N and 4N pHashes, radius 4 bits.

The hashes are the demo's own perceptual hashes (stored by ingest in the shard indexes,
read with :class:`pipeline.io.shards.ShardReader`), a seeded random subset of N and one of 4N
(4N = all of them by default).

* **ours**: :func:`pipeline.vision.near_index.build_index` + :func:`pipeline.vision.near_index.range_pairs`
  (faiss multi-index hashing), every hash queried against all.
* **anchor**: imagededup's ``PHash().find_duplicates(encoding_map=..., max_distance_threshold=4)``
  (its default search, ``brute_force_cython``, with its default worker count).

Ours is timed ``reps`` times (median), imagededup once per size. Each (method, N) runs in
a fresh process, so its peak memory is its own: memory is the
peak resident set during the search minus the resident set just before it (Linux
``VmHWM`` reset through ``/proc/self/clear_refs``). Goals: our time grows <= 5x for 4x
the hashes, and our memory grows linearly (<= 4.4x, 10% above exactly linear). Both
methods must find the same pairs (checked, in ``details``). ``details`` also gives the
comparisons per query the multi-index tables imply at N and 4N (bucket-mates, noise free),
and the same search with faiss probing 3 substrings of 21 bits with 1 flipped bit
(``nflip=1``; exact to radius 5 by the pigeonhole principle), which was tried as an
alternative layout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Context, log, main, median, peak_rss_mib, peak_rss_reset, result, rss_mib, time_min_duration

RADIUS = 4
LINEAR_TOLERANCE = 1.1


def load_codes(run_dir: Path):
    """All 64-bit perceptual hash codes of the demo (uint8 (N, 8)), in shard and key order."""
    import numpy as np

    from pipeline.io.shards import ShardReader, shard_paths
    from pipeline.vision.dedup_codes import shard_codes

    parts = []
    for p in shard_paths(run_dir):
        with ShardReader(p) as reader:
            parts.append(shard_codes(reader, 8))
    if not parts:
        raise FileNotFoundError(f"no shards in {run_dir}/ingest (run the ingest stage)")
    return np.concatenate(parts)


def subset(codes, n: int, seed: int = 0):
    import numpy as np

    idx = np.random.default_rng(seed).permutation(len(codes))[:n]
    return codes[np.sort(idx)]


def child(method: str, run_dir: str, n: int, reps: int) -> dict:
    """Measure one (method, n) in this process: median seconds, peak extra memory, pairs."""
    import numpy as np

    codes = subset(load_codes(Path(run_dir)), n)
    extra: dict = {}
    if method == "ours":
        from pipeline.vision.near_index import build_index, range_pairs

        def go():
            qi, di, _ = range_pairs(build_index(codes, RADIUS), codes, RADIUS)
            return int((qi != di).sum())
    elif method == "ours_3x21_flip1":
        from pipeline.faiss_import import faiss
        from pipeline.vision.near_index import range_pairs

        def go():
            index = faiss.IndexBinaryMultiHash(64, 3, 21)
            index.nflip = 1  # a pair within 4 bits differs by <= 1 bit in one of the 3 substrings
            index.add(np.ascontiguousarray(codes))
            qi, di, _ = range_pairs(index, codes, RADIUS)
            return int((qi != di).sum())
    else:
        import logging
        import warnings

        from imagededup.methods import PHash

        logging.getLogger("imagededup").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore")
        enc = {f"{i:07d}": bytes(c).hex() for i, c in enumerate(codes)}
        ph = PHash(verbose=False)

        def go():
            res = ph.find_duplicates(encoding_map=enc, max_distance_threshold=RADIUS)
            return int(sum(len(v) for v in res.values()))

    base = rss_mib()
    reset = peak_rss_reset()
    t0 = time.perf_counter()
    pairs = go()  # first run: memory (and, for the slow anchor, its first timing)
    first = time.perf_counter() - t0
    peak = peak_rss_mib()
    if method == "ours":
        from pipeline.faiss_import import faiss
        from pipeline.vision.near_index import build_index

        extra["index_bytes"] = int(faiss.serialize_index_binary(build_index(codes, RADIUS)).size)
    if method.startswith("ours"):
        times = [time_min_duration(go, 0.2, max_loops=200) for _ in range(reps)]
    else:
        times = [first] + [time_min_duration(go, 0.0, max_loops=1) for _ in range(reps - 1)]
    return {
        "method": method,
        "n": int(len(codes)),
        "seconds": median(times),
        "seconds_per_rep": times,
        "peak_extra_mib": (peak - base) if (reset and peak is not None and base is not None) else None,
        "pairs": pairs,
        "distinct_codes": int(len(np.unique(codes, axis=0))),
        **extra,
    }


def candidates_per_query(codes, radius: int = RADIUS) -> float:
    """Mean bucket-mates per query of the old layout (radius + 1 substrings of 64 // (radius + 1) bits,
    exact match, used before build_index switched to fewer substrings with nflip): noise free."""
    import numpy as np

    nhash = radius + 1
    b = min(24, codes.shape[1] * 8 // nhash)
    bits = np.unpackbits(codes, axis=1).astype(np.int64)
    total = 0
    for t in range(nhash):
        keys = bits[:, t * b : (t + 1) * b] @ (1 << np.arange(b, dtype=np.int64))
        _, counts = np.unique(keys, return_counts=True)
        total += int((counts**2).sum())
    return total / len(codes)


def _spawn(method: str, ctx: Context, n: int, reps: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.near_search", "--child", method, str(ctx.run_dir), str(n), str(reps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(ctx: Context) -> list[dict]:
    total = len(load_codes(ctx.run_dir))
    n = int(ctx.options.get("n", 1000 if ctx.quick else total // 4))
    n = min(n, total // 4)
    log(f"near_search: N={n} and 4N={4 * n} of {total} demo pHashes, radius {RADIUS}, {ctx.reps} reps")
    res = {}
    for method in ("ours",) if ctx.ours_only else ("ours", "imagededup"):
        for size in (n, 4 * n):
            t0 = time.perf_counter()
            # imagededup once per size: at 4N a run takes about a minute, and its ~16x growth needs no median
            res[method, size] = _spawn(method, ctx, size, ctx.reps if method == "ours" else 1)
            r = res[method, size]
            log(
                f"near_search {method} N={size}: {r['seconds']:.4f} s, +{r['peak_extra_mib'] or 0:.1f} MiB, "
                f"{r['pairs']} pairs ({time.perf_counter() - t0:.0f} s)"
            )
    alt = {}
    for size in (n, 4 * n):  # what was tried: 3 substrings of 21 bits probed with 1 flipped bit (exact to radius 5)
        alt[size] = _spawn("ours_3x21_flip1", ctx, size, ctx.reps)
    log(
        "near_search ours with 3 x 21-bit substrings + 1 flip: "
        + ", ".join(f"N={k}: {v['seconds']:.4f} s" for k, v in alt.items())
    )
    codes_all = load_codes(ctx.run_dir)
    cand = {"N": candidates_per_query(subset(codes_all, n)), "4N": candidates_per_query(subset(codes_all, 4 * n))}
    o_t = res["ours", 4 * n]["seconds"] / res["ours", n]["seconds"]
    o_m = _ratio(res["ours", 4 * n]["peak_extra_mib"], res["ours", n]["peak_extra_mib"])
    a_t = a_m = None
    if not ctx.ours_only:
        a_t = res["imagededup", 4 * n]["seconds"] / res["imagededup", n]["seconds"]
        a_m = _ratio(res["imagededup", 4 * n]["peak_extra_mib"], res["imagededup", n]["peak_extra_mib"])
    det = {
        "N": n,
        "4N": 4 * n,
        "radius": RADIUS,
        "hashes_available": total,
        "runs": [v for v in res.values()],
        "same_pairs": None
        if ctx.ours_only
        else all(res["ours", s]["pairs"] == res["imagededup", s]["pairs"] for s in (n, 4 * n)),
        "ours_seconds": {"N": res["ours", n]["seconds"], "4N": res["ours", 4 * n]["seconds"]},
        "old_5x12_layout_candidates_per_query": cand,
        "tried_3x21_flip1_seconds": {
            "N": alt[n]["seconds"],
            "4N": alt[4 * n]["seconds"],
            "growth": alt[4 * n]["seconds"] / alt[n]["seconds"],
            "same_pairs": all(alt[s_]["pairs"] == res["ours", s_]["pairs"] for s_ in (n, 4 * n)),
        },
        "anchor_seconds": None
        if ctx.ours_only
        else {"N": res["imagededup", n]["seconds"], "4N": res["imagededup", 4 * n]["seconds"]},
    }
    title = f"near-duplicate search growth, N={n:,} -> 4N={4 * n:,} demo pHashes, radius {RADIUS}"
    return [
        result(
            "near_search_time_growth",
            ours=o_t,
            anchor=a_t,
            unit="x (time at 4N / time at N)",
            goal="ours <= 5",
            met=o_t <= 5,
            title=title,
            ours_is="build_index + range_pairs (faiss multi-index hashing)",
            anchor_is="imagededup find_duplicates (brute_force_cython)",
            details=det,
        ),
        result(
            "near_search_memory_growth",
            ours=o_m,
            anchor=a_m,
            unit="x (peak memory at 4N / at N)",
            goal=f"ours <= {4 * LINEAR_TOLERANCE:g} (linear)",
            met=None if o_m is None else o_m <= 4 * LINEAR_TOLERANCE,
            title=title,
            ours_is="peak extra resident memory during build + search",
            anchor_is="peak extra resident memory of imagededup's main process",
            details={
                "ours_mib": {"N": res["ours", n]["peak_extra_mib"], "4N": res["ours", 4 * n]["peak_extra_mib"]},
                "ours_index_bytes": {"N": res["ours", n].get("index_bytes"), "4N": res["ours", 4 * n].get("index_bytes")},
                "anchor_mib": None
                if ctx.ours_only
                else {"N": res["imagededup", n]["peak_extra_mib"], "4N": res["imagededup", 4 * n]["peak_extra_mib"]},
            },
        ),
    ]


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))

    else:
        main(run)
