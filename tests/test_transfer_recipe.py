"""The ImageNet fine-tuning recipe's options of the transfer stage (issue 24), on the fixture's Fashion-MNIST excerpt.

- activation checkpointing (``transfer.activation_checkpointing``) changes memory, not results: the stage's
  results.json, correct.npz and epoch rows equal a run without it (bitwise on the CPU: the recomputed activations
  are the same and BatchNorm's running statistics are not updated twice);
- label smoothing, a weight average (``ema_decay``, torch's ``AveragedModel``) scored beside the raw weights and a
  test size above the training size (FixRes) run through the stage: every fine-tuning row and scored epoch row
  carries ``ema_top1``/``ema_top5``, correct.npz the average's per-image hits, and the val images are scored at
  the test size;
- LP-FT (``transfer.finetune_head_init=probe``, the default) records the head probe's C per seed; a random head
  (``random``, with ``finetune_head_stages=null``) gives other runs;
- a killed run with a weight average resumes to the uninterrupted results (its state is in the checkpoint).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import PIPELINE_RUN, copy_run, stage_cfg

from pipeline.evaluation.correctness import load_correctness
from pipeline.train.models import create_model

TRANSFER = [o for o in PIPELINE_RUN if "emoji_subgroup" not in o and not o.startswith(("vocab", "pretrain", "energy"))]
TRANSFER += ["transfer/target=[fashion_mnist]", "transfer.methods=[finetune]"]
RECIPE = ["transfer.label_smoothing=0.1", "transfer.ema_decay=0.9", "transfer.test_image_size=40"]


def _untimed(obj):
    """``obj`` without its timing fields (any key named ``seconds`` or ending in ``_seconds``), at any depth."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k != "seconds" and not k.endswith("_seconds")}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _results(run) -> dict:
    return _untimed(json.loads((run / "transfer" / "results.json").read_text()))


def _epochs(run) -> list[dict]:
    rows = [json.loads(x) for x in (run / "transfer" / "finetune_epochs.jsonl").read_text().splitlines()]
    return _untimed(rows)


def test_checkpointed_blocks_give_the_same_gradients_and_statistics():
    torch.manual_seed(0)
    plain = create_model("resnext_mini", num_classes=10)
    ckpt = create_model("resnext_mini", num_classes=10)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_grad_checkpointing(True)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    for m in (plain, ckpt):
        m.train()
        torch.nn.functional.cross_entropy(m(x), y).backward()
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(plain.parameters(), ckpt.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(plain.buffers(), ckpt.buffers()))  # running stats updated once


@pytest.mark.slow
def test_recipe_options_run_and_checkpointing_changes_nothing(prepared_fixture, tmp_path):
    from pipeline.pretrain import run_pretrain
    from pipeline.transfer import run_transfer

    base = copy_run(prepared_fixture, tmp_path / "base")
    run_pretrain(stage_cfg(base, *PIPELINE_RUN))
    runs = {
        n: copy_run(base, tmp_path / n, stages=("ingest", "dedup", "vocab", "pretrain")) for n in ("ckpt", "recipe", "random")
    }
    run_transfer(stage_cfg(base, *TRANSFER))
    run_transfer(stage_cfg(runs["ckpt"], *TRANSFER, "transfer.activation_checkpointing=true"))
    assert _results(base) == _results(runs["ckpt"])
    assert _epochs(base) == _epochs(runs["ckpt"])
    a, b = load_correctness(base), load_correctness(runs["ckpt"])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    run_transfer(stage_cfg(runs["recipe"], *TRANSFER, *RECIPE))
    res = json.loads((runs["recipe"] / "transfer" / "results.json").read_text())
    rows = res["targets"]["fashion_mnist"]["rows"]
    assert rows and all(0 <= r["ema_top1"] <= 1 and len(r["ema_top1_ci"]) == 2 and "ema_top5" in r for r in rows)
    scored = [r for r in _epochs(runs["recipe"]) if r["top1"] is not None]
    assert scored and all(r["ema_top1"] is not None for r in scored)
    c = load_correctness(runs["recipe"])
    assert "fashion_mnist/finetune/pretrained/full/ema_top1" in c
    assert res["targets"]["fashion_mnist"]["recipe"]["test_image_size"] == 40
    assert _results(base)["targets"]["fashion_mnist"]["rows"] != rows  # the options changed the runs

    # LP-FT (the default): every fine-tuning run (and the lr selection's) starts from a probe's head on the frozen
    # layer2-4 features; the ImageNet recipe's random head on the penultimate layer is one override away
    run_transfer(stage_cfg(runs["random"], *TRANSFER, "transfer.finetune_head_init=random", "transfer.finetune_head_stages=null"))
    plain = _results(runs["random"])["targets"]["fashion_mnist"]
    lp = _results(base)["targets"]["fashion_mnist"]
    assert all(r["head_init"] == "random" and r["head_C_per_seed"] is None for r in plain["rows"])
    for r in lp["rows"]:
        assert r["head_init"] == "probe" and len(r["head_C_per_seed"]) == len(r["seeds"])
        assert all(c in (0.01, 1.0) for c in r["head_C_per_seed"])  # the probe's grid (PIPELINE_RUN's probe_Cs)
    assert [r["top1_per_seed"] for r in lp["rows"]] != [r["top1_per_seed"] for r in plain["rows"]]


class _Killed(Exception):
    pass


def test_a_run_with_a_weight_average_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """A fine-tuning run with ``ema_decay`` stopped right after its 3rd checkpoint and rerun ends with the same raw
    and averaged weights, rows and val scores as an uninterrupted run (the average's state is in the checkpoint)."""
    from test_transfer_distributed import _dataset

    from pipeline.evaluation.finetune import FinetuneSettings, finetune
    from pipeline.evaluation.resume import FinetuneCheckpoints
    from pipeline.evaluation.target_data import eval_batches

    torch.set_num_threads(1)
    settings = FinetuneSettings(
        batch_size=8, device_batch=8, label_smoothing=0.1, ema_decay=0.9, head_stages=None, reference_batch=256,
        momentum=0.9, nesterov=True,
        weight_decay=1e-4, warmup_epochs=0.5, warmup_start_fraction=0.1, min_epoch_images=0, epochs=2, base_lr=0.05,
        max_epoch_images=None, eval_every_epoch=True, seed=1, autocast_dtype=None, grad_scaler=False, channels_last=False,
        activation_checkpointing=False, workers=0, progress=False,
    )  # fmt: skip
    val = eval_batches(_dataset(False), 16, 0, 64)

    def run(folder):
        torch.manual_seed(0)
        model = create_model("resnext_mini", num_classes=0)
        ck = FinetuneCheckpoints(folder, {"run": "t"}, every_steps=1)
        out = finetune(model, _dataset(True), val, num_classes=10, settings=settings, device=torch.device("cpu"), checkpoints=ck)
        return model, out

    ref_model, ref = run(tmp_path / "ref")
    saves = {"n": 0}
    save = FinetuneCheckpoints.save

    def save_then_stop(self, *args, **kwargs):
        path = save(self, *args, **kwargs)
        saves["n"] += 1
        if saves["n"] == 3:
            raise _Killed
        return path

    monkeypatch.setattr(FinetuneCheckpoints, "save", save_then_stop)
    with pytest.raises(_Killed):
        run(tmp_path / "killed")
    monkeypatch.setattr(FinetuneCheckpoints, "save", save)
    model, out = run(tmp_path / "killed")
    assert all(torch.equal(p, q) for p, q in zip(ref_model.state_dict().values(), model.state_dict().values()))
    assert np.array_equal(ref["final"]["ema"]["correct1"], out["final"]["ema"]["correct1"])
    strip = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in ref["epochs"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in out["epochs"]
    ]
    assert ref["epochs"][-1]["ema_top1"] is not None
