"""Readers for the three raw input formats ingest accepts, split into work units.

Formats (``data.sources[i].format``):

* ``folder``: an image folder plus an index file, JSONL (one object per line with
  ``path`` relative to ``root`` and ``tags``, a list of strings; optional ``id``,
  ``caption``, ``meta``) or CSV (columns ``path``, ``tags`` with ``|`` between tags;
  optional ``id``, ``caption``).
* ``img2dataset``: WebDataset tars as written by img2dataset (``KEY.jpg|png|webp``,
  ``KEY.txt`` caption, ``KEY.json`` with ``key``, ``status``, ``caption`` and optional
  ``tags``/``hashtags``). Hashtags come from ``#words`` in the caption and from the tags
  fields. Members need not be in key order.
* ``imagefolder``: ``<root>/<split>/<class>/<image>`` (ImageNet layout); the class
  folder name (a WordNet id like ``n01440764`` or a name) is the sample's one tag.

:func:`plan_units` cuts every source into :class:`WorkUnit` s (a slice of an index, a
slice of a sorted listing, or one tar). :func:`iter_unit` yields, for a unit, either a
:class:`RawSample` or a :class:`Rejection` per input sample, in a deterministic order.
"""

from __future__ import annotations

import csv
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Union

from pipeline.config import RawFormat
from pipeline.io.quarantine import Rejected
from pipeline.text.hashtags import extract_hashtags

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "svg")


@dataclass
class WorkUnit:
    """One independent piece of ingest work; unit ``number`` becomes shard ``number``.

    ``start``/``count`` select samples: a byte offset and line count in a JSONL index, a
    row offset and count in a CSV index, or items of ``files`` (imagefolder). ``tar`` is
    set for img2dataset units.
    """

    number: int
    source: str
    format: str
    root: str
    encoding: str
    index: str | None = None
    start: int = 0
    count: int = 0
    tar: str | None = None
    files: list[str] = field(default_factory=list)


@dataclass
class RawSample:
    """An input sample before validation: encoded bytes and unnormalized tags."""

    id: str
    origin: str
    data: bytes
    tags: list[str]
    caption: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Rejection:
    """An input sample rejected while reading (before image decoding)."""

    id: str
    origin: str
    reason: str
    detail: str = ""


Item = Union[RawSample, Rejection]


# --------------------------------------------------------------------------- planning
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


def _csv_rows(path: Path) -> int:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def _listing(root: Path) -> list[str]:
    """Sorted ``<class>/<file>`` paths below an imagefolder split folder."""
    out = []
    for cls in sorted(os.scandir(root), key=lambda e: e.name):
        if not cls.is_dir() or cls.name.startswith("."):
            continue
        for f in sorted(os.scandir(cls.path), key=lambda e: e.name):
            if not f.name.startswith(".") and not f.is_dir():
                out.append(f"{cls.name}/{f.name}")
    return out


def plan_units(sources, default_encoding: str, shard_size: int) -> tuple[list[WorkUnit], dict]:
    """Cut all sources into work units, numbered in source order; also input fingerprints.

    Raises:
        FileNotFoundError: naming the source whose root, index or tars are missing
            (a config error: it fails before any work).
    """
    from pipeline.io.manifest import file_sha256, stat_fingerprint

    units: list[WorkUnit] = []
    fingerprints: dict = {}
    for src in sources:
        fmt = RawFormat(src.format).value
        enc = (str(src.encoding) if src.encoding else None) or default_encoding
        root = Path(src.root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"source {src.name!r}: root folder {root} does not exist (run `make demo` or data_tools.fetch_demo?)"
            )
        base = dict(source=src.name, format=fmt, root=str(root), encoding=enc)
        if fmt == "folder":
            index = Path(src.index)
            if not index.is_file():
                raise FileNotFoundError(f"source {src.name!r}: index file {index} does not exist")
            if index.suffix.lower() == ".csv":
                total = _csv_rows(index)
                if src.max_samples:
                    total = min(total, src.max_samples)
                chunks = [(s, min(shard_size, total - s)) for s in range(0, total, shard_size)]
            else:
                chunks, total = _jsonl_offsets(index, shard_size, src.max_samples)
            for start, count in chunks:
                units.append(WorkUnit(len(units), index=str(index), start=start, count=count, **base))
            fingerprints[src.name] = {"index": str(index), "index_sha256": file_sha256(index), "samples": total}
        elif fmt == "imagefolder":
            split_root = root / src.split
            if not split_root.is_dir():
                raise FileNotFoundError(f"source {src.name!r}: split folder {split_root} does not exist")
            files = _listing(split_root)[: src.max_samples or None]
            for s in range(0, len(files), shard_size):
                units.append(
                    WorkUnit(
                        len(units),
                        root=str(split_root),
                        files=files[s : s + shard_size],
                        count=len(files[s : s + shard_size]),
                        **{k: v for k, v in base.items() if k != "root"},
                    )
                )
            fingerprints[src.name] = {
                "root": str(split_root),
                "samples": len(files),
                "listing": stat_fingerprint(split_root / f for f in files[:1000]),
            }
        else:
            tars = sorted(root.glob("*.tar"))
            if not tars:
                raise FileNotFoundError(f"source {src.name!r}: no .tar files in {root}")
            for t in tars:
                units.append(WorkUnit(len(units), tar=str(t), **base))
            fingerprints[src.name] = {"root": str(root), "tars": len(tars), "stat": stat_fingerprint(tars)}
    return units, fingerprints


# --------------------------------------------------------------------------- reading
def _read_file(root: Path, rel: str, max_bytes: int) -> bytes:
    """Read ``root/rel`` after checking it resolves inside ``root``.

    Raises:
        Rejected: ``path_outside_root``, ``missing_file``, ``file_too_large``, ``empty_file``.
    """
    if not rel or os.path.isabs(rel) or ".." in PurePosixPath(rel).parts:
        raise Rejected("path_outside_root", f"path {rel!r} is absolute or contains '..'")
    p = root / rel
    try:
        real = p.resolve(strict=True)
    except UnicodeEncodeError:  # a lone surrogate from a JSON \\ud800 escape
        raise Rejected("invalid_utf8", f"path {rel!r} is not valid UTF-8") from None
    except ValueError as exc:  # an embedded NUL
        raise Rejected("invalid_metadata", f"path {rel!r}: {exc}") from None
    except (FileNotFoundError, RuntimeError, OSError):
        raise Rejected("missing_file", str(rel)) from None
    if not real.is_relative_to(root.resolve()):
        raise Rejected("path_outside_root", f"{rel} resolves outside the source root")
    if not real.is_file():
        raise Rejected("missing_file", f"{rel} is not a regular file")
    size = real.stat().st_size
    if size > max_bytes:
        raise Rejected("file_too_large", f"{size} bytes > max_file_bytes={max_bytes}")
    if size == 0:
        raise Rejected("empty_file")
    return real.read_bytes()


def _tags_field(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [t for t in value.replace(",", " ").split() if t]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return list(value)
    raise Rejected("invalid_metadata", f"tags must be a list of strings, got {type(value).__name__}")


def _folder_records(unit: WorkUnit) -> Iterator[tuple[int, dict | Rejection]]:
    """(line or row number, record dict or Rejection) for a folder unit."""
    assert unit.index is not None  # plan_units gives every folder unit its index
    index = Path(unit.index)
    if index.suffix.lower() == ".csv":
        with open(index, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            for n, row in enumerate(csv.DictReader(fh)):
                if n < unit.start:
                    continue
                if n >= unit.start + unit.count:
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


def _iter_folder(unit: WorkUnit, max_bytes: int) -> Iterator[Item]:
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
            tags = _tags_field(rec.get("tags"))
            caption = rec.get("caption")
            if caption is not None and not isinstance(caption, str):
                raise Rejected("invalid_metadata", "caption must be a string")
            if caption:
                tags += extract_hashtags(caption)
            meta = rec.get("meta") or {}
            if not isinstance(meta, dict):
                raise Rejected("invalid_metadata", "meta must be an object")
            data = _read_file(root, rel, max_bytes)
        except Rejected as r:
            yield Rejection(sid, origin, r.reason, r.detail)
            continue
        yield RawSample(sid, origin, data, tags, caption, dict(meta, path=rel))


def _iter_imagefolder(unit: WorkUnit, max_bytes: int) -> Iterator[Item]:
    root = Path(unit.root)
    for rel in unit.files:
        cls = rel.split("/", 1)[0]
        try:
            data = _read_file(root, rel, max_bytes)
        except Rejected as r:
            yield Rejection(rel, f"{root}/{rel}", r.reason, r.detail)
            continue
        yield RawSample(rel, f"{root}/{rel}", data, [cls], None, {"label": cls, "path": rel})


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _decode_utf8(b: bytes, what: str) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("invalid_utf8", f"{what}: {exc}"[:200]) from exc


def _iter_img2dataset(unit: WorkUnit, max_bytes: int) -> Iterator[Item]:
    assert unit.tar is not None  # plan_units gives every img2dataset unit its tar
    tar_path = Path(unit.tar)
    tname = tar_path.name
    try:
        tf = tarfile.open(tar_path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield Rejection(tname, str(tar_path), "unreadable_input", f"{type(exc).__name__}: {exc}"[:200])
        return
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    truncated: str | None = None
    last_key: str | None = None  # the sample the archive ends in, if it is truncated
    with tf:
        while True:
            try:
                m = tf.next()
            except (tarfile.TarError, OSError, EOFError) as exc:
                truncated = f"{type(exc).__name__}: {exc}"[:200]
                break
            if m is None:
                break
            name = m.name
            if m.isdir():
                continue
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts or not m.isfile():
                kind = (
                    "absolute or '..' path"
                    if (name.startswith("/") or ".." in parts)
                    else f"non-regular member (type {m.type!r})"
                )
                yield Rejection(name, f"{tar_path}#{name}", "unsafe_member", kind)
                continue
            key, ext = _split_key(name)
            groups.setdefault(key, {})[ext] = m
            last_key = key
        for key in sorted(groups):
            members = groups[key]
            origin = f"{tar_path}#{key}"
            try:
                if truncated and key == last_key:
                    raise Rejected("truncated_tar", f"the archive ends inside this sample (members: {sorted(members)})")
                img_ext = next((e for e in IMAGE_EXTS if e in members), None)
                if img_ext is None:
                    raise Rejected("missing_image", f"members: {sorted(members)}")
                if "json" not in members:
                    raise Rejected("missing_json", f"members: {sorted(members)}")
                blobs = {}
                for ext in (img_ext, "json", "txt"):
                    if ext in members:
                        if members[ext].size > max_bytes:
                            raise Rejected("file_too_large", f"{ext}: {members[ext].size} bytes")
                        fh = tf.extractfile(members[ext])
                        blobs[ext] = fh.read() if fh else b""
                        if len(blobs[ext]) != members[ext].size:
                            raise Rejected("truncated_tar", f"{ext} member is cut short")
                meta = json.loads(_decode_utf8(blobs["json"], "json"))
                if not isinstance(meta, dict):
                    raise Rejected("invalid_metadata", "json member must be an object")
                status = meta.get("status", "success")
                if status != "success":
                    raise Rejected("download_failed", f"status={status!r} {meta.get('error_message') or ''}"[:200])
                caption = _decode_utf8(blobs["txt"], "txt") if "txt" in blobs else meta.get("caption")
                if caption is not None and not isinstance(caption, str):
                    raise Rejected("invalid_metadata", "caption must be a string")
                tags = _tags_field(meta.get("tags")) + _tags_field(meta.get("hashtags"))
                tags += extract_hashtags(caption or "")
                sid = str(meta.get("key") or key)
                keep = {k: meta[k] for k in ("url", "original_width", "original_height", "sha256") if k in meta}
                yield RawSample(sid, origin, blobs[img_ext], tags, caption, dict(keep, tar=tname, member_key=key))
            except Rejected as r:
                yield Rejection(key, origin, r.reason, r.detail)
            except ValueError as exc:
                yield Rejection(key, origin, "invalid_metadata", str(exc)[:200])
            except (tarfile.TarError, OSError, EOFError) as exc:
                yield Rejection(key, origin, "truncated_tar", f"{type(exc).__name__}: {exc}"[:200])
    if truncated:
        yield Rejection(f"{tname}#truncated", str(tar_path), "truncated_tar", truncated)


def iter_unit(unit: WorkUnit, max_file_bytes: int) -> Iterator[Item]:
    """Yield every input sample of ``unit`` as a :class:`RawSample` or :class:`Rejection`.

    Never raises for bad input: unreadable files and archives become rejections.
    """
    if unit.format == "folder":
        yield from _iter_folder(unit, max_file_bytes)
    elif unit.format == "imagefolder":
        yield from _iter_imagefolder(unit, max_file_bytes)
    else:
        yield from _iter_img2dataset(unit, max_file_bytes)


__all__ = ["WorkUnit", "RawSample", "Rejection", "plan_units", "iter_unit", "IMAGE_EXTS"]
