"""The ingest stage folder around its units: the plan file before them, the merge of their parts after.

:func:`prepare_folder` makes ``<run_dir>/ingest/`` match a plan (rank 0 clears a folder of
another plan and writes ``plan.json``; other ranks wait for it). :func:`merge_parts` (rank 0)
waits for the part of every unit (:func:`pipeline.ingestion.worker.part_done`) and turns them
into ``quarantine.jsonl``, the manifest's counts and its outputs.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pipeline.ingestion.worker import DROP_KEYS, part_done
from pipeline.io.atomic import remove_stale_temps, write_json, write_jsonl
from pipeline.io.manifest import MANIFEST
from pipeline.io.readers import WorkUnit
from pipeline.io.run_folder import PLAN_FILE, QUARANTINE_FILE
from pipeline.io.shard_index import index_path

if TYPE_CHECKING:
    from pipeline.system import Partition

__all__ = ["iter_parts", "prepare_folder", "wait_for_parts", "merged_counts", "merged_outputs", "merge_parts"]

log = logging.getLogger(__name__)


def prepare_folder(out_dir: Path, plan: dict, part: Partition, timeout: float) -> None:
    """Rank 0 resets the stage folder if the plan changed; other ranks wait for the plan.

    Raises:
        TimeoutError: a rank other than 0 did not see rank 0's ``plan.json`` within ``timeout`` seconds.
    """
    plan_file = out_dir / PLAN_FILE
    if part.is_main:
        old = json.loads(plan_file.read_text()) if plan_file.exists() else None
        if old is None or old.get("plan_hash") != plan["plan_hash"]:
            if out_dir.exists():
                log.info("ingest plan changed or new: clearing %s", out_dir)
                shutil.rmtree(out_dir)
            out_dir.mkdir(parents=True)
            write_json(plan_file, plan)
        else:
            (out_dir / MANIFEST).unlink(missing_ok=True)
            remove_stale_temps(out_dir)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if plan_file.exists() and json.loads(plan_file.read_text()).get("plan_hash") == plan["plan_hash"]:
            return
        time.sleep(0.5)
    raise TimeoutError(f"rank {part.rank}: rank 0 did not write {plan_file} within {timeout} s")


def wait_for_parts(out_dir: Path, units: list[WorkUnit], plan_hash: str, withdrawn: frozenset, timeout: float) -> None:
    """Wait up to ``timeout`` seconds until every unit's part is finished (other ranks' too); keeps none of them.

    Raises:
        TimeoutError: a unit's part is not finished in time.
    """
    deadline = time.monotonic() + timeout
    for u in units:
        while part_done(out_dir, u, plan_hash, withdrawn) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"part {u.number} (source {u.source}) not finished within merge_timeout_s")
            time.sleep(0.5)


def iter_parts(out_dir: Path, units: list[WorkUnit], plan_hash: str, withdrawn: frozenset) -> Iterator[dict]:
    """The finished part of every unit, in plan order, one at a time (a part holds its unit's per-sample ids and
    quarantine rows: the merge never holds them all).

    Raises:
        RuntimeError: a part that :func:`wait_for_parts` found finished is gone (the folder changed under the merge).
    """
    for u in units:
        p = part_done(out_dir, u, plan_hash, withdrawn)
        if p is None:
            raise RuntimeError(f"part {u.number} of {out_dir} changed during the merge; re-run ingest")
        yield p


def merged_counts(parts: list[dict], withdrawn: frozenset, n_this_run: int, work_seconds: float) -> dict:
    """The manifest's ``counts`` of the ingest stage from its parts.

    Raises:
        AssertionError: ``input != written + quarantined`` (a lost sample; never expected).
    """
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
    return counts


def merged_outputs(parts: list[dict]) -> dict:
    """The manifest's ``outputs``: every written shard (path, index, samples, bytes, sha256) and the quarantine file."""
    return {
        "shards": [
            {
                "path": p["shard"],
                "index": index_path(p["shard"]).as_posix(),
                "samples": p["written"],
                "bytes": p["shard_bytes"],
                "sha256": p["shard_sha256"],
            }
            for p in parts
            if p["shard"]
        ],
        "quarantine": QUARANTINE_FILE,
    }


def merge_parts(
    out_dir: Path,
    units: list[WorkUnit],
    plan_hash: str,
    withdrawn: frozenset,
    timeout: float,
    n_this_run: int,
    work_seconds: float,
) -> tuple[dict, dict]:
    """Rank 0: wait for all parts, write ``quarantine.jsonl``; return the manifest's ``(counts, outputs)``.

    The parts are read one at a time: each one's quarantine rows are written and its per-sample ids dropped, so
    the merge holds a few numbers per unit, not per sample."""
    wait_for_parts(out_dir, units, plan_hash, withdrawn, timeout)
    slim: list[dict] = []

    def rows() -> Iterator[dict]:
        for p in iter_parts(out_dir, units, plan_hash, withdrawn):
            yield from p["quarantine"]
            slim.append({k: v for k, v in p.items() if k not in ("ids", "quarantine")})

    write_jsonl(out_dir / QUARANTINE_FILE, rows())
    return merged_counts(slim, withdrawn, n_this_run, work_seconds), merged_outputs(slim)
