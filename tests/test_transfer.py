"""Transfer stage on the fixture corpus: a tiny pretraining, then linear probe and fine-tuning on
the fixture's Fashion-MNIST (5 train + 3 val images per class); unit tests of the blocks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import FIXTURE, copy_run, stage_cfg

TARGET = FIXTURE / "fashion_mnist"
PRETRAIN = ["pretrain.model=resnext_mini", "pretrain.image_size=32", "pretrain.batch_size=8", "pretrain.epochs=1",
            "pretrain.max_steps=4", "pretrain.workers=0", "pretrain.progress=false", "pretrain.heldout_fraction=0",
            "pretrain.threads=1", "pretrain.checkpoint_every_steps=100"]
TINY = ["transfer.low_data_per_class=[2]", "transfer.finetune_epochs=2", "transfer.min_epoch_images=40",
        "transfer.batch_size=16", "transfer.workers=0", "transfer.progress=false", "transfer.threads=1",
        "transfer.probe_Cs=[0.01,1.0]"]


@pytest.fixture(scope="module")
def pretrained_run(prepared_fixture, tmp_path_factory):
    """The prepared fixture run plus a 4-step pretraining (model resnext_mini at 32 px)."""
    from pipeline.pretrain import run_pretrain

    run = copy_run(prepared_fixture, tmp_path_factory.mktemp("transfer") / "run")
    run_pretrain(stage_cfg(run, *PRETRAIN))
    return run


@pytest.fixture(scope="module")
def transfer_run(pretrained_run, tmp_path_factory):
    """The transfer stage run once on the fixture target, with one contaminated val image faked."""
    from pipeline.transfer import run_transfer

    run = tmp_path_factory.mktemp("transfer_done") / "run"
    for s in ("dedup", "pretrain"):
        shutil.copytree(pretrained_run / s, run / s)
    report = {"fashion_mnist_val": {"images": 30, "contaminated": 1, "ids": ["fashion_mnist_val:bag/00018.png"]}}
    assert (TARGET / "val" / "bag" / "00018.png").exists()
    (run / "dedup" / "eval_contamination.json").write_text(json.dumps(report))
    man = run_transfer(stage_cfg(run, *TINY))
    return run, man


def test_results_rows_cover_methods_inits_and_settings(transfer_run):
    run, man = transfer_run
    res = json.loads((run / "transfer" / "results.json").read_text())
    assert res["target"] == "fashion_mnist" and res["num_classes"] == 10
    assert res["image_size"] == 32 and res["val_images"] == 30 and res["contaminated_val"] == 1
    keys = {(r["method"], r["init"], r["train_per_class"]) for r in res["rows"]}
    assert keys == {(m, i, k) for m in ("linear_probe", "finetune") for i in ("pretrained", "scratch") for k in (2, None)}
    assert len(res["rows"]) == 8
    for r in res["rows"]:
        assert set(r) == {"method", "init", "train_per_class", "train_images", "top1", "top5", "lower_bound_top1",
                          "epochs", "best_C", "seconds"}
        assert 0.0 <= r["lower_bound_top1"] <= r["top1"] <= r["top5"] <= 1.0
        assert r["train_images"] == (20 if r["train_per_class"] == 2 else 50)
        if r["method"] == "linear_probe":
            assert r["best_C"] in (0.01, 1.0) and r["epochs"] is None
        else:
            assert r["epochs"] == 2 and r["best_C"] is None
        assert r["seconds"] >= 0


def test_lower_bound_counts_the_contaminated_image_as_wrong(transfer_run):
    """bag/00018.png is listed as contaminated: the lower bound drops by 1/30 exactly where it was right."""
    run, _ = transfer_run
    res = json.loads((run / "transfer" / "results.json").read_text())
    assert res["contamination_eval_set"] == "fashion_mnist_val"
    for r in res["rows"]:
        gap = round((r["top1"] - r["lower_bound_top1"]) * 30)
        assert gap in (0, 1) and abs(r["top1"] - r["lower_bound_top1"] - gap / 30) < 1e-9
    # the formula itself, on known correctness: a contaminated image that was right counts as wrong
    from pipeline.transfer import _row

    c1 = np.array([True, True, False, True])
    row = _row("linear_probe", "pretrained", 2, 20, c1, c1, np.array([True, False, True, False]))
    assert row["top1"] == 0.75 and row["lower_bound_top1"] == 0.5


def test_per_epoch_rows_and_manifest(transfer_run):
    run, man = transfer_run
    rows = [json.loads(x) for x in (run / "transfer" / "finetune_epochs.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 2  # inits x settings x epochs
    assert {(r["init"], r["train_per_class"], r["epoch"]) for r in rows} == \
        {(i, k, e) for i in ("pretrained", "scratch") for k in (2, None) for e in (1, 2)}
    for r in rows:
        assert {"loss", "lr", "top1", "top5", "seconds"} <= set(r)
        assert np.isfinite(r["loss"]) and r["lr"] > 0 and 0 <= r["top1"] <= r["top5"] <= 1
        # low-data: 20 images, but an epoch is at least 40 (two passes)
        assert r["images"] == (40 if r["train_per_class"] == 2 else 50)
    assert man["stage"] == "transfer" and (run / "transfer" / "manifest.json").exists()
    assert man["inputs"]["pretrain"] and man["inputs"]["target"]["val"]["images"] == 30
    c = man["counts"]
    assert c["rows"] == 8 and c["finetune_epoch_rows"] == 8 and c["contaminated_val"] == 1
    assert c["linear_probe_pretrained_top1"] is not None and c["finetune_gain_top1"] is not None
    assert not list((run / "transfer").glob(".*tmp-*"))
    assert sorted(p.name for p in (run / "transfer").iterdir()) == ["finetune_epochs.jsonl", "manifest.json", "results.json"]


def test_missing_pretrain_and_bad_config_fail_before_work(prepared_fixture, pretrained_run, tmp_path):
    from pipeline.config import ConfigError
    from pipeline.transfer import run_transfer

    run = copy_run(prepared_fixture, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="pipeline.pretrain"):
        run_transfer(stage_cfg(run, *TINY))
    shutil.copytree(pretrained_run / "pretrain", run / "pretrain")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_transfer(stage_cfg(run, *TINY, f"transfer.root={tmp_path / 'nowhere'}"))
    with pytest.raises(ConfigError, match="transfer.inits"):
        run_transfer(stage_cfg(run, *TINY, "transfer.inits=[imagenet]"))
    with pytest.raises(ConfigError, match="transfer.low_data_per_class"):
        run_transfer(stage_cfg(run, *TINY, "transfer.low_data_per_class=[0]"))
    assert not (run / "transfer").exists()


def test_probe_is_near_perfect_on_separable_features():
    from pipeline.linear_probe import fit_probe, topk_correct

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 32)) * 4
    y = np.repeat(np.arange(6), 40)
    x = (centers[y] + rng.normal(size=(len(y), 32))).astype(np.float32)
    yv = np.repeat(np.arange(6), 20)
    xv = (centers[yv] + rng.normal(size=(len(yv), 32))).astype(np.float32)
    probe = fit_probe(x, y, [1e-4, 1e-2, 1.0], num_classes=6, holdout_fraction=0.2, seed=0)
    s = probe.scores(xv)
    assert topk_correct(s, yv, 1).mean() >= 0.98
    assert len(probe.grid) == 3 and probe.best_C in (1e-4, 1e-2, 1.0)
    # random labels: the probe cannot beat chance by much on held-out data
    probe = fit_probe(x, rng.permutation(y), [1.0], num_classes=6, seed=0)
    assert topk_correct(probe.scores(xv), rng.permutation(yv), 1).mean() < 0.5


def test_subsets_are_nested_stratified_and_deterministic():
    from pipeline.target_data import per_class_order, stratified_holdout, take_per_class
    from pipeline.transfer import val_subset

    labels = np.repeat(np.arange(4), 30)
    order = per_class_order(labels, seed=3)
    a, b = take_per_class(order, 5), take_per_class(order, 10)
    assert set(a) <= set(b) and np.bincount(labels[a]).tolist() == [5] * 4
    assert np.array_equal(a, take_per_class(per_class_order(labels, seed=3), 5))
    assert not np.array_equal(a, take_per_class(per_class_order(labels, seed=4), 5))
    fit, hold = stratified_holdout(labels[b], 0.2, seed=0)
    assert len(set(fit) & set(hold)) == 0 and len(fit) + len(hold) == 40
    assert np.bincount(labels[b][hold]).tolist() == [2] * 4
    v = val_subset(labels, 10, seed=0)
    assert len(v) == 10 and np.bincount(labels[v], minlength=4).max() - np.bincount(labels[v], minlength=4).min() <= 1


def test_low_data_epoch_repeats_passes():
    from pipeline.finetune import epoch_batches

    b = epoch_batches(20, 16, epoch=0, seed=0, min_epoch_images=50)  # 3 passes = 60 images
    items = [i for batch in b for i, _ in batch]
    assert len(items) == 60 and sorted(items) == sorted(list(range(20)) * 3)
    assert b == epoch_batches(20, 16, epoch=0, seed=0, min_epoch_images=50)
    assert b != epoch_batches(20, 16, epoch=1, seed=0, min_epoch_images=50)
    assert all(len(x) >= 2 for x in epoch_batches(17, 16, epoch=0, seed=0))
