"""Seeds derived from names and numbers (foundation layer: imports nothing of the pipeline).

Every random choice of the pipeline (augmentation of one image, resampling copies, label
noise, probe draws, fine-tuning order) takes its seed from :func:`item_seed` over the
parts that identify it (a salt string, the run seed, epoch, sample key, ...), so a result
does not depend on the process, rank or worker that computes it, nor on the order of work.
"""

from __future__ import annotations

import hashlib


def item_seed(*parts) -> int:
    """A 64-bit seed (int in [0, 2**64)) from any parts: blake2b (8 bytes, little-endian) of ``repr(parts)``.

    Stable across processes, ranks and Python runs (unlike ``hash()``, which ``PYTHONHASHSEED``
    salts); parts should be str, int, float or tuples of them.
    """
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")
