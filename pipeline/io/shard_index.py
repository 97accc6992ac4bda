"""The shard index: one columnar file per shard tar, ``NNNNNN.index.parquet`` (format 2), read by column.

Ingest writes it beside each tar (:class:`pipeline.io.shards.AtomicShardWriter`); every later stage reads it
instead of the tar. One row per sample, in tar order (Apache Parquet through pyarrow):

==================  =====================================  ====================================================
column              Arrow type                             what
==================  =====================================  ====================================================
``key``             string                                 the sample key ``UUUUUU_PPPPPP``
``members``         list<struct<ext, offset, size>>        every tar member: extension, byte offset and size
``id``              string (null: no metadata)             the sample id (source-prefixed)
``source``          string                                 the source name
``hashtags``        list<string>                           normalized hashtags
``sha256``          string                                 hash of the canonical decoded pixels (hex)
``width/height``    int32                                  stored size in px
``metadata``        string                                 the whole ``.json`` member as JSON (exact)
``phash64``         fixed_size_binary[8] (null: none)      64-bit perceptual hash of the canonical pixels
``phash256``        fixed_size_binary[32] (null: none)     256-bit perceptual hash
==================  =====================================  ====================================================

The file's key-value metadata holds ``format`` (2), ``tar`` (the tar's name) and ``tar_bytes`` (its size):
an index that disagrees with its tar is refused. A stage reads only the columns it needs
(:func:`read_index` with ``columns``): dedup the keys, ids, pixel hashes and codes; vocab the keys, ids and
hashtags; the loader the members. Reading the 64-bit codes of a shard is one column of 8-byte values, not a
JSON parse of the whole index (``benchmarks/shard_index.py``).

Run folders ingested before this format have ``NNNNNN.index.json`` (format 1: the same fields as JSON rows):
:func:`read_index` reads them as the same table, and :func:`upgrade_indexes`
(``python -m data_tools.upgrade_shard_index RUN_DIR``) rewrites them once as Parquet.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.atomic import write_bytes

__all__ = [
    "INDEX_FORMAT",
    "INDEX_SUFFIX",
    "JSON_INDEX_SUFFIX",
    "index_path",
    "json_index_path",
    "existing_index",
    "code_column",
    "index_table",
    "write_index",
    "read_index",
    "codes_of",
    "upgrade_indexes",
]

INDEX_FORMAT = 2
INDEX_SUFFIX = ".index.parquet"
JSON_INDEX_FORMAT = 1  # NNNNNN.index.json, written by ingest before the Parquet index
JSON_INDEX_SUFFIX = ".index.json"
HASH_SIZES = (8, 16)  # the pHash grids ingest stores per sample: 64- and 256-bit codes, a column each

_MEMBER = pa.struct([("ext", pa.string()), ("offset", pa.int64()), ("size", pa.int64())])


def code_column(hash_size: int) -> str:
    """The column holding the ``hash_size`` x ``hash_size`` perceptual hashes: ``phash64`` or ``phash256``."""
    return f"phash{hash_size * hash_size}"


SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("members", pa.list_(_MEMBER)),
        ("id", pa.string()),
        ("source", pa.string()),
        ("hashtags", pa.list_(pa.string())),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("metadata", pa.string()),
        *[(code_column(h), pa.binary(h * h // 8)) for h in HASH_SIZES],
    ]
)


def _with_suffix(shard: str | os.PathLike, suffix: str) -> Path:
    p = Path(shard)
    return p.with_name(p.name[: -len(".tar")] + suffix if p.name.endswith(".tar") else p.name + suffix)


def index_path(shard: str | os.PathLike) -> Path:
    """Where ingest writes the index of shard ``.../NNNNNN.tar``: ``.../NNNNNN.index.parquet``."""
    return _with_suffix(shard, INDEX_SUFFIX)


def json_index_path(shard: str | os.PathLike) -> Path:
    """Where an older ingest wrote the index: ``.../NNNNNN.index.json`` (format 1)."""
    return _with_suffix(shard, JSON_INDEX_SUFFIX)


def existing_index(shard: str | os.PathLike) -> Path | None:
    """The index file of a shard: the Parquet one, else a JSON one of an older ingest, else None."""
    for p in (index_path(shard), json_index_path(shard)):
        if p.is_file():
            return p
    return None


def index_table(rows: Iterable[dict]) -> pa.Table:
    """The index table of rows ``{"key", "members": {ext: [offset, size]}, "meta"?: dict, "phash"?: {str(size): hex}}``
    (the row layout of format 1), in the order given.

    Raises:
        KeyError: a row without ``key`` or ``members``.
        ValueError: a perceptual hash of the wrong length.
    """
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    for r in rows:
        meta = r.get("meta")
        cols["key"].append(r["key"])
        cols["members"].append([{"ext": e, "offset": int(v[0]), "size": int(v[1])} for e, v in r["members"].items()])
        for name in ("id", "source", "sha256"):
            cols[name].append(None if meta is None else meta.get(name))
        cols["hashtags"].append(None if meta is None else list(meta.get("hashtags", [])))
        cols["width"].append(None if meta is None else meta.get("width"))
        cols["height"].append(None if meta is None else meta.get("height"))
        cols["metadata"].append(None if meta is None else json.dumps(meta, sort_keys=True, ensure_ascii=False))
        codes = r.get("phash") or {}
        for h in HASH_SIZES:
            code = codes.get(str(h))
            blob = None if code is None else (bytes.fromhex(code) if isinstance(code, str) else bytes(code))
            if blob is not None and len(blob) != h * h // 8:
                raise ValueError(f"{r['key']}: a {h}x{h} perceptual hash of {len(blob)} bytes, not {h * h // 8}")
            cols[code_column(h)].append(blob)
    return pa.table(cols, schema=SCHEMA)


def write_index(shard: str | os.PathLike, tar_bytes: int, table: pa.Table) -> Path:
    """Write ``table`` (:func:`index_table`) as the Parquet index of shard ``shard`` (a tar of ``tar_bytes`` bytes),
    atomically; return its path. Byte-reproducible for one pyarrow version (no timestamps in the file)."""
    meta = {b"format": str(INDEX_FORMAT).encode(), b"tar": Path(shard).name.encode(), b"tar_bytes": str(int(tar_bytes)).encode()}
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf, compression="zstd")
    target = index_path(shard)
    write_bytes(target, buf.getvalue())
    return target


def _refuse(ip: Path, fmt, tar_bytes, tar: Path, size: int, expected: int) -> None:
    if fmt != expected:
        raise ValueError(f"{ip}: index format {fmt!r}, this code reads {expected}; re-run ingest")
    if tar_bytes != size:
        raise ValueError(
            f"{ip} describes a tar of {tar_bytes} bytes but {tar} has {size}: the shard changed after ingest; re-run ingest"
        )


def read_index(shard: str | os.PathLike, columns: list[str] | None = None) -> pa.Table | None:
    """The index of shard ``shard`` (a tar path) as an Arrow table of ``columns`` (all when None), in tar order, or
    None when the shard has no index. A JSON index of an older ingest is read into the same table.

    Raises:
        ValueError: the index is of another format, is not a readable index, or disagrees with the tar's size
            (the tar was changed after ingest); the message names the file and says to re-run ingest.
        FileNotFoundError: the tar is missing.
        KeyError: ``columns`` names a column the index does not have.
    """
    tar = Path(shard)
    size = tar.stat().st_size
    ip = existing_index(tar)
    if ip is None:
        return None
    if ip.name.endswith(INDEX_SUFFIX):
        try:
            pf = pq.ParquetFile(ip)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"{ip}: not a readable shard index ({exc}); re-run ingest") from exc
        kv = pf.schema_arrow.metadata or {}
        fmt = kv.get(b"format", b"").decode()
        _refuse(ip, int(fmt) if fmt.isdigit() else fmt or None, int(kv.get(b"tar_bytes", b"-1")), tar, size, INDEX_FORMAT)
        missing = [c for c in columns or [] if c not in pf.schema_arrow.names]
        if missing:
            raise KeyError(f"{ip} has no column(s) {missing}; it has {pf.schema_arrow.names}")
        return pf.read(columns=columns)
    try:
        doc = json.loads(ip.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{ip}: not a readable shard index ({exc}); re-run ingest") from exc
    _refuse(ip, doc.get("format"), doc.get("tar_bytes"), tar, size, JSON_INDEX_FORMAT)
    table = index_table(doc["samples"])
    return table if columns is None else table.select(columns)


def codes_of(table: pa.Table, hash_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The perceptual hashes of an index table: uint8 ``(rows, hash_size**2 // 8)`` (zeros where there is none) and
    a bool ``(rows,)`` mask of the rows that have one. No Python object per row."""
    nbytes = hash_size * hash_size // 8
    col = table.column(code_column(hash_size)).combine_chunks()
    out = np.zeros((len(col), nbytes), np.uint8)
    valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
    if valid.any():
        data = np.frombuffer(col.buffers()[1], np.uint8)[col.offset * nbytes : (col.offset + len(col)) * nbytes]
        out[:] = data.reshape(len(col), nbytes)
        out[~valid] = 0
    return out, valid


def upgrade_indexes(shards: Iterable[str | os.PathLike]) -> tuple[int, int]:
    """Rewrite the JSON index (format 1) of each shard as its Parquet index, then delete the JSON file.

    Each rewrite is atomic and checked (the Parquet index read back equals the JSON one) before the JSON file goes;
    a shard that already has a Parquet index is left as it is. Returns ``(rewritten, already Parquet)``.

    Raises:
        ValueError: an index that disagrees with its tar (see :func:`read_index`); nothing of that shard is changed.
        FileNotFoundError: a shard with no index at all (re-run ingest).
    """
    done = kept = 0
    for shard in shards:
        ip = existing_index(shard)
        if ip is None:
            raise FileNotFoundError(f"{shard} has no index: re-run ingest")
        if ip.name.endswith(INDEX_SUFFIX):
            kept += 1
            continue
        table = read_index(shard)
        assert table is not None
        write_index(shard, Path(shard).stat().st_size, table)
        if not read_index(shard).equals(table):  # type: ignore[union-attr]
            index_path(shard).unlink()
            raise ValueError(f"{shard}: the Parquet index did not read back as its JSON index; the JSON one is kept")
        ip.unlink()
        done += 1
    return done, kept
