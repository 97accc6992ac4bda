"""Jobs of several tasks (SLURM/submitit, one task per GPU): rank 0 runs the pipeline, the other ranks follow.

The other ranks run only the stages that split work over ranks (:data:`pipeline.io.run_folder.DIST_STAGES`),
when rank 0 reaches them: it tells them through ``<run_dir>/run/ranks.json``, and they leave when it is done.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Callable

from pipeline.io.atomic import write_json
from pipeline.io.manifest import stage_dir
from pipeline.io.run_folder import RANKS_FILE, RUN

__all__ = ["job_token", "lead", "tell_followers", "follow"]

_leader: dict = {"file": None, "seq": 0}


def job_token() -> str:
    """Identifies one start of a multi-task job (a SLURM requeue is a new start)."""
    keys = (
        "SLURM_JOB_ID",
        "SLURM_RESTART_COUNT",
        "SUBMITIT_LOCAL_JOB_ID",
        "TORCHELASTIC_RUN_ID",
        "TORCHELASTIC_RESTART_COUNT",
        "MASTER_ADDR",
        "MASTER_PORT",
    )
    return ":".join(os.environ.get(k, "") for k in keys)


def tell_followers(stage: str | None, run_dir) -> None:
    """Rank 0 of a multi-task job: the other ranks are to run ``stage`` in ``run_dir`` now (None: job done)."""
    if _leader["file"] is None:
        return
    _leader["seq"] += 1
    write_json(_leader["file"], {"job": job_token(), "seq": _leader["seq"], "stage": stage, "run_dir": str(run_dir)})


def follow(cfg, rank: int, stage_fn: Callable[[str], Callable]) -> dict:
    """Ranks > 0 of a multi-task job: run the stages rank 0 names (ingest, pretrain) until it is done."""
    path, token, seq = stage_dir(cfg.run_dir, RUN) / RANKS_FILE, job_token(), 0
    ran: dict[str, str] = {}
    while True:
        try:
            msg = json.loads(path.read_text())
        except (OSError, ValueError):
            msg = None
        if not msg or msg.get("job") != token or msg.get("seq", 0) <= seq:
            time.sleep(0.5)
            continue
        seq = msg["seq"]
        if msg["stage"] is None:
            return {"rank": rank, "stages": ran}
        sub = copy.deepcopy(cfg)
        sub.run_dir = msg["run_dir"]
        stage_fn(msg["stage"])(sub)
        ran[msg["stage"]] = "ran"


def lead(run_dir, world: int) -> None:
    """Rank 0: start telling the other ``world - 1`` ranks (through ``<run_dir>/run/ranks.json``) what to run."""
    _leader.update(file=stage_dir(run_dir, RUN) / RANKS_FILE if world > 1 else None, seq=0)


def stop_leading() -> None:
    """Rank 0, at the end of the job (after ``tell_followers(None, ...)``)."""
    _leader["file"] = None
