"""The dedup stage's work that runs on the data engine: per-shard scans and the partitioned near-duplicate search.

Functions of one item and a small shared table, run by a :class:`pipeline.executor.Executor` (in process, a pool,
or Ray tasks). The driver (:mod:`pipeline.dedup`) keeps numpy arrays only (40 bytes a sample at 64-bit codes: the
code, a 128-bit pixel digest and a 128-bit id digest) and makes the decisions (:mod:`pipeline.vision.duplicates`).

1. :func:`scan_shard`: one shard's ``key``, ``id``, ``sha256`` and code columns (Parquet, by column), in key order,
   withdrawn ids split off; the digests; and the shard's pairs with the eval images (an index over the eval codes,
   which are few, queried with the shard's codes; plus equal pixel digests).
2. :func:`near_pairs`: the near-duplicate pairs among the *distinct* codes of the survivors, as a join by band
   (multi-index hashing done as a shuffle; Norouzi et al. 2012): each code is cut into ``radius + 1`` bands, and two
   codes within ``radius`` bits agree exactly on at least one band (pigeonhole). Each band value is hashed to one of
   ``P`` partitions (:func:`band_partitions`); a partition holds every code one of whose bands hashes to it, and
   its exact radius search (:func:`pipeline.vision.near_index.build_index`) finds every pair that agrees on a band
   of that partition. A pair is reported by the partition of the first band it agrees on only, so each pair comes
   back once, whatever ``P``. Identical codes (a family of blank or logo images) are one distinct code, so such a
   family costs one code, not k^2 pairs.
3. :func:`shard_rows`: a shard's part of ``index_keys.txt`` and the keys and ids of the removed samples and of the
   samples they point to, re-read from the key and id columns.

A shard's positions are its non-withdrawn samples in key order; every pass re-derives them the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.io.shard_index import code_column, codes_of
from pipeline.io.shards import ShardReader, index_columns
from pipeline.vision.dedup_codes import shard_codes
from pipeline.vision.near_index import build_index, range_pairs

__all__ = [
    "DIGEST_BYTES",
    "ScanShared",
    "ShardScan",
    "band_partitions",
    "near_pairs",
    "partition_items",
    "scan_shard",
    "shard_rows",
]

DIGEST_BYTES = 16  # 128-bit digests of the pixel SHA-256 (its first half) and of the id (BLAKE2b): no collision in 10^9


@dataclass(frozen=True)
class ScanShared:
    """What every :func:`scan_shard` call needs: the pHash grid, the withdrawn ids and the eval images.

    Attributes:
        hash_size: ``dedup.hash_size`` (8: 64-bit codes).
        withdrawn: ids (``source:id``) never compared, only listed.
        eval_codes: uint8 (E, hash_size**2 / 8), the eval images' pHashes; ``eval_sha``: their pixel SHA-256 (hex).
        eval_radius: ``dedup.eval_radius``, Hamming bits.
    """

    hash_size: int
    withdrawn: frozenset[str] = frozenset()
    eval_codes: np.ndarray | None = None
    eval_sha: tuple[str, ...] = ()
    eval_radius: int = 0


@dataclass
class ShardScan:
    """One shard's candidates, in key order (withdrawn samples left out).

    Attributes:
        n: samples compared (non-withdrawn).
        codes: uint8 (n, nbytes); ``sha``, ``idh``: uint8 (n, 16), digests of the pixel SHA-256 and of the id.
        withdrawn: ``[key, id]`` of the withdrawn samples (key order).
        eval_rows, eval_q, eval_dist: int64 (m,), the shard's pairs with eval images within the eval radius or with
            the same pixels (distance 0): row (position in this shard), eval image (index into the eval list), bits.
        first_key, last_key: the shard's smallest and largest key ('' when empty), for the output's key order.
    """

    n: int
    codes: np.ndarray
    sha: np.ndarray
    idh: np.ndarray
    withdrawn: list = field(default_factory=list)
    eval_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    eval_q: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    eval_dist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    first_key: str = ""
    last_key: str = ""


def _digest(values: list[str], fn) -> np.ndarray:
    out = np.zeros((len(values), DIGEST_BYTES), np.uint8)
    if values:
        out[:] = np.frombuffer(b"".join(fn(v) for v in values), np.uint8).reshape(len(values), DIGEST_BYTES)
    return out


def _sha_digest(hexes: list[str]) -> np.ndarray:
    return _digest(hexes, lambda h: bytes.fromhex(h)[:DIGEST_BYTES])


def _id_digest(ids: list[str]) -> np.ndarray:
    return _digest(ids, lambda i: hashlib.blake2b(i.encode("utf-8"), digest_size=DIGEST_BYTES).digest())


def _positions(path: str | Path, withdrawn: frozenset[str], columns: list[str]):
    """The shard's ``columns`` (key and id first) and the rows of its positions: non-withdrawn samples in key order."""
    table = index_columns(path, ["key", "id", *columns])
    keys, ids = table.column("key").to_pylist(), table.column("id").to_pylist()
    order = sorted(range(len(keys)), key=keys.__getitem__)
    rows = [i for i in order if ids[i] not in withdrawn]
    gone = [[keys[i], ids[i]] for i in order if ids[i] in withdrawn]
    return table, keys, ids, rows, gone


def scan_shard(task: tuple[int, str], shared: ScanShared) -> ShardScan:
    """Pass 1 over shard ``task = (ordinal, path)``: codes, digests, withdrawn samples, pairs with eval images.

    The codes come from the index (ingest computed them on the canonical pixels); a shard whose index has none is
    hashed from its stored pixels with a warning (:func:`pipeline.vision.dedup_codes.shard_codes`).

    Raises:
        ValueError, OSError: the shard or its index cannot be read (re-run ingest).
    """
    _, path = task
    hs = shared.hash_size
    table, keys, ids, rows, gone = _positions(path, shared.withdrawn, ["sha256", code_column(hs)])
    all_codes, valid = codes_of(table, hs)
    if not valid.all():
        with ShardReader(path, warn_unindexed=False) as reader:
            all_codes = shard_codes(reader, hs)
    shas = table.column("sha256").to_pylist()
    codes = all_codes[rows] if rows else np.zeros((0, hs * hs // 8), np.uint8)
    scan = ShardScan(
        n=len(rows),
        codes=np.ascontiguousarray(codes),
        sha=_sha_digest([shas[i] for i in rows]),
        idh=_id_digest([ids[i] for i in rows]),
        withdrawn=gone,
        first_key=min(keys) if keys else "",
        last_key=max(keys) if keys else "",
    )
    if shared.eval_codes is not None and len(shared.eval_codes) and rows:
        ri, qi, dist = range_pairs(build_index(shared.eval_codes, shared.eval_radius), codes, shared.eval_radius)
        by_sha: dict[str, list[int]] = {}
        for q, s in enumerate(shared.eval_sha):
            by_sha.setdefault(s, []).append(q)
        same = [(r, q) for r, i in enumerate(rows) for q in by_sha.get(shas[i], ())]
        scan.eval_rows = np.concatenate([ri, np.array([r for r, _ in same], np.int64)])
        scan.eval_q = np.concatenate([qi, np.array([q for _, q in same], np.int64)])
        scan.eval_dist = np.concatenate([dist, np.zeros(len(same), np.int64)])
    return scan


def shard_rows(task: tuple[int, str, np.ndarray, np.ndarray], withdrawn: frozenset[str]) -> tuple[str, list[str], list[str]]:
    """Pass 3 over shard ``task = (ordinal, path, index positions, named positions)`` (positions as in
    :func:`scan_shard`).

    Returns:
        ``(index_keys, keys, ids)``: the keys at the index positions, one per line (this shard's part of
        ``index_keys.txt``), and the keys and ids at the named positions (removed samples and those they point to).
    """
    _, path, index_positions, named = task
    _, keys, ids, rows, _ = _positions(path, withdrawn, [])
    text = "".join(keys[rows[p]] + "\n" for p in index_positions.tolist())
    sel = [rows[p] for p in named.tolist()]
    return text, [keys[i] for i in sel], [ids[i] for i in sel]


# --- the near-duplicate search as a join by band -----------------------------------------------------------------


def _bands(nbits: int, radius: int) -> list[tuple[int, int]]:
    nb = radius + 1
    return [(b * nbits // nb, (b + 1) * nbits // nb) for b in range(nb)]


def _bit_range(words: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """uint64 (N,): bits ``lo..hi-1`` (``hi - lo <= 64``, bit 0 the first bit of the code) of big-endian words."""
    i, o, w = lo // 64, lo % 64, hi - lo
    x = words[:, i] << np.uint64(o)
    if o and o + w > 64:  # the range spans two words
        x |= words[:, i + 1] >> np.uint64(64 - o)
    return x >> np.uint64(64 - w)


def band_partitions(codes: np.ndarray, radius: int, partitions: int) -> np.ndarray:
    """int32 (N, radius + 1): the partition (0..partitions-1) of each band of each code.

    A band's partition is a 64-bit FNV-1a-style hash of (band number, the band's bits, in chunks of at most 64) modulo
    ``partitions``; equal bands of two codes always land in the same partition. No per-bit arrays: the bits are
    cut from the codes read as big-endian 64-bit words.
    """
    n, nbytes = codes.shape
    pad = (-nbytes) % 8
    padded = np.concatenate([codes, np.zeros((n, pad), np.uint8)], axis=1) if pad else np.ascontiguousarray(codes)
    words = padded.view(">u8").astype(np.uint64)
    bands = _bands(nbytes * 8, radius)
    out = np.empty((n, len(bands)), np.int32)
    prime = np.uint64(1099511628211)
    with np.errstate(over="ignore"):
        for b, (lo, hi) in enumerate(bands):
            h = np.full(n, np.uint64(14695981039346656037) ^ np.uint64(b), np.uint64)
            for a in range(lo, hi, 64):
                h = (h ^ _bit_range(words, a, min(hi, a + 64))) * prime
            h ^= h >> np.uint64(29)  # the high bits mixed into the low ones before the modulo
            out[:, b] = (h % np.uint64(partitions)).astype(np.int32)
    return out


def partition_items(codes: np.ndarray, radius: int, partitions: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The work of :func:`near_pairs`: ``(partition, code ids, codes)`` for each non-empty partition.

    ``codes`` are the distinct codes (uint8 (U, nbytes)); a code is in the partition of each of its bands (once).
    With one partition, a single item holds every code (no banding).
    """
    if partitions <= 1:
        return [(0, np.arange(len(codes), dtype=np.int64), codes)] if len(codes) else []
    if len(codes) >= 1 << 32:
        raise ValueError(f"{len(codes)} distinct codes: more than 2^32, the partitioned search's code ids")
    parts = band_partitions(codes, radius, partitions)
    pair = parts.astype(np.int64) << np.int64(32)  # (partition, code) as one sortable int64
    pair |= np.arange(len(codes), dtype=np.int64)[:, None]
    pair = pair.reshape(-1)
    del parts
    pair.sort()
    keep = np.ones(len(pair), bool)
    keep[1:] = pair[1:] != pair[:-1]  # a code whose bands share a partition: once
    pair = pair[keep]
    bounds = np.searchsorted(pair, np.arange(partitions + 1, dtype=np.int64) << np.int64(32))
    ids = pair & np.int64(0xFFFFFFFF)
    del pair, keep
    return [
        (p, ids[bounds[p] : bounds[p + 1]], codes[ids[bounds[p] : bounds[p + 1]]])
        for p in range(partitions)
        if bounds[p + 1] > bounds[p]
    ]


def near_pairs(item: tuple[int, np.ndarray, np.ndarray], shared: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """The pairs within ``radius`` that partition ``item = (partition, code ids, codes)`` owns.

    Args:
        shared: ``(radius, partitions)``.

    Returns:
        ``(later, earlier, dist)``: int64 arrays, code ids with ``later > earlier`` (each pair once over all
        partitions: with several partitions, a pair belongs to the partition of the first band both codes agree on).
    """
    radius, partitions = shared
    p, ids, codes = item
    qi, di, dist = range_pairs(build_index(codes, radius), codes, radius)
    keep = ids[di] < ids[qi]
    qi, di, dist = qi[keep], di[keep], dist[keep]
    if partitions > 1 and len(qi):
        a, b = codes[qi], codes[di]
        diff = np.unpackbits(np.bitwise_xor(a, b), axis=1)
        bands = _bands(codes.shape[1] * 8, radius)
        agree = np.stack([~diff[:, lo:hi].any(axis=1) for lo, hi in bands], axis=1)
        first = agree.argmax(axis=1)  # some band agrees (pigeonhole: at most radius bits differ)
        owner = band_partitions(a, radius, partitions)[np.arange(len(a)), first]
        mine = owner == p
        qi, di, dist = qi[mine], di[mine], dist[mine]
    return ids[qi], ids[di], dist
