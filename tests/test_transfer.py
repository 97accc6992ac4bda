"""Transfer suite on the fixture corpus: a tiny pretraining, then linear probe and fine-tuning on the
default suite's three targets, the fixture excerpts of Fluent Emoji (3 subgroups, 9 train + 6 val images
each), of the blob emoji (3 subgroups, 4 train + 2 val images each) and Fashion-MNIST (5 train + 3 val images
per class); unit tests of the blocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE, TINY_TRANSFER, copy_run, make_cfg, pretrain_overrides, stage_cfg

FASHION = FIXTURE / "fashion_mnist"
FLUENT = FIXTURE / "fluent_emoji" / "subgroup"
BLOB = FIXTURE / "blob_emoji" / "subgroup"
TARGETS = ("fluent_emoji_subgroup", "blob_emoji_subgroup", "fashion_mnist")
PRETRAIN = [
    *pretrain_overrides(max_steps=4, heldout_fraction=0, checkpoint_every_steps=100),
]
TINY = list(TINY_TRANSFER)
SEEDS = {"linear_probe": 3, "finetune": 2}  # low-data seeds in the suite run (probe_seeds=3, finetune_seeds=2)
N_VAL = {"fluent_emoji_subgroup": 18, "blob_emoji_subgroup": 6, "fashion_mnist": 30}
N_TRAIN = {
    ("blob_emoji_subgroup", 2): 6,
    ("blob_emoji_subgroup", None): 12,
    ("fluent_emoji_subgroup", 2): 6,
    ("fluent_emoji_subgroup", None): 27,
    ("fashion_mnist", 2): 20,
    ("fashion_mnist", None): 50,
}


@pytest.fixture(scope="module")
def pretrained_run(prepared_fixture, tmp_path_factory):
    """The prepared fixture run plus a 4-step pretraining (model resnext_mini at 32 px)."""
    from pipeline.pretrain import run_pretrain

    run = copy_run(prepared_fixture, tmp_path_factory.mktemp("transfer") / "run")
    run_pretrain(stage_cfg(run, *PRETRAIN))
    return run


@pytest.fixture(scope="module")
def transfer_run(pretrained_run, tmp_path_factory):
    """The transfer suite run once on both fixture targets, with one contaminated Fashion-MNIST val image
    faked, and every image read recorded with the phase it was read in (lr selection or not)."""
    import pipeline.evaluation.lr_selection as lrs
    import pipeline.evaluation.target_data as td
    import pipeline.transfer as tr

    run = tmp_path_factory.mktemp("transfer_done") / "run"
    for s in ("ingest", "dedup", "vocab", "pretrain"):
        shutil.copytree(pretrained_run / s, run / s)
    report = {"fashion_mnist_val": {"images": 30, "contaminated": 1, "ids": ["fashion_mnist_val:bag/00018.png"]}}
    assert (FASHION / "val" / "bag" / "00018.png").exists()
    (run / "dedup" / "eval_contamination.json").write_text(json.dumps(report))
    reads: list[tuple[str, str]] = []
    phase = {"now": "other"}
    load, select = td.load_rgb, lrs.select_lr

    def spy_load(path):
        reads.append((phase["now"], str(path)))
        return load(path)

    def spy_select(*args, **kwargs):
        phase["now"] = "lr"
        try:
            return select(*args, **kwargs)
        finally:
            phase["now"] = "other"

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(td, "load_rgb", spy_load)
        mp.setattr(lrs, "select_lr", spy_select)
        man = tr.run_transfer(stage_cfg(run, *TINY, "transfer.finetune_seeds=2", "transfer.probe_seeds=3"))
    return run, man, reads


def _results(run):
    return json.loads((run / "transfer" / "results.json").read_text())


def _inside(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


@pytest.mark.slow
def test_suite_runs_every_target_method_init_setting_and_seed(transfer_run):
    run, man, _ = transfer_run
    res = _results(run)
    assert res["schema"] == 2 and res["target_order"] == list(TARGETS) and set(res["targets"]) == set(TARGETS)
    assert res["image_size"] == 32 and res["ci"]["level"] == 0.95 and res["ci"]["n_boot"] == 200
    assert res["targets"]["fluent_emoji_subgroup"]["num_classes"] == 3
    assert res["targets"]["fashion_mnist"]["num_classes"] == 10
    for name, sec in res["targets"].items():
        assert sec["val_images"] == N_VAL[name]
        keys = {(r["method"], r["init"], r["train_per_class"]) for r in sec["rows"]}
        assert keys == {(m, i, k) for m in ("linear_probe", "finetune") for i in ("pretrained", "scratch") for k in (2, None)}
        for r in sec["rows"]:
            assert r["train_images"] == N_TRAIN[(name, r["train_per_class"])]
            seeds = SEEDS[r["method"]] if r["train_per_class"] is not None else 1
            assert r["seeds"] == list(range(seeds)) and len(r["top1_per_seed"]) == seeds
            assert r["ci_method"] == ("val bootstrap" if seeds == 1 else f"{seeds} seeds + val bootstrap")
            if r["method"] == "linear_probe":
                assert r["best_C"] in (0.01, 1.0) and len(r["best_C_per_seed"]) == seeds and r["epochs"] is None
            else:
                assert r["epochs"] == 2 and r["best_C"] is None and r["base_lr"] == sec["finetune_base_lr"]
            assert r["seconds"] >= 0
        assert len(sec["gains"]) == 4  # per method and setting
    assert man["counts"]["rows"] == 24 and set(man["counts"]["targets"]) == set(TARGETS)


def test_every_accuracy_has_a_consistent_interval(transfer_run):
    run, _, _ = transfer_run
    for sec in _results(run)["targets"].values():
        for r in sec["rows"]:
            for k in ("top1", "top5", "lower_bound_top1", "lower_bound_top1_nn"):
                lo, hi = r[f"{k}_ci"]
                assert 0.0 <= lo <= r[k] <= hi <= 1.0, (k, r)
            assert r["lower_bound_top1_nn"] <= r["top1"] and r["lower_bound_top1"] <= r["top1"] <= r["top5"]
            assert min(r["top1_per_seed"]) <= r["top1"] <= max(r["top1_per_seed"])
        for g in sec["gains"]:
            assert g["lo"] <= g["diff"] <= g["hi"] and -1 <= g["lo"] and g["hi"] <= 1
            assert g["measurable"] == (g["lo"] > 0 or g["hi"] < 0)
            assert g["verdict"] == ("gain" if g["lo"] > 0 else "loss" if g["hi"] < 0 else "no measurable gain")
            assert g["diff"] == pytest.approx(g["pretrained"] - g["scratch"], abs=2e-6)


def test_intervals_recompute_from_the_stored_per_image_correctness(transfer_run):
    from pipeline.evaluation.correctness import load_correctness
    from pipeline.evaluation.intervals import accuracy_interval, difference_interval

    run, _, _ = transfer_run
    res = _results(run)
    arrays = load_correctness(run)
    ci = {"n_boot": 200, "level": 0.95, "seed": 0}
    for name, sec in res["targets"].items():
        n = sec["val_images"]
        assert arrays[f"{name}/val_ids"].shape == (n,) and arrays[f"{name}/phash"].dtype == bool
        for r in sec["rows"]:
            c1, c5 = arrays[r["correct_key"] + "/top1"], arrays[r["correct_key"] + "/top5"]
            assert c1.shape == (len(r["seeds"]), n) and c1.dtype == bool and (c1 <= c5).all()
            iv = accuracy_interval(c1, **ci)
            assert [iv["lo"], iv["hi"]] == r["top1_ci"] and iv["mean"] == pytest.approx(r["top1"], abs=1e-6)
            assert r["top1_per_seed"] == pytest.approx(list(c1.mean(axis=1)), abs=1e-6)
            lb = accuracy_interval(c1 & ~arrays[f"{name}/nn"][None, :], **ci)
            assert lb["mean"] == pytest.approx(r["lower_bound_top1_nn"], abs=1e-6)
        for g in sec["gains"]:
            key = f"{name}/{g['method']}/%s/{'full' if g['train_per_class'] is None else g['train_per_class']}/top1"
            d = difference_interval(arrays[key % "pretrained"], arrays[key % "scratch"], **ci)
            assert (d["diff"], d["lo"], d["hi"], d["verdict"]) == (g["diff"], g["lo"], g["hi"], g["verdict"])


def test_lower_bound_counts_the_contaminated_image_as_wrong(transfer_run):
    """bag/00018.png is listed as contaminated: per seed the lower bound drops by 1/30 exactly where it was right."""
    from pipeline.evaluation.correctness import load_correctness

    run, _, _ = transfer_run
    sec = _results(run)["targets"]["fashion_mnist"]
    arrays = load_correctness(run)
    assert sec["contamination"]["phash"] == {"checked": True, "eval_set": "fashion_mnist_val", "count": 1}
    mask = arrays["fashion_mnist/phash"]
    assert mask.sum() == 1 and arrays["fashion_mnist/val_ids"][mask][0] == "bag/00018.png"
    for r in sec["rows"]:
        c1 = arrays[r["correct_key"] + "/top1"]
        assert r["lower_bound_top1"] == pytest.approx((c1 & ~mask).mean(), abs=1e-6)
        gap = r["top1"] - r["lower_bound_top1"]
        assert gap == pytest.approx(c1[:, mask].mean() / 30, abs=1e-6)
    fluent = _results(run)["targets"]["fluent_emoji_subgroup"]
    assert fluent["contamination"]["phash"]["checked"] is False  # the fixture's data.eval_sets has no Fluent entry
    assert all(r["lower_bound_top1"] == r["top1"] for r in fluent["rows"])


def test_lr_is_chosen_on_training_images_without_touching_val(transfer_run):
    run, _, reads = transfer_run
    res = _results(run)
    lr_reads = [p for ph, p in reads if ph == "lr"]
    assert lr_reads, "the lr selection read no image"
    roots = (FASHION, FLUENT, BLOB)
    assert not [p for p in lr_reads if any(_inside(p, r / "val") for r in roots)]
    assert all(any(_inside(p, r / "train") for r in roots) for p in lr_reads)
    for name, sec in res["targets"].items():
        lrs = sec["lr_selection"]
        assert lrs["skipped"] is None and lrs["setting"] == "full" and lrs["init"] == "pretrained"
        assert [g["base_lr"] for g in lrs["grid"]] == [0.01, 0.03] and lrs["chosen_base_lr"] in (0.01, 0.03)
        assert lrs["fit_images"] + lrs["holdout_images"] == N_TRAIN[(name, None)] and lrs["holdout_images"] >= sec["num_classes"]
        assert all(g["train_images"] == 32 for g in lrs["grid"])  # lr_select_max_images
        assert sec["finetune_base_lr"] == lrs["chosen_base_lr"]
        best = max(lrs["grid"], key=lambda g: (g["holdout_top1"], -g["holdout_loss"], -g["base_lr"]))
        assert best["base_lr"] == lrs["chosen_base_lr"]


def test_feature_decontamination_is_calibrated_and_reported(transfer_run):
    from pipeline.evaluation.correctness import load_correctness

    run, _, _ = transfer_run
    res = _results(run)
    arrays = load_correctness(run)

    for name, sec in res["targets"].items():
        f = sec["contamination"]["features"]
        assert f["checked"] and not f["centered"] and f["pretraining_images"] == res["pretraining_bank"]["images"] > 0
        kc, n_copies = f["known_copies"], min(10, N_VAL[name])  # nn_known_copies=10 (the blob excerpt has 6 val images)
        assert (
            kc["val_images"] == n_copies and kc["n"] == 4 * n_copies and set(kc["by_kind"]) == {"jpeg", "resize", "pad", "crop"}
        )
        assert kc["share_above"] >= 0.95  # threshold = 1st percentile of the 24-40 known-copy scores
        assert f["threshold"] == pytest.approx(kc["p1"], abs=1e-4) and "percentile" in f["rule"]
        kinds = sorted(kc["by_kind"].values(), key=lambda v: v["p1"])  # a higher threshold flags no more images
        assert all(v["n"] == n_copies for v in kinds)
        assert [v["val_flagged_at_its_quantile"] for v in kinds] == sorted(
            (v["val_flagged_at_its_quantile"] for v in kinds), reverse=True
        )
        assert f["count"] == int(arrays[f"{name}/nn"].sum())
        sims = arrays[f"{name}/nn_similarity"].astype(float)
        assert ((sims >= f["threshold"] - 1e-3) | ~arrays[f"{name}/nn"]).all()
        assert f["non_copies"]["random"]["n"] == 50 and 0 <= f["non_copies"]["random"]["share_above"] <= 1
        assert len(f["top_matches"]) == min(10, sec["val_images"])
    same = res["targets"]["fluent_emoji_subgroup"]["contamination"]["features"]["non_copies"]["same_emoji"]
    # dog, cat face, red apple and grinning face (3 styles each) are drawn by Google and Twitter in the fixture
    assert same["val_images_with_one"] == 12 and same["n"] >= 12 and 0 <= same["share_above"] <= 1
    assert "same_emoji" not in res["targets"]["fashion_mnist"]["contamination"]["features"]["non_copies"]


def test_per_epoch_rows_and_manifest(transfer_run):
    run, man, _ = transfer_run
    rows = [json.loads(x) for x in (run / "transfer" / "finetune_epochs.jsonl").read_text().splitlines()]
    runs = {(r["target"], r["init"], r["train_per_class"], r["seed"]) for r in rows}
    assert runs == {
        (t, i, k, s)
        for t in TARGETS
        for i in ("pretrained", "scratch")
        for k in (2, None)
        for s in (range(2) if k is not None else range(1))
    }
    assert len(rows) == 2 * len(runs)
    for r in rows:
        assert {"loss", "lr", "top1", "top5", "seconds", "base_lr"} <= set(r)
        assert np.isfinite(r["loss"]) and r["lr"] > 0
        if r["epoch"] == 1:  # val is scored after the last epoch only (transfer.eval_every_epoch=false)
            assert r["top1"] is None and r["top5"] is None
        else:
            assert 0 <= r["top1"] <= r["top5"] <= 1
        n = N_TRAIN[(r["target"], r["train_per_class"])]
        assert r["images"] == (-(-40 // n) * n if n < 40 else n)  # low data: an epoch is >= 40 images
    assert man["stage"] == "transfer" and (run / "transfer" / "manifest.json").exists()
    assert man["inputs"]["pretrain"] and man["inputs"]["targets"]["fashion_mnist"]["val"]["images"] == 30
    c = man["counts"]
    assert c["finetune_epoch_rows"] == len(rows) and c["targets"]["fashion_mnist"]["contaminated_val"] == 1
    assert c["targets"]["fashion_mnist"]["linear_probe_pretrained_top1"] is not None
    assert c["targets"]["fluent_emoji_subgroup"]["finetune_gain_top1"] is not None
    assert not list((run / "transfer").glob(".*tmp-*"))
    assert sorted(p.name for p in (run / "transfer").iterdir()) == [
        "correct.npz",
        "finetune_epochs.jsonl",
        "manifest.json",
        "nn_bank",  # the pretraining feature bank, one part per rank (pipeline.evaluation.nn_bank)
        "results.json",
        "runs",  # the resume state: each finished part's record (tests/test_transfer_resume.py)
    ]
    assert not list((run / "transfer").rglob("step_*.pt"))  # a run's checkpoints go once it is recorded


@pytest.mark.slow
def test_report_shows_one_table_per_target_from_the_stage_output(transfer_run):
    from pipeline.report import write_report
    from pipeline.reporting.format import fmt_ci_pct, fmt_diff_points

    run, _, _ = transfer_run
    res = _results(run)
    text = write_report(run).read_text()
    section = text.split("## Transfer\n", 1)[1].split("\n## ", 1)[0]
    assert section.count("### Target `") == len(TARGETS)
    for name, sec in res["targets"].items():
        part = section.split(f"### Target `{name}`", 1)[1].split("### Target `", 1)[0]
        assert part.count("| method | init | train / class |") == 1
        for r in sec["rows"]:
            line = (
                f"| {r['method'].replace('_', ' ')} | {r['init']} "
                f"| {'full' if r['train_per_class'] is None else r['train_per_class']} "
                f"| {r['train_images']} | {len(r['seeds'])} | {fmt_ci_pct(r['top1'], r['top1_ci'])} "
                f"| {fmt_ci_pct(r['top5'], r['top5_ci'])} | {fmt_ci_pct(r['lower_bound_top1'], r['lower_bound_top1_ci'])} "
                f"| {fmt_ci_pct(r['lower_bound_top1_nn'], r['lower_bound_top1_nn_ci'])} |"
            )
            assert line in part, line
        for g in sec["gains"]:
            verdict = {"gain": "gain", "loss": "loss (scratch better)"}.get(g["verdict"], g["verdict"])
            assert f"| {fmt_diff_points(g)} | {verdict} |" in part
        f = sec["contamination"]["features"]
        assert f"**{f['count']} of {sec['val_images']} val images**" in part
        assert f"base_lr **{sec['finetune_base_lr']:g}**" in part
    assert "](report/transfer.png)" in section and (run / "report" / "transfer.png").stat().st_size > 5000
    assert str(run.parent) not in text


# --------------------------------------------------------------------------- config and errors


def test_target_selection_and_overrides_compose():
    from pipeline.config import transfer_recipe, validate

    cfg = make_cfg()
    assert list(cfg.transfer.targets) == list(TARGETS)
    fluent = transfer_recipe(cfg.transfer, "fluent_emoji_subgroup")
    assert fluent["root"].endswith("fluent_emoji/subgroup") and fluent["max_val_images"] is None
    assert set(fluent["overridden"]) == {"low_data_per_class", "max_train_per_class", "max_val_images"}
    assert transfer_recipe(cfg.transfer, "fashion_mnist")["max_val_images"] == 2000
    assert list(make_cfg("transfer/target=[fashion_mnist]").transfer.targets) == ["fashion_mnist"]
    assert list(make_cfg("+transfer=fashion_mnist").transfer.targets) == ["fashion_mnist"]
    inet = make_cfg("+transfer=imagenet1k", "transfer.targets.imagenet1k.root=/data/imagenet")
    validate(inet)
    r = transfer_recipe(inet.transfer, "imagenet1k")
    assert list(inet.transfer.targets) == ["imagenet1k"] and r["root"] == "/data/imagenet"
    assert r["finetune_epochs"] == 30 and r["max_train_per_class"] is None and r["base_lr"] == 0.05
    # recipe keys on the command line reach every target that does not set them; per-target keys win
    c = make_cfg(
        "transfer.max_val_images=7",
        "transfer.low_data_per_class=[3]",
        "transfer.targets.fluent_emoji_subgroup.crop_min_scale=0.5",
    )
    f, m = transfer_recipe(c.transfer, "fluent_emoji_subgroup"), transfer_recipe(c.transfer, "fashion_mnist")
    assert (m["max_val_images"], m["low_data_per_class"], m["crop_min_scale"]) == (7, [3], 0.35)
    assert (f["max_val_images"], f["low_data_per_class"], f["crop_min_scale"]) == (None, [5], 0.5)


@pytest.mark.slow
def test_missing_inputs_and_bad_config_fail_before_work(prepared_fixture, pretrained_run, tmp_path):
    from hydra.errors import ConfigCompositionException

    from pipeline.errors import ConfigError
    from pipeline.transfer import run_transfer

    run = copy_run(prepared_fixture, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="pipeline.pretrain"):
        run_transfer(stage_cfg(run, *TINY))
    shutil.copytree(pretrained_run / "pretrain", run / "pretrain")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_transfer(stage_cfg(run, *TINY, f"transfer.targets.fluent_emoji_subgroup.root={tmp_path / 'nowhere'}"))
    with pytest.raises(FileNotFoundError, match="emoji_index"):
        run_transfer(stage_cfg(run, *TINY, f"transfer.targets.fluent_emoji_subgroup.emoji_index={tmp_path / 'x.jsonl'}"))

    with pytest.raises(ConfigCompositionException, match="transfer.inits"):  # a closed choice: Hydra rejects it
        stage_cfg(run, *TINY, "transfer.inits=[imagenet]")
    with pytest.raises(ConfigError, match="transfer.inits"):
        run_transfer(stage_cfg(run, *TINY, "transfer.inits=[scratch,scratch]"))
    with pytest.raises(ConfigError, match="transfer.low_data_per_class"):
        run_transfer(stage_cfg(run, *TINY, "transfer.low_data_per_class=[0]"))
    with pytest.raises(ConfigError, match="transfer.targets.fluent_emoji_subgroup.low_data_per_class"):
        run_transfer(stage_cfg(run, *TINY, "transfer.targets.fluent_emoji_subgroup.low_data_per_class=[0]"))
    with pytest.raises(ConfigError, match="transfer.targets: no target"):
        run_transfer(stage_cfg(run, "transfer/target=[]"))
    with pytest.raises(ConfigError, match="lr_select_setting"):
        run_transfer(stage_cfg(run, *TINY, "transfer.lr_select_setting=7"))
    with pytest.raises(ConfigCompositionException):
        stage_cfg(run, *TINY, "transfer.targets.fashion_mnist.max_val_image=5")  # a mistyped key
    assert not (run / "transfer").exists()


@pytest.mark.slow
def test_without_the_shards_the_feature_check_is_skipped_and_said_so(pretrained_run, tmp_path):
    from pipeline.transfer import run_transfer

    run = tmp_path / "run"
    for s in ("dedup", "pretrain"):  # no ingest/: the pretraining images cannot be read
        shutil.copytree(pretrained_run / s, run / s)
    tiny = [o for o in TINY if "emoji_subgroup" not in o]
    run_transfer(
        stage_cfg(
            run,
            *tiny,
            "transfer/target=[fashion_mnist]",
            "transfer.methods=[linear_probe]",
            "transfer.inits=[pretrained]",
            "transfer.full=false",
        )
    )
    sec = _results(run)["targets"]["fashion_mnist"]
    f = sec["contamination"]["features"]
    assert not f["checked"] and "no finished ingest stage" in f["reason"]
    assert all(r["lower_bound_top1_nn"] is None and r["lower_bound_top1_nn_ci"] is None for r in sec["rows"])
    from pipeline.reporting.transfer_section import target_section

    assert "- features: not checked (the pretraining images cannot be read" in "\n".join(target_section("fashion_mnist", sec))


# --------------------------------------------------------------------------- blocks


def test_difference_interval_says_no_measurable_gain_when_it_covers_zero():
    from pipeline.evaluation.intervals import accuracy_interval, difference_interval

    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.6
    same = difference_interval(a, a.copy(), n_boot=500, seed=0, level=0.95)
    assert same["diff"] == 0 and same["lo"] == 0 == same["hi"] and same["verdict"] == "no measurable gain"
    flip = a.copy()
    flip[rng.choice(400, 8, replace=False)] ^= True  # 8 disagreements either way: no detectable difference
    small = difference_interval(flip, a, n_boot=500, seed=0, level=0.95)
    assert small["lo"] <= 0 <= small["hi"] and not small["measurable"] and small["verdict"] == "no measurable gain"
    better = a | (rng.random(400) < 0.5)  # pretrained right on many more images
    g = difference_interval(better, a, n_boot=500, seed=0, level=0.95)
    assert g["lo"] > 0 and g["measurable"] and g["verdict"] == "gain"
    assert difference_interval(a, better, n_boot=500, seed=0, level=0.95)["verdict"] == "loss"
    # seeds: the per-image differences over 3 seeds, with the seed spread in the interval
    pre = np.stack([better, better, a | (rng.random(400) < 0.4)])
    scr = np.stack([a, a, a])
    s = difference_interval(pre, scr, n_boot=500, seed=0, level=0.95)
    assert s["ci_method"] == "3 paired seeds + val bootstrap" and s["lo"] <= s["diff"] <= s["hi"]
    iv = accuracy_interval(pre, n_boot=500, seed=0, level=0.95)
    assert iv["lo"] <= iv["mean"] <= iv["hi"] and iv["method"] == "3 seeds + val bootstrap" and iv["se_seed"] > 0
    one = accuracy_interval(a[None, :], n_boot=500, seed=0, level=0.95)
    assert one["method"] == "val bootstrap" and one["lo"] < a.mean() < one["hi"]


def test_correctness_file_round_trips(tmp_path):
    from pipeline.evaluation.correctness import load_correctness, save_correctness
    from pipeline.io.run_folder import CORRECT_FILE as CORRECT

    rng = np.random.default_rng(1)
    arrays = {
        "t/linear_probe/pretrained/2/top1": rng.random((3, 37)) < 0.5,
        "t/phash": rng.random(37) < 0.1,
        "t/nn_similarity": rng.random(37).astype(np.float16),
        "t/val_ids": np.array([f"c/{i}.png" for i in range(37)]),
    }
    (tmp_path / "transfer").mkdir()
    save_correctness(tmp_path / "transfer" / CORRECT, arrays)
    back = load_correctness(tmp_path)
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    assert (tmp_path / "transfer" / CORRECT).stat().st_size < 2000


def test_approximate_indexes_by_faiss_spec():
    """transfer.nn_index: a faiss factory string; an IVF index visiting every list finds the exact neighbours, a
    product-quantized one approximates the similarities, a spec faiss cannot build is a one-line ValueError."""
    from pipeline.evaluation import nn_decontam as nd

    rng = np.random.default_rng(1)
    bank = nd.l2_normalize(rng.normal(size=(3000, 32)))
    q = nd.l2_normalize(bank[:200] + 0.05 * rng.normal(size=(200, 32)))
    exact_s, exact_i = nd.nearest(q, bank)
    s, i = nd.nearest(q, bank, "IVF16,Flat", nprobe=16)  # all 16 lists visited: exact
    assert np.array_equal(i, exact_i) and np.allclose(s, exact_s, atol=1e-5)
    s, i = nd.nearest(q, bank, "IVF16,PQ8", nprobe=16)
    assert (i == exact_i).mean() > 0.5 and np.abs(s - exact_s).max() < 0.5  # approximate codes
    with pytest.raises(ValueError, match="transfer.nn_index"):
        nd.nearest(q, bank, "NoSuchIndex12")


def test_nearest_neighbours_copies_and_hexcodes(tmp_path):
    from PIL import Image

    from pipeline.evaluation import nn_decontam as nd

    rng = np.random.default_rng(0)
    bank = nd.l2_normalize(rng.normal(size=(50, 16)))
    q = nd.l2_normalize(np.vstack([bank[7] + 0.01 * rng.normal(size=16), rng.normal(size=16)]))
    sims, idx = nd.nearest(q, bank)
    assert idx[0] == 7 and sims[0] > 0.99 and sims[1] < 0.9
    assert nd.nearest(q, np.zeros((0, 16), np.float32))[1].tolist() == [-1, -1]
    centred = nd.l2_normalize(np.ones((3, 4)) + np.eye(3, 4), center=np.ones(4))
    assert np.allclose(centred @ centred.T, np.eye(3))
    img = Image.open(sorted((FLUENT / "val" / "animal-mammal").glob("*.png"))[0])
    sizes = {k: nd.make_copy(img, k, seed=0).size for k in nd.COPY_KINDS}
    assert sizes == {"jpeg": (64, 64), "resize": (32, 32), "pad": (76, 76), "crop": (57, 57)}
    assert nd.hexcode_key("2764-FE0F") == "2764" == nd.hexcode_key("2764") and nd.hexcode_key("1F415") == "1f415"
    codes = nd.emoji_hexcodes(
        FIXTURE / "fluent_emoji" / "emoji.jsonl",
        ["animal-mammal/dog.flat.png", "face-smiling/grinning-face.high-contrast.png", "x/unknown.flat.png"],
    )
    assert codes == ["1f415", "1f600", None]
    from pipeline.evaluation.target_data import emoji_groups

    g = emoji_groups(
        FIXTURE / "fluent_emoji" / "emoji.jsonl",
        ["food-fruit/grapes.flat.png", "x/unknown.flat.png", "food-fruit/grapes.modern.png", "y/unknown.flat.png"],
    )
    assert g[0] == g[2] and len({int(g[0]), int(g[1]), int(g[3])}) == 3  # one family; unlisted images alone
    assert emoji_groups(None, ["a/1.png", "a/2.png"]).tolist() == [0, 1]


def test_probe_is_near_perfect_on_separable_features():
    from pipeline.evaluation.linear_probe import fit_probe, topk_correct

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
    from pipeline.evaluation.target_data import per_class_order, stratified_holdout, take_per_class
    from pipeline.evaluation.targets import val_subset

    labels = np.repeat(np.arange(4), 30)
    order = per_class_order(labels, seed=3)
    a, b = take_per_class(order, 5), take_per_class(order, 10)
    assert set(a) <= set(b) and np.bincount(labels[a]).tolist() == [5] * 4
    assert np.array_equal(a, take_per_class(per_class_order(labels, seed=3), 5))
    assert not np.array_equal(a, take_per_class(per_class_order(labels, seed=4), 5))
    fit, hold = stratified_holdout(labels[b], 0.2, seed=0)
    assert len(set(fit) & set(hold)) == 0 and len(fit) + len(hold) == 40
    assert np.bincount(labels[b][hold]).tolist() == [2] * 4
    assert not np.array_equal(hold, stratified_holdout(labels[b], 0.2, seed=0, salt="lr-holdout")[1])
    # groups (emoji families): held out whole, about the fraction of each class, one group always left to fit
    groups = labels[b] * 100 + np.arange(len(b)) % 4  # 4 groups per class (of 2-3 images each)
    fit, hold = stratified_holdout(labels[b], 0.2, seed=0, groups=groups)
    assert len(fit) + len(hold) == 40 and not set(groups[fit]) & set(groups[hold])
    for c in range(4):
        held_groups = set(groups[hold][labels[b][hold] == c])
        assert len(held_groups) == 1 and len(set(groups[fit][labels[b][fit] == c])) == 3
    one = np.zeros(len(b), np.int64)  # one group: nothing can be held out without its copies
    assert len(stratified_holdout(labels[b], 0.2, seed=0, groups=one)[1]) == 0
    v = val_subset(labels, 10, seed=0)
    assert len(v) == 10 and np.bincount(labels[v], minlength=4).max() - np.bincount(labels[v], minlength=4).min() <= 1


def test_low_data_epoch_repeats_passes_and_can_be_cut():
    from pipeline.evaluation.finetune import epoch_batches, planned_images

    b = epoch_batches(20, 16, epoch=0, seed=0, min_epoch_images=50)  # 3 passes = 60 images
    items = [i for batch in b for i, _ in batch]
    assert len(items) == 60 and sorted(items) == sorted(list(range(20)) * 3)
    assert b == epoch_batches(20, 16, epoch=0, seed=0, min_epoch_images=50)
    assert b != epoch_batches(20, 16, epoch=1, seed=0, min_epoch_images=50)
    assert all(len(x) >= 2 for x in epoch_batches(17, 16, epoch=0, seed=0))
    cut = epoch_batches(20, 16, epoch=0, seed=0, min_epoch_images=50, max_epoch_images=33)
    assert sum(len(x) for x in cut) == 32  # 33 cut to 16 + 16 (+ a final batch of 1 dropped)
    assert planned_images(20, 2, 16, 50, None) == 120 and planned_images(17, 1, 16, 0, None) == 16


def test_finetune_settings_come_from_the_target_recipe_only():
    """The recipe fields of a fine-tuning run are the effective per-target recipe's: no default of their own."""
    import dataclasses

    from pipeline.config import transfer_recipe
    from pipeline.evaluation.finetune import FinetuneSettings, settings_from_recipe

    assert all(
        f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        for f in dataclasses.fields(FinetuneSettings)
    )
    runtime = {"autocast_dtype": None, "grad_scaler": False, "channels_last": False, "workers": 0, "progress": False}
    cfg = make_cfg("transfer.momentum=0.8", "transfer.targets.fashion_mnist.warmup_epochs=0.25", "transfer.base_lr=0.3")
    r = transfer_recipe(cfg.transfer, "fashion_mnist")
    s = settings_from_recipe(
        r, n=10, device_batch=10, epochs=3, base_lr=0.1, seed=4, eval_every_epoch=False, max_epoch_images=None, **runtime
    )
    assert (s.batch_size, s.momentum, s.warmup_epochs, s.weight_decay, s.min_epoch_images) == (10, 0.8, 0.25, 1e-4, 1000)
    assert (s.epochs, s.base_lr, s.seed, s.reference_batch, s.nesterov) == (3, 0.1, 4, 256, True)  # base_lr: the caller's
    fluent = settings_from_recipe(
        transfer_recipe(cfg.transfer, "fluent_emoji_subgroup"),
        n=500,
        device_batch=32,
        epochs=1,
        base_lr=0.4,
        seed=0,
        eval_every_epoch=True,
        max_epoch_images=32,
        **runtime,
    )
    assert (fluent.batch_size, fluent.warmup_epochs, fluent.max_epoch_images) == (64, 0.5, 32)


def test_zero_byte_and_unreadable_images_are_left_out_and_counted(tmp_path):
    """A zero-byte image file and a file that is no image (its first bytes) are left out of their split, listed on
    the Target, in its results section and in the report; a PNG cut short after its header stays in and fails to
    decode with an error naming it; a class folder holding only zero-byte files is an empty class: one error naming it."""
    from pipeline.evaluation.results import new_target_section
    from pipeline.evaluation.targets import open_targets
    from pipeline.reporting.transfer_section import target_section

    root = tmp_path / "fm"
    shutil.copytree(FIXTURE / "fashion_mnist", root)
    (root / "val" / "bag" / "empty.png").write_bytes(b"")
    (root / "val" / "bag" / "html.png").write_bytes(b"<html>404 not found</html>")  # a failed download
    (root / "train" / "coat" / "text.jpg").write_bytes(b"\x00" * 64)
    png = next((root / "val" / "bag").glob("*.png")).read_bytes()
    (root / "val" / "bag" / "cut.png").write_bytes(png[: len(png) // 3])
    cfg = make_cfg("transfer/target=[fashion_mnist]", f"transfer.targets.fashion_mnist.root={root}")
    (t,) = open_targets(cfg.transfer)
    assert t.empty_files == {"train": [], "val": ["bag/empty.png"]}
    assert t.unreadable_files == {"train": ["coat/text.jpg"], "val": ["bag/html.png"]}
    kept = [p for p, _ in t.val_set.samples] + [p for p, _ in t.train_set.samples]
    assert not any(p.endswith(("empty.png", "html.png", "text.jpg")) for p in kept)
    cut = [i for i, (p, _) in enumerate(t.val_set.samples) if p.endswith("cut.png")]
    with pytest.raises(OSError, match="cut.png cannot be decoded"):
        t.val_set[cut[0]]
    sec = new_target_section(
        t,
        size=32,
        n_val=2,
        phash=np.zeros(2, bool),
        phash_eval_set=None,
        phash_checked=False,
        probe_stages=["layer4"],
        nn_skip=None,
    )
    assert sec["empty_files"]["val"] == {"count": 1, "files": ["bag/empty.png"]}
    assert sec["unreadable_files"]["train"] == {"count": 1, "files": ["coat/text.jpg"]}
    report = "\n".join(target_section("fashion_mnist", sec))
    assert "- val: 1 zero-byte and 1 non-image file(s) left out (`bag/empty.png`, `bag/html.png`" in report
    assert "- train: 1 non-image file(s) left out (`coat/text.jpg`" in report
    for f in (root / "train" / "coat").iterdir():
        f.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="coat"):
        open_targets(cfg.transfer)
