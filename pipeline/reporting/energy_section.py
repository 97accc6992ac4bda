"""The report's energy section: per-stage energy and emissions, estimate and codecarbon side by side."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.io import run_folder as rf
from pipeline.reporting import energy as E
from pipeline.reporting.energy import energy_setting
from pipeline.reporting.format import fmt_num, fmt_pct, fmt_seconds, md_table
from pipeline.reporting.run_view import NOT_RUN, Run


def section_energy(run: Run, records: dict, ec: Any, plot_dir: Path, made: set[str]) -> list[str]:
    """Energy (Wh) and emissions (g CO2e) per stage: the Patterson et al. 2021 estimate beside codecarbon.

    ``records`` is ``{stage: record}`` (:func:`pipeline.reporting.energy.measure_energy`); a stage with a
    manifest but no record gets an estimate from its manifest's wall time, assuming every core of this
    machine was busy (marked ``*``). ``ec`` is an ``EnergyConfig`` (or dict; None = its defaults).
    """
    from pipeline.reporting.plots import energy_plot

    order = [s for s in rf.STAGES if s in records or run.manifests.get(s)] + sorted(set(records) - set(rf.STAGES))
    if not order:
        return [f"_{NOT_RUN}_: no stage has finished."]
    cores = os.cpu_count() or 1
    pue = float(energy_setting(ec, "pue"))
    grid = float(energy_setting(ec, "grid_kg_per_kwh"))
    w_core = float(energy_setting(ec, "cpu_watts_per_core"))
    rows, names, est_wh, cc_wh, assumed = [], [], [], [], []
    tot_est = tot_cc = tot_kg_est = tot_kg_cc = 0.0
    unmeasured, bases, errors, n_cc = [], set(), set(), 0
    for s in order:
        r = records.get(s)
        est = (r or {}).get("estimate")
        cc = (r or {}).get("codecarbon")
        if est and r is not None:  # est is only set with a record r
            wall = r.get("wall_seconds")
            procs = f"{fmt_num(r.get('busy_cores'))} cores" if not r.get("gpus") else f"{r['gpus']} GPU(s)"
            e_wh, e_g = 1000 * est["kwh"], 1000 * est["kg_co2e"]
            tot_est += e_wh
            tot_kg_est += e_g
            mark = ""
        else:
            man = run.manifests.get(s) or {}
            wall = (r or {}).get("wall_seconds", (r or {}).get("seconds", man.get("seconds")))
            if wall is None:
                continue
            e = E.estimate(float(wall), cores, w_core, pue=pue, grid_kg_per_kwh=grid, processor="CPU core")
            e_wh, e_g = 1000 * e["kwh"], 1000 * e["kg_co2e"]
            procs = f"{cores} cores (assumed)"
            mark = " *"
            unmeasured.append(s)
            tot_est += e_wh
            tot_kg_est += e_g
        if cc:
            c_wh, c_g = 1000 * cc["kwh"], 1000 * cc["kg_co2e"]
            tot_cc += c_wh
            tot_kg_cc += c_g
            n_cc += 1
            bases.add(cc.get("basis", "?"))
            cc_cells = [fmt_num(c_wh), fmt_num(c_g), "measured" if cc.get("measured") else "modelled"]
        else:
            c_wh = None
            if r and r.get("codecarbon_error"):
                errors.add(f"{s}: {r['codecarbon_error']}")
            cc_cells = ["-", "-", "not measured"]
        rows.append(
            [
                s + mark,
                fmt_seconds(wall),
                fmt_num((r or {}).get("cpu_seconds")),
                procs,
                fmt_num(e_wh) + mark,
                fmt_num(e_g) + mark,
                *cc_cells,
            ]
        )
        names.append(s)
        est_wh.append(e_wh)
        cc_wh.append(c_wh)
        assumed.append(bool(mark))
    star = " *" if unmeasured else ""
    rows.append(
        [
            "**total**",
            "",
            "",
            "",
            fmt_num(tot_est) + star,
            fmt_num(tot_kg_est) + star,
            fmt_num(tot_cc) if n_cc else "-",
            fmt_num(tot_kg_cc) if n_cc else "-",
            f"{n_cc} of {len(names)} stages" if 0 < n_cc < len(names) else "",
        ]
    )
    out = [
        "Energy (Wh) and emissions (g CO2e) per stage, PUE included. **Estimate** = Patterson et al. 2021: "
        "kWh = hours x processors x W per processor x PUE / 1000, kg CO2e = kWh x grid intensity; processors = "
        "busy CPU cores (process + children CPU seconds / wall seconds) or GPUs. **codecarbon** = its offline "
        "tracker, a hardware measurement only where it reads energy counters (RAPL, NVML), else its own model.",
        "",
    ]
    out += md_table(
        [
            "stage",
            "wall time",
            "CPU s",
            "processors",
            "estimate Wh",
            "estimate g CO2e",
            "codecarbon Wh",
            "codecarbon g CO2e",
            "codecarbon basis",
        ],
        rows,
        "lrrrrrrrl",
    ) + [""]
    first_est = next((records[s]["estimate"] for s in names if records.get(s, {}).get("estimate")), None)
    assume = first_est or {"pue": pue, "grid_kg_per_kwh": grid, "watts_per_processor": w_core}
    out += [
        "Assumptions:",
        "",
        f"- PUE {fmt_num(assume.get('pue'))} (Patterson et al. 2021: 1.58 US-average datacenter, 1.1 efficient cloud).",
        f"- Grid {fmt_num(assume.get('grid_kg_per_kwh'))} kg CO2e/kWh (Patterson et al. 2021: US average 0.429).",
        f"- CPU: {fmt_num(w_core)} W per busy core (server TDP per hardware thread is about 2-4 W, e.g. "
        "AMD EPYC 9654 360 W / 192 threads, Xeon Platinum 8380 270 W / 80 threads, plus memory and board; "
        "codecarbon's own fallback for unknown CPUs is 4 W per thread).",
        f"- GPU: {fmt_num(energy_setting(ec, 'gpu_watts'))} W per GPU "
        "(Patterson et al. 2021 system power per chip: V100 325 W, P100 271 W).",
    ]
    for b in sorted(bases):
        out.append(f"- codecarbon basis: {b}.")
    ccs = [records[s]["codecarbon"] for s in names if (records.get(s) or {}).get("codecarbon")]
    ram = sum(float(c.get("ram_kwh") or 0) for c in ccs)
    if ccs and ram > 0:
        watts = sorted({fmt_num(c.get("ram_power_w")) for c in ccs if c.get("ram_power_w")})
        out.append(
            f"- codecarbon also counts RAM ({', '.join(watts)} W, modelled from the installed memory size): "
            f"{fmt_pct(ram / max(tot_cc / 1000, 1e-30), 0)} of its energy, a term the Patterson formula "
            "(processors only) leaves out."
        )
    if unmeasured:
        out.append(
            f"- \\* No energy record for {', '.join(unmeasured)} (run one stage at a time rather than through "
            f"`python -m pipeline.run`): the estimate takes the manifest's wall time and assumes all {cores} "
            "cores of the machine that wrote this report were busy; codecarbon did not run."
        )
    for err in sorted(errors):
        out.append(f"- codecarbon unavailable for {err}; the estimate stands alone.")
    out.append("")
    if names:
        energy_plot(names, est_wh, cc_wh, plot_dir / "energy.png", title="energy per stage (PUE included)", assumed=assumed)
        made.add("energy.png")
        out += [f"![energy per stage]({rf.PLOT_DIR}/energy.png)"]
    return out
