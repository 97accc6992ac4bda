"""Shared fixtures of the GPU check: the device, the sizes, the policy's choice, a figure recorder.

Every test here is marked ``gpu`` and skipped when ``torch.cuda.is_available()`` is False,
unless ``GPU_CHECK_DEVICE=cpu``: then the same tests run on the CPU at the dry-run sizes of
:func:`benchmarks.gpu_parts.make_sizes` (``tests/test_gpu_check.py`` runs them that way).
``python -m benchmarks.gpu_check`` runs this folder and writes the report. Environment:

- ``GPU_CHECK_DEVICE``: ``cpu`` (the dry run) or ``cuda`` (no skipping: a broken CUDA fails).
- ``GPU_CHECK_FIGURES``: a JSON file that every recorded figure and each test's outcome go
  to, rewritten after each (a run cut short keeps what it measured).
- ``GPU_CHECK_BUDGET_S`` (with ``GPU_CHECK_T0``, the runner's start, epoch seconds): a test
  whose part needs more seconds than are left (:data:`benchmarks.gpu_check.NEED_S`) is skipped,
  and a test's time limit is cut to what is left, less what the later parts need.
- ``GPU_CHECK_BATCH``, ``GPU_CHECK_COMPILE_BACKEND``: the throughput batch and compile backend.
- ``GPU_CHECK_TIMEOUT_S``: every check's time limit in place of its own (a test of the limits).

Time limits are pytest-timeout's ``@pytest.mark.timeout(N)`` on each module (the GPU
limits); in the dry run every limit is raised to :data:`benchmarks.gpu_check.DRY_TIMEOUT_S`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO))

from benchmarks.gpu_check import DRY_TIMEOUT_S, NEED_S, PART_FILES, PART_NAMES  # noqa: E402
from benchmarks.gpu_parts import Sizes, free, make_sizes  # noqa: E402
from pipeline.io.atomic import write_text  # noqa: E402
from pipeline.system import HardwareFacts, detect_facts, pick_device  # noqa: E402
from pipeline.train.precision import PrecisionChoice, resolve_precision  # noqa: E402

HERE = Path(__file__).resolve().parent
PART_OF_FILE = {f: p for p, f in PART_FILES.items()}


def check_device() -> str | None:
    """The device the checks run on: ``GPU_CHECK_DEVICE``, else ``cuda`` when available, else None (skip)."""
    forced = os.environ.get("GPU_CHECK_DEVICE")
    if forced:
        return forced
    return "cuda" if torch.cuda.is_available() else None


class FigureRecorder:
    """Figures and outcomes per test node id, mirrored into the JSON file ``path`` (None: kept in memory only).

    The file: ``{"schema": 1, "session": {...}, "tests": {nodeid: {"part", "name", "status",
    "seconds", "limit_s", "figures": {name: {"value", "unit"}}, "error", "reason", "traceback"}}}``;
    this machine's paths are written as ``<work>`` (pytest's base temp folder) and ``.`` (the repo).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.work: Path | None = None
        self.doc: dict = {"schema": 1, "session": {}, "tests": {}}

    def entry(self, item_or_report) -> dict:
        nodeid = item_or_report.nodeid
        if nodeid not in self.doc["tests"]:
            fname = Path(str(item_or_report.location[0])).name
            self.doc["tests"][nodeid] = {
                "part": PART_OF_FILE.get(fname),
                "name": nodeid.split("::", 1)[-1],
                "status": "pending",
                "seconds": 0.0,
                "limit_s": None,
                "figures": {},
            }
        return self.doc["tests"][nodeid]

    def figure(self, item, name: str, value, unit: str = "") -> None:
        self.entry(item)["figures"][name] = {"value": value, "unit": unit}
        self.flush()

    def flush(self) -> None:
        if self.path is None:
            return
        text = json.dumps(self.doc, indent=1, default=str)
        if self.work is not None:
            text = text.replace(str(self.work), "<work>")
        text = text.replace(str(REPO) + os.sep, "").replace(str(REPO), ".")
        write_text(self.path, text + "\n")


RECORDER = FigureRecorder(Path(os.environ["GPU_CHECK_FIGURES"]) if os.environ.get("GPU_CHECK_FIGURES") else None)


def _in_here(item) -> bool:
    return HERE in Path(item.path).parents


def pytest_collection_modifyitems(config, items):
    """The checks in part order (cheap and telling first); skipped without CUDA; dry-run time limits."""
    mine = [i for i, it in enumerate(items) if _in_here(it)]
    ordered = sorted((items[i] for i in mine), key=lambda it: PART_NAMES.index(PART_OF_FILE.get(Path(it.path).name, "facts")))
    for i, it in zip(mine, ordered):
        items[i] = it
    dev = check_device()
    forced = os.environ.get("GPU_CHECK_TIMEOUT_S")
    for it in ordered:
        if it.get_closest_marker("gpu") is None:
            continue
        mark = it.get_closest_marker("timeout")
        if dev is None:
            it.add_marker(pytest.mark.skip(reason="no CUDA device (GPU_CHECK_DEVICE=cpu runs the checks on the CPU)"))
        elif forced:
            it.add_marker(pytest.mark.timeout(float(forced)), append=False)
        elif dev == "cpu":
            it.add_marker(pytest.mark.timeout(max(mark.args[0] if mark and mark.args else 0, DRY_TIMEOUT_S)), append=False)


def _need_s(part: str) -> int:
    return 1 if check_device() == "cpu" else NEED_S[part]


def _budget_left_s() -> tuple[float, float] | None:
    """(the runner's budget, seconds left of it), or None without a budget."""
    budget = os.environ.get("GPU_CHECK_BUDGET_S")
    if not budget:
        return None
    return float(budget), float(budget) - (time.time() - float(os.environ.get("GPU_CHECK_T0") or time.time()))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """With a budget, a check's time limit is cut to what is left of it less what the later parts need
    (at least the part's own need); pytest-timeout, called after this, reads the new limit."""
    budget = _budget_left_s()
    part = PART_OF_FILE.get(Path(item.path).name)
    mark = item.get_closest_marker("timeout")
    if budget and part and mark and mark.args and _in_here(item):
        later = item.session.items[item.session.items.index(item) + 1 :]
        later_parts = {PART_OF_FILE.get(Path(it.path).name) for it in later if _in_here(it)} - {part, None}
        reserve = sum(_need_s(p) for p in later_parts if p)
        limit = min(mark.args[0], max(_need_s(part), budget[1] - reserve))
        item.add_marker(pytest.mark.timeout(round(limit, 1)), append=False)
    return (yield)


def pytest_runtest_setup(item):
    """Skip a check that would not fit in what is left of the runner's budget."""
    entry = RECORDER.entry(item)
    mark = item.get_closest_marker("timeout")
    entry["limit_s"] = mark.args[0] if mark and mark.args else None
    budget = _budget_left_s()
    if budget is None or entry["part"] is None:
        return
    need = _need_s(entry["part"])
    if budget[1] < need:
        pytest.skip(f"would not fit: needs ~{need} s, {max(0.0, budget[1]):.0f} s of the {budget[0]:.0f} s budget left")


def pytest_runtest_logreport(report):
    """Each test's status (ok, failed, timeout, skipped), seconds and error into the recorder."""
    entry = RECORDER.entry(report)
    entry["seconds"] = round(entry["seconds"] + report.duration, 2)
    if report.skipped:
        entry["status"] = "skipped"
        longrepr = report.longrepr
        entry["reason"] = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")
    elif report.failed:
        text = report.longreprtext
        entry["status"] = "timeout" if "Timeout" in text and "pytest-timeout" in text else "failed"
        errors = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
        entry["error"] = (f"({report.when}) " + " ".join(errors[:6]))[:2000]
        entry["traceback"] = text[-6000:]
    elif report.when == "call":
        entry["status"] = "ok"
    RECORDER.flush()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def gpu_sizes() -> Sizes:
    """The sizes of this run: the GPU's, or the dry run's on the CPU."""
    batch = os.environ.get("GPU_CHECK_BATCH")
    return make_sizes(check_device() == "cpu", os.environ.get("GPU_CHECK_COMPILE_BACKEND") or None, int(batch) if batch else None)


@pytest.fixture(scope="session")
def device(gpu_sizes, tmp_path_factory) -> torch.device:
    """The checked device (:func:`pipeline.system.pick_device`); the session's facts go to the recorder."""
    RECORDER.work = tmp_path_factory.getbasetemp()
    dev = pick_device(gpu_sizes.device)
    RECORDER.doc["session"].update(
        device=str(dev),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        sizes=asdict(gpu_sizes),
    )
    RECORDER.flush()
    return dev


@pytest.fixture(scope="session")
def hw_facts(device) -> HardwareFacts:
    return detect_facts(device)


@pytest.fixture(scope="session")
def auto_choice(hw_facts) -> PrecisionChoice:
    """The policy's choice for ``precision=auto`` on this device (bf16 + channels_last + TF32 on an H100/H200)."""
    return resolve_precision("auto", None, hw_facts)


@pytest.fixture(scope="session")
def gpu_work(tmp_path_factory) -> Path:
    """A scratch folder for the session (run folders, logs); written as ``<work>`` in the figures."""
    return tmp_path_factory.mktemp("gpu_check")


@pytest.fixture(autouse=True)
def _numerics(device, auto_choice):
    """Each check starts from the policy's global numerics (TF32 flags) and ends with the device's memory freed."""
    auto_choice.apply_global()
    yield
    free(device)


@pytest.fixture
def record_figure(request):
    """``record_figure(name, value, unit="")``: a figure this test measured (a number with its unit,
    or a JSON-able value with unit ``""``), kept under the test's node id."""

    def record(name: str, value, unit: str = "") -> None:
        RECORDER.figure(request.node, name, value, unit)

    return record


@pytest.fixture
def assert_checks(record_figure):
    """``assert_checks({"what": bool, ...})``: records the checks, then fails naming the False ones."""

    def check(checks: dict) -> None:
        record_figure("checks", {k: bool(v) for k, v in checks.items()})
        bad = [k for k, v in checks.items() if not v]
        assert not bad, "checks failed: " + "; ".join(bad)

    return check
