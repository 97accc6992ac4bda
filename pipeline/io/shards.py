"""Canonical shards: WebDataset tars written once by ingest, read by every later stage through one reader.

A shard ``shards/NNNNNN.tar`` holds, per sample with key ``UUUUUU_PPPPPP`` (unit, position;
:func:`shard_key` / :func:`parse_key`), an image member (``.jpg``, ``.webp`` or ``.png``)
and a ``.json`` member with at least ``id``, ``source``, ``hashtags`` (normalized),
``width``, ``height`` (stored px), ``orig_width``, ``orig_height``, ``sha256`` (of the
canonical decoded pixels) and ``meta``. Tars are plain WebDataset shards (``webdataset``
reads them as they are; timm's WebDataset reader is built on it), byte-reproducible (fixed mtime, owner and mode) and
written atomically.

Beside each tar, ingest writes its **index** ``shards/NNNNNN.index.parquet`` (:mod:`pipeline.io.shard_index`;
the idea of webdataset's ``wids`` index, extended, in columns): per sample the key, every member's byte offset
and size in the tar, the metadata (the ``.json`` member's content, so nothing needs to read the tar for it),
and the perceptual hashes of the canonical pixels at 64 and 256 bits
(:func:`pipeline.vision.near_index.perceptual_hash`), computed once while ingest holds the pixels.
The index records the tar's size; an index that disagrees with its tar is refused. The JSON index of an
older ingest (``NNNNNN.index.json``) is read the same way.

:class:`ShardReader` is the one reader: the dedup stage (codes, no decoding), vocab
(metadata), the training loader (image bytes by offset), the audit, the benchmarks and
``data_tools.inspect_shards``. A shard without an index (ingested before it existed, or
any foreign WebDataset tar) is indexed on the fly from its tar headers, in memory only;
its perceptual hashes are then computed from the stored pixels (slower, and for JPEG
shards not exactly the canonical pixels): re-run ingest to get them from the index.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import pyarrow as pa
import webdataset as wds

from pipeline.io.atomic import atomic_path
from pipeline.io.manifest import read_manifest, stage_dir
from pipeline.io.shard_index import code_column, codes_of, index_path, index_table, json_index_path, read_index, write_index

log = logging.getLogger(__name__)

IMAGE_MEMBER_EXTS = ("jpg", "webp", "png")
_WARNED: set[str] = set()  # shards without an index already warned about in this process


def shard_key(shard: int, position: int) -> str:
    """The key of the sample at ``position`` of shard ``shard``: ``UUUUUU_PPPPPP`` (zero-padded)."""
    return f"{int(shard):06d}_{int(position):06d}"


def parse_key(key: str) -> tuple[int, int]:
    """``(shard number, position)`` of a key ``UUUUUU_PPPPPP``.

    Raises:
        ValueError: ``key`` is not of that form.
    """
    unit, sep, pos = str(key).partition("_")
    if not (sep and len(unit) == 6 and unit.isdigit() and pos.isdigit()):
        raise ValueError(f"not a shard key (UUUUUU_PPPPPP): {key!r}")
    return int(unit), int(pos)


def shard_of_keys(keys) -> np.ndarray:
    """int64 (N,): the shard number of each key (see :func:`parse_key`)."""
    return np.array([parse_key(k)[0] for k in keys], dtype=np.int64)


def split_member(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a tar member name: WebDataset's rule (key up to the first dot of the base name)."""
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext


def _scan(path: Path) -> tuple[list[str], dict[str, dict[str, list[int]]]]:
    """(member names in tar order, key -> {ext: [offset, size]}) from the tar headers (regular files only)."""
    names: list[str] = []
    members: dict[str, dict[str, list[int]]] = {}
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            if not m.isfile():
                continue
            names.append(m.name)
            key, ext = split_member(m.name)
            members.setdefault(key, {}).setdefault(ext, [m.offset_data, m.size])
    return names, members


class AtomicShardWriter:
    """Write one tar shard and its index under temp names; :meth:`commit` renames them into place.

    Use as a context manager: leaving the block without :meth:`commit` (an exception)
    deletes the temp files. Samples are dicts ``{"__key__": str, ext: bytes, ...}``; each
    :meth:`write` may give the sample's index entries (``meta``: the metadata dict,
    ``phash``: ``{hash_size: uint8 codes}``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._fh = open(self._tmp, "wb")
        self._tw = wds.TarWriter(self._fh, encoder=False, mtime=0.0, user="pipeline", group="pipeline", mode=0o444)
        self._rows: list[dict] = []
        self.count = 0
        self._done = False

    def write(self, sample: dict, meta: dict | None = None, phash: dict[int, np.ndarray] | None = None) -> None:
        """Append one sample (all values bytes) and remember its index entries."""
        self._tw.write(sample)
        row: dict = {"key": sample["__key__"]}
        if meta is not None:
            row["meta"] = meta
        if phash:
            row["phash"] = {str(k): bytes(np.asarray(v, np.uint8)).hex() for k, v in sorted(phash.items())}
        self._rows.append(row)
        self.count += 1

    def commit(self) -> None:
        """Close the tar, write the index (offsets from the tar as written), fsync and rename both into place."""
        self._tw.close()
        self._fh.close()
        _, members = _scan(self._tmp)
        rows = [{**r, "members": members[r["key"]]} for r in self._rows]
        write_index(self.path, self._tmp.stat().st_size, index_table(rows))
        json_index_path(self.path).unlink(missing_ok=True)  # an older ingest's index of a shard now rewritten
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

    def __enter__(self) -> AtomicShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort(exc)


def read_exact(fh: BinaryIO, offset: int, size: int, path: str | os.PathLike) -> bytes:
    """``size`` bytes at ``offset`` of the open tar ``fh`` (``path`` names it in the error).

    Raises:
        RuntimeError: fewer bytes are left (a truncated shard).
    """
    fh.seek(offset)
    blob = fh.read(size)
    if len(blob) != size:
        raise RuntimeError(f"shard {path} is truncated at byte {offset}")
    return blob


class ShardReader:
    """One shard tar through its index: members by byte offset, metadata and perceptual hashes by key.

    Args:
        path: the tar.
        require_index: refuse a tar without an index (else it is indexed on the fly from its
            headers, in memory, with a warning unless ``warn_unindexed`` is False: tools that
            read any WebDataset tar).

    Attributes:
        path: the tar; ``keys``: sample keys in tar order; ``indexed``: whether an index file was read.

    Raises:
        FileNotFoundError: the tar is missing, or has no index and ``require_index``.
        ValueError: the index is of another format or disagrees with the tar's size
            (the tar was changed after ingest: re-run ingest).
        tarfile.TarError, OSError: the tar cannot be read.
    """

    def __init__(self, path: str | os.PathLike, require_index: bool = False, warn_unindexed: bool = True) -> None:
        self.path = Path(path)
        self._fh: io.BufferedReader | None = None
        table = read_index(self.path)
        self.table = table  # the index as an Arrow table (None: indexed from the tar headers)
        self._meta: dict[str, dict] = {}
        if table is not None:
            self.indexed = True
            keys = table.column("key").to_pylist()
            self.members = {
                k: {m["ext"]: (m["offset"], m["size"]) for m in ms} for k, ms in zip(keys, table.column("members").to_pylist())
            }
            self._meta_json = dict(zip(keys, table.column("metadata").to_pylist()))
        else:
            ip = index_path(self.path)
            if require_index:
                raise FileNotFoundError(
                    f"{self.path} has no index ({ip.name}): it was ingested before the shard index existed; re-run ingest"
                )
            if warn_unindexed and str(self.path) not in _WARNED:
                _WARNED.add(str(self.path))  # once per shard and process (loader workers open shards every epoch)
                log.warning(
                    "%s has no index (%s): indexing it from its tar headers (in memory); re-run ingest to write one",
                    self.path,
                    ip.name,
                )
            self.indexed = False
            self._meta_json = {}
            _, m = _scan(self.path)
            self.members = {k: {e: (v[0], v[1]) for e, v in exts.items()} for k, exts in m.items()}
        self.keys = list(self.members)

    def __len__(self) -> int:
        return len(self.keys)

    # -- bytes ------------------------------------------------------------------------------
    def read_range(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of the tar (the file is kept open; see :meth:`close`).

        Raises:
            RuntimeError: fewer bytes are left (a truncated shard).
        """
        fh = self._fh
        if fh is None:
            fh = self._fh = open(self.path, "rb")
        return read_exact(fh, offset, size, self.path)

    def read(self, key: str, ext: str) -> bytes:
        """The bytes of member ``<key>.<ext>``. Raises KeyError if the shard has no such member."""
        off, size = self.members[key][ext]
        return self.read_range(off, size)

    def image_member(self, key: str) -> tuple[str, int, int]:
        """``(extension, byte offset, byte size)`` of the image member of ``key``.

        Raises:
            KeyError: no such sample, or it has no image member.
        """
        exts = self.members[key]
        for e in IMAGE_MEMBER_EXTS:
            if e in exts:
                return (e, *exts[e])
        raise KeyError(f"{key} has no image member ({', '.join(IMAGE_MEMBER_EXTS)}) in {self.path}")

    def image_offsets(self) -> dict[str, tuple[int, int]]:
        """``{key: (byte offset, byte size)}`` of every sample's image member."""
        out = {}
        for k, exts in self.members.items():
            e = next((e for e in IMAGE_MEMBER_EXTS if e in exts), None)
            if e is not None:
                out[k] = exts[e]
        return out

    def sample(self, key: str) -> dict:
        """``{"__key__": key, ext: bytes, ...}``: every member of one sample, as webdataset yields it."""
        return {"__key__": key, **{e: self.read(key, e) for e in self.members[key]}}

    def __iter__(self) -> Iterator[dict]:
        """Every sample in tar order (see :meth:`sample`)."""
        for k in self.keys:
            yield self.sample(k)

    # -- metadata and hashes ------------------------------------------------------------------
    def metadata(self, key: str) -> dict:
        """The sample's metadata (its ``.json`` member), from the index where it has it."""
        m = self._meta.get(key)
        if m is None:
            text = self._meta_json.get(key)
            m = self._meta[key] = json.loads(text if text is not None else self.read(key, "json"))
        return m

    def iter_metadata(self) -> Iterator[tuple[str, dict]]:
        """``(key, metadata)`` of every sample with a ``.json`` member, in tar order."""
        for k in self.keys:
            if self._meta_json.get(k) is not None or "json" in self.members[k]:
                yield k, self.metadata(k)

    def index_codes(self, hash_size: int) -> tuple[np.ndarray, list[int]]:
        """The perceptual hashes the index holds (computed by ingest on the canonical pixels).

        Returns:
            ``(codes, missing)``: uint8 ``(len(keys), hash_size**2 // 8)`` in ``keys`` order, and
            the rows whose sample has no code of this size in the index (zeros there; a shard
            written without an index). :func:`pipeline.vision.dedup_codes.shard_codes` fills them
            from the decoded stored images.
        """
        if self.table is None or code_column(hash_size) not in self.table.column_names:
            return np.zeros((len(self.keys), hash_size * hash_size // 8), np.uint8), list(range(len(self.keys)))
        out, valid = codes_of(self.table, hash_size)
        return out, np.flatnonzero(~valid).tolist()

    def close(self) -> None:
        """Close the tar file (reopened on the next read)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def index_columns(path: str | os.PathLike, columns: list[str]) -> pa.Table:
    """``columns`` of a shard's index (:data:`pipeline.io.shard_index.SCHEMA`), one row per sample in tar order, read
    by column from the index file; a shard without an index is indexed from its tar (metadata members read, no
    perceptual hashes: those columns null) with :class:`ShardReader`'s warning.

    Raises:
        ValueError: the index disagrees with the tar or is of another format (re-run ingest).
        KeyError: a column the index has not.
        OSError, tarfile.TarError: the shard cannot be read.
    """
    table = read_index(path, columns)
    if table is not None:
        return table
    with ShardReader(path) as r:
        rows = [{"key": k, "members": {e: list(v) for e, v in r.members[k].items()}} for k in r.keys]
        for row in rows:
            if "json" in r.members[row["key"]]:
                row["meta"] = r.metadata(row["key"])
    return index_table(rows).select(columns)


def iter_metadata(paths: list[Path] | list[str]) -> Iterator[tuple[str, str, dict]]:
    """Yield ``(shard name, key, json metadata)`` for every sample, from the shard indexes (no tar scan)."""
    for p in paths:
        with ShardReader(p) as r:
            for key, meta in r.iter_metadata():
                yield Path(p).name, key, meta


def iter_samples(paths: list[Path] | list[str]) -> Iterator[dict]:
    """Yield raw samples ``{"__key__", "__url__", "json": bytes, "<img ext>": bytes}`` in shard order.

    Uses webdataset's own tar reader with no shuffling and no splitting (one process): the
    check that the shards are plain WebDataset tars.
    """
    ds = wds.WebDataset([str(p) for p in paths], shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
    yield from ds


@functools.lru_cache(maxsize=64)  # a bound: a rank streams thousands of shards, each a dict of ~1 MB
def _image_offsets(path: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
    with ShardReader(path) as reader:
        return reader.image_offsets()


def member_offsets(path: str | Path) -> dict[str, tuple[int, int]]:
    """``{sample key: (byte offset, byte size)}`` of each sample's image member in a shard tar.

    From the shard's index (:class:`pipeline.io.shards.ShardReader`), cached per process by
    path, size and modification time (the last 64 shards read), so the training and held-out
    streams share it.

    Raises:
        OSError, ValueError, tarfile.ReadError: the shard or its index cannot be read.
    """
    st = os.stat(path)
    return _image_offsets(str(path), st.st_size, st.st_mtime_ns)
