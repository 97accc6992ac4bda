"""The shard index read by column (Parquet, format 2) against the JSON index of earlier ingests (format 1).

``python -m benchmarks.shard_index [--sizes 1000,4000,16000,64000] [--json FILE]``

For each shard size S (samples in one shard) it writes one synthetic shard index both ways, with rows shaped
like the demo's (an emoji sample: 4 hashtags, source metadata, the 64- and 256-bit codes, two members; 680 bytes
a sample as JSON, as on the demo shards), and times on one core, best of 3:

- **codes**: what dedup reads per shard, the keys, ids, pixel hashes and 64-bit codes
  (:func:`pipeline.vision.shard_dedup.scan_shard`'s read): JSON: parse the whole file and the codes' hex as
  the code before the Parquet index did; Parquet: those four columns (:func:`pipeline.io.shard_index.read_index`);
- **tags**: what vocab reads, keys, ids and hashtags (:func:`pipeline.io.sample_tags.read_sample_tags`);
- **bytes a sample** on disk, and the Arrow memory of the columns read (``pyarrow.total_allocated_bytes``).

Each time is fitted ``a + b S`` over the sizes (the per-sample cost ``b``; largest residual printed) and
projected to 10^9 samples read by 1, 64 and 512 workers at that rate (shards are independent: a projection of a
linear cost, assuming a worker reads its shards from a disk or object store no slower than this machine's
page cache, which the figures here read from).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.io.shard_index import code_column, codes_of, index_path, index_table, json_index_path, read_index, write_index

SIZES = (1_000, 4_000, 16_000, 64_000)
WORDS = [f"tag{i:05d}" for i in range(20_000)]


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` index rows (format-1 layout) shaped like the demo's emoji samples; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        h = rng.bytes(32).hex()
        tags = [WORDS[j] for j in rng.zipf(1.3, 4) % len(WORDS)]
        meta = {
            "frames": 1,
            "hashtags": tags,
            "height": 64,
            "id": f"emoji_google:{h[:12]}",
            "key": f"000000_{i:06d}",
            "meta": {
                "emoji": "x",
                "group": int(i % 9),
                "hexcode": h[:14].upper(),
                "path": f"{h[:14]}.png",
                "skin_tone": None,
                "subgroup": int(i % 97),
                "vendor": "google",
            },
            "orig_height": 64,
            "orig_width": 64,
            "sha256": rng.bytes(32).hex(),
            "source": "emoji_google",
            "source_format": "PNG",
            "width": 64,
        }
        rows.append(
            {
                "key": meta["key"],
                "members": {"json": [512 + 3072 * i, 473], "webp": [1024 + 3072 * i, 1628]},
                "meta": meta,
                "phash": {"16": rng.bytes(32).hex(), "8": rng.bytes(8).hex()},
            }
        )
    return rows


def _json_codes(path: Path) -> tuple[np.ndarray, list, list, list]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    rows = doc["samples"]
    codes = np.zeros((len(rows), 8), np.uint8)
    for i, r in enumerate(rows):
        codes[i] = np.frombuffer(bytes.fromhex(r["phash"]["8"]), np.uint8)
    return codes, [r["key"] for r in rows], [r["meta"]["id"] for r in rows], [r["meta"]["sha256"] for r in rows]


def _json_tags(path: Path) -> list:
    rows = json.loads(path.read_text(encoding="utf-8"))["samples"]
    return [(r["key"], r["meta"]["id"], r["meta"]["hashtags"]) for r in rows]


def _parquet_codes(tar: Path) -> tuple[np.ndarray, list, list, list]:
    t = read_index(tar, ["key", "id", "sha256", code_column(8)])
    assert t is not None
    return codes_of(t, 8)[0], *(t.column(c).to_pylist() for c in ("key", "id", "sha256"))


def _parquet_tags(tar: Path) -> list:
    t = read_index(tar, ["key", "id", "hashtags"])
    assert t is not None
    return list(zip(*(t.column(c).to_pylist() for c in ("key", "id", "hashtags"))))


def _best(fn, *args, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def measure(sizes=SIZES) -> dict:
    """Seconds, bytes and Arrow memory per shard size for both index formats (see the module docstring)."""
    out: dict = {
        "sizes": list(sizes),
        "json": {"codes_s": [], "tags_s": [], "bytes_per_sample": []},
        "parquet": {"codes_s": [], "tags_s": [], "bytes_per_sample": [], "arrow_mb_codes": []},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            rows = synthetic_rows(n)
            tar = Path(tmp) / f"{n:06d}.tar"
            tar.write_bytes(b"\0" * 1024)  # the index records its tar's size; the tar itself is not read here
            write_index(tar, tar.stat().st_size, index_table(rows))
            jp = json_index_path(tar.with_name(f"j{n:06d}.tar"))
            doc = {"format": 1, "tar": tar.name, "tar_bytes": 1024, "samples": rows}
            jp.write_text(json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")))
            a, b = _json_codes(jp), _parquet_codes(tar)  # the same answers both ways
            assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
            assert [(k, i, list(t)) for k, i, t in _json_tags(jp)] == _parquet_tags(tar)
            out["json"]["codes_s"].append(_best(_json_codes, jp))
            out["json"]["tags_s"].append(_best(_json_tags, jp))
            out["json"]["bytes_per_sample"].append(round(jp.stat().st_size / n, 1))
            out["parquet"]["codes_s"].append(_best(_parquet_codes, tar))
            out["parquet"]["tags_s"].append(_best(_parquet_tags, tar))
            out["parquet"]["bytes_per_sample"].append(round(index_path(tar).stat().st_size / n, 1))
            before = pa.total_allocated_bytes()
            t = read_index(tar, ["key", "id", "sha256", code_column(8)])
            out["parquet"]["arrow_mb_codes"].append(round((pa.total_allocated_bytes() - before) / 1e6, 2))
            del t
    for fmt in ("json", "parquet"):
        for what in ("codes", "tags"):
            secs = out[fmt][f"{what}_s"]
            b, a = np.polyfit(np.asarray(sizes, float), np.asarray(secs), 1)
            resid = max(abs(a + b * s - y) / y for s, y in zip(sizes, secs))
            out[fmt][f"{what}_fit"] = {
                "a_s": round(a, 4),
                "us_per_sample": round(b * 1e6, 3),
                "samples_per_s": round(1 / b),
                "largest_residual": round(resid, 3),
                "hours_1e9": {str(w): round(b * 1e9 / w / 3600, 2) for w in (1, 64, 512)},
            }
            out[fmt][f"{what}_s"] = [round(x, 4) for x in secs]
    out["speedup_codes"] = round(out["json"]["codes_fit"]["us_per_sample"] / out["parquet"]["codes_fit"]["us_per_sample"], 1)
    out["speedup_tags"] = round(out["json"]["tags_fit"]["us_per_sample"] / out["parquet"]["tags_fit"]["us_per_sample"], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(prog="python -m benchmarks.shard_index", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="samples per shard, comma-separated")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    res = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "pyarrow": pa.__version__,
        **measure(tuple(int(x) for x in args.sizes.split(","))),
    }
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


__all__ = ["synthetic_rows", "measure", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
