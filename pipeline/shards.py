"""Canonical shards: WebDataset tars written once by ingest, read by every later stage.

A shard ``shards/NNNNNN.tar`` holds, per sample with key ``UUUUUU_PPPPPP`` (unit, position),
an image member (``.jpg``, ``.webp`` or ``.png``) and a ``.json`` member with at least
``id``, ``source``, ``hashtags`` (normalized), ``width``, ``height`` (stored px),
``orig_width``, ``orig_height``, ``sha256`` (of the canonical decoded pixels) and ``meta``.
Tars are byte-reproducible (fixed mtime, owner and mode) and written atomically.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Iterator

import webdataset as wds

from pipeline.atomic import atomic_path
from pipeline.manifest import read_manifest, stage_dir

IMAGE_MEMBER_EXTS = ("jpg", "webp", "png")


class AtomicShardWriter:
    """Write one tar shard under a temp name; :meth:`commit` renames it into place.

    Use as a context manager: leaving the block without :meth:`commit` (an exception)
    deletes the temp file. Samples are dicts ``{"__key__": str, ext: bytes, ...}``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._fh = open(self._tmp, "wb")
        self._tw = wds.TarWriter(self._fh, encoder=False, mtime=0.0, user="pipeline", group="pipeline", mode=0o444)
        self.count = 0
        self._done = False

    def write(self, sample: dict) -> None:
        """Append one sample (all values bytes)."""
        self._tw.write(sample)
        self.count += 1

    def commit(self) -> None:
        """Close, fsync and rename the shard into place."""
        self._tw.close()
        self._fh.close()
        self._done = True
        self._ctx.__exit__(None, None, None)

    def abort(self, exc: BaseException | None = None) -> None:
        """Close and delete the temp file."""
        if self._done:
            return
        self._done = True
        try:
            self._tw.close()
        finally:
            self._fh.close()
            err = exc or RuntimeError("shard write aborted")
            try:
                self._ctx.__exit__(type(err), err, None)
            except BaseException:
                pass

    def __enter__(self) -> "AtomicShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort(exc)


def shard_paths(run_dir: str | os.PathLike) -> list[Path]:
    """The canonical shards of a run, in order, from the ingest manifest.

    Raises:
        FileNotFoundError: if ingest has not finished in ``run_dir``.
    """
    d = stage_dir(run_dir, "ingest")
    man = read_manifest(d)
    if man is None:
        raise FileNotFoundError(f"no finished ingest stage in {run_dir} (missing {d}/manifest.json)")
    return [d / s["path"] for s in man["outputs"]["shards"]]


def iter_metadata(paths: list[Path] | list[str]) -> Iterator[tuple[str, str, dict]]:
    """Yield ``(shard name, key, json metadata)`` for every sample, without decoding images."""
    for p in paths:
        with tarfile.open(p, "r:") as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    fh = tf.extractfile(m)
                    yield Path(p).name, m.name[: -len(".json")], json.load(fh)


def iter_samples(paths: list[Path] | list[str]) -> Iterator[dict]:
    """Yield raw samples ``{"__key__", "__url__", "json": bytes, "<img ext>": bytes}`` in shard order.

    Uses webdataset's tar reader with no shuffling and no splitting (one process).
    """
    ds = wds.WebDataset([str(p) for p in paths], shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
    yield from ds
