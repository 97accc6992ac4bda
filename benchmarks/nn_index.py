"""The feature-space decontamination's search index: recall of approximate faiss indexes on the demo, and scale.

``python -m benchmarks.nn_index --run-dir RUN [--data-cache DIR] [--json FILE] [--quick]``

1. **Recall on the demo** (``--run-dir``: a finished demo run with ``pretrain/`` and the ingest shards; the
   Fluent Emoji target from ``--data-cache``): the pretrained trunk's pooled features of every pretraining image
   the dedup stage kept and of the target's val images (as the transfer stage computes them,
   :mod:`pipeline.evaluation.nn_decontam`), searched with ``Flat`` (exact) and with each approximate
   ``index_factory`` spec of :data:`SPECS`: recall@1 (the same nearest pretraining image as the exact search), the
   largest similarity error, and how many val images the transfer stage's threshold would flag differently
   (the threshold of the exact search's run: ``--threshold``, default the demo's 0.6858).
2. **Scale** (:func:`scale`): one rank's part of the sharded bank (:mod:`pipeline.evaluation.nn_bank`), a
   memory-mapped ``.npy`` of synthetic rows (D = 2,048) scanned exactly a chunk at a time as the stage does with
   ``transfer.nn_index=Flat``, 1,000 queries, at 4 part sizes: seconds and peak anonymous memory; the seconds
   fitted ``a + b m`` and projected to a 10^8-image bank split over 8, 32 and 64 ranks and ImageNet-1k's 50,000 val
   images (the factor beyond the largest part measured is printed: a projection, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

SPECS = ("IVF128,Flat", "HNSW32", "PCA256,IVF128,Flat", "IVF128,PQ64")
SCALE_SIZES = (32_768, 65_536, 131_072, 262_144)


def _demo_features(run_dir: Path, data_cache: str) -> tuple[np.ndarray, np.ndarray]:
    """(bank, val) L2-normalized pooled features of the demo's pretraining images and Fluent val images."""
    from benchmarks.common import compose_cfg
    from pipeline.evaluation.linear_probe import extract_features
    from pipeline.evaluation.nn_decontam import ShardImages, l2_normalize, pooled_features, pretraining_samples
    from pipeline.evaluation.target_data import TransformedSubset, eval_batches
    from pipeline.evaluation.targets import open_targets
    from pipeline.io.run_folder import PRETRAIN, TRUNK_FILE, path, read_model_info

    info = read_model_info(run_dir)
    assert info is not None, f"no finished pretrain stage in {run_dir}"
    from pipeline.train.models import load_trunk

    model = load_trunk(path(run_dir, PRETRAIN, TRUNK_FILE), info["model"]).eval().to(memory_format=torch.channels_last)
    size = int(info["image_size"])

    def extract(batches):
        return extract_features(model, batches, device=torch.device("cpu"), channels_last=True)

    samples = pretraining_samples(run_dir)
    bank = l2_normalize(pooled_features(extract, ShardImages(run_dir, samples, size), 256, 1))
    cfg = compose_cfg(f"data.cache={data_cache}", "transfer/target=[fluent_emoji_subgroup]")
    (t,) = open_targets(cfg.transfer)
    val = eval_batches(TransformedSubset(t.val_set, np.arange(len(t.val_set)), size), 256, 1, 1024)
    vx, _ = extract(val)
    return bank, l2_normalize(vx)


def recall(bank: np.ndarray, queries: np.ndarray, threshold: float) -> list[dict]:
    """Each spec of :data:`SPECS` against the exact search: recall@1, similarity error, flags changed."""
    from pipeline.evaluation.nn_decontam import nearest

    exact_s, exact_i = nearest(queries, bank)
    rows = [{"spec": "Flat", "recall_at_1": 1.0, "max_abs_sim_error": 0.0, "flags": int((exact_s >= threshold).sum())}]
    for spec in SPECS:
        t = time.perf_counter()
        s, i = nearest(queries, bank, spec, nprobe=16)
        rows.append(
            {
                "spec": spec,
                "recall_at_1": float((i == exact_i).mean()),
                "max_abs_sim_error": float(np.abs(s - exact_s).max()),
                "flags": int((s >= threshold).sum()),
                "flags_changed": int(((s >= threshold) != (exact_s >= threshold)).sum()),
                "seconds": round(time.perf_counter() - t, 2),
            }
        )
    return rows


def _rss_anon_kb() -> int:
    """This process's anonymous resident memory in KB (Linux ``/proc/self/status`` RssAnon; 0 elsewhere): the
    memory-mapped bank's file pages are page cache the kernel can drop, so they are left out."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class _PeakSampler:
    """The peak of :func:`_rss_anon_kb` while the ``with`` block runs (sampled every 20 ms in a thread)."""

    def __enter__(self):
        import threading

        self.peak, self.stop = _rss_anon_kb(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, _rss_anon_kb())

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, _rss_anon_kb())


def scale(sizes=SCALE_SIZES, d: int = 2048, queries: int = 1000, folder: str | None = None) -> dict:
    """One rank's part of a sharded bank, searched as the transfer stage searches it with ``transfer.nn_index=Flat``:
    :func:`pipeline.evaluation.nn_bank.stream_exact` over a memory-mapped float32 ``.npy`` of ``m`` synthetic rows
    (D = ``d``), ``queries`` unit queries. Per size: search seconds and the peak anonymous memory during the search;
    seconds fitted ``a + b m`` (residuals printed) and projected to one rank's part of a 10^8-image bank searched
    by ImageNet-1k's 50,000 val images (time ~ queries x rows: faiss scores a block of queries with one BLAS
    matrix product), for 8, 32 and 64 ranks of this CPU.
    """
    import tempfile

    from pipeline.evaluation.nn_bank import SCAN_ROWS, NormalizedRows, stream_exact
    from pipeline.evaluation.nn_decontam import l2_normalize

    rng = np.random.default_rng(0)
    q = l2_normalize(rng.standard_normal((queries, d), dtype=np.float32))
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        f = Path(tmp) / "part.npy"
        bank = np.lib.format.open_memmap(f, mode="w+", dtype=np.float32, shape=(max(sizes), d))
        for a in range(0, max(sizes), 65_536):
            bank[a : a + 65_536] = rng.standard_normal((min(65_536, max(sizes) - a), d), dtype=np.float32)
        bank.flush()
        del bank
        mm = np.load(f, mmap_mode="r")
        base = _rss_anon_kb()
        seconds, peaks = [], []
        for m in sizes:
            with _PeakSampler() as peak:
                t = time.perf_counter()
                stream_exact(q, NormalizedRows(mm[:m], None))
                seconds.append(time.perf_counter() - t)
            peaks.append(round((peak.peak - base) / 1024, 1))
        del mm
    b, a = np.polyfit(np.asarray(sizes, float), np.asarray(seconds), 1)
    resid = [abs((a + b * m) - y) / y for m, y in zip(sizes, seconds)]
    per_pair_s = b / queries  # seconds per (query, row) pair
    proj = {
        str(w): {
            "rows_per_rank": int(1e8 // w),
            "hours": round(per_pair_s * 50_000 * (1e8 / w) / 3600, 2),
            "flat_index_gb_per_rank": round(4 * d * 1e8 / w / 1e9, 1),
        }
        for w in (8, 32, 64)
    }
    return {
        "sizes": list(sizes),
        "d": d,
        "queries": queries,
        "seconds": [round(x, 3) for x in seconds],
        "fit": {"a_s": round(a, 3), "b_us_per_row": round(b * 1e6, 3), "largest_residual": round(max(resid), 3)},
        "gflops": round(2 * d * queries * sizes[-1] / seconds[-1] / 1e9, 1),
        "peak_anon_mb_above_start": peaks,
        "scan_chunk_rows": SCAN_ROWS,
        "projection_1e8_bank_50k_queries": proj,
        "extrapolation_factor": {w: round(1e8 / w / sizes[-1], 1) for w in (8, 32, 64)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.nn_index", description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=None, help="a finished demo run (recall part; skipped without it)")
    ap.add_argument("--data-cache", default="data/raw", help="the demo data (the Fluent Emoji target)")
    ap.add_argument("--threshold", type=float, default=0.6858, help="the flagging threshold of the exact search")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="smaller scale part (development)")
    ap.add_argument("--tmp", default=None, help="folder for the synthetic bank part (2.1 GB; default: the system's)")
    args = ap.parse_args(argv)
    out: dict = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    if args.run_dir:
        bank, vx = _demo_features(Path(args.run_dir), args.data_cache)
        out["recall"] = {"bank": len(bank), "queries": len(vx), "rows": recall(bank, vx, args.threshold)}
        print(f"demo: {len(bank)} pretraining images, {len(vx)} Fluent val images")
        for r in out["recall"]["rows"]:
            print(" ", r)
    out["scale"] = scale((8_192, 16_384, 32_768) if args.quick else SCALE_SIZES, folder=args.tmp)
    print(json.dumps(out["scale"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


__all__ = ["recall", "scale", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
