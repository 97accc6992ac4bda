"""The device/precision/thread policy with the hardware facts mocked both ways, and what a run records."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.system import HardwareFacts, available_cores, thread_plan
from pipeline.train.precision import PrecisionChoice, resolve_for_run, resolve_precision
from pipeline.train.precision_trial import make_step_trial

AVX2 = HardwareFacts("cpu", "AVX2", False, cpu_model="mock AVX2 CPU", cores=2)
AMX = HardwareFacts("cpu", "AVX512", True, cpu_model="mock AMX CPU", cores=2)
H100 = HardwareFacts("cuda", "AVX512", False, gpu_name="mock H100", gpu_capability=(9, 0), gpu_bf16=True, cores=16)
T4 = HardwareFacts("cuda", "AVX2", False, gpu_name="mock T4", gpu_capability=(7, 5), gpu_bf16=False, cores=8)
P100 = HardwareFacts("cuda", "AVX2", False, gpu_name="mock P100", gpu_capability=(6, 0), gpu_bf16=False, cores=8)


class Trial:
    """A fake timed trial: fixed img/s per (precision, channels_last), recording the calls."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, precision, channels_last):
        self.calls.append((precision, channels_last))
        return self.table[(precision, channels_last)]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))


def test_avx2_cpu_never_tries_bf16_and_picks_the_faster_layout():
    trial = Trial({("fp32", True): 142.0, ("fp32", False): 95.0})
    c = resolve_precision("auto", None, AVX2, trial=trial, cache_key={"model": "m"})
    assert (c.precision, c.channels_last, c.autocast_dtype) == ("fp32", True, None)
    assert all(p == "fp32" for p, _ in trial.calls)
    assert "no native bf16" in c.reason and c.trial == {"fp32_cl": 142.0, "fp32": 95.0}
    trial2 = Trial({("fp32", True): 50.0, ("fp32", False): 95.0})  # a machine where NCHW wins
    c2 = resolve_precision("auto", None, AVX2, trial=trial2, cache_key={"model": "other"})
    assert (c2.precision, c2.channels_last) == ("fp32", False)


def test_native_bf16_cpu_takes_bf16_only_when_the_trial_shows_it_faster():
    fast = Trial({("fp32", True): 140.0, ("fp32", False): 117.0, ("bf16", True): 230.0, ("bf16", False): 180.0})
    c = resolve_precision("auto", None, AMX, trial=fast, cache_key={"model": "a"})
    assert (c.precision, c.channels_last, c.autocast_dtype) == ("bf16", True, torch.bfloat16)
    slow = Trial({("fp32", True): 140.0, ("fp32", False): 117.0, ("bf16", True): 100.0, ("bf16", False): 90.0})
    c = resolve_precision("auto", True, AMX, trial=slow, cache_key={"model": "b"})
    assert (c.precision, c.channels_last) == ("fp32", True)
    assert {p for p, _ in slow.calls} == {"fp32", "bf16"} and all(cl for _, cl in slow.calls)


def test_candidates_within_the_trial_margin_resolve_to_the_preferred_one():
    """The 2026-12-06 coin flip (NCHW 166 vs channels_last 163 img/s) now always gives channels_last; a
    clearly faster candidate still wins; bf16 must beat fp32 by more than the margin."""
    close = Trial({("fp32", True): 163.0, ("fp32", False): 166.0})
    c = resolve_precision("auto", None, AVX2, trial=close, cache_key={"model": "close"})
    assert (c.precision, c.channels_last) == ("fp32", True) and "within 10% of the fastest" in c.reason
    clear = Trial({("fp32", True): 163.0, ("fp32", False): 200.0})
    assert resolve_precision("auto", None, AVX2, trial=clear, cache_key={"model": "clear"}).channels_last is False
    near = Trial({("fp32", True): 140.0, ("fp32", False): 117.0, ("bf16", True): 150.0, ("bf16", False): 120.0})
    c = resolve_precision("auto", None, AMX, trial=near, cache_key={"model": "near"})
    assert (c.precision, c.channels_last) == ("fp32", True)


def test_trial_verdict_is_cached_per_machine_and_model():
    t = Trial({("fp32", True): 142.0, ("fp32", False): 95.0})
    a = resolve_precision("auto", None, AVX2, trial=t, cache_key={"model": "m", "batch": 64})
    n = len(t.calls)
    b = resolve_precision("auto", None, AVX2, trial=t, cache_key={"model": "m", "batch": 64})
    assert len(t.calls) == n and a.key() == b.key() and a.reason == b.reason
    resolve_precision("auto", None, AVX2, trial=t, cache_key={"model": "m", "batch": 32})
    assert len(t.calls) == 2 * n  # another batch size is another verdict


def test_forced_bf16_on_an_emulating_cpu_runs_with_a_warning_that_gives_the_slowdown():
    t = Trial({("bf16", True): 11.0, ("fp32", True): 142.0})
    with pytest.warns(RuntimeWarning, match=r"emulates it, 12\.9x slower than fp32 \(11 vs 142 img/s"):
        c = resolve_precision("bf16", None, AVX2, trial=t, where="pretrain.precision")
    assert c.precision == "bf16" and c.autocast_dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 autocast is not supported for training on the CPU"):
        resolve_precision("fp16", None, AVX2)


def test_cuda_choices_with_and_without_bf16():
    c = resolve_precision("auto", None, H100)
    assert (c.precision, c.channels_last, c.tf32, c.grad_scaler) == ("bf16", True, True, False)
    c = resolve_precision("auto", None, T4)
    assert (c.precision, c.channels_last, c.tf32, c.grad_scaler) == ("fp16", True, False, True)
    assert c.grad_scaler_for("cpu").is_enabled()  # loss scaling is switched on for fp16
    c = resolve_precision("auto", None, P100)
    assert (c.precision, c.channels_last, c.grad_scaler) == ("fp32", False, False)
    with pytest.raises(ConfigError, match="bf16 is not supported on mock T4"):
        resolve_precision("bf16", None, T4, where="transfer.precision")
    assert resolve_precision("fp32", False, H100).key() == {"precision": "fp32", "channels_last": False, "tf32": True}


def test_resumed_run_keeps_its_recorded_precision():
    started = resolve_precision("auto", None, H100).to_dict()  # bf16 on a bf16 GPU
    kept = resolve_for_run("auto", None, torch.device("cuda"), recorded=started, facts=H100)
    assert kept.to_dict() == started  # the record is kept as it was: resumed outputs equal uninterrupted ones
    with pytest.raises(ConfigError, match="this run started in bf16 .* cannot resume here.*run.force"):
        resolve_for_run("auto", None, torch.device("cuda"), recorded=started, facts=T4)
    # on a CPU that emulates bf16 the resumed run still runs (with the warning), never silently switches to fp32
    with pytest.warns(RuntimeWarning):
        on_cpu = resolve_for_run("auto", None, torch.device("cpu"), recorded=started, facts=AVX2)
    assert on_cpu.precision == "bf16"
    assert PrecisionChoice.from_dict(json.loads(json.dumps(started))).key() == resolve_precision("auto", None, H100).key()


def test_available_cores_reads_affinity_cgroup_and_slurm():
    assert available_cores(environ={}, affinity=16, cgroup=None) == 16
    assert available_cores(environ={}, affinity=16, cgroup=3.5) == 4
    assert available_cores(environ={"SLURM_CPUS_PER_TASK": "8"}, affinity=64, cgroup=None) == 8
    assert available_cores(environ={}, affinity=2, cgroup=0.5) == 1
    assert available_cores() >= 1


def test_thread_plan_splits_cores_by_device_and_local_ranks():
    assert (thread_plan("cpu", 2).threads, thread_plan("cpu", 2).workers) == (2, 1)
    assert (thread_plan("cpu", 16).threads, thread_plan("cpu", 16).workers) == (16, 4)
    assert (thread_plan("cpu", 16, local_world=2).threads, thread_plan("cpu", 16, local_world=2).workers) == (8, 2)
    g = thread_plan("cuda", 64, local_world=8)  # a SLURM node: 8 GPUs, 8 cores each
    assert (g.threads, g.workers, g.cores) == (2, 6, 8)
    o = thread_plan("cpu", 2, threads=1, workers=0)
    assert (o.threads, o.workers) == (1, 0) and "set" in o.reason


@pytest.mark.slow
def test_step_trial_measures_a_real_model_and_leaves_the_rng_alone():
    from pipeline.train.models import create_model

    trial = make_step_trial(
        lambda: create_model("resnext_mini", num_classes=5),
        batch_size=4,
        image_size=32,
        num_classes=5,
        device=torch.device("cpu"),
        steps=1,
        warmup=1,
    )
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ips = trial("fp32", True)
    assert ips > 0 and torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_pretrain_manifest_and_checkpoint_record_the_choice(prepared_fixture, tmp_path):
    from conftest import REPO, copy_run, pretrain_overrides

    run = copy_run(prepared_fixture, tmp_path / "run")
    cmd = [
        sys.executable,
        "-m",
        "pipeline.pretrain",
        f"run_dir={run}",
        "data=fixture",
        *pretrain_overrides(max_steps=2, heldout_fraction=0.1),
    ]
    env = {**__import__("os").environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    counts = json.loads((run / "pretrain" / "manifest.json").read_text())["counts"]
    hw = counts["hardware"]
    assert counts["precision"] == hw["precision_choice"]["precision"]
    assert hw["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert hw["threads"] == 1 and hw["workers"] == 0 and hw["precision_choice"]["reason"]
    if not hw["precision_choice"]["trial"]:
        pytest.fail("precision=auto with channels_last=auto must have run a timed trial on the CPU")
    assert (tmp_path / "cache" / "precision_trials.json").exists()
    from pipeline.train.checkpoint import latest_checkpoint, load_checkpoint
    from pipeline.train.models import create_model

    ck = load_checkpoint(
        latest_checkpoint(run / "pretrain" / "checkpoints"),
        create_model("resnext_mini", num_classes=counts["num_classes"]),
        restore_rng=False,
    )
    assert ck["extra"]["precision_choice"]["precision"] == counts["precision"]


def test_stage_key_pins_what_auto_resolved_to(tmp_path):
    from pipeline.io.atomic import write_json
    from pipeline.orchestration.keys import _pin_numerics, recorded_numerics

    (tmp_path / "pretrain").mkdir()
    rec = resolve_precision("auto", None, H100).to_dict()
    write_json(tmp_path / "pretrain" / "manifest.json", {"counts": {"hardware": {"precision_choice": rec}}})
    got = recorded_numerics(tmp_path, "pretrain")
    assert _pin_numerics({"precision": "auto", "channels_last": None}, got) == _pin_numerics(
        {"precision": "bf16", "channels_last": True}, got
    )  # auto = what the folder has
    assert _pin_numerics({"precision": "fp32", "channels_last": None}, got)["precision"] == "fp32"  # explicit: redo


@pytest.mark.slow
def test_compile_true_trains_on_cpu_with_inductor(prepared_fixture, tmp_path):
    """``pretrain.compile=true`` (torch.compile, inductor + gcc on the CPU) trains, checkpoints the unwrapped
    model and exports a trunk that loads into the eager model."""
    from conftest import REPO, copy_run

    run = copy_run(prepared_fixture, tmp_path / "run")
    cmd = [
        sys.executable,
        "-m",
        "pipeline.pretrain",
        f"run_dir={run}",
        "data=fixture",
        "pretrain.model=resnext_mini",
        "pretrain.image_size=32",
        "pretrain.batch_size=8",
        "pretrain.epochs=1",
        "pretrain.max_steps=2",
        "pretrain.workers=0",
        "pretrain.progress=false",
        "pretrain.heldout_fraction=0",
        "pretrain.threads=2",
        "pretrain.compile=true",
        "pretrain.precision=fp32",
        "pretrain.channels_last=true",
    ]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    man = json.loads((run / "pretrain" / "manifest.json").read_text())
    assert man["counts"]["steps"] == 2 and man["counts"]["hardware"]["compile"] is True
    from safetensors.torch import load_file

    from pipeline.train.models import create_model

    trunk = load_file(str(run / "pretrain" / "trunk.safetensors"))
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in trunk)
    create_model("resnext_mini", num_classes=0).load_state_dict(trunk, strict=True)
