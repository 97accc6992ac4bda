"""Dedup stage: withdrawn ids, eval decontamination, exact and near duplicates.

``python -m pipeline.dedup run_dir=runs/demo [dedup.near_radius=4] [dedup.withdrawn=FILE]``

Reads the ingest shards (never rewrites them) and writes into ``<run_dir>/dedup/``:

* ``removed.jsonl``: one row per removed sample ``{key, id, reason, duplicate_of,
  distance}``; reasons in order of precedence: ``withdrawn`` (ids listed in
  ``dedup.withdrawn``), ``duplicate_id`` (a sample id already used by an earlier sample:
  ingest detects repeated ids only within one unit, so two input tars or two slices of
  an index that hold the same key both reach the shards, and are resolved here),
  ``eval-contamination`` (within ``eval_radius`` of an image of a
  ``data.eval_sets`` entry, or the same pixels), ``exact`` (same canonical-pixel SHA-256
  as an earlier sample), ``near`` (pHash within ``near_radius`` of an earlier kept
  sample). "Earlier" is shard-key order; the first is kept.
* ``eval_contamination.json``: per eval set, how many of its images have a (near)
  duplicate in the pretraining data, and their ids: the transfer stage counts these as
  wrong for a "lower-bound accuracy" (Mahajan et al. 2018, section 3.3 / appendix).
* ``phash.index`` + ``index_keys.txt``: the faiss binary index the near search used
  (withdrawn samples never enter it); ``manifest.json`` last.

The stage decodes no pretraining image: the perceptual hashes (pHash of the canonical
pixels after trimming uniform borders, :func:`pipeline.vision.near_index.perceptual_hash`) were
computed by ingest, across its ranks and workers, and are read from the shard indexes
(:class:`pipeline.io.shards.ShardReader`). Its single-node work is the near-duplicate search
over the stored codes, which is sub-quadratic (:mod:`pipeline.vision.near_index`). Eval images are
decoded to the same canonical form as ingest's (:func:`pipeline.vision.images.decode_image`) and
hashed by the same function (a process pool over eval work units).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
import time
from pathlib import Path

import numpy as np

from pipeline.io.atomic import atomic_path, remove_stale_temps, write_json, write_jsonl, write_text
from pipeline.config import default_workers, results_config, to_container, validate
from pipeline.vision.images import decode_image, set_pixel_cap
from pipeline.io.manifest import canonical_hash, file_sha256, read_manifest, stage_dir, write_manifest
from pipeline.vision.near_index import build_index, keep_first, perceptual_hash, range_pairs
from pipeline.progress import progress_bar
from pipeline.io.raw_sources import RawSample, iter_unit, plan_units
from pipeline.io.removal import REMOVED_FILE, read_withdrawn  # noqa: F401  (read_withdrawn: public here too)
from pipeline.io.quarantine import Rejected
from pipeline.io.shards import ShardReader

log = logging.getLogger(__name__)
STAGE = "dedup"


def hash_shard(shard: Path, hash_size: int, withdrawn: frozenset[str]) -> dict:
    """The stored codes of one shard, skipping withdrawn ids (they are only listed); decodes nothing.

    The perceptual hashes come from the shard index, computed by ingest on the canonical
    pixels (:class:`pipeline.io.shards.ShardReader`; a shard without an index is hashed from
    its stored pixels, with a warning).

    Returns:
        dict with ``keys``, ``ids``, ``sha256`` (lists of str, key order), ``codes``
        (uint8 array (N, hash_size**2 / 8)) and ``withdrawn`` (list of [key, id]).
    """
    with ShardReader(shard) as reader:
        all_codes = reader.codes(hash_size)
        row_of = {k: i for i, k in enumerate(reader.keys)}
        keys, ids, shas, rows, wd = [], [], [], [], []
        for key in sorted(reader.keys):
            meta = reader.metadata(key)
            if meta["id"] in withdrawn:
                wd.append([key, meta["id"]])
                continue
            keys.append(key)
            ids.append(meta["id"])
            shas.append(meta["sha256"])
            rows.append(row_of[key])
    return {"keys": keys, "ids": ids, "sha256": shas, "withdrawn": wd,
            "codes": all_codes[rows] if rows else np.zeros((0, hash_size * hash_size // 8), np.uint8)}


def _hash_eval_unit(args: tuple) -> list[tuple[str, str, np.ndarray]]:
    """(eval id, pixel sha256, pHash) for each decodable image of an eval work unit."""
    unit, ing, hash_size = args
    set_pixel_cap(ing["max_pixels"])
    out = []
    for item in iter_unit(unit, ing["max_file_bytes"]):
        if not isinstance(item, RawSample):
            continue
        try:
            canon = decode_image(item.data, max_pixels=ing["max_pixels"], max_side=ing["max_side"],
                                 min_side=1, rasterize_svg=ing["rasterize_svg"])
        except Rejected:
            continue
        # the same function on the same canonical pixels as ingest's stored codes
        out.append((f"{unit.source}:{item.id}", canon.pixel_sha256, perceptual_hash(canon.image, hash_size)))
    return out


def _pool_map(fn, jobs: list, workers: int, desc: str, progress: bool):
    bar = progress_bar(total=len(jobs), desc=desc, unit="shard", disable=not progress)
    results = []
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            results.append(fn(j))
            bar.update(1)
    else:
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for r in pool.imap(fn, jobs):
                results.append(r)
                bar.update(1)
    bar.close()
    return results


def run_dedup(cfg) -> dict:
    """Run the dedup stage for ``cfg``; return its manifest.

    Raises:
        pipeline.config.ConfigError, FileNotFoundError: bad config, ingest not finished,
            or a missing withdrawn/eval file, before any work.
    """
    validate(cfg)
    t0 = time.perf_counter()
    dd = cfg.dedup
    ingest_man = read_manifest(stage_dir(cfg.run_dir, "ingest"))
    if ingest_man is None:
        raise FileNotFoundError(f"no finished ingest stage in {cfg.run_dir}; run `python -m pipeline.ingest run_dir={cfg.run_dir}` first")
    withdrawn = frozenset(read_withdrawn(dd.withdrawn))
    ing = to_container(cfg.ingest)
    eval_units, eval_fp = plan_units(cfg.data.eval_sets, "png", 2000) if cfg.data.eval_sets else ([], {})
    out = stage_dir(cfg.run_dir, STAGE)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    remove_stale_temps(out)
    workers = default_workers(dd.workers)

    shards = [stage_dir(cfg.run_dir, "ingest") / s["path"] for s in ingest_man["outputs"]["shards"]]
    sha_of = {s["path"]: s["sha256"] for s in ingest_man["outputs"]["shards"]}
    wd_tag = canonical_hash(sorted(withdrawn))
    # the codes ingest stored in the shard indexes: reading them is I/O only, one process
    hashed = [hash_shard(p, dd.hash_size, withdrawn) for p in progress_bar(shards, desc="dedup codes", unit="shard",
                                                                            disable=not dd.progress)]
    if (out / "hashes").is_dir():
        shutil.rmtree(out / "hashes")  # the per-shard hash cache of earlier versions (codes now come from ingest)
    t_hash = time.perf_counter() - t0

    keys = [k for h in hashed for k in h["keys"]]
    ids = [i for h in hashed for i in h["ids"]]
    shas = [s for h in hashed for s in h["sha256"]]
    nbytes = dd.hash_size**2 // 8
    codes = np.concatenate([h["codes"] for h in hashed]) if hashed else np.zeros((0, nbytes), np.uint8)
    n = len(keys)
    removed: list[dict] = [{"key": k, "id": i, "reason": "withdrawn", "duplicate_of": None, "distance": None}
                           for h in hashed for k, i in h["withdrawn"]]
    alive = np.ones(n, dtype=bool)

    # the same id in two units (e.g. one key in two input tars): keep the first by key
    first_with_id: dict[str, int] = {}
    for r in range(n):
        f = first_with_id.setdefault(ids[r], r)
        if f != r:
            alive[r] = False
            removed.append({"key": keys[r], "id": ids[r], "reason": "duplicate_id", "duplicate_of": keys[f],
                            "distance": None})

    # eval decontamination: any pretraining image within eval_radius of an eval image, or same pixels
    eval_report: dict = {}
    if eval_units:
        ev = [r for rows in _pool_map(_hash_eval_unit, [(u, ing, dd.hash_size) for u in eval_units], workers,
                                      "dedup eval", dd.progress) for r in rows]
        ev_ids = [e[0] for e in ev]
        ev_codes = np.stack([e[2] for e in ev]) if ev else np.zeros((0, nbytes), np.uint8)
        qi, di, dist = range_pairs(build_index(codes, dd.eval_radius), ev_codes, dd.eval_radius)
        sha_to_rows: dict[str, list[int]] = {}
        for r, s in enumerate(shas):
            sha_to_rows.setdefault(s, []).append(r)
        extra = [(q, r) for q, e in enumerate(ev) for r in sha_to_rows.get(e[1], [])]
        if extra:
            qi = np.concatenate([qi, [q for q, _ in extra]]).astype(np.int64)
            di = np.concatenate([di, [r for _, r in extra]]).astype(np.int64)
            dist = np.concatenate([dist, np.zeros(len(extra), np.int64)])
        best: dict[int, tuple[int, int]] = {}
        for q, r, d in zip(qi.tolist(), di.tolist(), dist.tolist()):
            if r not in best or (d, q) < best[r]:
                best[r] = (d, q)
        for r in sorted(best):
            if not alive[r]:
                continue
            d, q = best[r]
            alive[r] = False
            removed.append({"key": keys[r], "id": ids[r], "reason": "eval-contamination",
                            "duplicate_of": ev_ids[q], "distance": d})
        contaminated = sorted({ev_ids[q] for q in set(qi.tolist())})
        for u in eval_units:
            eval_report.setdefault(u.source, {"images": 0, "contaminated": 0, "ids": []})
        for eid in ev_ids:
            eval_report[eid.split(":", 1)[0]]["images"] += 1
        for eid in contaminated:
            rep = eval_report[eid.split(":", 1)[0]]
            rep["contaminated"] += 1
            rep["ids"].append(eid)
        for rep in eval_report.values():
            rep["contaminated_fraction"] = round(rep["contaminated"] / rep["images"], 6) if rep["images"] else 0.0

    # exact duplicates: same canonical pixels as an earlier surviving sample
    first_of: dict[str, int] = {}
    for r in range(n):
        if not alive[r]:
            continue
        f = first_of.setdefault(shas[r], r)
        if f != r:
            alive[r] = False
            removed.append({"key": keys[r], "id": ids[r], "reason": "exact", "duplicate_of": keys[f], "distance": 0})

    # near duplicates among the survivors
    rows = np.flatnonzero(alive)
    index = build_index(codes[rows], dd.near_radius)
    n_near = 0
    if dd.near and len(rows):
        qi, di, dist = range_pairs(index, codes[rows], dd.near_radius)
        keep, dup_of, dup_dist = keep_first(len(rows), qi, di, dist)
        for j in np.flatnonzero(~keep):
            r, f = rows[j], rows[dup_of[j]]
            alive[r] = False
            removed.append({"key": keys[r], "id": ids[r], "reason": "near", "duplicate_of": keys[f],
                            "distance": int(dup_dist[j])})
            n_near += 1

    removed.sort(key=lambda row: row["key"])
    write_jsonl(out / REMOVED_FILE, removed)
    write_json(out / "eval_contamination.json", eval_report)
    import faiss  # the index the near search used, for reuse (e.g. querying new eval sets)

    with atomic_path(out / "phash.index") as tmp:
        faiss.write_index_binary(index, str(tmp))
    write_text(out / "index_keys.txt", "".join(keys[r] + "\n" for r in rows))

    by_reason = {r: sum(1 for x in removed if x["reason"] == r)
                 for r in ("withdrawn", "duplicate_id", "eval-contamination", "exact", "near")}
    counts = {
        "samples": n + by_reason["withdrawn"], "removed": len(removed), "kept": int(alive.sum()),
        **{k.replace("-", "_"): v for k, v in by_reason.items()},
        "eval_images": sum(r["images"] for r in eval_report.values()),
        "eval_contaminated": sum(r["contaminated"] for r in eval_report.values()),
        "codes_seconds": round(t_hash, 3),  # reading the stored perceptual hashes (no image is decoded)
        "codes_images_per_second": round(n / t_hash, 1) if t_hash > 0 else None,
        "withdrawn_requested": len(withdrawn),
    }
    config = {**results_config(cfg, "dedup"),
              "eval_sets": to_container(cfg.data.eval_sets)}
    inputs = {"ingest": ingest_man["config_hash"], "ingest_shards": canonical_hash(list(sha_of.values())),
              "eval_sets": eval_fp, "withdrawn": wd_tag,
              "withdrawn_file_sha256": file_sha256(dd.withdrawn) if dd.withdrawn else None}
    man = write_manifest(out, stage=STAGE, config=config, inputs=inputs, counts=counts,
                         seconds=time.perf_counter() - t0,
                         outputs={"removed": REMOVED_FILE, "eval_contamination": "eval_contamination.json",
                                  "index": "phash.index", "index_keys": "index_keys.txt"})
    log.info("dedup: %d samples, removed %d (%s), kept %d; eval images contaminated %d of %d",
             counts["samples"], counts["removed"], by_reason, counts["kept"], counts["eval_contaminated"], counts["eval_images"])
    return man


def main() -> None:
    """Hydra entry point: ``python -m pipeline.dedup [overrides]``."""
    from pipeline.cli import hydra_entry

    hydra_entry(run_dedup, STAGE)


if __name__ == "__main__":
    main()
