"""Part 5: ``python -m pipeline.run`` over the fixture corpus, every stage on the checked device, as a subprocess.

``vocab.kind=raw`` (no WordNet: ``vocab.wordnet_dir`` does not exist), a one-epoch
``resnext_mini`` pretraining, energy measured; the transfer target is a small ImageNet-layout
folder built from the fixture's Fashion-MNIST images, the suite's only target.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks.gpu_parts import REPO, build_target, fixture_overrides, merge_overrides, transfer_target_overrides
from pipeline.io.manifest import read_manifest, stage_dir

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(200)]

STAGES = ("ingest", "dedup", "vocab", "pretrain", "transfer")


def _first(obj, key: str):
    """The first value of ``key`` in nested dicts/lists (depth first), or None."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            found = _first(v, key)
            if found is not None:
                return found
    return None


def _last_json(text: str) -> dict | None:
    """The last line of ``pipeline.run``'s stdout that is its JSON result (``{"stages": ...}``)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"stages"' in line:
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return None


def _run(cmd: list[str], env: dict, out_file, err_file, timeout: float) -> int:
    """Run ``cmd`` in its own process group; on a timeout (or pytest-timeout's stop) kill the whole group."""
    with open(out_file, "w", encoding="utf-8") as out, open(err_file, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise


def _energy(energy: dict) -> dict:
    out = {}
    for k, v in energy.items():
        cc = v.get("codecarbon") if isinstance(v.get("codecarbon"), dict) else {}
        out[k] = {
            "status": v.get("status"),
            "gpus": v.get("gpus"),
            "estimate_kwh": (v.get("estimate") or {}).get("kwh"),
            "codecarbon_kwh": cc.get("kwh"),
            "codecarbon_gpu_kwh": cc.get("gpu_kwh"),
            "codecarbon_measurement": cc.get("measurement"),
            "codecarbon_error": v.get("codecarbon_error"),
        }
    return out


def test_pipeline_run_on_fixture(request, device, auto_choice, gpu_sizes, gpu_work, record_figure, assert_checks):
    s = gpu_sizes
    run_dir = gpu_work / "fixture_run"
    target = gpu_work / "target"
    record_figure("target", build_target(target, s.target_classes, s.target_train, s.target_val))
    overrides = merge_overrides(fixture_overrides(s, run_dir, gpu_work) + transfer_target_overrides(target))
    record_figure("command", "python -m pipeline.run " + " ".join(overrides))
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PIPELINE_PROGRESS": "off"}
    env.setdefault("PIPELINE_CACHE_DIR", str(gpu_work / "cache"))
    limit = request.node.get_closest_marker("timeout").args[0]
    log = gpu_work / "fixture_pipeline.log"
    t0 = time.perf_counter()
    try:
        rc = _run(
            [sys.executable, "-m", "pipeline.run", *overrides], env, gpu_work / "fixture_pipeline.out", log, max(10, limit - 10)
        )
    finally:
        record_figure("wall_seconds", round(time.perf_counter() - t0, 2), "s")
    stderr = log.read_text(errors="replace")
    if rc != 0:
        record_figure("stderr_tail", stderr[-4000:])
    out = _last_json((gpu_work / "fixture_pipeline.out").read_text(errors="replace")) or {}
    energy_file = run_dir / "run" / "energy.json"
    energy = json.loads(energy_file.read_text()) if energy_file.exists() else {}
    mans = {st: read_manifest(stage_dir(run_dir, st)) or {} for st in STAGES}
    pc, tc = mans["pretrain"].get("counts") or {}, mans["transfer"].get("counts") or {}
    keys = ("device", "precision", "channels_last", "steps", "images_per_second", "data_wait_fraction", "final_loss")
    pretrain = {k: pc.get(k) for k in (*keys, "num_classes", "hardware")}
    # (the transfer manifest may hold one block per target: the first of each key)
    keys = ("device", "rows", "hardware", "linear_probe_pretrained_top1", "finetune_gain_top1")
    transfer = {k: _first(tc, k) for k in keys}
    stage_seconds = {k: v.get("wall_seconds") for k, v in energy.items()}
    record_figure("returncode", rc)
    record_figure("stages", out.get("stages"))
    record_figure("report_written", bool(out.get("report")) and (run_dir / "report.md").exists())
    record_figure("stage_seconds", stage_seconds, "s")
    man_secs = {st: None if m.get("seconds") is None else round(m["seconds"], 2) for st, m in mans.items()}
    record_figure("manifest_seconds", man_secs, "s")
    record_figure("energy", _energy(energy))
    record_figure("pretrain", pretrain)
    record_figure("transfer", transfer)
    record_figure("vocab_kind", ((mans["vocab"].get("config") or {}).get("vocab") or {}).get("kind"))
    record_figure("wordnet_dir_exists", (gpu_work / "no_wordnet").exists())
    secs = ", ".join(f"{k} {v:.1f}" for k, v in stage_seconds.items() if v is not None)
    record_figure(
        "summary",
        f"rc {rc}; stages s: {secs}; pretrain {pc.get('device')} {pc.get('precision')} {pc.get('images_per_second')} img/s; "
        f"transfer {transfer['device']}, {transfer['rows']} rows",
    )
    want = device.type
    got = (pc.get("hardware") or {}).get("precision_choice") or {}
    # the policy's auto; on a CPU with native bf16 a trial picks the faster of fp32 and bf16 (img/s per candidate)
    trial = got.get("trial") or {}
    expect = max(trial, key=trial.get).split("_")[0] if trial else auto_choice.precision
    assert_checks(
        {
            "exit status 0": rc == 0,
            "every stage ran": out.get("stages") == dict.fromkeys(STAGES, "ran"),
            f"pretrain on {want}": str(pc.get("device", "")).startswith(want),
            f"transfer on {want}": str(transfer["device"] or "").startswith(want),
            "no WordNet needed (vocab.kind=raw, wordnet_dir absent)": not (gpu_work / "no_wordnet").exists(),
            f"pretrain precision = the policy's ({'trial winner' if trial else 'auto'}: {expect})": got.get("precision")
            == expect,
        }
    )
