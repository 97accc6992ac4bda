"""Losses (multi-label softmax, sigmoid BCE), loss scaling, param groups, LR rule and schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.train.losses import make_loss, microbatch_loss_scale, multilabel_softmax_loss, normalize_targets, sigmoid_bce_loss
from pipeline.train.models import create_model
from pipeline.train.optim import lr_at, make_optimizer, make_schedule, param_groups, resolve_milestones, scaled_lr

# ----------------------------------------------------------------------------- losses


def _multi_hot() -> torch.Tensor:
    t = torch.zeros(3, 5)
    t[0, [1, 3]] = 1  # k=2 -> 1/2 each
    t[1, 0] = 1  # k=1
    t[2, [0, 2, 4]] = 1  # k=3
    return t


def test_softmax_loss_matches_manual_soft_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 5)
    soft = _multi_hot() / _multi_hot().sum(1, keepdim=True)
    manual = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(multilabel_softmax_loss(logits, soft), manual)
    # hand-computed row 0: -(log p1 + log p3) / 2
    p = torch.softmax(logits[0], 0)
    row0 = -(p[1].log() + p[3].log()) / 2
    assert torch.allclose(multilabel_softmax_loss(logits, soft, reduction="none")[0], row0)
    # a multi-hot target is normalized inside: same loss as its soft target
    assert torch.allclose(multilabel_softmax_loss(logits, _multi_hot()), manual)
    assert torch.allclose(multilabel_softmax_loss(logits, soft, reduction="sum"), manual * 3)


def test_softmax_loss_one_hot_equals_cross_entropy():
    torch.manual_seed(1)
    logits = torch.randn(8, 13)
    labels = torch.randint(0, 13, (8,))
    one_hot = F.one_hot(labels, 13).float()
    assert torch.allclose(multilabel_softmax_loss(logits, one_hot), F.cross_entropy(logits, labels))


def test_softmax_loss_gradient_is_softmax_minus_target():
    torch.manual_seed(2)
    logits = torch.randn(3, 5, requires_grad=True)
    t = normalize_targets(_multi_hot())
    multilabel_softmax_loss(logits, t).backward()
    assert torch.allclose(logits.grad, (torch.softmax(logits.detach(), 1) - t) / 3, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_losses_finite_for_extreme_logits(dtype):
    logits = torch.tensor([[1e4, -1e4, 0.0, 3e4, -3e4], [-1e4] * 5, [8e4, 8e4, -8e4, 0, 1]])
    logits = logits.to(dtype).requires_grad_(True)
    for fn in (multilabel_softmax_loss, sigmoid_bce_loss):
        logits.grad = None
        loss = fn(logits, _multi_hot())
        loss.backward()
        assert torch.isfinite(loss) and loss.dtype == torch.float32
        assert torch.all(torch.isfinite(logits.grad))
    assert multilabel_softmax_loss(logits.detach(), _multi_hot()) > 1e3  # wrong and confident


def test_bce_matches_torch_with_sum_over_classes_mean_over_batch():
    torch.manual_seed(3)
    logits = torch.randn(3, 5)
    y = _multi_hot()
    ref = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / 3
    assert torch.allclose(sigmoid_bce_loss(logits, y), ref)
    assert torch.allclose(sigmoid_bce_loss(logits, normalize_targets(y)), ref)  # positives = t > 0
    assert torch.allclose(sigmoid_bce_loss(logits, y, reduction="sum"), ref * 3)


def test_make_loss_and_shape_errors():
    assert make_loss("softmax") is multilabel_softmax_loss
    assert make_loss("sigmoid") is sigmoid_bce_loss
    with pytest.raises(ValueError, match="softmax"):
        make_loss("focal")
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        multilabel_softmax_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_bce_loss(torch.zeros(2, 3), torch.zeros(2, 3), reduction="avg")


def test_microbatch_scaling_reproduces_global_batch_gradient():
    """Accumulating scaled micro-batch losses gives the gradient of the global-batch mean."""
    torch.manual_seed(4)
    x, t = torch.randn(10, 6), normalize_targets((torch.rand(10, 4) > 0.5).float() + 1e-3)
    lin = nn.Linear(6, 4)
    multilabel_softmax_loss(lin(x), t).backward()
    full = lin.weight.grad.clone()
    lin.weight.grad = None
    for sl in (slice(0, 4), slice(4, 7), slice(7, 10)):  # unequal micro-batches on one rank
        b = sl.stop - sl.start
        (multilabel_softmax_loss(lin(x[sl]), t[sl]) * microbatch_loss_scale(b, 10)).backward()
    assert torch.allclose(lin.weight.grad, full, atol=1e-6)
    # DDP averages over W ranks: b*W/B; a raw SUM all-reduce: b/B
    assert microbatch_loss_scale(24, 8064, world_size=336) == 1.0
    assert microbatch_loss_scale(8, 64, world_size=2) == 0.25
    assert microbatch_loss_scale(8, 64, world_size=2, ranks_averaged=False) == 0.125
    with pytest.raises(ValueError):
        microbatch_loss_scale(65, 64)


# ----------------------------------------------------------------------------- optimizer


def test_param_groups_on_mini_model():
    m = create_model("resnext_mini", num_classes=10)
    decay, no_decay = param_groups(m, 1e-4)
    assert (decay["name"], no_decay["name"]) == ("decay", "no_decay")
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    # [1,1,1,1] blocks: stem conv + 4 x (3 convs + 1 downsample conv); a BN after each conv
    assert len(convs) == len(bns) == 17
    assert len(no_decay["params"]) == 2 * len(bns) + 1  # gammas, betas, fc bias
    assert len(decay["params"]) == len(convs) + 1  # conv weights, fc weight
    n_no_decay = sum(p.numel() for p in no_decay["params"])
    assert n_no_decay == sum(b.weight.numel() + b.bias.numel() for b in bns) + 10
    assert n_no_decay + sum(p.numel() for p in decay["params"]) == sum(p.numel() for p in m.parameters())
    assert all(p.ndim == 1 for p in no_decay["params"]) and all(p.ndim > 1 for p in decay["params"])
    m.fc.requires_grad_(False)  # frozen parameters are left out
    d2, nd2 = param_groups(m, 1e-4)
    assert len(d2["params"]) == len(convs) and len(nd2["params"]) == 2 * len(bns)


def test_weight_decay_skips_bn_in_the_update():
    m = create_model("resnext_mini", num_classes=4)
    opt = make_optimizer(m, lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.5)
    assert isinstance(opt, torch.optim.SGD)
    with torch.no_grad():
        m.bn1.weight.fill_(2.0)
    w0 = m.conv1.weight.detach().clone()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.all(m.bn1.weight == 2.0)  # no decay on BN gamma
    assert torch.allclose(m.conv1.weight, w0 * 0.5)  # w -= lr * wd * w
    g = make_optimizer(m, lr=0.2).param_groups[0]
    assert g["nesterov"] is True and g["momentum"] == 0.9 and g["weight_decay"] == 1e-4


def test_linear_scaling_rule():
    assert scaled_lr(256) == pytest.approx(0.1)
    assert scaled_lr(8192) == pytest.approx(3.2)
    assert scaled_lr(8064) == pytest.approx(3.15)
    assert scaled_lr(64, base_lr=0.2, reference_batch=128) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        scaled_lr(0)


# ----------------------------------------------------------------------------- schedule

GOYAL = dict(
    kind="step", total_steps=900, warmup_steps=50, warmup_start_lr=0.1, peak_lr=3.2, milestones=[300, 600, 800], gamma=0.1
)


def test_warmup_is_linear_from_start_to_peak():
    assert lr_at(0, **GOYAL) == pytest.approx(0.1)
    assert lr_at(50, **GOYAL) == pytest.approx(3.2)
    for s in (1, 10, 25, 49):
        assert lr_at(s, **GOYAL) == pytest.approx(0.1 + 3.1 * s / 50)
    diffs = [lr_at(s + 1, **GOYAL) - lr_at(s, **GOYAL) for s in range(49)]
    assert max(diffs) - min(diffs) < 1e-12


def test_step_decay_values():
    assert lr_at(299, **GOYAL) == pytest.approx(3.2)
    assert lr_at(300, **GOYAL) == pytest.approx(0.32)
    assert lr_at(650, **GOYAL) == pytest.approx(0.032)
    assert lr_at(899, **GOYAL) == pytest.approx(0.0032)
    frac = dict(GOYAL, milestones=[1 / 3, 2 / 3, 8 / 9])  # epochs 30, 60, 80 of 90
    assert resolve_milestones(frac["milestones"], 900) == [300, 600, 800]
    assert [lr_at(s, **frac) for s in (299, 300, 800)] == pytest.approx([3.2, 0.32, 0.0032])
    halving = dict(GOYAL, milestones=[0.25, 0.5, 0.75], gamma=0.5)
    assert lr_at(700, **halving) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        resolve_milestones([100, 0.5], 900)
    with pytest.raises(ValueError):
        lr_at(0, **dict(GOYAL, kind="poly"))


def test_cosine_values():
    cos = dict(kind="cosine", total_steps=1050, warmup_steps=50, warmup_start_lr=0.1, peak_lr=2.0, final_lr_fraction=0.01)
    assert lr_at(50, **cos) == pytest.approx(2.0)
    assert lr_at(550, **cos) == pytest.approx(0.02 + 1.98 * 0.5)  # half way: the mean
    assert lr_at(300, **cos) == pytest.approx(0.02 + 1.98 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(1050, **cos) == pytest.approx(0.02)
    assert lr_at(5000, **cos) == pytest.approx(0.02)


def _run(opt, sched, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("kind", ["step", "cosine"])
def test_scheduler_follows_lr_at_and_resumes_from_state_dict(kind):
    args = dict(
        kind=kind,
        total_steps=40,
        warmup_steps=5,
        warmup_start_lr=0.1,
        peak_lr=0.8,
        milestones=[0.5, 0.75],
        gamma=0.1,
        final_lr_fraction=0.0,
    )
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    opt = torch.optim.SGD([p], lr=0.8, momentum=0.9)
    sched = make_schedule(opt, **args)
    first = _run(opt, sched, 17)
    assert first == pytest.approx([lr_at(s, **args) for s in range(17)])
    opt_sd, sched_sd = opt.state_dict(), sched.state_dict()
    rest = _run(opt, sched, 23)

    q = nn.Parameter(torch.zeros(3))
    q.grad = torch.ones(3)
    opt2 = torch.optim.SGD([q], lr=0.8, momentum=0.9)
    sched2 = make_schedule(opt2, **args)
    opt2.load_state_dict(opt_sd)
    sched2.load_state_dict(sched_sd)
    assert _run(opt2, sched2, 23) == rest
    assert rest == pytest.approx([lr_at(s, **args) for s in range(17, 40)])


def test_make_schedule_rejects_optimizer_not_at_peak():
    p = nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="peak_lr"):
        make_schedule(torch.optim.SGD([p], lr=0.1), "cosine", 100, 10, 0.1, 3.2)
