"""Shared command-line entry for the stages: Hydra app, clear config errors, a summary.

Every stage module ends with ``hydra_entry(run_<stage>)``. Config errors (unknown key,
wrong type: raised by Hydra from the structured schema; out-of-range values and missing
inputs: :class:`pipeline.config.ConfigError`, ``FileNotFoundError``) are printed as one
line naming the key or path, with exit status 2, before any work.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Callable

import hydra
from omegaconf import DictConfig

import pipeline.config  # noqa: F401  (registers the schema in the ConfigStore)
from pipeline.config import ConfigError

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("pipeline")


def summarize(manifest: dict | None) -> str:
    """One-line JSON of a manifest's stage, counts and seconds (for the terminal)."""
    if not manifest:
        return ""
    keep = {k: v for k, v in manifest["counts"].items() if not isinstance(v, (dict, list))}
    return json.dumps({"stage": manifest["stage"], "seconds": manifest["seconds"], **keep})


def hydra_entry(stage_fn: Callable[[DictConfig], dict | None], job_name: str, config_name: str = "config") -> None:
    """Run ``stage_fn`` as a Hydra app over ``conf/<config_name>.yaml``; logs go to ``<run_dir>/<job_name>.log``."""
    if not any(a.startswith("hydra.job.name=") for a in sys.argv[1:]):
        # just before the first override: at the end it would follow `--cfg job`, and first it
        # would split `-m k=v ...` (argparse takes the overrides as one positional run)
        first = next((i for i, a in enumerate(sys.argv[1:], 1) if "=" in a and not a.startswith("-")), len(sys.argv))
        sys.argv.insert(first, f"hydra.job.name={job_name}")

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
    def _app(cfg: DictConfig) -> None:
        try:
            manifest = stage_fn(cfg)
        except (ConfigError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        if manifest:
            print(summarize(manifest))

    _app()
