"""A prepared check of the CUDA paths, for the day a GPU is lent: one command, under 8 minutes.

``python -m benchmarks.gpu_check [--out DIR] [--dry-run] [--budget-s 420] [--only PART ...]``

On a lent machine (an NVIDIA H200 with 16 CPU cores was the one planned for), from a bare
checkout (the check itself needs no internet and no demo data; ``make install`` needs the
packages, from the machine's pip cache or PyPI)::

    make install && .venv/bin/python -m benchmarks.gpu_check

The checks are pytest tests, ``tests/gpu`` (marked ``gpu``, skipped without CUDA; the same
tests run on the CPU with ``GPU_CHECK_DEVICE=cpu``); this command runs them as
``python -m pytest tests/gpu -m gpu`` and writes ``gpu_check.json`` (every test's status,
seconds, time limit and the figures it recorded, rewritten after each figure by the tests,
so a run cut short keeps what it measured) and ``gpu_check.md`` (one table, also printed at
the end) into ``--out`` (default ``benchmarks/gpu_check/``). Exit status 0 when no test failed.

Parts (one test module each: :data:`PART_FILES`):

1. **facts** (``test_facts.py``): :func:`pipeline.system.pick_device`, :func:`~pipeline.system.detect_facts`,
   the policy's choice :func:`~pipeline.train.precision.resolve_precision` ``("auto", None, facts)``
   (bf16 + channels_last + TF32 expected on an H200), :func:`~pipeline.system.thread_plan`,
   :func:`~pipeline.system.available_cores`, torch / CUDA / cuDNN versions, GPU name,
   capability and memory; one :func:`~pipeline.train.precision_trial.make_step_trial` of the chosen setting.
2. **precision** (``test_precision.py``): a few training steps of ``resnext_mini`` in bf16
   autocast + channels_last, fp16 autocast with a ``GradScaler``, and fp32 (TF32); asserts finite
   losses, the autocast dtype of the logits, the channels_last layout, an enabled scaler with a finite scale.
3. **compile** (``test_compile.py``): ``torch.compile`` (inductor) of the ``resnext_mini``
   training step: the compile time (first step), img/s after, against eager, and the graph breaks.
4. **pinned_loader** (``test_loader.py``): the fixture corpus through ingest, dedup and vocab
   (in process), then one epoch of :class:`pipeline.train.loader.ShardStream` +
   :func:`pipeline.train.loader.make_loader` ``(pin_memory=True)``, each batch copied with
   ``non_blocking=True`` and normalized on the GPU; asserts every batch arrives pinned.
5. **fixture_pipeline** (``test_fixture_pipeline.py``): ``python -m pipeline.run`` over the
   fixture on ``device=cuda`` as a subprocess: each stage's seconds and the pretrain and
   transfer manifests' ``counts.hardware``.
6. **transfer_torchrun** (``test_transfer_torchrun.py``): the transfer stage of part 5's run folder under
   ``torchrun --nproc_per_node=1`` (the process group's path, micro-batches accumulated): fine-tuning img/s,
   the probe's feature seconds, ``world_size`` in results.json.
7. **throughput** (``test_throughput.py``): pretraining img/s of ``resnext101_32x8d`` and
   ``resnext101_32x4d`` at 224 px, batch 64 (halved on out-of-memory), bf16 + channels_last:
   a bare loop and :func:`pipeline.train.train_loop.train` (:mod:`benchmarks.gpu_loops`),
   against the anchors of :data:`ANCHORS` (NVIDIA DeepLearningExamples
   A100 AMP 32x4d 908 / 1211 img/s, timm RTX 3090 AMP channels_last 32x8d 313 img/s). Other GPUs,
   other software: a ratio says where we stand, not a goal.

How long: each test has a pytest-timeout limit (60-200 s); before each test the time left of
``--budget-s`` (default 420 s) is checked: a test whose part would not fit (:data:`NEED_S`) is
skipped, and a test's limit is cut to the time left less what the later parts need, so the
whole run ends within about the budget (a test past its limit fails as ``timeout``).
On the H200 the whole check is expected (not yet measured there) to take about 3-5 minutes,
most of it the inductor compile and the fixture pipeline.

``--dry-run`` runs the same tests on the CPU with everything shrunk
(:func:`benchmarks.gpu_parts.make_sizes`), so the one run on a GPU cannot fail for a trivial
reason (imports, argument names, paths, config keys); ``tests/test_gpu_check.py`` runs it:
36-100 s on 2 shared CPU cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pipeline.io.atomic import write_text
from pipeline.reporting.format import md_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "gpu_check"
JSON_NAME = "gpu_check.json"
MD_NAME = "gpu_check.md"
SCHEMA = 2
MD_COLUMNS = ("part", "test", "status", "seconds", "result", "vs anchor")
STATUSES = ("ok", "failed", "timeout", "skipped", "not run")  # a test's "status" in gpu_check.json
TESTS_DIR = "tests/gpu"

PART_NAMES = ("facts", "precision", "compile", "pinned_loader", "fixture_pipeline", "transfer_torchrun", "throughput")
PART_FILES = {  # the test module of each part, under tests/gpu
    "facts": "test_facts.py",
    "precision": "test_precision.py",
    "compile": "test_compile.py",
    "pinned_loader": "test_loader.py",
    "fixture_pipeline": "test_fixture_pipeline.py",
    "transfer_torchrun": "test_transfer_torchrun.py",
    "throughput": "test_throughput.py",
}
TITLES = {
    "facts": "facts and the precision policy",
    "precision": "bf16 / fp16+GradScaler / fp32 steps (resnext_mini)",
    "compile": "torch.compile train step vs eager",
    "pinned_loader": "ShardStream + make_loader(pin_memory=True), non_blocking copies",
    "fixture_pipeline": "python -m pipeline.run on the fixture",
    "transfer_torchrun": "torchrun --nproc_per_node=1 -m pipeline.transfer (fine-tune + probe) on the fixture",
    "throughput": "ResNeXt-101 pretraining img/s vs anchors",
}
# seconds a part needs to be worth starting: with less left of the runner's --budget-s it is skipped
NEED_S = {
    "facts": 10,
    "precision": 15,
    "compile": 60,
    "pinned_loader": 20,
    "fixture_pipeline": 60,
    "transfer_torchrun": 30,
    "throughput": 60,
}
DRY_TIMEOUT_S = 240  # the pytest-timeout limit of every part in the CPU dry run (the GPU limits are on the tests)

ANCHORS = [
    {
        "id": "nvidia_dle_a100_40gb",
        "label": "NVIDIA DLE, A100 40GB",
        "model": "resnext101_32x4d",
        "images_per_second": 908.40,
        "device": "1x A100 40GB (DGX A100)",
        "precision": "AMP fp16, NHWC",
        "batch": 128,
        "image_size": 224,
        "source": "NVIDIA DeepLearningExamples PyTorch/Classification/ConvNets/resnext101-32x4d/README.md, "
        "'Training performance: NVIDIA DGX A100 (8x A100 40GB)', 1 GPU, mixed precision "
        "(pytorch-20.06 NGC container, DALI)",
    },
    {
        "id": "nvidia_dle_a100_80gb",
        "label": "NVIDIA DLE, A100 80GB",
        "model": "resnext101_32x4d",
        "images_per_second": 1211.0,
        "device": "1x A100 80GB (DGX A100)",
        "precision": "AMP fp16, NHWC",
        "batch": 128,
        "image_size": 224,
        "source": "NVIDIA DeepLearningExamples PyTorch/Classification/ConvNets/resnext101-32x4d/README.md (later "
        "revision), 'Training performance: NVIDIA DGX A100 (8x A100 80GB)', 1 GPU, mixed precision "
        "(pytorch-21.03 NGC container)",
    },
    {
        "id": "timm_rtx3090_32x8d",
        "label": "timm, RTX 3090",
        "model": "resnext101_32x8d",
        "images_per_second": 312.8,
        "device": "1x RTX 3090",
        "precision": "AMP, channels_last",
        "batch": 128,
        "image_size": 224,
        "source": "timm (huggingface/pytorch-image-models) results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv",
    },
    {
        "id": "timm_rtx3090_32x4d",
        "label": "timm, RTX 3090",
        "model": "resnext101_32x4d",
        "images_per_second": 609.01,
        "device": "1x RTX 3090",
        "precision": "AMP, channels_last",
        "batch": 128,
        "image_size": 224,
        "source": "timm (huggingface/pytorch-image-models) results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv",
    },
]


def _log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--out", default=str(DEFAULT_OUT), help="folder for gpu_check.json and gpu_check.md (default benchmarks/gpu_check/)"
    )
    ap.add_argument("--dry-run", action="store_true", help="the same tests on the CPU, shrunk to about a minute")
    ap.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of all tests (default 420 s)")
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="PART",
        help=f"run only these parts (names or numbers: {', '.join(PART_NAMES)})",
    )
    ap.add_argument("--batch", type=int, default=None, help="throughput batch size (default 64; 4 in a dry run)")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; aot_eager in a dry run)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder (run folders, logs, pytest's temp)")
    return ap.parse_args(argv)


def selected_parts(only: list[str] | None) -> list[str]:
    """Part names from ``--only`` (names or 1-based numbers), in part order; all without it.

    Raises:
        SystemExit: an unknown part.
    """
    if not only:
        return list(PART_NAMES)
    out = set()
    for o in only:
        if o.isdigit() and 1 <= int(o) <= len(PART_NAMES):
            out.add(PART_NAMES[int(o) - 1])
        elif o in PART_NAMES:
            out.add(o)
        else:
            raise SystemExit(f"error: unknown part {o!r}; parts are {', '.join(PART_NAMES)} (or 1-{len(PART_NAMES)})")
    return [p for p in PART_NAMES if p in out]


def run_pytest(parts: list[str], env: dict, work: Path, timeout_s: float) -> tuple[int | None, str]:
    """``python -m pytest`` over the parts' test modules, its output echoed to stderr as it comes.

    Returns (its exit status, or None when it ran past ``timeout_s`` and its process group was
    killed; the last 4,000 characters of its output).
    """
    cmd = [sys.executable, "-m", "pytest", *(f"{TESTS_DIR}/{PART_FILES[p]}" for p in parts), "-m", "gpu", "-v", "-rfEs"]
    cmd += ["-p", "no:cacheprovider", f"--basetemp={work / 'pytest'}"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    killed = threading.Event()

    def _kill() -> None:
        killed.set()
        os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout_s, _kill)
    timer.start()
    tail = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            tail = (tail + line)[-4000:]
        rc = proc.wait()
    finally:
        timer.cancel()
    return (None if killed.is_set() else rc), tail


def _status(tests: list[dict]) -> str:
    """A part's status from its tests': the worst of them."""
    got = {t["status"] for t in tests}
    for s in ("failed", "timeout", "not run", "ok"):
        if s in got:
            return s
    return "skipped"


def build_doc(figures: dict, parts: list[str], meta: dict) -> dict:
    """``gpu_check.json``: ``meta`` (command, times, pytest's exit), the session's device and sizes,
    every test of ``figures`` (the tests' recorder file) and a status per part."""
    session = figures.get("session") or {}
    tests = figures.get("tests") or {}
    for t in tests.values():
        if t["status"] == "pending":  # started, never finished (pytest killed or crashed)
            t["status"] = "not run"
    doc = {
        "schema": SCHEMA,
        "tool": "benchmarks.gpu_check",
        **meta,
        "device": session.get("device"),
        "torch": session.get("torch"),
        "torch_cuda": session.get("torch_cuda"),
        "sizes": session.get("sizes"),
        "parts": {},
        "tests": tests,
        "anchors": ANCHORS,
    }
    for i, name in enumerate(PART_NAMES):
        mine = [k for k, t in tests.items() if t.get("part") == name]
        p = {"part": i + 1, "title": TITLES[name], "tests": mine, "seconds": round(sum(tests[k]["seconds"] for k in mine), 2)}
        if mine:
            p["status"] = _status([tests[k] for k in mine])
        elif name not in parts:
            p.update(status="skipped", reason="not selected (--only)")
        else:
            p.update(status="not run", reason="no result from pytest (see pytest_tail)")
        doc["parts"][name] = p
    return doc


def _fmt_s(v) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "-"


def render_md(doc: dict) -> str:
    """``gpu_check.md``: a header line with the machine, then a row per test (a row per part that ran none)."""
    tests = doc["tests"]
    facts = next((t["figures"] for t in tests.values() if t.get("part") == "facts"), {})
    describe = (facts.get("describe") or {}).get("value", "")
    head = [
        f"# GPU check{' (dry run, CPU)' if doc['dry_run'] else ''}",
        "",
        f"{doc.get('started_at', '')}; device {doc.get('device')}; {describe}; torch {doc.get('torch')} "
        f"(CUDA {doc.get('torch_cuda')}); budget {doc['budget_s']:.0f} s, elapsed {doc.get('elapsed_s', 0):.0f} s; "
        f"{'complete' if doc.get('complete') else 'incomplete'}. Command: `{doc.get('command')}`",
        "",
    ]
    if doc.get("no_cuda"):
        head += [f"No CUDA device: {doc['no_cuda']}.", ""]
    rows = []
    for name, p in doc["parts"].items():
        label = f"{p['part']} {name}"
        if not p["tests"]:
            rows.append((label, "-", p["status"], "-", p.get("reason", ""), ""))
        for key in p["tests"]:
            t = tests[key]
            fig = {k: v["value"] for k, v in t["figures"].items()}
            result = fig.get("summary") or t.get("error") or t.get("reason") or ""
            if t.get("error") and fig.get("summary"):
                result = f"{fig['summary']} -- {t['error']}"
            rows.append((label, t["name"], t["status"], _fmt_s(t.get("seconds")), result, fig.get("vs_anchor", "")))
    notes = ["", "Parts: " + "; ".join(f"{p['part']} {n}: {p['title']}" for n, p in doc["parts"].items()) + "."]
    notes.append(
        "Anchors: "
        + "; ".join(
            f"{a['model']} {a['images_per_second']:g} img/s on {a['device']} ({a['precision']}, batch {a['batch']}): "
            f"{a['source']}"
            for a in ANCHORS
        )
    )
    return "\n".join(head + md_table(list(MD_COLUMNS), rows, align="lllrll") + notes) + "\n"


def write_outputs(doc: dict, out: Path) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` into ``out`` (atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / JSON_NAME, json.dumps(doc, indent=1, default=str) + "\n")
    write_text(out / MD_NAME, render_md(doc))


def _rel(text: str, work: Path, out: Path) -> str:
    """A command or message without this machine's paths (the scratch folder, --out, the repo)."""
    text = str(text).replace(str(work), "<work>").replace(str(out), "<out>")
    return text.replace(str(REPO) + os.sep, "").replace(str(REPO), ".")


def _no_cuda_hint() -> str | None:
    """Why a GPU run found no CUDA device (torch's CUDA build, nvidia-smi), or None when it has one."""
    import torch  # slow import: only for a run on the GPU

    if torch.cuda.is_available():
        return None
    hint = f"torch.cuda.is_available() is False; torch {torch.__version__} is built for CUDA {torch.version.cuda}"
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        hint += f"; nvidia-smi: {(smi.stdout or smi.stderr).strip()[:300]}"
    except (OSError, subprocess.SubprocessError) as exc:
        hint += f"; nvidia-smi: {type(exc).__name__}"
    return hint


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    argv = sys.argv[1:] if argv is None else argv
    t_start, started = time.time(), dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = Path(args.out)
    parts = selected_parts(args.only)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    figures_file = work / "figures.json"
    env = {
        **os.environ,
        "GPU_CHECK_DEVICE": "cpu" if args.dry_run else "cuda",
        "GPU_CHECK_FIGURES": str(figures_file),
        "GPU_CHECK_BUDGET_S": str(args.budget_s),
        "GPU_CHECK_T0": str(t_start),
        "PIPELINE_CACHE_DIR": os.environ.get("PIPELINE_CACHE_DIR") or str(work / "cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    for key, value in (("GPU_CHECK_BATCH", args.batch), ("GPU_CHECK_COMPILE_BACKEND", args.compile_backend)):
        if value is not None:
            env[key] = str(value)
    hint = None if args.dry_run else _no_cuda_hint()
    if hint:
        _log(f"no CUDA device: {hint}; the tests will fail (--dry-run runs them on the CPU)")
    # the tests fit their limits into the budget (tests/gpu/conftest.py); this stops a hung session
    rc, tail = run_pytest(parts, env, work, args.budget_s + max(NEED_S.values()) + 120)
    figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
    meta = {
        "command": _rel("python -m benchmarks.gpu_check" + "".join(f" {a}" for a in argv), work, out),
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "started_at": started,
        "finished_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "elapsed_s": round(time.time() - t_start, 1),
        "complete": rc in (0, 1),  # 0: all passed or skipped, 1: some failed; else pytest broke or was killed
        "pytest_returncode": rc,
        "no_cuda": hint,
    }
    doc = build_doc(figures, parts, meta)
    if rc not in (0, 1):
        doc["pytest_tail"] = _rel(tail, work, out)
    write_outputs(doc, out)
    if args.keep_work:
        _log(f"scratch folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(render_md(doc), end="")
    return 0 if rc == 0 and not hint else 1


if __name__ == "__main__":
    sys.exit(main())
