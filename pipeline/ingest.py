"""Ingest stage: raw input -> canonical WebDataset shards, quarantine, manifest.

``python -m pipeline.ingest run_dir=runs/demo [data=demo] [ingest.shard_size=1000] ...``

Writes into ``<run_dir>/ingest/``:

* ``shards/NNNNNN.tar``: canonical samples (see :mod:`pipeline.io.shards`), one shard per
  work unit (a slice of an index or listing, or one input tar);
* ``parts/NNNNNN.json``: what each unit wrote and rejected (the resume record);
* ``quarantine.jsonl``: one row per rejected sample (``id``, ``source``, ``origin``,
  ``reason``, ``detail``, ``unit``);
* ``plan.json`` (units and config hash) first, ``manifest.json`` last.

Hashtags are normalized and capped per image (:mod:`pipeline.text.hashtags`): at most
``ingest.max_hashtags`` tags of at most ``ingest.max_hashtag_chars`` characters; the tags
dropped are counted in ``counts.hashtags_dropped`` of the manifest (``too_long``,
``over_count``, ``images``), and a sample left with no tag is quarantined (``no_hashtags``).

Every unit is independent and atomic: its shard and part file are renamed into place
when complete, so a killed run resumes by redoing only the units without a part file,
and the result is byte-identical to an uninterrupted run. Units are split across
torchrun/SLURM ranks round-robin and, within a rank, across a process pool; rank 0
merges the parts into ``quarantine.jsonl`` and ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.io.atomic import read_jsonl, remove_stale_temps, write_json, write_jsonl
from pipeline.config import default_workers, results_config, validate
from pipeline.text.hashtags import MAX_HASHTAG_CHARS, MAX_HASHTAGS, cap_hashtags, normalize_hashtags
from pipeline.vision.images import ENCODINGS, decode_image, encode_image, set_pixel_cap
from pipeline.io.manifest import canonical_hash, file_sha256, stage_dir, write_manifest
from pipeline.train.partition import Partition, assign, current_partition
from pipeline.progress import progress_bar
from pipeline.io.quarantine import Rejected
from pipeline.io.raw_sources import RawSample, Rejection, WorkUnit, iter_unit, plan_units
from pipeline.io.removal import read_withdrawn
from pipeline.vision.near_index import HASH_SIZES, perceptual_hashes
from pipeline.io.shards import AtomicShardWriter, index_path, shard_key

log = logging.getLogger(__name__)
STAGE = "ingest"
# counts.hashtags_dropped of the manifest (and of each part): tags dropped by ingest.max_hashtag_chars
# (too_long) and ingest.max_hashtags (over_count) in written samples, and how many written samples lost any
DROP_KEYS = ("too_long", "over_count", "images")


@dataclass(frozen=True)
class IngestSettings:
    """The per-sample processing settings a worker needs (picklable)."""

    max_side: int
    min_side: int
    max_pixels: int
    max_file_bytes: int
    jpeg_quality: int
    webp_method: int
    rasterize_svg: bool
    plan_hash: str
    withdrawn: frozenset = frozenset()  # source:id never to write (ingest.withdrawn)
    max_hashtags: int = MAX_HASHTAGS  # ingest.max_hashtags
    max_hashtag_chars: int = MAX_HASHTAG_CHARS  # ingest.max_hashtag_chars


def _printable(s: str) -> str:
    """``s`` with lone surrogates (undecodable bytes, ``\\ud800`` escapes) backslash-escaped, so it can be
    written as UTF-8."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _not_utf8(*values) -> bool:
    """True if a string in ``values`` (nested in lists/dicts too) holds a lone surrogate: valid JSON
    (``"\\ud800"``) or a surrogate-escaped file name, but not encodable as UTF-8."""
    try:
        json.dumps(values, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _quarantine_row(unit: WorkUnit, sid: str, origin: str, reason: str, detail: str) -> dict:
    return {"id": f"{unit.source}:{_printable(sid)}", "source": unit.source, "origin": _printable(origin),
            "reason": reason, "detail": _printable(detail), "unit": unit.number}


def process_unit(unit: WorkUnit, settings: IngestSettings, out_dir: Path) -> dict:
    """Ingest one unit: write ``shards/<unit>.tar`` and ``parts/<unit>.json``; return the part.

    Raises:
        OSError: only for output-side failures (disk full, read-only folder); bad
            input is quarantined, never raised.
    """
    t0 = time.perf_counter()
    set_pixel_cap(settings.max_pixels)
    shard_rel = f"shards/{unit.number:06d}.tar"
    ext = ENCODINGS[unit.encoding]
    rows: list[dict] = []
    ids: list[list[str]] = []
    seen: set[str] = set()
    n_in = 0
    dropped = Counter()  # hashtags dropped by the caps: too_long, over_count (tags), images (with any drop)
    writer = AtomicShardWriter(out_dir / shard_rel)
    try:
        for item in iter_unit(unit, settings.max_file_bytes):
            n_in += 1
            if isinstance(item, Rejection):
                rows.append(_quarantine_row(unit, item.id, item.origin, item.reason, item.detail))
                continue
            assert isinstance(item, RawSample)
            try:
                if f"{unit.source}:{item.id}" in settings.withdrawn:
                    raise Rejected("withdrawn", "listed in ingest.withdrawn")
                if _not_utf8(item.id, item.tags, item.caption, item.meta):
                    raise Rejected("invalid_utf8", "lone surrogate (undecodable bytes or a \\uD800-\\uDFFF escape) "
                                   "in id, tags, caption or metadata")
                if item.id in seen:
                    raise Rejected("duplicate_id", "id already seen in this unit")
                seen.add(item.id)
                normalized = normalize_hashtags(item.tags)
                if not normalized:
                    raise Rejected("no_hashtags", f"raw tags: {item.tags!r}"[:200])
                hashtags, too_long, over = cap_hashtags(normalized, settings.max_hashtags, settings.max_hashtag_chars)
                if not hashtags:
                    raise Rejected("no_hashtags", f"all {too_long} tag(s) longer than ingest.max_hashtag_chars="
                                   f"{settings.max_hashtag_chars} characters (dropped, not cut); first: "
                                   f"{normalized[0][:40]!r}...")
                if too_long or over:
                    dropped.update(too_long=too_long, over_count=over, images=1)
                canon = decode_image(item.data, max_pixels=settings.max_pixels, max_side=settings.max_side,
                                     min_side=settings.min_side, rasterize_svg=settings.rasterize_svg)
                encoded = encode_image(canon.image, unit.encoding, settings.jpeg_quality, settings.webp_method)
            except Rejected as r:
                rows.append(_quarantine_row(unit, item.id, item.origin, r.reason, r.detail))
                continue
            key = shard_key(unit.number, writer.count)
            sid = f"{unit.source}:{item.id}"
            meta = {
                "id": sid, "key": key, "source": unit.source, "hashtags": hashtags,
                "width": canon.image.width, "height": canon.image.height,
                "orig_width": canon.orig_width, "orig_height": canon.orig_height,
                "sha256": canon.pixel_sha256, "source_format": canon.source_format,
                "frames": canon.frames, "meta": item.meta,
            }
            if item.caption:
                meta["caption"] = item.caption
            # the perceptual hashes of the canonical pixels, once, while we hold them (dedup decodes nothing)
            codes = perceptual_hashes(canon.image, HASH_SIZES)
            writer.write({"__key__": key, ext: encoded,
                          "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")},
                         meta=meta, phash=codes)
            ids.append([key, sid])
        written = writer.count
        if written:
            writer.commit()
        else:
            writer.abort()
            (out_dir / shard_rel).unlink(missing_ok=True)  # a redone unit (ingest.withdrawn) may have had one
            index_path(out_dir / shard_rel).unlink(missing_ok=True)
    except BaseException as exc:
        writer.abort(exc)
        raise
    shard_path = out_dir / shard_rel
    part = {
        "unit": unit.number, "source": unit.source, "plan": settings.plan_hash,
        "shard": shard_rel if written else None,
        "shard_bytes": shard_path.stat().st_size if written else 0,
        "shard_sha256": file_sha256(shard_path) if written else None,
        "input": n_in, "written": written, "quarantined": len(rows),
        "reasons": dict(sorted(Counter(r["reason"] for r in rows).items())),
        "hashtags_dropped": {k: dropped[k] for k in DROP_KEYS},
        "quarantine": rows, "ids": ids, "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(out_dir / "parts" / f"{unit.number:06d}.json", part)
    return part


def _part_done(out_dir: Path, unit: WorkUnit, plan_hash: str, withdrawn: frozenset = frozenset()) -> dict | None:
    p = out_dir / "parts" / f"{unit.number:06d}.json"
    if not p.exists():
        return None
    try:
        part = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if part.get("plan") != plan_hash:
        return None
    dropped = {r["id"] for r in part["quarantine"] if r["reason"] == "withdrawn"}
    if not dropped <= withdrawn or any(sid in withdrawn for _, sid in part["ids"]):
        return None  # ingest.withdrawn changed for this unit: redo it
    if part["shard"]:
        s = out_dir / part["shard"]
        if not s.exists() or s.stat().st_size != part["shard_bytes"] or not index_path(s).is_file():
            return None  # also a shard written before the shard index existed: redo it
    return part


def _worker(args: tuple) -> dict:
    unit, settings, out_dir = args
    return process_unit(unit, settings, out_dir)


def _prepare(out_dir: Path, plan: dict, part: Partition, timeout: float) -> None:
    """Rank 0 resets the stage folder if the plan changed; other ranks wait for the plan."""
    plan_file = out_dir / "plan.json"
    if part.is_main:
        old = json.loads(plan_file.read_text()) if plan_file.exists() else None
        if old is None or old.get("plan_hash") != plan["plan_hash"]:
            if out_dir.exists():
                log.info("ingest plan changed or new: clearing %s", out_dir)
                shutil.rmtree(out_dir)
            out_dir.mkdir(parents=True)
            write_json(plan_file, plan)
        else:
            (out_dir / "manifest.json").unlink(missing_ok=True)
            remove_stale_temps(out_dir)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if plan_file.exists() and json.loads(plan_file.read_text()).get("plan_hash") == plan["plan_hash"]:
            return
        time.sleep(0.5)
    raise TimeoutError(f"rank {part.rank}: rank 0 did not write {plan_file} within {timeout} s")


def run_ingest(cfg) -> dict | None:
    """Run the ingest stage for ``cfg`` (a :class:`pipeline.config.PipelineConfig` node).

    Returns:
        The manifest (rank 0), or None on other ranks.

    Raises:
        pipeline.config.ConfigError, FileNotFoundError: bad config or missing inputs,
            before any work.
        TimeoutError: rank 0 waited ``ingest.merge_timeout_s`` for other ranks' parts.
    """
    validate(cfg)
    t0 = time.perf_counter()
    ing = cfg.ingest
    out_dir = stage_dir(cfg.run_dir, STAGE)
    part = current_partition()
    units, fingerprints = plan_units(cfg.data.sources, str(ing.encoding), ing.shard_size)
    withdrawn = frozenset(read_withdrawn(ing.withdrawn, "ingest.withdrawn"))
    config = results_config(cfg, "data", "ingest")
    # the withdrawn list is not part of the plan: changing it redoes only the units it touches (_part_done)
    plan_config = {"data": config["data"], "ingest": {k: v for k, v in config["ingest"].items() if k != "withdrawn"}}
    plan_hash = canonical_hash({"config": plan_config, "inputs": fingerprints, "units": [asdict(u) for u in units]})
    plan = {"plan_hash": plan_hash, "units": len(units), "inputs": fingerprints}
    _prepare(out_dir, plan, part, ing.merge_timeout_s)
    settings = IngestSettings(ing.max_side, ing.min_side, ing.max_pixels, ing.max_file_bytes,
                              ing.jpeg_quality, ing.webp_method, ing.rasterize_svg, plan_hash, withdrawn,
                              max_hashtags=ing.max_hashtags, max_hashtag_chars=ing.max_hashtag_chars)

    mine = assign(units, part)
    todo = [u for u in mine if _part_done(out_dir, u, plan_hash, withdrawn) is None]
    workers = min(default_workers(ing.workers), max(1, len(todo)))
    log.info("ingest: %d units in plan, %d for rank %d/%d, %d to do, %d workers",
             len(units), len(mine), part.rank, part.world, len(todo), workers)
    bar = progress_bar(total=len(todo), unit="shard", desc=f"ingest[rank {part.rank}]", disable=not ing.progress)
    t_work = time.perf_counter()
    n_done = 0
    jobs = [(u, settings, out_dir) for u in todo]
    if workers == 1:
        results = map(_worker, jobs)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(workers)
        results = pool.imap_unordered(_worker, jobs)
    try:
        for p in results:
            n_done += p["input"]
            bar.update(1)
            bar.set_postfix(images=n_done, img_s=f"{n_done / max(1e-9, time.perf_counter() - t_work):.0f}")
    finally:
        bar.close()
        if pool is not None:
            pool.terminate() if n_done == 0 and todo else pool.close()
            pool.join()
    work_seconds = time.perf_counter() - t_work
    if not part.is_main:
        return None
    return _merge(cfg, out_dir, units, plan, config, fingerprints, t0, work_seconds, n_done, withdrawn)


def _merge(cfg, out_dir, units, plan, config, fingerprints, t0, work_seconds, n_this_run,
           withdrawn: frozenset = frozenset()) -> dict:
    """Rank 0: wait for all parts, then write ``quarantine.jsonl`` and ``manifest.json``."""
    deadline = time.monotonic() + cfg.ingest.merge_timeout_s
    parts: list[dict] = []
    for u in units:
        while (p := _part_done(out_dir, u, plan["plan_hash"], withdrawn)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"part {u.number} (source {u.source}) not finished within merge_timeout_s")
            time.sleep(0.5)
        parts.append(p)
    write_jsonl(out_dir / "quarantine.jsonl", (row for p in parts for row in p["quarantine"]))
    by_reason: Counter = Counter()
    by_source: dict[str, Counter] = {}
    dropped: Counter = Counter()
    for p in parts:
        by_reason.update(p["reasons"])
        dropped.update(p.get("hashtags_dropped", {}))
        c = by_source.setdefault(p["source"], Counter())
        c.update({"input": p["input"], "written": p["written"], "quarantined": p["quarantined"]})
    counts = {
        "input": sum(p["input"] for p in parts),
        "written": sum(p["written"] for p in parts),
        "quarantined": sum(p["quarantined"] for p in parts),
        "by_reason": dict(sorted(by_reason.items())),
        "by_source": {k: dict(v) for k, v in sorted(by_source.items())},
        "hashtags_dropped": {k: dropped[k] for k in DROP_KEYS},
        "shards": sum(1 for p in parts if p["shard"]),
        "shard_bytes": sum(p["shard_bytes"] for p in parts),
        "unit_seconds": round(sum(p["seconds"] for p in parts), 3),
        "withdrawn_requested": len(withdrawn),
        "processed_this_run": n_this_run,
        "images_per_second_this_run": round(n_this_run / work_seconds, 1) if n_this_run else None,
    }
    if counts["input"] != counts["written"] + counts["quarantined"]:  # pragma: no cover - invariant
        raise AssertionError(f"ingest lost samples: {counts}")
    outputs = {"shards": [{"path": p["shard"], "index": index_path(p["shard"]).as_posix(), "samples": p["written"],
                           "bytes": p["shard_bytes"], "sha256": p["shard_sha256"]} for p in parts if p["shard"]],
               "quarantine": "quarantine.jsonl"}
    manifest = write_manifest(out_dir, stage=STAGE, config=config, inputs=fingerprints, counts=counts,
                              seconds=time.perf_counter() - t0, outputs=outputs)
    log.info("ingest: input %d = written %d + quarantined %d (%s)", counts["input"], counts["written"],
             counts["quarantined"], ", ".join(f"{k} {v}" for k, v in counts["by_reason"].items()) or "no rejections")
    hd = counts["hashtags_dropped"]
    if hd["images"]:
        log.info("ingest: hashtag caps dropped %d tag(s) longer than %d characters and %d beyond %d per image, "
                 "in %d written image(s)", hd["too_long"], cfg.ingest.max_hashtag_chars, hd["over_count"],
                 cfg.ingest.max_hashtags, hd["images"])
    return manifest


def load_quarantine(run_dir) -> list[dict]:
    """The rows of ``<run_dir>/ingest/quarantine.jsonl``."""
    return read_jsonl(stage_dir(run_dir, STAGE) / "quarantine.jsonl")


def main() -> None:
    """Hydra entry point: ``python -m pipeline.ingest [overrides]``."""
    from pipeline.cli import hydra_entry

    hydra_entry(run_ingest, STAGE)


if __name__ == "__main__":
    main()
