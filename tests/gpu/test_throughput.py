"""Part 6: pretraining img/s of ResNeXt-101 32x8d and 32x4d at 224 px against the published anchors.

Batch 64, halved on out-of-memory (recorded), bf16 autocast + channels_last, warm-up steps
dropped, synchronized timing: (a) a bare loop, (b) the pipeline's own loop over an
in-memory stream (:mod:`benchmarks.gpu_loops`); the dry run measures ``resnext_mini`` instead.
"""

from __future__ import annotations

import pytest

from benchmarks.gpu_check import ANCHORS
from benchmarks.gpu_loops import bare_loop, pipeline_loop
from benchmarks.gpu_parts import choice_for, free, with_oom_retry

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(180)]

LOOPS = {"bare": "bare loop", "pipeline": "pipeline.train.train_loop.train"}


def _describe(r: dict, ratio: float | None = None) -> str:
    """``312.5 img/s (batch 64, OOM at [128], 20.1 GiB peak, 0.97x bare)``."""
    extra = [f"batch {r['batch']}"]
    if r["oom_batches"]:
        extra.append(f"OOM at {r['oom_batches']}")
    if r.get("peak_memory_gib"):
        extra.append(f"{r['peak_memory_gib']} GiB peak")
    if ratio:
        extra.append(f"{ratio:.2f}x bare")
    return f"{r['images_per_second']} img/s ({', '.join(extra)})"


@pytest.mark.parametrize("target", ["resnext101_32x8d", "resnext101_32x4d"])
def test_pretraining_throughput(target, device, hw_facts, gpu_sizes, gpu_work, record_figure, assert_checks):
    s = gpu_sizes
    measured = dict(s.big_models)[target]
    choice = choice_for(s.big_precision, True, hw_facts, device)  # the dry run: what the CPU runs fast, without emulation
    choice.apply_global()
    kw = dict(size=s.big_size, classes=s.big_classes, steps=s.big_steps, warmup=s.big_warmup, dev=device, choice=choice)
    record_figure("measured_model", measured)
    record_figure(
        "setting",
        f"{s.big_size}px, {choice.precision}{' channels_last' if choice.channels_last else ''}, batch {s.big_batch} "
        f"requested (min {s.big_min_batch}), {s.big_warmup} warm-up + {s.big_steps} timed steps, {s.big_classes} classes",
    )
    bare = with_oom_retry(lambda b: bare_loop(measured, b, **kw), s.big_batch, s.big_min_batch, device)
    record_figure("bare", bare)
    free(device)
    pipe = with_oom_retry(lambda b: pipeline_loop(measured, b, work=gpu_work, **kw), bare["batch"], s.big_min_batch, device)
    record_figure("pipeline", pipe)
    ips = {"bare": bare["images_per_second"], "pipeline": pipe["images_per_second"]}
    ratio = round(ips["pipeline"] / ips["bare"], 3) if ips["bare"] and ips["pipeline"] else None
    record_figure("bare_images_per_second", ips["bare"], "img/s")
    record_figure("pipeline_images_per_second", ips["pipeline"], "img/s")
    record_figure("batch", pipe["batch"])
    record_figure("pipeline_over_bare", ratio, "x")
    vs_anchors, vs_text = {}, []
    for a in (a for a in ANCHORS if a["model"] == target):
        vs = {f"{k}_ratio": round(v / a["images_per_second"], 3) if measured == target and v else None for k, v in ips.items()}
        vs_anchors[a["id"]] = {"label": a["label"], "anchor_images_per_second": a["images_per_second"], **vs}
        if vs["bare_ratio"] is not None:
            vs_text.append(
                f"{a['label']} ({a['images_per_second']:g} img/s): bare {vs['bare_ratio']:.2f}x, "
                f"pipeline {(vs['pipeline_ratio'] or 0):.2f}x"
            )
    record_figure("vs_anchors", vs_anchors)
    record_figure("vs_anchor", "; ".join(vs_text) or ("n/a (dry run)" if measured != target else "-"))
    name = target if measured == target else f"{target} (dry run: {measured})"
    record_figure("summary", f"{name}: {LOOPS['bare']} {_describe(bare)}; {LOOPS['pipeline']} {_describe(pipe, ratio)}")
    assert_checks({"finite losses (bare and pipeline)": bare["losses_finite"] and pipe["losses_finite"]})
