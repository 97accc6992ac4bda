"""The report's full-scale projection: the paper-scale pretraining time, energy and emissions.

Built on :func:`pipeline.reporting.full_scale.project_full_run`, for two per-device throughput sources: the timm
anchor (ResNeXt-101 32x8d, 276 img/s on one RTX 3090 with AMP) and the throughput this run's pretrain stage
measured, both scaled to the projected model by the mult-adds ratio (a rough scaling).
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.reporting import full_scale as FS
from pipeline.reporting.energy import energy_setting
from pipeline.reporting.format import fmt_int, fmt_num, fmt_pct, fmt_seconds, md_table
from pipeline.reporting.run_view import Run
from pipeline.system import available_cores

log = logging.getLogger("pipeline.report")


def _measured_throughput(run: Run, to_model: str) -> dict | None:
    """This run's pretrain throughput per device, scaled by mult-adds to ``to_model`` at 224 px."""
    c = run.counts("pretrain")
    pc = run.config("pretrain").get("pretrain", {})
    ips = c.get("images_per_second")
    if not ips or not pc.get("model"):
        return None
    world = int(c.get("world") or 1)
    size = int(pc.get("image_size") or 224)
    madds = FS.model_mult_adds(pc["model"], size, int(c.get("num_classes") or 1000))
    per_device = float(ips) / world
    dev = str(c.get("device", "cpu"))
    label = (
        f"measured here: {pc['model']} at {size} px, {fmt_num(per_device)} img/s per "
        f"{'GPU' if dev.startswith('cuda') else 'CPU machine'} ({c.get('precision', '?')}; "
        f"{fmt_num(madds / 1e9)}B mult-adds)"
    )
    s = FS.scale_throughput(per_device, from_mult_adds=madds, to_model=to_model, from_label=label)
    s["device"] = "GPU" if dev.startswith("cuda") else "CPU machine"
    s["cores"] = available_cores()
    return s


def section_projection(run: Run, ec: Any) -> list[str]:
    """The full-scale projection table (time, device-hours, MWh, t CO2e) for every throughput source and GPU count.

    Sources: the timm anchor and, when the pretrain stage finished, its own measured throughput, both scaled to
    ``energy.projection_model`` by mult-adds; every assumption is listed. ``ec``: an ``EnergyConfig`` (or dict;
    None = its defaults).
    """
    model = str(energy_setting(ec, "projection_model"))
    images = float(energy_setting(ec, "projection_images"))
    epochs = float(energy_setting(ec, "projection_epochs"))
    gpus = [int(g) for g in (energy_setting(ec, "projection_gpus") or [336])]
    eff = energy_setting(ec, "scaling_efficiency")
    gpu_w = float(energy_setting(ec, "gpu_watts"))
    pue = float(energy_setting(ec, "pue"))
    grid = float(energy_setting(ec, "grid_kg_per_kwh"))
    w_core = float(energy_setting(ec, "cpu_watts_per_core"))
    sources = [("anchor (timm, RTX 3090 AMP)", FS.anchor_gpu_throughput(model), "GPU", gpu_w)]
    try:
        m = _measured_throughput(run, model)
    except Exception as exc:  # noqa: BLE001
        log.warning("report: no measured throughput for the projection (%s)", exc)
        m = None
    if m:
        watts = gpu_w if m["device"] == "GPU" else m["cores"] * w_core
        sources.append((f"this run's pretrain ({m['device']})", m, m["device"], watts))
    rows, headline = [], None
    for name, src, dev, watts in sources:
        for n in gpus:
            p = FS.project_full_run(
                images_per_second_per_device=src["images_per_second"],
                model=model,
                dataset_images=images,
                epochs=epochs,
                devices=n,
                scaling_efficiency=eff,
                watts_per_device=watts,
                pue=pue,
                grid_kg_per_kwh=grid,
                device=dev,
                throughput_source=src["from"],
            )
            if headline is None and n == max(gpus):
                headline = (name, p, src)
            rows.append(
                [
                    name,
                    fmt_num(src["images_per_second"]),
                    f"{n} {dev}s",
                    fmt_pct(p["scaling_efficiency"], 0),
                    fmt_seconds(p["hours"] * 3600),
                    fmt_int(p["device_hours"]),
                    fmt_num(p["kwh"] / 1000),
                    fmt_num(p["tco2e"]),
                ]
            )
    out = [
        f"Projection of pretraining **{model}** on **{images / 1e9:g}B images x {epochs:g} epoch(s)** "
        f"at 224 px (Mahajan et al. 2018 scale), from two per-device throughput sources:",
        "",
    ]
    out += md_table(
        ["throughput source", "img/s per device", "devices", "scaling eff.", "time", "device-hours", "MWh", "t CO2e"],
        rows,
        "lrlrrrrr",
    ) + [""]
    if headline:
        name, p, src = headline
        out += [
            f"Headline ({name}): {p['devices']} {p['device']}s, {fmt_seconds(p['hours'] * 3600)}, "
            f"{fmt_int(p['device_hours'])} {p['device']}-hours, {fmt_num(p['kwh'])} kWh, "
            f"{fmt_num(p['tco2e'])} t CO2e.",
            "",
            "Assumptions:",
            "",
        ]
        out += [f"- {a}." for a in p["assumptions"]]
    for name, src, dev, watts in sources:
        out.append(
            f"- {name}: {src['from']}; scaled to {model} by the mult-adds ratio "
            f"{fmt_num(src['from_mult_adds'] / 1e9)}B / {fmt_num(src['to_mult_adds'] / 1e9)}B = "
            f"{fmt_num(src['ratio'])} ({src['note']}); {fmt_num(watts)} W per {dev}"
            + (f" ({src['cores']} cores x {fmt_num(w_core)} W)" if dev == "CPU machine" else "")
            + "."
        )
    out += [
        "- Mult-adds at 224 px (Mahajan et al. 2018): ResNeXt-101 32x8d 16B, 32x16d 36B, 32x32d 87B, 32x48d 153B; "
        "a different resolution scales them by the pixel count.",
        "- The anchor's power is taken as the configured GPU power (V100 system power by default), "
        "though the anchor GPU is an RTX 3090 (350 W board power).",
        "- For scale: Mahajan et al. 2018 trained ResNeXt-101 32x16d on 336 GPUs in about 22 days "
        "(their whole training schedule).",
    ]
    return out
