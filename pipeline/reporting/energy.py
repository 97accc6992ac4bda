"""Energy and emissions of each stage, and a projection of the full-scale run.

Two numbers are recorded side by side for every stage, each labelled with its basis:

* **estimate** (always): Patterson et al. 2021, "Carbon Emissions and Large Neural Network
  Training" (arXiv 2104.10350)::

      kWh   = hours x processors x average power per processor (W) x PUE / 1000
      tCO2e = kWh x grid kgCO2e/kWh / 1000

  On CPU, *processors* = busy cores = process CPU seconds (user + sys, this process and
  its reaped children, from ``resource.getrusage``) / wall seconds, at
  ``energy.cpu_watts_per_core``; on GPU, the number of GPUs at ``energy.gpu_watts``
  (Patterson's measured *system* power per chip, which already includes the host's share,
  so host cores are not added).
* **codecarbon** (when it runs): measured while the stage runs, by
  :func:`pipeline.orchestration.energy.measure_energy`, which also takes the estimate's
  inputs (wall and CPU seconds).

Default CPU power, ``cpu_watts_per_core = 4.0`` W per busy core (one core = one CPU as the
OS counts it, a hardware thread on SMT machines): server CPUs have a TDP of about 2-4 W per
hardware thread (AMD EPYC 9654: 360 W / 192 threads = 1.9 W; Intel Xeon Platinum 8380:
270 W / 80 threads = 3.4 W), and the formula counts no memory or board power, so the upper
end is used; it is also the value codecarbon falls back to for a CPU it does not know
("4 W per thread"), which keeps the two columns comparable on such machines.

This module holds the formula, its defaults and the estimate; the measurement and the
per-stage records (``<run_dir>/run/energy.json``) are :mod:`pipeline.orchestration.energy`'s.

The projection of the full-scale run (3.5B images, up to 336 GPUs) from a per-device
throughput is :mod:`pipeline.reporting.full_scale`, on the same formula.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from pipeline.config import EnergyConfig

log = logging.getLogger(__name__)

DEFAULTS = EnergyConfig()
"""The one source of the energy defaults (``pipeline.config.EnergyConfig``); the names below are views of it."""

# Patterson et al. 2021, "Carbon Emissions and Large Neural Network Training" (PUE, grid intensity, system watts);
# the defaults of EnergyConfig are their US-average / V100 figures
PUE_US_AVERAGE = DEFAULTS.pue
PUE_EFFICIENT_CLOUD = 1.1
GRID_US_AVERAGE_KG_PER_KWH = DEFAULTS.grid_kg_per_kwh
GPU_SYSTEM_WATTS = {"V100": DEFAULTS.gpu_watts, "P100": 271.0, "TPUv3": 283.0}
CPU_WATTS_PER_CORE = DEFAULTS.cpu_watts_per_core  # see the module docstring for the source


def _get(cfg: Any, key: str, default: Any) -> Any:
    """``cfg.key`` for a dataclass, DictConfig or dict; ``default`` if absent or None is given."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        v = cfg.get(key, default)
    else:
        v = getattr(cfg, key, default)
    return default if v is None and default is not None else v


def energy_setting(cfg: Any, key: str) -> Any:
    """``cfg.key`` of an ``EnergyConfig``, DictConfig or dict (None = all defaults); the default of
    :class:`pipeline.config.EnergyConfig` where the key is absent or None.

    Raises:
        AttributeError: ``key`` is not a field of ``EnergyConfig``.
    """
    return _get(cfg, key, getattr(DEFAULTS, key))


# --------------------------------------------------------------------------------------
# The Patterson et al. 2021 formula
# --------------------------------------------------------------------------------------


def patterson_kwh(hours: float, processors: float, watts_per_processor: float, pue: float) -> float:
    """kWh = hours x processors x average power per processor (W) x PUE / 1000."""
    return hours * processors * watts_per_processor * pue / 1000.0


def patterson_tco2e(kwh: float, grid_kg_per_kwh: float) -> float:
    """tCO2e = kWh x grid kgCO2e/kWh / 1000."""
    return kwh * grid_kg_per_kwh / 1000.0


def estimate(
    wall_seconds: float, processors: float, watts_per_processor: float, *, pue: float, grid_kg_per_kwh: float, processor: str
) -> dict:
    """The Patterson estimate of one stage as a record section (kWh and kg CO2e)."""
    kwh = patterson_kwh(wall_seconds / 3600.0, processors, watts_per_processor, pue)
    return {
        "basis": "estimated: Patterson et al. 2021, kWh = hours x processors x W per processor x PUE / 1000",
        "processor": processor,
        "processors": round(processors, 4),
        "watts_per_processor": watts_per_processor,
        "pue": pue,
        "grid_kg_per_kwh": grid_kg_per_kwh,
        "kwh": kwh,
        "kg_co2e": kwh * grid_kg_per_kwh,
    }
