"""Whole pipeline: wall time of ``make demo`` on this machine (goal <= 30 minutes, fetch included).

Nothing is run here (a demo takes many minutes and rewrites ``runs/demo``); the time is read:

1. ``--opt demo_seconds=S`` (``python -m benchmarks --demo-seconds S``): the measured wall
   time of a complete ``make demo`` from an empty ``data/raw`` and run folder, e.g. from
   ``/usr/bin/time -p make demo``. This is the figure the goal is judged on.
2. ``--opt demo_seconds_file=FILE``: the same number read from a file (the first number in
   it, or the ``real`` line of ``time -p`` output).
3. Otherwise ``<run_dir>/run/energy.json`` (the main job's per-stage records): the sum of
   the stages' wall seconds. That excludes the fetch and anything the main job skipped
   or resumed, so it is reported with the stages it covers and no verdict unless every
   stage of the main job is there and ingest processed every input in that run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.common import Context, log, main, result

GOAL_SECONDS = 30 * 60
STAGES = ("ingest", "dedup", "vocab", "pretrain", "transfer")


def _seconds_from_file(path: str) -> float:
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    m = re.search(r"^real\s+([0-9.]+)", text, re.M) or re.search(r"([0-9]+(?:\.[0-9]+)?)", text)
    if not m:
        raise ValueError(f"no number of seconds in {path}")
    return float(m.group(1))


def run(ctx: Context) -> list[dict]:
    title = "whole pipeline: make demo on this machine, fetch included"
    given = ctx.options.get("demo_seconds")
    if given is None and ctx.options.get("demo_seconds_file"):
        given = _seconds_from_file(ctx.options["demo_seconds_file"])
    energy = {}
    p = Path(ctx.run_dir) / "run" / "energy.json"
    if p.exists():
        energy = json.loads(p.read_text(encoding="utf-8"))
    stages = {k: v.get("wall_seconds") for k, v in energy.items() if isinstance(v, dict)}
    ingest_man = Path(ctx.run_dir) / "ingest" / "manifest.json"
    ingest_complete_run = None
    if ingest_man.exists():
        c = json.loads(ingest_man.read_text(encoding="utf-8"))["counts"]
        ingest_complete_run = c.get("processed_this_run") == c.get("input")
    details = {"energy_json_stage_seconds": stages, "energy_json_sum_seconds": round(sum(v or 0 for v in stages.values()), 1),
               "stages_missing_from_energy_json": [s for s in STAGES if s not in stages],
               "ingest_processed_every_input_in_that_run": ingest_complete_run}
    if given is not None:
        s = float(given)
        log(f"demo: {s:.0f} s given")
        return [result("whole_pipeline", ours=s, anchor=None, unit="seconds", goal=f"<= {GOAL_SECONDS} s (30 min)",
                       met=s <= GOAL_SECONDS, title=title, ours_is="measured wall time of make demo (given)",
                       details={**details, "source": "given (--demo-seconds)"})]
    s = details["energy_json_sum_seconds"] if stages else None
    complete = bool(stages) and not details["stages_missing_from_energy_json"] and ingest_complete_run
    note = ("sum of the main job's stage wall seconds in run/energy.json; fetch not included"
            + ("" if complete else "; incomplete (stages missing, or ingest resumed/skipped), so no verdict"))
    log(f"demo: {note}: {s}")
    return [result("whole_pipeline", ours=s, anchor=None, unit="seconds", goal=f"<= {GOAL_SECONDS} s (30 min)",
                   met=(s <= GOAL_SECONDS) if complete and s is not None else None, title=title,
                   ours_is=note, details={**details, "source": "run/energy.json"})]


if __name__ == "__main__":
    main(run)
