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
    "concat_shard_labels",
    "FRACTION_BUCKETS",
    "HELDOUT_BUCKETS",
    "SHARD_TABLE",
    "publish_shard_labels",
    "read_shard_labels",
    "read_shard_table",
    "shard_labels_path",
    "staging_folder",
    "write_shard_file",
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


def write_shard_file(
    folder: Path, shard: int, keys: np.ndarray, ids: np.ndarray, indptr: np.ndarray, indices: np.ndarray, weights: dict
) -> dict:
    """Write one shard's labels file ``<folder>/NNNNNN.parquet`` (the columns of the module docstring).

    Args:
        keys: str (n,), the shard's keys, sorted; ``ids``: str (n,); ``indptr`` int64 (n+1,) and ``indices`` int
            (nnz,): CSR class ids; ``weights``: scheme -> float64 (n,).

    Returns:
        The shard's row of the shard table: ``{"shard", "samples", "bytes", "expected_<scheme>": sum of its weights}``.
    """
    schemes = sorted(weights)
    lo = int(indptr[0])
    offsets = (indptr - lo).astype(np.int32)
    values = np.asarray(indices[lo : int(indptr[-1])]).astype(np.int32)
    cols = {
        "key": pa.array(keys.tolist(), pa.string()),
        "id": pa.array(ids.tolist(), pa.string()),
        "classes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
        **{f"weight_{s}": pa.array(np.asarray(weights[s], dtype=np.float64)) for s in schemes},
        **{c: pa.array(key_buckets(salt, keys, mod).astype(np.int32)) for c, (salt, mod) in BUCKET_COLUMNS.items()},
    }
    path = shard_labels_path(folder, int(shard))
    pq.write_table(pa.table(cols), path, compression="zstd")
    return {
        "shard": int(shard),
        "samples": int(keys.size),
        "bytes": path.stat().st_size,
        **{f"expected_{s}": float(np.sum(weights[s], dtype=np.float64)) for s in schemes},
    }


def staging_folder(folder: str | Path) -> Path:
    """A fresh, empty sibling of ``folder`` to write a stage's shard files into (:func:`publish_shard_labels` then
    replaces ``folder`` with it)."""
    tmp = Path(folder).with_name(Path(folder).name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_shard_labels(folder: str | Path, rows: list[dict]) -> dict:
    """Write the shard table of ``rows`` (:func:`write_shard_file`'s, in shard order) into the staging folder and
    replace ``folder`` with it: a reader never sees a mix of two vocab runs (the stage's manifest, written last,
    says whether the whole stage finished). Returns ``{"shards": files, "bytes": their total size}``."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    schemes = sorted(k[len("expected_") :] for k in (rows[0] if rows else {}) if k.startswith("expected_"))
    table = pa.table(
        {
            "shard": pa.array([r["shard"] for r in rows], pa.int64()),
            "samples": pa.array([r["samples"] for r in rows], pa.int64()),
            **{f"expected_{s}": pa.array([r[f"expected_{s}"] for r in rows], pa.float64()) for s in schemes},
        }
    )
    pq.write_table(table, tmp / SHARD_TABLE)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return {"shards": len(rows), "bytes": int(sum(r["bytes"] for r in rows))}


def write_shard_labels(
    folder: str | Path,
    keys: np.ndarray,
    ids: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    weights: dict[str, np.ndarray],
) -> dict:
    """Write the per-shard labels of whole-corpus arrays and the shard table into ``folder`` (replacing what was
    there; :func:`write_shard_file` per shard, then :func:`publish_shard_labels`).

    Args:
        folder: ``<run_dir>/vocab/shard_labels``.
        keys: str (N,), shard keys ``UUUUUU_PPPPPP``, sorted (so each shard's rows are contiguous);
            ``ids``: str (N,); ``indptr``: int64 (N+1,), ``indices``: int32 (nnz,): CSR class ids;
            ``weights``: scheme -> float64 (N,).

    Returns:
        ``{"shards": files written, "bytes": their total size}``.

    Raises:
        ValueError: ``keys`` are not sorted or not shard keys.
    """
    n = int(keys.size)
    if n > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        raise ValueError("write_shard_labels: keys must be sorted and unique")
    shard = shard_of_keys(keys) if n else np.zeros(0, dtype=np.int64)
    bounds = np.flatnonzero(np.diff(shard)) + 1
    starts = np.concatenate([[0], bounds]) if n else np.zeros(0, dtype=np.int64)
    ends = np.concatenate([bounds, [n]]) if n else np.zeros(0, dtype=np.int64)
    tmp = staging_folder(folder)
    rows = [
        write_shard_file(
            tmp, int(shard[a]), keys[a:b], ids[a:b], indptr[a : b + 1], indices, {s: w[a:b] for s, w in weights.items()}
        )
        for a, b in zip(starts.tolist(), ends.tolist())
    ]
    return publish_shard_labels(folder, rows)


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


def concat_shard_labels(
    folder: str | Path, key_width: int = 1, id_width: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Every shard's labels in ``folder`` concatenated in shard (= key) order, as ``labels.npz`` holds them: keys and
    ids str (N,) of at least ``key_width`` / ``id_width`` characters, CSR indptr int64 (N+1,) and indices int32
    (nnz,), scheme -> weights float64 (N,). Whole-corpus arrays: O(N) memory (the shards' Arrow tables while they are
    converted, then about 4 x (key + id characters) + 40 bytes a sample), for the whole-corpus view only
    (``vocab.whole_corpus_labels``); training reads the shards one by one."""
    table = read_shard_table(folder)
    schemes = [c[len("expected_") :] for c in table.column_names if c.startswith("expected_")]
    keys: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    weights: dict[str, list[np.ndarray]] = {s: [] for s in schemes}
    for shard in table.column("shard").to_pylist():  # one shard's Arrow table and Python strings at a time
        t = read_shard_labels(folder, shard, ["key", "id", "classes", *(f"weight_{s}" for s in schemes)])
        keys.append(np.array(t.column("key").to_pylist(), dtype=str))
        ids.append(np.array(t.column("id").to_pylist(), dtype=str))
        classes = t.column("classes").combine_chunks()
        lengths.append(np.diff(classes.offsets.to_numpy()))
        indices.append(classes.flatten().to_numpy())
        for s in schemes:
            weights[s].append(t.column(f"weight_{s}").to_numpy())
    n_len = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return (
        np.concatenate([np.zeros(0, f"<U{key_width}"), *keys]),  # numpy widens to the longest string
        np.concatenate([np.zeros(0, f"<U{id_width}"), *ids]),
        np.concatenate([[0], np.cumsum(n_len)]).astype(np.int64),
        (np.concatenate(indices) if indices else np.zeros(0)).astype(np.int32),
        {s: (np.concatenate(w) if w else np.zeros(0)).astype(np.float64) for s, w in weights.items()},
    )
