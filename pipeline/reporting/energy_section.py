"""The report's energy section: per-stage energy and emissions, estimate and codecarbon side by side.

Built as data -> rows -> table: :func:`energy_inputs` collects the energy records, the manifests'
wall times and the estimate's settings into :class:`EnergyInputs`; :func:`stage_energy` (pure) works
out each stage's figures (:class:`StageEnergy`, the Patterson et al. 2021 estimate where a stage has no
record); :func:`energy_rows` (pure) formats the table; :func:`section_energy` adds the prose,
the assumptions and the plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.io import run_folder as rf
from pipeline.reporting import energy as E
from pipeline.reporting.energy import energy_setting
from pipeline.reporting.format import fmt_num, fmt_pct, fmt_seconds, md_table
from pipeline.reporting.plots import energy_plot
from pipeline.reporting.run_view import NOT_RUN, Run
from pipeline.system import available_cores

ENERGY_HEADER = [
    "stage",
    "wall time",
    "CPU s",
    "processors",
    "estimate Wh",
    "estimate g CO2e",
    "codecarbon Wh",
    "codecarbon g CO2e",
    "codecarbon basis",
]


@dataclass(frozen=True)
class EnergyInputs:
    """What the energy section reads.

    Attributes:
        stages: the stages with an energy record or a manifest, in pipeline order, then any other recorded names (sorted).
        records: ``{stage: record}`` (:func:`pipeline.orchestration.energy.measure_energy`; ``run/energy.json``).
        manifest_seconds: ``{stage: wall time (s)}`` from each stage's manifest (None without one).
        cores: CPU cores the process writing the report may use (:func:`pipeline.system.available_cores`),
            assumed busy for a stage without a record.
        pue, grid_kg_per_kwh, cpu_watts_per_core, gpu_watts: the ``EnergyConfig`` settings (kg CO2e/kWh, W).
    """

    stages: list[str]
    records: dict[str, dict]
    manifest_seconds: dict[str, float | None]
    cores: int
    pue: float
    grid_kg_per_kwh: float
    cpu_watts_per_core: float
    gpu_watts: float


def energy_inputs(run: Run, records: dict, ec: Any) -> EnergyInputs:
    """The section's inputs: ``records`` as given, the run's manifests, ``ec`` (``EnergyConfig``, dict or None = defaults)."""
    stages = [s for s in rf.STAGES if s in records or run.manifests.get(s)] + sorted(set(records) - set(rf.STAGES))
    return EnergyInputs(
        stages=stages,
        records=dict(records),
        manifest_seconds={s: (run.manifests.get(s) or {}).get("seconds") for s in stages},
        cores=available_cores(),
        pue=float(energy_setting(ec, "pue")),
        grid_kg_per_kwh=float(energy_setting(ec, "grid_kg_per_kwh")),
        cpu_watts_per_core=float(energy_setting(ec, "cpu_watts_per_core")),
        gpu_watts=float(energy_setting(ec, "gpu_watts")),
    )


@dataclass(frozen=True)
class StageEnergy:
    """One stage's energy figures.

    Attributes:
        stage: the stage name.
        wall_seconds: its wall time (s).
        cpu_seconds: its process + children CPU time (s), if recorded.
        busy_cores: busy CPU cores of the record (CPU s / wall s), or ``cores`` where ``assumed``.
        gpus: GPUs the record counts (0: CPU only; always 0 where ``assumed``).
        estimate: the Patterson estimate (:func:`pipeline.reporting.energy.estimate`: ``kwh``, ``kg_co2e``, ``pue``, ...).
        assumed: no estimate was recorded: estimated here from the wall time with every core busy.
        codecarbon: the record's codecarbon section (``kwh``, ``kg_co2e``, ``basis``, ``measured``, ``ram_kwh``,
            ``ram_power_w``), or None.
        codecarbon_error: why codecarbon did not measure the stage, if the record says.
    """

    stage: str
    wall_seconds: float | None
    cpu_seconds: float | None
    busy_cores: float | None
    gpus: int
    estimate: dict
    assumed: bool
    codecarbon: dict | None = None
    codecarbon_error: str | None = None

    @property
    def estimate_wh(self) -> float:
        """The estimate in Wh."""
        return 1000 * self.estimate["kwh"]

    @property
    def estimate_g(self) -> float:
        """The estimate in g CO2e."""
        return 1000 * self.estimate["kg_co2e"]

    @property
    def codecarbon_wh(self) -> float | None:
        """codecarbon's energy in Wh (None without it)."""
        return 1000 * self.codecarbon["kwh"] if self.codecarbon else None

    @property
    def codecarbon_g(self) -> float | None:
        """codecarbon's emissions in g CO2e (None without it)."""
        return 1000 * self.codecarbon["kg_co2e"] if self.codecarbon else None


def stage_energy(inputs: EnergyInputs) -> list[StageEnergy]:
    """The figures of each stage of ``inputs.stages`` (pure).

    A stage whose record has an estimate keeps it; any other gets the Patterson et al. 2021 estimate
    (:func:`pipeline.reporting.energy.estimate`) from its record's or manifest's wall time with all
    ``inputs.cores`` cores busy at ``cpu_watts_per_core`` W (``assumed``). A stage without any wall time is left out.
    """
    out = []
    for s in inputs.stages:
        r = inputs.records.get(s)
        rec = r or {}
        est = rec.get("estimate")
        if est:
            wall = rec.get("wall_seconds")
            busy, gpus = rec.get("busy_cores"), int(rec.get("gpus") or 0)
        else:
            wall = rec.get("wall_seconds", rec.get("seconds", inputs.manifest_seconds.get(s)))
            if wall is None:
                continue
            est = E.estimate(
                float(wall),
                inputs.cores,
                inputs.cpu_watts_per_core,
                pue=inputs.pue,
                grid_kg_per_kwh=inputs.grid_kg_per_kwh,
                processor="CPU core",
            )
            busy, gpus = inputs.cores, 0
        out.append(
            StageEnergy(
                stage=s,
                wall_seconds=wall,
                cpu_seconds=rec.get("cpu_seconds"),
                busy_cores=busy,
                gpus=gpus,
                estimate=est,
                assumed=not rec.get("estimate"),
                codecarbon=rec.get("codecarbon") or None,
                codecarbon_error=rec.get("codecarbon_error"),
            )
        )
    return out


def energy_rows(stages: Sequence[StageEnergy]) -> list[list[str]]:
    """Rows of :data:`ENERGY_HEADER`: one per stage, then the ``**total**`` row.

    Estimated-here figures (and the stage name) are marked `` *``, as is the total when any stage is; codecarbon's
    cells are ``-`` where it did not measure, and its total says ``N of M stages`` when only some were measured.
    """
    rows = []
    for st in stages:
        mark = " *" if st.assumed else ""
        if st.assumed:
            procs = f"{st.busy_cores} cores (assumed)"
        elif st.gpus:
            procs = f"{st.gpus} GPU(s)"
        else:
            procs = f"{fmt_num(st.busy_cores)} cores"
        if st.codecarbon:
            basis = "measured" if st.codecarbon.get("measured") else "modelled"
            cc_cells = [fmt_num(st.codecarbon_wh), fmt_num(st.codecarbon_g), basis]
        else:
            cc_cells = ["-", "-", "not measured"]
        rows.append(
            [
                st.stage + mark,
                fmt_seconds(st.wall_seconds),
                fmt_num(st.cpu_seconds),
                procs,
                fmt_num(st.estimate_wh) + mark,
                fmt_num(st.estimate_g) + mark,
                *cc_cells,
            ]
        )
    measured = [st for st in stages if st.codecarbon]
    n_cc = len(measured)
    star = " *" if any(st.assumed for st in stages) else ""
    rows.append(
        [
            "**total**",
            "",
            "",
            "",
            fmt_num(sum(st.estimate_wh for st in stages)) + star,
            fmt_num(sum(st.estimate_g for st in stages)) + star,
            fmt_num(sum(st.codecarbon_wh or 0.0 for st in measured)) if n_cc else "-",
            fmt_num(sum(st.codecarbon_g or 0.0 for st in measured)) if n_cc else "-",
            f"{n_cc} of {len(stages)} stages" if 0 < n_cc < len(stages) else "",
        ]
    )
    return rows


def _assumption_lines(inputs: EnergyInputs, stages: Sequence[StageEnergy]) -> list[str]:
    """The bullet list under the table: PUE, grid, power per processor, codecarbon's basis, RAM share, gaps."""
    first_est = next((st.estimate for st in stages if not st.assumed), None)
    assume = first_est or {"pue": inputs.pue, "grid_kg_per_kwh": inputs.grid_kg_per_kwh}
    out = [
        "Assumptions:",
        "",
        f"- PUE {fmt_num(assume.get('pue'))} (Patterson et al. 2021: 1.58 US-average datacenter, 1.1 efficient cloud).",
        f"- Grid {fmt_num(assume.get('grid_kg_per_kwh'))} kg CO2e/kWh (Patterson et al. 2021: US average 0.429).",
        f"- CPU: {fmt_num(inputs.cpu_watts_per_core)} W per busy core (server TDP per hardware thread is about 2-4 W, e.g. "
        "AMD EPYC 9654 360 W / 192 threads, Xeon Platinum 8380 270 W / 80 threads, plus memory and board; "
        "codecarbon's own fallback for unknown CPUs is 4 W per thread).",
        f"- GPU: {fmt_num(inputs.gpu_watts)} W per GPU (Patterson et al. 2021 system power per chip: V100 325 W, P100 271 W).",
    ]
    ccs = [st.codecarbon for st in stages if st.codecarbon]
    for b in sorted({c.get("basis", "?") for c in ccs}):
        out.append(f"- codecarbon basis: {b}.")
    ram = sum(float(c.get("ram_kwh") or 0) for c in ccs)
    if ccs and ram > 0:
        cc_kwh = sum(st.codecarbon_wh or 0.0 for st in stages) / 1000
        watts = sorted({fmt_num(c.get("ram_power_w")) for c in ccs if c.get("ram_power_w")})
        out.append(
            f"- codecarbon also counts RAM ({', '.join(watts)} W, modelled from the installed memory size): "
            f"{fmt_pct(ram / max(cc_kwh, 1e-30), 0)} of its energy, a term the Patterson formula "
            "(processors only) leaves out."
        )
    unmeasured = [st.stage for st in stages if st.assumed]
    if unmeasured:
        out.append(
            f"- \\* No energy record for {', '.join(unmeasured)} (run one stage at a time rather than through "
            f"`python -m pipeline.run`): the estimate takes the manifest's wall time and assumes all {inputs.cores} "
            "cores of the machine that wrote this report were busy; codecarbon did not run."
        )
    for err in sorted(f"{st.stage}: {st.codecarbon_error}" for st in stages if not st.codecarbon and st.codecarbon_error):
        out.append(f"- codecarbon unavailable for {err}; the estimate stands alone.")
    return out


def section_energy(run: Run, records: dict, ec: Any, plot_dir: Path, made: set[str]) -> list[str]:
    """Energy (Wh) and emissions (g CO2e) per stage: the Patterson et al. 2021 estimate beside codecarbon.

    ``records`` is ``{stage: record}`` (:func:`pipeline.orchestration.energy.measure_energy`); a stage with a
    manifest but no record gets an estimate from its manifest's wall time, assuming every core of this
    machine was busy (marked ``*``). ``ec`` is an ``EnergyConfig`` (or dict; None = its defaults).
    """
    inputs = energy_inputs(run, records, ec)
    if not inputs.stages:
        return [f"_{NOT_RUN}_: no stage has finished."]
    stages = stage_energy(inputs)
    out = [
        "Energy (Wh) and emissions (g CO2e) per stage, PUE included. **Estimate** = Patterson et al. 2021: "
        "kWh = hours x processors x W per processor x PUE / 1000, kg CO2e = kWh x grid intensity; processors = "
        "busy CPU cores (process + children CPU seconds / wall seconds) or GPUs. **codecarbon** = its offline "
        "tracker, a hardware measurement only where it reads energy counters (RAPL, NVML), else its own model.",
        "",
    ]
    out += md_table(ENERGY_HEADER, energy_rows(stages), "lrrrrrrrl") + [""]
    out += _assumption_lines(inputs, stages) + [""]
    if stages:
        energy_plot(
            [st.stage for st in stages],
            [st.estimate_wh for st in stages],
            [st.codecarbon_wh for st in stages],
            plot_dir / "energy.png",
            title="energy per stage (PUE included)",
            assumed=[st.assumed for st in stages],
        )
        made.add("energy.png")
        out += [f"![energy per stage]({rf.PLOT_DIR}/energy.png)"]
    return out
