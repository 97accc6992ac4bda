"""``folder``: an image folder plus an index file.

The index is JSONL (one object per line with ``path`` relative to ``root`` and ``tags``, a
list of strings; optional ``id``, ``caption``, ``meta``) or CSV (columns ``path``, ``tags``
with ``|`` between tags; optional ``id``, ``caption``). A unit is a slice of the index: the
byte offset of its first line or row and a count of lines (JSONL) or rows (CSV; rows may span lines), so
each unit seeks to its slice and the index is read once to plan and once in all by the units.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import Rejected
from pipeline.io.manifest import file_sha256
from pipeline.io.readers.base import Item, RawSample, Rejection, WorkUnit, read_file, tags_field


def _jsonl_offsets(path: Path, every: int, limit: int | None) -> tuple[list[tuple[int, int]], int]:
    """(byte offset, line count) per chunk of ``every`` non-empty lines, and the total."""
    chunks: list[tuple[int, int]] = []
    n = 0
    offset = 0
    start = 0
    in_chunk = 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                if limit is not None and n >= limit:
                    break
                if in_chunk == 0:
                    start = offset
                in_chunk += 1
                n += 1
                if in_chunk == every:
                    chunks.append((start, in_chunk))
                    in_chunk = 0
            offset += len(line)
    if in_chunk:
        chunks.append((start, in_chunk))
    return chunks, n


def _csv_offsets(path: Path, every: int, limit: int | None) -> tuple[list[tuple[int, int]], int]:
    """(byte offset, row count) per chunk of ``every`` non-empty CSV rows after the header, and the total.

    Rows may span lines (quoted newlines): the file is read record by record through :mod:`csv`, and the
    position is taken (``tell``, a byte offset in UTF-8 at a line boundary) where each chunk's first row begins,
    so a unit seeks to its rows instead of re-reading the index from row 0.
    """
    chunks: list[tuple[int, int]] = []
    n = in_chunk = start = 0
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.reader(iter(fh.readline, ""))
        next(reader, None)  # the header
        while limit is None or n < limit:
            if in_chunk == 0:
                start = fh.tell()
            row = next(reader, None)
            if row is None:
                break
            if not row:  # an empty line: no row (as csv.DictReader skips it)
                continue
            in_chunk += 1
            n += 1
            if in_chunk == every:
                chunks.append((start, in_chunk))
                in_chunk = 0
    if in_chunk:
        chunks.append((start, in_chunk))
    return chunks, n


def plan(src: Any, base: dict, first: int, shard_size: int) -> tuple[list[WorkUnit], dict]:
    """Units of ``shard_size`` index lines/rows (fewer in the last), numbered from ``first``.

    Raises:
        FileNotFoundError: the index file does not exist.
    """
    index = Path(src.index)
    if not index.is_file():
        raise FileNotFoundError(f"source {src.name!r}: index file {index} does not exist")
    if index.suffix.lower() == ".csv":
        chunks, total = _csv_offsets(index, shard_size, src.max_samples or None)
    else:
        chunks, total = _jsonl_offsets(index, shard_size, src.max_samples)
    units = [WorkUnit(first + i, index=str(index), start=start, count=count, **base) for i, (start, count) in enumerate(chunks)]
    return units, {"index": str(index), "index_sha256": file_sha256(index), "samples": total}


def _folder_records(unit: WorkUnit) -> Iterator[tuple[int, dict | Rejection]]:
    """(line or row number, record dict or Rejection) for a folder unit."""
    assert unit.index is not None  # plan_units gives every folder unit its index
    index = Path(unit.index)
    if index.suffix.lower() == ".csv":
        with open(index, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            header = next(csv.reader(iter(fh.readline, "")), None)
            if header is None:
                return
            if unit.start > fh.tell():
                fh.seek(unit.start)  # the unit's first row (a byte offset from the plan); 0: right after the header
            for n, row in enumerate(csv.DictReader(iter(fh.readline, ""), fieldnames=header)):
                if n >= unit.count:
                    break
                tags = [t for t in (row.get("tags") or "").split("|")]
                yield (
                    n,
                    {"path": row.get("path"), "tags": tags, "id": row.get("id") or None, "caption": row.get("caption") or None},
                )
        return
    with open(index, "rb") as fh:
        fh.seek(unit.start)
        done = 0
        line_no = unit.start
        while done < unit.count:
            raw = fh.readline()
            if not raw:
                break
            line_no += len(raw)
            if not raw.strip():
                continue
            done += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield done, Rejection(f"{index.name}@{line_no - len(raw)}", str(index), "invalid_utf8", str(exc)[:200])
                continue
            try:
                rec = json.loads(text)
                if not isinstance(rec, dict):
                    raise ValueError("a line must be a JSON object")
            except ValueError as exc:
                yield done, Rejection(f"{index.name}@{line_no - len(raw)}", str(index), "invalid_metadata", str(exc)[:200])
                continue
            yield done, rec


def read(unit: WorkUnit, max_bytes: int) -> Iterator[Item]:
    """Every indexed sample of a folder unit: a :class:`RawSample` or a :class:`Rejection` (never raises for bad input)."""
    root = Path(unit.root)
    for _, rec in _folder_records(unit):
        if isinstance(rec, Rejection):
            yield rec
            continue
        rel = rec.get("path")
        sid = str(rec.get("id") or rel)
        origin = f"{root}/{rel}"
        try:
            if "\udcff" in sid or any(0xDC80 <= ord(c) <= 0xDCFF for c in sid + str(rec.get("tags"))):
                raise Rejected("invalid_utf8", "surrogate-escaped bytes in id or tags")
            if not isinstance(rel, str):
                raise Rejected("invalid_metadata", "missing or non-string 'path'")
            tags = tags_field(rec.get("tags"))
            caption = rec.get("caption")
            if caption is not None and not isinstance(caption, str):
                raise Rejected("invalid_metadata", "caption must be a string")
            meta = rec.get("meta") or {}
            if not isinstance(meta, dict):
                raise Rejected("invalid_metadata", "meta must be an object")
            data = read_file(root, rel, max_bytes)
        except Rejected as r:
            yield Rejection(sid, origin, r.reason, r.detail)
            continue
        yield RawSample(sid, origin, data, tags, caption, dict(meta, path=rel))
