"""One table for a sweep: ``python -m pipeline.summarize <sweep folder>``.

A sweep (``python -m pipeline.run -m experiment=NAME``, see ``conf/experiment/sweep.yaml``)
leaves one run folder per job under ``hydra.sweep.dir``. This module reads them and writes
``summary.md`` and ``summary.csv`` into the sweep folder (atomically), one row per job:

* the **swept values**, one column per key whose value differs between jobs, read from the
  overrides Hydra saved for the job (``<job>/.hydra/overrides.yaml``); for a folder without
  them, from the configs recorded in the job's stage manifests (``vocab``, ``pretrain``,
  ``transfer``);
* the **status**: ``ok`` (every stage the job asked for has its manifest), ``failed`` (the
  job raised: ``<job>/run/error.txt``, written by ``pipeline.run``, holds the traceback and
  the table its last line), or ``incomplete`` (killed, preempted or still running: no error
  recorded, a manifest missing; the last line of ``<job>/run.log`` is shown). Failed jobs are
  kept in the table, never dropped;
* the **results**: held-out precision@1 and mAP after pretraining (``pretrain/manifest.json``),
  transfer top-1 per target, method, init and labelled images per class with its 95% interval
  (``top1 TARGET METHOD INIT N``), the pretrained-minus-scratch top-1 difference with its interval
  (``gain TARGET METHOD N``) where both inits ran (``transfer/results.json``), and the job's own
  wall-clock seconds (``run/energy.json``; shared stages are counted once, in
  ``shared/run/energy.json``, and shown in the header). In ``summary.md`` an interval reads
  ``0.6120 [0.5900, 0.6340]``; ``summary.csv`` gives it as three columns (``COL``, ``COL lo``, ``COL hi``).

Below the per-job table, ``summary.md`` has the **mean over pretraining seeds** (jobs that differ
only in ``seed`` form a group): each transfer column's mean top-1 with a 95% interval over seeds and
val images, and its difference to a baseline group paired by seed and val image
(:mod:`pipeline.reporting.sweep_seeds`); the same table is ``summary_seeds.csv``, and
``summary.png`` plots it against one swept key (``--plot-x``; default: the first swept key).

    python -m pipeline.summarize SWEEP_DIR [--include JOB_DIR ...] [--baseline key=value,...] [--plot-x KEY]

``--include`` adds job folders of other sweeps (the baseline setting another sweep ran with the same
recipe); their values of this sweep's keys are read from their saved configs. A file
``<sweep>/include.txt`` (one job folder per line, relative to the sweep folder; ``#`` comments) adds
its folders every time, so the notebook and later summaries see the same jobs.

Nothing here writes outside the sweep folder, and the files name no absolute path. The blocks live in
:mod:`pipeline.reporting.sweep_jobs` (reading the jobs), :mod:`pipeline.reporting.sweep_table` (the table)
and :mod:`pipeline.reporting.sweep_seeds` (seeds, differences, plot).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from pipeline.io.atomic import write_text
from pipeline.reporting.sweep_jobs import read_job, read_sweep
from pipeline.reporting.sweep_seeds import SEED_KEY, group_jobs, job_value, parse_baseline, seed_plot, seed_table
from pipeline.reporting.sweep_table import markdown_table, swept_keys, table, to_csv, to_markdown

SUMMARY_MD, SUMMARY_CSV, SEEDS_CSV, SUMMARY_PNG = "summary.md", "summary.csv", "summary_seeds.csv", "summary.png"
INCLUDE_FILE = "include.txt"  # job folders of other sweeps counted as jobs of this one, relative to the sweep folder


def included_jobs(sweep_dir: str | Path, include: Sequence[str | Path] = ()) -> list[Path]:
    """The folders of ``<sweep_dir>/include.txt`` (relative to the sweep folder) and then ``include``."""
    root = Path(sweep_dir)
    listed = []
    if (root / INCLUDE_FILE).is_file():
        for line in (root / INCLUDE_FILE).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                listed.append(root / line)
    return listed + [Path(p) for p in include]


def summarize_sweep(
    sweep_dir: str | Path, include: Sequence[str | Path] = (), baseline: str | None = None, plot_x: str | None = None
) -> dict:
    """The per-job table and the seed table of a sweep, without writing anything (see :func:`write_summary`).

    Returns:
        ``jobs``, ``header``/``rows`` (per job), ``seed_header``/``seed_rows``, ``baseline`` (the group or None),
        ``plot_x`` (the key for the plot, or None) and ``text`` (the markdown of ``summary.md``).
    """
    root = Path(sweep_dir)
    jobs = read_sweep(root)
    own_keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    for p in included_jobs(root, include):
        if not p.is_dir():
            raise FileNotFoundError(f"--include: no job folder {p}")
        job = read_job(p)
        job.name = f"{p.parent.name}/{p.name}"
        job.overrides = {k: v for k in own_keys if (v := job_value(job, k)) is not None}
        jobs.append(job)
    header, rows = table(jobs)
    md = to_markdown(root, jobs, header, rows)
    wanted = parse_baseline(baseline)
    groups = group_jobs(jobs, [k for k in swept_keys(jobs)[0] if k != SEED_KEY])
    s_header, s_rows, base = seed_table(groups, header, wanted)
    if wanted and base is None:
        raise ValueError(f"--baseline {baseline}: no group has these values ({[g.label for g in groups]})")
    x = (plot_x or next(iter(groups[0].values), None)) if groups else None
    if groups:
        md += "\n".join(
            [
                "",
                "## Mean over pretraining seeds",
                "",
                f"Jobs that differ only in `{SEED_KEY}` form a group. Each top-1 is the mean over the group's "
                "pretraining seeds (and each job's probe seeds) with a 95% interval over seeds and val images "
                "(`pipeline.evaluation.intervals.seed_and_val_ci`: 2 seeds give wide intervals); `diff` is the "
                f"difference to the baseline group ({base.label if base else 'none'}), paired by seed and val "
                "image: inside the noise where its interval covers 0. Held-out metrics: t-interval over seeds."
                + (f" Plot: `{SUMMARY_PNG}` (x: `{x}`)." if x else ""),
                "",
                *markdown_table(s_header, s_rows),
                "",
            ]
        )
    return {
        "jobs": jobs,
        "header": header,
        "rows": rows,
        "seed_header": s_header,
        "seed_rows": s_rows,
        "baseline": base,
        "plot_x": x,
        "text": md,
    }


def write_summary(
    sweep_dir: str | Path, include: Sequence[str | Path] = (), baseline: str | None = None, plot_x: str | None = None
) -> dict:
    """Write ``summary.md``, ``summary.csv``, ``summary_seeds.csv`` and ``summary.png`` into ``sweep_dir``.

    Args:
        include: job folders of other sweeps to count as jobs of this one (besides ``include.txt``; module doc).
        baseline: ``key=value,...`` of the group the differences are taken to (default: the first group).
        plot_x: the swept key on the plot's x axis (default: the first swept key but ``seed``).

    Returns:
        :func:`summarize_sweep`'s dict plus the paths written (``markdown``, ``csv``, ``seeds_csv``, ``plot``:
        None when nothing could be plotted).

    Raises:
        FileNotFoundError: ``sweep_dir`` or an included folder is not a folder.
        ValueError: a malformed ``baseline``, or one that names no group.
    """
    root = Path(sweep_dir)
    out = summarize_sweep(root, include, baseline, plot_x)
    top1 = [c for c in out["seed_header"] if c.startswith("top1 ")]
    plotted = bool(out["plot_x"]) and seed_plot(
        out["seed_header"], out["seed_rows"], out["plot_x"], top1, root / SUMMARY_PNG, title=root.name
    )
    write_text(root / SUMMARY_MD, out["text"])
    write_text(root / SUMMARY_CSV, to_csv(out["header"], out["rows"]))
    write_text(root / SEEDS_CSV, to_csv(out["seed_header"], out["seed_rows"]))
    if not plotted:
        (root / SUMMARY_PNG).unlink(missing_ok=True)
    paths = {"markdown": root / SUMMARY_MD, "csv": root / SUMMARY_CSV, "seeds_csv": root / SEEDS_CSV}
    return {**out, **paths, "plot": root / SUMMARY_PNG if plotted else None}


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.summarize SWEEP_DIR``: write the summary, print the markdown; 2 if no such folder."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.summarize", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", help="the sweep folder (hydra.sweep.dir), e.g. runs/sweeps/resampling_x_loss")
    ap.add_argument("--include", nargs="*", default=[], help="job folders of other sweeps to count as jobs of this one")
    ap.add_argument("--baseline", help="key=value,... of the group differences are taken to (default: the first group)")
    ap.add_argument("--plot-x", help="the swept key on the plot's x axis (default: the first swept key)")
    args = ap.parse_args(argv)
    try:
        out = write_summary(args.sweep_dir, args.include, args.baseline, args.plot_x)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out["text"], end="")
    print(f"\nwrote {out['markdown']} and {out['csv']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
