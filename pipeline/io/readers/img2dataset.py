"""``img2dataset``: WebDataset tars as img2dataset writes them (``KEY.jpg|png|webp``, ``KEY.txt``
caption, ``KEY.json`` with ``key``, ``status``, ``caption`` and optional ``tags``/``hashtags``).
Members need not be in key order. A unit is one tar. The sample's tags are its ``tags`` and
``hashtags`` fields; the ingest worker adds the ``#words`` of its caption.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from pipeline.errors import Rejected
from pipeline.io.manifest import stat_fingerprint
from pipeline.io.readers.base import IMAGE_EXTS, Item, RawSample, Rejection, WorkUnit, tags_field


def plan(src: Any, base: dict, first: int, shard_size: int) -> tuple[list[WorkUnit], dict]:
    """One unit per ``*.tar`` of the source root (sorted), numbered from ``first``; ``shard_size`` is unused.

    Raises:
        FileNotFoundError: the root holds no ``.tar`` file.
    """
    root = Path(base["root"])
    tars = sorted(root.glob("*.tar"))
    if not tars:
        raise FileNotFoundError(f"source {src.name!r}: no .tar files in {root}")
    units = [WorkUnit(first + i, tar=str(t), **base) for i, t in enumerate(tars)]
    return units, {"root": str(root), "tars": len(tars), "stat": stat_fingerprint(tars)}


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


def read(unit: WorkUnit, max_bytes: int) -> Iterator[Item]:
    """Every sample of one tar (grouped by key, in key order), or a :class:`Rejection`; never raises for bad input."""
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
                tags = tags_field(meta.get("tags")) + tags_field(meta.get("hashtags"))
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
