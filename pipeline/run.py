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

import contextlib
import copy
import fcntl
import importlib
import os
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pipeline.io.atomic import write_json
from dataclasses import make_dataclass
from typing import List

from pipeline.config import (ConfigError, DedupConfig, IngestConfig, PretrainConfig, SourceConfig, TransferConfig,
                             VocabConfig, result_view, to_container, validate)
from pipeline.io.manifest import canonical_hash, code_version, read_manifest, stage_dir
from pipeline.io.run_folder import DIST_STAGES, ENERGY_FILE, ERROR_FILE, RANKS_FILE, RUN, STAGE_STATE_FILE, STAGES, UPSTREAM

log = logging.getLogger(__name__)

def _digest(path: str | None) -> str | None:
    """SHA-256 of a side input file (a withdrawn-ids list), so editing it in place changes the key."""
    from pipeline.io.manifest import file_sha256

    return file_sha256(path) if path and Path(path).is_file() else None


# the schema of the sections a stage key hashes (runtime fields are dropped by it: pipeline.config.runtime)
_SECTION_SCHEMA = make_dataclass("StageSections", [("sources", List[SourceConfig]), ("eval_sets", List[SourceConfig]),
                                                  ("ingest", IngestConfig), ("dedup", DedupConfig), ("vocab", VocabConfig),
                                                  ("pretrain", PretrainConfig), ("transfer", TransferConfig)])


def stage_config(cfg: dict, stage: str) -> dict:
    """The config sections ``stage`` depends on, from the resolved config ``cfg`` (a plain dict), without the
    fields that never change results; what its key hashes and its manifest records."""
    return _sections(cfg, stage)


def _sections(cfg: dict, stage: str) -> dict:
    pick = {
        "ingest": {"sources": cfg["data"]["sources"], "ingest": cfg["ingest"],
                   "withdrawn_sha256": _digest(cfg["ingest"].get("withdrawn"))},
        "dedup": {"eval_sets": cfg["data"]["eval_sets"], "dedup": cfg["dedup"], "ingest": cfg["ingest"],
                  "withdrawn_sha256": _digest(cfg["dedup"].get("withdrawn"))},
        "vocab": {"vocab": cfg["vocab"]},
        "pretrain": {"pretrain": cfg["pretrain"], "seed": cfg["seed"]},
        "transfer": {"transfer": cfg.get("transfer", {}), "seed": cfg["seed"]},
    }[stage]
    return result_view(pick, _SECTION_SCHEMA)


def recorded_numerics(run_dir, stage: str) -> dict | None:
    """The precision choice a finished stage recorded in its manifest (``counts.hardware.precision_choice``)."""
    man = read_manifest(stage_dir(run_dir, stage)) if run_dir is not None else None
    return (((man or {}).get("counts") or {}).get("hardware") or {}).get("precision_choice")


def _pin_numerics(section: dict, recorded: dict | None) -> dict:
    """Replace ``precision: auto`` / ``channels_last: null`` by what the stage resolved to.

    The resolved numerics change results, so they belong in the key; ``auto`` in a run folder
    means "what this folder already has" (a finished stage is not redone because another
    machine would resolve ``auto`` differently; an explicit different value redoes it).
    """
    if not recorded:
        return section
    out = dict(section)
    if out.get("precision") in ("auto", recorded.get("precision")):
        out["precision"] = recorded.get("precision")
        out["tf32"] = recorded.get("tf32", False)
    if out.get("channels_last") in (None, recorded.get("channels_last")):
        out["channels_last"] = recorded.get("channels_last")
    return out


def stage_keys(cfg: dict, run_dir=None) -> dict[str, str]:
    """The key of every stage for the resolved config ``cfg`` (a plain dict).

    With ``run_dir``, the precision and layout that finished stages resolved ``auto`` to
    (:func:`recorded_numerics`) are part of their keys.
    """
    keys: dict[str, str] = {}
    for s in STAGES:
        sec = _sections(cfg, s)
        if s in ("pretrain", "transfer") and run_dir is not None:
            sec = {**sec, s: _pin_numerics(sec[s], recorded_numerics(run_dir, s))}
        keys[s] = canonical_hash({"stage": s, "config": sec, "upstream": [keys[u] for u in UPSTREAM[s]]})
    return keys


def _mhash(manifest: dict | None) -> str | None:
    """Identity of one finished execution of a stage (its manifest's hash)."""
    return canonical_hash(manifest) if manifest else None


def _stage_fn(stage: str):
    return getattr(importlib.import_module(f"pipeline.{stage}"), f"run_{stage}")


def _launch_torchrun(stage: str, nproc: int, run_dir: str) -> None:
    """Run ``stage`` under torchrun with this job's own command-line overrides."""
    from hydra.core.hydra_config import HydraConfig

    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("run.", "run_dir="))]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", f"pipeline.{stage}", *overrides, "run_dir='" + run_dir.replace("'", "\\'") + "'", "hydra.output_subdir=null"]
    # run_dir explicit: a sweep job's comes from hydra.sweep.*, which the children do not see; no .hydra/ of theirs
    log.info("launching %s", " ".join(cmd))
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        from pipeline.cli import ReportedFailure

        # the ranks printed their own error (one line for an expected failure) and torchrun its summary
        raise ReportedFailure(f"stage {stage} failed under torchrun (exit status {rc}); its error is printed above", rc)


def _energy_context(name: str, cfg, gpus: int | None = None):
    """Measure a stage's time and energy (pipeline.reporting.energy), or only its time if disabled."""
    if not cfg.energy.enabled:
        return _timer(name)
    from pipeline.reporting.energy import measure_energy

    return measure_energy(name, cfg.energy, gpus=gpus)


@contextlib.contextmanager
def _timer(name: str):
    rec = {"stage": name}
    t0 = time.perf_counter()
    yield rec
    rec["wall_seconds"] = round(time.perf_counter() - t0, 3)


def _as_dict(rec) -> dict:
    if isinstance(rec, dict):
        return rec
    if hasattr(rec, "to_dict"):
        return rec.to_dict()
    return dict(vars(rec))


def _run_shared(cfg, shared: Path, stages: list[str]) -> dict[str, str]:
    """Run ``stages`` once in ``shared`` (under a file lock) and link them into ``cfg.run_dir``.

    Jobs of a Hydra multirun sweep call this concurrently: the first takes the lock and
    runs the stages, the others wait and then find them up to date.
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


def run_pipeline(cfg) -> dict:
    """Run the stages of ``cfg.run.stages`` in order, skipping those that are up to date.

    Returns:
        ``{"stages": {stage: "ran" | "skipped"}, "report": path or None}``.

    Raises:
        pipeline.config.ConfigError: unknown stage names, or any stage's config error,
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
        outcome.update(_run_shared(cfg, Path(cfg.run.shared_dir), [s for s in shared_stages if s in wanted]))
    state_file = stage_dir(run_dir, RUN) / STAGE_STATE_FILE
    energy_file = stage_dir(run_dir, RUN) / ENERGY_FILE
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    energy = json.loads(energy_file.read_text()) if energy_file.exists() else {}
    forced = set()
    for s in cfg.run.force:  # a forced stage forces everything after it
        forced.update(STAGES[STAGES.index(s):])
    for s in STAGES:
        if s not in wanted or s in shared_stages:
            continue
        man = read_manifest(stage_dir(run_dir, s))
        rec = state.get(s, {})
        upstream_now = {u: _mhash(read_manifest(stage_dir(run_dir, u))) for u in UPSTREAM[s]}
        up_to_date = (man is not None and rec.get("key") == keys[s] and rec.get("manifest") == _mhash(man)
                      and rec.get("upstream") == upstream_now and s not in forced)
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
            _tell_followers(s, run_dir)
        torchrun = s == "pretrain" and cfg.run.pretrain_nproc > 1
        gpus = None
        if torchrun:  # the children use the GPUs, if any; this process never initializes CUDA
            import torch

            gpus = cfg.run.pretrain_nproc if torch.cuda.is_available() and cfg.pretrain.device != "cpu" else 0
        with _energy_context(s, cfg, gpus) as erec:
            if torchrun:
                _launch_torchrun(s, cfg.run.pretrain_nproc, str(run_dir))
            else:
                _stage_fn(s)(cfg)
        man = read_manifest(stage_dir(run_dir, s))
        if man is None:
            raise RuntimeError(f"stage {s} finished without writing its manifest")
        keys = stage_keys(resolved, run_dir)  # the stage's resolved precision is now recorded
        state[s] = {"key": keys[s], "manifest": _mhash(man), "code_version": code_version(),
                    "upstream": {u: _mhash(read_manifest(stage_dir(run_dir, u))) for u in UPSTREAM[s]}}
        energy[s] = _as_dict(erec)
        write_json(state_file, state)
        write_json(energy_file, energy)
        outcome[s] = "ran"
    report = None
    if cfg.run.report:
        from pipeline.report import write_report

        report = str(write_report(run_dir, energy, energy_cfg=cfg.energy))
        log.info("report: %s", report)
    return {"stages": outcome, "report": report}


# A job of several tasks (SLURM/submitit, one task per GPU) runs `main` once per task: rank 0 runs the
# pipeline; the other ranks run only the stages that split work over ranks, when rank 0 reaches them
# (it tells them through <run_dir>/run/ranks.json), and leave when it is done.
_leader: dict = {"file": None, "seq": 0}


def _job_token() -> str:
    """Identifies one start of a multi-task job (a SLURM requeue is a new start)."""
    keys = ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SUBMITIT_LOCAL_JOB_ID", "TORCHELASTIC_RUN_ID",
            "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR", "MASTER_PORT")
    return ":".join(os.environ.get(k, "") for k in keys)


def _tell_followers(stage: str | None, run_dir) -> None:
    """Rank 0 of a multi-task job: the other ranks are to run ``stage`` in ``run_dir`` now (None: job done)."""
    if _leader["file"] is None:
        return
    _leader["seq"] += 1
    write_json(_leader["file"], {"job": _job_token(), "seq": _leader["seq"], "stage": stage, "run_dir": str(run_dir)})


def _follow(cfg, rank: int) -> dict:
    """Ranks > 0 of a multi-task job: run the stages rank 0 names (ingest, pretrain) until it is done."""
    path, token, seq, ran = stage_dir(cfg.run_dir, "run") / RANKS_FILE, _job_token(), 0, {}
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
        _stage_fn(msg["stage"])(sub)
        ran[msg["stage"]] = "ran"


def _run_job(cfg) -> dict:
    """One task of ``main``: the pipeline (rank 0) or the distributed stages (other ranks); failures recorded."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from pipeline.io.atomic import write_text
    from pipeline.train.partition import current_partition

    if os.environ.get("SUBMITIT_EXECUTOR"):  # hydra-submitit-launcher: RANK, WORLD_SIZE, MASTER_ADDR/PORT from submitit
        from pipeline.train.distributed import export_rank_env

        export_rank_env()
    part = current_partition()
    if not part.is_main:
        return _follow(cfg, part.rank)
    _leader.update(file=stage_dir(cfg.run_dir, "run") / RANKS_FILE if part.world > 1 else None, seq=0)
    err = stage_dir(cfg.run_dir, "run") / ERROR_FILE
    err.unlink(missing_ok=True)
    try:
        return run_pipeline(cfg)
    except Exception as exc:
        import traceback

        from pipeline.cli import failure_line

        write_text(err, traceback.format_exc())
        line = failure_line(exc)
        if line is not None and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            # hydra_entry turns expected failures into sys.exit(2), which would end the whole sweep: fail this job only
            raise RuntimeError(line) from exc
        raise
    finally:
        _tell_followers(None, cfg.run_dir)
        _leader["file"] = None


def main() -> None:
    """Hydra entry point: ``python -m pipeline.run [overrides]`` (also ``-m`` multirun sweeps)."""
    from pipeline.cli import hydra_entry

    def _run(cfg):
        out = _run_job(cfg)
        print(json.dumps(out))
        return None

    hydra_entry(_run, "run")


if __name__ == "__main__":
    main()
