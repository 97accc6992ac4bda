"""Shared command-line entry for the stages: Hydra app, one-line errors, a summary.

Every stage module ends with ``hydra_entry(run_<stage>)``. How a command ends:

* exit status 0: done; a one-line JSON summary of the manifest on stdout.
* exit status 2 (:data:`EXIT_EXPECTED`), one line on stderr, ``error: <what>; hint: <what to do>``
  (no traceback): an *expected* failure (:func:`describe_failure`):

  - a config error (:class:`pipeline.errors.ConfigError`: out-of-range or inconsistent values),
  - a missing input or a missing upstream stage (``FileNotFoundError``: no raw data, no
    finished ``dedup`` stage, ...),
  - a refused or unreadable checkpoint (:class:`pipeline.errors.CheckpointError`, e.g. a
    pickle that could run code: ``error: refusing to load <path>: ...``),
  - a full disk or a file system that refuses writes (``OSError`` with ``ENOSPC``, ``EDQUOT``,
    ``EROFS``, ``EACCES`` or ``EPERM``, also when it is the cause of another exception).

* exit status ``exc.exit_code`` (default 1), one line: a :class:`pipeline.errors.ReportedFailure`, a failure
  whose cause was already printed (e.g. a child torchrun process's own ``error:`` line).
* anything else is a bug: Python's traceback (Hydra's, exit status 1).

Unknown keys and wrong types are rejected by Hydra itself from the structured schema,
before the stage runs (Hydra's message, exit status 1). ``HYDRA_FULL_ERROR=1`` also shows
the traceback of an expected failure.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable

import hydra
from omegaconf import DictConfig

import pipeline.config  # noqa: F401  (registers the schema in the ConfigStore)
from pipeline.errors import CheckpointError, ConfigError, ReportedFailure

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("pipeline")

EXIT_EXPECTED = 2  # exit status of an expected failure (config, missing input/stage, refused file, disk full)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
WRITE_REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)
_NOT_FINISHED_RE = re.compile(r"no finished (\w+) stage in (\S+)")


def _one_line(text: object) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _chain(exc: BaseException):
    """``exc`` and the exceptions it was raised from or during (``__cause__``/``__context__``)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def describe_failure(exc: BaseException) -> tuple[str, str] | None:
    """The ``(message, hint)`` of an expected failure, or None for any other exception (a bug).

    Args:
        exc: the exception a stage raised.
    Returns:
        ``(message, hint)``, both one line (``hint`` may be ``""``); the CLI prints
        ``error: <message>; hint: <hint>``. None: not an expected failure.
    """
    if isinstance(exc, ReportedFailure):
        return _one_line(exc), ""
    if isinstance(exc, ConfigError):
        return _one_line(exc), ""
    if isinstance(exc, CheckpointError):
        path = getattr(exc, "path", None)
        reason = getattr(exc, "reason", None)
        msg = f"refusing to load {path}: {reason}" if path is not None and reason else _one_line(exc)
        if exc.hint:
            return msg, exc.hint
        where = f"move {path} out of {path.parent}" if path is not None else "move the checkpoint away"
        run_dir = ""
        if path is not None and path.parent.name == "checkpoints" and path.parent.parent.name == "pretrain":
            run_dir = f" run_dir={path.parent.parent.parent}"  # <run_dir>/pretrain/checkpoints/step_*.pt
        return msg, (
            f"{where} (pretraining then resumes from the newest checkpoint left there, or starts over), "
            f"or redo pretraining from scratch with `python -m pipeline.run{run_dir} run.force=[pretrain]`"
        )
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            where = f" ({e.filename})" if e.filename else ""
            return (
                f"disk full: {_one_line(e.strerror or e)}{where}",
                "free space on that file system (or point run_dir elsewhere) and rerun: "
                "finished work is kept and the stage resumes",
            )
        if isinstance(e, OSError) and e.errno in WRITE_REFUSED:
            where = f": {e.filename}" if e.filename else ""
            return (
                f"{_one_line(e.strerror or e)}{where}",
                "check that the folder is on a writable file system and that you may read and write it (run_dir, data.cache)",
            )
    if isinstance(exc, FileNotFoundError):
        if exc.errno is not None and exc.filename:  # raised by the OS, not by a stage
            return (
                f"missing input: {exc.filename} ({exc.strerror or 'No such file or directory'})",
                "check the path in the config (data.cache, data.sources, transfer.root, ...)",
            )
        msg = _one_line(exc)
        m = _NOT_FINISHED_RE.search(msg)
        if m and "python -m" not in msg:
            stage, run_dir = m.group(1), m.group(2)
            return msg, (
                f"run `python -m pipeline.{stage} run_dir={run_dir}` first, or `python -m pipeline.run "
                f"run_dir={run_dir}` to run the stages in order"
            )
        return msg, ""
    return None


def failure_line(exc: BaseException) -> str | None:
    """The one line the CLI prints for an expected failure (``error: ...; hint: ...``), or None."""
    d = describe_failure(exc)
    if d is None:
        return None
    msg, hint = d
    return f"error: {msg}" + (f"; hint: {hint}" if hint else "")


def exit_status(exc: BaseException) -> int:
    """The exit status for an expected failure: ``exc.exit_code`` for a :class:`ReportedFailure`,
    else :data:`EXIT_EXPECTED` (2)."""
    return exc.exit_code if isinstance(exc, ReportedFailure) else EXIT_EXPECTED


def summarize(manifest: dict | None) -> str:
    """One-line JSON of a manifest's stage, counts and seconds (for the terminal)."""
    if not manifest:
        return ""
    keep = {k: v for k, v in manifest["counts"].items() if not isinstance(v, (dict, list))}
    return json.dumps({"stage": manifest["stage"], "seconds": manifest["seconds"], **keep})


def hydra_entry(stage_fn: Callable[[DictConfig], dict | None], job_name: str, config_name: str = "config") -> None:
    """Run ``stage_fn`` as a Hydra app over ``conf/<config_name>.yaml``; logs go to ``<run_dir>/<job_name>.log``.

    Expected failures end with one line and exit status 2 (see the module docstring);
    anything else propagates (a traceback).
    """
    if not any(a.startswith("hydra.job.name=") for a in sys.argv[1:]):
        # just before the first override: at the end it would follow `--cfg job`, and first it
        # would split `-m k=v ...` (argparse takes the overrides as one positional run)
        first = next((i for i, a in enumerate(sys.argv[1:], 1) if "=" in a and not a.startswith("-")), len(sys.argv))
        sys.argv.insert(first, f"hydra.job.name={job_name}")

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
    def _app(cfg: DictConfig) -> None:
        try:
            manifest = stage_fn(cfg)
        except Exception as exc:
            line = failure_line(exc)
            if line is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            log.debug("expected failure", exc_info=exc)
            sys.stderr.flush()
            print(line, file=sys.stderr, flush=True)
            sys.exit(exit_status(exc))
        if manifest:
            print(summarize(manifest))

    _app()
