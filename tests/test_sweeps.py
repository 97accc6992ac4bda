"""Hydra multirun sweeps of the main job: shared upstream stages, one run folder per job, the summary table.

Both tests run ``python -m pipeline.run -m experiment=smoke`` for real in a subprocess, over the
committed fixture corpus (conf/experiment/smoke.yaml: tiny pretraining and transfer).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import pytest
from conftest import run_sweep

from pipeline.summarize import write_summary


def _sweep(sweep_dir, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_sweep(sweep_dir, *overrides, timeout=timeout)


def _jobs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "shared")


def _count_in_logs(jobs, text: str) -> int:
    return sum((j / "run.log").read_text().count(text) for j in jobs if (j / "run.log").exists())


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_seed_groups_intervals_paired_differences_and_plot(seed_sweep, tmp_path):
    sweep = tmp_path / "smoke"
    shutil.copytree(seed_sweep, sweep, symlinks=True)
    out = write_summary(sweep)
    header, rows = out["seed_header"], out["seed_rows"]
    col = {h: i for i, h in enumerate(header)}
    top1 = "top1 fashion_mnist linear_probe pretrained 2"
    assert header[:2] == ["pretrain.loss", "seeds"] and top1 in header and f"diff {top1[5:]}" in header
    assert sorted(r[0] for r in rows) == ["sigmoid", "softmax"] and all(r[col["seeds"]] in ("0,1", "1,0") for r in rows)
    # the mean over seeds is the mean of the jobs' own top-1 (probe seeds averaged in each job)
    for r in rows:
        per_job = [j for j in out["rows"] if j[out["header"].index("pretrain.loss")] == r[0]]
        mean_of_jobs = sum(j[out["header"].index(top1)].mean for j in per_job) / len(per_job)
        cell = r[col[top1]]
        assert abs(cell.mean - mean_of_jobs) < 1e-6 and cell.lo <= cell.mean <= cell.hi  # results.json: 6 digits
    base, other = rows[0], rows[1]
    assert base[col[f"diff {top1[5:]}"]] is None  # the first group is the baseline
    diff = other[col[f"diff {top1[5:]}"]]
    assert abs(diff.mean - (other[col[top1]].mean - base[col[top1]].mean)) < 1e-9 and diff.lo <= diff.mean <= diff.hi
    assert out["plot"] is not None and out["plot"].stat().st_size > 1000
    assert "## Mean over pretraining seeds" in out["markdown"].read_text() and out["seeds_csv"].exists()

    # another baseline, by value; one that names no group is an error
    again = write_summary(sweep, baseline=f"pretrain.loss={other[0]}")
    assert again["seed_rows"][1][col[f"diff {top1[5:]}"]] is None
    try:
        write_summary(sweep, baseline="pretrain.loss=no_such_loss")
        raise AssertionError("expected ValueError")
    except ValueError as exc:
        assert "no group" in str(exc)

    # jobs of another sweep join through include.txt, their values read from their saved configs
    alone = tmp_path / "alone"
    alone.mkdir()
    moved = [p for p in sweep.iterdir() if p.name.startswith("pretrain.loss=sigmoid")]
    (alone / "multirun.yaml").write_text("{}")
    for p in sweep.iterdir():
        if p.name.startswith("pretrain.loss=softmax") or p.name == "shared":
            shutil.copytree(p, alone / p.name, symlinks=True)
    (alone / "include.txt").write_text("".join(f"../smoke/{p.name}\n" for p in moved) + "# a comment\n")
    joined = write_summary(alone)
    assert len(joined["jobs"]) == 4 and {r[0] for r in joined["seed_rows"]} == {"softmax", "sigmoid"}
