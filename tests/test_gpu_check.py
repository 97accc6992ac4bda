"""benchmarks.gpu_check: the dry run (every part, on the CPU, shrunk) and its helpers.

The dry run is what makes the one run on a lent GPU safe from trivial failures (imports,
argument names, paths, config keys): it runs the same code with ``device=cpu``. It takes
36-100 s on 2 shared CPU cores (36 s idle, ~100 s with other jobs on them), most of it the
fixture pipeline subprocess and the compile.
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
from benchmarks import gpu_check  # noqa: E402


def test_dry_run_runs_every_part_and_writes_both_files(tmp_path):
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
        "device",
        "torch",
        "sizes",
        "parts",
        "anchors",
    } <= set(doc)
    assert doc["dry_run"] is True and doc["complete"] is True and doc["device"] == "cpu"
    assert list(doc["parts"]) == list(gpu_check.PART_NAMES)
    for name, p in doc["parts"].items():
        assert p["status"] == "ok", (name, p.get("error"), p.get("traceback"))
        assert {"part", "title", "status", "seconds", "limit_s", "result", "error"} <= set(p)
        assert p["seconds"] > 0 and p["result"]["summary"]
        assert all(p["result"]["checks"].values()), (name, p["result"]["checks"])
    parts = {n: p["result"] for n, p in doc["parts"].items()}
    assert parts["facts"]["precision_choice"]["precision"] in ("fp32", "bf16")
    assert set(parts["precision"]["variants"]) == {"bf16", "fp16", "fp32"}
    assert parts["precision"]["variants"]["fp16"]["grad_scaler"] is True
    assert parts["compile"]["compiled_images_per_second"] > 0
    assert parts["pinned_loader"]["batches"] == parts["pinned_loader"]["planned_batches"] > 0
    fp = parts["fixture_pipeline"]
    assert fp["stages"] == dict.fromkeys(("ingest", "dedup", "vocab", "pretrain", "transfer"), "ran")
    assert fp["vocab_kind"] == "raw" and fp["wordnet_dir_exists"] is False
    assert set(fp["stage_seconds"]) >= {"ingest", "dedup", "vocab", "pretrain", "transfer"}
    assert fp["pretrain"]["hardware"]["precision_choice"]["device"] == "cpu"
    assert fp["transfer"]["hardware"]["precision_choice"]["device"] == "cpu"
    tp = parts["throughput"]
    assert set(tp["models"]) == {"resnext101_32x8d", "resnext101_32x4d"}
    for m in tp["models"].values():
        assert m["bare"]["images_per_second"] > 0 and m["pipeline"]["images_per_second"] > 0
        assert m["bare"]["batch"] == 4 and m["bare"]["oom_batches"] == []
    assert {a["id"] for a in doc["anchors"]} >= {"nvidia_dle_a100_40gb", "timm_rtx3090_32x8d"}
    assert "<work>" in fp["command"] and str(tmp_path) not in fp["command"]

    md = (out / gpu_check.MD_NAME).read_text()
    header = "| " + " | ".join(gpu_check.MD_COLUMNS) + " |"
    assert header in md and header in proc.stdout  # the table is printed at the end too
    rows = [line for line in md.splitlines() if line.startswith("| ") and line != header]
    assert len(rows) == len(gpu_check.PART_NAMES) + 4  # a row per part, a row per throughput measurement
    assert all(line.count("|") == len(gpu_check.MD_COLUMNS) + 1 for line in rows)
    assert all(" ok " in line for line in rows)
    print(f"dry run: {wall:.1f} s")


def test_budget_skips_parts_that_would_not_fit(tmp_path):
    rc = gpu_check.main(["--dry-run", "--budget-s", "0", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())
    assert rc == 0 and doc["complete"]
    assert {p["status"] for p in doc["parts"].values()} == {"skipped"}
    assert all("would not fit" in p["reason"] for p in doc["parts"].values())
    assert "| 1 facts | facts and the precision policy | skipped |" in (tmp_path / gpu_check.MD_NAME).read_text()


def test_oom_retry_halves_the_batch():
    calls = []

    def fn(batch):
        calls.append(batch)
        if batch > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return {"images_per_second": 1.0}

    assert gpu_check.with_oom_retry(fn, 64, 8) == {"images_per_second": 1.0, "batch": 16, "oom_batches": [64, 32]}
    with pytest.raises(torch.cuda.OutOfMemoryError):
        gpu_check.with_oom_retry(fn, 64, 48)


def test_deadline_stops_a_part_and_overrides_merge():
    with pytest.raises(gpu_check.PartTimeout):
        with gpu_check._deadline(0.2):
            time.sleep(5)
    assert gpu_check.merge_overrides(["a=1", "b=2", "a=3"]) == ["a=3", "b=2"]
