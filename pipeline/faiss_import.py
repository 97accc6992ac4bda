"""faiss, imported with its loader's messages at DEBUG (foundation layer).

On import, ``faiss.loader`` logs at INFO which SIMD build it tries and why one failed to load
("Could not load library with AVX2 support due to: ModuleNotFoundError ..."): normal on every
machine whose wheel lacks that build, and noise in every user's stage log. A filter on that
logger turns its records into DEBUG records, shown only when the ``pipeline`` logger is at DEBUG
(``hydra.verbose=true``). Import faiss as ``from pipeline.faiss_import import faiss``.
"""

from __future__ import annotations

import logging


class _AtDebug(logging.Filter):
    """Demote a record to DEBUG; keep it only where the ``pipeline`` logger shows DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("pipeline").isEnabledFor(logging.DEBUG)


logging.getLogger("faiss.loader").addFilter(_AtDebug())

import faiss  # noqa: E402  (after the filter: the loader logs while faiss is imported)

__all__ = ["faiss"]
