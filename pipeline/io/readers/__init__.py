"""Readers of the raw input formats ingest accepts, one module per format behind a registry.

Formats (``data.sources[i].format``, :class:`pipeline.config.RawFormat`):
:mod:`~pipeline.io.readers.folder` (an image folder plus a JSONL or CSV index),
:mod:`~pipeline.io.readers.img2dataset` (WebDataset tars as img2dataset writes them) and
:mod:`~pipeline.io.readers.imagefolder` (``<split>/<class>/<image>``). :data:`READERS` maps
each format to its :class:`~pipeline.io.readers.base.Reader`; a new format is one module and
one entry there.

:func:`plan_units` cuts every source into :class:`WorkUnit` s (a slice of an index, a slice
of a sorted listing, or one tar), numbered in source order. :func:`iter_unit` yields, for a
unit, either a :class:`RawSample` or a :class:`Rejection` per input sample, in a
deterministic order. Readers only read: hashtags in captions are the ingest worker's
(:mod:`pipeline.ingestion.worker`, through :func:`pipeline.text.hashtags.extract_hashtags`).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from pipeline.config import RawFormat
from pipeline.io.readers import folder, imagefolder, img2dataset
from pipeline.io.readers.base import IMAGE_EXTS, Item, RawSample, Reader, Rejection, WorkUnit, unit_base

READERS: dict[str, Reader] = {
    RawFormat.folder.value: Reader(folder.plan, folder.read),
    RawFormat.imagefolder.value: Reader(imagefolder.plan, imagefolder.read),
    RawFormat.img2dataset.value: Reader(img2dataset.plan, img2dataset.read),
}


def plan_units(sources: Sequence[Any], default_encoding: str, shard_size: int) -> tuple[list[WorkUnit], dict]:
    """Cut all sources into work units, numbered in source order; also each source's input fingerprint.

    Args:
        sources: ``data.sources`` entries (``name``, ``format``, ``root``, ``encoding`` and the
            format's own keys).
        default_encoding: the encoding of units whose source sets none.
        shard_size: samples per unit (index and listing formats; a tar is one unit).
    Returns:
        ``(units, {source name: fingerprint dict})``.
    Raises:
        FileNotFoundError: naming the source whose root, index or tars are missing
            (a config error: it fails before any work).
    """
    units: list[WorkUnit] = []
    fingerprints: dict = {}
    for src in sources:
        fmt = RawFormat(src.format).value
        more, fingerprints[src.name] = READERS[fmt].plan(src, unit_base(src, fmt, default_encoding), len(units), shard_size)
        units += more
    return units, fingerprints


def iter_unit(unit: WorkUnit, max_file_bytes: int) -> Iterator[Item]:
    """Yield every input sample of ``unit`` as a :class:`RawSample` or :class:`Rejection`.

    Never raises for bad input: unreadable files and archives become rejections.
    """
    yield from READERS[unit.format].read(unit, max_file_bytes)


__all__ = ["IMAGE_EXTS", "READERS", "RawSample", "Reader", "Rejection", "WorkUnit", "iter_unit", "plan_units"]
