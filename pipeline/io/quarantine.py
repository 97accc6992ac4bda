"""Quarantine reasons: why an input sample was rejected, and the exception that carries it.

Every rejected sample becomes one row of ``<stage>/quarantine.jsonl`` with its key, a
reason from :data:`REASONS` and a human-readable detail. Nothing is dropped silently:
ingest checks ``input == written + quarantined``. :func:`load_quarantine` reads ingest's rows.
"""

from __future__ import annotations

import os

from pipeline.io.atomic import read_jsonl
from pipeline.io.run_folder import INGEST, QUARANTINE_FILE, path


def load_quarantine(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``<run_dir>/ingest/quarantine.jsonl`` (``id``, ``source``, ``origin``, ``reason``, ``detail``, ``unit``).

    Raises:
        FileNotFoundError: the file does not exist (ingest has not run).
        ValueError: naming the file and line, for a line that is not JSON.
    """
    return read_jsonl(path(run_dir, INGEST, QUARANTINE_FILE))
