"""A decoded uint8 copy of the training images, built once per pretraining run (FFCV-style).

On a CPU the loader's decoding workers share the cores with the training step: every
millisecond a worker spends decoding WebP/PNG/JPEG is taken from the step (and, with the
step's OpenMP threads waiting on each other at barriers, often twice). Measured on the demo
shards on an AVX2 CPU (one thread, 2026-12-01): decoding costs 0.89 ms per image, the
random-resized crop 0.23 ms, normalizing 0.15 ms; the crop from an already decoded copy
0.16 ms. FFCV (Leclerc et al. 2023) answers this by storing decoded pixels; this module
does the same for small training resolutions: each sample's image, as
:func:`pipeline.vision.transforms.decode` returns it (RGB, shorter side reduced below ``4 x image_size``
px), is stored once in one flat file and memory-mapped by every worker.

The cache holds exactly what decoding the shard member gives, so training on it or on
the shards gives the same batches bit for bit (tested): it is a speed choice, not a
recipe choice, and is not part of the stage key.

Layout of the cache folder (inside the pretrain stage folder, removed when the stage
finishes): ``pixels.u8`` (all images, HWC uint8, back to back), ``index.npz`` (sorted
keys, byte offsets, heights, widths) and ``meta.json`` (format, image size, number of
images, digest of the key list), written last: a folder without a matching ``meta.json``
is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.io.atomic import atomic_path, write_json
from pipeline.io.shards import ShardReader, member_offsets, shard_of_keys
from pipeline.progress import progress_bar
from pipeline.system import available_cores
from pipeline.train.distributed import barrier
from pipeline.vision.transforms import decode

log = logging.getLogger(__name__)

FORMAT = 1


def estimate_bytes(num_images: int, image_size: int) -> int:
    """Estimate of the cache size in bytes: ``1.5 x N x 3 x (2 x image_size)^2``.

    :func:`pipeline.vision.transforms.decode` leaves the shorter side between 2x and 4x ``image_size``
    (or smaller); over the demo's 16,709 shard images at 64 px the mean was 0.99 x 3 x (2 x 64)^2 bytes an
    image (largest 8x, a long panorama), so the estimate has a 50% margin over that mean.
    """
    return int(1.5 * int(num_images) * 3 * (2 * int(image_size)) ** 2)


def _keys_digest(keys: np.ndarray) -> str:
    h = hashlib.sha256()
    for k in keys:
        h.update(str(k).encode() + b"\0")
    return h.hexdigest()[:16]


def _decode_shard(task: tuple[str, list[str], list[int], list[int], int]) -> list[np.ndarray]:
    """Pool task: decode the given members of one shard; HWC uint8 arrays in the same order."""
    path, keys, offsets, sizes, image_size = task
    with ShardReader(path) as reader:  # the one reader: raises RuntimeError on a truncated shard
        return [np.asarray(decode(reader.read_range(off, size), image_size), dtype=np.uint8) for off, size in zip(offsets, sizes)]


class DecodedCache:
    """Read side: sample key -> decoded image, HWC uint8 (H, W, 3), from one memory-mapped file.

    Picklable without its memory map (DataLoader workers reopen the file on first use).

    Raises:
        FileNotFoundError: the folder has no complete cache (no ``meta.json``).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.folder} holds no complete decoded cache (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        with np.load(self.folder / "index.npz") as z:
            self.keys = z["keys"]
            self.offsets, self.heights, self.widths = z["offsets"], z["heights"], z["widths"]
        self._pixels: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pixels"] = None
        return state

    def position(self, key: str) -> int:
        """Row of ``key``. Raises KeyError where the cache does not hold it."""
        i = int(np.searchsorted(self.keys, key))
        if i >= len(self.keys) or self.keys[i] != key:
            raise KeyError(key)
        return i

    def get(self, key: str) -> np.ndarray:
        """The decoded image of ``key``: uint8 (H, W, 3), a copy. Raises KeyError if absent."""
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / "pixels.u8", dtype=np.uint8, mode="r")
        i = self.position(key)
        h, w = int(self.heights[i]), int(self.widths[i])
        start = int(self.offsets[i])
        return np.array(self._pixels[start : start + h * w * 3]).reshape(h, w, 3)


def build_decoded_cache(
    folder: str | Path, keys: np.ndarray, shards: dict[int, str], image_size: int, workers: int = 1, progress: bool = True
) -> DecodedCache:
    """Decode every sample in ``keys`` once into ``folder``, or reuse a complete cache there.

    Args:
        keys: (N,) str, sorted shard keys ``UUUUUU_PPPPPP`` (shard = ``UUUUUU``).
        shards: shard number -> tar path.
        image_size: training resolution in px (images are stored with the shorter side
            capped at ``2 x image_size``, as :func:`pipeline.vision.transforms.decode` returns them).
        workers: decoding processes (0 or 1: in this process).

    Returns:
        The opened cache. Its size is logged (bytes, images, seconds).

    Raises:
        RuntimeError, KeyError: a sample is missing from its shard or a shard is truncated;
            nothing is left behind (the half-built folder is removed).
    """
    folder = Path(folder)
    keys = np.asarray(sorted(str(k) for k in keys))
    want = {"format": FORMAT, "image_size": int(image_size), "images": len(keys), "keys_digest": _keys_digest(keys)}
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()) == want:
                return DecodedCache(folder)
        except (OSError, ValueError):
            pass
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    shard_of = shard_of_keys(keys)
    tasks = []
    for s in np.unique(shard_of):
        ks = [str(k) for k in keys[shard_of == s]]
        if int(s) not in shards:
            raise RuntimeError(f"decoded cache: shard {int(s):06d} of sample {ks[0]} is not in the run")
        members = member_offsets(shards[int(s)])
        missing = [k for k in ks if k not in members]
        if missing:
            raise RuntimeError(f"decoded cache: sample {missing[0]} not found in shard {shards[int(s)]}")
        tasks.append((str(shards[int(s)]), ks, [members[k][0] for k in ks], [members[k][1] for k in ks], int(image_size)))
    folder.mkdir(parents=True)
    n = len(keys)
    offsets = np.zeros(n, np.int64)
    heights = np.zeros(n, np.int32)
    widths = np.zeros(n, np.int32)
    row, pos = 0, 0
    try:
        with atomic_path(folder / "pixels.u8") as tmp, open(tmp, "wb") as fh:
            # concurrent.futures, not multiprocessing.Pool: Pool.terminate() after a failed write could hang joining
            # its handler threads when a worker had died (seen under a full disk); shutdown cancels what has not
            # started and waits for the shards being decoded
            pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) if workers > 1 else None
            try:
                results = pool.map(_decode_shard, tasks) if pool else map(_decode_shard, tasks)
                bar = progress_bar(total=n, desc="decoded cache", unit="img", disable=not progress)
                for arrays in results:
                    for a in arrays:
                        offsets[row], heights[row], widths[row] = pos, a.shape[0], a.shape[1]
                        fh.write(a.tobytes())
                        pos += a.nbytes
                        row += 1
                    bar.update(len(arrays))
                bar.close()
            finally:
                if pool:
                    pool.shutdown(wait=True, cancel_futures=True)
        with atomic_path(folder / "index.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=keys, offsets=offsets, heights=heights, widths=widths)
        write_json(meta_path, want)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    log.info(
        "decoded cache: %d images, %.1f MB (shorter side <= %d px), built in %.1f s with %d process(es)",
        n,
        pos / 1e6,
        2 * image_size,
        time.perf_counter() - t0,
        max(1, workers),
    )
    return DecodedCache(folder)


def open_decoded_cache(
    pt, info, out, num_images: int, keys: Callable[[], np.ndarray], shards: dict
) -> tuple[DecodedCache | None, dict]:
    """The decoded uint8 copy of the ``num_images`` samples ``keys()`` gives (this module), or None.

    ``keys`` is called on the main rank only, and only when the cache is used (it may read every shard's labels).

    ``pretrain.decoded_cache``: "on", "off", or "auto" (on when the size estimate
    ``1.5 x N x 3 x (2 x image_size)^2`` bytes, :func:`estimate_bytes`, fits in
    ``pretrain.decoded_cache_max_gb``); ``pt``: the pretrain config section, ``info``: this rank
    (:class:`pipeline.train.distributed.DistInfo`). The main
    rank builds it in ``<stage>/decoded_cache/`` with all the cores it may use (a resumed run
    reuses a complete one); the other ranks wait at a barrier and open it.

    Returns:
        (cache or None, a record for the manifest: mode, enabled, reason, images, bytes, build seconds).
    """
    est = estimate_bytes(num_images, pt.image_size)
    budget = pt.decoded_cache_max_gb * 1e9
    if pt.decoded_cache == "off" or (pt.decoded_cache == "auto" and est > budget):
        why = (
            "pretrain.decoded_cache=off"
            if pt.decoded_cache == "off"
            else f"estimate {est / 1e9:.1f} GB > decoded_cache_max_gb {pt.decoded_cache_max_gb:g}"
        )
        log.info("decoded cache: not used (%s); the loader decodes the shards every epoch", why)
        return None, {"mode": pt.decoded_cache, "enabled": False, "reason": why}
    t = time.perf_counter()
    folder = out / "decoded_cache"
    if info.is_main:
        build_decoded_cache(folder, keys(), shards, pt.image_size, workers=available_cores(), progress=pt.progress)
    barrier(info)
    cache = DecodedCache(folder)
    size = int(sum(int(h) * int(w) * 3 for h, w in zip(cache.heights, cache.widths)))
    return cache, {
        "mode": pt.decoded_cache,
        "enabled": True,
        "images": len(cache),
        "bytes": size,
        "estimate_bytes": est,
        "seconds": round(time.perf_counter() - t, 2),
        "reason": "pretrain.decoded_cache=on"
        if pt.decoded_cache == "on"
        else f"estimate {est / 1e9:.2f} GB <= decoded_cache_max_gb {pt.decoded_cache_max_gb:g}",
    }
