"""What every measurement shares: its command line, the work folder, the demo images, timing, result rows.

A measurement module defines ``run(ctx) -> list[dict]`` (result rows, see :func:`result`)
and ends with ``if __name__ == "__main__": main(run)``, so it runs alone as
``python -m benchmarks.<name> [--quick] [--run-dir runs/demo] [--work-dir DIR] [--json OUT]``
and, from :mod:`benchmarks.__main__`, in a process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from pipeline.io import run_folder as rf
from pipeline.system import available_cores

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------
# context
# --------------------------------------------------------------------------------------


@dataclass
class Context:
    """Where a measurement reads and writes, and how big it is.

    Attributes:
        run_dir: a finished demo run (read only: ``ingest/`` at least; ``dedup/`` and
            ``vocab/`` where a measurement needs them).
        work_dir: a scratch folder this measurement may fill (outside the repo by default).
        quick: small sizes and one rep (development on a busy machine).
        reps: repetitions of each timed part; medians are reported.
        ours_only: skip the anchors (profiling runs).
        options: extra per-module options (``--opt key=value``).
    """

    run_dir: Path
    work_dir: Path
    quick: bool = False
    reps: int = 3
    ours_only: bool = False
    options: dict = field(default_factory=dict)

    def sub(self, name: str) -> Path:
        """``work_dir/name``, created."""
        p = self.work_dir / name
        p.mkdir(parents=True, exist_ok=True)
        return p


def log(msg: str) -> None:
    """Progress to stderr (stdout stays clean)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> tuple[Context, Path | None]:
    """The common command line of a measurement module."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/demo", help="a finished demo run (read only)")
    ap.add_argument("--work-dir", default=None, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--quick", action="store_true", help="small sizes, one rep")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    ap.add_argument("--ours-only", action="store_true", help="skip the anchors (for profiles)")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="module option")
    ap.add_argument("--json", default=None, help="write the result rows here")
    a = ap.parse_args(argv)
    work = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix="hashtag-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    opts = dict(o.split("=", 1) for o in a.opt)
    reps = a.reps if a.reps is not None else (1 if a.quick else 3)
    ctx = Context(
        Path(a.run_dir).resolve(), work.resolve(), quick=a.quick, reps=max(1, reps), ours_only=a.ours_only, options=opts
    )
    return ctx, (Path(a.json) if a.json else None)


def main(run: Callable[[Context], list[dict]], argv: list[str] | None = None) -> None:
    """Entry point of a measurement module: parse, run, print or write the rows."""
    ctx, out = parse_args(argv)
    os.chdir(REPO)  # relative paths in configs (data/raw) are relative to the repo
    rows = run(ctx)
    text = json.dumps(rows, indent=1, default=_jsonable)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)


def _jsonable(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


# --------------------------------------------------------------------------------------
# result rows
# --------------------------------------------------------------------------------------


def result(
    name: str,
    *,
    ours: float | None,
    anchor: float | None,
    unit: str,
    goal: str,
    met: bool | None,
    ratio: float | None = "auto",
    title: str = "",
    ours_is: str = "",
    anchor_is: str = "",
    details: dict | None = None,
) -> dict:
    """One row of ``results.json``: ``name, ours, anchor, unit, ratio, goal, met`` plus descriptions.

    ``ratio`` defaults to ``ours / anchor`` when both are given.
    """
    if ratio == "auto":
        ratio = (ours / anchor) if (ours is not None and anchor not in (None, 0)) else None
    return {
        "name": name,
        "ours": _round(ours),
        "anchor": _round(anchor),
        "unit": unit,
        "ratio": None if ratio is None else round(float(ratio), 4),
        "goal": goal,
        "met": None if met is None else bool(met),
        "title": title,
        "ours_is": ours_is,
        "anchor_is": anchor_is,
        "details": details or {},
    }


def _round(x):
    if x is None:
        return None
    x = float(x)
    return round(x, 4) if abs(x) < 100 else round(x, 1)


def median(xs: Iterable[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rates(counts: list[int], seconds: list[float]) -> list[float]:
    """Per-rep rates ``count / seconds``."""
    return [c / s for c, s in zip(counts, seconds) if s > 0]


class Timer:
    """``with Timer() as t: ...``; afterwards ``t.seconds`` (wall, perf_counter) and ``t.cpu``
    (CPU seconds of this process and of its children that ended and were waited for
    inside the block, e.g. DataLoader workers or a process pool).

    On a shared machine, wall time depends on what else runs; CPU seconds per item much
    less, so the measurements report both.
    """

    def __enter__(self) -> Timer:
        self.c0 = os.times()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        c1 = os.times()
        self.cpu_self = (c1.user + c1.system) - (self.c0.user + self.c0.system)
        self.cpu_children = (c1.children_user + c1.children_system) - (self.c0.children_user + self.c0.children_system)
        self.cpu = self.cpu_self + self.cpu_children


def time_min_duration(fn: Callable[[], object], min_seconds: float = 0.2, max_loops: int = 10_000) -> float:
    """Seconds per call of ``fn``, looping until at least ``min_seconds`` have passed (for fast calls)."""
    loops, t0 = 0, time.perf_counter()
    while True:
        fn()
        loops += 1
        el = time.perf_counter() - t0
        if el >= min_seconds or loops >= max_loops:
            return el / loops


# --------------------------------------------------------------------------------------
# the demo images
# --------------------------------------------------------------------------------------


def shard_list(run_dir: Path) -> list[Path]:
    """The run's canonical shards (from the ingest manifest)."""
    from pipeline.io.shards import shard_paths

    return [Path(p) for p in shard_paths(run_dir)]


def shard_sources(run_dir: Path) -> dict[str, str]:
    """Shard file name -> source name, from the ingest part files (``{}`` if unreadable)."""
    out = {}
    for p in sorted((rf.stage_dir(run_dir, rf.INGEST) / rf.PART_DIR).glob("*.json")):
        try:
            part = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if part.get("shard"):
            out[Path(part["shard"]).name] = part.get("source", "?")
    return out


def select_shards(ctx: Context, quick_per_source: int = 1, stride: int = 1) -> list[Path]:
    """All shards (every ``stride``-th), or with ``--quick`` the first ``quick_per_source``
    shard(s) of each source.

    ``--opt stride=K`` overrides ``stride``; ``--opt shards=N`` caps the count (first N).
    """
    shards = shard_list(ctx.run_dir)
    shards = shards[:: max(1, int(ctx.options.get("stride", stride)))] if not ctx.quick else shards
    if ctx.quick:
        src = shard_sources(ctx.run_dir)
        seen: dict[str, int] = {}
        pick = []
        for s in shards:
            k = src.get(s.name, s.name)
            if seen.get(k, 0) < quick_per_source:
                seen[k] = seen.get(k, 0) + 1
                pick.append(s)
        shards = pick
    if "shards" in ctx.options:
        shards = shards[: int(ctx.options["shards"])]
    return shards


def read_images(shards: list[Path]) -> list[tuple[str, str, bytes]]:
    """``(key, ext, image bytes)`` of every sample of ``shards``, in shard order."""
    from pipeline.io.shards import ShardReader

    out = []
    for p in shards:
        with ShardReader(p) as reader:
            for key in reader.keys:
                ext, off, size = reader.image_member(key)
                out.append((key, ext, reader.read_range(off, size)))
    return out


def write_image_files(ctx: Context, shards: list[Path]) -> Path:
    """The images of ``shards`` as files ``<root>/<shard stem>/<key>.<ext>`` (an ImageFolder
    layout: one class per shard); written once per work folder and selection. Returns the root."""
    import hashlib

    tag = json.dumps(sorted(p.name for p in shards))
    root = ctx.work_dir / "image_files" / hashlib.sha1(tag.encode()).hexdigest()[:10]
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == tag:
        return root
    if root.exists():
        shutil.rmtree(root)
    for p in shards:
        d = root / p.stem
        d.mkdir(parents=True, exist_ok=True)
        for key, ext, blob in read_images([p]):
            (d / f"{key}.{ext}").write_bytes(blob)
    marker.write_text(tag)
    return root


def prepared_run(ctx: Context) -> Path:
    """A run folder in the work folder that later stages can use without touching ``run_dir``.

    ``ingest`` is a link to ``<run_dir>/ingest`` (read only); ``vocab`` is a copy of
    ``<run_dir>/vocab`` when it is finished and its ``labels.npz`` matches its manifest,
    else the vocab stage is run here (``dedup/removed.jsonl`` copied when present).
    """
    from pipeline.io.manifest import file_sha256

    run = ctx.work_dir / "run"
    ok = run / ".prepared"
    if ok.exists():
        return run
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    src = ctx.run_dir.resolve()
    (run / rf.INGEST).symlink_to(rf.stage_dir(src, rf.INGEST), target_is_directory=True)
    man = rf.read_manifest(rf.stage_dir(src, rf.VOCAB))
    copied = False
    if man is not None:
        shutil.copytree(rf.stage_dir(src, rf.VOCAB), run / rf.VOCAB)
        want = (man.get("outputs") or {}).get("sha256", {}).get(rf.LABELS_FILE)
        copied = rf.path(run, rf.VOCAB, rf.MANIFEST).exists() and (
            want is None or file_sha256(rf.path(run, rf.VOCAB, rf.LABELS_FILE)) == want
        )
        if not copied:
            shutil.rmtree(run / rf.VOCAB)
    if not copied:
        log("no finished vocab stage to copy: running the vocab stage in the work folder")
        dd = rf.read_manifest(rf.stage_dir(src, rf.DEDUP))
        if dd is not None:
            (run / rf.DEDUP).mkdir()
            for n in (rf.REMOVED_FILE, rf.MANIFEST):
                shutil.copy2(rf.path(src, rf.DEDUP, n), rf.path(run, rf.DEDUP, n))
        from pipeline.vocab import run_vocab

        run_vocab(
            compose_cfg(
                f"run_dir={run}",
                "vocab.progress=false",
                "vocab.plot=false",
                f"vocab.require_dedup={'true' if dd is not None else 'false'}",
            )
        )
    ok.write_text("ok")
    return run


def run_child(cmd: list[str], env: dict | None = None) -> dict | None:
    """Run a benchmark's child process (a fresh interpreter: its own peak RSS) and return the JSON object on the last
    line of its stdout, or None (its stderr's tail printed) when it failed."""
    import subprocess
    import sys

    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)
        return None
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def per_sample_slopes(rows: list[dict], kinds: list[str], fields: dict[str, tuple[str, float]]) -> dict:
    """Least-squares slopes against ``samples`` for each kind of run with 2 or more sizes measured.

    Args:
        rows: the runs, each with ``kind``, ``samples`` and the fields' keys.
        fields: output name -> (row key, scale), e.g. ``{"us_per_sample": ("seconds", 1e6)}``.

    Returns:
        kind -> {output name: slope x scale, ``points``, ``largest``}.
    """
    import numpy as np

    fits = {}
    for kind in kinds:
        pts = [r for r in rows if r["kind"] == kind]
        if len(pts) < 2:
            continue
        x = np.array([r["samples"] for r in pts], dtype=np.float64)
        fit = {name: round(float(np.polyfit(x, [r[key] for r in pts], 1)[0]) * scale, 2) for name, (key, scale) in fields.items()}
        fits[kind] = {**fit, "points": len(pts), "largest": int(x.max())}
    return fits


def compose_cfg(*overrides: str):
    """``conf/config.yaml`` composed with Hydra's compose API (as the tests do)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.cli import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# --------------------------------------------------------------------------------------
# the machine
# --------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    """Cores, CPU model, memory, library versions: what the figures depend on."""
    import importlib.metadata as md

    def ver(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    flags = cpu_flags()
    return {
        "cores": available_cores(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": mem,
        "cpu_features": sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags),
        "cpu_capability": _torch_capability(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "versions": {
            p: ver(p)
            for p in (
                "torch",
                "torchvision",
                "pillow",
                "numpy",
                "webdataset",
                "faiss-cpu",
                "imagehash",
                "imagededup",
                "nltk",
                "py-spy",
            )
        },
        "load_average": load_average(),
    }


def _torch_capability() -> dict:
    """torch's view of the CPU: its kernel level and whether oneDNN runs bf16 natively."""
    import torch

    from pipeline.system import cpu_bf16_native

    return {"torch": torch.backends.cpu.get_cpu_capability(), "bf16_native": cpu_bf16_native()}


def peak_rss_reset() -> bool:
    """Reset this process's peak RSS (VmHWM) so :func:`peak_rss_mib` measures from now (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    v = _status_kib("VmRSS")
    return None if v is None else v / 1024


def peak_rss_mib() -> float | None:
    v = _status_kib("VmHWM")
    return None if v is None else v / 1024
