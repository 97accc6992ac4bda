"""Reading and writing the "folder + index" format and ``converted/sources.json``.

An index row is ``{"id", "path", "tags", "caption"?, "meta"}`` (see :func:`validate_row`);
an index file is JSON Lines sorted by ``id``. ``sources.json`` is::

    {"format_version": 1,
     "base": "..",            # folder that roots and indexes are relative to,
                              # itself relative to the folder holding sources.json
     "sources": {"<name>": {"format": "folder+index" | "imagefolder",
                            "root": "<dir>", "index": "<file.jsonl>" (folder+index only),
                            "count": int, "counts": {...}, "license": str,
                            "input_fingerprint": sha256 of the fetch marker, ...}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from pipeline.io.atomic import read_jsonl

from .common import atomic_write_json, atomic_write_jsonl, is_safe_relpath, marker_fingerprint

CONVERTED = "converted"
SOURCES_JSON = "sources.json"
FORMAT_VERSION = 1


def validate_row(row: dict, where: str = "row") -> None:
    """Check one index row's schema.

    Raises:
        ValueError: naming ``where`` and the offending field (or the row's type, if it is not a JSON object).
    """
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if not isinstance(row.get("id"), str) or not row["id"]:
        raise ValueError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(row.get("path"), str) or not is_safe_relpath(row["path"]):
        raise ValueError(f"{where} ({row['id']}): 'path' must be a relative path inside the root")
    tags = row.get("tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise ValueError(f"{where} ({row['id']}): 'tags' must be a list of non-empty strings")
    if "caption" in row and not isinstance(row["caption"], str):
        raise ValueError(f"{where} ({row['id']}): 'caption' must be a string when present")
    if not isinstance(row.get("meta"), dict):
        raise ValueError(f"{where} ({row['id']}): 'meta' must be an object")
    extra = set(row) - {"id", "path", "tags", "caption", "meta"}
    if extra:
        raise ValueError(f"{where} ({row['id']}): unknown fields {sorted(extra)}")


def make_row(id: str, path: str, tags: Iterable[str], caption: str | None = None, **meta: Any) -> dict:
    """Build an index row; empty tags are dropped and duplicates removed (first kept)."""
    seen: dict[str, None] = {}
    for t in tags:
        t = " ".join(str(t).split())
        if t and t not in seen:
            seen[t] = None
    row: dict[str, Any] = {"id": id, "path": path, "tags": list(seen), "meta": meta}
    if caption is not None and caption.strip():
        row["caption"] = caption.strip()
    return row


def write_index(path: Path, rows: Iterable[dict]) -> int:
    """Validate, sort by id and atomically write an index; return the row count.

    Raises:
        ValueError: a row fails :func:`validate_row` or two rows share an id.
    """
    rows = sorted(rows, key=lambda r: r["id"])
    for i, row in enumerate(rows):
        validate_row(row, f"{path.name} row {i}")
        if i and rows[i - 1]["id"] == row["id"]:
            raise ValueError(f"{path.name}: duplicate id {row['id']!r}")
    return atomic_write_jsonl(path, rows)


def read_index(path: Path) -> list[dict]:
    """Read and validate an index file.

    Raises:
        ValueError: a line is not JSON or a row fails :func:`validate_row`.
    """
    rows = read_jsonl(path)
    for i, row in enumerate(rows):
        validate_row(row, f"{path}:{i + 1}")
    return rows


def converted_dir(cache: Path) -> Path:
    """``<cache>/converted``."""
    return Path(cache) / CONVERTED


def read_sources(sources_json: Path) -> dict:
    """Parsed ``sources.json`` (an empty skeleton if the file does not exist)."""
    try:
        data = json.loads(Path(sources_json).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"format_version": FORMAT_VERSION, "base": "..", "sources": {}}
    data.setdefault("sources", {})
    return data


def update_sources(sources_json: Path, name: str, entry: dict, base: str = "..") -> None:
    """Set the entry of source ``name`` in ``sources.json`` (atomic read-modify-write)."""
    data = read_sources(sources_json)
    data["format_version"] = FORMAT_VERSION
    data["base"] = base
    data["sources"][name] = entry
    atomic_write_json(sources_json, data)


def publish_index(
    cache: Path, name: str, rows: list[dict], root: str, counts: dict, license: str, fingerprint: str, **extra: Any
) -> dict:
    """Write ``<cache>/converted/<name>.jsonl`` (:func:`write_index`) and record it in ``sources.json``.

    Args:
        root: the image folder the index paths are relative to, relative to the cache.
        counts: what the converter counted (recorded as ``counts``).
        fingerprint: SHA-256 of the input's fetch marker (``input_fingerprint``, see :func:`is_converted`).
        extra: further fields of the entry (e.g. ``svg_parser``).

    Returns:
        The ``folder+index`` entry written (``format``, ``root``, ``index``, ``count``, ``counts``, ``license``,
        ``input_fingerprint`` and ``extra``).

    Raises:
        ValueError: a row fails :func:`validate_row` or two rows share an id.
    """
    out = converted_dir(cache)
    n = write_index(out / f"{name}.jsonl", rows)
    entry = {
        "format": "folder+index",
        "root": root,
        "index": f"{CONVERTED}/{name}.jsonl",
        "count": n,
        "counts": counts,
        "license": license,
        **extra,
        "input_fingerprint": fingerprint,
    }
    update_sources(out / SOURCES_JSON, name, entry)
    return entry


def is_converted(cache: Path, name: str, input_folder: Path) -> bool:
    """True if ``name``'s output is recorded in sources.json from the current fetch of its input.

    The entry's ``input_fingerprint`` must equal the SHA-256 of ``input_folder``'s
    completion marker, and a folder+index source's index must exist with ``count`` rows.
    """
    entry = read_sources(converted_dir(cache) / SOURCES_JSON)["sources"].get(name)
    fp = marker_fingerprint(input_folder)
    if not entry or fp is None or entry.get("input_fingerprint") != fp:
        return False
    if entry.get("format") == "folder+index":
        index = Path(cache) / entry["index"]
        if not index.is_file():
            return False
        with open(index, "rb") as fh:
            return sum(1 for line in fh if line.strip()) == entry.get("count")
    return (Path(cache) / entry["root"]).is_dir()
