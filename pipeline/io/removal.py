"""Removal side files: which ingested samples later stages must skip.

The dedup stage writes ``<run_dir>/dedup/removed.jsonl``, one row per removed sample:
``{"key", "id", "reason", "duplicate_of", "distance"}`` with reason one of
:data:`REMOVAL_REASONS`. Shards are never rewritten; every reader (vocab counts, the
training loader, transfer's decontamination report) applies this list at read time,
so a withdrawn or duplicated image never reaches a later artifact.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from pipeline.io.atomic import read_jsonl
from pipeline.io.manifest import read_manifest, stage_dir
from pipeline.io.run_folder import DEDUP, REMOVED_FILE

REMOVAL_REASONS = ("withdrawn", "duplicate_id", "exact", "near", "eval-contamination")


def read_withdrawn(path: str | None, key: str = "dedup.withdrawn") -> set[str]:
    """Withdrawn sample ids, one per line (``source:id`` as in the shards; ``#`` comments).

    Raises:
        FileNotFoundError: naming the config ``key``, if the file does not exist.
    """
    if not path:
        return set()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{key}: file {p} does not exist")
    return {s for line in p.read_text(encoding="utf-8").splitlines() if (s := line.strip()) and not s.startswith("#")}


def removed_rows(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``<run_dir>/dedup/removed.jsonl``.

    Raises:
        FileNotFoundError: if the dedup stage has not finished in ``run_dir``.
    """
    d = stage_dir(run_dir, DEDUP)
    if read_manifest(d) is None:
        raise FileNotFoundError(
            f"no finished dedup stage in {run_dir} (missing {d}/manifest.json); run `python -m pipeline.dedup run_dir={run_dir}`"
        )
    return read_jsonl(Path(d) / REMOVED_FILE)


def removed_keys(run_dir: str | os.PathLike) -> set[str]:
    """Shard keys (``UUUUUU_PPPPPP``) of every removed sample."""
    return {r["key"] for r in removed_rows(run_dir)}


def load_removals(run_dir: str | os.PathLike, require: bool) -> tuple[set[str], dict | None, Counter]:
    """Keys removed by dedup, dedup's manifest (None if absent) and removals by reason.

    Raises:
        FileNotFoundError: dedup has not finished and ``require`` is true.
    """
    man = read_manifest(stage_dir(run_dir, DEDUP))
    if man is None:
        if require:
            raise FileNotFoundError(
                f"no finished dedup stage in {run_dir} (missing {stage_dir(run_dir, DEDUP)}/manifest.json): run "
                f"`python -m pipeline.dedup run_dir={run_dir}` first, or set vocab.require_dedup=false to count "
                "every ingested sample (duplicates and withdrawn images included)"
            )
        return set(), None, Counter()
    rows = removed_rows(run_dir)
    return {r["key"] for r in rows}, man, Counter(r.get("reason", "?") for r in rows)
