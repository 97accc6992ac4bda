"""Ingest work units: one unit of raw input -> one shard, one part file (the resume record).

A unit (:class:`pipeline.io.readers.WorkUnit`: a slice of an index or listing, or one
input tar) is processed by :func:`process_unit` in one process: every sample is checked,
its hashtags normalized and capped (:mod:`pipeline.text.hashtags`), its image decoded to
the canonical form and re-encoded (:mod:`pipeline.vision.images`), its perceptual hashes
stored in the shard index (:mod:`pipeline.vision.near_index`); rejected samples become
quarantine rows (:mod:`pipeline.io.quarantine`). The shard and ``parts/<unit>.json`` are
renamed into place when complete, so :func:`part_done` tells a finished unit from one to redo.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.config import IngestConfig, to_container
from pipeline.errors import Rejected
from pipeline.io.atomic import write_json
from pipeline.io.manifest import file_sha256
from pipeline.io.readers import RawSample, Rejection, WorkUnit, iter_unit
from pipeline.io.run_folder import PART_DIR, SHARD_DIR
from pipeline.io.shard_index import index_path, json_index_path
from pipeline.io.shards import AtomicShardWriter, shard_key
from pipeline.text.hashtags import cap_hashtags, extract_hashtags, normalize_hashtags
from pipeline.vision.images import ENCODINGS, decode_image, encode_image, set_pixel_cap
from pipeline.vision.near_index import HASH_SIZES, perceptual_hashes

__all__ = ["DROP_KEYS", "IngestSettings", "ingest_settings", "process_unit", "part_done", "part_path", "run_units"]

# counts.hashtags_dropped of the manifest (and of each part): tags dropped by ingest.max_hashtag_chars
# (too_long) and ingest.max_hashtags (over_count) in written samples, and how many written samples lost any
DROP_KEYS = ("too_long", "over_count", "images")


@dataclass(frozen=True)
class IngestSettings:
    """What a worker needs to process a unit (picklable, sent to spawned workers).

    Attributes:
        ingest: the ``ingest`` config section as its plain dataclass (caps, sizes, encodings).
        plan_hash: the hash of the ingest plan; recorded in each part, a part of another plan is redone.
        withdrawn: ``source:id`` of samples never to write (the ids of ``ingest.withdrawn``).
    """

    ingest: IngestConfig
    plan_hash: str
    withdrawn: frozenset = frozenset()


def ingest_settings(section, plan_hash: str, withdrawn: frozenset = frozenset()) -> IngestSettings:
    """:class:`IngestSettings` from the ``ingest`` config section (an OmegaConf node, a dict or an IngestConfig)."""
    if not isinstance(section, IngestConfig):
        section = IngestConfig(**to_container(section))
    return IngestSettings(section, plan_hash, frozenset(withdrawn))


def part_path(out_dir: Path, number: int) -> Path:
    """``<out_dir>/parts/NNNNNN.json``, the part file of unit ``number``."""
    return out_dir / PART_DIR / f"{number:06d}.json"


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
    return {
        "id": f"{unit.source}:{_printable(sid)}",
        "source": unit.source,
        "origin": _printable(origin),
        "reason": reason,
        "detail": _printable(detail),
        "unit": unit.number,
    }


def process_unit(unit: WorkUnit, settings: IngestSettings, out_dir: Path) -> dict:
    """Ingest one unit: write ``shards/<unit>.tar`` and ``parts/<unit>.json``; return the part.

    Raises:
        OSError: only for output-side failures (disk full, read-only folder); bad
            input is quarantined, never raised.
    """
    t0 = time.perf_counter()
    ing = settings.ingest
    set_pixel_cap(ing.max_pixels)
    shard_rel = f"{SHARD_DIR}/{unit.number:06d}.tar"
    ext = ENCODINGS[unit.encoding]
    rows: list[dict] = []
    ids: list[list[str]] = []
    seen: set[str] = set()
    n_in = 0
    dropped: Counter[str] = Counter()  # hashtags dropped by the caps: too_long, over_count (tags), images (with any drop)
    writer = AtomicShardWriter(out_dir / shard_rel)
    try:
        for item in iter_unit(unit, ing.max_file_bytes):
            n_in += 1
            if isinstance(item, Rejection):
                rows.append(_quarantine_row(unit, item.id, item.origin, item.reason, item.detail))
                continue
            assert isinstance(item, RawSample)
            try:
                if f"{unit.source}:{item.id}" in settings.withdrawn:
                    raise Rejected("withdrawn", "listed in ingest.withdrawn")
                raw_tags = item.tags + extract_hashtags(item.caption or "")  # tags fields, then the caption's #words
                if _not_utf8(item.id, raw_tags, item.caption, item.meta):
                    raise Rejected(
                        "invalid_utf8",
                        "lone surrogate (undecodable bytes or a \\uD800-\\uDFFF escape) in id, tags, caption or metadata",
                    )
                if item.id in seen:
                    raise Rejected("duplicate_id", "id already seen in this unit")
                seen.add(item.id)
                normalized = normalize_hashtags(raw_tags)
                if not normalized:
                    raise Rejected("no_hashtags", f"raw tags: {raw_tags!r}"[:200])
                hashtags, too_long, over = cap_hashtags(normalized, ing.max_hashtags, ing.max_hashtag_chars)
                if not hashtags:
                    raise Rejected(
                        "no_hashtags",
                        f"all {too_long} tag(s) longer than ingest.max_hashtag_chars="
                        f"{ing.max_hashtag_chars} characters (dropped, not cut); first: "
                        f"{normalized[0][:40]!r}...",
                    )
                if too_long or over:
                    dropped.update(too_long=too_long, over_count=over, images=1)
                canon = decode_image(
                    item.data,
                    max_pixels=ing.max_pixels,
                    max_side=ing.max_side,
                    min_side=ing.min_side,
                    rasterize_svg=ing.rasterize_svg,
                )
                encoded = encode_image(canon.image, unit.encoding, ing.jpeg_quality, ing.webp_method)
            except Rejected as r:
                rows.append(_quarantine_row(unit, item.id, item.origin, r.reason, r.detail))
                continue
            key = shard_key(unit.number, writer.count)
            sid = f"{unit.source}:{item.id}"
            meta = {
                "id": sid,
                "key": key,
                "source": unit.source,
                "hashtags": hashtags,
                "width": canon.image.width,
                "height": canon.image.height,
                "orig_width": canon.orig_width,
                "orig_height": canon.orig_height,
                "sha256": canon.pixel_sha256,
                "source_format": canon.source_format,
                "frames": canon.frames,
                "meta": item.meta,
            }
            if item.caption:
                meta["caption"] = item.caption
            # the perceptual hashes of the canonical pixels, once, while we hold them (dedup decodes nothing)
            codes = perceptual_hashes(canon.image, HASH_SIZES)
            writer.write(
                {"__key__": key, ext: encoded, "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")},
                meta=meta,
                phash=codes,
            )
            ids.append([key, sid])
        written = writer.count
        if written:
            writer.commit()
        else:
            writer.abort()
            (out_dir / shard_rel).unlink(missing_ok=True)  # a redone unit (ingest.withdrawn) may have had one
            index_path(out_dir / shard_rel).unlink(missing_ok=True)
            json_index_path(out_dir / shard_rel).unlink(missing_ok=True)
    except BaseException as exc:
        writer.abort(exc)
        raise
    shard_path = out_dir / shard_rel
    part = {
        "unit": unit.number,
        "source": unit.source,
        "plan": settings.plan_hash,
        "shard": shard_rel if written else None,
        "shard_bytes": shard_path.stat().st_size if written else 0,
        "shard_sha256": file_sha256(shard_path) if written else None,
        "input": n_in,
        "written": written,
        "quarantined": len(rows),
        "reasons": dict(sorted(Counter(r["reason"] for r in rows).items())),
        "hashtags_dropped": {k: dropped[k] for k in DROP_KEYS},
        "quarantine": rows,
        "ids": ids,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(part_path(out_dir, unit.number), part)
    return part


def part_done(out_dir: Path, unit: WorkUnit, plan_hash: str, withdrawn: frozenset = frozenset()) -> dict | None:
    """The part of ``unit`` if it is finished for this plan and withdrawn list, else None (redo the unit).

    A part is stale when it is missing or unreadable, belongs to another plan, its withdrawn
    rejections or written ids disagree with ``withdrawn``, or its shard (or shard index) is
    missing or of another size.
    """
    p = part_path(out_dir, unit.number)
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


def run_units(todo: list[WorkUnit], settings: IngestSettings, out_dir: Path, workers: int, bar) -> int:
    """Process ``todo`` with ``workers`` processes (spawned; 1 = in this process), ticking ``bar`` per unit.

    Returns:
        The input samples of the units processed (for the stage's rate).
    """
    t_work = time.perf_counter()
    n_done = 0
    jobs = [(u, settings, out_dir) for u in todo]
    results: Iterator[dict]
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
    return n_done


def unit_input_count(unit: WorkUnit, shared: tuple[IngestSettings, str]) -> int:
    """:func:`process_unit` as an executor task (:mod:`pipeline.executor`): ``shared`` = (settings, the stage's
    folder); returns the unit's input samples only (its part, with per-sample ids, stays on disk). A retried task
    rewrites the unit's shard and part atomically."""
    settings, out_dir = shared
    return int(process_unit(unit, settings, Path(out_dir))["input"])


def run_units_on(executor, todo: list[WorkUnit], settings: IngestSettings, out_dir: Path, bar) -> int:
    """Process ``todo`` as tasks of ``executor`` (``data.engine=ray``: one Ray task per unit, retried when its worker
    dies), ticking ``bar`` per unit. Returns the input samples of the units processed."""
    t_work = time.perf_counter()
    n_done = 0
    try:
        for n in executor.imap(unit_input_count, todo, (settings, str(out_dir))):
            n_done += n
            bar.update(1)
            bar.set_postfix(images=n_done, img_s=f"{n_done / max(1e-9, time.perf_counter() - t_work):.0f}")
    finally:
        bar.close()
    return n_done
