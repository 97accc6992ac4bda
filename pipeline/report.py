"""The run report: ``<run_dir>/report.md`` and its plots in ``<run_dir>/report/``.

``python -m pipeline.report RUN_DIR`` regenerates it from a run folder at any time;
:func:`write_report` is what ``pipeline.run`` calls at the end. The report only reads, and
only through the run-folder contract (:mod:`pipeline.io.run_folder`): every number comes from
a stage's ``manifest.json`` and side files (``ingest`` counts and quarantine reasons,
``dedup/eval_contamination.json``, ``vocab/vocab.json``, ``pretrain/metrics.jsonl`` and
``eval.jsonl``, ``transfer/results.json`` and ``finetune_epochs.jsonl``) and from the energy
records ``<run_dir>/run/energy.json`` (``{stage: record}``, see
:func:`pipeline.orchestration.energy.measure_energy`). A stage that has not run is shown as "not
run"; one whose folder exists without a manifest as "running or interrupted"; a section whose
files cannot be read says so instead of failing the report.

Plots (PNG, matplotlib Agg, written atomically): ``class_frequency.png`` (copied from the
vocab stage, or drawn from ``labels.npz`` when the stage ran with ``vocab.plot=false``),
``training_curves.png``, ``heldout_eval.png``, ``transfer.png``, ``finetune_epochs.png``,
``energy.png``. The report holds no absolute paths: the run is named by its folder name
and plots are linked relative to ``report.md``.

The sections live in :mod:`pipeline.reporting` (``stage_sections``, ``pretrain_section``,
``transfer_section``, ``energy_section``, ``projection``; formatting in ``format``, every table by
:func:`pipeline.reporting.format.md_table`); each of the first four reads what its stages wrote into a small
dataclass, turns it into table rows with pure functions (``*_rows``) and adds the prose. The
full-scale projection (:func:`pipeline.reporting.full_scale.project_full_run`) is printed with every
assumption, for two per-device throughput sources: the timm anchor (ResNeXt-101 32x8d,
276 img/s on one RTX 3090 with AMP) and the throughput measured by this run's pretrain
stage, both scaled to the projected model by the mult-adds ratio (a rough scaling).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.io import run_folder as rf
from pipeline.io.atomic import read_json, write_text
from pipeline.io.manifest import code_version
from pipeline.reporting.energy_section import section_energy
from pipeline.reporting.pretrain_section import section_pretrain
from pipeline.reporting.projection import section_projection
from pipeline.reporting.run_view import Run, guard
from pipeline.reporting.stage_sections import section_dedup, section_ingest, section_overview, section_vocab
from pipeline.reporting.transfer_section import section_transfer

PLOTS = (rf.CLASS_FREQUENCY_PLOT, "training_curves.png", "heldout_eval.png", "transfer.png", "finetune_epochs.png", "energy.png")


def build_report(
    run_dir: str | os.PathLike, energy_records: dict | None = None, energy_cfg: Any = None, plot_dir: Path | None = None
) -> tuple[str, set[str]]:
    """The report's markdown text and the names of the PNGs written into ``plot_dir``."""
    run = Run(run_dir)
    plot_dir = Path(plot_dir) if plot_dir is not None else run.dir / rf.PLOT_DIR
    plot_dir.mkdir(parents=True, exist_ok=True)
    records = dict(energy_records) if energy_records is not None else rf.read_energy_records(run.dir)
    made: set[str] = set()
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    lines = [
        f"# Run report: {run.dir.resolve().name}",
        "",
        f"Generated {now} by `python -m pipeline.report` (code {code_version()}). Every number below is read "
        "from the stages' manifests and side files in this run folder.",
        "",
    ]
    parts = [
        ("Stages", lambda: section_overview(run)),
        ("Ingest", lambda: section_ingest(run)),
        ("Dedup", lambda: section_dedup(run)),
        ("Vocabulary", lambda: section_vocab(run, plot_dir, made)),
        ("Pretraining", lambda: section_pretrain(run, plot_dir, made)),
        ("Transfer", lambda: section_transfer(run, plot_dir, made)),
        ("Energy and emissions", lambda: section_energy(run, records, energy_cfg, plot_dir, made)),
        ("Full-scale projection", lambda: section_projection(run, energy_cfg)),
    ]
    for title, fn in parts:
        lines += [f"## {title}", ""] + guard(title, fn) + [""]
    return "\n".join(lines).rstrip() + "\n", made


def write_report(run_dir: str | os.PathLike, energy_records: dict | None = None, energy_cfg: Any = None) -> Path:
    """Write ``<run_dir>/report.md`` (atomically) and its PNGs into ``<run_dir>/report/``.

    Args:
        run_dir: the run folder.
        energy_records: ``{stage: record}`` from :func:`pipeline.orchestration.energy.measure_energy`;
            None = read ``<run_dir>/run/energy.json`` if present.
        energy_cfg: an ``EnergyConfig`` (or dict) for the assumptions of the fallback
            estimates and the projection; None = its defaults.

    Returns:
        The path of ``report.md``.
    """
    run_dir = Path(run_dir)
    plot_dir = run_dir / rf.PLOT_DIR
    text, made = build_report(run_dir, energy_records, energy_cfg, plot_dir)
    for name in PLOTS:  # plots of an earlier report whose data is gone
        if name not in made:
            (plot_dir / name).unlink(missing_ok=True)
    path = run_dir / rf.REPORT_FILE
    write_text(path, text)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.report RUN_DIR``: regenerate the report of a run folder."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="the run folder (with ingest/, dedup/, ... subfolders)")
    ap.add_argument(
        "--energy", default=None, help="energy records JSON ({stage: record}); default <run_dir>/run/energy.json if present"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"error: no run folder {run_dir}", file=sys.stderr)
        return 2
    records = read_json(args.energy) if args.energy else None
    path = write_report(run_dir, records)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
