"""Seeds derived from names and numbers (foundation layer: imports nothing of the pipeline).

Every random choice of the pipeline (augmentation of one image, resampling copies, label
noise, probe draws, fine-tuning order) takes its seed from :func:`item_seed` over the
parts that identify it (a salt string, the run seed, epoch, sample key, ...), so a result
does not depend on the process, rank or worker that computes it, nor on the order of work.
"""

from __future__ import annotations

import hashlib

import numpy as np


def item_seed(*parts) -> int:
    """A 64-bit seed (int in [0, 2**64)) from any parts: blake2b (8 bytes, little-endian) of ``repr(parts)``.

    Stable across processes, ranks and Python runs (unlike ``hash()``, which ``PYTHONHASHSEED``
    salts); parts should be str, int, float or tuples of them.
    """
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def key_buckets(salt: str, keys, modulus: int) -> np.ndarray:
    """int64 (N,): ``item_seed(salt, key) % modulus`` of every key (a bucket in ``[0, modulus)``, uniform).

    ``keys``: any sequence of str (numpy unicode arrays included). Each key is hashed as a numpy
    ``str_`` element, exactly as iterating a numpy array of keys gives it (under numpy >= 2 its repr,
    hence the hash, is that of ``np.str_('KEY')``): the held-out split of every run folder made so far
    stays as it was. The vocab stage stores the buckets in the per-shard labels, so the split no
    longer depends on the numpy of the reader (:mod:`pipeline.io.shard_labels`).
    """
    arr = np.asarray(keys, dtype=str)
    return np.fromiter((item_seed(salt, k) % modulus for k in arr), dtype=np.int64, count=arr.size)
