"""The feature-space decontamination's search index: recall of approximate faiss indexes on the demo, and scale.

``python -m benchmarks.nn_index --run-dir RUN [--data-cache DIR] [--json FILE] [--quick]``

1. **Recall on the demo** (``--run-dir``: a finished demo run with ``pretrain/`` and the ingest shards; the
   Fluent Emoji target from ``--data-cache``): the pretrained trunk's pooled features of every pretraining image
   the dedup stage kept and of the target's val images (as the transfer stage computes them,
   :mod:`pipeline.evaluation.nn_decontam`), searched with ``Flat`` (exact) and with each approximate
   ``index_factory`` spec of :data:`SPECS`: recall@1 (the same nearest pretraining image as the exact search), the
   largest similarity error, and how many val images the transfer stage's threshold would flag differently
   (the threshold of the exact search's run: ``--threshold``, default the demo's 0.6858).
2. **Scale** (synthetic unit vectors, D = 2,048, 1,000 queries): build (train + add) and search seconds and the
   index's bytes per vector at several bank sizes M, for ``Flat``, ``IVF{4 sqrt(M)},Flat`` and
   ``PCA256,IVF{4 sqrt(M)},Flat`` (product-quantized codes are left out: on the demo they found the exact
   neighbour for a quarter of the queries, and training them took minutes); seconds fitted
   ``a + b M`` over the sizes and extrapolated to 10^8 (the factor beyond the largest M measured is printed: a
   projection, not a measurement). Memory at 10^8 is bytes per vector x 10^8 (faiss stores codes contiguously).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

SPECS = ("IVF128,Flat", "HNSW32", "PCA256,IVF128,Flat", "IVF128,PQ64")
SCALE_SIZES = (20_000, 40_000, 80_000, 160_000)


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


def scale(sizes=SCALE_SIZES, d: int = 2048, queries: int = 1000) -> dict:
    """Build/search seconds and bytes per vector at each bank size, Flat vs IVF-PQ64; linear fits to 10^8."""
    from pipeline.evaluation.nn_decontam import build_index, l2_normalize
    from pipeline.faiss_import import faiss

    rng = np.random.default_rng(0)
    q = l2_normalize(rng.standard_normal((queries, d), dtype=np.float32))
    out: dict = {"sizes": list(sizes), "d": d, "queries": queries}
    for name in ("Flat", "IVF,Flat", "PCA256,IVF,Flat"):
        build, search, per_vec = [], [], []
        for m in sizes:
            x = l2_normalize(rng.standard_normal((m, d), dtype=np.float32))
            spec = name.replace("IVF", f"IVF{int(4 * np.sqrt(m))}")
            t = time.perf_counter()
            index = build_index(x, spec, nprobe=16)
            build.append(time.perf_counter() - t)
            t = time.perf_counter()
            index.search(q, 1)
            search.append(time.perf_counter() - t)
            per_vec.append(len(faiss.serialize_index(index)) / m)
            del x, index
        fits = {}
        for key, ys in (("build", build), ("search", search)):
            b, a = np.polyfit(np.asarray(sizes, float), np.asarray(ys), 1)
            fits[key] = {"seconds": [round(y, 3) for y in ys], "at_1e8_hours": round((a + b * 1e8) / 3600, 2)}
        out[name] = {**fits, "bytes_per_vector": [round(v, 1) for v in per_vec], "gb_at_1e8": round(per_vec[-1] * 1e8 / 1e9, 1)}
    out["extrapolation_factor"] = round(1e8 / sizes[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.nn_index", description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=None, help="a finished demo run (recall part; skipped without it)")
    ap.add_argument("--data-cache", default="data/raw", help="the demo data (the Fluent Emoji target)")
    ap.add_argument("--threshold", type=float, default=0.6858, help="the flagging threshold of the exact search")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="smaller scale part (development)")
    args = ap.parse_args(argv)
    out: dict = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    if args.run_dir:
        bank, vx = _demo_features(Path(args.run_dir), args.data_cache)
        out["recall"] = {"bank": len(bank), "queries": len(vx), "rows": recall(bank, vx, args.threshold)}
        print(f"demo: {len(bank)} pretraining images, {len(vx)} Fluent val images")
        for r in out["recall"]["rows"]:
            print(" ", r)
    out["scale"] = scale((5_000, 10_000, 20_000) if args.quick else SCALE_SIZES)
    print(json.dumps(out["scale"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


__all__ = ["recall", "scale", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
