"""Profiles of a measurement's "ours" part with py-spy, summarized for RESULTS.md.

``python -m benchmarks --profile NAME`` (or automatically for every goal not met) runs
``py-spy record --format speedscope --subprocesses`` over
``python -m benchmarks.NAME --quick --ours-only`` (DataLoader workers and process-pool
children included; idle waits excluded), keeps the speedscope file in the work folder
(open it at speedscope.app), and summarizes it here: CPU samples per process, the
functions with the most samples at the top of the stack ("self"), and the pipeline's own
functions by inclusive samples.

``python -m benchmarks.profile FILE.speedscope.json`` prints the summary of a saved file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks.common import REPO, log
from pipeline.reporting.format import md_table

RATE = 100  # samples per second per thread
# Leaf functions that are waits py-spy cannot always tell from work (lock and socket
# waits of multiprocessing's feeder threads, DataLoader queues, process pools): their
# samples are counted apart as "waiting", not as CPU.
WAITS = {
    "Condition.wait",
    "Event.wait",
    "socket.accept",
    "_PollLikeSelector.select",
    "Connection._recv",
    "Connection._poll",
    "Connection.poll",
    "wait",
    "select",
    "poll",
    "Popen.wait",
    "Popen._wait",
    "_wait_for_tstate_lock",
    "Thread.join",
    "Pool.join",
}


def py_spy() -> str | None:
    """The py-spy executable next to this Python, or on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def short_file(path: str) -> str:
    """A file name without this machine's folders: ``pkg/mod.py`` for installed packages,
    repo-relative for the project's files, else the base name."""
    p = path.replace("\\", "/")
    if "site-packages/" in p:
        return p.split("site-packages/", 1)[1]
    repo = str(REPO).replace("\\", "/") + "/"
    if p.startswith(repo):
        return p[len(repo) :]
    if p.startswith("<"):
        return p
    return p.rsplit("/", 1)[-1]


def summarize(speedscope_file: Path, top: int = 12) -> dict:
    """Per-process sample counts, top self functions, top pipeline functions (inclusive)."""
    d = json.loads(Path(speedscope_file).read_text(encoding="utf-8"))
    frames = d["shared"]["frames"]
    names = [
        "(process root)" if f["name"].startswith("process ") else f"{f['name']} ({short_file(f.get('file') or '?')})"
        for f in frames
    ]
    self_c: Counter = Counter()
    incl_pipeline: Counter = Counter()
    per_process: Counter = Counter()
    total = 0
    waiting = 0.0
    unit = "samples"
    for prof in d["profiles"]:
        unit = prof.get("unit", "none")
        pname = prof.get("name", "?").split(" Thread")[0]
        for stack, w in zip(prof["samples"], prof.get("weights") or [1] * len(prof["samples"])):
            if not stack:
                continue
            if frames[stack[-1]]["name"] in WAITS:
                waiting += w
                continue
            total += w
            per_process[pname] += w
            self_c[names[stack[-1]]] += w
            for fi in set(stack):
                if short_file(frames[fi].get("file") or "").startswith("pipeline/"):
                    incl_pipeline[names[fi]] += w
    share = (lambda c: round(100.0 * c / total, 1)) if total else (lambda c: 0.0)
    # a process is "main" if it has the most samples of the first listed profile's process
    return {
        "samples": round(total, 2),
        "waiting": round(waiting, 2),
        "unit": "CPU seconds" if unit == "seconds" else "samples",
        "rate_hz": RATE,
        "processes": [
            {"process": _proc_label(p, per_process), "samples": round(c, 2), "percent": share(c)}
            for p, c in per_process.most_common()
        ],
        "top_self": [{"function": n, "samples": c, "percent": share(c)} for n, c in self_c.most_common(top)],
        "top_pipeline_inclusive": [{"function": n, "samples": c, "percent": share(c)} for n, c in incl_pipeline.most_common(top)],
    }


def _proc_label(name: str, all_names) -> str:
    """``pid N`` with ``(main)`` on the first process started (the lowest pid), ``(child)`` on others."""

    def pid(n: str) -> int:
        digits = "".join(ch for ch in n.split()[1] if ch.isdigit()) if len(n.split()) > 1 else ""
        return int(digits) if digits else 0

    pids = [pid(n) for n in all_names]
    me = pid(name)
    role = "main" if me == min(pids) else "child"
    return f"pid {me} ({role})" if me else name


def profile_module(
    name: str, *, run_dir: Path, work_dir: Path, out_dir: Path, extra: list[str] | None = None, timeout: float = 900
) -> dict:
    """Record one measurement module (quick sizes, ours only) under py-spy; return the summary.

    Returns ``{"error": ...}`` instead when py-spy is missing or fails.
    """
    exe = py_spy()
    if exe is None:
        return {"error": "py-spy not installed (pip install -e '.[bench]')"}
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.speedscope.json"
    cmd = [
        exe,
        "record",
        "--format",
        "speedscope",
        "--rate",
        str(RATE),
        "--subprocesses",
        "-o",
        str(out),
        "--",
        sys.executable,
        "-m",
        f"benchmarks.{name}",
        "--quick",
        "--ours-only",
        "--run-dir",
        str(run_dir),
        "--work-dir",
        str(work_dir),
        "--json",
        str(out_dir / f"{name}.profiled-run.json"),
        *(extra or []),
    ]
    log(f"profile {name}: py-spy record (quick sizes, ours only)")
    try:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0 or not out.exists():
        return {"error": f"py-spy exit {p.returncode}: {(p.stderr or '')[-500:]}"}
    s = summarize(out)
    s["file"] = f"<work-dir>/profiles/{out.name}"
    return s


def markdown(name: str, s: dict) -> str:
    """The summary as Markdown (for RESULTS.md)."""
    if "error" in s:
        return f"Profile of `{name}`: not available ({s['error']}).\n"
    lines = [
        f"py-spy profile of `benchmarks.{name} --quick --ours-only`, set-up included ({s['samples']:,} "
        f"{s.get('unit', 'samples')} sampled at {s['rate_hz']} Hz over all processes; waits excluded "
        f"({s.get('waiting', 0):,} more in lock/queue/socket waits); "
        f"speedscope file `{s.get('file', '')}`).",
        "",
        "Share by process: " + ", ".join(f"{p['process']} {p['percent']}%" for p in s["processes"][:6]),
        "",
    ]
    lines += md_table(
        ["top of stack (self)", "% of samples"], [[f"`{r['function']}`", r["percent"]] for r in s["top_self"]], "--"
    )
    if s["top_pipeline_inclusive"]:
        rows = [[f"`{r['function']}`", r["percent"]] for r in s["top_pipeline_inclusive"]]
        lines += [""] + md_table(["pipeline function (inclusive)", "% of samples"], rows, "--")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for f in sys.argv[1:]:
        print(markdown(Path(f).stem, summarize(Path(f))))
