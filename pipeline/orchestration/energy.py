"""Measuring a stage's energy while it runs, and the per-stage records of a run.

Two numbers are recorded side by side for every stage, each labelled with its basis: the
Patterson et al. 2021 **estimate** (:func:`pipeline.reporting.energy.estimate`, from the wall
seconds and the busy cores measured here) and

* **codecarbon** (when it runs): codecarbon's ``OfflineEmissionsTracker``, never online
  (no geo lookup, no API, no CSV file; grid intensity forced to ``energy.grid_kg_per_kwh``
  unless ``energy.force_grid=false``, then codecarbon's table for
  ``energy.country_iso_code``). It is a hardware *measurement* only where it reads energy
  counters (RAPL on Linux, NVML on NVIDIA GPUs); in a VM without RAPL it falls back to its
  own model (CPU load x TDP, RAM by size), and the record says so (``basis``,
  ``measurement``). codecarbon's hardware-detection warnings (unknown CPU model, no RAPL
  files, its fallbacks) are kept out of the log and stored in the record (``notes``);
  instead one INFO line per run names the basis (``energy: codecarbon basis: CPU modelled
  ..., RAM modelled from its size, no GPU``). Any failure of codecarbon leaves
  ``codecarbon: null`` and ``codecarbon_error`` in the record and the stage goes on with
  the estimate.

The record (a plain JSON-able dict, see :func:`measure_energy`) is what
``<run_dir>/run/energy.json`` holds per stage: ``{stage_name: record, ...}``
(:func:`write_energy_records`; read by :func:`pipeline.io.run_folder.read_energy_records`).

"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline.io import run_folder as rf
from pipeline.io.atomic import write_json
from pipeline.reporting.energy import energy_setting, estimate

log = logging.getLogger(__name__)

# codecarbon detects the hardware once per process (cached), so only the first tracker logs the
# notes; later records reuse them. _ANNOUNCED: the basis line last logged (one line per run).
_NOTES: list[str] = []
_ANNOUNCED: dict[str, str | None] = {"line": None}


MEASURED_CPU_MODES = {"intel_rapl", "intel_power_gadget", "windows_emi", "apple_powermetrics", "powermetrics"}


class _CodecarbonNotes(logging.Filter):
    """Filter on codecarbon's logger: drops the warning about the setting we choose on purpose
    (allow_multiple_runs) and, while :attr:`notes` is a list (tracker construction and start),
    keeps its hardware-detection messages (unknown CPU model, no RAPL files, "falling back on
    CPU load mode", ...) out of the log, collecting the warnings in that list instead; errors
    always pass. The basis they explain is logged once per run (:func:`_announce_basis`) and
    every record carries them (``codecarbon.notes``)."""

    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "Multiple instances of codecarbon" in msg:
            return False
        if self.notes is not None and record.levelno < logging.ERROR:
            if record.levelno >= logging.WARNING:
                self.notes.append(" ".join(msg.split()))
            return False
        return True


_FILTER = _CodecarbonNotes()


def _quiet_codecarbon(level: str) -> None:
    """codecarbon's logger at ``level`` (its INFO lines are noise), with :data:`_FILTER` on it."""
    lg = logging.getLogger("codecarbon")
    lg.setLevel(getattr(logging, str(level).upper(), logging.WARNING))
    if _FILTER not in lg.filters:
        lg.addFilter(_FILTER)


def _measurement(tracker) -> dict:
    """What codecarbon measures and what it models, from a started tracker's hardware list::

    {"cpu": "RAPL" | "measured (<mode>)" | "modelled", "cpu_mode", "cpu_model",
     "ram": "modelled", "gpu": "NVML" | None, "gpu_model"}
    """
    mode = _cpu_mode(tracker)
    if mode == "intel_rapl":
        cpu = "RAPL"
    elif mode in MEASURED_CPU_MODES:
        cpu = f"measured ({mode})"
    else:
        cpu = "modelled"
    conf = getattr(tracker, "_conf", {}) or {}
    gpu = any(type(hw).__name__ == "GPU" for hw in getattr(tracker, "_hardware", []) or [])
    return {
        "cpu": cpu,
        "cpu_mode": mode,
        "cpu_model": conf.get("cpu_model"),
        "ram": "modelled",
        "gpu": "NVML" if gpu else None,
        "gpu_model": (conf.get("gpu_model") or None) if gpu else None,
    }


def basis_line(m: Mapping[str, Any], notes: list[str] | None = None) -> str:
    """The one log line naming codecarbon's measurement basis (see :func:`_measurement` for ``m``)."""
    if m["cpu"] == "modelled":
        cpu = f"CPU modelled ({m.get('cpu_mode') or 'unknown'} mode: load x TDP, no readable energy counters such as RAPL)"
    else:
        cpu = f"CPU measured by {m['cpu']}"
    gpu = (
        f"GPU measured by NVML ({m['gpu_model']})"
        if m.get("gpu") and m.get("gpu_model")
        else ("GPU measured by NVML" if m.get("gpu") else "no GPU")
    )
    tail = f"; codecarbon's {len(notes)} hardware warning(s) are in energy.json (codecarbon.notes)" if notes else ""
    return f"energy: codecarbon basis: {cpu}, RAM modelled from its size, {gpu}{tail}"


def _announce_basis(tracker) -> None:
    """Log the measurement basis at INFO, once per run (again only if it changes)."""
    line = basis_line(_measurement(tracker), _NOTES)
    if line != _ANNOUNCED["line"]:
        _ANNOUNCED["line"] = line
        log.info("%s", line)


def _start_codecarbon(name: str, ec: Any):
    """An ``OfflineEmissionsTracker`` started for one stage, or raise (caller records why)."""
    level = str(energy_setting(ec, "log_level")).lower()
    _quiet_codecarbon(level)  # before import/construction: its init logs at INFO
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from codecarbon import OfflineEmissionsTracker

        _quiet_codecarbon(level)
        kwargs: dict[str, Any] = dict(
            project_name=f"pipeline:{name}",
            country_iso_code=str(energy_setting(ec, "country_iso_code")),
            measure_power_secs=float(energy_setting(ec, "measure_power_secs")),
            tracking_mode=str(energy_setting(ec, "tracking_mode")),
            log_level=level,
            pue=float(energy_setting(ec, "pue")),
            # never the network, never a file: no API, no HTTP endpoint, no electricitymaps,
            # no emissions.csv; explicit values override any ~/.codecarbon.config or env vars
            output_methods=[],
            output_handlers=[],
            emissions_endpoint=None,
            electricitymaps_api_token=None,
            api_key=None,
            cloud_provider=None,
            cloud_region=None,
            # no lock file and no SIGINT/SIGTERM handlers replaced (the stages own their signals)
            allow_multiple_runs=True,
        )
        if bool(energy_setting(ec, "force_grid")):
            kwargs["force_carbon_intensity_g_co2e_kwh"] = float(energy_setting(ec, "grid_kg_per_kwh")) * 1000.0
        notes: list[str] = []
        _FILTER.notes = notes  # hardware-detection warnings: collected, not logged
        try:
            tracker = OfflineEmissionsTracker(**kwargs)
            if not hasattr(tracker, "_hardware") or not hasattr(tracker, "_scheduler"):
                # its __init__ swallows exceptions and leaves a half-built object
                raise RuntimeError("codecarbon tracker failed to initialize")
            tracker.start()
        finally:
            _FILTER.notes = None
        if getattr(tracker, "_start_time", None) is None:
            raise RuntimeError("codecarbon tracker failed to start")
    if notes:
        _NOTES[:] = notes
    _announce_basis(tracker)
    return tracker


def _cpu_mode(tracker) -> str | None:
    for hw in getattr(tracker, "_hardware", []) or []:
        if type(hw).__name__ == "CPU":
            return getattr(hw, "_mode", None)
    return None


def _stop_codecarbon(tracker) -> dict:
    """Stop the tracker and return the record's ``codecarbon`` section (raises if no data)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tracker.stop()
        finally:
            for attr in ("_scheduler", "_scheduler_monitor_power"):  # in case stop() failed half-way
                with contextlib.suppress(Exception):
                    getattr(tracker, attr).stop()
    d = getattr(tracker, "final_emissions_data", None)
    if d is None or getattr(d, "energy_consumed", None) is None:
        raise RuntimeError("codecarbon returned no emissions data")
    mode = _cpu_mode(tracker)
    gpu_count = int(getattr(d, "gpu_count", 0) or 0)
    cpu_measured = mode in MEASURED_CPU_MODES
    if cpu_measured:
        basis = f"measured: CPU energy counters ({mode})"
    else:
        basis = f"modelled by codecarbon: CPU {mode or 'unknown'} mode (load x TDP, no energy counters)"
    basis += "; GPU measured by NVML" if gpu_count else ""
    basis += "; RAM modelled from its size"
    kwh = float(d.energy_consumed)
    m = _measurement(tracker)
    return {
        "basis": basis,
        "measured": bool(cpu_measured or gpu_count),
        "measurement": {"cpu": m["cpu"], "ram": m["ram"], "gpu": "NVML" if gpu_count else None},
        "notes": list(_NOTES),  # codecarbon's hardware-detection warnings, kept out of the log
        "version": getattr(d, "codecarbon_version", None),
        "cpu_mode": mode,
        "tracking_mode": getattr(d, "tracking_mode", None),
        "cpu_model": getattr(d, "cpu_model", None),
        "gpu_model": getattr(d, "gpu_model", None) or None,
        "gpu_count": gpu_count,
        "country_iso_code": getattr(d, "country_iso_code", None),
        "pue": getattr(d, "pue", None),
        "grid_kg_per_kwh": (float(d.emissions) / kwh) if kwh > 0 else None,
        "cpu_power_w": getattr(d, "cpu_power", None),
        "ram_power_w": getattr(d, "ram_power", None),
        "gpu_power_w": getattr(d, "gpu_power", None),
        "cpu_kwh": getattr(d, "cpu_energy", None),
        "ram_kwh": getattr(d, "ram_energy", None),
        "gpu_kwh": getattr(d, "gpu_energy", None),
        "kwh": kwh,
        "kg_co2e": float(d.emissions),
        "duration_s": getattr(d, "duration", None),
    }


def _cuda_devices_in_use() -> int:
    """1 if this process initialized CUDA (one GPU per process under torchrun), else 0."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    try:
        return 1 if torch.cuda.is_available() and torch.cuda.is_initialized() else 0
    except Exception:  # noqa: BLE001  (a broken CUDA install must not break the stage)
        return 0


def _cpu_seconds() -> tuple[float, float]:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


@contextlib.contextmanager
def measure_energy(name: str, cfg_energy: Any = None, *, gpus: int | None = None) -> Iterator[dict]:
    """Measure one stage: ``with measure_energy("pretrain", cfg.energy) as rec: run_pretrain(cfg)``.

    Yields a dict that is filled in when the block ends (also when it raises; the
    exception propagates and the record says ``status: "error"``)::

        {"stage": name, "status": "ok" | "error", "started_at": ISO time,
         "wall_seconds", "cpu_seconds" (self + children), "cpu_seconds_self",
         "cpu_seconds_children", "busy_cores" (cpu_seconds / wall_seconds), "gpus",
         "estimate": {"basis", "processor", "processors", "watts_per_processor", "pue",
                      "grid_kg_per_kwh", "kwh", "kg_co2e"},
         "codecarbon": {"basis", "measured", "measurement": {"cpu": "RAPL" | "modelled" | ...,
                        "ram": "modelled", "gpu": "NVML" | None}, "notes": [codecarbon's
                        hardware warnings], "cpu_mode", "kwh", "kg_co2e", "cpu_kwh",
                        "ram_kwh", "gpu_kwh", ...} | None,
         "codecarbon_error": str | None}

    Args:
        name: the stage name (the key in ``energy.json``).
        cfg_energy: an :class:`pipeline.config.EnergyConfig` (or DictConfig/dict with
            its keys); None = defaults. ``codecarbon=false`` (or ``enabled=false``) skips
            codecarbon; the timing and the estimate are always recorded (they cost nothing).
        gpus: GPUs this process used; None = 1 if it initialized CUDA, else 0. With GPUs
            the estimate counts GPUs at ``gpu_watts``; without, busy CPU cores.
    """
    ec = cfg_energy
    pue = float(energy_setting(ec, "pue"))
    grid = float(energy_setting(ec, "grid_kg_per_kwh"))
    rec: dict[str, Any] = {
        "stage": name,
        "status": "running",
        "started_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    tracker = None
    cc_error: str | None = None
    if bool(energy_setting(ec, "codecarbon")) and bool(energy_setting(ec, "enabled")):
        try:
            tracker = _start_codecarbon(name, ec)
        except Exception as exc:  # noqa: BLE001  (codecarbon must never break a stage)
            cc_error = f"{type(exc).__name__}: {exc}"
            log.warning("energy: codecarbon unavailable for %s (%s); using the estimate only", name, cc_error)
    else:
        cc_error = "disabled (energy.codecarbon=false or energy.enabled=false)"
    self0, child0 = _cpu_seconds()
    t0 = time.perf_counter()
    status = "error"
    try:
        yield rec
        status = "ok"
    finally:
        wall = time.perf_counter() - t0
        self1, child1 = _cpu_seconds()
        cc = None
        if tracker is not None:
            try:
                cc = _stop_codecarbon(tracker)
            except Exception as exc:  # noqa: BLE001
                cc_error = f"{type(exc).__name__}: {exc}"
                log.warning("energy: codecarbon failed for %s (%s); using the estimate only", name, cc_error)
        cpu_self, cpu_child = self1 - self0, child1 - child0
        cpu = cpu_self + cpu_child
        busy = cpu / wall if wall > 0 else 0.0
        n_gpu = _cuda_devices_in_use() if gpus is None else int(gpus)
        processors: float  # GPUs (int) or busy cores
        if n_gpu > 0:
            processors, watts_key, processor = n_gpu, "gpu_watts", "GPU (system power per chip)"
        else:
            processors, watts_key, processor = busy, "cpu_watts_per_core", "CPU core (busy cores = CPU s / wall s)"
        est = estimate(wall, processors, float(energy_setting(ec, watts_key)), pue=pue, grid_kg_per_kwh=grid, processor=processor)
        rec.update(
            {
                "status": status,
                "wall_seconds": round(wall, 4),
                "cpu_seconds": round(cpu, 4),
                "cpu_seconds_self": round(cpu_self, 4),
                "cpu_seconds_children": round(cpu_child, 4),
                "busy_cores": round(busy, 4),
                "gpus": n_gpu,
                "estimate": est,
                "codecarbon": cc,
                "codecarbon_error": None if cc is not None else cc_error,
            }
        )


def energy_path(run_dir: str | os.PathLike) -> Path:
    """``<run_dir>/run/energy.json`` (:data:`pipeline.io.run_folder.ENERGY_FILE`)."""
    return rf.path(run_dir, rf.RUN, rf.ENERGY_FILE)


def write_energy_records(run_dir: str | os.PathLike, records: Mapping[str, dict]) -> Path:
    """Atomically write ``{stage: record}`` to ``<run_dir>/run/energy.json``."""
    p = energy_path(run_dir)
    write_json(p, dict(records))
    return p


def save_energy_record(run_dir: str | os.PathLike, record: dict) -> Path:
    """Add or replace one stage's record in ``<run_dir>/run/energy.json`` (read, update, atomic write)."""
    records = rf.read_energy_records(run_dir)
    records[record["stage"]] = record
    return write_energy_records(run_dir, records)
