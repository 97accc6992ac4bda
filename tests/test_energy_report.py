"""Energy accounting (Patterson formula, projection, measure_energy) and the run report."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time

import pytest
from torch import nn

from conftest import copy_run, stage_cfg
from pipeline.reporting import energy as E
from pipeline.config import ConfigError, EnergyConfig, validate_energy
from pipeline.report import fmt_int, fmt_seconds, main as report_main, write_report

# ----------------------------------------------------------------------------- formula


def test_patterson_formula_on_hand_numbers():
    # 10 h x 8 GPUs x 300 W x PUE 1.1 = 26.4 kWh; x 0.429 kg/kWh = 11.3 kg = 0.0113 t
    kwh = E.patterson_kwh(10, 8, 300, 1.1)
    assert kwh == pytest.approx(26.4)
    assert E.patterson_tco2e(kwh, 0.429) == pytest.approx(0.0113256)
    rec = E.estimate(10 * 3600, 8, 300, pue=1.1, grid_kg_per_kwh=0.429, processor="GPU")
    assert rec["kwh"] == pytest.approx(26.4)
    assert rec["kg_co2e"] == pytest.approx(11.3256)
    assert rec["basis"].startswith("estimated")


def test_projection_arithmetic_and_assumptions():
    p = E.project_full_run(images_per_second_per_device=100, model="resnext101_32x16d", dataset_images=3.6e9,
                           epochs=2, devices=100, scaling_efficiency=0.9, watts_per_device=300, pue=1.1,
                           grid_kg_per_kwh=0.429, throughput_source="hand")
    # 7.2e9 images / (100 img/s x 100 x 0.9 = 9,000 img/s) = 800,000 s = 222.2 h
    assert p["aggregate_images_per_second"] == pytest.approx(9000)
    assert p["hours"] == pytest.approx(800_000 / 3600)
    assert p["device_hours"] == pytest.approx(800_000 / 36)
    assert p["kwh"] == pytest.approx(800_000 / 3600 * 100 * 300 * 1.1 / 1000)  # 7,333 kWh
    assert p["tco2e"] == pytest.approx(p["kwh"] * 0.429 / 1000)
    text = " ".join(p["assumptions"])
    for needle in ("resnext101_32x16d", "100.0 img/s", "hand", "90%", "300 W", "PUE 1.1", "0.429"):
        assert needle in text, needle
    with pytest.raises(ValueError):
        E.project_full_run(images_per_second_per_device=0)
    with pytest.raises(ValueError):
        E.project_full_run(images_per_second_per_device=10, scaling_efficiency=1.5)


def test_goyal_scaling_efficiency_curve():
    assert E.goyal_scaling_efficiency(1) == 1.0
    assert E.goyal_scaling_efficiency(8) == 1.0
    assert E.goyal_scaling_efficiency(256) == pytest.approx(0.90)
    effs = [E.goyal_scaling_efficiency(n) for n in (8, 16, 64, 256, 336)]
    assert effs == sorted(effs, reverse=True) and 0.88 < effs[-1] < 0.90
    p = E.project_full_run(images_per_second_per_device=100, devices=336)
    assert p["scaling_efficiency"] == pytest.approx(E.goyal_scaling_efficiency(336))
    assert any("Goyal" in a for a in p["assumptions"])


def test_throughput_scaling_by_mult_adds_and_resolution():
    a = E.anchor_gpu_throughput("resnext101_32x16d")
    assert a["images_per_second"] == pytest.approx(276 * 16 / 36)
    assert "rough" in a["note"]
    # 4x the pixels -> 4x the mult-adds -> a quarter of the throughput
    s = E.scale_throughput(100, from_mult_adds=16e9, to_model="resnext101_32x8d", to_image_size=448)
    assert s["images_per_second"] == pytest.approx(25)
    assert E.model_mult_adds("resnext101_32x48d") == 153e9


def test_count_mult_adds_by_hand_and_against_the_published_figure():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1, groups=4),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    # 8x8 outputs: 8*64*(3*9) + 16*64*(2*9) + 16*10
    assert E.count_mult_adds(m, 8) == 8 * 64 * 27 + 16 * 64 * 18 + 160
    from pipeline.train.models import create_model

    # torchvision lists ResNeXt-50 32x4d at 4.23 GFLOPS (mult-adds) at 224 px
    assert E.count_mult_adds(create_model("resnext50_32x4d"), 224) / 1e9 == pytest.approx(4.23, rel=0.02)


# ----------------------------------------------------------------------------- measure_energy


def _busy(seconds: float) -> int:
    t0, x = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        x += 1
    return x


@pytest.fixture
def no_network(monkeypatch):
    """Fail (and record) any attempt to resolve a name or open a connection."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args[:2])
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return calls


def test_measure_energy_busy_loop_with_codecarbon_offline(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)  # codecarbon must not leave an emissions.csv (or anything) behind
    with E.measure_energy("busy", EnergyConfig(measure_power_secs=0.5)) as rec:
        _busy(0.6)
    assert rec["status"] == "ok" and rec["stage"] == "busy"
    assert rec["wall_seconds"] >= 0.6
    assert rec["cpu_seconds"] > 0.1 and rec["busy_cores"] > 0
    est = rec["estimate"]
    assert est["kwh"] > 0 and est["kg_co2e"] > 0
    assert est["kwh"] == pytest.approx(rec["wall_seconds"] / 3600 * rec["busy_cores"] * 4.0 * 1.58 / 1000, rel=1e-3)
    # codecarbon either ran (offline) or left a reason; it never crashes the stage
    if rec["codecarbon"] is not None:
        cc = rec["codecarbon"]
        assert cc["kwh"] > 0 and cc["kg_co2e"] > 0
        assert cc["grid_kg_per_kwh"] == pytest.approx(0.429, rel=1e-3)  # forced grid intensity
        assert cc["basis"].startswith(("measured", "modelled"))
    else:
        assert rec["codecarbon_error"]
    assert no_network == [], f"codecarbon tried the network: {no_network}"
    assert list(tmp_path.iterdir()) == []
    json.dumps(rec)  # the record is plain JSON


def test_measure_energy_without_codecarbon_falls_back_to_the_estimate(monkeypatch):
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # "import codecarbon" raises ImportError
    with E.measure_energy("busy", None) as rec:
        _busy(0.2)
    assert rec["codecarbon"] is None and "ModuleNotFoundError" in rec["codecarbon_error"]
    assert rec["estimate"]["kwh"] > 0


def test_measure_energy_survives_a_failing_codecarbon_stop(monkeypatch):
    class Broken:
        def stop(self):
            raise RuntimeError("no RAPL in this VM")

    monkeypatch.setattr(E, "_start_codecarbon", lambda name, ec: Broken())
    with E.measure_energy("busy", {}) as rec:
        _busy(0.1)
    assert rec["status"] == "ok" and rec["codecarbon"] is None
    assert "no RAPL" in rec["codecarbon_error"]
    assert rec["estimate"]["kwh"] > 0


def test_measure_energy_records_a_failed_stage_and_reraises():
    with pytest.raises(ZeroDivisionError):
        with E.measure_energy("bad", {"codecarbon": False}) as rec:
            _busy(0.05)
            1 / 0
    assert rec["status"] == "error" and rec["wall_seconds"] > 0
    assert rec["codecarbon_error"].startswith("disabled")


def test_measure_energy_counts_child_processes_and_gpus():
    code = "import time\nt=time.perf_counter()\nwhile time.perf_counter()-t<0.5: pass"
    with E.measure_energy("child", {"codecarbon": False}) as rec:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert rec["cpu_seconds_children"] > 0.2
    with E.measure_energy("gpu", {"codecarbon": False, "gpu_watts": 271.0, "pue": 1.1}, gpus=2) as g:
        time.sleep(0.05)
    assert g["gpus"] == 2 and g["estimate"]["processors"] == 2 and g["estimate"]["watts_per_processor"] == 271.0
    assert g["estimate"]["kwh"] == pytest.approx(g["wall_seconds"] / 3600 * 2 * 271 * 1.1 / 1000, rel=1e-3)


def test_energy_records_file_roundtrip(tmp_path):
    assert E.read_energy_records(tmp_path) == {}
    E.save_energy_record(tmp_path, {"stage": "ingest", "wall_seconds": 1.0})
    E.save_energy_record(tmp_path, {"stage": "dedup", "wall_seconds": 2.0})
    assert set(E.read_energy_records(tmp_path)) == {"ingest", "dedup"}
    assert (tmp_path / "run" / "energy.json").exists()


def test_energy_config_range_checks():
    validate_energy(EnergyConfig())
    for bad in (dict(pue=0.9), dict(grid_kg_per_kwh=-1), dict(country_iso_code="US"),
                dict(projection_gpus=[]), dict(scaling_efficiency=0.0), dict(cpu_watts_per_core=0)):
        with pytest.raises(ConfigError):
            validate_energy(EnergyConfig(**bad))
    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    with pytest.raises(ValidationError, match="gpu"):  # a closed choice (TrackingMode): rejected when composed
        OmegaConf.merge(OmegaConf.structured(EnergyConfig), {"tracking_mode": "gpu"})


def test_formatting_helpers():
    assert fmt_int(16709) == "16,709" and fmt_int(None) == "-"
    assert fmt_seconds(92.951) == "93.0 s" and fmt_seconds(7200 * 2) == "4.00 h"
    assert "years" in fmt_seconds(86400 * 2000)


# ----------------------------------------------------------------------------- report

def _tr(method, init, tpc, n, top1, ci1, top5, lb, lb_ci, **extra):
    return {"method": method, "init": init, "train_per_class": tpc, "train_images": n, "seeds": extra.pop("seeds", [0]),
            "top1": top1, "top1_ci": ci1, "top5": top5, "top5_ci": [top5 - 0.02, min(1.0, top5 + 0.01)],
            "lower_bound_top1": lb, "lower_bound_top1_ci": lb_ci, "lower_bound_top1_nn": None,
            "lower_bound_top1_nn_ci": None, "epochs": None, "best_C": None, "base_lr": None, **extra}


# the transfer stage's results.json (schema 2: a suite of targets), one target here
TRANSFER = {
    "schema": 2, "target_order": ["fashion_mnist"], "model": "resnext_mini", "image_size": 32,
    "seconds": {"total": 95.0},
    "targets": {"fashion_mnist": {
        "target": "fashion_mnist", "num_classes": 10, "image_size": 32, "val_images": 200, "val_images_available": 10000,
        "contaminated_val": 3, "lr_selection": None, "finetune_base_lr": 0.1,
        "contamination": {"phash": {"checked": True, "eval_set": "fashion_mnist_val", "count": 3},
                          "features": {"checked": False, "reason": "transfer.nn_decontam=false"}},
        "rows": [
            _tr("linear_probe", "pretrained", 2, 20, 0.4125, [0.38, 0.445], 0.8, 0.4, [0.37, 0.43], best_C=0.01,
                seconds=1.5, seeds=[0, 1, 2]),
            _tr("linear_probe", "scratch", 2, 20, 0.2, [0.17, 0.23], 0.6, 0.19, [0.16, 0.22], best_C=1.0, seconds=1.2,
                seeds=[0, 1, 2]),
            _tr("linear_probe", "pretrained", None, 500, 0.7321, [0.67, 0.79], 0.97, 0.72, [0.66, 0.78], best_C=0.1,
                seconds=3.0),
            _tr("finetune", "pretrained", None, 500, 0.8456, [0.81, 0.88], 0.99, 0.83, [0.795, 0.865], epochs=2,
                base_lr=0.1, seconds=40.0),
            _tr("finetune", "scratch", None, 500, 0.6012, [0.535, 0.67], 0.95, 0.59, [0.525, 0.655], epochs=2,
                base_lr=0.1, seconds=38.0),
        ],
        "gains": [
            {"method": "linear_probe", "train_per_class": 2, "metric": "top1", "pretrained": 0.4125, "scratch": 0.2,
             "diff": 0.2125, "lo": 0.15, "hi": 0.27, "measurable": True, "verdict": "gain"},
            {"method": "finetune", "train_per_class": None, "metric": "top1", "pretrained": 0.8456, "scratch": 0.6012,
             "diff": 0.2444, "lo": -0.01, "hi": 0.288, "measurable": False, "verdict": "no measurable gain"},
        ],
    }},
}


@pytest.fixture(scope="module")
def reported_run(prepared_fixture, tmp_path_factory):
    """A real tiny run: fixture ingest/dedup/vocab, an in-process pretrain measured by
    measure_energy, a hand-written transfer/results.json; then the report."""
    from pipeline.pretrain import run_pretrain

    run = copy_run(prepared_fixture, tmp_path_factory.mktemp("report") / "run")
    cfg = stage_cfg(run, "pretrain.model=resnext_mini", "pretrain.image_size=32", "pretrain.batch_size=8",
                    "pretrain.epochs=1", "pretrain.workers=0", "pretrain.progress=false", "pretrain.threads=1",
                    "pretrain.heldout_fraction=0.1", "pretrain.eval_every_steps=4", "pretrain.checkpoint_every_steps=100",
                    "energy.measure_power_secs=1")
    with E.measure_energy("pretrain", cfg.energy) as rec:
        run_pretrain(cfg)
    (run / "transfer").mkdir()
    (run / "transfer" / "results.json").write_text(json.dumps(TRANSFER))
    rows = [{"target": "fashion_mnist", "init": i, "train_per_class": None, "seed": 0, "epoch": e, "loss": 2.0 / e, "top1": t,
             "top5": 0.9, "seconds": 1.0}
            for i, ts in (("pretrained", (0.7, 0.85)), ("scratch", (0.4, 0.6))) for e, t in zip((1, 2), ts)]
    (run / "transfer" / "finetune_epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_report(run, {"pretrain": rec})
    return run, path, rec


def _manifest(run, stage):
    return json.loads((run / stage / "manifest.json").read_text())


def test_report_tables_come_from_the_stage_outputs(reported_run):
    run, path, rec = reported_run
    assert path == run / "report.md"
    text = path.read_text()
    ing = _manifest(run, "ingest")["counts"]
    assert f"written **{ing['written']:,}**" in text
    for name, v in ing["by_source"].items():
        assert f"| {name} | {v['input']:,} | {v['written']:,} | {v['quarantined']:,} |" in text
    dd = _manifest(run, "dedup")["counts"]
    assert f"| {dd['samples']:,} | {dd['exact']:,} | {dd['near']:,} |" in text
    voc = json.loads((run / "vocab" / "vocab.json").read_text())
    assert f"**{voc['num_classes']:,} classes**" in text
    pt = _manifest(run, "pretrain")["counts"]
    assert f"{pt['steps']:,} / {pt['total_steps']:,}" in text
    assert f"| class-prior baseline (predict by class frequency) | {pt['prior_precision_at_1']:.4f} | {pt['prior_mAP']:.4f} |" in text
    assert f"| scratch: random init (step 0) | {pt['scratch_precision_at_1']:.4f} |" in text
    # transfer: one table per target with 95% intervals, and the pretrained-vs-scratch differences with theirs
    assert "### Target `fashion_mnist`" in text
    assert "| finetune | pretrained | full | 500 | 1 | 84.6% [81.0, 88.0] | 99.0% [97.0, 100.0] | 83.0% [79.5, 86.5] | - | 2 | lr 0.1 |" in text
    assert "| linear probe | pretrained | 2 | 20 | 3 | 41.2% [38.0, 44.5] | 80.0% [78.0, 81.0] | 40.0% [37.0, 43.0] | - | - | C 0.0100 |" in text
    assert "| linear probe | 2 | 41.2% | 20.0% | +21.2 [+15.0, +27.0] | gain |" in text
    assert "| finetune | full | 84.6% | 60.1% | +24.4 [-1.0, +28.8] | no measurable gain |" in text
    assert "3 of 200 val images have a near duplicate" in text
    # energy: the measured pretrain record, side by side; the other stages marked as assumed
    assert f"| pretrain | {fmt_seconds(rec['wall_seconds'])} |" in text
    assert "| ingest * |" in text and "Patterson" in text and "PUE 1.58" in text
    # projection with its assumptions
    assert "resnext101_32x16d" in text and "336 GPUs" in text and "Goyal" in text and "rough scaling" in text
    assert "this run's pretrain" in text
    assert str(run.parent) not in text and "/tmp" not in text  # no absolute paths


def test_report_plots_exist_and_are_pngs(reported_run):
    run, _, _ = reported_run
    text = (run / "report.md").read_text()
    for name in ("class_frequency.png", "training_curves.png", "heldout_eval.png", "transfer.png",
                 "finetune_epochs.png", "energy.png"):
        p = run / "report" / name
        assert p.exists(), name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000, name
        assert f"](report/{name})" in text, name


def test_report_cli_reads_energy_json(reported_run, capsys):
    run, _, rec = reported_run
    E.write_energy_records(run, {"pretrain": rec})
    (run / "report.md").unlink()
    assert report_main([str(run)]) == 0
    text = (run / "report.md").read_text()
    assert f"| pretrain | {fmt_seconds(rec['wall_seconds'])} |" in text
    est_wh = 1000 * rec["estimate"]["kwh"]
    assert math.isfinite(est_wh) and est_wh > 0


def test_report_shows_missing_stages_as_not_run(prepared_fixture, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = write_report(empty).read_text()
    for title in ("Ingest", "Dedup", "Vocabulary", "Pretraining", "Transfer"):
        section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
        assert "not run" in section, title
    assert "| transfer | not run |" in text and "Full-scale projection" in text

    partial = copy_run(prepared_fixture, tmp_path / "partial", stages=("ingest",))
    (partial / "pretrain").mkdir()  # a stage that started and has no manifest yet
    text = write_report(partial).read_text()
    assert "| ingest | done |" in text and "| dedup | not run |" in text
    assert "| pretrain | running or interrupted |" in text
    assert not (partial / "report" / "training_curves.png").exists()
