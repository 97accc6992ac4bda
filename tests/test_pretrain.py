"""Pretraining end to end on the fixture corpus: bitwise resume after SIGKILL, 2-rank DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FIXTURE, REPO, copy_run
from safetensors.torch import load_file

COMMON = [
    "data=fixture",
    f"data.cache={FIXTURE}",
    "pretrain.model=resnext_mini",
    "pretrain.image_size=32",
    "pretrain.batch_size=8",
    "pretrain.epochs=2",
    "pretrain.workers=1",
    "pretrain.progress=false",
    "pretrain.checkpoint_every_steps=3",
    "pretrain.heldout_fraction=0.1",
    "pretrain.threads=1",
]


def _cmd(run_dir, *extra):
    return [sys.executable, "-m", "pipeline.pretrain", f"run_dir={run_dir}", *COMMON, *extra]


def _weights(run_dir):
    return load_file(str(Path(run_dir) / "pretrain" / "trunk.safetensors"))


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_exact(prepared_fixture, tmp_path):
    full = copy_run(prepared_fixture, tmp_path / "full")
    subprocess.run(_cmd(full), cwd=REPO, check=True, capture_output=True)
    man = json.loads((full / "pretrain" / "manifest.json").read_text())
    assert man["counts"]["steps"] == man["counts"]["total_steps"] > 6
    dc = man["counts"]["decoded_cache"]
    assert dc["enabled"] and dc["images"] == man["counts"]["train_samples"] + man["counts"]["heldout_samples"]
    assert not (full / "pretrain" / "decoded_cache").exists()  # removed when the stage finished

    killed = copy_run(prepared_fixture, tmp_path / "killed")
    proc = subprocess.Popen(_cmd(killed), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "pretrain" / "checkpoints" / "step_00000006.pt"
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists() and not (killed / "pretrain" / "manifest.json").exists()
    subprocess.run(_cmd(killed), cwd=REPO, check=True, capture_output=True)
    assert not list((killed / "pretrain").rglob(".*tmp-*")), "the rerun must remove temp files left by the kill"
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    la = [json.loads(x)["loss"] for x in (full / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (killed / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb

    # the decoded cache is a speed choice only: decoding the shards every epoch trains the same weights
    plain = copy_run(prepared_fixture, tmp_path / "plain")
    subprocess.run(_cmd(plain, "pretrain.decoded_cache=off"), cwd=REPO, check=True, capture_output=True)
    c = _weights(plain)
    assert all(torch.equal(a[k], c[k]) for k in a), "training on the decoded cache changed the weights"
    assert not json.loads((plain / "pretrain" / "manifest.json").read_text())["counts"]["decoded_cache"]["enabled"]


@pytest.mark.slow
def test_two_rank_ddp_disjoint_data_identical_weights(prepared_fixture, tmp_path):
    run = copy_run(prepared_fixture, tmp_path / "run")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pipeline.pretrain",
        f"run_dir={run}",
        *COMMON,
        "pretrain.audit_data=true",
        "pretrain.resampling=natural",
        "pretrain.device=cpu",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    man = json.loads((run / "pretrain" / "manifest.json").read_text())
    c = man["counts"]
    assert c["world"] == 2 and c["ranks_weights_identical"], c["rank_weight_checksums"]
    audit = json.loads((run / "pretrain" / "data_audit.json").read_text())
    assert audit["overlap_between_ranks"] == 0
    assert sum(audit["per_rank"]) == audit["union"] == c["train_samples"] * 2  # 2 epochs, natural: each once
    assert abs(audit["per_rank"][0] - audit["per_rank"][1]) <= 2
    # Hydra made no per-rank output folders: only the run folder exists where we ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
