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

Nothing here writes outside the sweep folder, and the files name no absolute path. The blocks live in
:mod:`pipeline.reporting.sweep_jobs` (reading the jobs) and :mod:`pipeline.reporting.sweep_table` (the table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.io.atomic import write_text
from pipeline.reporting.sweep_jobs import read_sweep
from pipeline.reporting.sweep_table import table, to_csv, to_markdown

SUMMARY_MD, SUMMARY_CSV = "summary.md", "summary.csv"


def write_summary(sweep_dir: str | Path) -> dict:
    """Write ``summary.md`` and ``summary.csv`` into ``sweep_dir``; return paths, header and rows.

    Raises:
        FileNotFoundError: ``sweep_dir`` is not a folder.
    """
    root = Path(sweep_dir)
    jobs = read_sweep(root)
    header, rows = table(jobs)
    md = to_markdown(root, jobs, header, rows)
    write_text(root / SUMMARY_MD, md)
    write_text(root / SUMMARY_CSV, to_csv(header, rows))
    return {"markdown": root / SUMMARY_MD, "csv": root / SUMMARY_CSV, "header": header, "rows": rows, "text": md}


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.summarize SWEEP_DIR``: write the summary, print the markdown; 2 if no such folder."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.summarize", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", help="the sweep folder (hydra.sweep.dir), e.g. runs/sweeps/resampling_x_loss")
    args = ap.parse_args(argv)
    try:
        out = write_summary(args.sweep_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out["text"], end="")
    print(f"\nwrote {out['markdown']} and {out['csv']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
