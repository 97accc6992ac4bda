"""``python -m benchmarks [--quick] [--only NAME ...] [--run-dir runs/demo]``: run the measurements, write the results.

Each measurement module runs in a process of its own (``python -m benchmarks.<name>``);
its rows are collected into ``benchmarks/results.json`` and ``benchmarks/RESULTS.md``.
With ``--only``, the rows of the other measurements already in ``results.json`` are kept
(each row says when and how it was measured). Every goal that is not met gets a py-spy
profile of our side (``--no-profile`` skips them; ``--profile NAME`` forces one).

Scratch files (image files for the anchors, copied run folders, profiles) go to a new
temp folder, removed at the end unless ``--keep-work`` or ``--work-dir`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import MODULES
from benchmarks.common import REPO, load_average, log, machine_info
from benchmarks.profile import profile_module
from benchmarks.report import write_report
from pipeline.io import run_folder as rf

HERE = Path(__file__).resolve().parent


def _display_path(p: str | Path, placeholder: str) -> str:
    """A path for the report: repo-relative if inside the repo, else a placeholder."""
    path = Path(p)
    if not path.is_absolute():
        return str(p)
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return placeholder


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one rep (development on a busy machine)")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=MODULES,
        default=None,
        metavar="NAME",
        help=f"run only these measurements ({', '.join(MODULES)})",
    )
    ap.add_argument("--run-dir", default="runs/demo", help="a finished demo run (read only; default runs/demo)")
    ap.add_argument("--work-dir", default=None, help="scratch folder (default: a new temp folder, removed at the end)")
    ap.add_argument("--keep-work", action="store_true", help="keep the temp scratch folder (profiles, image files)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per measurement (default 3; 1 with --quick)")
    ap.add_argument(
        "--profile",
        nargs="+",
        choices=MODULES,
        default=[],
        metavar="NAME",
        help="also record a py-spy profile of these measurements",
    )
    ap.add_argument("--no-profile", action="store_true", help="no automatic profile of goals not met")
    ap.add_argument(
        "--demo-command",
        default=None,
        metavar="CMD",
        help="time this command (e.g. 'make demo', from the repository root) as the whole-pipeline figure; "
        "default: the run folder's own stage records",
    )
    ap.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="an option for one measurement, e.g. loader:shards=4 or train_step:steps=100",
    )
    ap.add_argument("--out-dir", default=str(HERE), help="where RESULTS.md and results.json go (default benchmarks/)")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite RESULTS.md from results.json (e.g. after editing the notes)",
    )
    return ap.parse_args(argv)


def _command(a: argparse.Namespace) -> str:
    parts = ["python -m benchmarks"]
    if a.quick:
        parts.append("--quick")
    if a.only:
        parts += ["--only", *a.only]
    if a.run_dir != "runs/demo":
        parts += ["--run-dir", _display_path(a.run_dir, "<run-dir>")]
    if a.reps is not None:
        parts += ["--reps", str(a.reps)]
    if a.demo_command:
        parts += ["--demo-command", shlex.quote(a.demo_command)]
    for o in a.opt:
        parts += ["--opt", o]
    return " ".join(parts)


def run_module(name: str, a: argparse.Namespace, work: Path) -> tuple[list[dict], float, str | None]:
    """Run one measurement module in its own process; (rows, seconds, error)."""
    out = work / "results" / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        f"benchmarks.{name}",
        "--run-dir",
        str(Path(a.run_dir).resolve()),
        "--work-dir",
        str(work),
        "--json",
        str(out),
    ]
    if a.quick:
        cmd.append("--quick")
    if a.reps is not None:
        cmd += ["--reps", str(a.reps)]
    for o in a.opt:
        mod, _, kv = o.partition(":")
        if mod == name and kv:
            cmd += ["--opt", kv]
    if name == "demo" and a.demo_command:
        cmd += ["--opt", f"command={a.demo_command}"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO)
    secs = time.perf_counter() - t0
    if p.returncode != 0 or not out.exists():
        return [], secs, f"exit status {p.returncode}"
    return json.loads(out.read_text(encoding="utf-8")), secs, None


def report_only(a: argparse.Namespace) -> int:
    """Rewrite RESULTS.md from results.json (machine facts read now; same machine assumed)."""
    out_dir = Path(a.out_dir)
    rows = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    measured = [r.get("measured", {}) for r in rows]
    latest = max((m for m in measured if m.get("at")), key=lambda m: m["at"], default={})
    runs: dict[str, dict] = {}
    for r, m in zip(rows, measured):
        runs.setdefault(
            r.get("module", r["name"]), {"seconds": m.get("seconds") or 0.0, "load_average_before": m.get("load_average_before")}
        )
    profiles = {r["module"]: r["profile"] for r in rows if r.get("profile") and r.get("module")}
    machine = machine_info()
    machine["load_average"] = measured[0].get("load_average_before") if measured else None  # not today's
    write_report(
        out_dir / "RESULTS.md",
        shown_rows(rows),
        machine=machine,
        command=latest.get("command", "python -m benchmarks"),
        started=latest.get("at", "?"),
        total_seconds=latest.get("total_seconds") or 0.0,
        runs=runs,
        mode=latest.get("mode", "?"),
        run_dir=latest.get("run_dir", "runs/demo"),
        previous_profiles=profiles,
    )
    log(f"rewrote {out_dir / 'RESULTS.md'} from results.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.report_only:
        return report_only(a)
    if not rf.path(a.run_dir, rf.INGEST, rf.MANIFEST).exists():
        print(f"error: no finished demo run in {a.run_dir} (run `make demo` first, or pass --run-dir)", file=sys.stderr)
        return 2
    own_work = a.work_dir is None
    work = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix="hashtag-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    names = a.only or list(MODULES)
    started = dt.datetime.now(dt.UTC)
    machine = machine_info()
    mode = "quick" if a.quick else "full"
    stamp = started.isoformat(timespec="seconds")
    cpu_cap = (machine.get("cpu_capability") or {}).get("torch")
    log(f"benchmarks ({mode}): {', '.join(names)}; scratch in {work}")
    rows: list[dict] = []
    runs: dict[str, dict] = {}
    t_all = time.perf_counter()
    try:
        for name in names:
            la = load_average()
            log(f"--- {name} (load average {la})")
            got, secs, err = run_module(name, a, work)
            runs[name] = {
                "seconds": round(secs, 1),
                "load_average_before": la,
                "load_average_after": load_average(),
                "error": err,
            }
            for r in got:
                r["module"] = name
                r["measured"] = {
                    "at": stamp,
                    "mode": mode,
                    "seconds": round(secs, 1),
                    "load_average_before": la,
                    "cpu_capability": cpu_cap,
                    "stale": False,
                }
            if err:
                log(f"{name} failed: {err}")
                got = [
                    {
                        "name": name,
                        "ours": None,
                        "anchor": None,
                        "unit": "",
                        "ratio": None,
                        "goal": "",
                        "met": None,
                        "title": f"{name}: failed ({err})",
                        "module": name,
                        "details": {},
                        "measured": {"at": stamp, "mode": mode, "cpu_capability": cpu_cap, "stale": False},
                    }
                ]
            rows += got
        profiles: dict[str, dict] = {}
        want = list(a.profile)
        if not a.no_profile:
            want += [r["module"] for r in rows if r.get("met") is False and r["module"] != "demo"]
        for name in dict.fromkeys(want):
            profiles[name] = profile_module(name, run_dir=Path(a.run_dir).resolve(), work_dir=work, out_dir=work / "profiles")
        total = time.perf_counter() - t_all
        for r in rows:
            r["measured"].update(
                {"command": _command(a), "total_seconds": round(total, 1), "run_dir": _display_path(a.run_dir, "<run-dir>")}
            )
        out_dir = Path(a.out_dir)
        merged = _merge(out_dir / "results.json", rows, names)
        for r in merged:
            if r.get("module") in profiles:
                r["profile"] = profiles[r["module"]]
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
        write_report(
            out_dir / "RESULTS.md",
            shown_rows(merged),
            machine=machine,
            command=_command(a),
            started=stamp,
            total_seconds=total,
            runs=runs,
            mode=mode,
            run_dir=_display_path(a.run_dir, "<run-dir>"),
            previous_profiles=_previous_profiles(merged, profiles),
        )
        log(f"done in {total / 60:.1f} min: {out_dir / 'RESULTS.md'}, {out_dir / 'results.json'}")
        for r in rows:
            flag = {True: "met", False: "NOT MET", None: "-"}[r.get("met")]
            print(
                f"{r['name']:32s} ours {r['ours']!s:>12} anchor {r['anchor']!s:>12} ratio {r['ratio']!s:>8}  "
                f"goal {r['goal']:24s} {flag}"
            )
    finally:
        if own_work and not a.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        elif own_work:
            log(f"scratch kept in {work}")
    return 0


def _merge(path: Path, rows: list[dict], ran: list[str]) -> list[dict]:
    """This run's rows, plus earlier rows of measurements not run now (in module order)."""
    old = []
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = []
    keep = [r for r in old if isinstance(r, dict) and r.get("module") not in ran]
    for r in keep:  # not remeasured now: kept with their own date and CPU capability, and marked stale
        r.setdefault("measured", {})["stale"] = True
    allrows = keep + rows
    order = {m: i for i, m in enumerate(MODULES)}
    return sorted(allrows, key=lambda r: order.get(r.get("module"), 99))


def shown_rows(rows: list[dict]) -> list[dict]:
    """The rows as RESULTS.md shows them: a stale row (kept from an earlier run, not remeasured) says so in its
    "measured" column, with the CPU capability it was measured on; results.json keeps the rows unchanged."""
    out = []
    for r in rows:
        m = dict(r.get("measured") or {})
        if m.get("stale"):
            cap = m.get("cpu_capability") or "not recorded"
            m["mode"] = f"{m.get('mode', '?')}; **stale**: not remeasured, CPU capability {cap}"
        elif m.get("cpu_capability"):
            m["mode"] = f"{m.get('mode', '?')}; CPU capability {m['cpu_capability']}"
        out.append({**r, "measured": m})
    return out


def _previous_profiles(rows: list[dict], fresh: dict) -> dict:
    """Profiles to show: this run's, and those kept on rows from earlier runs."""
    out = {}
    for r in rows:
        m = r.get("module")
        if m in fresh:
            out[m] = fresh[m]
        elif r.get("profile") and m not in out:
            out[m] = r["profile"]
    return out


if __name__ == "__main__":
    sys.exit(main())
