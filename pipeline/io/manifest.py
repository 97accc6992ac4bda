"""The stage contract: each stage writes ``<run_dir>/<stage>/manifest.json`` last.

A manifest records the stage's resolved config, fingerprints of its inputs, counts,
wall-clock seconds and the code version. Its presence means the stage finished; the
orchestrator compares ``config_hash`` and ``inputs`` to decide whether to skip it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable

from pipeline import __version__
from pipeline.io.atomic import write_json

MANIFEST = "manifest.json"


def stage_dir(run_dir: str | os.PathLike, stage: str) -> Path:
    """``<run_dir>/<stage>``: the only folder a stage writes."""
    return Path(run_dir) / stage


def canonical_hash(obj: Any) -> str:
    """SHA-256 (hex, first 16 chars) of the canonical JSON of ``obj``."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Full hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def stat_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """Cheap fingerprint of many files: hash of (path, size, mtime_ns) for each, in order."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def code_version() -> str:
    """Git commit of the code (``+dirty`` if modified), else the package version."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return f"{rev}+dirty" if dirty else rev
    except (OSError, subprocess.SubprocessError):
        return __version__


def write_manifest(
    out_dir: str | os.PathLike,
    *,
    stage: str,
    config: dict,
    inputs: dict,
    counts: dict,
    seconds: float,
    outputs: dict | None = None,
) -> dict:
    """Atomically write ``<out_dir>/manifest.json`` and return its content."""
    manifest = {
        "stage": stage,
        "config": config,
        "config_hash": canonical_hash(config),
        "inputs": inputs,
        "counts": counts,
        "outputs": outputs or {},
        "seconds": round(seconds, 3),
        "code_version": code_version(),
        "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(out_dir: str | os.PathLike) -> dict | None:
    """The stage's manifest, or None if the stage has not finished."""
    p = Path(out_dir) / MANIFEST
    if not p.exists():
        return None
    with open(p, encoding="utf-8") as fh:
        return json.load(fh)
