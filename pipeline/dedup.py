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
  sample). "Earlier" is shard-key order; the first is kept (:mod:`pipeline.vision.duplicates`).
* ``eval_contamination.json``: per eval set, how many of its images have a (near)
  duplicate in the pretraining data, and their ids: the transfer stage counts these as
  wrong for a "lower-bound accuracy" (Mahajan et al. 2018, section 3.3 / appendix).
* ``phash.index`` + ``index_keys.txt`` (unless ``dedup.save_index=false``): a faiss binary index of the codes
  the near search compared (withdrawn samples never enter it), for querying new eval sets later;
  ``manifest.json`` last (its counts give the near search's partitions and pairs, and each part's seconds).

The stage decodes no pretraining image: the perceptual hashes (pHash of the canonical
pixels after trimming uniform borders, :func:`pipeline.vision.near_index.perceptual_hash`) were
computed by ingest and are read from the shard indexes. Its work runs on ``data.engine``
(:mod:`pipeline.executor`: this process, a pool of ``dedup.workers``, or Ray tasks), the same outputs on each:

1. a scan per shard (:func:`pipeline.vision.shard_dedup.scan_shard`): codes, 128-bit digests of the pixels and of
   the id, withdrawn samples, and the shard's pairs with the eval images (decoded and hashed here as ingest does,
   one task per eval work unit);
2. the decisions in the driver, numpy only (:class:`pipeline.vision.duplicates.Decisions`): duplicate ids and
   exact duplicates by grouping on the digests, eval contamination from the pairs, near duplicates by the greedy
   over the distinct codes, whose pairs come from the search by band, cut into partitions of about
   ``dedup.partition_size`` codes run as tasks (:func:`pipeline.vision.shard_dedup.near_pairs`);
3. the keys and ids of the rows the outputs name, read back shard by shard and written as they come.

The driver holds numpy arrays only: per sample a 64-bit code, two 128-bit digests and the decision (57 bytes),
the pairs among distinct codes, the keys of the samples a removed one points to, and (``dedup.save_index``) the
saved faiss index; a task holds one shard or one partition. docs/stages/dedup.md gives the measured scale.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cli import hydra_entry
from pipeline.config import to_container, validate
from pipeline.config_views import results_config
from pipeline.executor import make_executor
from pipeline.faiss_import import faiss  # the index the near search used, for reuse (e.g. querying new eval sets)
from pipeline.io.atomic import atomic_path, remove_stale_temps, write_json
from pipeline.io.manifest import MANIFEST, canonical_hash, file_sha256, read_manifest, stage_dir, write_manifest
from pipeline.io.readers import plan_units
from pipeline.io.removal import read_withdrawn
from pipeline.io.run_folder import DEDUP, EVAL_CONTAMINATION_FILE, INDEX_KEYS_FILE, INGEST, PHASH_INDEX_FILE, REMOVED_FILE
from pipeline.system import default_workers
from pipeline.vision.dedup_codes import hash_eval_units
from pipeline.vision.duplicates import REASONS, Decisions
from pipeline.vision.duplicates import eval_report as report_eval
from pipeline.vision.near_index import build_index
from pipeline.vision.shard_dedup import ScanShared, near_pairs, partition_items, scan_shard, shard_rows

log = logging.getLogger(__name__)
STAGE = DEDUP


def run_dedup(cfg) -> dict:
    """Run the dedup stage for ``cfg``; return its manifest.

    Raises:
        pipeline.errors.ConfigError, FileNotFoundError: bad config, ingest not finished,
            or a missing withdrawn/eval file, before any work.
    """
    validate(cfg)
    t0 = time.perf_counter()
    dd = cfg.dedup
    # plan: the ingest shards, the withdrawn ids, the eval units
    ingest_man = read_manifest(stage_dir(cfg.run_dir, INGEST))
    if ingest_man is None:
        raise FileNotFoundError(
            f"no finished ingest stage in {cfg.run_dir}; run `python -m pipeline.ingest run_dir={cfg.run_dir}` first"
        )
    withdrawn = frozenset(read_withdrawn(dd.withdrawn))
    ing = to_container(cfg.ingest)
    eval_units, eval_fp = plan_units(cfg.data.eval_sets, "png", 2000) if cfg.data.eval_sets else ([], {})
    out = stage_dir(cfg.run_dir, STAGE)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    remove_stale_temps(out)
    workers = default_workers(dd.workers)
    shards = [stage_dir(cfg.run_dir, INGEST) / s["path"] for s in ingest_man["outputs"]["shards"]]
    sha_of = {s["path"]: s["sha256"] for s in ingest_man["outputs"]["shards"]}

    if (out / "hashes").is_dir():
        shutil.rmtree(out / "hashes")  # the per-shard hash cache of earlier versions (codes now come from ingest)
    with make_executor(cfg.data.engine, workers, cfg.ray.address, cfg.ray.max_retries) as executor:
        # the eval images, decoded and hashed as ingest does, one task per eval unit
        ev = hash_eval_units(executor, eval_units, ing, dd.hash_size, dd.progress)
        ev_ids = [e[0] for e in ev]
        shared = ScanShared(
            hash_size=dd.hash_size,
            withdrawn=withdrawn,
            eval_codes=np.stack([e[2] for e in ev]) if ev else np.zeros((0, dd.hash_size**2 // 8), np.uint8),
            eval_sha=tuple(e[1] for e in ev),
            eval_radius=dd.eval_radius,
        )
        phases: dict[str, float] = {"eval_hashing": time.perf_counter() - t0}  # seconds of each part of the stage
        # pass 1 on the data engine: each shard's codes and digests, withdrawn samples, pairs with the eval images
        t_scan = time.perf_counter()
        scan = _scan(executor, shards, shared, dd.progress)
        t_hash = phases["scan"] = time.perf_counter() - t_scan
        # the decisions, in precedence order, each over the survivors of the ones before (numpy, in the driver)
        dec = Decisions(scan.n)
        dec.remove_duplicate_ids(scan.idh)
        dec.remove_eval_contamination(scan.eval_rows, scan.eval_q, scan.eval_dist)
        dec.remove_exact(scan.sha)
        phases["group_digests"] = time.perf_counter() - t_scan - t_hash
        index_rows = np.flatnonzero(dec.alive)  # the saved index holds the survivors before the near search
        search: dict = {"partitions": 0, "largest_partition": 0, "distinct_codes": 0, "pairs": 0}
        if dd.near:
            t_near = time.perf_counter()
            dec.remove_near(scan.codes, lambda codes: _near_pairs(executor, codes, dd, search, phases))
            phases["near_greedy"] = time.perf_counter() - t_near - phases["near_partition"] - phases["near_search"]
        del scan.idh, scan.sha
        # the output pass: keys and ids of the removed samples and of the saved index, shard by shard
        eval_report = report_eval(ev_ids, [u.source for u in eval_units], dec.contaminated)
        t_out = time.perf_counter()
        if dd.save_index:  # built after the search: the two are never in memory together
            with atomic_path(out / PHASH_INDEX_FILE) as tmp:
                faiss.write_index_binary(build_index(scan.codes[index_rows], dd.near_radius), str(tmp))
            phases["saved_index"] = time.perf_counter() - t_out
        else:
            index_rows = index_rows[:0]
            for name in (PHASH_INDEX_FILE, INDEX_KEYS_FILE):
                (out / name).unlink(missing_ok=True)  # an earlier run's: not this run's survivors
        t_rows = time.perf_counter()
        _write_rows(executor, out, shards, scan, dec, index_rows, ev_ids, withdrawn, dd.progress, dd.save_index)
        phases["rows"] = time.perf_counter() - t_rows
        engine = executor.describe()
    write_json(out / EVAL_CONTAMINATION_FILE, eval_report)
    per = dec.counts()
    n = scan.n
    n_withdrawn = sum(len(w) for w in scan.withdrawn)
    counts = {
        "samples": n + n_withdrawn,
        "removed": int((~dec.alive).sum()) + n_withdrawn,
        "kept": int(dec.alive.sum()),
        "withdrawn": n_withdrawn,
        **per,
        "eval_images": sum(r["images"] for r in eval_report.values()),
        "eval_contaminated": sum(r["contaminated"] for r in eval_report.values()),
        "codes_seconds": round(t_hash, 3),  # reading the stored perceptual hashes (no image is decoded)
        "codes_images_per_second": round(n / t_hash, 1) if t_hash > 0 else None,
        "withdrawn_requested": len(withdrawn),
        "near_search": search,
        "phase_seconds": {k: round(v, 3) for k, v in phases.items()},
        "engine": engine,
    }
    config = {**results_config(cfg, "dedup"), "eval_sets": to_container(cfg.data.eval_sets)}
    inputs = {
        "ingest": ingest_man["config_hash"],
        "ingest_shards": canonical_hash(list(sha_of.values())),
        "eval_sets": eval_fp,
        "withdrawn": canonical_hash(sorted(withdrawn)),
        "withdrawn_file_sha256": file_sha256(dd.withdrawn) if dd.withdrawn else None,
    }
    man = write_manifest(
        out,
        stage=STAGE,
        config=config,
        inputs=inputs,
        counts=counts,
        seconds=time.perf_counter() - t0,
        outputs={
            "removed": REMOVED_FILE,
            "eval_contamination": EVAL_CONTAMINATION_FILE,
            "index": PHASH_INDEX_FILE if dd.save_index else None,
            "index_keys": INDEX_KEYS_FILE if dd.save_index else None,
        },
    )
    log.info(
        "dedup: %d samples, removed %d (withdrawn %d, duplicate_id %d, eval-contamination %d, exact %d, "
        "near %d), kept %d; eval images contaminated %d of %d",
        counts["samples"],
        counts["removed"],
        counts["withdrawn"],
        counts["duplicate_id"],
        counts["eval_contamination"],
        counts["exact"],
        counts["near"],
        counts["kept"],
        counts["eval_contaminated"],
        counts["eval_images"],
    )
    return man


@dataclass
class _Scan:
    """The corpus's candidates in the driver: numpy only (:class:`pipeline.vision.shard_dedup.ShardScan`, joined)."""

    n: int
    offsets: np.ndarray  # int64 (shards + 1): the first row of each shard
    codes: np.ndarray
    sha: np.ndarray
    idh: np.ndarray
    eval_rows: np.ndarray
    eval_q: np.ndarray
    eval_dist: np.ndarray
    withdrawn: list  # per shard, its [key, id] withdrawn rows
    ordered: bool  # shards' key ranges follow each other (so removed.jsonl can be written shard by shard)


def _scan(executor, shards: list[Path], shared: ScanShared, progress: bool) -> _Scan:
    parts = executor.map(scan_shard, list(enumerate(map(str, shards))), shared, desc="dedup scan", progress=progress)
    sizes = np.array([p.n for p in parts], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    nb = shared.hash_size**2 // 8
    cat = lambda name, shape: np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(shape)  # noqa: E731
    ranges = [(p.first_key, p.last_key) for p in parts if p.first_key]
    return _Scan(
        n=int(offsets[-1]),
        offsets=offsets,
        codes=cat("codes", (0, nb)).astype(np.uint8),
        sha=cat("sha", (0, 16)).astype(np.uint8),
        idh=cat("idh", (0, 16)).astype(np.uint8),
        eval_rows=np.concatenate([p.eval_rows + offsets[i] for i, p in enumerate(parts)]) if parts else np.zeros(0, np.int64),
        eval_q=cat("eval_q", (0,)).astype(np.int64),
        eval_dist=cat("eval_dist", (0,)).astype(np.int64),
        withdrawn=[p.withdrawn for p in parts],
        ordered=all(a[1] < b[0] for a, b in zip(ranges, ranges[1:])),
    )


def _near_pairs(executor, codes: np.ndarray, dd, search: dict, phases: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of distinct codes within ``dd.near_radius``, the search split into partitions of about
    ``dd.partition_size`` codes (:func:`pipeline.vision.shard_dedup.partition_items`) run on the executor."""
    nb = dd.near_radius + 1
    partitions = max(1, -(-len(codes) * nb // dd.partition_size)) if len(codes) * nb > dd.partition_size else 1
    t0 = time.perf_counter()
    items = partition_items(codes, dd.near_radius, partitions)
    phases["near_partition"] = time.perf_counter() - t0
    search.update(partitions=partitions, largest_partition=max((len(i[1]) for i in items), default=0), distinct_codes=len(codes))
    found = executor.map(near_pairs, items, (dd.near_radius, partitions), desc="dedup near", progress=dd.progress)
    # code ids as int32 and distances as uint8 below 2^31 distinct codes: 9 bytes a pair instead of 24
    small = len(codes) < 2**31
    dtypes = (np.int32, np.int32, np.uint8) if small else (np.int64, np.int64, np.int64)
    qi, di, dist = (np.concatenate([f[k].astype(dt) for f in found]) if found else np.zeros(0, dt) for k, dt in enumerate(dtypes))
    del found
    search["pairs"] = len(qi)
    phases["near_search"] = time.perf_counter() - t0 - phases["near_partition"]
    return qi, di, dist


def _write_rows(
    executor, out: Path, shards, scan: _Scan, dec: Decisions, index_rows, ev_ids, withdrawn, progress, index_keys: bool
) -> None:
    """``removed.jsonl`` (sorted by key) and ``index_keys.txt``, from one pass that reads back the keys and ids of
    the rows they name, shard by shard (:func:`pipeline.vision.shard_dedup.shard_rows`). The driver loops over the
    removed samples only and keeps the keys of the samples a removed one points to (always an earlier sample)."""
    removed = np.flatnonzero(~dec.alive)
    is_eval = dec.reason == REASONS.index("eval-contamination") + 1
    targets = np.unique(dec.duplicate_of[removed[~is_eval[removed]]])
    named = np.union1d(removed, targets)

    def per_shard(rows: np.ndarray) -> list[np.ndarray]:
        b = np.searchsorted(rows, scan.offsets)
        return [rows[b[i] : b[i + 1]] - scan.offsets[i] for i in range(len(shards))]

    tasks = [(i, str(p), ix, nm) for i, (p, ix, nm) in enumerate(zip(shards, per_shard(index_rows), per_shard(named)))]
    key_of: dict[int, str] = {}
    is_target = np.zeros(scan.n, bool)
    is_target[targets] = True
    rows_out: list[dict] = []
    with contextlib.ExitStack() as stack:
        keys_fh = None
        if index_keys:
            keys_fh = stack.enter_context(open(stack.enter_context(atomic_path(out / INDEX_KEYS_FILE)), "w", encoding="utf-8"))
        rm_fh = stack.enter_context(open(stack.enter_context(atomic_path(out / REMOVED_FILE)), "w", encoding="utf-8"))
        got = executor.imap(shard_rows, tasks, withdrawn, desc="dedup rows", progress=progress)
        for (i, _, _, nm), (text, keys, ids) in zip(tasks, got):
            if keys_fh is not None:
                keys_fh.write(text)
            g = nm + scan.offsets[i]
            reason, dup_of, dist = dec.reason[g].tolist(), dec.duplicate_of[g].tolist(), dec.distance[g].tolist()
            shard_out = [
                {"key": k, "id": d, "reason": "withdrawn", "duplicate_of": None, "distance": None} for k, d in scan.withdrawn[i]
            ]
            for r, k, d, why, dup, dd in zip(g.tolist(), keys, ids, reason, dup_of, dist):
                if is_target[r]:
                    key_of[r] = k
                if why:
                    name = REASONS[why - 1]
                    shard_out.append(
                        {
                            "key": k,
                            "id": d,
                            "reason": name,
                            "duplicate_of": ev_ids[dup] if name == "eval-contamination" else key_of[dup],
                            "distance": None if name == "duplicate_id" else dd,
                        }
                    )
            shard_out.sort(key=lambda row: row["key"])
            if scan.ordered:
                rm_fh.writelines(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in shard_out)
            else:
                rows_out.extend(shard_out)  # shards out of key order: sorted at the end (holds the rows)
        if not scan.ordered:
            rows_out.sort(key=lambda row: row["key"])
            rm_fh.writelines(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows_out)


def main() -> None:
    """Hydra entry point: ``python -m pipeline.dedup [overrides]``."""
    hydra_entry(run_dedup, STAGE)


if __name__ == "__main__":
    main()
