"""benchmarks.gpu_check: the dry run (every test of tests/gpu, on the CPU, shrunk) and its helpers.

The dry run is what makes the one run on a lent GPU safe from trivial failures (imports,
argument names, paths, config keys): ``python -m benchmarks.gpu_check --dry-run`` runs the
same tests (``tests/gpu``) with ``GPU_CHECK_DEVICE=cpu``. It takes 36-100 s on 2 shared CPU
cores (36 s idle, ~100 s with other jobs on them), most of it the fixture pipeline subprocess
and the compile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

if str(REPO) not in sys.path:  # benchmarks/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO))
from benchmarks import gpu_check, gpu_parts  # noqa: E402

TEST_KEYS = {"part", "name", "status", "seconds", "limit_s", "figures"}


def _figures(test: dict) -> dict:
    return {k: v["value"] for k, v in test["figures"].items()}


@pytest.mark.slow
def test_dry_run_runs_every_test_and_writes_both_files(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-6000:]
    doc = json.loads((out / gpu_check.JSON_NAME).read_text())
    assert {
        "schema",
        "tool",
        "command",
        "dry_run",
        "budget_s",
        "started_at",
        "finished_at",
        "elapsed_s",
        "complete",
        "pytest_returncode",
        "device",
        "torch",
        "sizes",
        "parts",
        "tests",
        "anchors",
    } <= set(doc)
    assert doc["dry_run"] is True and doc["complete"] is True and doc["device"] == "cpu" and doc["pytest_returncode"] == 0
    assert list(doc["parts"]) == list(gpu_check.PART_NAMES)
    for name, p in doc["parts"].items():
        assert p["status"] == "ok" and p["tests"], (name, p)
    tests = doc["tests"]
    assert len(tests) == 10  # facts, precision x3, compile, loader, fixture pipeline, transfer torchrun, throughput x2
    for key, t in tests.items():
        assert TEST_KEYS <= set(t), key
        assert t["status"] == "ok", (key, t.get("error"), t.get("traceback"))
        assert t["seconds"] > 0 and _figures(t)["summary"], key
        assert 0 < t["limit_s"] <= gpu_check.DRY_TIMEOUT_S, key  # pytest-timeout's limit: the dry run's, cut to the budget
        assert all(_figures(t)["checks"].values()), (key, _figures(t)["checks"])
    assert next(iter(tests.values()))["limit_s"] == gpu_check.DRY_TIMEOUT_S
    by_part: dict = {}
    for t in tests.values():
        by_part.setdefault(t["part"], []).append(_figures(t))
    assert by_part["facts"][0]["precision_choice"]["precision"] in ("fp32", "bf16")
    prec = {f["choice"]["precision"]: f for f in by_part["precision"]}
    assert set(prec) == {"bf16", "fp16", "fp32"} and prec["fp16"]["grad_scaler"] is True
    assert by_part["compile"][0]["compiled_images_per_second"] > 0
    loader = by_part["pinned_loader"][0]
    assert loader["batches"] == loader["planned_batches"] > 0
    fp = by_part["fixture_pipeline"][0]
    assert fp["stages"] == dict.fromkeys(("ingest", "dedup", "vocab", "pretrain", "transfer"), "ran")
    assert fp["vocab_kind"] == "raw" and fp["wordnet_dir_exists"] is False
    assert set(fp["stage_seconds"]) >= {"ingest", "dedup", "vocab", "pretrain", "transfer"}
    assert fp["pretrain"]["hardware"]["precision_choice"]["device"] == "cpu"
    assert fp["transfer"]["hardware"]["precision_choice"]["device"] == "cpu"
    assert "<work>" in fp["command"] and str(tmp_path) not in fp["command"]
    tt = by_part["transfer_torchrun"][0]  # the transfer stage under torchrun, one rank
    assert tt["returncode"] == 0 and tt["world_size"] == 1 and tt["finetune_images_per_second"] > 0, tt
    tp = by_part["throughput"]
    assert len(tp) == 2 and {f["measured_model"] for f in tp} == {"resnext_mini"}
    for f in tp:
        assert f["bare_images_per_second"] > 0 and f["pipeline_images_per_second"] > 0
        assert f["bare"]["batch"] == 4 and f["bare"]["oom_batches"] == []
        assert f["vs_anchor"] == "n/a (dry run)"
    assert {a["id"] for a in doc["anchors"]} >= {"nvidia_dle_a100_40gb", "timm_rtx3090_32x8d"}
    assert str(tmp_path) not in (out / gpu_check.JSON_NAME).read_text()

    md = (out / gpu_check.MD_NAME).read_text()
    header = "| " + " | ".join(gpu_check.MD_COLUMNS) + " |"
    assert header in md and header in proc.stdout  # the table is printed at the end too
    rows = [line for line in md.splitlines() if line.startswith("| ") and line != header and "---" not in line]
    assert len(rows) == len(tests)  # a row per test
    assert all(" ok " in line for line in rows)
    assert "test_precision_steps[fp16]" in md and "| 7 throughput |" in md
    print(f"dry run: {wall:.1f} s")


@pytest.mark.slow
def test_budget_skips_tests_that_would_not_fit(tmp_path):
    rc = gpu_check.main(["--dry-run", "--budget-s", "0", "--only", "facts", "2", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())
    assert rc == 0 and doc["complete"]
    assert {t["part"] for t in doc["tests"].values()} == {"facts", "precision"}
    assert {t["status"] for t in doc["tests"].values()} == {"skipped"}
    assert all("would not fit" in t["reason"] for t in doc["tests"].values())
    assert doc["parts"]["compile"] == {**doc["parts"]["compile"], "status": "skipped", "reason": "not selected (--only)"}
    md = (tmp_path / gpu_check.MD_NAME).read_text()
    assert "| 1 facts | test_facts_and_policy | skipped |" in md
    assert "| 3 compile | - | skipped |" in md


@pytest.mark.slow
def test_a_check_past_its_time_limit_is_stopped_and_recorded_as_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_TIMEOUT_S", "2")  # pytest-timeout stops the fixture pipeline's subprocess wait
    t0 = time.monotonic()
    rc = gpu_check.main(["--dry-run", "--only", "fixture_pipeline", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())
    (test,) = doc["tests"].values()
    assert rc == 1 and doc["complete"] and doc["parts"]["fixture_pipeline"]["status"] == "timeout"
    assert test["status"] == "timeout" and test["limit_s"] == 2 and "Timeout" in test["error"], test
    assert test["figures"]["wall_seconds"]["value"] < 10  # the subprocess was killed, not waited for
    assert time.monotonic() - t0 < 120
    assert "| 5 fixture_pipeline | test_pipeline_run_on_fixture | timeout |" in (tmp_path / gpu_check.MD_NAME).read_text()


def test_every_gpu_test_module_is_marked_and_has_a_time_limit():
    for part, fname in gpu_check.PART_FILES.items():
        text = (REPO / "tests" / "gpu" / fname).read_text()
        assert "pytest.mark.gpu" in text and "pytest.mark.timeout(" in text, part
    assert gpu_check.selected_parts(["7", "facts"]) == ["facts", "throughput"]
    with pytest.raises(SystemExit):
        gpu_check.selected_parts(["nope"])


def test_oom_retry_halves_the_batch():
    calls = []

    def fn(batch):
        calls.append(batch)
        if batch > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return {"images_per_second": 1.0}

    assert gpu_parts.with_oom_retry(fn, 64, 8) == {"images_per_second": 1.0, "batch": 16, "oom_batches": [64, 32]}
    assert calls == [64, 32, 16]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        gpu_parts.with_oom_retry(fn, 64, 48)


def test_overrides_merge():
    assert gpu_parts.merge_overrides(["a=1", "b=2", "a=3"]) == ["a=3", "b=2"]
