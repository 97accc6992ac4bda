"""Perceptual hashes and a sub-quadratic Hamming-radius search over them (dedup stage).

Hashes are pHash (imagehash: DCT of a 32x32 grey image, the sign of the 8x8 low
frequencies against their median; Zauner 2010) packed into ``hash_size**2 / 8`` bytes.

The search is multi-index hashing (Norouzi et al. 2012) as implemented by faiss's
``IndexBinaryMultiHash``: the bits are cut into ``radius + 1`` substrings; by the
pigeonhole principle, two codes within Hamming distance ``radius`` agree exactly on at
least one substring, so bucket lookups find every such pair and only candidates that
share a bucket are compared. Work grows with N times the bucket occupancy, not N^2
(imagededup's dense N x N search is what we avoid: its memory and time grow with N^2).

Short substrings make few buckets (64-bit codes at radius 4: five 12-bit substrings,
4,096 buckets per table), so bucket occupancy, and the work per query, grows with N.
Where ``radius + 1`` substrings would be shorter than 16 bits, :func:`build_index` uses
``(radius + 2) // 2`` longer substrings probed with one flipped bit (faiss's ``nflip``):
two codes within ``radius < 2 * nhash`` bits differ in at most one bit of some substring,
so the search stays exact (64-bit codes at radius 4: three 21-bit substrings, 2^21
buckets, 22 probes per table; benchmarks/RESULTS.md, near_search, measured the growth).
"""

from __future__ import annotations

from typing import cast

import imagehash
import numpy as np
from PIL import Image, ImageChops

from pipeline.faiss_import import faiss
from pipeline.io.shard_index import HASH_SIZES  # the pHash grids ingest stores per sample (dedup.hash_size picks one)

BORDER_TOLERANCE = 24  # max per-channel difference (0-255) from the corner colour still counted as border
MIN_BAND = 0.2  # trim an axis only where its two border bands take >= this share of the side (padding, not margins)


def phash_bytes(img: Image.Image, hash_size: int = 8) -> np.ndarray:
    """pHash of an image as packed bits (no border trimming: see :func:`perceptual_hash`).

    Returns:
        ``np.ndarray`` of dtype uint8 and shape ``(hash_size**2 // 8,)``.
    """
    bits = imagehash.phash(img, hash_size=hash_size).hash.reshape(-1)
    return np.packbits(bits.astype(np.uint8))


def trim_uniform_border(img: Image.Image, tolerance: int = BORDER_TOLERANCE, min_band: float = MIN_BAND) -> Image.Image:
    """Crop away padding bands: the rows (or columns) at the edges that are all, within
    ``tolerance`` per channel, the colour the four corners share, on an axis where those
    bands together take at least ``min_band`` of the side.

    Padding a non-square image to a square (img2dataset's ``border`` resize, white bands)
    adds such bands on one axis; an image's own small margins (an emoji's transparent
    edge, composited on white) stay, so that an original and its padded, resized and
    re-encoded copy crop to the same content box. Images whose corners differ (most
    photographs) and images that are all border are returned unchanged. Pillow's C
    operations only (a difference image, its per-pixel channel maximum, ``getbbox``).
    Measured on the fixture's img2dataset copies: square copies 0-2 bits from their
    originals; padded copies of non-square images 6-28 bits without trimming, 0-18 with it
    (tests/test_shards.py).
    """
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    w, h = rgb.size
    # PIL's stubs type getpixel for every mode; an RGB pixel is a tuple
    corners = [cast("tuple[int, ...]", rgb.getpixel(p)) for p in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1))]
    if max(abs(c[i] - corners[0][i]) for c in corners for i in range(3)) > tolerance:
        return img
    r, g, b = ImageChops.difference(rgb, Image.new("RGB", rgb.size, corners[0])).split()
    box = ImageChops.lighter(ImageChops.lighter(r, g), b).point(lambda v: 255 if v > tolerance else 0).getbbox()
    if box is None:
        return img
    left, top, right, bottom = box
    if top + (h - bottom) < min_band * h:
        top, bottom = 0, h
    if left + (w - right) < min_band * w:
        left, right = 0, w
    return img if (left, top, right, bottom) == (0, 0, w, h) else img.crop((left, top, right, bottom))


def perceptual_hashes(img: Image.Image, hash_sizes=HASH_SIZES) -> dict[int, np.ndarray]:
    """The pipeline's perceptual hashes: pHash of the canonical pixels after :func:`trim_uniform_border`.

    Ingest computes them once per sample from the canonical pixels (before the shard
    encoding, so a JPEG-encoded shard and its lossless eval copy get the same code) and the
    dedup stage hashes eval images with this same function on the same canonical form. The
    border is trimmed and the image turned grey once for all sizes.

    Returns:
        ``{hash_size: uint8 (hash_size**2 // 8,)}``: packed bits.
    """
    grey = trim_uniform_border(img).convert("L")
    return {h: phash_bytes(grey, h) for h in hash_sizes}


def perceptual_hash(img: Image.Image, hash_size: int = 8) -> np.ndarray:
    """One size of :func:`perceptual_hashes`: uint8 ``(hash_size**2 // 8,)``."""
    return perceptual_hashes(img, (hash_size,))[hash_size]


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Hamming distance between two packed codes (uint8 arrays of equal length)."""
    return int(np.unpackbits(np.bitwise_xor(a, b)).sum())


def build_index(codes: np.ndarray, radius: int) -> faiss.IndexBinary:
    """A faiss binary index over ``codes`` (uint8, shape (N, nbytes)) exact for ``radius``.

    Uses ``IndexBinaryMultiHash`` with ``radius + 1`` substrings of ``nbits // (radius + 1)``
    bits (at most 24), or, where those would be shorter than 16 bits, ``(radius + 2) // 2``
    substrings probed with ``nflip = 1`` (exact by the same pigeonhole argument; see the
    module docstring); ``IndexBinaryFlat`` (brute force, exact) where substrings would be
    shorter than 4 bits.

    Raises:
        ValueError: for a negative radius or codes of the wrong dtype/shape.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise ValueError(f"codes must be uint8 (N, nbytes), got {codes.dtype} {codes.shape}")
    nbits = codes.shape[1] * 8
    nhash, nflip = radius + 1, 0
    if nbits // nhash < 16 and radius >= 2:  # few buckets per table: fewer, longer substrings, 1 flipped bit
        nhash, nflip = (radius + 2) // 2, 1  # radius < 2 * nhash: some substring differs in <= 1 bit
    b = min(24, nbits // nhash)
    index: faiss.IndexBinary
    if b >= 4:
        multi = faiss.IndexBinaryMultiHash(nbits, nhash, b)
        multi.nflip = nflip
        index = multi
    else:  # radius too large for useful substrings: exact brute force
        index = faiss.IndexBinaryFlat(nbits)
    if len(codes):
        index.add(np.ascontiguousarray(codes))
    return index


def range_pairs(index: faiss.IndexBinary, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (query, database) pairs within Hamming distance ``radius`` (inclusive).

    Returns:
        ``(qi, di, dist)``: int64 arrays of equal length: query row, database row, distance.
    """
    if len(queries) == 0 or index.ntotal == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e
    lims, dist, ids = index.range_search(np.ascontiguousarray(queries), radius + 1)  # faiss: d < r
    qi = np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(lims).astype(np.int64))
    return qi, ids.astype(np.int64), dist.astype(np.int64)


def keep_first(n: int, qi: np.ndarray, di: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy near-duplicate removal over items ``0..n-1`` in order (the first by key is kept).

    Item ``j`` is removed if some earlier *kept* item ``i`` is within the radius; it is
    recorded as a duplicate of the closest such item (ties: the earliest).

    Returns:
        ``(keep, dup_of, dup_dist)``: bool (n,), int64 (n,) (-1 if kept), int64 (n,).
    """
    keep = np.ones(n, dtype=bool)
    dup_of = np.full(n, -1, dtype=np.int64)
    dup_dist = np.zeros(n, dtype=np.int64)
    mask = di < qi  # only earlier neighbours matter
    order = np.lexsort((di[mask], dist[mask], qi[mask]))
    q = qi[mask][order]
    d, s = di[mask][order].tolist(), dist[mask][order].tolist()
    js = np.unique(q)  # only items with an earlier neighbour can be removed: the loop is over those
    starts, ends = np.searchsorted(q, js), np.searchsorted(q, js, side="right")
    for j, a, b in zip(js.tolist(), starts.tolist(), ends.tolist()):
        for k in range(a, b):  # sorted by distance, then index
            if keep[d[k]]:
                keep[j] = False
                dup_of[j] = d[k]
                dup_dist[j] = s[k]
                break
    return keep, dup_of, dup_dist
