"""Resumable transfer stage (issue 24): finished parts are kept, a killed fine-tuning run continues from its checkpoint.

On the fixture corpus (a 6-step pretraining, then the transfer suite on the Fashion-MNIST excerpt with
:data:`conftest.PIPELINE_RUN`'s tiny recipe and a checkpoint every 2 optimizer steps): the stage runs once
uninterrupted; a second copy runs in a subprocess that SIGKILLs itself right after the checkpoint taken inside
the second epoch of its second fine-tuning run, and is rerun. The rerun keeps what had finished, continues that
run at the checkpoint's batch and ends with the uninterrupted run's ``transfer/`` folder (results.json, correct.npz,
finetune_epochs.jsonl, the records and the manifest equal except timing fields). A rerun of the finished stage
redoes nothing (not one image read); a result-affecting change starts over. A checkpoint of another recipe is
refused with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import PIPELINE_RUN, REPO, copy_run, stage_cfg
from fuzz.stages import compare_stage, partial_files, temp_files

from pipeline.cli import describe_failure
from pipeline.errors import CheckpointError, ConfigError
from pipeline.evaluation.resume import FinetuneCheckpoints, FinetunePosition

# one target (Fashion-MNIST: 10 classes, 50 train / 30 val images), PIPELINE_RUN's tiny recipe, fp32
TRANSFER = [o for o in PIPELINE_RUN if "emoji_subgroup" not in o] + ["transfer/target=[fashion_mnist]"]
KILL_RUN = "finetune-pretrained-full-seed0"  # the second fine-tuning run: 50 images, 4 batches of <= 16 per epoch
# the child: the transfer stage, SIGKILLed by itself right after the checkpoint inside KILL_RUN's second epoch
CHILD = """
import os, signal, sys
from pathlib import Path
from conftest import stage_cfg
from pipeline.evaluation.resume import FinetuneCheckpoints
from pipeline.transfer import run_transfer

save = FinetuneCheckpoints.save

def save_then_die(self, model, optimizer, scheduler, scaler, pos, ema=None):
    out = save(self, model, optimizer, scheduler, scaler, pos, ema)
    if self.folder.name == sys.argv[2] and pos.epoch == 1 and pos.batches > 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return out

FinetuneCheckpoints.save = save_then_die
run_transfer(stage_cfg(Path(sys.argv[1]), *sys.argv[3:]))
"""


def _spy(mp, calls: Counter, module, name: str) -> None:
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls[name] += 1
        return real(*args, **kwargs)

    mp.setattr(module, name, spy)


def _rerun(run, *overrides: str) -> Counter:
    """Run the stage in this process; count what it computed (fine-tuning runs, probe fits, lr searches, images read)."""
    import pipeline.evaluation.lr_selection as lrs
    import pipeline.evaluation.suite_finetune as sft
    import pipeline.evaluation.suite_probe as spr
    import pipeline.evaluation.target_data as td
    from pipeline.transfer import run_transfer

    calls: Counter = Counter()
    with pytest.MonkeyPatch.context() as mp:
        for module, name in ((sft, "finetune"), (spr, "fit_probe"), (lrs, "select_lr"), (td, "load_rgb")):
            _spy(mp, calls, module, name)
        run_transfer(stage_cfg(run, *TRANSFER, *overrides))
    return calls


def _parts(run) -> list[str]:
    return sorted(p.parent.name for p in (run / "transfer" / "runs").rglob("record.json"))


@pytest.mark.slow
def test_killed_transfer_resumes_to_the_uninterrupted_results(prepared_fixture, tmp_path, caplog):
    from pipeline.pretrain import run_pretrain
    from pipeline.transfer import run_transfer

    ref = copy_run(prepared_fixture, tmp_path / "ref")
    run_pretrain(stage_cfg(ref, *PIPELINE_RUN))
    run = copy_run(ref, tmp_path / "killed", stages=("ingest", "dedup", "vocab", "pretrain"))
    run_transfer(stage_cfg(ref, *TRANSFER, "transfer.checkpoint_every_steps=2"))
    assert not list((ref / "transfer").rglob("step_*.pt")), "checkpoints are removed once their run is recorded"
    assert _parts(ref) == [
        "decontamination",
        "finetune-pretrained-2perclass-seed0",
        "finetune-pretrained-full-seed0",
        "finetune-scratch-2perclass-seed0",
        "finetune-scratch-full-seed0",
        "linear_probe-pretrained-2perclass",
        "linear_probe-pretrained-full",
        "linear_probe-scratch-2perclass",
        "linear_probe-scratch-full",
        "lr_selection",
    ]

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    overrides = [*TRANSFER, "transfer.checkpoint_every_steps=2"]
    cmd = [sys.executable, "-c", CHILD, str(run), KILL_RUN, *overrides]
    child = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-3000:]
    ckpt = [p.relative_to(run / "transfer").as_posix() for p in (run / "transfer").rglob("step_*.pt")]
    assert ckpt == [f"runs/fashion_mnist/{KILL_RUN}/step_00000006.pt"]  # epoch 2, batch 2 of 4; the older one pruned
    assert not (run / "transfer" / "manifest.json").exists() and not partial_files(run / "transfer")
    assert _parts(run) == [
        "decontamination",
        "finetune-pretrained-2perclass-seed0",
        *[p for p in _parts(ref) if p.startswith("linear_probe")],
        "lr_selection",
    ]

    # a config error still fails before any work, leaving the resume state as it was
    with pytest.raises(ConfigError, match="transfer.checkpoint_every_steps"):
        run_transfer(stage_cfg(run, *TRANSFER, "transfer.checkpoint_every_steps=-1"))
    assert (run / "transfer" / ckpt[0]).exists()

    # the rerun (another checkpoint interval: a runtime key, the same stage key) keeps what had finished
    caplog.set_level("INFO")
    calls = _rerun(run, "transfer.checkpoint_every_steps=3")
    assert "resuming fine-tuning from step_00000006.pt (epoch 2, batch 2, step 6)" in caplog.text
    assert (calls["finetune"], calls["fit_probe"], calls["select_lr"]) == (3, 0, 0)
    diffs = compare_stage(ref / "transfer", run / "transfer")
    assert not diffs, "the resumed stage differs from the uninterrupted one:\n" + "\n".join(diffs[:20])
    assert not list((run / "transfer").rglob("step_*.pt")) and not temp_files(run / "transfer")

    # a finished stage rerun redoes nothing: no fine-tuning, no probe, not one image read; the same outputs
    calls = _rerun(run, "transfer.checkpoint_every_steps=3")
    assert sum(calls.values()) == 0, calls
    assert not compare_stage(ref / "transfer", run / "transfer")

    # a result-affecting change (another key) starts over: the old records are gone, the probe is fitted again
    key = json.loads((run / "transfer" / "runs" / "key.json").read_text())["key"]
    calls = _rerun(run, "transfer.methods=[linear_probe]", "transfer.inits=[pretrained]", "transfer.probe_seeds=1")
    assert json.loads((run / "transfer" / "runs" / "key.json").read_text())["key"] != key
    assert calls["fit_probe"] == 2 and calls["finetune"] == 0
    assert _parts(run) == ["decontamination", "linear_probe-pretrained-2perclass", "linear_probe-pretrained-full"]
    res = json.loads((run / "transfer" / "results.json").read_text())
    assert {(r["method"], r["init"]) for r in res["targets"]["fashion_mnist"]["rows"]} == {("linear_probe", "pretrained")}


def _tiny():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, opt, sched, torch.amp.GradScaler("cpu", enabled=False)


IDENTITY = {"target": "t", "run": "finetune-pretrained-full-seed0", "settings": {"base_lr": 0.1, "epochs": 2}}


def test_a_checkpoint_of_another_recipe_is_refused_with_one_line(tmp_path):
    folder = tmp_path / "finetune-pretrained-full-seed0"
    model, opt, sched, scaler = _tiny()
    pos = FinetunePosition(epoch=1, batches=2, step=6, loss_sum=1.5, seen=32, lr_last=0.05, rows=[{"epoch": 1, "top1": None}])
    FinetuneCheckpoints(folder, {"stage_key": "k", **IDENTITY}, 2).save(model, opt, sched, scaler, pos)
    FinetuneCheckpoints(folder, {"stage_key": "k", **IDENTITY}, 2).save(model, opt, sched, scaler, FinetunePosition(step=8))
    assert [p.name for p in folder.iterdir()] == ["step_00000008.pt"]  # the last one is kept

    same = FinetuneCheckpoints(folder, {"stage_key": "k", **IDENTITY}, 2)
    got = same.resume(*_tiny())
    assert got is not None and got.step == 8 and got.epoch == 0
    assert same.due(4) and not same.due(5) and not FinetuneCheckpoints(folder, IDENTITY, 0).due(4)

    other = {"stage_key": "k", **IDENTITY, "settings": {"base_lr": 0.4, "epochs": 2}}
    with pytest.raises(CheckpointError) as err:
        FinetuneCheckpoints(folder, other, 2).resume(*_tiny())
    msg, hint = describe_failure(err.value)
    assert "\n" not in msg and "\n" not in hint
    assert str(folder / "step_00000008.pt") in msg and "another fine-tuning run or recipe" in msg and "settings.base_lr" in msg
    assert f"delete {folder}" in hint and "run.force=[transfer]" in hint
    with pytest.raises(CheckpointError, match="stage_key"):
        FinetuneCheckpoints(folder, {"stage_key": "other", **IDENTITY}, 2).resume(*_tiny())
    assert (folder / "step_00000008.pt").exists()  # refused, not deleted
