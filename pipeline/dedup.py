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
* ``phash.index`` + ``index_keys.txt``: the faiss binary index the near search used
  (withdrawn samples never enter it); ``manifest.json`` last.

The stage decodes no pretraining image: the perceptual hashes (pHash of the canonical
pixels after trimming uniform borders, :func:`pipeline.vision.near_index.perceptual_hash`) were
computed by ingest, across its ranks and workers, and are read from the shard indexes
(:func:`pipeline.vision.dedup_codes.hash_shard`). Its single-node work is the near-duplicate search
over the stored codes, which is sub-quadratic (:mod:`pipeline.vision.near_index`). Eval images are
decoded to the same canonical form as ingest's (:func:`pipeline.vision.images.decode_image`) and
hashed by the same function (a process pool over eval work units).
"""

from __future__ import annotations

import logging
import shutil
import time

from pipeline.cli import hydra_entry
from pipeline.config import to_container, validate
from pipeline.config_views import results_config
from pipeline.faiss_import import faiss  # the index the near search used, for reuse (e.g. querying new eval sets)
from pipeline.io.atomic import atomic_path, remove_stale_temps, write_json, write_jsonl, write_text
from pipeline.io.manifest import MANIFEST, canonical_hash, file_sha256, read_manifest, stage_dir, write_manifest
from pipeline.io.readers import plan_units
from pipeline.io.removal import read_withdrawn
from pipeline.io.run_folder import DEDUP, EVAL_CONTAMINATION_FILE, INDEX_KEYS_FILE, INGEST, PHASH_INDEX_FILE, REMOVED_FILE
from pipeline.progress import progress_bar
from pipeline.system import default_workers
from pipeline.vision.dedup_codes import hash_eval_units, hash_shard
from pipeline.vision.duplicates import candidates, removal_counts, remove_eval_contamination, remove_near

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

    # the codes ingest stored in the shard indexes: reading them is I/O only, one process
    hashed = [
        hash_shard(p, dd.hash_size, withdrawn)
        for p in progress_bar(shards, desc="dedup codes", unit="shard", disable=not dd.progress)
    ]
    if (out / "hashes").is_dir():
        shutil.rmtree(out / "hashes")  # the per-shard hash cache of earlier versions (codes now come from ingest)
    t_hash = time.perf_counter() - t0
    cand = candidates(hashed, dd.hash_size)
    cand.remove_duplicate_ids()
    eval_report: dict = {}
    if eval_units:
        ev = hash_eval_units(eval_units, ing, dd.hash_size, workers, dd.progress)
        eval_report = remove_eval_contamination(cand, ev, [u.source for u in eval_units], dd.eval_radius)
    cand.remove_exact()
    index, rows = remove_near(cand, dd.near_radius, dd.near)

    # write: removals, eval report, the near index and its keys, then the manifest
    cand.removed.sort(key=lambda row: row["key"])
    write_jsonl(out / REMOVED_FILE, cand.removed)
    write_json(out / EVAL_CONTAMINATION_FILE, eval_report)
    with atomic_path(out / PHASH_INDEX_FILE) as tmp:
        faiss.write_index_binary(index, str(tmp))
    write_text(out / INDEX_KEYS_FILE, "".join(cand.keys[r] + "\n" for r in rows))
    n = len(cand.keys)
    counts = {
        **removal_counts(cand, eval_report),
        "codes_seconds": round(t_hash, 3),  # reading the stored perceptual hashes (no image is decoded)
        "codes_images_per_second": round(n / t_hash, 1) if t_hash > 0 else None,
        "withdrawn_requested": len(withdrawn),
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
            "index": PHASH_INDEX_FILE,
            "index_keys": INDEX_KEYS_FILE,
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


def main() -> None:
    """Hydra entry point: ``python -m pipeline.dedup [overrides]``."""
    hydra_entry(run_dedup, STAGE)


if __name__ == "__main__":
    main()
