"""Gradient accumulation: ``accum`` micro-batches per optimizer step give the update of one large batch.

Both runs go through the real pretraining loop (:func:`pipeline.train.train_loop.train`): real
shards of the fixture corpus (:class:`pipeline.train.loader.ShardStream`, train transform), the
real loss (:func:`pipeline.train.losses.make_loss`), the loop's loss scaling
(:func:`pipeline.train.losses.microbatch_loss_scale`), the real optimizer and lr schedule.

The model has no BatchNorm on purpose: BN in training mode normalizes each micro-batch with its
own statistics, so a 4-image micro-batch and the same 4 images inside an 8-image batch give
different activations and the two runs must not agree exactly; without BN the forward pass of
each image does not depend on the other images of its batch, and the accumulated gradient of
the scaled micro-batch losses is mathematically the gradient of the large batch's mean loss
(Goyal et al. 2017, sec. 3): only float32 summation order differs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import PretrainConfig
from pipeline.io.shards import iter_metadata, shard_paths
from pipeline.train import train_loop
from pipeline.train.distributed import DistInfo
from pipeline.train.epoch_plan import SampleIndex
from pipeline.train.loader import ShardStream
from pipeline.train.losses import make_loss
from pipeline.train.optim import make_optimizer, make_schedule
from pipeline.train.recipe import accumulation
from pipeline.train.train_loop import LoopSettings, LoopState, steps_in_epoch, train

N_SAMPLES, CLASSES, SIZE, STEPS = 64, 5, 32, 2
LARGE = 8  # images per optimizer step


def _index(run_dir) -> tuple[SampleIndex, dict]:
    """The first N_SAMPLES fixture samples, one class each (N divisible by the batch sizes: aligned steps)."""
    paths = shard_paths(run_dir)
    keys = np.array(sorted(k for _, k, _ in iter_metadata(paths)))[:N_SAMPLES]
    assert len(keys) == N_SAMPLES
    n = len(keys)
    return (
        SampleIndex(keys, np.arange(n + 1), np.arange(n, dtype=np.int64) % CLASSES, np.ones(n)),
        {int(p.stem): p for p in paths},
    )


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES))


def _train(index, shards, tmp_path, batch_size: int) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """(weights after STEPS optimizer steps of LARGE images, keys trained on in order, accum) for ``batch_size``."""
    pt = dataclasses.replace(
        PretrainConfig(),
        batch_size=batch_size,
        global_batch=LARGE,
        epochs=1,
        image_size=SIZE,
        checkpoint_every_steps=10**6,
        eval_every_steps=0,
        progress=False,
        audit_data=True,
    )
    _, accum = accumulation(pt.batch_size, pt.global_batch, world=1)
    stream = ShardStream(shards, index, seed=3, rank=0, world=1, batch_size=batch_size, image_size=SIZE)
    total = steps_in_epoch(stream.set_epoch(0).steps, accum)
    model = _model()
    optimizer = make_optimizer(model, 0.5, momentum=pt.momentum, nesterov=pt.nesterov, weight_decay=pt.weight_decay)
    scheduler = make_schedule(optimizer, "cosine", total, 0, 0.5, 0.5)
    settings = LoopSettings(
        pt,
        accum=accum,
        total_steps=total,
        num_classes=CLASSES,
        autocast_dtype=None,
        channels_last=False,
        workers=0,
        metrics_file=tmp_path / f"metrics_{batch_size}.jsonl",
    )
    stats = train(
        model=model,
        ddp_model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=make_loss("softmax"),
        stream=stream,
        info=DistInfo(0, 1, 0, torch.device("cpu"), None),
        settings=settings,
        state=LoopState(),
        save=lambda st: None,
        run_eval=lambda step: None,
        max_steps=STEPS,
    )
    assert stats["steps"] == STEPS
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, stats["seen_keys"], accum


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def one_large_batch(ingested_fixture, tmp_path_factory):
    index, shards = _index(ingested_fixture)
    weights, keys, accum = _train(index, shards, tmp_path_factory.mktemp("large"), batch_size=LARGE)
    assert accum == 1
    return index, shards, weights, keys


@pytest.mark.parametrize("micro", [4, 2])
def test_accumulated_micro_batches_give_the_large_batch_update(one_large_batch, tmp_path, micro):
    index, shards, large, large_keys = one_large_batch
    start = _model().state_dict()
    assert _max_diff(large, start) > 1e-3, "the optimizer steps must move the weights for the comparison to mean anything"
    acc, acc_keys, accum = _train(index, shards, tmp_path, batch_size=micro)
    assert accum == LARGE // micro > 1
    assert acc_keys == large_keys == acc_keys[: STEPS * LARGE], "both runs must train on the same images, in order"
    assert _max_diff(acc, large) < 1e-5


def test_a_wrong_loss_scale_breaks_the_equality(one_large_batch, tmp_path, monkeypatch):
    """The loop scales each micro-batch loss with ``microbatch_loss_scale``: forgetting the 1/accum of the
    accumulation (every micro-batch mean counted fully) doubles the gradient, and the weights differ."""
    index, shards, large, _ = one_large_batch
    calls = []

    def unscaled(micro_batch_size, global_batch_size, world_size=1, ranks_averaged=True):
        calls.append((micro_batch_size, global_batch_size, world_size))
        return 1.0

    monkeypatch.setattr(train_loop, "microbatch_loss_scale", unscaled)
    wrong, _, accum = _train(index, shards, tmp_path, batch_size=4)
    assert accum == 2 and calls and all(c == (4, LARGE, 1) for c in calls)
    assert _max_diff(wrong, large) > 1e-3
