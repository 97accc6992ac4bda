"""benchmarks.transfer_projection's arithmetic: the imagenet1k recipe's workload counted by hand, and its projection."""

from __future__ import annotations

import sys

from conftest import REPO, make_cfg

if str(REPO) not in sys.path:  # benchmarks/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO))
from benchmarks.transfer_projection import IMAGENET_TRAIN, IMAGENET_VAL, project, workload  # noqa: E402
from pipeline.config import transfer_recipe  # noqa: E402


def test_imagenet1k_workload_and_projection():
    r = transfer_recipe(make_cfg("+transfer=imagenet1k").transfer, "imagenet1k")
    w = workload(r)
    # lr selection: 3 lrs x 2 epochs x 200k images; fine-tuning: 2 inits x 30 epochs x (100k + 100k + all) images
    # (the 10- and 100-per-class settings' epochs are min_epoch_images = 100k images)
    assert w["train"] == 3 * 2 * 200_000 + 2 * 30 * (100_000 + 100_000 + IMAGENET_TRAIN)
    # val scored after every epoch of the 6 runs, raw weights and the weight average
    assert w["forward_test_size"] == 6 * 30 * IMAGENET_VAL * 2
    # probe features of both inits (all training images, val) and the lr selection's hold-out (20%) scored 3 times
    assert w["forward_train_size"] == 2 * (IMAGENET_TRAIN + IMAGENET_VAL) + 3 * (IMAGENET_TRAIN - int(IMAGENET_TRAIN * 0.8))
    assert w["probe_fits"] == [(10_000, 10), (100_000, 10), (IMAGENET_TRAIN, 1)]
    measured = {"train": 3.0, "forward": 1.0}
    one, four = (project(r, measured, "resnext101_32x8d", g, 1.0) for g in (8, 32))
    assert 3.5 < one["total_hours"] / four["total_hours"] <= 4.0  # 4x the GPUs, at Goyal et al.'s efficiency
    big = project(r, measured, "resnext101_32x48d", 8, 1.0)
    assert big["finetune_and_features_hours"] > 5 * one["finetune_and_features_hours"]  # ~9x the mult-adds
    assert one["probe_features_gb_per_rank"] == round(4 * IMAGENET_TRAIN / 8 * 3584 / 1e9, 2)
