"""Sweeps: the stages all jobs of a sweep share run once, in ``run.shared_dir``, and are linked into each job."""

from __future__ import annotations

import copy
import fcntl
import os
from pathlib import Path
from typing import Callable

from pipeline.errors import ConfigError

__all__ = ["run_shared"]


def run_shared(cfg, shared: Path, stages: list[str], run_pipeline: Callable[[object], dict]) -> dict[str, str]:
    """Run ``stages`` once in ``shared`` (under a file lock) and link them into ``cfg.run_dir``.

    Jobs of a Hydra multirun sweep call this concurrently: the first takes the lock and
    runs the stages (with ``run_pipeline``, the main job's own function), the others wait and then find
    them up to date.
    """
    shared.mkdir(parents=True, exist_ok=True)
    sub = copy.deepcopy(cfg)
    sub.run_dir = str(shared)
    sub.run.stages = list(stages)
    sub.run.force = [s for s in cfg.run.force if s in stages]
    sub.run.shared_dir = None
    sub.run.report = False
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            out = run_pipeline(sub)["stages"]
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for s in stages:
        link = run_dir / s
        target = os.path.relpath((shared / s).resolve(), run_dir.resolve())
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise ConfigError(f"config error at run.shared_dir: {link} is a real folder; a job's shared stages must be links")
        link.symlink_to(target, target_is_directory=True)
    return {s: f"shared ({v})" for s, v in out.items()}
