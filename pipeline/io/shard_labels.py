"""Per-shard training metadata: each ingest shard's labels and resampling weights, in Parquet.

The vocab stage writes, beside the whole-corpus ``labels.npz`` (:mod:`pipeline.io.labels`):

- ``<run_dir>/vocab/shard_labels/NNNNNN.parquet``: one row per kept sample of ingest shard ``NNNNNN``, in key
  order: ``key`` (string), ``id`` (string), ``classes`` (list<int32>, ascending class ids) and one ``weight_<scheme>``
  (float64, the replication weight, :mod:`pipeline.text.resampling`) per scheme, and the key's hash buckets
  ``heldout_bucket`` (int32, ``item_seed("heldout", key) % 10,000``) and ``fraction_bucket`` (int32,
  ``item_seed("data_fraction", key) % 1,000,000``) that pretraining's held-out split and ``data_fraction``
  compare with a cut (:mod:`pipeline.train.sample_split`), so no rank hashes keys; a shard with no kept sample
  has no file;
- ``<run_dir>/vocab/shard_labels/shards.parquet``: the small table a shard-level epoch plan is made from, one row
  per shard with kept samples: ``shard`` (int64), ``samples`` (int64) and ``expected_<scheme>`` (float64, the sum of
  the shard's weights: its expected replicated items in an epoch).

So a training rank can read the table (shards x a few numbers) and then only the shards it trains on, in memory
independent of the corpus (issue: pretraining ranks whose memory does not grow with the corpus); the rows are the
same as ``labels.npz``'s, shard by shard (tested).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.shards import shard_of_keys
from pipeline.seeding import key_buckets

__all__ = [
    "BUCKET_COLUMNS",
    "FRACTION_BUCKETS",
    "HELDOUT_BUCKETS",
    "SHARD_TABLE",
    "read_shard_labels",
    "read_shard_table",
    "shard_labels_path",
    "write_shard_labels",
]

SHARD_TABLE = "shards.parquet"
# key hash buckets stored per sample: column -> (salt, modulus), as pipeline.train.sample_split compares them
HELDOUT_BUCKETS = 10_000  # the held-out split's hash buckets (a fraction is kept to 1e-4)
FRACTION_BUCKETS = 1_000_000  # pretrain.data_fraction's hash buckets (kept to 1e-6)
BUCKET_COLUMNS = {"heldout_bucket": ("heldout", HELDOUT_BUCKETS), "fraction_bucket": ("data_fraction", FRACTION_BUCKETS)}


def shard_labels_path(folder: str | Path, shard: int) -> Path:
    """``<folder>/NNNNNN.parquet``: the labels file of ingest shard ``shard``."""
    return Path(folder) / f"{int(shard):06d}.parquet"


def write_shard_labels(
    folder: str | Path,
    keys: np.ndarray,
    ids: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    weights: dict[str, np.ndarray],
) -> dict:
    """Write the per-shard labels and the shard table into ``folder`` (replacing what was there).

    Args:
        folder: ``<run_dir>/vocab/shard_labels``.
        keys: str (N,), shard keys ``UUUUUU_PPPPPP``, sorted (so each shard's rows are contiguous);
            ``ids``: str (N,); ``indptr``: int64 (N+1,), ``indices``: int32 (nnz,): CSR class ids;
            ``weights``: scheme -> float64 (N,).

    Returns:
        ``{"shards": files written, "bytes": their total size}``.

    The files are written into a fresh sibling folder that then replaces ``folder``: a reader never sees a
    mix of two vocab runs (the stage's manifest, written last, says whether the whole stage finished).

    Raises:
        ValueError: ``keys`` are not sorted or not shard keys.
    """
    folder = Path(folder)
    n = int(keys.size)
    if n > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        raise ValueError("write_shard_labels: keys must be sorted and unique")
    shard = shard_of_keys(keys) if n else np.zeros(0, dtype=np.int64)
    bounds = np.flatnonzero(np.diff(shard)) + 1
    starts = np.concatenate([[0], bounds]) if n else np.zeros(0, dtype=np.int64)
    ends = np.concatenate([bounds, [n]]) if n else np.zeros(0, dtype=np.int64)
    schemes = sorted(weights)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    table_rows: dict[str, list] = {"shard": [], "samples": [], **{f"expected_{s}": [] for s in schemes}}
    total = 0
    for a, b in zip(starts.tolist(), ends.tolist()):
        lo, hi = int(indptr[a]), int(indptr[b])
        offsets = (indptr[a : b + 1] - lo).astype(np.int32)
        cols = {
            "key": pa.array(keys[a:b].tolist(), pa.string()),
            "id": pa.array(ids[a:b].tolist(), pa.string()),
            "classes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(indices[lo:hi].astype(np.int32))),
            **{f"weight_{s}": pa.array(np.asarray(weights[s][a:b], dtype=np.float64)) for s in schemes},
            **{c: pa.array(key_buckets(salt, keys[a:b], mod).astype(np.int32)) for c, (salt, mod) in BUCKET_COLUMNS.items()},
        }
        path = shard_labels_path(tmp, int(shard[a]))
        pq.write_table(pa.table(cols), path, compression="zstd")
        total += path.stat().st_size
        table_rows["shard"].append(int(shard[a]))
        table_rows["samples"].append(b - a)
        for s in schemes:
            table_rows[f"expected_{s}"].append(float(np.sum(weights[s][a:b], dtype=np.float64)))
    table = pa.table(
        {
            "shard": pa.array(table_rows["shard"], pa.int64()),
            "samples": pa.array(table_rows["samples"], pa.int64()),
            **{f"expected_{s}": pa.array(table_rows[f"expected_{s}"], pa.float64()) for s in schemes},
        }
    )
    pq.write_table(table, tmp / SHARD_TABLE)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return {"shards": len(table_rows["shard"]), "bytes": total}


def read_shard_table(folder: str | Path) -> pa.Table:
    """The shard table (``shard``, ``samples``, ``expected_<scheme>``), one row per shard with kept samples.

    Raises:
        FileNotFoundError: no shard labels in ``folder`` (a vocab run before per-shard labels: re-run vocab).
    """
    path = Path(folder) / SHARD_TABLE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the vocab stage that wrote this run folder predates per-shard labels; re-run vocab"
        )
    return pq.read_table(path)


def read_shard_labels(folder: str | Path, shard: int, columns: list[str] | None = None) -> pa.Table:
    """The labels of one ingest shard (all columns, or ``columns``), in key order.

    Raises:
        FileNotFoundError: the shard has no labels file (no kept sample, or not a shard of this run).
        KeyError: a column the file has not (e.g. an unknown ``weight_<scheme>``).
    """
    path = shard_labels_path(folder, shard)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: shard {int(shard):06d} has no kept sample in this vocabulary")
    names = pq.read_schema(path).names
    for c in columns or []:
        if c not in names:
            raise KeyError(f"{path.name} has no column {c!r} (it has {names})")
    return pq.read_table(path, columns=columns)
