"""Projection of measured throughputs to the paper's setting: ResNeXt-101 32x{8,16,48}d, 3.5B images, 8-336 GPUs.

``python -m benchmarks.project [--images-per-second X] [--loader-images-per-second-per-core Y] [...]``

Inputs (defaults from ``benchmarks/results.json``, i.e. this machine):

* ``X``: training images/s of *one device* on ``--measured-model`` at
  ``--measured-image-size`` (default: this machine's CPU figure for ``resnext_mini`` at
  64 px from the ``train_step`` row, the whole 2-core CPU counted as one device). Each
  target model's throughput at 224 px is X scaled by the mult-adds ratio
  (:func:`pipeline.reporting.full_scale.scale_throughput`: rough, good to a factor of about 2).
  Beside it, the same projection from timm's GPU anchor figure (resnext101_32x8d, 276
  img/s on an RTX 3090 with AMP, scaled the same way: :func:`pipeline.reporting.full_scale.anchor_gpu_throughput`).
* ``Y``: images/s one CPU core of the training loader delivers (default: the ``loader``
  row's figure per worker; at 224 px output when the row measured it, else at 64 px).
  Loader cores per device = device throughput / Y: the CPUs each GPU needs so that it
  never waits for data (Zhao et al. 2022: size loader cores from measured per-core rates).

Hours, device-hours, kWh and tCO2e come from :func:`pipeline.reporting.full_scale.project_full_run`
(Goyal et al.'s scaling efficiency, Patterson et al.'s formula); the loader cores' energy
is added with :func:`pipeline.reporting.energy.patterson_kwh` at ``energy.cpu_watts_per_core``.
Every assumption is printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.reporting.energy import (
    CPU_WATTS_PER_CORE,
    GPU_SYSTEM_WATTS,
    GRID_US_AVERAGE_KG_PER_KWH,
    PUE_US_AVERAGE,
    patterson_kwh,
    patterson_tco2e,
)
from pipeline.reporting.format import md_table
from pipeline.reporting.full_scale import (
    FULL_SCALE_IMAGES,
    anchor_gpu_throughput,
    model_mult_adds,
    project_full_run,
    scale_throughput,
)
from pipeline.system import available_cores

HERE = Path(__file__).resolve().parent
TARGETS = ("resnext101_32x8d", "resnext101_32x16d", "resnext101_32x48d")
GPUS = (8, 32, 64, 128, 256, 336)


def _row(rows: list[dict], name: str) -> dict | None:
    return next((r for r in rows if r.get("name") == name), None)


def defaults_from_results(path: Path) -> dict:
    """Measured figures from results.json: training img/s (model, size), loader img/s per core."""
    out: dict = {}
    if not path.exists():
        return out
    rows = json.loads(path.read_text(encoding="utf-8"))
    t = _row(rows, "train_step")
    if t and t.get("ours"):
        d = t.get("details", {})
        out["images_per_second"] = float(t["ours"])
        out["measured_model"] = d.get("model", "resnext_mini")
        out["measured_image_size"] = int(d.get("image_size", 64))
        out["train_source"] = (
            f"this machine's CPU ({t.get('measured', {}).get('mode', '?')} run of {t.get('measured', {}).get('at', '?')})"
        )
    ld = _row(rows, "loader_vs_decode_limit")
    if ld and ld.get("ours"):
        d = ld.get("details", {})
        eff = d.get("cpu_efficiency_vs_anchor")
        if d.get("ours_per_core_224_one_process") and eff:
            out["loader_per_core"] = float(d["ours_per_core_224_one_process"]) * float(eff)
            out["loader_source"] = (
                "the pipeline's decode + train transform at 224 px in one process "
                f"(images per CPU-second), times the loader's CPU efficiency against the "
                f"one-process loop at {d.get('image_size', 64)} px ({float(eff):.2f}: tar reading, "
                "workers, normalize), on the demo shards"
            )
        elif d.get("ours_per_core"):
            out["loader_per_core"] = float(d["ours_per_core"])
            out["loader_source"] = (
                f"the pipeline's loader at {d.get('image_size', 64)} px output, images per "
                "CPU-second over its processes (224 px output costs more per image)"
            )
    return out


def project(
    *,
    images_per_second: float,
    measured_model: str,
    measured_image_size: int,
    loader_per_core: float,
    targets=TARGETS,
    gpus=GPUS,
    images: float = FULL_SCALE_IMAGES,
    epochs: float = 1.0,
    device: str = "GPU",
    device_watts: float = GPU_SYSTEM_WATTS["V100"],
    pue: float = PUE_US_AVERAGE,
    grid: float = GRID_US_AVERAGE_KG_PER_KWH,
    cpu_watts: float = CPU_WATTS_PER_CORE,
    throughput_source: str = "",
    include_gpu_anchor: bool = True,
) -> dict:
    """Rows of the projection table and the assumptions behind them."""
    from_madds = model_mult_adds(measured_model, measured_image_size)
    rows = []
    sources = [("measured", device, device_watts)]
    if include_gpu_anchor:
        sources.append(("timm GPU anchor", "GPU", GPU_SYSTEM_WATTS["V100"]))
    for model in targets:
        for src, dev, watts in sources:
            if src == "measured":
                s = scale_throughput(
                    images_per_second, from_mult_adds=from_madds, to_model=model, to_image_size=224, from_label=throughput_source
                )
            else:
                s = anchor_gpu_throughput(model, 224)
            ips = s["images_per_second"]
            cores = ips / loader_per_core
            for g in gpus:
                p = project_full_run(
                    images_per_second_per_device=ips,
                    model=model,
                    dataset_images=images,
                    epochs=epochs,
                    devices=g,
                    watts_per_device=watts,
                    pue=pue,
                    grid_kg_per_kwh=grid,
                    device=dev,
                    throughput_source=s["from"],
                )
                loader_kwh = patterson_kwh(p["hours"], cores * g, cpu_watts, pue)
                rows.append(
                    {
                        "model": model,
                        "throughput_from": src,
                        "device": dev,
                        "images_per_second_per_device": ips,
                        "devices": g,
                        "scaling_efficiency": p["scaling_efficiency"],
                        "days": p["days"],
                        "device_hours": p["device_hours"],
                        "loader_cores_per_device": cores,
                        "loader_cores_total": cores * g,
                        "kwh_devices": p["kwh"],
                        "kwh_loader_cpus": loader_kwh,
                        "tco2e": p["tco2e"] + patterson_tco2e(loader_kwh, grid),
                    }
                )
    assumptions = [
        f"dataset: {images:,.0f} images x {epochs:g} epoch(s) at 224 px (Mahajan et al. 2018: up to 3.5B images)",
        f"measured: {images_per_second:,.1f} img/s per device for {measured_model} at {measured_image_size} px"
        + (f" ({throughput_source})" if throughput_source else "")
        + f" = {from_madds / 1e9:.3f} G mult-adds per image; targets scaled by the mult-adds ratio at 224 px "
        "(pipeline.reporting.full_scale.scale_throughput: ignores memory bandwidth, kernel efficiency and batch size; "
        "good to a factor of about 2)",
        "timm GPU anchor: resnext101_32x8d 276 img/s on one RTX 3090 with AMP (timm benchmark), scaled the same way",
        f"loader: {loader_per_core:,.0f} img/s per CPU core; loader cores per device = device img/s / that rate "
        "(decode + random-resized crop + flip, from the shards; no GPU-side decode)",
        "scaling efficiency after Goyal et al. 2017 (1.0 up to 8 GPUs, 0.90 at 256, extrapolated to 336)",
        f"energy (Patterson et al. 2021): {device_watts:g} W per measured device, {GPU_SYSTEM_WATTS['V100']:g} W "
        f"per GPU (V100 system power), {cpu_watts:g} W per busy loader core, PUE {pue:g}, grid {grid:g} kgCO2e/kWh",
        "training only: no evaluation, checkpoint I/O, restarts, idle time or preprocessing (ingest, dedup)",
    ]
    return {"rows": rows, "assumptions": assumptions}


def table(res: dict, gpus_shown=None) -> str:
    """Markdown table of the projection rows (optionally only some GPU counts)."""
    header = [
        "model",
        "throughput from",
        "img/s per device",
        "devices",
        "eff.",
        "days",
        "device-hours",
        "loader cores / device",
        "kWh devices",
        "kWh loader CPUs",
        "tCO2e",
    ]
    rows = [
        [
            r["model"],
            f"{r['throughput_from']} ({r['device']})",
            f"{r['images_per_second_per_device']:,.2f}",
            r["devices"],
            f"{r['scaling_efficiency']:.2f}",
            f"{r['days']:,.1f}",
            f"{r['device_hours']:,.0f}",
            f"{r['loader_cores_per_device']:.3g}",
            f"{r['kwh_devices']:,.0f}",
            f"{r['kwh_loader_cpus']:,.0f}",
            f"{r['tco2e']:,.1f}",
        ]
        for r in res["rows"]
        if not gpus_shown or r["devices"] in gpus_shown
    ]
    lines = md_table(header, rows, align="-" * len(header))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.project", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--images-per-second",
        type=float,
        default=None,
        help="measured training img/s of one device (default: this machine's CPU figure, results.json)",
    )
    ap.add_argument("--measured-model", default=None, help="the model X was measured on (default resnext_mini)")
    ap.add_argument("--measured-image-size", type=int, default=None, help="its image size in px (default 64)")
    ap.add_argument(
        "--loader-images-per-second-per-core",
        type=float,
        default=None,
        help="training-loader img/s per CPU core (default: results.json)",
    )
    ap.add_argument("--models", nargs="+", default=list(TARGETS))
    ap.add_argument("--gpus", nargs="+", type=int, default=list(GPUS))
    ap.add_argument("--images", type=float, default=FULL_SCALE_IMAGES)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument(
        "--device-watts",
        type=float,
        default=None,
        help="average power of one measured device (default: V100 325 W with --images-per-second, "
        "else this machine's cores x energy.cpu_watts_per_core)",
    )
    ap.add_argument("--pue", type=float, default=PUE_US_AVERAGE)
    ap.add_argument("--grid", type=float, default=GRID_US_AVERAGE_KG_PER_KWH)
    ap.add_argument("--results", default=str(HERE / "results.json"))
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = ap.parse_args(argv)
    d = defaults_from_results(Path(a.results))
    given = a.images_per_second is not None
    ips = a.images_per_second if given else d.get("images_per_second")
    lpc = a.loader_images_per_second_per_core or d.get("loader_per_core")
    if ips is None or lpc is None:
        print(
            "error: no measured figures: pass --images-per-second and --loader-images-per-second-per-core, "
            "or run `python -m benchmarks` first",
            file=sys.stderr,
        )
        return 2
    if given:
        model, size = a.measured_model or "resnext_mini", a.measured_image_size or 64
        device, watts, src = "GPU", a.device_watts or GPU_SYSTEM_WATTS["V100"], "given"
    else:
        model = a.measured_model or d.get("measured_model", "resnext_mini")
        size = a.measured_image_size or d.get("measured_image_size", 64)
        cores = available_cores()
        device, src = f"{cores}-core CPU", d.get("train_source", "results.json")
        watts = a.device_watts or cores * CPU_WATTS_PER_CORE
    res = project(
        images_per_second=ips,
        measured_model=model,
        measured_image_size=size,
        loader_per_core=lpc,
        targets=a.models,
        gpus=a.gpus,
        images=a.images,
        epochs=a.epochs,
        device=device,
        device_watts=watts,
        pue=a.pue,
        grid=a.grid,
        throughput_source=src,
    )
    if a.loader_images_per_second_per_core is None and d.get("loader_source"):
        res["assumptions"][3] += f"; measured as {d['loader_source']}"
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    print("Assumptions:")
    for s in res["assumptions"]:
        print(f"  - {s}")
    print()
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
