"""Checkpoints: exact resume (model, momentum, schedule, RNGs), refusal of code-running pickles,
corrupt files, DDP-wrapped models, latest/prune."""

from __future__ import annotations

import os
import pickle
import random
import shlex

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.train.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from pipeline.train.losses import multilabel_softmax_loss
from pipeline.train.models import create_model
from pipeline.train.optim import make_optimizer, make_schedule

SCHED = dict(kind="step", total_steps=20, warmup_steps=2, warmup_start_lr=0.1, peak_lr=0.4, milestones=[0.5], gamma=0.1)


def _setup(seed: int):
    torch.manual_seed(seed)
    model = create_model("resnext_mini", num_classes=6)
    opt = make_optimizer(model, lr=0.4)
    return model, opt, make_schedule(opt, **SCHED)


def _train(model, opt, sched, steps: int):
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32)
        t = (torch.rand(4, 6) < 0.4).float()
        t[:, 0] = 1
        loss = multilabel_softmax_loss(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _draws():
    return torch.rand(3), np.random.rand(3), random.random()


@pytest.mark.slow
def test_round_trip_restores_everything_exactly(tmp_path):
    model, opt, sched = _setup(0)
    _train(model, opt, sched, 3)
    np.random.seed(7)
    random.seed(7)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    path = save_checkpoint(
        checkpoint_path(tmp_path, 3),
        model=model,
        optimizer=opt,
        scheduler=sched,
        step=3,
        epoch=1,
        data_position={"epoch": 1, "samples_seen": 12},
        config={"model": {"name": "resnext_mini"}, "lr": 0.4},
        extra={"loss_ema": np.float64(1.5), "hist": np.arange(3)},
    )
    assert path.name == "step_00000003.pt"
    after_save = _draws()
    _train(model, opt, sched, 2)  # the reference continuation
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2, sched2 = _setup(1)  # different weights, fresh optimizer, other RNG state
    info = load_checkpoint(path, model2, opt2, sched2)
    assert info == {
        "step": 3,
        "epoch": 1,
        "data_position": {"epoch": 1, "samples_seen": 12},
        "config": {"lr": 0.4, "model": {"name": "resnext_mini"}},
        "extra": {"loss_ema": 1.5, "hist": info["extra"]["hist"]},
    }
    assert torch.equal(info["extra"]["hist"], torch.arange(3))
    assert sched2.last_epoch == 3 and opt2.param_groups[0]["lr"] == pytest.approx(0.4)
    bufs = [opt2.state[p]["momentum_buffer"] for p in model2.parameters()]
    assert all(b is not None and torch.count_nonzero(b) > 0 for b in bufs[:3])
    draws = _draws()
    assert torch.equal(draws[0], after_save[0])
    assert np.array_equal(draws[1], after_save[1]) and draws[2] == after_save[2]
    _train(model2, opt2, sched2, 2)  # same data draws, same momentum, same lr -> same weights
    for k, v in model2.state_dict().items():
        assert torch.equal(v, ref_state[k]), k


def test_weights_only_loadable_and_restore_rng_optional(tmp_path):
    model, opt, sched = _setup(0)
    path = save_checkpoint(
        tmp_path / "c.pt", model=model, optimizer=opt, scheduler=sched, step=0, epoch=0, data_position={}, config=None, extra={}
    )
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"model", "optimizer", "scheduler", "rng", "config_json", "data_position"}
    torch.manual_seed(123)
    expected = torch.rand(2)
    torch.manual_seed(123)
    load_checkpoint(path, model, restore_rng=False)
    assert torch.equal(torch.rand(2), expected)


def test_unpicklable_extra_rejected_before_writing(tmp_path):
    model, opt, sched = _setup(0)
    with pytest.raises(TypeError, match="extra"):
        save_checkpoint(
            tmp_path / "c.pt",
            model=model,
            optimizer=opt,
            scheduler=sched,
            step=0,
            epoch=0,
            data_position={},
            config={},
            extra={"fn": lambda: 0},
        )
    with pytest.raises(TypeError, match="data_position"):
        save_checkpoint(
            tmp_path / "c.pt",
            model=model,
            optimizer=None,
            scheduler=None,
            step=0,
            epoch=0,
            data_position={"epoch": 1.5},
            config={},
            extra={},
        )
    assert not list(tmp_path.iterdir())


class _Evil:
    """Unpickling this runs a shell command (here: creating a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_malicious_pickle_is_refused(tmp_path):
    model, _, _ = _setup(0)
    marker = tmp_path / "pwned"
    raw = tmp_path / "evil_raw.pt"  # a bare pickle stream
    raw.write_bytes(pickle.dumps({"format": "x", "model": _Evil(marker)}, protocol=2))
    zipped = tmp_path / "evil_zip.pt"  # the same inside torch.save's zip container
    torch.save({"model": _Evil(marker)}, zipped)
    for path in (raw, zipped):
        with pytest.raises(CheckpointError, match="refusing") as exc:
            load_checkpoint(path, model)
        assert str(path) in str(exc.value)
    assert not marker.exists()
    # the payload is live: unpickling it without protection does create a marker
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Evil(live)))
    assert live.exists()


def test_corrupt_truncated_missing_and_foreign_files(tmp_path):
    model, opt, sched = _setup(0)
    good = save_checkpoint(
        tmp_path / "good.pt", model=model, optimizer=opt, scheduler=sched, step=1, epoch=0, data_position={}, config={}, extra={}
    )
    data = good.read_bytes()
    cases = {"truncated.pt": data[: len(data) // 2], "empty.pt": b"", "garbage.pt": os.urandom(4096)}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError, match="corrupt") as exc:
            load_checkpoint(tmp_path / name, model)
        assert name in str(exc.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt", model)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint(tmp_path / "foreign.pt", model)
    other = create_model("resnext_mini", num_classes=9)  # head shape differs
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(good, other)


def test_ddp_wrapped_model_round_trip(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model, opt, sched = _setup(0)
        ddp = nn.parallel.DistributedDataParallel(model)
        path = save_checkpoint(
            tmp_path / "ddp.pt", model=ddp, optimizer=opt, scheduler=sched, step=1, epoch=0, data_position={}, config={}, extra={}
        )
        saved = torch.load(path, weights_only=True)["model"]
        assert not any(k.startswith("module.") for k in saved)
        plain, _, _ = _setup(1)
        load_checkpoint(path, plain)  # saved from DDP, loaded into a plain model
        assert torch.equal(plain.conv1.weight, model.conv1.weight)
        other, _, _ = _setup(2)
        ddp2 = nn.parallel.DistributedDataParallel(other)
        load_checkpoint(path, ddp2)  # and into a DDP-wrapped one
        assert torch.equal(ddp2.module.conv1.weight, model.conv1.weight)
    finally:
        dist.destroy_process_group()
    # a foreign checkpoint whose keys carry "module." still loads into a plain model
    raw = torch.load(path, weights_only=True)
    raw["model"] = {f"module.{k}": v for k, v in raw["model"].items()}
    torch.save(raw, tmp_path / "prefixed.pt")
    fresh, _, _ = _setup(3)
    load_checkpoint(tmp_path / "prefixed.pt", fresh, restore_rng=False)
    assert torch.equal(fresh.conv1.weight, model.conv1.weight)


def test_latest_and_prune(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 100, 20, 12345678):
        checkpoint_path(tmp_path, step).write_bytes(b"x")
    (tmp_path / ".step_99999999.pt.tmp-42").write_bytes(b"partial")  # interrupted write
    (tmp_path / "step_7.pt").write_bytes(b"x")  # not our naming
    assert latest_checkpoint(tmp_path).name == "step_12345678.pt"
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["step_00000005.pt", "step_00000020.pt"]
    left = sorted(p.name for p in tmp_path.glob("step_*.pt"))
    assert left == ["step_00000100.pt", "step_12345678.pt", "step_7.pt"]
    assert prune_checkpoints(tmp_path, keep_last=5) == []
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, keep_last=0)
