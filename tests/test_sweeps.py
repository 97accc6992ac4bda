"""Hydra multirun sweeps of the main job: shared upstream stages, one run folder per job, the summary table.

Both tests run ``python -m pipeline.run -m experiment=smoke`` for real in a subprocess, over the
committed fixture corpus (conf/experiment/smoke.yaml: tiny pretraining and transfer).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from pipeline.summarize import write_summary


def _sweep(sweep_dir, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        and not k.startswith(("SLURM_", "SUBMITIT_"))
    }
    cmd = [sys.executable, "-m", "pipeline.run", "-m", "experiment=smoke", f"hydra.sweep.dir={sweep_dir}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _jobs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "shared")


def _count_in_logs(jobs, text: str) -> int:
    return sum((j / "run.log").read_text().count(text) for j in jobs if (j / "run.log").exists())


def test_smoke_sweep_shares_upstream_stages_and_summarizes(tmp_path):
    sweep = tmp_path / "sweep"
    # 2 losses x 2 models = 4 jobs; the unknown model makes the pretrain stage of 2 jobs raise
    proc = _sweep(sweep, "pretrain.model=resnext_mini,no_such_model")
    assert proc.returncode != 0, "Hydra must report the failed jobs"
    assert "no_such_model" in proc.stderr
    jobs = _jobs(sweep)
    assert [j.name for j in jobs] == sorted(
        f"pretrain.loss={loss},pretrain.model={m}" for loss in ("softmax", "sigmoid") for m in ("resnext_mini", "no_such_model")
    )

    # ingest and dedup ran once, in shared/, and every job links to them
    shared = sweep / "shared"
    for s in ("ingest", "dedup"):
        assert (shared / s / "manifest.json").exists()
        for j in jobs:
            assert (j / s).is_symlink() and (j / s).resolve() == (shared / s).resolve()
    assert _count_in_logs(jobs, "stage ingest: running") == 1
    assert _count_in_logs(jobs, "stage ingest: up to date") == 3
    assert _count_in_logs(jobs, "stage dedup: running") == 1
    assert set(json.loads((shared / "run" / "energy.json").read_text())) == {"ingest", "dedup"}

    # each job: its own vocab; the good ones pretrained and transferred, the bad ones recorded their error
    for j in jobs:
        assert (j / "vocab" / "manifest.json").exists() and not (j / "vocab").is_symlink()
        assert (j / ".hydra" / "overrides.yaml").exists()
        if "no_such_model" in j.name:
            assert "unknown model 'no_such_model'" in (j / "run" / "error.txt").read_text()
            assert not (j / "pretrain" / "manifest.json").exists()
        else:
            assert not (j / "run" / "error.txt").exists()
            assert (j / "pretrain" / "manifest.json").exists() and (j / "transfer" / "results.json").exists()

    out = write_summary(sweep)
    header, rows = out["header"], out["rows"]
    assert header[:3] == ["job", "pretrain.loss", "pretrain.model"] and "experiment" not in header
    top1 = "top1 fashion_mnist linear_probe pretrained 2"  # per target of the suite, with its 95% interval
    assert {
        "status",
        "heldout_precision_at_1",
        "heldout_mAP",
        top1,
        "top1 fluent_emoji_subgroup linear_probe pretrained 5",
        "seconds",
        "error",
    } <= set(header)
    assert len(rows) == 4
    col = {h: i for i, h in enumerate(header)}
    assert sorted((r[col["pretrain.loss"]], r[col["pretrain.model"]]) for r in rows) == sorted(
        (loss, m) for loss in ("softmax", "sigmoid") for m in ("resnext_mini", "no_such_model")
    )
    for r in rows:
        if r[col["pretrain.model"]] == "no_such_model":
            assert r[col["status"]] == "failed" and "no_such_model" in r[col["error"]]
            assert r[col["heldout_mAP"]] is None
        else:
            assert r[col["status"]] == "ok" and not r[col["error"]]
            assert 0 <= r[col["heldout_mAP"]] <= 1 and 0 <= r[col[top1]].lo <= r[col[top1]].mean <= r[col[top1]].hi <= 1
    md, table_csv = out["markdown"].read_text(), out["csv"].read_text()
    assert "4 jobs: 2 ok, 2 failed" in md and md.count("| failed |") == 2
    assert len(list(csv.reader(table_csv.splitlines()))) == 5
    assert {top1, f"{top1} lo", f"{top1} hi"} <= set(next(csv.reader(table_csv.splitlines())))
    assert md.count(" [") >= 2 * 2  # each ok job's top-1 cells carry their interval in brackets
    assert str(tmp_path) not in md and str(tmp_path) not in table_csv  # no absolute paths

    # rerunning the sweep reuses every finished stage
    again = _sweep(sweep, "pretrain.model=resnext_mini")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count('"vocab": "skipped", "pretrain": "skipped", "transfer": "skipped"') == 2


def test_submitit_local_sweep_two_ranks_per_job(tmp_path):
    """hydra-submitit-launcher's local executor: 2 jobs in parallel, each of 2 tasks (the SLURM layout:
    one task per device), ranks from submitit, pretraining as 2-rank DDP (gloo on CPU)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = _sweep(
        sweep, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "run.stages=[ingest,dedup,vocab,pretrain]"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(sweep)
    assert [j.name for j in jobs] == ["pretrain.loss=sigmoid", "pretrain.loss=softmax"]
    assert (sweep / "shared" / "ingest" / "manifest.json").exists()
    for j in jobs:
        counts = json.loads((j / "pretrain" / "manifest.json").read_text())["counts"]
        assert counts["world"] == 2 and counts["ranks_weights_identical"]
        assert json.loads((j / "run" / "ranks.json").read_text())["stage"] is None  # rank 0 released rank 1
    logs = list((sweep / ".submitit").glob("*/*_1_log.out"))  # rank 1 of each job
    assert len(logs) == 2 and all('"pretrain": "ran"' in p.read_text() for p in logs)
    out = write_summary(sweep)
    assert [r[out["header"].index("status")] for r in out["rows"]] == ["ok", "ok"]
