"""Part 2: bf16 + channels_last, fp16 + GradScaler, fp32 (TF32 on CUDA): a few training steps each of resnext_mini."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.gpu_parts import choice_for, finite, random_batch, train_steps
from pipeline.train.losses import make_loss
from pipeline.train.models import create_model
from pipeline.train.optim import make_optimizer

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(90)]

EXPECT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@pytest.mark.parametrize("prec", ["bf16", "fp16", "fp32"])
def test_precision_steps(prec, device, hw_facts, gpu_sizes, record_figure, assert_checks):
    s = gpu_sizes
    choice = choice_for(prec, True, hw_facts, device)
    choice.apply_global()
    torch.manual_seed(0)
    model = create_model("resnext_mini", num_classes=s.mini_classes).to(device).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    scaler = choice.grad_scaler_for(device.type)
    loss_fn = make_loss("softmax")
    x, y = random_batch(device, s.mini_batch, s.mini_size, s.mini_classes, True)
    train_steps(model, opt, x, y, choice, device, scaler, loss_fn, s.mini_warmup)  # cuDNN autotune
    losses, secs, dtype = train_steps(model, opt, x, y, choice, device, scaler, loss_fn, s.mini_steps)
    ips = s.mini_batch * s.mini_steps / secs
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    record_figure("images_per_second", round(ips, 1), "img/s")
    record_figure("losses", [round(v, 5) for v in losses])
    record_figure("logits_dtype", str(dtype).replace("torch.", ""))
    record_figure("grad_scaler", scaler.is_enabled())
    record_figure("tf32_matmul", tf32)
    record_figure("choice", choice.to_dict())
    record_figure("setting", f"resnext_mini {s.mini_size}px batch {s.mini_batch}, {s.mini_steps} timed steps")
    checks = {
        "finite losses": finite(losses),
        f"logits in {EXPECT[prec]}": dtype == EXPECT[prec],
        "input channels_last": x.is_contiguous(memory_format=torch.channels_last),
        "weights channels_last": model.conv1.weight.is_contiguous(memory_format=torch.channels_last),
        "GradScaler enabled iff fp16": scaler.is_enabled() == (prec == "fp16"),
    }
    summary = f"{prec} {ips:.0f} img/s, loss {losses[-1]:.3f}"
    if scaler.is_enabled():
        scale = float(scaler.get_scale())
        record_figure("scale", scale)
        checks["scaler scale finite > 0"] = math.isfinite(scale) and scale > 0
        summary += f", scale {scale:.0f}"
    if device.type == "cuda":
        checks["TF32 flag as the policy says"] = tf32 == choice.tf32
    record_figure("summary", summary)
    assert_checks(checks)
