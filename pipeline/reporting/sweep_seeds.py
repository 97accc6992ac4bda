"""A sweep's results averaged over pretraining seeds, with intervals, paired differences and a plot.

``pipeline.summarize`` lists one row per job; a finding needs one row per setting: the jobs that
differ only in ``seed`` (the pretraining seed) are a **group**, and each transfer column becomes

* the mean top-1 over the group's pretraining seeds (and, inside each job, its probe seeds) with a
  95% interval from :func:`pipeline.evaluation.intervals.seed_and_val_ci` over the per-image
  correctness each job's transfer stage stored (``transfer/correct.npz``): rows are the pretraining
  seeds (each row the mean over that job's probe seeds), columns the same val images, so the
  interval holds both the seed-to-seed spread (t with few degrees of freedom: 2 seeds give a wide
  interval, as they should) and the val set's sampling noise (Bouthillier et al. 2021);
* the difference to a **baseline** group (the first group, or the one named by ``--baseline``),
  paired by pretraining seed and val image (same seed, same probe subsets, same val images), with
  the same interval over the per-seed difference vectors: a difference whose interval covers 0 is
  inside the noise.

Held-out precision@1 and mAP are averaged with a t-interval over seeds
(:func:`pipeline.evaluation.intervals.seed_spread_ci`).

Jobs may come from other sweeps (``--include``: e.g. the baseline setting run once by another sweep
with the same recipe): a key this sweep varies is read for them from their saved config (Hydra's
``.hydra/config.yaml``, or its config-group choices in ``.hydra/hydra.yaml``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.correctness import correctness_key, load_correctness
from pipeline.evaluation.intervals import seed_and_val_ci, seed_spread_ci
from pipeline.reporting.plots import pyplot, save_png
from pipeline.reporting.sweep_jobs import Interval, Job, load_yaml, read_or_none

__all__ = ["SEED_KEY", "Group", "job_value", "group_jobs", "seed_table", "parse_baseline", "seed_plot"]

SEED_KEY = "seed"


@dataclass
class Group:
    """The jobs of one setting: equal values of every swept key but ``seed``."""

    values: dict[str, str]
    jobs: list[Job] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items()) or "(all jobs)"

    def seeds(self) -> list[str]:
        return [job_value(j, SEED_KEY) or "?" for j in self.jobs]


def _dotted(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def job_value(job: Job, key: str) -> str | None:
    """The value of ``key`` for ``job``: its override, else its config-group choice, else its saved config."""
    if key in job.overrides:
        return job.overrides[key]
    hydra = load_yaml(job.path / ".hydra" / "hydra.yaml") or {}
    choices = _dotted(hydra, "hydra.runtime.choices") or {}
    if key in choices:
        return None if choices[key] is None else str(choices[key])
    value = _dotted(load_yaml(job.path / ".hydra" / "config.yaml") or {}, key)
    if value is None:
        return None
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def group_jobs(jobs: list[Job], keys: list[str]) -> list[Group]:
    """Groups of the ok jobs by their values of ``keys`` (``seed`` left out), in the jobs' order."""
    groups: dict[str, Group] = {}
    for j in jobs:
        if j.status != "ok":
            continue
        values = {k: job_value(j, k) or "-" for k in keys if k != SEED_KEY}
        g = groups.setdefault(json.dumps(values, sort_keys=True), Group(values))
        g.jobs.append(j)
    return list(groups.values())


def parse_baseline(text: str | None) -> dict[str, str]:
    """``"vocab.label_noise=0.0,pretrain.model=resnext_mini"`` -> a dict (empty for None)."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if part.strip():
            if "=" not in part:
                raise ValueError(f"--baseline: expected key=value, got {part!r}")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _per_seed(job: Job, column: str, cache: dict) -> np.ndarray | None:
    """(N,) float: the job's correctness of ``column`` (``top1 TARGET METHOD INIT N``) averaged over its probe seeds."""
    parts = column.split(" ")
    if len(parts) != 5 or parts[0] != "top1":
        return None
    if job.name not in cache:
        cache[job.name] = read_or_none(lambda: load_correctness(job.path)) or {}
    per_class = None if parts[4] == "full" else int(parts[4])
    arr = cache[job.name].get(correctness_key(parts[1], parts[2], parts[3], per_class) + "/top1")
    return None if arr is None else np.asarray(arr, dtype=np.float64).reshape(-1, np.asarray(arr).shape[-1]).mean(axis=0)


def _interval(rows: list[np.ndarray]) -> Interval | None:
    if not rows or len({r.shape for r in rows}) != 1:
        return None
    ci = seed_and_val_ci(np.stack(rows))
    lo, hi = (None, None) if math.isnan(ci.lo) else (ci.lo, ci.hi)
    return Interval(ci.mean, lo, hi)


def seed_table(
    groups: list[Group], columns: list[str], baseline: dict[str, str] | None = None
) -> tuple[list[str], list[list[Any]], Group | None]:
    """One row per group: its values, seeds, held-out metrics and each top-1 column (mean [95% interval]),
    then each top-1 column's paired difference to the baseline group (``diff ...``).

    Returns:
        ``(header, rows, baseline group or None)``.
    """
    base = None
    if groups:
        base = next((g for g in groups if baseline and all(g.values.get(k) == v for k, v in baseline.items())), None)
        base = base or (None if baseline else groups[0])
    cache: dict = {}
    keys = list(groups[0].values) if groups else []
    top1 = [c for c in columns if c.startswith("top1 ")]
    header = [*keys, "seeds", "heldout_precision_at_1", "heldout_mAP", *top1, *[f"diff {c[5:]}" for c in top1]]
    rows = []
    for g in groups:
        row: list[Any] = [g.values[k] for k in keys] + [",".join(g.seeds())]
        for metric in ("heldout_precision_at_1", "heldout_mAP"):
            vals = [float(j.results[metric]) for j in g.jobs if j.results.get(metric) is not None]
            ci = seed_spread_ci(vals) if vals else None
            row.append(None if ci is None else Interval(ci.mean, *((None, None) if math.isnan(ci.lo) else (ci.lo, ci.hi))))
        for c in top1:
            row.append(_interval([r for r in (_per_seed(j, c, cache) for j in g.jobs) if r is not None]))
        for c in top1:
            if base is None or g is base:
                row.append(None)
                continue
            by_seed = {job_value(j, SEED_KEY): _per_seed(j, c, cache) for j in base.jobs}
            diffs = []
            for j in g.jobs:
                a, b = _per_seed(j, c, cache), by_seed.get(job_value(j, SEED_KEY))
                if a is not None and b is not None and a.shape == b.shape:
                    diffs.append(a - b)
            row.append(_interval(diffs))
        rows.append(row)
    return header, rows, base


def _numeric(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def seed_plot(
    header: list[str], rows: list[list[Any]], x_key: str, columns: list[str], path: str | Path, title: str = ""
) -> bool:
    """Mean top-1 with 95% intervals per group against ``x_key`` (PNG). Numeric x: one line per value of the
    other keys (a log axis when the values span 4x or more, as for data fractions); otherwise bars.

    Returns:
        False (nothing written) when ``x_key`` is not a column or no column has a value.
    """
    if x_key not in header:
        return False
    xi = header.index(x_key)
    others = [i for i, h in enumerate(header[: header.index("seeds")]) if i != xi]
    cols = [c for c in columns if c in header and any(isinstance(r[header.index(c)], Interval) for r in rows)]
    if not cols:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.4), squeeze=False)
    for ax, col in zip(axes[0], cols):
        ci = header.index(col)
        series: dict[str, list[tuple[str, Interval]]] = {}
        for r in rows:
            if isinstance(r[ci], Interval):
                series.setdefault(", ".join(f"{header[i]}={r[i]}" for i in others), []).append((r[xi], r[ci]))
        xs_all = _numeric([x for pts in series.values() for x, _ in pts])
        categories = list(dict.fromkeys(x for pts in series.values() for x, _ in pts))
        for n, (name, pts) in enumerate(series.items()):
            pts = sorted(pts, key=lambda p: float(p[0])) if xs_all else pts
            y = np.array([p[1].mean for p in pts]) * 100
            err = np.array([[p[1].mean - (p[1].lo or p[1].mean), (p[1].hi or p[1].mean) - p[1].mean] for p in pts]).T * 100
            if xs_all:
                x = np.array([float(p[0]) for p in pts])
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name or None)
            else:
                width = 0.8 / max(1, len(series))
                pos = np.array([categories.index(p[0]) for p in pts]) + n * width
                ax.bar(pos, y, width, yerr=err, capsize=3, label=name or None)
                ax.set_xticks(np.arange(len(categories)) + 0.4 - width / 2, categories, rotation=30, ha="right")
        if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(x_key)
        ax.set_ylabel("top-1 (%), mean over seeds, 95% interval")
        ax.set_title(col[5:], fontsize=8)
        if len(series) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return True
