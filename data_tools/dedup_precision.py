"""Measure near-duplicate precision by Hamming radius on the demo corpus.

``python -m data_tools.dedup_precision runs/demo [--max-radius 12]``

Reads the perceptual hashes and metadata ingest stored in the shard indexes
(:class:`pipeline.io.shards.ShardReader`; the same codes the dedup stage uses), finds every pair
of distinct-pixel images within ``--max-radius`` bits (faiss multi-index hashing), and labels a
pair *true* when the demo sources say the two images show the same thing:

* emoji: the same emoji once skin-tone modifiers (U+1F3FB-1F3FF), gender signs
  (U+2640, U+2642), FE0F and the person/man/woman base (U+1F9D1/1F468/1F469) are
  removed, across vendors (Google and Twitter draw the same emoji);
* Tux Paint: the same stamp path stem (the PNG and SVG of one stamp);
* openclipart: the same file name in two folders (copies), or two of the generated
  "magick" spirograph stars (``shapes/stars/star_NNptNNstep``).

Every other pair counts as false, so the precision printed is a lower bound. The table
(radius, pairs, true pairs, precision, cumulative) justifies ``dedup.near_radius``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from pipeline.io.shards import ShardReader, shard_paths
from pipeline.vision.dedup_codes import shard_codes
from pipeline.vision.near_index import build_index, range_pairs

_DROP = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF", "2640", "2642", "FE0F", "200D"}
_PERSON = {"1F468": "1F9D1", "1F469": "1F9D1"}
_STAR = re.compile(r"^shapes/stars/star_\d+pt\d+step")


def identity(meta: dict) -> str | None:
    """A label such that two images with the same label show the same thing (or None)."""
    src, m = meta["source"], meta.get("meta", {})
    if src.startswith("emoji") and m.get("hexcode"):
        parts = [_PERSON.get(p, p) for p in m["hexcode"].upper().split("-") if p not in _DROP]
        return "emoji:" + "-".join(parts)
    path = m.get("path", "")
    if src == "tuxpaint":
        return "tux:" + path.rsplit(".", 1)[0]
    if src == "openclipart":
        if _STAR.match(path):
            return "oc:magick-star"
        return "ocfile:" + path.rsplit("/", 1)[-1]
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--max-radius", type=int, default=12)
    ap.add_argument("--json", help="also write the table as JSON here")
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    metas, keys, codes = {}, [], []
    for p in shard_paths(run):
        with ShardReader(p) as reader:
            keys += reader.keys
            codes.append(shard_codes(reader, 8))
            metas.update(reader.iter_metadata())
    codes = np.concatenate(codes)
    shas = [metas[k]["sha256"] for k in keys]
    first: dict[str, int] = {}
    uniq = [i for i, s in enumerate(shas) if first.setdefault(s, i) == i]  # distinct pixels only
    c = codes[uniq]
    qi, di, dist = range_pairs(build_index(c, args.max_radius), c, args.max_radius)
    mask = qi < di
    qi, di, dist = qi[mask], di[mask], dist[mask]
    ident = [identity(metas[keys[uniq[i]]]) for i in range(len(uniq))]
    true = np.array([ident[a] is not None and ident[a] == ident[b] for a, b in zip(qi, di)], dtype=bool)
    rows = []
    print(f"{len(uniq)} distinct-pixel images; pairs within {args.max_radius} bits: {len(dist)}")
    print(f"{'radius':>6} {'pairs':>7} {'true':>6} {'precision':>9} {'cum_pairs':>9} {'cum_precision':>13}")
    for r in range(args.max_radius + 1):
        at = dist == r
        cum = dist <= r
        row = {
            "radius": r,
            "pairs": int(at.sum()),
            "true": int(true[at].sum()),
            "precision": round(float(true[at].mean()), 4) if at.any() else None,
            "cum_pairs": int(cum.sum()),
            "cum_precision": round(float(true[cum].mean()), 4) if cum.any() else None,
        }
        rows.append(row)
        print(
            f"{r:>6} {row['pairs']:>7} {row['true']:>6} {str(row['precision']):>9} {row['cum_pairs']:>9} "
            f"{str(row['cum_precision']):>13}"
        )
    false_examples = [(ident[a], ident[b], int(d)) for a, b, d, t in zip(qi, di, dist, true) if not t and d <= 4][:10]
    print("examples of pairs counted false at <= 4 bits:", *false_examples, sep="\n  ")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
