"""Dedup at scale: near-search time and index memory at growing N, projected to 10^8 and 10^9 codes.

The dedup stage decodes nothing (ingest stores the codes); its single-node work is the
radius search over all codes (:func:`pipeline.vision.near_index.build_index` +
:func:`pipeline.vision.near_index.range_pairs`, faiss multi-index hashing, radius 4, 64 bits).
The demo has only 16.7k codes, so larger sets are made from them: each synthetic code is a
seeded random demo code with ``k ~ Poisson(8)`` random bits flipped, which keeps the real
codes' clustering (near-duplicate families) at every size. N = 2^16, 2^18, 2^20 by default
(``--opt sizes=65536,262144``), each timed once in this process (faiss may use all cores).

Measured per N: build + search seconds, the index's serialized bytes (codes + hash tables),
and the pairs found. A power law ``y = a N^b`` fitted on the two largest sizes gives the
projection to 10^8 and 10^9 codes (``details.projection``). Not a test: nothing asserts.
"""

from __future__ import annotations

import math
import time

from benchmarks.common import Context, log, main, result

RADIUS = 4


def synthetic_codes(real, n: int, seed: int = 0):
    """uint8 (n, 8): random real codes, each with Poisson(8) random bits flipped."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base = real[rng.integers(0, len(real), n)]
    bits = np.unpackbits(base, axis=1)
    flips = rng.poisson(8, n).clip(0, 64)
    for i in np.flatnonzero(flips):  # n up to ~10^6: a loop over rows is fine here
        bits[i, rng.choice(64, flips[i], replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def run(ctx: Context) -> list[dict]:
    from benchmarks.near_search import load_codes
    from pipeline.faiss_import import faiss
    from pipeline.vision.near_index import build_index, range_pairs

    real = load_codes(ctx.run_dir)
    sizes = [int(x) for x in ctx.options.get("sizes", "16384,65536" if ctx.quick else "65536,262144,1048576").split(",")]
    rows = []
    for n in sizes:
        codes = synthetic_codes(real, n)
        t0 = time.perf_counter()
        index = build_index(codes, RADIUS)
        t1 = time.perf_counter()
        qi, _, _ = range_pairs(index, codes, RADIUS)
        t2 = time.perf_counter()
        nbytes = int(faiss.serialize_index_binary(index).nbytes)
        rows.append(
            {
                "n": n,
                "build_seconds": round(t1 - t0, 3),
                "search_seconds": round(t2 - t1, 3),
                "seconds": round(t2 - t0, 3),
                "index_bytes": nbytes,
                "bytes_per_code": round(nbytes / n, 1),
                "pairs": int(len(qi)),
            }
        )
        log(f"dedup_scale N={n:,}: build {t1 - t0:.2f} s, search {t2 - t1:.2f} s, index {nbytes / 1e6:.1f} MB, {len(qi):,} pairs")
    a, b = rows[-2], rows[-1]
    proj = {}
    for key in ("seconds", "index_bytes"):
        exp = math.log(b[key] / a[key]) / math.log(b["n"] / a["n"])
        proj[key] = {"exponent": round(exp, 3), **{f"{n:.0e}": b[key] * (n / b["n"]) ** exp for n in (1e8, 1e9)}}
    t9, m9 = proj["seconds"]["1e+09"], proj["index_bytes"]["1e+09"]
    log(
        f"dedup_scale projection: time ~N^{proj['seconds']['exponent']}, memory ~N^{proj['index_bytes']['exponent']}; "
        f"10^9 codes: {t9 / 3600:.1f} h, {m9 / 1e9:.0f} GB"
    )
    return [
        result(
            "dedup_scale",
            ours=t9 / 3600,
            anchor=None,
            unit="hours at 10^9 codes (projected, this machine)",
            goal="(reported)",
            met=None,
            title="near search projected to 10^8 and 10^9 codes",
            ours_is="build_index + range_pairs on synthetic codes made from the demo's, power-law fit",
            anchor_is="",
            details={"radius": RADIUS, "runs": rows, "projection": proj},
        )
    ]


if __name__ == "__main__":
    main(run)
