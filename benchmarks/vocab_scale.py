"""The vocab stage at 10^5-10^7 samples: the whole-corpus build against the per-shard passes, per executor.

``python -m benchmarks.vocab_scale [--sizes 100000,1000000,10000000] [--wordnet DIR] [--json FILE]``

A synthetic corpus of shard metadata only: shards of 10,000 samples whose Parquet index holds the columns the
vocab stage reads (``key``, ``id``, ``hashtags``; the tar is a 1 KB stand-in, never read). Each sample's hashtags:
its count drawn from the demo's hashtags-per-sample profile (1-12, mean 4) and each hashtag with probability 0.9
from the demo's 6,000 most frequent real hashtags by their demo frequency (Zipf-like), else from a long tail of
synthetic tags ``tailNNNNNNN`` (Zipf 1.3 over 10^7 ids: the distinct hashtags keep growing with N, as real tags
do). The WordNet nouns mapper (``wordnet_nouns``, min_count 5) maps them.

Each configuration runs in a fresh process (``peak_rss_gb``: the driver's ``ru_maxrss``, ``passes_peak_rss_gb`` the
same before ``labels.npz``; ``worker_rss_gb``: the largest of its pool workers', ``RUSAGE_CHILDREN``, which counts
the pages a forked worker shares with the driver, and not Ray's workers (children of Ray's raylet); imports
included) and times the whole stage's work on a
corpus already written (reading the indexes, counting, mapping, writing the per-shard labels and ``labels.npz``):

- **whole**: today's whole-corpus build before 2026-12-07 (:func:`pipeline.io.sample_tags.read_sample_tags`,
  :func:`pipeline.text.vocabulary.build_vocabulary`, sort, :func:`pipeline.text.resampling.all_weights`,
  :func:`pipeline.io.shard_labels.write_shard_labels`, ``labels.npz``): every sample as Python objects in one
  process;
- **local-1**, **local-2**: the per-shard passes (:func:`pipeline.text.shard_vocab.build_shard_vocabulary`) in
  process and on a pool of 2 processes, plus ``labels.npz`` from the shard files
  (:func:`pipeline.io.shard_labels.concat_shard_labels`, the whole-corpus view: O(N) numpy in the driver, timed and
  reported apart as ``labels_npz_seconds``);
- **ray-2**: the same passes as Ray tasks on a local Ray of 2 CPUs (Ray's start-up, ~5 s, included).

The fit (least squares over the sizes measured) gives µs and bytes per sample; the projection to 10^9 divides
the passes' time by the workers (the shards are independent) and says how far it extrapolates.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

SHARD = 10_000
SIZES = (100_000, 1_000_000, 10_000_000)
WHOLE_MAX = 1_000_000  # the whole-corpus build past this: ~1.3 KB a sample in one process
RAY_MAX = 10_000_000


def _demo_profile(run_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(the demo's 6,000 most frequent hashtags, their occurrence shares, the share of samples with k = 0..12 tags)."""
    from pipeline.io.sample_tags import read_sample_tags
    from pipeline.io.shards import shard_paths

    s = read_sample_tags(shard_paths(run_dir), set())
    occ = Counter(t for tags in s.tags for t in tags)
    top = occ.most_common(6000)
    p = np.array([c for _, c in top], dtype=np.float64)
    k = np.bincount([min(12, len(t)) for t in s.tags], minlength=13).astype(np.float64)
    k[0] = 0
    return [t for t, _ in top], p / p.sum(), k / k.sum()


def write_corpus(folder: Path, n: int, profile) -> float:
    """Write ``n // SHARD`` synthetic shards (a 1 KB tar stand-in + its Parquet index); seconds taken."""
    import pyarrow as pa

    from pipeline.io.shard_index import write_index

    words, p, kp = profile
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n // SHARD):
        rng = np.random.default_rng([7, s])
        k = rng.choice(13, size=SHARD, p=kp)
        total = int(k.sum())
        real = rng.choice(len(words), size=total, p=p)
        tail = rng.zipf(1.3, size=total) % 10_000_000
        use_tail = rng.random(total) < 0.1
        flat = [f"tail{t:07d}" if u else words[r] for r, t, u in zip(real.tolist(), tail.tolist(), use_tail.tolist())]
        offsets = np.concatenate([[0], np.cumsum(k)]).astype(np.int32)
        # a sample's hashtags are distinct (ingest normalizes and de-duplicates them): drop repeats within a sample
        rows = [list(dict.fromkeys(flat[offsets[i] : offsets[i + 1]])) for i in range(SHARD)]
        table = pa.table(
            {
                "key": pa.array([f"{s:06d}_{i:06d}" for i in range(SHARD)]),
                "id": pa.array([f"synthetic:{s}:{i}" for i in range(SHARD)]),
                "hashtags": pa.array(rows, pa.list_(pa.string())),
            }
        )
        tar = folder / f"{s:06d}.tar"
        tar.write_bytes(b"\0" * 1024)
        write_index(tar, 1024, table)
    return time.perf_counter() - t0


def _mapper(wordnet: str):
    from pipeline.text.vocabulary import class_mapper

    return class_mapper("wordnet_nouns", wordnet, "")[0]


def _child(kind: str, n: int, folder: str, wordnet: str) -> dict:
    from pipeline.io.labels import write_labels
    from pipeline.io.shard_labels import concat_shard_labels, publish_shard_labels, staging_folder, write_shard_labels

    paths = sorted(Path(folder).glob("*.tar"))
    out = Path(folder).parent / f"out-{kind}"
    out.mkdir(exist_ok=True)
    mapper = _mapper(wordnet)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    t0 = time.perf_counter()
    npz_s = 0.0
    if kind == "whole":
        from pipeline.io.sample_tags import read_sample_tags
        from pipeline.text.resampling import all_weights
        from pipeline.text.vocabulary import build_vocabulary, sort_by_keys

        s = read_sample_tags(paths, set())
        v = build_vocabulary(s.tags, mapper, "wordnet_nouns", 5, 1000)
        keys, ids = sort_by_keys(v, s.keys, s.ids)
        w = all_weights(v.indptr, v.indices, v.counts)
        write_shard_labels(out / "shard_labels", keys, ids, v.indptr, v.indices, w)
        passes_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        t1 = time.perf_counter()
        write_labels(out / "labels.npz", keys, ids, v.indptr, v.indices, v.counts, w)
        npz_s = time.perf_counter() - t1
        classes, distinct = len(v.classes), None
    else:
        from pipeline.executor import make_executor
        from pipeline.text.shard_vocab import build_shard_vocabulary, shard_tasks

        engine, workers = kind.split("-")
        with make_executor(engine, int(workers)) as ex:
            staging = staging_folder(out / "shard_labels")
            sv = build_shard_vocabulary(ex, shard_tasks(paths, set()), mapper, "wordnet_nouns", 5, 1000, staging)
        publish_shard_labels(out / "shard_labels", sv.rows)
        passes_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        t1 = time.perf_counter()
        keys, ids, indptr, indices, w = concat_shard_labels(out / "shard_labels", sv.tags.key_width, sv.tags.id_width)
        write_labels(out / "labels.npz", keys, ids, indptr, indices, sv.table.counts, w)
        npz_s = time.perf_counter() - t1
        classes, distinct = len(sv.table.classes), len(sv.tags.occ)
    seconds = time.perf_counter() - t0
    return {
        "kind": kind,
        "samples": n,
        "seconds": round(seconds, 2),
        "labels_npz_seconds": round(npz_s, 2),
        "passes_seconds": round(seconds - npz_s, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        "passes_peak_rss_gb": round(passes_rss, 3),  # before labels.npz (vocab.whole_corpus_labels=false stops here)
        "rss_after_imports_gb": round(rss0, 3),
        "worker_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6, 3),
        "classes": classes,
        "distinct_hashtags": distinct,
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.common import per_sample_slopes, run_child

    ap = argparse.ArgumentParser(prog="python -m benchmarks.vocab_scale", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--kinds", default="whole,local-1,local-2,ray-2")
    ap.add_argument("--run-dir", default="runs/demo", help="a demo run folder: the hashtag profile")
    ap.add_argument("--wordnet", default="data/raw/nltk_data/corpora/wordnet")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=4, metavar=("KIND", "N", "FOLDER", "WORDNET"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, n, folder, wordnet = args.child
        print(json.dumps(_child(kind, int(n), folder, wordnet)))
        return 0
    profile = _demo_profile(Path(args.run_dir))
    rows, written = [], {}
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "shards"
            written[n] = round(write_corpus(folder, n, profile), 1)
            for kind in args.kinds.split(","):
                if (kind == "whole" and n > WHOLE_MAX) or (kind.startswith("ray") and n > RAY_MAX):
                    continue
                cmd = [sys.executable, "-m", "benchmarks.vocab_scale", "--child", kind, str(n), str(folder), args.wordnet]
                r = run_child(cmd)
                if r is not None:
                    rows.append(r)
    for r in rows:
        r.setdefault("passes_peak_rss_gb", r["peak_rss_gb"])
    fields = {
        "us_per_sample": ("passes_seconds", 1e6),
        "driver_bytes_per_sample": ("peak_rss_gb", 1e9),
        "driver_bytes_per_sample_passes": ("passes_peak_rss_gb", 1e9),
        "worker_bytes_per_sample": ("worker_rss_gb", 1e9),
    }
    fits = per_sample_slopes(rows, args.kinds.split(","), fields)
    res = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "corpus_write_seconds": written, "rows": rows, "fits": fits}
    print(json.dumps(fits, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


__all__ = ["main", "write_corpus"]

if __name__ == "__main__":
    raise SystemExit(main())
