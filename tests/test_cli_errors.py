"""Issue 13, item 3: expected failures end in one line, ``error: ...; hint: ...``, exit status 2,
no traceback and no Hydra "HYDRA_FULL_ERROR" footer: a refused checkpoint, a missing upstream
stage, missing inputs, a full disk. Bugs still end in a traceback."""

from __future__ import annotations

import builtins
import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import FIXTURE, IMAGENET_INFO, REPO, WORDNET, copy_run, pretrain_overrides

from pipeline.cli import EXIT_EXPECTED, describe_failure, exit_status, failure_line
from pipeline.errors import CheckpointError, CheckpointRefused, ConfigError, ReportedFailure

BASE = [
    "data=fixture",
    f"data.cache={FIXTURE}",
    f"vocab.wordnet_dir={WORDNET}",
    f"vocab.imagenet_info_dir={IMAGENET_INFO}",
    "ingest.progress=false",
    "dedup.progress=false",
    "vocab.progress=false",
]
PRETRAIN = [
    *pretrain_overrides(max_steps=2, device="cpu"),
    "vocab.kind=raw",
    "vocab.min_count=2",
]


class _Evil:
    """Unpickling this creates ``marker`` (a stand-in for any code an attacker would run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _run(module: str, run_dir: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, f"run_dir={run_dir}", *BASE, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _one_error_line(p: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a failed command, checking that nothing else explains it."""
    both = p.stdout + p.stderr
    assert p.returncode == EXIT_EXPECTED == 2, both[-3000:]
    assert "Traceback" not in both and "HYDRA_FULL_ERROR" not in both, both[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, p.stderr[-3000:]
    assert p.stderr.rstrip().splitlines()[-1] == errors[0]  # the last thing printed
    return errors[0]


# --------------------------------------------------------------------------- real commands
@pytest.mark.slow
def test_refused_checkpoint_is_one_line_with_exit_status_2(prepared_fixture, tmp_path):
    run = copy_run(prepared_fixture, tmp_path / "run")
    marker = tmp_path / "pwned"
    evil = run / "pretrain" / "checkpoints" / "step_99999999.pt"  # the newest: resume loads it
    evil.parent.mkdir(parents=True)
    torch.save({"format": "hashtag-pretrain-checkpoint", "model": _Evil(marker)}, evil)
    line = _one_error_line(_run("pipeline.pretrain", run, *PRETRAIN))
    assert line.startswith(f"error: refusing to load {evil}: it contains objects other than tensors"), line
    assert "; hint: move " + str(evil) in line, line
    assert f"`python -m pipeline.run run_dir={run} run.force=[pretrain]`" in line, line
    assert "Weights only load failed" not in line  # torch's advice to load it anyway is not repeated
    assert not marker.exists()
    assert evil.exists()  # nothing is deleted for the user


@pytest.mark.slow
def test_missing_upstream_stage_is_one_line_with_exit_status_2(ingested_fixture, tmp_path):
    empty = tmp_path / "empty"
    line = _one_error_line(_run("pipeline.dedup", empty))
    assert line.startswith(f"error: no finished ingest stage in {empty}"), line
    assert f"python -m pipeline.ingest run_dir={empty}" in line, line
    run = copy_run(ingested_fixture, tmp_path / "run", stages=("ingest",))
    line = _one_error_line(_run("pipeline.vocab", run))
    assert line.startswith(f"error: no finished dedup stage in {run}") and "python -m pipeline.dedup" in line, line


@pytest.mark.slow
def test_missing_upstream_through_the_main_job(tmp_path):
    empty = tmp_path / "empty"
    p = _run("pipeline.run", empty, *PRETRAIN, "run.stages=[pretrain]", "energy.enabled=false", "run.report=false")
    line = _one_error_line(p)
    assert line.startswith(f"error: no finished vocab stage in {empty}") and "python -m pipeline.vocab" in line, line
    assert "FileNotFoundError" in (empty / "run" / "error.txt").read_text()  # the traceback is kept for the record


@pytest.mark.slow
def test_missing_inputs_are_one_line(tmp_path):
    line = _one_error_line(_run("pipeline.ingest", tmp_path / "run", f"data.cache={tmp_path / 'nowhere'}"))
    assert "does not exist" in line and str(tmp_path / "nowhere") in line, line


# --------------------------------------------------------------------------- hydra_entry, in one process
_ENTRY = textwrap.dedent("""
    import contextlib, errno, io, json, sys
    from pipeline.cli import ReportedFailure, hydra_entry

    def disk_full(cfg):
        try:
            raise OSError(errno.ENOSPC, "could not write runs/x/ingest/shards/000001.tar: No space left on device")
        except OSError as exc:
            raise RuntimeError("unit 1 failed") from exc

    def read_only(cfg):
        raise OSError(errno.EROFS, "Read-only file system", "runs/x/ingest/plan.json")

    def reported(cfg):
        raise ReportedFailure("stage pretrain failed under torchrun (exit status 1); its error is printed above", 1)

    def bug(cfg):
        return 1 / 0

    out, base = {}, sys.argv[1]
    for fn in (disk_full, read_only, reported, bug):
        sys.argv = ["x", f"run_dir={base}/{fn.__name__}"]
        err, code = io.StringIO(), 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                hydra_entry(fn, "test")
            except SystemExit as e:
                code = e.code
        out[fn.__name__] = [code, err.getvalue()]
    print(json.dumps(out))
""")


def test_hydra_entry_disk_full_read_only_reported_and_bugs(tmp_path):
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    p = subprocess.run(
        [sys.executable, "-c", _ENTRY, str(tmp_path)], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    code, err = res["disk_full"]
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith(
        "error: disk full: could not write runs/x/ingest/shards/000001.tar: No space left on device; hint: free space"
    ), err
    code, err = res["read_only"]
    assert code == 2 and err.strip() == (
        "error: Read-only file system: runs/x/ingest/plan.json; hint: check that the "
        "folder is on a writable file system and that you may read and write it "
        "(run_dir, data.cache)"
    ), err
    code, err = res["reported"]
    assert code == 1 and err.strip() == "error: stage pretrain failed under torchrun (exit status 1); its error is printed above"
    code, err = res["bug"]  # not an expected failure: Hydra's traceback report, exit status 1
    assert code == 1 and "ZeroDivisionError" in err and "error:" not in err.splitlines()[0], err


# --------------------------------------------------------------------------- the classification
def test_describe_failure_contract(tmp_path):
    assert describe_failure(ZeroDivisionError()) is None and failure_line(KeyError("x")) is None
    assert describe_failure(RuntimeError("CUDA out of memory")) is None
    assert (
        failure_line(ConfigError("config error at ingest.shard_size: must be > 0"))
        == "error: config error at ingest.shard_size: must be > 0"
    )
    p = tmp_path / "ckpt" / "step_00000004.pt"
    line = failure_line(CheckpointRefused(p, "it contains objects other than tensors", "Weights only load failed."))
    assert (
        line.startswith(f"error: refusing to load {p}: it contains objects other than tensors; hint: move {p} out of {p.parent}")
        and "Weights only" not in line
    )
    line = failure_line(CheckpointError(f"checkpoint {p} is truncated or corrupt and cannot be read: EOFError", p))
    assert line.startswith(f"error: checkpoint {p} is truncated") and f"move {p} out of" in line
    # an OS-raised missing file, and a stage's own message with its hint
    try:
        open(tmp_path / "no_such_index.jsonl")
    except FileNotFoundError as exc:
        assert failure_line(exc) == (
            f"error: missing input: {tmp_path / 'no_such_index.jsonl'} (No such file or "
            "directory); hint: check the path in the config (data.cache, data.sources, "
            "transfer.root, ...)"
        )
    line = failure_line(FileNotFoundError("no finished ingest stage in runs/a (missing runs/a/ingest/manifest.json)"))
    assert line.endswith(
        "hint: run `python -m pipeline.ingest run_dir=runs/a` first, or `python -m pipeline.run "
        "run_dir=runs/a` to run the stages in order"
    )
    assert (
        failure_line(FileNotFoundError("no finished vocab stage in r; run `python -m pipeline.vocab run_dir=r`"))
        == "error: no finished vocab stage in r; run `python -m pipeline.vocab run_dir=r`"
    )  # its own hint, not two
    for e in (errno.ENOSPC, errno.EDQUOT):
        assert failure_line(OSError(e, os.strerror(e))).startswith("error: disk full: ")
    assert exit_status(ConfigError("x")) == 2 and exit_status(ReportedFailure("x", 3)) == 3
    multi = failure_line(ConfigError("line one\nline two"))
    assert multi == "error: line one line two"  # always one line


def test_a_real_disk_full_write_is_recognized(tmp_path, monkeypatch):
    from pipeline.io.atomic import write_json

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "ingest" / "plan.json"
    with pytest.raises(OSError) as exc:
        write_json(target, {"a": 1})
    line = failure_line(exc.value)
    assert line.startswith(f"error: disk full: could not write {target}: No space left on device; hint:"), line
