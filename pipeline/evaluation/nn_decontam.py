"""Feature-space decontamination of a transfer target's val images (Mahajan et al. 2018).

dedup's pHash check (:mod:`pipeline.dedup`) finds pixel-level near duplicates. Mahajan et
al. 2018 also looked for val images whose nearest neighbour among the pretraining images,
in the feature space of the pretrained network, is too close, and report a *lower-bound*
accuracy that counts those images as wrong. This module does that for every target of the
transfer stage:

1. :func:`pretraining_samples`, :class:`ShardImages`: every pretraining image the dedup stage
   kept (the ingest shards read by byte offset as :mod:`pipeline.train.loader` does, minus
   ``dedup/removed.jsonl``; held-out samples included), with the loader's eval preprocessing
   at the trunk's image size;
2. :func:`pooled_features` + :func:`l2_normalize`: the pretrained trunk's globally pooled
   features, L2-normalized, so an inner product is a cosine similarity (``transfer.nn_center=true``
   first centres them on the pretraining images' mean feature, as Jegou & Chum 2012, "Negative
   evidences and co-occurrences in image retrieval", do before whitening; off by default: on
   the demo trunk it did not separate copies from non-copies any better); :func:`nearest` is an
   exact search with faiss ``IndexFlatIP``: for each val image, the most similar pretraining
   image and its cosine similarity;
3. :func:`calibrate`: the threshold. Known copies are made on the fly from a seeded sample of
   val images (:data:`COPY_KINDS`: JPEG quality 50, down-scaled to half size, padded by 10% of
   the side per edge, an off-centre crop of 80% of the area); each copy's similarity to its original is
   what a copy of that val image in the pretraining data would score. The threshold is the
   ``nn_copy_quantile`` quantile of those scores (default 0.01: the 1st percentile, so 99% of
   the known copies score at or above it), unless ``transfer.nn_threshold`` fixes it. Known
   non-copies measure the false-alarm rate: pairs of a val image and a pretraining image of
   the same emoji drawn by another vendor (when the target has an ``emoji_index``: Fluent
   Emoji vs Google / Twitter, matched by hexcode), and pairs with random pretraining images
   (every target; the only non-copies for Fashion-MNIST). The share of each above the
   threshold is reported;
4. val images whose nearest pretraining image scores at or above the threshold are flagged;
   the transfer stage counts them wrong in ``lower_bound_top1_nn``.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipeline.evaluation.target_data import emoji_rows_of
from pipeline.faiss_import import faiss
from pipeline.io.removal import removed_keys
from pipeline.io.shards import iter_metadata, member_offsets, shard_paths
from pipeline.seeding import item_seed
from pipeline.vision.transforms import decode, eval_transform

__all__ = [
    "COPY_KINDS",
    "PretrainSample",
    "ShardImages",
    "calibrate",
    "emoji_hexcodes",
    "hexcode_key",
    "l2_normalize",
    "make_copy",
    "build_index",
    "nearest",
    "nearest_in_index",
    "pooled_features",
    "pretraining_samples",
]

COPY_KINDS = ("jpeg", "resize", "pad", "crop")


@dataclass(frozen=True)
class PretrainSample:
    """One pretraining image: where its bytes are, and what identifies it."""

    shard: str
    key: str
    id: str
    hexcode: str | None  # normalized emoji hexcode (hexcode_key) for emoji sources, else None


def hexcode_key(code: str | None) -> str | None:
    """``"1F415"``, ``"1f415"``, ``"2764-FE0F"`` -> ``"1f415"``, ``"2764"``: lower case, variation selectors dropped."""
    if not code:
        return None
    parts = [p for p in str(code).lower().replace("_", "-").split("-") if p and p != "fe0f"]
    return "-".join(parts) or None


def pretraining_samples(run_dir, shards: Sequence[Path] | None = None) -> list[PretrainSample]:
    """Every sample of the ingest shards (or of ``shards``, a subset of them) that dedup did not remove, in shard order.

    Raises:
        FileNotFoundError: ingest or dedup has not finished in ``run_dir``.
    """
    removed = removed_keys(run_dir)
    out = []
    for shard, key, meta in iter_metadata(list(shard_paths(run_dir) if shards is None else shards)):
        if key in removed:
            continue
        hexcode = (meta.get("meta") or {}).get("hexcode") if isinstance(meta.get("meta"), dict) else None
        out.append(PretrainSample(shard=shard, key=key, id=str(meta.get("id", key)), hexcode=hexcode_key(hexcode)))
    return out


class ShardImages(Dataset):
    """Pretraining images as ``(uint8 (3, S, S) eval-preprocessed tensor, position)``, read by byte offset."""

    def __init__(self, run_dir, samples: Sequence[PretrainSample], size: int) -> None:
        shards = {p.name: str(p) for p in shard_paths(run_dir)}
        self.paths = [shards[s.shard] for s in samples]
        self.keys = [s.key for s in samples]
        self.size = size

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        offset, size = member_offsets(self.paths[i])[self.keys[i]]
        with open(self.paths[i], "rb") as fh:
            fh.seek(offset)
            blob = fh.read(size)
        return eval_transform(decode(blob, self.size), self.size), i


def l2_normalize(x: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Rows (minus ``center`` if given) scaled to unit L2 norm (float32; all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if center is not None:
        x = x - np.asarray(center, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def pooled_features(
    extract: Callable[[Iterable], tuple[np.ndarray, np.ndarray]], ds: Dataset, batch_size: int, workers: int
) -> np.ndarray:
    """Pooled features (float32, not normalized) of ``ds`` in dataset order
    (``extract`` = :func:`pipeline.evaluation.linear_probe.extract_features` bound to the trunk)."""
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    feats, _ = extract(loader)
    return feats


TRAIN_ROWS = 100_000  # bank rows (a seeded sample) an index that needs training (IVF, PQ) is trained on
ADD_ROWS = 65_536  # bank rows added to an index at a time (a memory-mapped bank is read chunk by chunk)


def build_index(bank, spec: str = "Flat", nprobe: int = 32, seed: int = 0):
    """A faiss inner-product index over ``bank`` (float32 (M, D), L2-normalized rows) built from a factory string.

    ``bank``: an array, or anything with ``len()``, ``.shape`` and indexing by a slice or an int array that gives
    normalized float32 rows (:class:`pipeline.evaluation.nn_bank.NormalizedRows` over a memory map): rows are read
    :data:`ADD_ROWS` at a time, so the process holds the index and one chunk, not the bank.

    ``spec`` is faiss's own ``index_factory`` description: ``"Flat"`` (exact, 4 D bytes per row),
    ``"IVF4096,Flat"`` (inverted lists: exact similarities, approximate neighbours), ``"IVF65536,PQ64"`` (64-byte
    product-quantized codes: approximate similarities; 6.4 GB at 10^8 rows), ``"HNSW32"``... An index that needs
    training is trained on a seeded sample of at most :data:`TRAIN_ROWS` rows; ``nprobe`` inverted lists are
    visited per query (IVF indexes; faiss's ``ParameterSpace``).

    Raises:
        ValueError: a ``spec`` faiss cannot build, or fewer bank rows than the index needs to train.
    """
    d = bank.shape[1]
    try:
        index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"transfer.nn_index: faiss cannot build {spec!r}: {str(exc).splitlines()[0]}") from None
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(bank), size=min(len(bank), TRAIN_ROWS), replace=False))
        sample = np.ascontiguousarray(bank[pick], dtype=np.float32)
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise ValueError(
                f"transfer.nn_index: training {spec!r} on {len(sample)} rows failed: {str(exc).splitlines()[0]}"
            ) from None
    for a in range(0, len(bank), ADD_ROWS):
        index.add(np.ascontiguousarray(bank[a : a + ADD_ROWS], dtype=np.float32))
    if "IVF" in spec:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", int(nprobe))
    return index


def nearest(
    queries: np.ndarray, bank: np.ndarray, spec: str = "Flat", nprobe: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """For each (L2-normalized) query row, the cosine similarity of its nearest bank row and that row's index.

    ``spec="Flat"``: exact inner-product search (faiss ``IndexFlatIP``); another spec: the index of
    :func:`build_index` (approximate; its recall against the exact search on the demo is in docs/stages/transfer.md).
    An empty bank gives similarity -1, index -1 (so does a query an approximate index finds no neighbour for).
    """
    return nearest_in_index(queries, build_index(bank, spec, nprobe, seed) if len(bank) else None)


def nearest_in_index(queries: np.ndarray, index) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nearest` against a built faiss ``index`` (None or empty: similarity -1, index -1 for every query)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if index is None or index.ntotal == 0 or len(q) == 0:
        return np.full(len(q), -1.0, np.float32), np.full(len(q), -1, np.int64)
    sims, idx = index.search(q, 1)
    sims = np.where(idx >= 0, sims, -1.0)
    return sims[:, 0].astype(np.float32), idx[:, 0].astype(np.int64)


def make_copy(img: Image.Image, kind: str, seed: int) -> Image.Image:
    """A known copy of ``img``: re-encoded as JPEG (quality 50), resized to half size, padded by 10% of
    the side per edge (white), or an off-centre crop of 80% of the area (seeded)."""
    img = img.convert("RGB")
    w, h = img.size
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=50)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "resize":
        return img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR)
    if kind == "pad":
        pw, ph = max(1, round(w / 10)), max(1, round(h / 10))
        out = Image.new("RGB", (w + 2 * pw, h + 2 * ph), (255, 255, 255))
        out.paste(img, (pw, ph))
        return out
    if kind == "crop":
        rng = random.Random(seed)
        cw, ch = max(1, round(w * 0.8**0.5)), max(1, round(h * 0.8**0.5))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return img.crop((left, top, left + cw, top + ch))
    raise ValueError(f"unknown copy kind {kind!r} (one of {COPY_KINDS})")


class KnownCopies(Dataset):
    """``len(positions) x len(COPY_KINDS)`` copies of val images, eval-preprocessed: ``(uint8 image, row)``."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        loader: Callable[[str], Image.Image],
        positions: np.ndarray | Sequence[int],
        size: int,
        seed: int,
    ) -> None:
        self.items = [(int(p), k) for p in positions for k in COPY_KINDS]
        self.samples, self.loader, self.size, self.seed = samples, loader, size, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pos, kind = self.items[i]
        img = make_copy(self.loader(self.samples[pos][0]), kind, item_seed("known-copy", self.seed, pos))
        return eval_transform(img, self.size), i


def emoji_hexcodes(index_file, val_rel: Sequence[str]) -> list[str | None]:
    """The normalized hexcode of each val image ``<class>/<stem>.<style>.<ext>`` from an ``emoji.jsonl``
    (rows with ``hexcode`` and ``files`` as ``<style>/<stem>``; data_tools.fluent_target.emoji_rows); None if unlisted."""
    return [(hexcode_key(row.get("hexcode")) or None) if row else None for row in emoji_rows_of(index_file, val_rel)]


def calibrate(copy_sims: np.ndarray, quantile: float, fixed: float | None = None) -> tuple[float, str]:
    """The flagging threshold and the rule that gave it: ``fixed`` if set, else the ``quantile`` of the known copies' scores."""
    if fixed is not None:
        return float(fixed), f"fixed (transfer.nn_threshold = {fixed:g})"
    if len(copy_sims) == 0:
        return 1.0, "no known copies could be made: threshold 1.0"
    thr = float(np.quantile(np.asarray(copy_sims, dtype=np.float64), quantile))
    return thr, (
        f"the {quantile:g} quantile (percentile {100 * quantile:g}) of {len(copy_sims)} known-copy "
        f"similarities, so {100 * (1 - quantile):g}% of known copies score at or above it"
    )


def share_above(sims: np.ndarray, threshold: float) -> float | None:
    """Share of ``sims`` at or above ``threshold`` (None when empty)."""
    sims = np.asarray(sims)
    return float((sims >= threshold).mean()) if len(sims) else None


def quantiles(x: np.ndarray, qs=(0.0, 0.01, 0.5, 0.99, 1.0)) -> dict:
    """``{"p0": ..., "p1": ..., "p50": ...}`` of ``x`` rounded to 4 decimals (empty: {})."""
    x = np.asarray(x, dtype=np.float64)
    if not len(x):
        return {}
    return {f"p{100 * q:g}": round(float(np.quantile(x, q)), 4) for q in qs}
