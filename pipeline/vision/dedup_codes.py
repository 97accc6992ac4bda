"""The perceptual hashes dedup compares: stored pretraining codes, freshly hashed eval images.

Pretraining codes are read from the shard indexes (:func:`pipeline.vision.shard_dedup.scan_shard`; ingest computed them
on the canonical pixels, so dedup decodes no pretraining image). Eval images are decoded to
the same canonical form as ingest's (:func:`pipeline.vision.images.decode_image`) and hashed
by the same function (:func:`hash_eval_unit`, run by the stage's executor in :func:`hash_eval_units`).
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

from pipeline.errors import Rejected
from pipeline.executor import Executor
from pipeline.io.readers import RawSample, WorkUnit, iter_unit
from pipeline.io.shards import ShardReader
from pipeline.vision.images import decode_image, set_pixel_cap
from pipeline.vision.near_index import perceptual_hash

__all__ = ["hash_eval_unit", "hash_eval_units", "shard_codes"]

log = logging.getLogger(__name__)


def shard_codes(reader: ShardReader, hash_size: int) -> np.ndarray:
    """uint8 ``(len(reader.keys), hash_size**2 // 8)``: the perceptual hash of every sample of a shard, in ``keys`` order.

    From the index (:meth:`pipeline.io.shards.ShardReader.index_codes`, computed by ingest on the
    canonical pixels); for samples the index has no code for, computed here from the decoded
    stored image (with a warning).
    """
    out, missing = reader.index_codes(hash_size)
    if missing:
        log.warning(
            "%s: no %d-bit perceptual hashes in its index for %d sample(s): decoding them",
            reader.path,
            hash_size * hash_size,
            len(missing),
        )
        for i in missing:
            _, off, size = reader.image_member(reader.keys[i])
            with Image.open(io.BytesIO(reader.read_range(off, size))) as img:
                out[i] = perceptual_hash(img.convert("RGB"), hash_size)
    return out


def hash_eval_unit(args: tuple) -> list[tuple[str, str, np.ndarray]]:
    """(eval id, pixel sha256, pHash) for each decodable image of an eval work unit.

    Args:
        args: ``(unit, ing, hash_size)``: a :class:`pipeline.io.readers.WorkUnit`, the resolved
            ``ingest`` section as a dict (``max_pixels``, ``max_file_bytes``, ``max_side``,
            ``rasterize_svg``: the canonical form of ingest) and the pHash grid size.

    Returns:
        One tuple per decodable image, the pHash a uint8 array (hash_size**2 / 8,); undecodable
        images are skipped (eval images are never quarantined).
    """
    unit, ing, hash_size = args
    set_pixel_cap(ing["max_pixels"])
    out = []
    for item in iter_unit(unit, ing["max_file_bytes"]):
        if not isinstance(item, RawSample):
            continue
        try:
            canon = decode_image(
                item.data, max_pixels=ing["max_pixels"], max_side=ing["max_side"], min_side=1, rasterize_svg=ing["rasterize_svg"]
            )
        except Rejected:
            continue
        # the same function on the same canonical pixels as ingest's stored codes
        out.append((f"{unit.source}:{item.id}", canon.pixel_sha256, perceptual_hash(canon.image, hash_size)))
    return out


def _eval_task(unit: WorkUnit, shared: tuple[dict, int]) -> list[tuple[str, str, np.ndarray]]:
    return hash_eval_unit((unit, *shared))


def hash_eval_units(executor: Executor, units: list[WorkUnit], ing: dict, hash_size: int, progress: bool) -> list:
    """:func:`hash_eval_unit` over every eval unit, run by ``executor`` (:mod:`pipeline.executor`), rows concatenated
    in unit order: ``[(eval id, pixel sha256, pHash uint8 (hash_size**2 // 8,)), ...]``."""
    rows = executor.imap(_eval_task, units, (ing, hash_size), desc="dedup eval", progress=progress)
    return [r for unit_rows in rows for r in unit_rows]
