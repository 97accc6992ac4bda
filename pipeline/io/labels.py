"""The vocab stage's outputs as other stages read them: ``labels.npz`` and ``vocab.json``.

This is the run-folder contract for ``<run_dir>/vocab/`` (file names from
:mod:`pipeline.io.run_folder`): :func:`write_labels` is the one writer of ``labels.npz``,
:func:`load_labels` its one reader (:class:`Labels`), :func:`load_vocab` the reader of
``vocab.json``. Pretrain, the report, the audit, the benchmarks and the notebooks import
them from here, never from the stage module :mod:`pipeline.vocab`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.io.atomic import atomic_path
from pipeline.io.manifest import read_manifest, stage_dir
from pipeline.io.run_folder import LABELS_FILE, VOCAB, VOCAB_FILE, read_vocab

__all__ = ["Labels", "load_labels", "load_vocab", "vocab_class_counts", "write_labels"]


class Labels:
    """Per-sample labels and resampling weights of a finished vocab stage (read-only).

    Attributes:
        keys: str (N,), shard keys of the kept samples, sorted.
        ids: str (N,), their sample ids (``source:id``).
        indptr: int64 (N+1,), indices: int32 (nnz,): CSR class ids.
        class_counts: int64 (C,), n_c.
        num_classes: C.
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.keys, self.ids = arrays["keys"], arrays["ids"]
        self.indptr, self.indices, self.class_counts = arrays["indptr"], arrays["indices"], arrays["class_counts"]
        self.num_classes = int(self.class_counts.size)
        # every ``weights_<scheme>`` array the vocab stage wrote (pipeline.text.resampling.SCHEMES)
        self._weights = {k.removeprefix("weights_"): arrays[k] for k in arrays if k.startswith("weights_")}

    def __len__(self) -> int:
        return int(self.keys.size)

    def index_of(self, key: str) -> int:
        """Row of ``key`` (KeyError if the sample is not kept: removed, or without a class)."""
        i = int(np.searchsorted(self.keys, key))
        if i < self.keys.size and self.keys[i] == key:
            return i
        raise KeyError(f"sample {key!r} has no labels (removed by dedup or no in-vocabulary hashtag)")

    def __contains__(self, key: str) -> bool:
        try:
            self.index_of(key)
        except KeyError:
            return False
        return True

    def classes_of(self, key: str) -> list[int]:
        """Class ids of a sample, ascending (KeyError if it has none)."""
        i = self.index_of(key)
        return self.indices[self.indptr[i] : self.indptr[i + 1]].tolist()

    def weights(self, scheme: str) -> np.ndarray:
        """float64 (N,) replication weights of ``scheme`` (natural, sqrt, uniform), mean 1, in key order.

        Raises:
            ValueError: unknown scheme.
        """
        if scheme not in self._weights:
            raise ValueError(f"unknown resampling scheme {scheme!r}; choose one of {sorted(self._weights)}")
        return self._weights[scheme]


def write_labels(
    path: Path,
    keys: np.ndarray,
    ids: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    class_counts: np.ndarray,
    weights: dict[str, np.ndarray],
) -> None:
    """Write ``labels.npz`` atomically (numpy ``savez_compressed``, no pickle), as :func:`load_labels` reads it.

    Args:
        path: the file to write (``<run_dir>/vocab/labels.npz``).
        keys: str (N,), shard keys of the kept samples, sorted; ``ids``: str (N,), their sample ids.
        indptr: int64 (N+1,) and ``indices``: int32 (nnz,), CSR class ids per sample.
        class_counts: int64 (C,), n_c.
        weights: scheme -> float64 (N,) replication weights (stored as ``weights_<scheme>``).
    """
    arrays = {
        "keys": keys,
        "ids": ids,
        "indptr": indptr,
        "indices": indices,
        "class_counts": class_counts,
        **{f"weights_{k}": v for k, v in weights.items()},
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]  # numpy stubs: **kwds may hit allow_pickle: bool


def load_labels(run_dir: str | Path) -> Labels:
    """:class:`Labels` of ``<run_dir>/vocab/labels.npz`` (no pickle).

    Raises:
        FileNotFoundError: the vocab stage has not finished in ``run_dir``.
        ValueError: naming the file, if it holds pickled objects (refused unread).
    """
    d = stage_dir(run_dir, VOCAB)
    if read_manifest(d) is None:
        raise FileNotFoundError(
            f"no finished vocab stage in {run_dir} (missing {d}/manifest.json); run `python -m pipeline.vocab run_dir={run_dir}`"
        )
    try:
        with np.load(d / LABELS_FILE, allow_pickle=False) as z:
            return Labels({k: z[k] for k in z.files})
    except ValueError as exc:  # "Object arrays cannot be loaded when allow_pickle=False"
        raise ValueError(
            f"refusing to load {d / LABELS_FILE}: {exc} (it should hold only numeric and string "
            "arrays; a pickled object could run code when loaded)"
        ) from exc


def load_vocab(run_dir: str | Path) -> dict:
    """The content of ``<run_dir>/vocab/vocab.json``.

    Raises:
        FileNotFoundError: if the vocab stage has not finished, or its ``vocab.json`` is missing.
    """
    d = stage_dir(run_dir, VOCAB)
    if read_manifest(d) is None:
        raise FileNotFoundError(f"no finished vocab stage in {run_dir} (missing {d}/manifest.json)")
    doc = read_vocab(run_dir)
    if doc is None:
        raise FileNotFoundError(f"{d / VOCAB_FILE} is missing although the vocab stage finished")
    return doc


def vocab_class_counts(run_dir: str | Path) -> np.ndarray:
    """int64 (C,): samples per class, from ``vocab.json`` (its classes' ``samples``, in class-index order: the
    ``class_counts`` of ``labels.npz``, without loading the whole-corpus labels).

    Raises:
        FileNotFoundError: see :func:`load_vocab`.
    """
    classes = sorted(load_vocab(run_dir)["classes"], key=lambda c: c["index"])
    return np.array([c["samples"] for c in classes], dtype=np.int64)
