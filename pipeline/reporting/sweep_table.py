"""The table of a sweep (``pipeline.summarize``): its columns, and the table as markdown and CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from pipeline.io import run_folder as rf
from pipeline.reporting.format import md_table
from pipeline.reporting.sweep_jobs import SHARED, Interval, Job, read_or_none


def swept_keys(jobs: list[Job]) -> tuple[list[str], str]:
    """The columns of swept values and where they come from ("overrides" or "manifests").

    Keys whose value differs between jobs (with a single job: all of its overrides). Jobs
    without saved overrides fall back on the configs in their stage manifests.
    """
    use_overrides = any(j.overrides for j in jobs)
    values = [j.overrides if use_overrides else j.config_values for j in jobs]
    keys: list[str] = []
    for v in values:
        keys += [k for k in v if k not in keys]
    if len(jobs) > 1 or not use_overrides:
        keys = [k for k in keys if len({json.dumps(v.get(k), sort_keys=True, default=str) for v in values}) > 1]
    return keys, ("overrides" if use_overrides else "manifests")


def _shared_info(root: Path, jobs: list[Job]) -> list[str]:
    shared = root / SHARED
    if not shared.is_dir():
        return []
    done = [s for s in rf.STAGES if rf.path(shared, s, rf.MANIFEST).exists()]
    linked = {s: sum(1 for j in jobs if (j.path / s).is_symlink()) for s in done}
    energy = read_or_none(lambda: rf.read_energy_records(shared)) or {}
    secs = sum(float(e.get("wall_seconds") or 0) for e in energy.values() if isinstance(e, dict))
    parts = [f"`{s}` (linked by {linked[s]} of {len(jobs)} jobs)" for s in done]
    return [
        f"Shared stages, run once in `{SHARED}/`: {', '.join(parts) or 'none finished'}" + (f"; {secs:.1f} s." if secs else ".")
    ]


# --------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------


def table(jobs: list[Job]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows (raw values): job, swept values, status, results, error."""
    keys, source = swept_keys(jobs)
    result_keys = ["heldout_precision_at_1", "heldout_mAP"]
    top1: list[str] = []
    for j in jobs:
        top1 += [k for k in j.results if k.startswith(("top1 ", "gain ")) and k not in top1]
    targets: list[str] = []
    for k in top1:
        if k.split(" ")[1] not in targets:
            targets.append(k.split(" ")[1])
    order = {"linear_probe": 0, "finetune": 1}

    def tkey(k: str):
        parts = k.split(" ")
        kind, target, method = parts[0], parts[1], parts[2]
        init, tpc = (parts[3], parts[4]) if kind == "top1" else ("~gain", parts[3])
        return (
            targets.index(target),
            order.get(method, 9),
            tpc == "full",
            int(tpc) if tpc.isdigit() else 0,
            init != "pretrained",
            init,
        )

    result_keys += sorted(top1, key=tkey) + ["seconds"]
    header = ["job", *keys, "status", *result_keys, "error"]
    rows = []
    for j in jobs:
        vals = j.overrides if source == "overrides" else j.config_values
        rows.append([j.name, *[vals.get(k) for k in keys], j.status, *[j.results.get(k) for k in result_keys], j.error])
    return header, rows


def _fmt(x: Any, column: str = "") -> str:
    if isinstance(x, Interval):
        sign = "+" if column.startswith(("gain ", "diff ")) else ""
        if x.mean is None:
            return "-"
        if x.lo is None or x.hi is None:
            return f"{x.mean:{sign}.4f}"
        return f"{x.mean:{sign}.4f} [{x.lo:{sign}.4f}, {x.hi:{sign}.4f}]"
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.1f}" if column == "seconds" else f"{x:.4f}"
    return str(x)


def to_markdown(sweep_dir: Path, jobs: list[Job], header: list[str], rows: list[list[Any]]) -> str:
    """``summary.md``: the sweep's name, job counts by status, the shared stages, a legend and the table."""
    n_ok = sum(j.status == "ok" for j in jobs)
    n_failed = sum(j.status == "failed" for j in jobs)
    lines = [
        f"# Sweep `{sweep_dir.name}`",
        "",
        f"{len(jobs)} jobs: {n_ok} ok, {n_failed} failed, {len(jobs) - n_ok - n_failed} incomplete.",
        "",
    ]
    lines += _shared_info(sweep_dir, jobs)
    lines += [
        "",
        "Swept values come from each job's `.hydra/overrides.yaml`; precision@1 and mAP are "
        "measured on the held-out share of the pretraining set; `top1 TARGET METHOD INIT N` is transfer "
        "top-1 on TARGET with N labelled images per class (`full`: the capped full set) and its 95% "
        "interval in brackets; `gain TARGET METHOD N` is pretrained minus scratch top-1 with its 95% "
        "interval (no measurable gain where it covers 0); seconds count the job's own stages.",
        "",
    ]
    return "\n".join(lines + markdown_table(header, rows)) + "\n"


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """The lines of the markdown table of :func:`table`'s header and rows (:func:`pipeline.reporting.format.md_table`).

    Metrics with 4 decimals, seconds with 1, intervals as ``mean [lo, hi]`` (signed in ``gain``/``diff``
    columns), missing values as ``-``; the columns after ``status`` but the last (``error``) right-aligned.
    """
    first_result = header.index("status") + 1 if "status" in header else len(header)
    align = ["r" if first_result <= i < len(header) - 1 else "l" for i in range(len(header))]
    return md_table(header, [[_fmt(c, h) for c, h in zip(r, header, strict=True)] for r in rows], align)


def to_csv(header: list[str], rows: list[list[Any]]) -> str:
    """CSV of the table; a column holding intervals becomes three: ``COL``, ``COL lo``, ``COL hi``."""
    wide = {i for i in range(len(header)) if any(isinstance(r[i], Interval) for r in rows)}
    head: list[str] = []
    for i, h in enumerate(header):
        head += [h, f"{h} lo", f"{h} hi"] if i in wide else [h]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in rows:
        out: list[Any] = []
        for i, c in enumerate(r):
            if i in wide:
                out += list(c) if isinstance(c, Interval) else [c, None, None]
            else:
                out.append(c)
        w.writerow(["" if c is None else c for c in out])
    return buf.getvalue()
