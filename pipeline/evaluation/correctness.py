"""Per-image correctness of every transfer run: the transfer stage's ``correct.npz``.

Every accuracy in ``results.json`` is a mean over per-image correctness vectors; storing them lets
every interval be recomputed (:mod:`pipeline.evaluation.intervals`) and paired differences be taken
on the same val images.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from pipeline.io.atomic import write_bytes
from pipeline.io.run_folder import CORRECT_FILE, TRANSFER, path

__all__ = ["correctness_key", "save_correctness", "load_correctness"]


def correctness_key(target: str, method: str, init: str, per_class: int | None) -> str:
    """``<target>/<method>/<init>/<per class|full>``: the key prefix of one row's arrays (``.../top1``, ``.../top5``)."""
    return f"{target}/{method}/{init}/{'full' if per_class is None else int(per_class)}"


def save_correctness(file: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write ``correct.npz``: bool arrays bit-packed along the last axis (``np.packbits``), others as they are.

    Keys: ``<target>/<method>/<init>/<per class|full>/top1`` and ``.../top5`` (S, N) bool (row s =
    seed s; fine-tuning with ``transfer.ema_decay`` also ``.../ema_top1`` and ``.../ema_top5``, the weight
    average's), ``<target>/phash`` and ``<target>/nn`` (N,) bool (val images flagged),
    ``<target>/nn_similarity`` (N,) float16 (max cosine similarity to a pretraining image), ``<target>/val_ids``
    (N,) str.
    The file is written atomically (:func:`pipeline.io.atomic.write_bytes`).
    """
    out = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.dtype == bool:
            out[k + "|bits"] = np.packbits(v, axis=-1)
            out[k + "|shape"] = np.asarray(v.shape, dtype=np.int64)
        else:
            out[k] = v
    buf = io.BytesIO()
    np.savez_compressed(buf, **out)  # type: ignore[arg-type]  # numpy stubs: **kwds may hit allow_pickle: bool
    write_bytes(Path(file), buf.getvalue())


def load_correctness(run_dir) -> dict[str, np.ndarray]:
    """``<run_dir>/transfer/correct.npz`` as ``{key: array}`` with the bool arrays unpacked (see :func:`save_correctness`).

    Raises:
        FileNotFoundError: the transfer stage wrote no ``correct.npz`` in ``run_dir``.
    """
    out: dict[str, np.ndarray] = {}
    with np.load(path(run_dir, TRANSFER, CORRECT_FILE), allow_pickle=False) as z:
        for k in z.files:
            if k.endswith("|bits"):
                name = k[: -len("|bits")]
                shape = tuple(int(x) for x in z[name + "|shape"])
                out[name] = np.unpackbits(z[k], axis=-1, count=shape[-1]).astype(bool).reshape(shape)
            elif not k.endswith("|shape"):
                out[k] = z[k]
    return out
