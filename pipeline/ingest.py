"""Ingest stage: raw input -> canonical WebDataset shards, quarantine, manifest.

``python -m pipeline.ingest run_dir=runs/demo [data=demo] [ingest.shard_size=1000] ...``

Writes into ``<run_dir>/ingest/``:

* ``shards/NNNNNN.tar``: canonical samples (see :mod:`pipeline.io.shards`), one shard per
  work unit (a slice of an index or listing, or one input tar);
* ``parts/NNNNNN.json``: what each unit wrote and rejected (the resume record);
* ``quarantine.jsonl``: one row per rejected sample (``id``, ``source``, ``origin``,
  ``reason``, ``detail``, ``unit``), read with :func:`pipeline.io.quarantine.load_quarantine`;
* ``plan.json`` (units and config hash) first, ``manifest.json`` last.

Hashtags are normalized and capped per image (:mod:`pipeline.text.hashtags`): at most
``ingest.max_hashtags`` tags of at most ``ingest.max_hashtag_chars`` characters; the tags
dropped are counted in ``counts.hashtags_dropped`` of the manifest (``too_long``,
``over_count``, ``images``), and a sample left with no tag is quarantined (``no_hashtags``).

Every unit is independent and atomic (:mod:`pipeline.ingestion.worker`): its shard and part
file are renamed into place when complete, so a killed run resumes by redoing only the units
without a part file, and the result is byte-identical to an uninterrupted run. Units are split
across torchrun/SLURM ranks round-robin and, within a rank, across a process pool; rank 0
merges the parts into ``quarantine.jsonl`` and ``manifest.json`` (:mod:`pipeline.ingestion.merge`).
With ``data.engine=ray`` one driver runs every unit as a Ray task instead (:mod:`pipeline.executor`: a local
Ray or the cluster at ``ray.address``; a task whose worker dies is run again), then merges; the same outputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

from pipeline.cli import hydra_entry
from pipeline.config import validate
from pipeline.config_views import results_config
from pipeline.executor import make_executor
from pipeline.ingestion.merge import merge_parts, prepare_folder
from pipeline.ingestion.worker import ingest_settings, part_done, run_units, run_units_on
from pipeline.io.manifest import canonical_hash, stage_dir, write_manifest
from pipeline.io.readers import plan_units
from pipeline.io.removal import read_withdrawn
from pipeline.io.run_folder import INGEST
from pipeline.progress import progress_bar
from pipeline.system import Partition, assign, current_partition, default_workers

log = logging.getLogger(__name__)
STAGE = INGEST


def run_ingest(cfg) -> dict | None:
    """Run the ingest stage for ``cfg`` (a :class:`pipeline.config.PipelineConfig` node).

    Returns:
        The manifest (rank 0), or None on other ranks.

    Raises:
        pipeline.errors.ConfigError, FileNotFoundError: bad config or missing inputs,
            before any work.
        TimeoutError: rank 0 waited ``ingest.merge_timeout_s`` for other ranks' parts.
    """
    validate(cfg)
    t0 = time.perf_counter()
    ing = cfg.ingest
    out_dir = stage_dir(cfg.run_dir, STAGE)
    part = current_partition()
    if cfg.data.engine == "ray":  # Ray runs every unit from one driver: no rank arithmetic, no wait for other ranks
        if not part.is_main:
            return None
        part = Partition(0, 1)
    # plan: the units, and a hash of what they depend on
    units, fingerprints = plan_units(cfg.data.sources, str(ing.encoding), ing.shard_size)
    withdrawn = frozenset(read_withdrawn(ing.withdrawn, "ingest.withdrawn"))
    config = results_config(cfg, "data", "ingest")
    # the withdrawn list is not part of the plan: changing it redoes only the units it touches (part_done)
    plan_config = {"data": config["data"], "ingest": {k: v for k, v in config["ingest"].items() if k != "withdrawn"}}
    plan_hash = canonical_hash({"config": plan_config, "inputs": fingerprints, "units": [asdict(u) for u in units]})
    plan = {"plan_hash": plan_hash, "units": len(units), "inputs": fingerprints}
    prepare_folder(out_dir, plan, part, ing.merge_timeout_s)
    settings = ingest_settings(ing, plan_hash, withdrawn)

    # this rank's units that are not finished yet
    mine = assign(units, part)
    todo = [u for u in mine if part_done(out_dir, u, plan_hash, withdrawn) is None]
    workers = min(default_workers(ing.workers), max(1, len(todo)))
    log.info(
        "ingest: %d units in plan, %d for rank %d/%d, %d to do, %d workers",
        len(units),
        len(mine),
        part.rank,
        part.world,
        len(todo),
        workers,
    )
    bar = progress_bar(total=len(todo), unit="shard", desc=f"ingest[rank {part.rank}]", disable=not ing.progress)
    t_work = time.perf_counter()
    if cfg.data.engine == "ray":
        with make_executor("ray", default_workers(ing.workers), cfg.ray.address, cfg.ray.max_retries) as executor:
            n_done = run_units_on(executor, todo, settings, out_dir, bar)
    else:
        n_done = run_units(todo, settings, out_dir, workers, bar)
    work_seconds = time.perf_counter() - t_work
    if not part.is_main:
        return None

    # write (rank 0): quarantine.jsonl from every rank's parts, then the manifest
    counts, outputs = merge_parts(out_dir, units, plan_hash, withdrawn, ing.merge_timeout_s, n_done, work_seconds)
    manifest = write_manifest(
        out_dir, stage=STAGE, config=config, inputs=fingerprints, counts=counts, seconds=time.perf_counter() - t0, outputs=outputs
    )
    log.info(
        "ingest: input %d = written %d + quarantined %d (%s)",
        counts["input"],
        counts["written"],
        counts["quarantined"],
        ", ".join(f"{k} {v}" for k, v in counts["by_reason"].items()) or "no rejections",
    )
    hd = counts["hashtags_dropped"]
    if hd["images"]:
        log.info(
            "ingest: hashtag caps dropped %d tag(s) longer than %d characters and %d beyond %d per image, in %d written image(s)",
            hd["too_long"],
            ing.max_hashtag_chars,
            hd["over_count"],
            ing.max_hashtags,
            hd["images"],
        )
    return manifest


def main() -> None:
    """Hydra entry point: ``python -m pipeline.ingest [overrides]``."""
    hydra_entry(run_ingest, STAGE)


if __name__ == "__main__":
    main()
