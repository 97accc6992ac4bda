"""Small matplotlib helpers for stage side files (Agg backend, atomic PNG writes)."""

from __future__ import annotations

import os

import numpy as np

from pipeline.atomic import atomic_path


def class_frequency_plot(masses: dict[str, np.ndarray], path: str | os.PathLike, title: str = "") -> None:
    """Log-log plot of per-class frequency by rank, one line per resampling scheme.

    Args:
        masses: scheme name -> float (C,) expected samples per class and epoch
            (:func:`pipeline.resampling.class_mass`); ``"natural"`` must be present and
            fixes the rank order (rank 1 = most frequent class), so each line shows how
            a scheme flattens the natural head-to-tail curve.
        path: the PNG to write (atomically).
        title: figure title.

    Raises:
        KeyError: no ``"natural"`` entry.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    order = np.argsort(-np.asarray(masses["natural"], dtype=np.float64), kind="stable")
    ranks = np.arange(1, order.size + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    try:
        for name, m in masses.items():
            y = np.asarray(m, dtype=np.float64)[order]
            ax.plot(ranks, y, marker="." if order.size < 50 else None, lw=1.5,
                    label=name + (" (before resampling)" if name == "natural" else ""))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("class rank by natural frequency")
        ax.set_ylabel("expected samples per epoch")
        ax.set_title(title or "class frequency by rank")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
