"""Part 3: torch.compile of the resnext_mini training step against eager (the pipeline's ``pretrain.compile=true``)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from benchmarks.gpu_parts import finite, random_batch, train_steps
from pipeline.train.losses import make_loss
from pipeline.train.models import create_model
from pipeline.train.optim import make_optimizer

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(150)]


def test_compiled_step_vs_eager(device, auto_choice, gpu_sizes, record_figure, assert_checks):
    s, choice = gpu_sizes, auto_choice
    torch.manual_seed(0)
    model = create_model("resnext_mini", num_classes=s.mini_classes).to(device)
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    scaler = choice.grad_scaler_for(device.type)
    loss_fn = make_loss("softmax")
    x, y = random_batch(device, s.compile_batch, s.compile_size, s.mini_classes, choice.channels_last)
    n, b = s.compile_steps, s.compile_batch

    def steps(m, k):
        return train_steps(m, opt, x, y, choice, device, scaler, loss_fn, k)

    steps(model, s.compile_warmup)
    eager_losses, eager_s, _ = steps(model, n)
    torch._dynamo.reset()
    with contextlib.suppress(Exception):
        torch._dynamo.utils.counters.clear()
    try:
        compiled = torch.compile(model, backend=s.compile_backend)
        first_losses, compile_s, _ = steps(compiled, 1)
        steps(compiled, s.compile_warmup)
        comp_losses, comp_s, _ = steps(compiled, n)
        breaks = None
        with contextlib.suppress(Exception):
            breaks = int(sum(torch._dynamo.utils.counters["graph_break"].values()))
    finally:
        torch._dynamo.reset()
    eager_ips, comp_ips = b * n / eager_s, b * n / comp_s
    record_figure("setting", f"resnext_mini {s.compile_size}px batch {b}, {choice.precision}, {n} timed steps")
    record_figure("backend", s.compile_backend)
    record_figure("compile_seconds_first_step", round(compile_s, 2), "s")
    record_figure("eager_images_per_second", round(eager_ips, 1), "img/s")
    record_figure("compiled_images_per_second", round(comp_ips, 1), "img/s")
    record_figure("speedup", round(comp_ips / eager_ips, 3), "x")
    record_figure("graph_breaks", breaks)
    record_figure(
        "summary",
        f"{s.compile_backend}: first step (compile) {compile_s:.1f} s; {comp_ips:.0f} img/s compiled vs "
        f"{eager_ips:.0f} eager ({comp_ips / eager_ips:.2f}x); graph breaks {breaks}",
    )
    assert_checks({"finite losses (eager and compiled)": finite(eager_losses + first_losses + comp_losses)})
