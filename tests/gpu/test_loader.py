"""Part 4: shards of the fixture corpus (ingest, dedup, vocab in process), then one epoch of
:class:`pipeline.train.loader.ShardStream` through :func:`pipeline.train.loader.make_loader`
with pinned memory on CUDA, each batch copied ``non_blocking`` and normalized on the device."""

from __future__ import annotations

import math
import time

import pytest
import torch

from benchmarks.gpu_parts import compose_config, fixture_overrides, merge_overrides, sync
from pipeline.io.shards import shard_paths
from pipeline.run import run_pipeline
from pipeline.system import thread_plan
from pipeline.train.loader import ShardStream, make_loader
from pipeline.train.sample_split import build_indexes
from pipeline.vision.transforms import normalize

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(90)]


def test_pinned_loader_epoch(device, hw_facts, gpu_sizes, gpu_work, record_figure, assert_checks):
    s = gpu_sizes
    run_dir = gpu_work / "loader_run"
    t0 = time.perf_counter()
    prep = [
        "run.stages=[ingest,dedup,vocab]",
        "run.report=false",
        "energy.enabled=false",
        f"ingest.workers={s.prep_workers}",
        f"dedup.workers={s.prep_workers}",
    ]
    stages = run_pipeline(compose_config(merge_overrides(fixture_overrides(s, run_dir, gpu_work) + prep)))["stages"]
    prep_s = time.perf_counter() - t0
    train_idx, _, labels = build_indexes(run_dir, "sqrt", 0.0)
    shards = {int(p.stem): p for p in shard_paths(run_dir)}
    stream = ShardStream(
        shards,
        train_idx,
        seed=0,
        rank=0,
        world=1,
        batch_size=s.loader_batch,
        image_size=s.loader_size,
        normalize_in_workers=False,
    )
    plan = stream.set_epoch(0)
    if s.loader_workers is not None:
        workers = s.loader_workers
    else:
        workers = max(1, min(thread_plan(device.type, hw_facts.cores).workers, plan.steps))
    pin = s.pin_memory and device.type == "cuda"
    n_img = n_batches = pinned = 0
    first_s = None
    checksum = torch.zeros((), device=device)
    sync(device)
    t1 = time.perf_counter()
    for batch in make_loader(stream, workers, pin_memory=pin):
        if first_s is None:
            first_s = time.perf_counter() - t1
        imgs = batch["images"]
        pinned += int(imgs.is_pinned()) if pin else 0
        x = normalize(imgs.to(device, non_blocking=True))
        lab = batch["labels"].to(device, non_blocking=True)
        checksum += x.float().mean() + (lab >= 0).sum()
        n_img += imgs.shape[0]
        n_batches += 1
    sync(device)
    epoch_s = time.perf_counter() - t1
    ips = round(n_img / epoch_s, 1) if epoch_s > 0 else None
    record_figure("prepare_stages", stages)
    record_figure("prepare_seconds", round(prep_s, 2), "s")
    record_figure("shards", len(shards))
    record_figure("samples", int(len(train_idx.keys)))
    record_figure("classes", int(labels.num_classes))
    record_figure("setting", f"batch {s.loader_batch}, {s.loader_size} px, {workers} workers, pin_memory={pin}")
    record_figure("batches", n_batches)
    record_figure("planned_batches", int(plan.steps))
    record_figure("images", n_img)
    record_figure("pinned_batches", pinned)
    record_figure("first_batch_seconds", round(first_s or 0.0, 3), "s")
    record_figure("epoch_seconds", round(epoch_s, 3), "s")
    record_figure("images_per_second", ips, "img/s")
    record_figure(
        "summary",
        f"{n_img} images in {n_batches} batches ({s.loader_size} px), {workers} workers, pinned {pinned}/{n_batches}: "
        f"{ips} img/s (first batch {first_s or 0:.2f} s); shards prepared in {prep_s:.1f} s",
    )
    checks = {
        "all planned batches arrived": n_batches == plan.steps and n_img > 0,
        "finite device checksum": math.isfinite(float(checksum)),
    }
    if pin:
        checks["every batch pinned"] = pinned == n_batches
    assert_checks(checks)
