"""The run folder as the report sees it (:class:`Run`), and the report's guard around one section.

Everything is read through the run-folder contract (:mod:`pipeline.io.run_folder`): the stage
manifests once, at construction, and the side files by the contract's readers.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

from pipeline.io import run_folder as rf

log = logging.getLogger("pipeline.report")

NOT_RUN = "not run"


class Run:
    """The run folder as the report sees it: manifests and side files, read once."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.dir = Path(run_dir)
        self.manifests: dict[str, dict | None] = {}
        self.errors: dict[str, str] = {}
        for s in rf.STAGES:
            try:
                self.manifests[s] = rf.read_manifest(rf.stage_dir(self.dir, s))
            except (OSError, json.JSONDecodeError) as exc:
                self.manifests[s] = None
                self.errors[s] = f"{type(exc).__name__}: {exc}"

    def status(self, stage: str) -> str:
        """``done``, ``unreadable manifest``, ``running or interrupted`` (folder without manifest) or ``not run``."""
        if self.manifests.get(stage):
            return "done"
        if stage in self.errors:
            return "unreadable manifest"
        if rf.stage_dir(self.dir, stage).exists():
            return "running or interrupted"
        return NOT_RUN

    def counts(self, stage: str) -> dict:
        """The ``counts`` of the stage's manifest; {} if it has not finished."""
        return (self.manifests.get(stage) or {}).get("counts", {}) or {}

    def config(self, stage: str) -> dict:
        """The resolved config recorded in the stage's manifest; {} if it has not finished."""
        return (self.manifests.get(stage) or {}).get("config", {}) or {}

    def path(self, stage: str, name: str) -> Path:
        """``<run_dir>/<stage>/<name>`` (:func:`pipeline.io.run_folder.path`)."""
        return rf.path(self.dir, stage, name)


def not_run_lines(run: Run, stage: str) -> list[str]:
    """The lines a section prints instead of its body when ``stage`` has no manifest (why, in one line)."""
    st = run.status(stage)
    if st == NOT_RUN:
        return [f"_{NOT_RUN}_ (no `{stage}/` folder)."]
    if st == "unreadable manifest":
        return [f"_manifest could not be read: {run.errors[stage]}_"]
    return [f"_{st}_: `{stage}/` exists but has no `manifest.json` yet."]


def guard(title: str, fn: Callable[[], list[str]]) -> list[str]:
    """A section, or a line saying why it could not be built (the report never fails on one stage's files)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        log.warning("report: section %s failed: %s: %s", title, type(exc).__name__, exc)
        return [f"_This section could not be built: {type(exc).__name__}: {exc}_"]
