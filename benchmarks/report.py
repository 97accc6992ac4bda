"""Writes ``benchmarks/RESULTS.md`` from the result rows (see :mod:`benchmarks.__main__`).

:data:`NOTES` holds what the figures alone do not say: where the time goes (from the
profiles) and what was tried, per result name. They are written by people from the
profiles and experiments, and shown next to the figures of every run, so keep them
about causes, not about particular numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.profile import markdown as profile_markdown

NOTES: dict[str, str] = {}


def fmt(x, unit: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    x = float(x)
    if unit.startswith("fraction"):
        return f"{100 * x:.1f}%"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _met(m) -> str:
    return {True: "**met**", False: "**not met**", None: "–"}[m]


def _details(d: dict, skip=("shards",)) -> list[str]:
    out = []
    for k, v in d.items():
        if k in skip or v is None:
            continue
        if isinstance(v, float):
            v = fmt(v)
        elif isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
            v = ", ".join(fmt(x) for x in v)
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, default=str)
            if len(v) > 400:
                v = v[:400] + " ..."
        out.append(f"  - {k}: {v}")
    return out


def write_report(path: Path, rows: list[dict], *, machine: dict, command: str, started: str, total_seconds: float,
                 runs: dict, mode: str, run_dir: str, previous_profiles: dict) -> None:
    L: list[str] = ["# Benchmarks", ""]
    L += [f"Measured by `{command}` (`make bench` runs `python -m benchmarks`), started {started}, "
          f"{mode} run, {total_seconds / 60:.1f} min, on the demo run `{run_dir}`. Each figure is the median of the "
          "reps of a measurement; ours and its anchor ran interleaved in the same process on the same real images. "
          "Rows measured by an earlier run (`--only`) say so in the last column.", ""]
    L += ["| what | ours | anchor | unit | ratio | goal | met | measured |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r.get("measured", {})
        when = "this run" if m.get("at") == started else f"{m.get('at', '?')} ({m.get('mode', '?')})"
        L.append(f"| {r['name']} | {fmt(r['ours'], r['unit'])} | {fmt(r['anchor'], r['unit'])} | {r['unit']} | "
                 f"{fmt(r['ratio'])} | {r['goal']} | {_met(r.get('met'))} | {when} |")
    L += ["", "## Machine", ""]
    v = machine.get("versions", {})
    L += [f"- {machine.get('cores')} cores, {machine.get('cpu_model')} ({', '.join(machine.get('cpu_features', []))}), "
          f"{machine.get('memory_gib')} GiB, no GPU",
          f"- Python {machine.get('python')}, {machine.get('platform')}",
          "- " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
          f"- load average at the start: {machine.get('load_average')}; before each measurement: "
          + ", ".join(f"{k} {r.get('load_average_before')}" for k, r in runs.items()),
          "- seconds per measurement: " + ", ".join(f"{k} {r['seconds']:.0f}" for k, r in runs.items()), ""]
    if mode == "quick":
        L += ["**Quick run**: small sizes and one rep, for development; the figures are indicative only.", ""]
    L += ["## Measurements", ""]
    for r in rows:
        L += [f"### {r['name']}: {r.get('title', '')}", ""]
        if r.get("ours_is"):
            L.append(f"- ours: {r['ours_is']}")
        if r.get("anchor_is"):
            L.append(f"- anchor: {r['anchor_is']}")
        L.append(f"- result: ours {fmt(r['ours'], r['unit'])}, anchor {fmt(r['anchor'], r['unit'])} {r['unit']}, "
                 f"ratio {fmt(r['ratio'])}; goal {r['goal']}: {_met(r.get('met'))}")
        det = _details(r.get("details", {}))
        if det:
            L += ["- details:", *det]
        if r["name"] in NOTES:
            L += ["", NOTES[r["name"]]]
        L.append("")
    unmet = [r for r in rows if r.get("met") is False]
    if unmet or previous_profiles:
        L += ["## Goals not met: bottlenecks and profiles", ""]
        shown = set()
        for r in unmet:
            L.append(f"- **{r['name']}** ({r['goal']}, ratio {fmt(r['ratio'])}): see the notes under its measurement.")
        L.append("")
        for mod, prof in previous_profiles.items():
            if mod in shown:
                continue
            shown.add(mod)
            L += [f"### Profile: {mod}", "", profile_markdown(mod, prof)]
    L += ["## Projection to the paper's setting", ""]
    try:
        from benchmarks.project import defaults_from_results, project, table

        d = _defaults(rows, defaults_from_results)
        if d.get("images_per_second") and d.get("loader_per_core"):
            import os

            from pipeline.energy import CPU_WATTS_PER_CORE

            cores = os.cpu_count() or 1
            res = project(images_per_second=d["images_per_second"], measured_model=d["measured_model"],
                          measured_image_size=d["measured_image_size"], loader_per_core=d["loader_per_core"],
                          device=f"{cores}-core CPU", device_watts=cores * CPU_WATTS_PER_CORE,
                          throughput_source="this machine's CPU, train_step row")
            L += ["`python -m benchmarks.project` with this run's figures (GPU counts 8, 64 and 336 shown; "
                  "pass `--images-per-second X` for a measured GPU figure):", "", table(res, gpus_shown=(8, 64, 336)),
                  "", "Assumptions:", ""] + [f"- {s}" for s in res["assumptions"]]
            if d.get("loader_source"):
                L.append(f"- loader rate measured as {d['loader_source']}")
        else:
            L.append("Needs the train_step and loader rows.")
    except Exception as exc:  # the report must not fail on the projection
        L.append(f"(projection failed: {type(exc).__name__}: {exc})")
    L += ["", "## Reproduce", "",
          "```bash",
          "make demo                     # the demo run the benchmarks read (runs/demo)",
          "make bench                    # installs .[test,bench] and runs python -m benchmarks (< 20 min on 2 cores)",
          "python -m benchmarks --quick --only loader      # one measurement, small sizes",
          "python -m benchmarks --profile loader --keep-work   # py-spy speedscope profile of our side",
          "python -m benchmarks --demo-seconds S            # record a measured `make demo` wall time",
          "python -m benchmarks.project --images-per-second X   # projection from a measured per-GPU figure",
          "```", ""]
    path.write_text("\n".join(L), encoding="utf-8")


def _defaults(rows: list[dict], from_results) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as t:
        p = Path(t) / "results.json"
        p.write_text(json.dumps(rows), encoding="utf-8")
        return from_results(p)
