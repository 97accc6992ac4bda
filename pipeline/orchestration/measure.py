"""Time and energy of one stage of the main job (:mod:`pipeline.reporting.energy`)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from pipeline.orchestration.energy import measure_energy

__all__ = ["stage_measurement", "as_record"]


def stage_measurement(name: str, cfg, gpus: int | None = None):
    """Measure a stage's time and energy (pipeline.reporting.energy), or only its time if disabled."""
    if not cfg.energy.enabled:
        return _timer(name)
    return measure_energy(name, cfg.energy, gpus=gpus)


@contextlib.contextmanager
def _timer(name: str):
    rec: dict[str, Any] = {"stage": name}
    t0 = time.perf_counter()
    yield rec
    rec["wall_seconds"] = round(time.perf_counter() - t0, 3)


def as_record(rec) -> dict:
    if isinstance(rec, dict):
        return rec
    if hasattr(rec, "to_dict"):
        return rec.to_dict()
    return dict(vars(rec))
