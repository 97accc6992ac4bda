"""Small matplotlib helpers for stage side files (Agg backend, atomic PNG writes)."""

from __future__ import annotations

import os

import numpy as np

from pipeline.atomic import atomic_path


def class_frequency_plot(masses: dict[str, np.ndarray], path: str | os.PathLike, title: str = "",
                         targets: dict[str, np.ndarray] | None = None) -> None:
    """Log-log rank-frequency plot of classes, one line per resampling scheme.

    Each curve is sorted by its own values (rank 1 = the class seen most), so a scheme
    that flattens the natural Zipf curve shows as a flatter line.

    Args:
        masses: scheme name -> float (C,) expected samples per class and epoch
            (:func:`pipeline.resampling.class_mass`); ``"natural"`` is the curve before
            resampling.
        path: the PNG to write (atomically).
        title: figure title.
        targets: optional scheme name -> float (C,) ideal masses (``n_c ** alpha`` scaled
            to the same total), drawn dashed in the scheme's colour.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    try:
        for name, m in masses.items():
            y = np.sort(np.asarray(m, dtype=np.float64))[::-1]
            (line,) = ax.plot(np.arange(1, y.size + 1), y, lw=1.6,
                              label=name + (" (before resampling)" if name == "natural" else ""))
            if targets is not None and name in targets and name != "natural":
                t = np.sort(np.asarray(targets[name], dtype=np.float64))[::-1]
                ax.plot(np.arange(1, t.size + 1), t, ls="--", lw=1.0, color=line.get_color(),
                        label=f"{name} target (single-label ideal)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("class rank")
        ax.set_ylabel("expected samples per epoch")
        ax.set_title(title or "class frequency by rank")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
