"""Whole pipeline: wall time of the demo on this machine (goal <= 30 minutes, fetch included).

Only measured figures, never a number typed on the command line:

1. ``--opt command="make demo"`` (``python -m benchmarks --demo-command "make demo"``): this module runs
   the command from the repository root and times it (wall clock, fetch included when the command
   fetches). This is the figure the goal is judged on; it rewrites the demo run folder.
2. Otherwise the run folder's own records, read through the run-folder contract
   (:mod:`pipeline.io.run_folder`): ``run/energy.json`` holds each stage's wall seconds as measured
   by ``pipeline.run`` while the stage ran. Their sum excludes the fetch and anything the main job
   skipped or resumed, so it gets a verdict only when every stage of the main job is there and
   ingest processed every input in that run, and then only "not met" when the sum alone exceeds the
   goal (without the fetch it is a lower bound of the demo's time); it is labelled with the stages it covers.
"""

from __future__ import annotations

import datetime as dt
import shlex
import subprocess
import time

from benchmarks.common import REPO, Context, log, main, result
from pipeline.io import run_folder as rf

GOAL_SECONDS = 30 * 60
TITLE = "whole pipeline: make demo on this machine, fetch included"


def _timed(command: str) -> dict:
    """Run ``command`` from the repository root; its wall seconds and exit status."""
    log(f"demo: timing `{command}`")
    t0 = time.perf_counter()
    p = subprocess.run(shlex.split(command), cwd=REPO)
    return {"seconds": round(time.perf_counter() - t0, 1), "returncode": p.returncode}


def _span_seconds(records: dict) -> float | None:
    """Seconds from the first stage's start to the last stage's end (idle gaps between resumed stages included)."""
    spans = []
    for r in records.values():
        if isinstance(r, dict) and r.get("started_at") and r.get("wall_seconds") is not None:
            t = dt.datetime.fromisoformat(r["started_at"]).timestamp()
            spans.append((t, t + float(r["wall_seconds"])))
    return round(max(e for _, e in spans) - min(s for s, _ in spans), 1) if spans else None


def run(ctx: Context) -> list[dict]:
    goal = f"<= {GOAL_SECONDS} s (30 min)"
    records = rf.read_energy_records(ctx.run_dir)
    stages = {k: v.get("wall_seconds") for k, v in records.items() if isinstance(v, dict)}
    ingest = rf.read_manifest(rf.stage_dir(ctx.run_dir, rf.INGEST))
    c = (ingest or {}).get("counts") or {}
    ingest_complete_run = c.get("processed_this_run") == c.get("input") if ingest else None
    details = {
        "energy_json_stage_seconds": stages,
        "energy_json_sum_seconds": round(sum(v or 0 for v in stages.values()), 1),
        "energy_json_span_seconds": _span_seconds(records),
        "stages_missing_from_energy_json": [s for s in rf.STAGES if s not in stages],
        "ingest_processed_every_input_in_that_run": ingest_complete_run,
    }
    command = ctx.options.get("command")
    if command:
        t = _timed(str(command))
        ok = t["returncode"] == 0
        return [
            result(
                "whole_pipeline",
                ours=t["seconds"],
                anchor=None,
                unit="seconds",
                goal=goal,
                met=(t["seconds"] <= GOAL_SECONDS) if ok else None,
                title=TITLE,
                ours_is=f"wall time of `{command}`, timed by benchmarks.demo"
                + ("" if ok else f" (failed: exit status {t['returncode']}, no verdict)"),
                details={**details, "source": "timed by benchmarks.demo", "returncode": t["returncode"]},
            )
        ]
    s = details["energy_json_sum_seconds"] if stages else None
    complete = bool(stages) and not details["stages_missing_from_energy_json"] and bool(ingest_complete_run)
    note = (
        "sum of the main job's stage wall seconds in run/energy.json (measured by pipeline.run); fetch not included, "
        "so a lower bound: 'not met' when it alone exceeds the goal, else no verdict (time the demo with "
        "--demo-command for one)"
        + ("" if complete else "; incomplete (stages missing, or ingest resumed/skipped), so no verdict")
    )
    log(f"demo: {note}: {s}")
    return [
        result(
            "whole_pipeline",
            ours=s,
            anchor=None,
            unit="seconds",
            goal=goal,
            met=False if complete and s is not None and s > GOAL_SECONDS else None,
            title=TITLE,
            ours_is=note,
            details={**details, "source": "run/energy.json"},
        )
    ]


if __name__ == "__main__":
    main(run)
