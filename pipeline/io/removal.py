"""Removal side files: which ingested samples later stages must skip.

The dedup stage writes ``<run_dir>/dedup/removed.jsonl``, one row per removed sample:
``{"key", "id", "reason", "duplicate_of", "distance"}`` with reason one of
:data:`REMOVAL_REASONS`. Shards are never rewritten; every reader (vocab counts, the
training loader, transfer's decontamination report) applies this list at read time,
so a withdrawn or duplicated image never reaches a later artifact.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.io.atomic import read_jsonl
from pipeline.io.manifest import read_manifest, stage_dir

REMOVAL_REASONS = ("withdrawn", "duplicate_id", "exact", "near", "eval-contamination")
REMOVED_FILE = "removed.jsonl"


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
    d = stage_dir(run_dir, "dedup")
    if read_manifest(d) is None:
        raise FileNotFoundError(f"no finished dedup stage in {run_dir} (missing {d}/manifest.json); run `python -m pipeline.dedup run_dir={run_dir}`")
    return read_jsonl(Path(d) / REMOVED_FILE)


def removed_keys(run_dir: str | os.PathLike) -> set[str]:
    """Shard keys (``UUUUUU_PPPPPP``) of every removed sample."""
    return {r["key"] for r in removed_rows(run_dir)}
