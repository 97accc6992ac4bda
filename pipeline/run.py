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

Energy and time of every stage are measured (:mod:`pipeline.energy`) into
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

from pipeline.atomic import write_json
from pipeline.config import ConfigError, to_container, validate
from pipeline.manifest import canonical_hash, code_version, read_manifest, stage_dir

log = logging.getLogger(__name__)

STAGES = ("ingest", "dedup", "vocab", "pretrain", "transfer")
UPSTREAM = {"ingest": (), "dedup": ("ingest",), "vocab": ("dedup",), "pretrain": ("vocab",),
            "transfer": ("pretrain", "dedup")}
# Config sections each stage depends on (keys that do not change results are dropped).
_NOT_RESULT = {"progress", "workers", "merge_timeout_s", "threads", "checkpoint_every_steps", "keep_checkpoints",
               "tensorboard", "eval_every_steps", "device", "compile", "audit_data"}


def _sections(cfg: dict, stage: str) -> dict:
    pick = {
        "ingest": {"sources": cfg["data"]["sources"], "ingest": cfg["ingest"]},
        "dedup": {"eval_sets": cfg["data"]["eval_sets"], "dedup": cfg["dedup"], "ingest": cfg["ingest"]},
        "vocab": {"vocab": cfg["vocab"]},
        "pretrain": {"pretrain": cfg["pretrain"], "seed": cfg["seed"]},
        "transfer": {"transfer": cfg.get("transfer", {}), "seed": cfg["seed"]},
    }[stage]

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in _NOT_RESULT}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return clean(pick)


def stage_keys(cfg: dict) -> dict[str, str]:
    """The key of every stage for the resolved config ``cfg`` (a plain dict)."""
    keys: dict[str, str] = {}
    for s in STAGES:
        keys[s] = canonical_hash({"stage": s, "config": _sections(cfg, s), "upstream": [keys[u] for u in UPSTREAM[s]]})
    return keys


def _mhash(manifest: dict | None) -> str | None:
    """Identity of one finished execution of a stage (its manifest's hash)."""
    return canonical_hash(manifest) if manifest else None


def _stage_fn(stage: str):
    return getattr(importlib.import_module(f"pipeline.{stage}"), f"run_{stage}")


def _launch_torchrun(stage: str, nproc: int) -> None:
    """Run ``stage`` under torchrun with this job's own command-line overrides."""
    from hydra.core.hydra_config import HydraConfig

    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("run.")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", f"pipeline.{stage}", *overrides]
    log.info("launching %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def _energy_context(name: str, cfg):
    try:
        from pipeline.energy import measure_energy
    except ImportError:  # energy module unavailable: time only
        return _timer(name)
    return measure_energy(name, cfg.get("energy") if hasattr(cfg, "get") else None)


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
    keys = stage_keys(resolved)
    run_dir = Path(cfg.run_dir)
    outcome: dict[str, str] = {}
    if shared_stages:
        outcome.update(_run_shared(cfg, Path(cfg.run.shared_dir), [s for s in shared_stages if s in wanted]))
    state_file = stage_dir(run_dir, "run") / "stages.json"
    energy_file = stage_dir(run_dir, "run") / "energy.json"
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
        with _energy_context(s, cfg) as erec:
            if s == "pretrain" and cfg.run.pretrain_nproc > 1:
                _launch_torchrun(s, cfg.run.pretrain_nproc)
            else:
                _stage_fn(s)(cfg)
        man = read_manifest(stage_dir(run_dir, s))
        if man is None:
            raise RuntimeError(f"stage {s} finished without writing its manifest")
        state[s] = {"key": keys[s], "manifest": _mhash(man), "code_version": code_version(),
                    "upstream": {u: _mhash(read_manifest(stage_dir(run_dir, u))) for u in UPSTREAM[s]}}
        energy[s] = _as_dict(erec)
        write_json(state_file, state)
        write_json(energy_file, energy)
        outcome[s] = "ran"
    report = None
    if cfg.run.report:
        try:
            from pipeline.report import write_report
        except ImportError:
            log.warning("report module unavailable: no report.md")
        else:
            report = str(write_report(run_dir, energy))
            log.info("report: %s", report)
    return {"stages": outcome, "report": report}


def main() -> None:
    """Hydra entry point: ``python -m pipeline.run [overrides]`` (also ``-m`` multirun sweeps)."""
    from pipeline.cli import hydra_entry

    def _run(cfg):
        out = run_pipeline(cfg)
        print(json.dumps(out))
        return None

    hydra_entry(_run, "run")


if __name__ == "__main__":
    main()
