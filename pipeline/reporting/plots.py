"""Small matplotlib helpers for stage side files (Agg backend, atomic PNG writes)."""

from __future__ import annotations

import os

import numpy as np

from pipeline.io.atomic import atomic_path


def class_frequency_plot(
    masses: dict[str, np.ndarray], path: str | os.PathLike, title: str = "", targets: dict[str, np.ndarray] | None = None
) -> None:
    """Log-log rank-frequency plot of classes, one line per resampling scheme.

    Each curve is sorted by its own values (rank 1 = the class seen most), so a scheme
    that flattens the natural Zipf curve shows as a flatter line.

    Args:
        masses: scheme name -> float (C,) expected samples per class and epoch
            (:func:`pipeline.text.resampling.class_mass`); ``"natural"`` is the curve before
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
            (line,) = ax.plot(
                np.arange(1, y.size + 1), y, lw=1.6, label=name + (" (before resampling)" if name == "natural" else "")
            )
            if targets is not None and name in targets and name != "natural":
                t = np.sort(np.asarray(targets[name], dtype=np.float64))[::-1]
                ax.plot(
                    np.arange(1, t.size + 1),
                    t,
                    ls="--",
                    lw=1.0,
                    color=line.get_color(),
                    label=f"{name} target (single-label ideal)",
                )
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


# --------------------------------------------------------------------------------------
# Report plots (pipeline.report): training curves, held-out eval, transfer, energy
# --------------------------------------------------------------------------------------


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike) -> None:
    """Write ``fig`` to ``path`` atomically and close it."""
    plt = pyplot()
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` points (same length as ``y``)."""
    if y.size == 0 or window <= 1:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, y.size + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def training_curves_plot(metrics: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Loss, learning rate, and throughput / data-wait fraction against optimizer step.

    Args:
        metrics: rows of ``pretrain/metrics.jsonl`` (``step``, ``loss``, ``lr``,
            ``images_per_second``, ``data_wait_fraction``; missing values are skipped).
        path: the PNG to write (atomically).
        title: figure title.
    """
    plt = pyplot()

    def col(key: str) -> tuple[np.ndarray, np.ndarray]:
        pts = [(r["step"], r[key]) for r in metrics if r.get(key) is not None and r.get("step") is not None]
        if not pts:
            return np.zeros(0), np.zeros(0)
        a = np.asarray(pts, dtype=np.float64)
        return a[:, 0], a[:, 1]

    fig, axes = plt.subplots(3, 1, figsize=(7.0, 7.6), dpi=100, sharex=True)
    ax_loss, ax_lr, ax_ips = axes
    s, loss = col("loss")
    ax_loss.plot(s, loss, lw=0.8, alpha=0.45, color="tab:blue", label="loss per step")
    if loss.size >= 5:
        w = max(2, loss.size // 20)
        ax_loss.plot(s, _moving_average(loss, w), lw=1.8, color="tab:blue", label=f"mean of last {w} steps")
    ax_loss.set_ylabel("training loss")
    ax_loss.legend(fontsize=8)
    s, lr = col("lr")
    ax_lr.plot(s, lr, lw=1.6, color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    s, ips = col("images_per_second")
    ax_ips.plot(s, ips, lw=1.0, color="tab:green", label="images/s")
    ax_ips.set_ylabel("images / s", color="tab:green")
    ax_ips.set_xlabel("optimizer step")
    s2, wait = col("data_wait_fraction")
    if wait.size:
        tw = ax_ips.twinx()
        tw.plot(s2, wait, lw=1.0, color="tab:red", alpha=0.8, label="data-wait fraction")
        tw.set_ylabel("data-wait fraction", color="tab:red")
        tw.set_ylim(0, max(1e-3, min(1.0, float(wait.max()) * 1.15)))
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle(title or "pretraining curves")
    save_png(fig, path)


def heldout_eval_plot(evals: list[dict], path: str | os.PathLike, prior: dict | None = None, title: str = "") -> None:
    """Held-out precision@1 and mAP against step; step 0 is the from-scratch (random init) level.

    Args:
        evals: rows of ``pretrain/eval.jsonl`` (``step``, ``precision_at_1``, ``mAP``).
        path: the PNG to write (atomically).
        prior: ``{"precision_at_1", "mAP"}`` of the class-prior baseline, drawn dashed.
        title: figure title.
    """
    plt = pyplot()
    rows = sorted((e for e in evals if e.get("step") is not None), key=lambda e: e["step"])
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8), dpi=100)
    for ax, key, label in ((axes[0], "precision_at_1", "precision@1"), (axes[1], "mAP", "mAP")):
        pts = [(e["step"], e[key]) for e in rows if e.get(key) is not None]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", lw=1.6, label="held-out")
            if x[0] == 0:
                ax.scatter(
                    [0], [y[0]], s=80, facecolors="none", edgecolors="black", zorder=3, label="step 0 = scratch (random init)"
                )
        if prior and prior.get(key) is not None:
            ax.axhline(prior[key], ls="--", color="gray", lw=1.2, label="class-prior baseline")
        vals = [p[1] for p in pts] + ([prior[key]] if prior and prior.get(key) is not None else [])
        top = max([v for v in vals if v == v] or [1.0]) or 1.0
        ax.set_ylim(-0.04 * top, 1.15 * top)  # a zero at step 0 stays visible above the axis
        last = max([p[0] for p in pts] or [0])
        ax.set_xlim(-0.5 - 0.03 * last, max(last, 1) * 1.03 + 0.5)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title or "held-out evaluation")
    save_png(fig, path)


def transfer_plot(rows: list[dict] | dict[str, list[dict]], path: str | os.PathLike, title: str = "") -> None:
    """Grouped bars of transfer top-1 per training-set size, one panel per target, with 95% intervals.

    Args:
        rows: ``transfer/results.json`` rows of one target (``method``, ``init``, ``train_per_class``
            (None = full), ``top1``, optional ``top1_ci`` [lo, hi], ``lower_bound_top1``,
            ``lower_bound_top1_nn``), fractions 0-1; or ``{target: rows}`` for a panel per target.
            The dark tick is the lowest lower-bound top-1 present (features, else pHash).
        path: the PNG to write (atomically).
        title: figure title.
    """
    plt = pyplot()
    panels = rows if isinstance(rows, dict) else {"": rows}
    panels = {k: v for k, v in panels.items() if v} or {"": []}
    widths = [max(4.0, 1.5 * len({r.get("train_per_class") for r in v}) + 2.2) for v in panels.values()]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(6.4, sum(widths)), 4.6), dpi=100, squeeze=False, gridspec_kw={"width_ratios": widths}
    )
    for ax, (name, prow) in zip(axes[0], panels.items()):
        sizes = sorted({r.get("train_per_class") for r in prow}, key=lambda v: (v is None, v or 0))
        series = sorted({(r["method"], r["init"]) for r in prow})
        width = 0.8 / max(1, len(series))
        for j, (method, init) in enumerate(series):
            xs: list[float] = []
            ys: list[float] = []
            errs: list[list[float]] = [[], []]
            lbs: list[float | None] = []
            for i, size in enumerate(sizes):
                match = [r for r in prow if r["method"] == method and r["init"] == init and r.get("train_per_class") == size]
                if not match:
                    continue
                m = match[0]
                y = 100 * float(m["top1"])
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(y)
                ci = m.get("top1_ci") or [m["top1"], m["top1"]]
                errs[0].append(max(0.0, y - 100 * float(ci[0])))
                errs[1].append(max(0.0, 100 * float(ci[1]) - y))
                cands = [m[k] for k in ("lower_bound_top1_nn", "lower_bound_top1") if m.get(k) is not None]
                lbs.append(100 * float(min(cands)) if cands else None)
            ax.bar(
                xs,
                ys,
                width=width * 0.95,
                yerr=errs,
                capsize=2,
                error_kw={"lw": 0.8},
                label=f"{method.replace('_', ' ')}, {init}",
                hatch=None if init == "pretrained" else "//",
                alpha=0.9,
            )
            for x, y, up, lb in zip(xs, ys, errs[1], lbs):
                ax.text(x, y + up + 0.5, f"{y:.1f}", ha="center", va="bottom", fontsize=6)
                if lb is not None and lb < y - 1e-9:
                    ax.hlines(lb, x - width * 0.45, x + width * 0.45, colors="black", lw=1.5)
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels(["full" if s is None else f"{s} / class" for s in sizes])
        ax.set_xlabel("training images per class")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_ylim(0, 105)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        if name:
            ax.set_title(name, fontsize=9)
    fig.suptitle(title or "transfer top-1 with 95% intervals (black tick: lower-bound top-1)", fontsize=9)
    save_png(fig, path)


def finetune_curves_plot(rows: list[dict], path: str | os.PathLike, title: str = "") -> bool:
    """Fine-tuning curves from ``transfer/finetune_epochs.jsonl``: a metric against epoch, one line per run.

    Lines are keyed by whichever of ``target``, ``init``, ``train_per_class`` and ``seed`` the rows
    carry; the plotted metric is the first of ``val_top1``, ``top1``, ``val_acc``, ``accuracy``
    present at two or more epochs of some run (val scored only after the last epoch gives one point per
    run), else ``train_loss`` / ``loss``. Returns False (and writes nothing) if the rows have no
    ``epoch`` or no such metric.
    """
    rows = [r for r in rows if r.get("epoch") is not None]

    def key_of(r: dict) -> str:
        tpc = r.get("train_per_class", "n/a")
        parts = (
            r.get("target"),
            r.get("init"),
            "full" if tpc is None else (f"{tpc}/class" if tpc != "n/a" else None),
            f"seed {r['seed']}" if r.get("seed") not in (None, 0) else None,
        )
        return ", ".join(str(x) for x in parts if x is not None) or "run"

    def usable(k: str, need: int) -> bool:
        per: dict[str, int] = {}
        for r in rows:
            if r.get(k) is not None:
                per[key_of(r)] = per.get(key_of(r), 0) + 1
        return bool(per) and max(per.values()) >= need

    metric = next((k for k in ("val_top1", "top1", "val_acc", "accuracy") if usable(k, 2)), None) or next(
        (k for k in ("train_loss", "loss", "val_top1", "top1", "val_acc", "accuracy") if usable(k, 1)), None
    )
    if not rows or metric is None:
        return False
    plt = pyplot()
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r.get(metric) is None:
            continue
        groups.setdefault(key_of(r), []).append((float(r["epoch"]), float(r[metric])))
    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=100)
    scale = 100.0 if "loss" not in metric else 1.0
    for key, pts in sorted(groups.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [scale * p[1] for p in pts], marker="o", ms=3, lw=1.4, label=key)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric + (" (%)" if scale == 100.0 else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(groups) > 8 else 1)
    ax.set_title(title or ("fine-tuning by epoch" + (" (training loss)" if "loss" in metric else "")))
    save_png(fig, path)
    return True


def energy_plot(
    stages: list[str],
    estimate_wh: list[float | None],
    codecarbon_wh: list[float | None],
    path: str | os.PathLike,
    title: str = "",
    assumed: list[bool] | None = None,
) -> None:
    """Horizontal bars of energy per stage (Wh): Patterson estimate vs codecarbon.

    Args:
        stages: stage names, top to bottom.
        estimate_wh, codecarbon_wh: Wh per stage (None or 0 = no bar).
        path: the PNG to write (atomically).
        title: figure title.
        assumed: per stage, True if its estimate rests on assumed busy cores (no energy
            record); those bars are hatched.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 0.55 * len(stages) + 1.6), dpi=100)
    y = np.arange(len(stages))
    h = 0.38
    assumed = assumed or [False] * len(stages)
    est = [v if v and v > 0 else np.nan for v in estimate_wh]
    cc = [v if v and v > 0 else np.nan for v in codecarbon_wh]
    measured_est = [np.nan if a else v for v, a in zip(est, assumed)]
    assumed_est = [v if a else np.nan for v, a in zip(est, assumed)]
    if any(v == v for v in measured_est):
        ax.barh(y - h / 2, measured_est, height=h, color="tab:blue", label="estimate (Patterson formula)")
    if any(v == v for v in assumed_est):
        ax.barh(
            y - h / 2,
            assumed_est,
            height=h,
            color="tab:blue",
            alpha=0.5,
            hatch="//",
            label="estimate, busy cores assumed (no energy record)",
        )
    if any(v == v for v in cc):
        ax.barh(y + h / 2, cc, height=h, label="codecarbon", color="tab:orange")
    ax.set_yticks(y)
    ax.set_yticklabels(stages)
    ax.invert_yaxis()
    for ys, vals in ((y - h / 2, est), (y + h / 2, cc)):
        for yy, v in zip(ys, vals):
            if v == v:
                ax.text(v, yy, f" {v:.3g}", va="center", fontsize=7)
    finite = [v for v in est + cc if v == v]
    if finite and max(finite) / max(min(finite), 1e-12) > 50:
        ax.set_xscale("log")
        ax.set_xlim(min(finite) / 3, max(finite) * 4)
    elif finite:
        ax.set_xlim(0, max(finite) * 1.18)
    ax.set_xlabel("energy per stage (Wh, PUE included)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "energy by stage")
    save_png(fig, path)
