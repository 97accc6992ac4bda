"""One table for a sweep: ``python -m pipeline.summarize <sweep folder>``.

A sweep (``python -m pipeline.run -m experiment=NAME``, see ``conf/experiment/sweep.yaml``)
leaves one run folder per job under ``hydra.sweep.dir``. This module reads them and writes
``summary.md`` and ``summary.csv`` into the sweep folder (atomically), one row per job:

* the **swept values**, one column per key whose value differs between jobs, read from the
  overrides Hydra saved for the job (``<job>/.hydra/overrides.yaml``); for a folder without
  them, from the configs recorded in the job's stage manifests (``vocab``, ``pretrain``,
  ``transfer``);
* the **status**: ``ok`` (every stage the job asked for has its manifest), ``failed`` (the
  job raised: ``<job>/run/error.txt``, written by ``pipeline.run``, holds the traceback and
  the table its last line), or ``incomplete`` (killed, preempted or still running: no error
  recorded, a manifest missing; the last line of ``<job>/run.log`` is shown). Failed jobs are
  kept in the table, never dropped;
* the **results**: held-out precision@1 and mAP after pretraining (``pretrain/manifest.json``),
  transfer top-1 per target, method, init and labelled images per class with its 95% interval
  (``top1 TARGET METHOD INIT N``), the pretrained-minus-scratch top-1 difference with its interval
  (``gain TARGET METHOD N``) where both inits ran (``transfer/results.json``), and the job's own
  wall-clock seconds (``run/energy.json``; shared stages are counted once, in
  ``shared/run/energy.json``, and shown in the header). In ``summary.md`` an interval reads
  ``0.6120 [0.5900, 0.6340]``; ``summary.csv`` gives it as three columns (``COL``, ``COL lo``, ``COL hi``).

Nothing here writes outside the sweep folder, and the files name no absolute path.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.io.atomic import write_text
from pipeline.io.manifest import read_manifest, stage_dir

STAGES = ("ingest", "dedup", "vocab", "pretrain", "transfer")
SUMMARY_MD, SUMMARY_CSV = "summary.md", "summary.csv"
SHARED = "shared"
ERROR_FILE = "error.txt"  # <job>/run/error.txt, see pipeline.run
NOT_SWEPT = {"experiment", "run_dir"}  # overrides that name the sweep or a folder, not a value (and run.*: how, not what)
_CONFIG_STAGES = ("vocab", "pretrain", "transfer")  # manifests whose config is read when .hydra/ is absent


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


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------

def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _load_yaml(path: Path) -> Any:
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
    return (path / ".hydra" / "overrides.yaml").exists() or (path / "run").is_dir() or (path / "run.log").exists() \
        or any((path / s).exists() for s in STAGES)


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wanted_stages(job: Path) -> list[str]:
    cfg = _load_yaml(job / ".hydra" / "config.yaml") or {}
    stages = ((cfg.get("run") or {}).get("stages")) if isinstance(cfg, dict) else None
    if isinstance(stages, list) and stages:
        return [str(s) for s in stages]
    state = _load_json(job / "run" / "stages.json") or {}
    present = [s for s in STAGES if (job / s).exists() or s in state]
    return present or list(STAGES)


def tpc_label(train_per_class: Any) -> str:
    return "full" if train_per_class is None else str(train_per_class)


def read_job(path: Path) -> Job:
    """Overrides, status, error and results of one job folder."""
    job = Job(name=path.name, path=path)
    hydra_cfg = _load_yaml(path / ".hydra" / "hydra.yaml") or {}
    num = ((hydra_cfg.get("hydra") or {}).get("job") or {}).get("num") if isinstance(hydra_cfg, dict) else None
    job.num = num if isinstance(num, int) else None
    for text in _load_yaml(path / ".hydra" / "overrides.yaml") or []:
        kv = parse_override(str(text))
        if kv and kv[0] not in NOT_SWEPT and not kv[0].startswith("run."):
            job.overrides[kv[0]] = kv[1]
    for s in _CONFIG_STAGES:
        man = read_manifest(stage_dir(path, s)) if (path / s / "manifest.json").exists() else None
        if man:
            job.config_values.update(_flatten(man.get("config") or {}))

    pre = read_manifest(stage_dir(path, "pretrain")) if (path / "pretrain" / "manifest.json").exists() else None
    if pre:
        c = pre.get("counts") or {}
        job.results["heldout_precision_at_1"] = c.get("heldout_precision_at_1")
        job.results["heldout_mAP"] = c.get("heldout_mAP")
    from pipeline.report import transfer_targets

    for name, sec in transfer_targets(_load_json(path / "transfer" / "results.json")).items():
        for r in sec.get("rows") or []:
            ci = r.get("top1_ci") or [None, None]
            job.results[f"top1 {name} {r.get('method', '?')} {r.get('init', '?')} {tpc_label(r.get('train_per_class'))}"] = \
                Interval(r.get("top1"), ci[0], ci[1]) if r.get("top1") is not None else None
        for g in sec.get("gains") or []:
            job.results[f"gain {name} {g.get('method', '?')} {tpc_label(g.get('train_per_class'))}"] = \
                Interval(g.get("diff"), g.get("lo"), g.get("hi"))
    energy = _load_json(path / "run" / "energy.json") or {}
    secs = [float(e.get("wall_seconds")) for e in energy.values() if isinstance(e, dict) and e.get("wall_seconds") is not None]
    job.results["seconds"] = round(sum(secs), 1) if secs else None

    err = path / "run" / ERROR_FILE
    missing = [s for s in _wanted_stages(path) if not (path / s / "manifest.json").exists()]
    if err.exists():
        job.status, job.error = "failed", _short(_last_line(err), 160)
    elif missing:
        job.status = "incomplete"
        last = _last_line(path / "run.log")
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


def swept_keys(jobs: list[Job]) -> tuple[list[str], str]:
    """The columns of swept values and where they come from ("overrides" or "manifests").

    Keys whose value differs between jobs (with a single job: all of its overrides). Jobs
    without saved overrides fall back on the configs in their stage manifests.
    """
    use_overrides = any(j.overrides for j in jobs)
    values = [j.overrides if use_overrides else j.config_values for j in jobs]
    keys: list[str] = []
    for v in values:
        keys += [k for k in v if k not in keys]
    if len(jobs) > 1 or not use_overrides:
        keys = [k for k in keys if len({json.dumps(v.get(k), sort_keys=True, default=str) for v in values}) > 1]
    return keys, ("overrides" if use_overrides else "manifests")


def _shared_info(root: Path, jobs: list[Job]) -> list[str]:
    shared = root / SHARED
    if not shared.is_dir():
        return []
    done = [s for s in STAGES if (shared / s / "manifest.json").exists()]
    linked = {s: sum(1 for j in jobs if (j.path / s).is_symlink()) for s in done}
    energy = _load_json(shared / "run" / "energy.json") or {}
    secs = sum(float(e.get("wall_seconds") or 0) for e in energy.values() if isinstance(e, dict))
    parts = [f"`{s}` (linked by {linked[s]} of {len(jobs)} jobs)" for s in done]
    return [f"Shared stages, run once in `{SHARED}/`: {', '.join(parts) or 'none finished'}"
            + (f"; {secs:.1f} s." if secs else ".")]


# --------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------

def table(jobs: list[Job]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows (raw values): job, swept values, status, results, error."""
    keys, source = swept_keys(jobs)
    result_keys = ["heldout_precision_at_1", "heldout_mAP"]
    top1: list[str] = []
    for j in jobs:
        top1 += [k for k in j.results if k.startswith(("top1 ", "gain ")) and k not in top1]
    targets: list[str] = []
    for k in top1:
        if k.split(" ")[1] not in targets:
            targets.append(k.split(" ")[1])
    order = {"linear_probe": 0, "finetune": 1}

    def tkey(k: str):
        parts = k.split(" ")
        kind, target, method = parts[0], parts[1], parts[2]
        init, tpc = (parts[3], parts[4]) if kind == "top1" else ("~gain", parts[3])
        return (targets.index(target), order.get(method, 9), tpc == "full", int(tpc) if tpc.isdigit() else 0,
                init != "pretrained", init)

    result_keys += sorted(top1, key=tkey) + ["seconds"]
    header = ["job", *keys, "status", *result_keys, "error"]
    rows = []
    for j in jobs:
        vals = j.overrides if source == "overrides" else j.config_values
        rows.append([j.name, *[vals.get(k) for k in keys], j.status, *[j.results.get(k) for k in result_keys], j.error])
    return header, rows


def _fmt(x: Any, column: str = "") -> str:
    if isinstance(x, Interval):
        sign = "+" if column.startswith("gain ") else ""
        if x.mean is None:
            return "-"
        if x.lo is None or x.hi is None:
            return f"{x.mean:{sign}.4f}"
        return f"{x.mean:{sign}.4f} [{x.lo:{sign}.4f}, {x.hi:{sign}.4f}]"
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.1f}" if column == "seconds" else f"{x:.4f}"
    return str(x)


def _md_cell(x: Any, column: str = "") -> str:
    return _fmt(x, column).replace("|", "\\|").replace("\n", " ")


def to_markdown(sweep_dir: Path, jobs: list[Job], header: list[str], rows: list[list[Any]]) -> str:
    n_ok = sum(j.status == "ok" for j in jobs)
    n_failed = sum(j.status == "failed" for j in jobs)
    lines = [f"# Sweep `{sweep_dir.name}`", "",
             f"{len(jobs)} jobs: {n_ok} ok, {n_failed} failed, {len(jobs) - n_ok - n_failed} incomplete.", ""]
    lines += _shared_info(sweep_dir, jobs)
    lines += ["", "Swept values come from each job's `.hydra/overrides.yaml`; precision@1 and mAP are "
              "measured on the held-out share of the pretraining set; `top1 TARGET METHOD INIT N` is transfer "
              "top-1 on TARGET with N labelled images per class (`full`: the capped full set) and its 95% "
              "interval in brackets; `gain TARGET METHOD N` is pretrained minus scratch top-1 with its 95% "
              "interval (no measurable gain where it covers 0); seconds count the job's own stages.", ""]
    return "\n".join(lines + markdown_table(header, rows)) + "\n"


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """The lines of the markdown table of :func:`table`'s header and rows (metrics with 4 decimals)."""
    first_result = header.index("status") + 1 if "status" in header else len(header)
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "| " + " | ".join("---:" if first_result <= i < len(header) - 1 else ":---" for i in range(len(header))) + " |"]
    return lines + ["| " + " | ".join(_md_cell(c, h) for c, h in zip(r, header)) + " |" for r in rows]


def to_csv(header: list[str], rows: list[list[Any]]) -> str:
    """CSV of the table; a column holding intervals becomes three: ``COL``, ``COL lo``, ``COL hi``."""
    wide = {i for i in range(len(header)) if any(isinstance(r[i], Interval) for r in rows)}
    head: list[str] = []
    for i, h in enumerate(header):
        head += [h, f"{h} lo", f"{h} hi"] if i in wide else [h]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in rows:
        out: list[Any] = []
        for i, c in enumerate(r):
            if i in wide:
                out += list(c) if isinstance(c, Interval) else [c, None, None]
            else:
                out.append(c)
        w.writerow(["" if c is None else c for c in out])
    return buf.getvalue()


def write_summary(sweep_dir: str | Path) -> dict:
    """Write ``summary.md`` and ``summary.csv`` into ``sweep_dir``; return paths, header and rows.

    Raises:
        FileNotFoundError: ``sweep_dir`` is not a folder.
    """
    root = Path(sweep_dir)
    jobs = read_sweep(root)
    header, rows = table(jobs)
    md = to_markdown(root, jobs, header, rows)
    write_text(root / SUMMARY_MD, md)
    write_text(root / SUMMARY_CSV, to_csv(header, rows))
    return {"markdown": root / SUMMARY_MD, "csv": root / SUMMARY_CSV, "header": header, "rows": rows, "text": md}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.summarize", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", help="the sweep folder (hydra.sweep.dir), e.g. runs/sweeps/resampling_x_loss")
    args = ap.parse_args(argv)
    try:
        out = write_summary(args.sweep_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out["text"], end="")
    print(f"\nwrote {out['markdown']} and {out['csv']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
