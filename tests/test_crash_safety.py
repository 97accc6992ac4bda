"""Crash safety (issue 8): SIGKILL each stage at random points, rerun it, compare with an
uninterrupted run.

Every stage runs on the fixture corpus with tiny settings as ``run_<stage>(cfg)`` in a child
process forked from a preloaded forkserver (:mod:`fuzz.stages`: a fresh ``python -m
pipeline.<stage>`` spends 5-15 s importing torch per attempt here; the Hydra entry points
themselves run in the torchrun test below and in tests/test_safety.py). After each kill no visible file may be
partial (every JSON, JSONL, tar, npz and checkpoint reads completely); after the rerun no temp file may be left, the
upstream stage folders are untouched, and the stage folder equals the uninterrupted
run's: shards byte-identical, side files and manifests equal except timing fields,
checkpoints and trunk equal tensors. ``CRASH_SEED=<n>`` replays the kill points of a
failing run (the seed is printed in every assertion message); ``CRASH_KILLS_X=10`` kills
each stage ten times as often.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest
from conftest import FIXTURE, PROBE_ONLY_TRANSFER
from fuzz.stages import _child, compare_stage, context, partial_files, run_stage, temp_files, warm_up

from pipeline.io.run_folder import STAGES

# every stage a stage needs run before it (transitive, unlike pipeline.io.run_folder.UPSTREAM's direct inputs)
UPSTREAM = {
    "ingest": (),
    "dedup": ("ingest",),
    "vocab": ("ingest", "dedup"),
    "pretrain": ("ingest", "dedup", "vocab"),
    "transfer": ("ingest", "dedup", "pretrain"),
}  # ingest: transfer's feature-space check reads the shards
# kills per stage; CRASH_KILLS_X=10 multiplies them for a longer local hunt
KILLS = {
    k: v * int(os.environ.get("CRASH_KILLS_X", "1"))
    for k, v in {"ingest": 3, "dedup": 2, "vocab": 2, "pretrain": 2, "transfer": 2}.items()
}
TINY = [
    "data=fixture",
    f"data.cache={FIXTURE}",
    "ingest.progress=false",
    "ingest.workers=1",
    "ingest.shard_size=16",
    "dedup.progress=false",
    "dedup.workers=1",
    "vocab.kind=raw",
    "vocab.min_count=2",
    "vocab.plot=false",
    "vocab.progress=false",
    "pretrain.model=resnext_mini",
    "pretrain.image_size=32",
    "pretrain.batch_size=8",
    "pretrain.epochs=2",
    "pretrain.max_steps=12",
    "pretrain.workers=0",
    "pretrain.progress=false",
    "pretrain.heldout_fraction=0.1",
    "pretrain.threads=1",
    "pretrain.checkpoint_every_steps=2",
    "pretrain.keep_checkpoints=3",
    *PROBE_ONLY_TRANSFER,
]
SEED = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))


def _overrides(run):
    return [*TINY, f"run_dir={run}"]


def _log_tail(path, n=3000):
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Every stage run once, uninterrupted, in one run folder; and each stage's wall seconds."""
    warm_up()
    root = tmp_path_factory.mktemp("crash_reference")
    run = root / "run"
    seconds = {}
    for stage in STAGES:
        log = root / f"{stage}.log"
        code, seconds[stage] = run_stage(stage, _overrides(run), log)
        assert code == 0, _log_tail(log)
    return run, seconds


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_equals_uninterrupted(stage, references, tmp_path):
    ref, seconds = references
    run = tmp_path / "run"
    for up in UPSTREAM[stage]:
        shutil.copytree(ref / up, run / up)
    rng = random.Random(f"{SEED}-{stage}")
    log = tmp_path / f"{stage}.log"
    attempts = []
    hi = 0.9  # kill within [0.02, hi] x the uninterrupted run's time; halved when an attempt ends first
    while sum(code == -9 for _, code in attempts) < KILLS[stage] and len(attempts) < 4 * KILLS[stage]:
        delay = rng.uniform(0.02, hi) * seconds[stage]
        code, _ = run_stage(stage, _overrides(run), log, kill_after=delay)
        attempts.append((round(delay, 2), code))
        msg = f"CRASH_SEED={SEED} {stage} attempts (kill delay s, exit code) {attempts}"
        assert code in (0, -9), f"{msg}\n{_log_tail(log)}"
        bad = partial_files(run / stage) if (run / stage).exists() else []
        assert not bad, f"{msg}: partial files visible after SIGKILL: {bad}"
        if code == 0:
            hi /= 2  # a resumed (or finished) stage has less left to do
    assert sum(code == -9 for _, code in attempts) == KILLS[stage], f"{msg}: too few attempts were killed"
    code, _ = run_stage(stage, _overrides(run), log)
    assert code == 0, f"{msg}: the rerun failed\n{_log_tail(log)}"
    assert not temp_files(run / stage), f"{msg}: temp files left: {temp_files(run / stage)}"
    assert not partial_files(run / stage)
    for up in UPSTREAM[stage]:
        assert not compare_stage(ref / up, run / up), f"{stage} wrote into {up}/"
    diffs = compare_stage(ref / stage, run / stage)
    assert not diffs, f"{msg}: outputs differ from an uninterrupted run:\n" + "\n".join(diffs[:20])


@pytest.mark.slow
def test_pretrain_killed_right_after_an_epoch_end_eval(references, tmp_path):
    """The window between the held-out eval at an epoch's end and the next checkpoint: the
    rerun resumes from the checkpoint of that step and must not log the eval twice."""
    ref, _ = references
    run = tmp_path / "run"
    for up in UPSTREAM["pretrain"]:
        shutil.copytree(ref / up, run / up)
    evals = [json.loads(x) for x in (ref / "pretrain" / "eval.jsonl").read_text().splitlines()]
    epoch_end = [e["step"] for e in evals if e["step"] not in (0, max(e["step"] for e in evals))]
    assert epoch_end, evals  # the tiny run crosses an epoch boundary before max_steps
    log = tmp_path / "pretrain.log"
    p = context().Process(target=_child, args=("pretrain", _overrides(run), str(log)))
    p.start()
    eval_file = run / "pretrain" / "eval.jsonl"
    deadline = time.monotonic() + 300
    while p.is_alive() and time.monotonic() < deadline:
        if eval_file.exists() and any(
            json.loads(x)["step"] == epoch_end[0] for x in eval_file.read_text().splitlines() if x.strip()
        ):
            break
        time.sleep(0.005)
    p.kill()
    p.join()
    assert p.exitcode == -9, "the run ended before the kill"
    code, _ = run_stage("pretrain", _overrides(run), log)
    assert code == 0, _log_tail(log)
    diffs = compare_stage(ref / "pretrain", run / "pretrain")
    assert not diffs, "\n".join(diffs)


@pytest.mark.slow
def test_torchrun_restarts_the_job_when_a_rank_is_killed(references, tmp_path):
    """2 gloo ranks under ``torchrun --max-restarts=1``; rank 1 SIGKILLs itself after step 5
    (the test hook of :mod:`pipeline.train.train_loop`): torchrun restarts both ranks, which resume
    from the step-4 checkpoint and finish with identical weights."""
    ref, _ = references
    run = tmp_path / "run"
    for up in UPSTREAM["pretrain"]:
        shutil.copytree(ref / up, run / up)
    marker = tmp_path / "rank1-killed"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max-restarts=1",
        "--monitor-interval=0.2",
        "-m",
        "pipeline.pretrain",
        *_overrides(run),
        "pretrain.device=cpu",
        "pretrain.max_steps=8",
        "pretrain.checkpoint_every_steps=2",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PIPELINE_TEST_KILL_RANK_AT_STEP=f"1:5:{marker}")
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    out = p.stdout + p.stderr + ((run / "pretrain.log").read_text() if (run / "pretrain.log").exists() else "")
    assert p.returncode == 0, out[-12000:]
    assert marker.exists(), "rank 1 was never killed"
    assert "resuming from" in out and "step_00000004.pt" in out, out[-4000:]
    man = json.loads((run / "pretrain" / "manifest.json").read_text())
    c = man["counts"]
    assert c["world"] == 2 and c["steps"] == 8
    assert c["ranks_weights_identical"], c["rank_weight_checksums"]
    steps = [json.loads(x)["step"] for x in (run / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9)), steps  # every step logged once: steps 5.. redone, not duplicated
    assert not temp_files(run / "pretrain") and not partial_files(run / "pretrain")
