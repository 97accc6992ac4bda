"""The main job: ingest -> dedup -> vocab -> pretrain -> transfer -> report, with skipping.

``python -m pipeline.run [run_dir=runs/demo] [overrides]`` (what ``make demo`` runs).

Each stage gets a *key*: a hash of the config sections it depends on and of the keys of
the stages it reads. After a stage finishes, its key and manifest time are recorded in
``<run_dir>/run/stages.json``. On the next run a stage is skipped when its manifest is
present, its recorded key equals the current one, and neither it nor the stages it reads
were rerun since (by hand, say: their manifests' hashes are recorded); otherwise it is redone (its folder
is cleared first when its key changed, so stale outputs never mix with new ones; a
stage that crashed with an unchanged key is resumed: ingest by unit, pretrain from its
last checkpoint). So rerunning after a crash or a config change redoes only what must
be redone. ``run.force=[vocab]`` redoes a stage and everything after it.

Sweeps (``python -m pipeline.run -m ...``): with ``run.shared_dir`` set, the stages of
``run.shared_stages`` (default ingest and dedup) run once in that folder, under a file
lock, and every job's run folder links to them; each job runs the rest itself.

Energy and time of every stage are measured (:mod:`pipeline.reporting.energy`) into
``<run_dir>/run/energy.json``; the report is ``<run_dir>/report.md``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.cli import failure_line, hydra_entry
from pipeline.config import to_container, validate
from pipeline.errors import ConfigError, ReportedFailure
from pipeline.io.atomic import write_json, write_text
from pipeline.io.manifest import code_version, read_manifest, stage_dir
from pipeline.io.run_folder import DIST_STAGES, ENERGY_FILE, ERROR_FILE, RUN, STAGE_STATE_FILE, STAGES, UPSTREAM
from pipeline.orchestration.keys import manifest_hash, stage_keys
from pipeline.orchestration.measure import as_record, stage_measurement
from pipeline.orchestration.shared import run_shared
from pipeline.orchestration.tasks import follow, lead, stop_leading, tell_followers
from pipeline.report import write_report
from pipeline.system import current_partition
from pipeline.train.distributed import export_rank_env

__all__ = ["run_pipeline", "stage_keys", "main"]

log = logging.getLogger(__name__)


def _stage_fn(stage: str):
    """The ``run_<stage>`` function of stage module ``pipeline.<stage>`` (imported on first use)."""
    return getattr(importlib.import_module(f"pipeline.{stage}"), f"run_{stage}")


def _launch_torchrun(stage: str, nproc: int, run_dir: str) -> None:
    """Run ``stage`` under torchrun with this job's own command-line overrides."""
    from hydra.core.hydra_config import HydraConfig

    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("run.", "run_dir="))]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        f"pipeline.{stage}",
        *overrides,
        "run_dir='" + run_dir.replace("'", "\\'") + "'",
        "hydra.output_subdir=null",
    ]
    # run_dir explicit: a sweep job's comes from hydra.sweep.*, which the children do not see; no .hydra/ of theirs
    log.info("launching %s", " ".join(cmd))
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        # the ranks printed their own error (one line for an expected failure) and torchrun its summary
        raise ReportedFailure(f"stage {stage} failed under torchrun (exit status {rc}); its error is printed above", rc)


def run_pipeline(cfg) -> dict:
    """Run the stages of ``cfg.run.stages`` in order, skipping those that are up to date.

    Returns:
        ``{"stages": {stage: "ran" | "skipped"}, "report": path or None}``.

    Raises:
        pipeline.errors.ConfigError: unknown stage names, or any stage's config error,
            before any stage runs.
    """
    validate(cfg)
    wanted = list(cfg.run.stages)
    unknown = [s for s in wanted + list(cfg.run.force) if s not in STAGES]
    if unknown:
        raise ConfigError(f"config error at run.stages/run.force: unknown stage(s) {unknown}; stages are {list(STAGES)}")
    shared_stages = list(cfg.run.shared_stages) if cfg.run.shared_dir else []
    if shared_stages and shared_stages != list(STAGES[: len(shared_stages)]):
        raise ConfigError(f"config error at run.shared_stages: must be the first stages in order, got {shared_stages}")
    resolved = to_container(cfg)
    run_dir = Path(cfg.run_dir)
    keys = stage_keys(resolved, run_dir)
    outcome: dict[str, str] = {}
    if shared_stages:
        outcome.update(run_shared(cfg, Path(cfg.run.shared_dir), [s for s in shared_stages if s in wanted], run_pipeline))
    state_file = stage_dir(run_dir, RUN) / STAGE_STATE_FILE
    energy_file = stage_dir(run_dir, RUN) / ENERGY_FILE
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    energy = json.loads(energy_file.read_text()) if energy_file.exists() else {}
    forced: set[str] = set()
    for s in cfg.run.force:  # a forced stage forces everything after it
        forced.update(STAGES[STAGES.index(s) :])
    for s in STAGES:
        if s not in wanted or s in shared_stages:
            continue
        man = read_manifest(stage_dir(run_dir, s))
        rec = state.get(s, {})
        upstream_now = {u: manifest_hash(read_manifest(stage_dir(run_dir, u))) for u in UPSTREAM[s]}
        up_to_date = (
            man is not None
            and rec.get("key") == keys[s]
            and rec.get("manifest") == manifest_hash(man)
            and rec.get("upstream") == upstream_now
            and s not in forced
        )
        if up_to_date:
            log.info("stage %s: up to date (key %s), skipped", s, keys[s])
            outcome[s] = "skipped"
            continue
        if rec.get("key") not in (None, keys[s]) or s in forced:
            # config or inputs changed: start the stage from a clean folder
            if stage_dir(run_dir, s).exists():
                log.info("stage %s: key changed (%s -> %s), clearing %s", s, rec.get("key"), keys[s], stage_dir(run_dir, s))
                shutil.rmtree(stage_dir(run_dir, s))
        log.info("stage %s: running (key %s)", s, keys[s])
        if s in DIST_STAGES:
            tell_followers(s, run_dir)
        nproc = {"pretrain": cfg.run.pretrain_nproc, "transfer": cfg.run.transfer_nproc}.get(s, 1)
        torchrun = nproc > 1
        gpus = None
        if torchrun:  # the children use the GPUs, if any; this process never initializes CUDA
            import torch

            gpus = nproc if torch.cuda.is_available() and cfg[s].device != "cpu" else 0
        with stage_measurement(s, cfg, gpus) as erec:
            if torchrun:
                _launch_torchrun(s, nproc, str(run_dir))
            else:
                _stage_fn(s)(cfg)
        man = read_manifest(stage_dir(run_dir, s))
        if man is None:
            raise RuntimeError(f"stage {s} finished without writing its manifest")
        keys = stage_keys(resolved, run_dir)  # the stage's resolved precision is now recorded
        state[s] = {
            "key": keys[s],
            "manifest": manifest_hash(man),
            "code_version": code_version(),
            "upstream": {u: manifest_hash(read_manifest(stage_dir(run_dir, u))) for u in UPSTREAM[s]},
        }
        energy[s] = as_record(erec)
        write_json(state_file, state)
        write_json(energy_file, energy)
        outcome[s] = "ran"
    report = None
    if cfg.run.report:
        report = str(write_report(run_dir, energy, energy_cfg=cfg.energy))
        log.info("report: %s", report)
    return {"stages": outcome, "report": report}


def _run_job(cfg) -> dict:
    """One task of ``main``: the pipeline (rank 0) or the distributed stages (other ranks); failures recorded."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if os.environ.get("SUBMITIT_EXECUTOR"):  # hydra-submitit-launcher: RANK, WORLD_SIZE, MASTER_ADDR/PORT from submitit
        export_rank_env()
    part = current_partition()
    if not part.is_main:
        return follow(cfg, part.rank, _stage_fn)
    lead(cfg.run_dir, part.world)
    err = stage_dir(cfg.run_dir, RUN) / ERROR_FILE
    err.unlink(missing_ok=True)
    try:
        return run_pipeline(cfg)
    except Exception as exc:
        import traceback

        write_text(err, traceback.format_exc())
        line = failure_line(exc)
        if line is not None and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            # hydra_entry turns expected failures into sys.exit(2), which would end the whole sweep: fail this job only
            raise RuntimeError(line) from exc
        raise
    finally:
        tell_followers(None, cfg.run_dir)
        stop_leading()


def main() -> None:
    """Hydra entry point: ``python -m pipeline.run [overrides]`` (also ``-m`` multirun sweeps)."""

    def _run(cfg):
        out = _run_job(cfg)
        print(json.dumps(out))
        return None

    hydra_entry(_run, "run")


if __name__ == "__main__":
    main()
