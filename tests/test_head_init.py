"""The LP-FT head (pipeline.evaluation.head_init): a fitted probe folded into the fine-tuning classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.evaluation.head_init import linear_from_probe
from pipeline.evaluation.linear_probe import fit_probe


def _blobs(n_classes: int, seed: int = 0, n: int = 60, d: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, d))
    y = np.arange(n) % n_classes
    x = centres[y] + rng.normal(0, 1, (n, d)) * rng.uniform(0.5, 4, d) + rng.uniform(-5, 5, d)  # unscaled, off-centre
    return x.astype(np.float32), y.astype(np.int64)


@pytest.mark.parametrize("n_classes", [2, 5])
def test_the_folded_head_computes_the_probes_logits_on_raw_features(n_classes):
    x, y = _blobs(n_classes)
    probe = fit_probe(x, y, [0.1, 1.0], num_classes=n_classes, seed=0)
    lin = probe.model
    W, b = linear_from_probe(lin.coef, lin.intercept, lin.classes, lin.std.mean, lin.std.scale, n_classes)
    assert W.shape == (n_classes, x.shape[1]) and b.shape == (n_classes,) and W.dtype == torch.float32
    head = torch.nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(W)
        head.bias.copy_(b)
        logits = head(torch.from_numpy(x)).double().numpy()
    want = probe.scores(x)
    if n_classes == 2:  # the probe's binary logits are [0, z]: the same up to a shift per row
        np.testing.assert_allclose(logits[:, 1] - logits[:, 0], want[:, 1] - want[:, 0], rtol=1e-4, atol=1e-3)
    else:
        np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-3)
    assert (logits.argmax(1) == want.argmax(1)).all()


def test_classes_the_probe_never_saw_start_unlikely_but_learnable():
    x, y = _blobs(3)
    y = np.where(y == 1, 2, y)  # class 1 of 4 has no training image, nor has class 3
    probe = fit_probe(x, y, [1.0], num_classes=4, seed=0)
    lin = probe.model
    W, b = linear_from_probe(lin.coef, lin.intercept, lin.classes, lin.std.mean, lin.std.scale, 4)
    assert torch.all(W[[1, 3]] == 0) and float(b[1]) == float(b[3]) == float(b[[0, 2]].min())


def test_batchnorm_statistics_are_set_to_the_images_before_the_head_probe():
    from types import SimpleNamespace

    from pipeline.evaluation.head_init import recalibrate_bn
    from pipeline.train.models import create_model
    from pipeline.vision.transforms import normalize

    torch.manual_seed(0)
    model = create_model("resnext_mini", num_classes=0)  # a random init: running statistics 0 and 1
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    batches = [(images[:5], torch.zeros(5)), (images[5:], torch.zeros(7))]
    st = SimpleNamespace(device=torch.device("cpu"), channels_last=False)
    recalibrate_bn(model, batches, st)
    assert not model.training
    with torch.no_grad():
        first = model.conv1(normalize(images))  # what the first BatchNorm normalizes
    per_batch = torch.stack([first[:5].mean((0, 2, 3)), first[5:].mean((0, 2, 3))])
    # update_bn's cumulative average (BatchNorm momentum None): the plain mean of the two batches' means
    want = per_batch.mean(0)
    assert torch.allclose(model.bn1.running_mean, want, atol=1e-4)
    assert not torch.allclose(model.bn1.running_var, torch.ones_like(model.bn1.running_var))
