"""Safety (issue 8): no pickle code execution from any file a stage loads; config errors
before any work at every entry point; withdrawn ids kept out of every artifact (proved by
``python -m pipeline.audit``); disk full and read-only output folders fail with a clear
error naming the path and leave nothing half-written."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROBE_ONLY_TRANSFER, REPO, copy_run, pretrain_overrides, stage_cfg
from fuzz.stages import partial_files, temp_files

from pipeline.errors import CheckpointError
from pipeline.io.run_folder import STAGES

PRETRAIN = [
    *pretrain_overrides(max_steps=2, heldout_fraction=0.1, checkpoint_every_steps=1, device="cpu"),
]
TRANSFER = list(PROBE_ONLY_TRANSFER)
LATER = ["vocab.kind=raw", "vocab.min_count=2", "vocab.plot=false", *PRETRAIN, *TRANSFER]


class _Evil:
    """Unpickling this creates ``marker`` (a stand-in for any code an attacker would run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@pytest.fixture(scope="module")
def pretrained(prepared_fixture, tmp_path_factory):
    """The prepared fixture run plus a 2-step pretraining (for transfer and checkpoint tests)."""
    from pipeline.pretrain import run_pretrain

    run = copy_run(prepared_fixture, tmp_path_factory.mktemp("safety") / "run")
    run_pretrain(stage_cfg(run, *LATER))
    return run


# --------------------------------------------------------------------------- pickles
def test_labels_npz_with_a_pickle_is_refused(prepared_fixture, tmp_path):
    from pipeline.io.labels import load_labels

    run = copy_run(prepared_fixture, tmp_path / "run")
    marker = tmp_path / "pwned"
    labels = run / "vocab" / "labels.npz"
    with np.load(labels, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["keys"] = np.array([_Evil(marker)], dtype=object)
    with open(labels, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(ValueError, match="refusing to load") as exc:
        load_labels(run)
    assert str(labels) in str(exc.value)
    assert not marker.exists()


def test_a_tampered_shard_index_is_refused_naming_it(prepared_fixture, tmp_path):
    """The shard index is Parquet (data, never unpickled); one of another format, one whose tar changed size, or
    a file that is no Parquet stops dedup with the file named and what to do, before anything is written."""
    import pyarrow.parquet as pq

    from pipeline.dedup import run_dedup
    from pipeline.io.shard_index import index_path

    run = copy_run(prepared_fixture, tmp_path / "run", stages=("ingest",))
    idx = index_path(sorted((run / "ingest" / "shards").glob("*.tar"))[0])
    good = pq.read_table(idx)
    meta = dict(good.schema.metadata)
    pq.write_table(good.replace_schema_metadata({**meta, b"format": b"99"}), idx)
    with pytest.raises(ValueError, match="re-run ingest") as exc:
        run_dedup(stage_cfg(run))
    assert idx.name in str(exc.value) and not (run / "dedup" / "manifest.json").exists()
    pq.write_table(good.replace_schema_metadata({**meta, b"tar_bytes": b"1" + meta[b"tar_bytes"]}), idx)
    with pytest.raises(ValueError, match="changed after ingest"):
        run_dedup(stage_cfg(run))
    idx.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="not a readable shard index"):
        run_dedup(stage_cfg(run))
    assert not (run / "dedup" / "manifest.json").exists()


@pytest.mark.slow
def test_crafted_checkpoint_in_a_run_is_refused_on_resume(pretrained, tmp_path):
    from pipeline.pretrain import run_pretrain

    run = copy_run(pretrained, tmp_path / "run", stages=("ingest", "dedup", "vocab", "pretrain"))
    marker = tmp_path / "pwned"
    evil = run / "pretrain" / "checkpoints" / "step_99999999.pt"  # the newest: resume loads it
    torch.save({"format": "hashtag-pretrain-checkpoint", "model": _Evil(marker)}, evil)
    with pytest.raises(CheckpointError, match="refusing") as exc:
        run_pretrain(stage_cfg(run, *LATER))
    assert str(evil) in str(exc.value)
    assert not marker.exists()


def test_crafted_trunk_pth_is_refused(pretrained, tmp_path):
    from pipeline.train.models import load_trunk

    marker = tmp_path / "pwned"
    evil = tmp_path / "trunk.pth"
    torch.save({"conv1.weight": _Evil(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_trunk(evil, "resnext_mini")
    assert not marker.exists()
    # the safetensors trunk the transfer stage reads cannot hold code at all; it loads as tensors
    load_trunk(pretrained / "pretrain" / "trunk.safetensors", "resnext_mini")


# --------------------------------------------------------------------------- config errors
ENTRY_POINTS = {  # stage: (unknown key, wrong type, out of range) overrides in its own section
    "ingest": ("ingest.shard_sise=5", "ingest.shard_size=many", "ingest.shard_size=0"),
    "dedup": ("dedup.near_radiuss=3", "dedup.near_radius=far", "dedup.hash_size=7"),
    "vocab": ("vocab.min_cnt=3", "vocab.min_count=lots", "vocab.min_count=0"),
    "pretrain": ("pretrain.learning_rate=1", "pretrain.epochs=many", "pretrain.batch_size=1"),
    "transfer": ("transfer.epochz=1", "transfer.finetune_epochs=x", "transfer.finetune_epochs=0"),
    "run": ("run.stagez=[x]", "run.pretrain_nproc=two", "dedup.hash_size=7"),
}
_CHECK_ALL = textwrap.dedent("""
    import contextlib, importlib, io, json, sys
    out = {}
    entry_points, base = json.loads(sys.argv[1]), sys.argv[2]
    for stage, overrides in entry_points.items():
        mod = importlib.import_module(f"pipeline.{stage}")
        for ov in overrides:
            sys.argv = [f"pipeline.{stage}", f"run_dir={base}/{stage}-run", ov]
            err = io.StringIO()
            code = 0
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
                try:
                    mod.main()
                except SystemExit as e:
                    code = e.code
            out[f"{stage} {ov}"] = [code, err.getvalue()[-2000:]]
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_config_errors_fail_before_any_work_at_every_entry_point(tmp_path):
    """Every stage's real ``main()`` (one Python process for all, to pay the imports once)."""
    p = subprocess.run(
        [sys.executable, "-c", _CHECK_ALL, json.dumps(ENTRY_POINTS), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(p.stdout.strip().splitlines()[-1])
    for stage, overrides in ENTRY_POINTS.items():
        for ov in overrides:
            code, text = results[f"{stage} {ov}"]
            key = ov.split("=")[0]
            assert code not in (0, None), (stage, ov, text)
            assert key in text or key.split(".")[-1] in text, (stage, ov, text)
        run_dir = tmp_path / f"{stage}-run"
        made = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()] if run_dir.exists() else []
        # Hydra's log file at most, and the main job's record of its error
        assert all(f.endswith(".log") or f == "run/error.txt" for f in made), (stage, made)
    assert "config error at ingest.shard_size" in results["ingest ingest.shard_size=0"][1]
    assert results["ingest ingest.shard_size=0"][0] == 2


# --------------------------------------------------------------------------- withdrawn ids and the audit
WITHDRAWN = ["emoji_google:1f436", "img2dataset:000007", "openclipart:animals/architetto_francesco_ro_01.png"]
LATE = ["emoji_twitter:1f431", "tuxpaint:food/fruit/banana.png"]


def _audit(run, ids, tmp_path) -> tuple[int, str]:
    from pipeline.audit import main

    f = tmp_path / f"ids-{len(ids)}.txt"
    f.write_text("# withdrawn\n" + "".join(i + "\n" for i in ids))
    buf = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(buf):
        code = main([str(run), "--ids", str(f)])
    return code, buf.getvalue()


@pytest.mark.slow
def test_withdrawn_ids_never_reach_any_artifact(tmp_path):
    from pipeline.dedup import run_dedup
    from pipeline.ingest import run_ingest
    from pipeline.pretrain import run_pretrain
    from pipeline.vocab import run_vocab

    ids = tmp_path / "withdrawn.txt"
    ids.write_text("".join(i + "\n" for i in WITHDRAWN))
    run = tmp_path / "run"
    cfg = stage_cfg(run, f"ingest.withdrawn={ids}", f"dedup.withdrawn={ids}", *LATER, "pretrain.audit_data=true")
    man = run_ingest(cfg)
    assert man["counts"]["by_reason"].get("withdrawn") == len(WITHDRAWN)
    run_dedup(cfg)
    run_vocab(cfg)
    run_pretrain(cfg)
    code, out = _audit(run, WITHDRAWN, tmp_path)
    assert code == 0, out
    assert out.count("(quarantined: withdrawn)") >= len(WITHDRAWN)  # ingest records what it kept out

    # the audit does find ids that are in a run: any other sample is in shards, index, labels, ...
    present = ["emoji_google:1f600", "img2dataset:000003"]
    code, out = _audit(run, present, tmp_path)
    assert code == 1
    for where in ("ingest/shards/", ".index.parquet", "ingest/parts/", "vocab/labels.npz"):
        assert where in out, (where, out)

    # the command line
    p = subprocess.run(
        [sys.executable, "-m", "pipeline.audit", str(run), "--ids", str(ids)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0 and "audit clean" in p.stdout, p.stdout + p.stderr


def test_ids_withdrawn_after_ingest_then_purged_by_reingest(ingested_fixture, tmp_path):
    """Withdrawn after ingest: dedup keeps them out of every later artifact, but the shards still
    hold the bytes (the audit says so); a re-ingest with ``ingest.withdrawn`` redoes only the units
    that held them, and the run is clean."""
    from pipeline.dedup import run_dedup
    from pipeline.ingest import run_ingest
    from pipeline.vocab import run_vocab

    run = copy_run(ingested_fixture, tmp_path / "run", stages=("ingest",))
    ids = tmp_path / "late.txt"
    ids.write_text("".join(i + "\n" for i in LATE))
    late = stage_cfg(run, f"dedup.withdrawn={ids}", *LATER)
    run_dedup(late)
    run_vocab(late)
    code, out = _audit(run, LATE, tmp_path)
    assert code == 1
    found = [line for line in out.splitlines() if line.startswith("FOUND")]
    assert found and all(" ingest/" in line for line in found), found  # nothing downstream of ingest
    assert "(removed: withdrawn)" in out

    parts_before = {p.name: p.read_bytes() for p in (run / "ingest" / "parts").glob("*.json")}
    holding = {
        p.name
        for p in (run / "ingest" / "parts").glob("*.json")
        if any(sid in LATE for _, sid in json.loads(p.read_text())["ids"])
    }
    purge = stage_cfg(run, f"ingest.withdrawn={ids}", f"dedup.withdrawn={ids}", *LATER)
    man = run_ingest(purge)
    assert man["counts"]["by_reason"]["withdrawn"] == len(LATE)
    changed = {n for n, b in parts_before.items() if (run / "ingest" / "parts" / n).read_bytes() != b}
    assert changed == holding and len(holding) < len(parts_before)  # only those units were redone
    run_dedup(purge)
    run_vocab(purge)
    code, out = _audit(run, LATE, tmp_path)
    assert code == 0, out


def test_audit_refuses_to_vouch_for_unreadable_files(prepared_fixture, tmp_path):
    run = copy_run(prepared_fixture, tmp_path / "run")
    marker = tmp_path / "pwned"
    with open(run / "dedup" / "stale_cache.npz", "wb") as fh:  # e.g. an npz left by another tool
        np.savez(fh, ids=np.array([_Evil(marker)], dtype=object))
    (run / "vocab" / "vocab.json").write_text('{"truncated": ')
    code, out = _audit(run, ["nobody:none"], tmp_path)
    assert code == 2 and "UNVERIFIED" in out and "stale_cache.npz" in out and "vocab.json" in out, out
    assert not marker.exists()


# --------------------------------------------------------------------------- disk full, read-only
def _under(path, root: Path) -> bool:
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(root.resolve())
    except (TypeError, ValueError, OSError):
        return False


def make_read_only(monkeypatch, root: Path) -> None:
    """Simulate a read-only ``root`` (tests run as root, where chmod does not stop writes): every
    call that would create, modify or delete something below it fails with EROFS. Files created
    by code that bypasses Python (torch.save's C++ writer) may still be deleted."""
    existing = {p.resolve() for p in root.rglob("*")} if root.exists() else set()

    def deny(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_open, real_os_open = builtins.open, os.open
    real = {n: getattr(os, n) for n in ("mkdir", "replace", "rename", "unlink", "remove", "rmdir")}

    def fake_open(file, mode="r", *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and _under(file, root):
            deny(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _under(path, root):
            deny(path)
        return real_os_open(path, flags, *a, **k)

    def guard(name):
        def f(*args, **kw):
            target = args[1] if name in ("replace", "rename") else args[0]
            if kw.get("dir_fd") is None and _under(target, root):
                if name in ("unlink", "remove") and Path(target).resolve() not in existing:
                    return real[name](*args, **kw)
                deny(target)
            return real[name](*args, **kw)

        return f

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    for name in real:
        monkeypatch.setattr(os, name, guard(name))
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", lambda p, *a, **k: deny(p) if _under(p, root) else real_rmtree(p, *a, **k))


def make_disk_full(monkeypatch, root: Path, after_fsyncs: int = 0, after_bytes: int | None = None) -> None:
    """Simulate a full disk below ``root``: ENOSPC from ``fsync`` after ``after_fsyncs`` successful
    ones (where delayed allocation reports it), or, with ``after_bytes``, from ``write`` once that
    many bytes were written (the first bytes of the failing write land: a partial file)."""
    real_fsync, real_open = os.fsync, builtins.open
    state = {"fsyncs": 0, "bytes": 0}

    def fsync(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if _under(path, root):
            if state["fsyncs"] >= after_fsyncs:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            state["fsyncs"] += 1
        return real_fsync(fd)

    class Full:
        def __init__(self, fh):
            self._fh = fh

        def write(self, data):
            room = after_bytes - state["bytes"]
            if len(data) > room:
                self._fh.write(data[: max(room, 0)])
                self._fh.flush()
                state["bytes"] = after_bytes
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._fh.name)
            state["bytes"] += len(data)
            return self._fh.write(data)

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

        def __iter__(self):
            return iter(self._fh)

    def fake_open(file, mode="r", *a, **k):
        fh = real_open(file, mode, *a, **k)
        if (
            after_bytes is not None
            and any(c in mode for c in "wax+")
            and isinstance(file, (str, os.PathLike))
            and _under(file, root)
        ):
            return Full(fh)
        return fh

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(builtins, "open", fake_open)


def _stage_fn(stage):
    import importlib

    return getattr(importlib.import_module(f"pipeline.{stage}"), f"run_{stage}")


def _copy_upstream(src, run, stage):
    up = {
        "ingest": (),
        "dedup": ("ingest",),
        "vocab": ("ingest", "dedup"),
        "pretrain": ("ingest", "dedup", "vocab"),
        "transfer": ("dedup", "pretrain"),
    }[stage]
    return copy_run(src, run, stages=up) if up else run


@pytest.mark.parametrize("stage", STAGES)
def test_read_only_run_folder_fails_naming_the_path(stage, pretrained, tmp_path, monkeypatch):
    run = _copy_upstream(pretrained, tmp_path / "run", stage)
    run.mkdir(exist_ok=True)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    cfg = stage_cfg(run, *LATER)
    make_read_only(monkeypatch, run)
    with pytest.raises(OSError) as exc:
        _stage_fn(stage)(cfg)
    monkeypatch.undo()
    assert exc.value.errno == errno.EROFS
    assert str(run) in str(exc.value), str(exc.value)
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert after == before, "something was written into the read-only folder"


def test_read_only_folder_keeps_a_finished_stage_intact(pretrained, tmp_path, monkeypatch):
    from pipeline.dedup import run_dedup

    run = copy_run(pretrained, tmp_path / "run", stages=("ingest", "dedup"))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    make_read_only(monkeypatch, run / "dedup")
    with pytest.raises(OSError, match="Read-only") as exc:
        run_dedup(stage_cfg(run, *LATER))
    monkeypatch.undo()
    assert str(run / "dedup") in str(exc.value)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.slow
def test_disk_full_fails_naming_the_path_and_leaves_nothing_half_written(stage, pretrained, tmp_path, monkeypatch):
    run = _copy_upstream(pretrained, tmp_path / "run", stage)
    cfg = stage_cfg(run, *LATER)
    make_disk_full(monkeypatch, run / stage, after_fsyncs=2 if stage == "ingest" else 0)
    with pytest.raises(OSError) as exc:
        _stage_fn(stage)(cfg)
    monkeypatch.undo()
    assert exc.value.errno == errno.ENOSPC
    assert "could not write" in str(exc.value) and str(run / stage) in str(exc.value), str(exc.value)
    assert not temp_files(run / stage), temp_files(run / stage)
    assert not partial_files(run / stage)
    assert not (run / stage / "manifest.json").exists()
    if stage in ("ingest", "pretrain"):  # space freed: the rerun resumes and finishes
        man = _stage_fn(stage)(cfg)
        assert man is not None and not temp_files(run / stage)


@pytest.mark.parametrize(
    "stage,budget",
    [("ingest", 40_000), ("pretrain", 150), ("pretrain", 300)],
    ids=["ingest-shard", "pretrain-metrics-line", "pretrain-checkpoint"],
)
@pytest.mark.slow
def test_disk_full_in_the_middle_of_a_write(stage, budget, pretrained, tmp_path, monkeypatch):
    """ENOSPC from write() after ``budget`` bytes: an atomic write (a shard, a checkpoint) leaves
    only its temp file, deleted on the error; an append-only log (pretrain's metrics.jsonl) keeps
    a partial last line, which the rerun must drop."""
    run = _copy_upstream(pretrained, tmp_path / "run", stage)
    cfg = stage_cfg(run, *LATER)
    make_disk_full(monkeypatch, run / stage, after_bytes=budget)
    with pytest.raises(OSError) as exc:
        _stage_fn(stage)(cfg)
    monkeypatch.undo()
    assert exc.value.errno == errno.ENOSPC and str(run / stage) in str(exc.value), str(exc.value)
    assert not temp_files(run / stage)
    assert not (run / stage / "manifest.json").exists()
    man = _stage_fn(stage)(cfg)
    assert man is not None
    assert not temp_files(run / stage) and not partial_files(run / stage)
