"""Part 6: the transfer stage under ``torchrun --nproc_per_node=1`` on the checked device (issue 24).

Reads the run folder part 5 (``test_fixture_pipeline.py``) left (its pretrained trunk; skipped without it), copies
its stage folders and runs ``python -m torch.distributed.run --standalone --nproc_per_node=1 -m pipeline.transfer``
over the same small target with ``transfer.device_batch`` set (micro-batches accumulated): the process group's
path on one GPU (NCCL) as a multi-GPU node runs it per rank. Records the fine-tuning img/s (training images over
training seconds of the epoch rows), the probe's feature seconds, ``world_size`` and the transfer manifest's device.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from benchmarks.gpu_parts import REPO, fixture_overrides, merge_overrides, transfer_target_overrides

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(150)]


def test_transfer_under_torchrun(request, device, gpu_sizes, gpu_work, record_figure, assert_checks):
    src, target = gpu_work / "fixture_run", gpu_work / "target"
    if not (src / "pretrain" / "manifest.json").exists() or not target.exists():
        pytest.skip("needs the run folder and target of part fixture_pipeline (run it first)")
    run_dir = gpu_work / "torchrun_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    for stage in ("ingest", "dedup", "vocab", "pretrain"):
        shutil.copytree(src / stage, run_dir / stage)
    batch = 4 if device.type == "cpu" else 16
    overrides = merge_overrides(
        fixture_overrides(gpu_sizes, run_dir, gpu_work)
        + transfer_target_overrides(target)
        + [f"transfer.batch_size={batch}", f"transfer.device_batch={batch // 2}", "transfer.progress=false"]
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "pipeline.transfer"]
    cmd += [o for o in overrides if not o.startswith(("run.", "energy."))]
    record_figure("command", " ".join(cmd[1:]))
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PIPELINE_PROGRESS": "off"}
    env.setdefault("PIPELINE_CACHE_DIR", str(gpu_work / "cache"))
    limit = request.node.get_closest_marker("timeout").args[0]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(10, limit - 10))
    record_figure("wall_seconds", round(time.perf_counter() - t0, 2), "s")
    if p.returncode != 0:
        record_figure("stderr_tail", p.stderr[-4000:])
    res_file, man_file = run_dir / "transfer" / "results.json", run_dir / "transfer" / "manifest.json"
    res = json.loads(res_file.read_text()) if res_file.exists() else {}
    counts = (json.loads(man_file.read_text()) if man_file.exists() else {}).get("counts") or {}
    rows_file = run_dir / "transfer" / "finetune_epochs.jsonl"
    rows = [json.loads(x) for x in rows_file.read_text().splitlines()] if rows_file.exists() else []
    train_s = sum(r["seconds"] for r in rows) or None
    ips = round(sum(r["images"] for r in rows) / train_s, 1) if train_s else None
    section = next(iter(res.get("targets", {}).values()), {})
    record_figure("returncode", p.returncode)
    record_figure("world_size", res.get("world_size"))
    record_figure("device", counts.get("device"))
    record_figure("finetune_images_per_second", ips, "img/s")
    record_figure("probe_feature_seconds", (section.get("seconds") or {}).get("features"), "s")
    record_figure("rows", len(section.get("rows", [])))
    record_figure("summary", f"rc {p.returncode}; world {res.get('world_size')}; {counts.get('device')}; fine-tuning {ips} img/s")
    assert_checks(
        {
            "exit status 0": p.returncode == 0,
            "results.json records world_size 1": res.get("world_size") == 1,
            f"transfer on {device.type}": str(counts.get("device", "")).startswith(device.type),
            "every row written": len(section.get("rows", [])) > 0,
        }
    )
