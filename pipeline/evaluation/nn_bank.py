"""The pretraining images' feature bank of the feature-space decontamination, sharded over the ranks and kept on disk.

Mahajan et al. 2018 (section 4.1) search every val image's nearest pretraining image in the pretrained
network's feature space. At the mission's scale (10^8-10^9 pretraining images) that bank is neither
embedded by one process nor held in one process's memory:

* **Sharded**: rank ``r`` of a ``W``-rank job embeds the pretraining images of its contiguous block of
  ingest shards (:func:`pipeline.evaluation.ranks.rank_block` over the shard list), so it reads only those
  shards' metadata and images. Its rows are the global rows ``[offset, offset + rows)`` of the bank in shard
  order, the order one process lists them in (:func:`pipeline.evaluation.nn_decontam.pretraining_samples`).
* **Once per trunk**: each rank writes its block's pooled features (float32 ``(rows, D)``, not normalized, 4 D
  bytes an image: 8 KB at D = 2,048) to ``<run_dir>/transfer/nn_bank/<key>/part-RRRRR-of-WWWWW.npy`` as it
  embeds them (a memory-mapped ``.npy``, renamed into place when complete) with ``part-...json`` beside it
  (rows, the per-dimension sum for the optional centring). ``<key>`` fingerprints the trunk, dedup's and
  ingest's outputs, the image size, the numerics and the world size (:func:`bank_key`): a rerun of the stage,
  a resumed job or another target set reuses the parts; another trunk or world size embeds again and the
  stale parts are removed.
* **Searched per rank**: with ``transfer.nn_index=Flat`` (exact, the default) each rank scans its rows from the
  memory map a chunk at a time on its device (:func:`stream_exact`: memory one chunk of :data:`SCAN_ROWS` rows,
  time ``n_val x M / W x 2 D`` flops); with another faiss spec it builds that index over its rows (added in chunks,
  :func:`pipeline.evaluation.nn_decontam.build_index`; the index's codes stay in memory). The ranks' best
  candidates are merged (:meth:`BankPart.nearest`): with ``Flat``, the one-process exact search up to float
  rounding. No process holds the whole bank.

The pairs the calibration scores (a val image against a given pretraining row: random non-copies, same-emoji
non-copies) are computed by the rank that holds the row and summed over the ranks (:meth:`BankPart.pair_similarities`).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.evaluation.nn_decontam import (
    PretrainSample,
    ShardImages,
    build_index,
    l2_normalize,
    nearest_in_index,
    pretraining_samples,
)
from pipeline.evaluation.ranks import rank_block
from pipeline.io.atomic import atomic_path, read_json, write_json
from pipeline.io.manifest import canonical_hash, read_manifest
from pipeline.io.run_folder import DEDUP, INGEST, NN_BANK_DIR, TRANSFER, path, stage_dir
from pipeline.io.shards import shard_paths
from pipeline.progress import progress_bar
from pipeline.train.distributed import DistInfo, barrier, gather_objects

log = logging.getLogger(__name__)

__all__ = ["BankPart", "NormalizedRows", "bank_key", "describe", "open_bank"]


def bank_key(run_dir, trunk_sha256: str, size: int, numerics: dict, world: int) -> str:
    """16 hex digits naming a bank: the trunk's SHA-256, ingest's and dedup's manifest hashes (which images),
    the image size in px, the precision's key (how features are computed) and the world size (how they are split)."""
    mans = {s: (read_manifest(stage_dir(run_dir, s)) or {}).get("config_hash") for s in (INGEST, DEDUP)}
    return canonical_hash({"trunk": trunk_sha256, "stages": mans, "size": int(size), "numerics": numerics, "world": world})


class NormalizedRows:
    """Rows of a float32 ``(M, D)`` feature array (e.g. a memory map) L2-normalized on access (minus ``center``).

    Supports ``len()``, ``.shape`` and indexing by a slice or an int array (what
    :func:`pipeline.evaluation.nn_decontam.build_index` reads), so a bank larger than memory is normalized chunk by chunk.
    """

    def __init__(self, features: np.ndarray, center: np.ndarray | None) -> None:
        self.features, self.center = features, center
        self.shape = features.shape

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, key) -> np.ndarray:
        return l2_normalize(np.asarray(self.features[key]), self.center)


@dataclass
class BankPart:
    """This rank's part of the pretraining feature bank.

    ``samples``: this rank's pretraining images (shard order); ``offset``: the global row of the first;
    ``total``: rows over all ranks (M); ``features``: float32 ``(rows, D)`` memory map of the raw pooled features;
    ``mean``: the bank's mean feature (float32 ``(D,)``) when ``transfer.nn_center`` centres, else None;
    ``seconds``: wall seconds this rank spent embedding (0 when reused); ``reused``: read from an earlier run.
    """

    ranks: DistInfo
    samples: list[PretrainSample]
    offset: int
    total: int
    features: np.ndarray
    mean: np.ndarray | None
    seconds: float
    reused: bool

    @property
    def rows(self) -> NormalizedRows:
        """This rank's rows, L2-normalized (and centred) on access."""
        return NormalizedRows(self.features, self.mean)

    def nearest(self, queries: np.ndarray, spec: str, nprobe: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """For each L2-normalized query row (float32 ``(n, D)``, the same on every rank): the cosine similarity of
        its nearest bank row over all ranks and that row's global index (float32 ``(n,)``, int64 ``(n,)``).

        ``spec="Flat"``: each rank scans its rows exactly, :data:`SCAN_ROWS` at a time (:func:`stream_exact`: memory
        one chunk, not the part); another spec: each rank builds that faiss index over its rows. The ranks' best
        candidates are merged (ties: the lowest global row, as one exact index returns). No row anywhere:
        similarity -1, index -1.
        """
        if spec.strip() == "Flat":
            sims, idx = stream_exact(queries, self.rows, device=self.ranks.device)
        else:
            sims, idx = nearest_in_index(queries, build_index(self.rows, spec, nprobe, seed) if len(self.features) else None)
        gidx = np.where(idx >= 0, idx + self.offset, -1)
        parts = gather_objects(self.ranks, (sims, gidx))
        all_s = np.stack([p[0] for p in parts])  # (W, n), rank order = global row order
        all_i = np.stack([p[1] for p in parts])
        best = np.argmax(all_s, axis=0)  # first maximum: the lowest rank, i.e. the lowest global row
        cols = np.arange(all_s.shape[1])
        return all_s[best, cols].astype(np.float32), all_i[best, cols].astype(np.int64)

    def pair_similarities(self, queries: np.ndarray, qi: np.ndarray, gj: np.ndarray) -> np.ndarray:
        """Cosine similarities of pairs (query row ``qi[k]``, global bank row ``gj[k]``) (float32 ``(K,)``): each rank
        scores the pairs whose row it holds, zeros elsewhere, summed over the ranks (exact: one non-zero term each)."""
        qi, gj = np.asarray(qi, np.int64), np.asarray(gj, np.int64)
        mine = (gj >= self.offset) & (gj < self.offset + len(self.features))
        out = np.zeros(len(qi), np.float32)
        if mine.any():
            local = gj[mine] - self.offset
            order = np.argsort(local, kind="stable")  # a memory map reads fastest in row order
            rows = np.empty((len(local), self.features.shape[1]), np.float32)
            rows[order] = self.rows[local[order]]
            out[mine] = (queries[qi[mine]] * rows).sum(axis=1)
        return np.sum(gather_objects(self.ranks, out), axis=0).astype(np.float32)

    def ids(self, gidx: np.ndarray) -> list[str | None]:
        """The sample id of each global row in ``gidx`` (None for -1), looked up by the rank that holds it."""
        lo, hi = self.offset, self.offset + len(self.samples)
        mine = {int(g): self.samples[int(g) - lo].id for g in gidx if lo <= g < hi}
        found: dict[int, str] = {}
        for part in gather_objects(self.ranks, mine):
            found.update(part)
        return [found.get(int(g)) for g in gidx]

    def hexcode_pairs(self, codes: list[str | None]) -> tuple[np.ndarray, np.ndarray, int]:
        """Pairs (val image i, global bank row j) of the same emoji hexcode, sorted by (i, j), and how many val
        images have at least one such row: ``(qi int64 (K,), gj int64 (K,), val_images_with_one)``."""
        by_code: dict[str, list[int]] = {}
        for j, s in enumerate(self.samples):
            if s.hexcode:
                by_code.setdefault(s.hexcode, []).append(j + self.offset)
        pairs = [(i, j) for i, c in enumerate(codes) if c for j in by_code.get(c, [])]
        parts = gather_objects(self.ranks, (pairs, set(by_code)))
        every = np.array([p for part, _ in parts for p in part], dtype=np.int64).reshape(-1, 2)
        held = set().union(*(c for _, c in parts))
        order = np.lexsort((every[:, 1], every[:, 0]))
        return every[order, 0], every[order, 1], sum(1 for c in codes if c and c in held)


SCAN_ROWS = 32_768  # bank rows an exact scan holds at a time (256 MB at D = 2,048)
QUERY_BLOCK = 2_048  # queries scored against a chunk at a time (their scores: 256 MB with SCAN_ROWS)


@torch.no_grad()
def stream_exact(
    queries: np.ndarray, rows, chunk: int = SCAN_ROWS, device: torch.device | str = "cpu", query_block: int = QUERY_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest row by inner product, scanning ``rows`` (normalized float32 ``(M, D)``, e.g. :class:`NormalizedRows`
    over a memory map) ``chunk`` rows at a time: a float32 matrix product per block of queries on ``device`` (the
    stage's: a GPU on GPU nodes), the running best kept per query.

    Returns what one exact inner-product index (faiss ``IndexFlatIP``) over all rows returns, up to float rounding,
    without holding the rows: similarity (float32 ``(n,)``) and row (int64 ``(n,)``; -1 and similarity -1 when there
    are no rows). Ties keep the earlier row. Memory: one chunk and ``query_block x chunk`` scores (~0.5 GB at the
    defaults, D = 2,048). (torch's matrix product, not ``faiss.knn``: 202 vs 26 GFLOP/s on 2 AVX512 cores,
    2026-12-07, 1,000 x 65,536 x 2,048.)
    """
    dev = torch.device(device)
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(dev)
    best_s = torch.full((len(q),), -float("inf"), device=dev)
    best_i = torch.full((len(q),), -1, dtype=torch.int64, device=dev)
    for a in range(0, len(rows), chunk):
        x = torch.from_numpy(np.ascontiguousarray(rows[a : a + chunk], dtype=np.float32)).to(dev)
        for b in range(0, len(q), query_block):
            s, i = (q[b : b + query_block] @ x.T).max(dim=1)  # the first maximum: the earlier row on a tie
            better = s > best_s[b : b + query_block]
            best_s[b : b + query_block] = torch.where(better, s, best_s[b : b + query_block])
            best_i[b : b + query_block] = torch.where(better, i + a, best_i[b : b + query_block])
    sims, idx = best_s.cpu().numpy(), best_i.cpu().numpy()
    return np.where(idx >= 0, sims, -1.0).astype(np.float32), idx


def _embed(extract: Callable, ds: ShardImages, batch_size: int, workers: int, dim: int, target: Path, bar) -> None:
    """Write the pooled features of ``ds`` (float32 ``(len(ds), dim)``) to the ``.npy`` at ``target``, batch by batch."""
    with atomic_path(target) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(ds), dim))
        at = 0
        for x, i in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers):
            f, _ = extract([(x, i)])
            out[at : at + len(f)] = f
            at += len(f)
            bar.update(len(f))
        out.flush()
        del out


def open_bank(
    run_dir,
    ranks: DistInfo,
    key: str,
    extract: Callable,
    *,
    size: int,
    dim: int,
    batch_size: int,
    workers: int,
    center: bool,
    progress: bool,
) -> BankPart:
    """This rank's :class:`BankPart`: read from ``transfer/nn_bank/<key>/`` when an earlier run wrote it, else
    embedded now (``extract(batches) -> (float32 (B, dim), labels)``: the trunk's pooled features) and written there.

    Collective: every rank calls it. Rank 0 first removes banks of other keys.

    Raises:
        FileNotFoundError: ingest or dedup has not finished in ``run_dir``.
        OSError: a part cannot be written (e.g. the disk is full), naming the file.
    """
    t0 = time.perf_counter()
    root = path(run_dir, TRANSFER, NN_BANK_DIR)
    if ranks.is_main and root.is_dir():
        for old in root.iterdir():
            if old.name != key:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    barrier(ranks)
    shards = shard_paths(run_dir)
    mine = shards[rank_block(len(shards), ranks)]
    samples = pretraining_samples(run_dir, mine)
    stem = root / key / f"part-{ranks.rank:05d}-of-{ranks.world:05d}"
    npy, meta_file = stem.with_suffix(".npy"), stem.with_suffix(".json")
    meta = read_json(meta_file, missing_ok=True)
    reused = bool(meta and meta.get("rows") == len(samples) and npy.exists())
    if not reused:
        ds = ShardImages(run_dir, samples, size)
        show = progress and ranks.is_main
        with progress_bar(total=len(ds), desc="features pretraining images", unit="img", disable=not show) as bar:
            _embed(extract, ds, batch_size, workers, dim, npy, bar)
        feats = np.load(npy, mmap_mode="r")
        total_sum = np.zeros(dim, np.float64)
        for a in range(0, len(feats), 65_536):
            total_sum += feats[a : a + 65_536].sum(axis=0, dtype=np.float64)
        meta = {"rows": len(samples), "dim": dim, "shards": [p.name for p in mine], "sum": total_sum.tolist()}
        write_json(meta_file, meta)
    features = np.load(npy, mmap_mode="r")
    counts = gather_objects(ranks, (len(samples), np.asarray(meta["sum"], np.float64)))
    offset = sum(c for c, _ in counts[: ranks.rank])
    total = sum(c for c, _ in counts)
    mean = (np.sum([s for _, s in counts], axis=0) / total).astype(np.float32) if (center and total) else None
    seconds = 0.0 if reused else round(time.perf_counter() - t0, 3)
    return BankPart(ranks, samples, offset, total, features, mean, seconds, reused)


def describe(part: BankPart) -> dict:
    """``{"images", "seconds"}`` of the bank for results.json (``seconds``: the slowest rank's embedding; 0 when every
    rank read its part from an earlier run)."""
    return {"images": part.total, "seconds": max(gather_objects(part.ranks, part.seconds))}
