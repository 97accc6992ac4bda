"""What every raw-format reader shares: the work unit, the raw sample, a rejection while reading,
the reader interface, and the checked file read.

A reader (:class:`Reader`) has two functions: ``plan(src, base, first, shard_size)`` cuts one
configured source (``data.sources[i]``, its shared unit fields ``base`` from :func:`unit_base`)
into :class:`WorkUnit` s numbered from ``first``
and returns them with the source's input fingerprint (for the stage key); ``read(unit,
max_bytes)`` yields, for one unit, a :class:`RawSample` or a :class:`Rejection` per input
sample, in a deterministic order, and never raises for bad input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, NamedTuple, Union

from pipeline.errors import Rejected

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "svg")


@dataclass
class WorkUnit:
    """One independent piece of ingest work; unit ``number`` becomes shard ``number``.

    ``start``/``count`` select samples: a byte offset and line count in a JSONL index, a
    row's byte offset and row count in a CSV index, or items of ``files`` (imagefolder). ``tar`` is
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
    """An input sample before validation: encoded bytes, the unnormalized tags of its tags
    fields and its caption (the ingest worker adds the caption's ``#hashtags`` to the tags)."""

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


class Reader(NamedTuple):
    """One raw format: ``plan(src, base, first, shard_size) -> (units, fingerprint)`` and
    ``read(unit, max_bytes) -> Iterator[RawSample | Rejection]``."""

    plan: Callable[[Any, dict, int, int], tuple[list[WorkUnit], dict]]
    read: Callable[[WorkUnit, int], Iterator[Item]]


def unit_base(src: Any, fmt: str, default_encoding: str) -> dict:
    """The fields every unit of source ``src`` shares (``source``, ``format``, ``root``, ``encoding``).

    Raises:
        FileNotFoundError: naming the source, when its root folder does not exist.
    """
    enc = (str(src.encoding) if src.encoding else None) or default_encoding
    root = Path(src.root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"source {src.name!r}: root folder {root} does not exist (run `make demo` or data_tools.fetch_demo?)"
        )
    return dict(source=src.name, format=fmt, root=str(root), encoding=enc)


def read_file(root: Path, rel: str, max_bytes: int) -> bytes:
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


def tags_field(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [t for t in value.replace(",", " ").split() if t]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return list(value)
    raise Rejected("invalid_metadata", f"tags must be a list of strings, got {type(value).__name__}")
