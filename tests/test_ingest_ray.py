"""Ingest's units as Ray tasks (``data.engine=ray``): the same shards, quarantine and manifest as the process pool,
with a worker killed halfway through a unit (Ray runs the unit again; its half-written temp file is left aside)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import ray_killing_once


def install_kill_one_unit() -> None:
    """Ray's ``worker_process_setup_hook`` for the ingest test below: the first unit any worker starts dies halfway
    (its shard's temp file written, the process gone), as a node lost mid-unit."""
    import pipeline.ingestion.worker as w

    marker = Path(os.environ["PIPELINE_TEST_KILL_MARKER"])
    original = w.process_unit

    def dying(unit, settings, out_dir):
        if not marker.exists():
            marker.touch()
            (Path(out_dir) / "shards").mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "shards" / f".{unit.number:06d}.tar.tmp-dead").write_bytes(b"half a shard")
            os._exit(1)
        return original(unit, settings, out_dir)

    w.process_unit = dying


@pytest.mark.slow
def test_ingest_units_as_ray_tasks_equal_the_pool(fixture_cfg, tmp_path):
    pytest.importorskip("ray")
    from pipeline.ingest import run_ingest

    local = fixture_cfg("ingest.shard_size=16", f"run_dir={tmp_path / 'local'}", "ingest.workers=2")
    man_local = run_ingest(local)
    marker = tmp_path / "killed"
    with ray_killing_once("test_ingest_ray.install_kill_one_unit", marker):
        on_ray = fixture_cfg("ingest.shard_size=16", f"run_dir={tmp_path / 'ray'}", "data.engine=ray", "ray.max_retries=2")
        man_ray = run_ingest(on_ray)
    assert marker.exists()  # a unit's worker died; Ray ran the unit again
    a, b = Path(local.run_dir) / "ingest", Path(on_ray.run_dir) / "ingest"
    shards = sorted(p.name for p in (a / "shards").iterdir())
    assert shards == sorted(p.name for p in (b / "shards").iterdir() if not p.name.startswith(".")) and len(shards) > 4
    assert all((a / "shards" / f).read_bytes() == (b / "shards" / f).read_bytes() for f in shards)
    assert (a / "quarantine.jsonl").read_bytes() == (b / "quarantine.jsonl").read_bytes()
    assert man_ray["counts"]["written"] == man_local["counts"]["written"] > 0
    assert man_ray["outputs"] == man_local["outputs"]
