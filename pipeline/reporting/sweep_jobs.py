"""The jobs of a sweep as ``pipeline.summarize`` sees them: overrides, status, error and results of each.

Each job folder is read through the run-folder contract (:mod:`pipeline.io.run_folder`), plus the
files Hydra saves beside it (``.hydra/overrides.yaml``, ``config.yaml``, ``hydra.yaml``) and the job's
log ``run.log``. A torn or foreign file (a killed job's) is treated as absent, never fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

from pipeline.evaluation.results import transfer_targets
from pipeline.io import run_folder as rf

SHARED = "shared"  # the sweep's folder of stages run once and linked into the jobs
JOB_LOG = "run.log"  # Hydra's log of the job, beside its stage folders
NOT_SWEPT = {"experiment", "run_dir"}  # overrides that name the sweep or a folder, not a value (and run.*: how, not what)
_CONFIG_STAGES = (rf.VOCAB, rf.PRETRAIN, rf.TRANSFER)  # manifests whose config is read when .hydra/ is absent


class Interval(NamedTuple):
    """A result with its 95% interval (``mean`` is the point estimate: accuracy or difference)."""

    mean: float
    lo: float | None
    hi: float | None


@dataclass
class Job:
    """One job folder of a sweep, as the summary sees it."""

    name: str  # the folder name (hydra.sweep.subdir)
    path: Path
    num: int | None = None  # hydra.job.num, for ordering
    overrides: dict[str, str] = field(default_factory=dict)
    config_values: dict[str, Any] = field(default_factory=dict)  # flattened stage-manifest configs
    status: str = "incomplete"
    error: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def load_yaml(path: Path) -> Any:
    """A YAML file as plain containers (interpolations unresolved), or None when missing, torn or foreign."""
    if not path.exists():
        return None
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # a torn or foreign file: treat as absent
        return None


def parse_override(text: str) -> tuple[str, str] | None:
    """``"pretrain.loss=sigmoid"`` -> ``("pretrain.loss", "sigmoid")``; ``+k=v`` and ``k@pkg=v`` too; ``~k`` -> None."""
    text = text.strip()
    if text.startswith("~") or "=" not in text:
        return None
    key, value = text.split("=", 1)
    key = key.lstrip("+").split("@", 1)[0]
    if key.startswith("hydra.") or key.startswith("hydra/"):
        return None
    return key, value


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(d, sort_keys=True) if isinstance(d, list) else d
    return out


def is_job_dir(path: Path) -> bool:
    """A folder of the sweep that holds one job's run (not ``shared/``, not hidden ones like ``.submitit/``)."""
    if not path.is_dir() or path.is_symlink() or path.name.startswith(".") or path.name == SHARED:
        return False
    return (
        (path / ".hydra" / "overrides.yaml").exists()
        or (path / rf.RUN).is_dir()
        or (path / JOB_LOG).exists()
        or any((path / s).exists() for s in rf.STAGES)
    )


def _last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_or_none(read: Callable[[], Any]) -> Any:
    """``read()``, or None for a torn or foreign file (a killed job's): treated as absent."""
    try:
        return read()
    except (OSError, ValueError):
        return None


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finished(job: Path, stage: str) -> bool:
    return rf.path(job, stage, rf.MANIFEST).exists()


def _wanted_stages(job: Path) -> list[str]:
    cfg = load_yaml(job / ".hydra" / "config.yaml") or {}
    stages = ((cfg.get("run") or {}).get("stages")) if isinstance(cfg, dict) else None
    if isinstance(stages, list) and stages:
        return [str(s) for s in stages]
    state = read_or_none(lambda: rf.read_stage_state(job)) or {}
    present = [s for s in rf.STAGES if (job / s).exists() or s in state]
    return present or list(rf.STAGES)


def tpc_label(train_per_class: Any) -> str:
    """Labelled images per class in a column name: None (the capped full set) -> ``full``."""
    return "full" if train_per_class is None else str(train_per_class)


def read_job(path: Path) -> Job:
    """Overrides, status, error and results of one job folder."""
    job = Job(name=path.name, path=path)
    hydra_cfg = load_yaml(path / ".hydra" / "hydra.yaml") or {}
    num = ((hydra_cfg.get("hydra") or {}).get("job") or {}).get("num") if isinstance(hydra_cfg, dict) else None
    job.num = num if isinstance(num, int) else None
    for text in load_yaml(path / ".hydra" / "overrides.yaml") or []:
        kv = parse_override(str(text))
        if kv and kv[0] not in NOT_SWEPT and not kv[0].startswith("run."):
            job.overrides[kv[0]] = kv[1]
    for s in _CONFIG_STAGES:
        man = rf.read_manifest(rf.stage_dir(path, s)) if _finished(path, s) else None
        if man:
            job.config_values.update(_flatten(man.get("config") or {}))

    pre = rf.read_manifest(rf.stage_dir(path, rf.PRETRAIN)) if _finished(path, rf.PRETRAIN) else None
    if pre:
        c = pre.get("counts") or {}
        job.results["heldout_precision_at_1"] = c.get("heldout_precision_at_1")
        job.results["heldout_mAP"] = c.get("heldout_mAP")
    for name, sec in transfer_targets(read_or_none(lambda: rf.read_transfer_results(path))).items():
        for r in sec.get("rows") or []:
            ci = r.get("top1_ci") or [None, None]
            job.results[f"top1 {name} {r.get('method', '?')} {r.get('init', '?')} {tpc_label(r.get('train_per_class'))}"] = (
                Interval(r.get("top1"), ci[0], ci[1]) if r.get("top1") is not None else None
            )
        for g in sec.get("gains") or []:
            job.results[f"gain {name} {g.get('method', '?')} {tpc_label(g.get('train_per_class'))}"] = Interval(
                g.get("diff"), g.get("lo"), g.get("hi")
            )
    energy = read_or_none(lambda: rf.read_energy_records(path)) or {}
    secs = [float(e["wall_seconds"]) for e in energy.values() if isinstance(e, dict) and e.get("wall_seconds") is not None]
    job.results["seconds"] = round(sum(secs), 1) if secs else None

    err = rf.read_error(path)
    missing = [s for s in _wanted_stages(path) if not _finished(path, s)]
    if err is not None:
        job.status, job.error = "failed", _short(_last_line(err), 160)
    elif missing:
        job.status = "incomplete"
        last = _last_line(_read_text(path / JOB_LOG))
        job.error = _short(f"no manifest for {', '.join(missing)}" + (f"; last log line: {last}" if last else ""))
    else:
        job.status = "ok"
    return job


def read_sweep(sweep_dir: str | Path) -> list[Job]:
    """Every job folder under ``sweep_dir``, in Hydra's job order (then by name)."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no sweep folder {sweep_dir}")
    jobs = [read_job(p) for p in sorted(root.iterdir()) if is_job_dir(p)]
    jobs.sort(key=lambda j: (j.num is None, j.num if j.num is not None else 0, j.name))
    return jobs
