"""Part 1: the machine's facts, the precision policy's choice, the thread plan, versions; one trial of the choice."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sysconfig
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from pipeline.system import available_cores, thread_plan
from pipeline.train.models import create_model
from pipeline.train.precision_trial import make_step_trial

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(60)]


def _software() -> dict:
    """Versions, and what inductor's GPU kernels (triton) need at run time: a C compiler and Python.h."""
    out: dict = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "c_compiler": shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"),
        "python_h": (Path(sysconfig.get_paths()["include"]) / "Python.h").exists(),
    }
    with contextlib.suppress(Exception):
        import torchvision

        out["torchvision"] = torchvision.__version__
    with contextlib.suppress(Exception):
        import triton  # only on CUDA builds of torch

        out["triton"] = triton.__version__
    return out


def _gpu_info(dev: torch.device) -> dict:
    """Name, capability, memory (GiB), multiprocessors, driver and power limit (nvidia-smi) of a CUDA device."""
    out: dict = {}
    try:
        props = torch.cuda.get_device_properties(dev)
        free, _ = torch.cuda.mem_get_info(dev)
        out.update(
            gpu_name=props.name,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 2),
            gpu_free_gib=round(free / 2**30, 2),
            gpu_multiprocessors=props.multi_processor_count,
            gpu_count=torch.cuda.device_count(),
            bf16_supported=bool(torch.cuda.is_bf16_supported()),
        )
    except Exception as exc:  # a detail missing must not lose the rest of the facts
        out["gpu_info_error"] = f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(Exception):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,power.limit", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()[:200]
    return out


def test_facts_and_policy(device, hw_facts, auto_choice, gpu_sizes, record_figure, assert_checks):
    s, facts, auto = gpu_sizes, hw_facts, auto_choice
    plan = thread_plan(device.type, facts.cores)
    record_figure("describe", facts.describe())
    record_figure("facts", asdict(facts))
    record_figure("precision_choice", auto.to_dict())
    record_figure("thread_plan", asdict(plan))
    record_figure("available_cores", available_cores(), "cores")
    record_figure("os_cpu_count", os.cpu_count(), "cores")
    record_figure("software", _software())
    gpu = _gpu_info(device) if device.type == "cuda" else {}
    if gpu:
        record_figure("gpu", gpu)
    trial = make_step_trial(
        lambda: create_model("resnext_mini", num_classes=s.mini_classes),
        batch_size=s.mini_batch,
        image_size=s.mini_size,
        num_classes=s.mini_classes,
        device=device,
        steps=s.trial_steps,
        warmup=s.trial_warmup,
    )
    ips = trial(auto.precision, auto.channels_last)
    layout = " channels_last" if auto.channels_last else ""
    record_figure("trial_images_per_second", round(ips, 1), "img/s")
    record_figure("trial", f"make_step_trial resnext_mini {s.mini_size}px batch {s.mini_batch}, {auto.precision}{layout}")
    record_figure(
        "summary",
        f"{facts.describe()}; auto -> {auto.precision}{layout}{' tf32' if auto.tf32 else ''}; torch {torch.__version__} "
        f"CUDA {torch.version.cuda}; {gpu.get('gpu_memory_gib', '-')} GiB; trial {ips:.0f} img/s; {plan.workers} workers",
    )
    checks = {"trial img/s > 0": ips > 0, "choice device matches": auto.device == device.type}
    if device.type == "cuda":
        cap = facts.gpu_capability or (0, 0)
        checks["auto is bf16 on a bf16 GPU"] = (auto.precision == "bf16") == bool(facts.gpu_bf16)
        checks["channels_last on a tensor-core GPU"] = auto.channels_last == (cap >= (7, 0))
        checks["TF32 on sm >= 8.0"] = auto.tf32 == (cap >= (8, 0))
    assert_checks(checks)
