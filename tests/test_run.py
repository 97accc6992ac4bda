"""The main job: stages run in order, unchanged stages are skipped, changed ones redone."""

from __future__ import annotations

import json

import pytest
from conftest import stage_cfg

from pipeline.config import to_container
from pipeline.run import run_pipeline, stage_keys

TINY = (
    "vocab.kind=raw",
    "vocab.min_count=2",
    "vocab.plot=false",
    "pretrain.model=resnext_mini",
    "pretrain.image_size=32",
    "pretrain.batch_size=8",
    "pretrain.epochs=1",
    "pretrain.workers=0",
    "pretrain.progress=false",
    "pretrain.heldout_fraction=0.1",
    "run.report=false",
)


@pytest.mark.slow
def test_skip_and_redo(prepared_fixture, tmp_path):
    run = tmp_path / "run"
    stages = "run.stages=[ingest,dedup,vocab,pretrain]"
    out = run_pipeline(stage_cfg(run, stages, *TINY))
    assert out["stages"] == dict.fromkeys(["ingest", "dedup", "vocab", "pretrain"], "ran")
    shard_mtime = (run / "ingest" / "manifest.json").stat().st_mtime_ns
    out = run_pipeline(stage_cfg(run, stages, *TINY))
    assert set(out["stages"].values()) == {"skipped"}
    # a vocabulary change redoes vocab and pretrain only
    out = run_pipeline(stage_cfg(run, stages, *TINY, "vocab.min_count=3"))
    assert out["stages"] == {"ingest": "skipped", "dedup": "skipped", "vocab": "ran", "pretrain": "ran"}
    assert (run / "ingest" / "manifest.json").stat().st_mtime_ns == shard_mtime
    # a stage rerun by hand invalidates what reads it
    from pipeline.vocab import run_vocab

    run_vocab(stage_cfg(run, *TINY, "vocab.min_count=3"))
    out = run_pipeline(stage_cfg(run, stages, *TINY, "vocab.min_count=3"))
    assert out["stages"]["vocab"] == "ran" and out["stages"]["pretrain"] == "ran"
    # progress flags and worker counts do not change results, so not the keys either
    a = stage_keys(to_container(stage_cfg(run, *TINY)))
    b = stage_keys(to_container(stage_cfg(run, *TINY, "pretrain.workers=2", "ingest.progress=true")))
    assert a == b
    energy = json.loads((run / "run" / "energy.json").read_text())
    assert set(energy) == {"ingest", "dedup", "vocab", "pretrain"} and all(e["wall_seconds"] > 0 for e in energy.values())


@pytest.mark.slow
def test_sweep_jobs_share_upstream_stages(tmp_path):
    shared = tmp_path / "shared"
    outs = []
    for job, loss in enumerate(["softmax", "sigmoid"]):
        outs.append(
            run_pipeline(
                stage_cfg(
                    tmp_path / f"job{job}",
                    "run.stages=[ingest,dedup,vocab]",
                    *TINY,
                    f"run.shared_dir={shared}",
                    f"pretrain.loss={loss}",
                )
            )
        )
    assert outs[0]["stages"]["ingest"] == "shared (ran)" and outs[1]["stages"]["ingest"] == "shared (skipped)"
    assert outs[1]["stages"]["vocab"] == "ran"
    for job in ("job0", "job1"):
        link = tmp_path / job / "ingest"
        assert link.is_symlink() and (link / "manifest.json").exists()
    assert not (shared / "vocab").exists()
