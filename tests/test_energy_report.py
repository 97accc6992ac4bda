"""Energy accounting (Patterson formula, projection, measure_energy); the run report is tests/test_report.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from pipeline.config import EnergyConfig, validate_energy
from pipeline.errors import ConfigError
from pipeline.io import run_folder as rf
from pipeline.orchestration import energy as EM
from pipeline.reporting import energy as E
from pipeline.reporting import full_scale as FS

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
    p = FS.project_full_run(
        images_per_second_per_device=100,
        model="resnext101_32x16d",
        dataset_images=3.6e9,
        epochs=2,
        devices=100,
        scaling_efficiency=0.9,
        watts_per_device=300,
        pue=1.1,
        grid_kg_per_kwh=0.429,
        throughput_source="hand",
    )
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
        FS.project_full_run(images_per_second_per_device=0)
    with pytest.raises(ValueError):
        FS.project_full_run(images_per_second_per_device=10, scaling_efficiency=1.5)


def test_goyal_scaling_efficiency_curve():
    assert FS.goyal_scaling_efficiency(1) == 1.0
    assert FS.goyal_scaling_efficiency(8) == 1.0
    assert FS.goyal_scaling_efficiency(256) == pytest.approx(0.90)
    effs = [FS.goyal_scaling_efficiency(n) for n in (8, 16, 64, 256, 336)]
    assert effs == sorted(effs, reverse=True) and 0.88 < effs[-1] < 0.90
    p = FS.project_full_run(images_per_second_per_device=100, devices=336)
    assert p["scaling_efficiency"] == pytest.approx(FS.goyal_scaling_efficiency(336))
    assert any("Goyal" in a for a in p["assumptions"])


def test_throughput_scaling_by_mult_adds_and_resolution():
    a = FS.anchor_gpu_throughput("resnext101_32x16d")
    assert a["images_per_second"] == pytest.approx(276 * 16 / 36)
    assert "rough" in a["note"]
    # 4x the pixels -> 4x the mult-adds -> a quarter of the throughput
    s = FS.scale_throughput(100, from_mult_adds=16e9, to_model="resnext101_32x8d", to_image_size=448)
    assert s["images_per_second"] == pytest.approx(25)
    assert FS.model_mult_adds("resnext101_32x48d") == 153e9


@pytest.mark.slow
def test_count_mult_adds_by_hand_and_against_the_published_figure():
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 16, 3, padding=1, groups=4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    # 8x8 outputs: 8*64*(3*9) + 16*64*(2*9) + 16*10 (biases, pooling not counted)
    assert FS.count_mult_adds(m, 8) == 8 * 64 * 27 + 16 * 64 * 18 + 160
    assert m.training  # the count runs in eval mode and restores the mode
    with torch.device("meta"):
        m_meta = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1, groups=4))
    assert FS.count_mult_adds(m_meta, 8) == 8 * 64 * 27 + 16 * 64 * 18  # from shapes alone on the meta device

    from pipeline.train.models import create_model

    # torchvision lists GFLOPS (= mult-adds) at 224 px in its weights' metadata (read without downloading)
    published = {
        "resnext50_32x4d": tvm.ResNeXt50_32X4D_Weights.IMAGENET1K_V1.meta["_ops"] * 1e9,  # 4.23
        "resnext101_32x8d": tvm.ResNeXt101_32X8D_Weights.IMAGENET1K_V1.meta["_ops"] * 1e9,  # 16.414
        "resnext101_32x48d": 153e9,  # Mahajan et al. 2018, Table 1 (its 32x8d "16B" is rounded: 16.41B)
    }
    for name, ref in published.items():
        with torch.device("meta"):  # shapes only: the 32x48d (829M parameters) costs neither memory nor compute
            model = create_model(name)
        assert FS.count_mult_adds(model, 224) == pytest.approx(ref, rel=0.01), name
    assert FS.model_mult_adds("resnext50_32x4d") == pytest.approx(published["resnext50_32x4d"], rel=0.01)
    assert FS.model_mult_adds("resnext_mini", 64) == FS.count_mult_adds(create_model("resnext_mini"), 64)  # meta = CPU


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


@pytest.mark.slow
def test_measure_energy_busy_loop_with_codecarbon_offline(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)  # codecarbon must not leave an emissions.csv (or anything) behind
    with EM.measure_energy("busy", EnergyConfig(measure_power_secs=0.5)) as rec:
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
    with EM.measure_energy("busy", None) as rec:
        _busy(0.2)
    assert rec["codecarbon"] is None and "ModuleNotFoundError" in rec["codecarbon_error"]
    assert rec["estimate"]["kwh"] > 0


def test_measure_energy_survives_a_failing_codecarbon_stop(monkeypatch):
    class Broken:
        def stop(self):
            raise RuntimeError("no RAPL in this VM")

    monkeypatch.setattr(EM, "_start_codecarbon", lambda name, ec: Broken())
    with EM.measure_energy("busy", {}) as rec:
        _busy(0.1)
    assert rec["status"] == "ok" and rec["codecarbon"] is None
    assert "no RAPL" in rec["codecarbon_error"]
    assert rec["estimate"]["kwh"] > 0


def test_measure_energy_records_a_failed_stage_and_reraises():
    with pytest.raises(ZeroDivisionError):
        with EM.measure_energy("bad", {"codecarbon": False}) as rec:
            _busy(0.05)
            _ = 1 / 0
    assert rec["status"] == "error" and rec["wall_seconds"] > 0
    assert rec["codecarbon_error"].startswith("disabled")


def test_measure_energy_counts_child_processes_and_gpus():
    code = "import time\nt=time.perf_counter()\nwhile time.perf_counter()-t<0.5: pass"
    with EM.measure_energy("child", {"codecarbon": False}) as rec:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert rec["cpu_seconds_children"] > 0.2
    with EM.measure_energy("gpu", {"codecarbon": False, "gpu_watts": 271.0, "pue": 1.1}, gpus=2) as g:
        time.sleep(0.05)
    assert g["gpus"] == 2 and g["estimate"]["processors"] == 2 and g["estimate"]["watts_per_processor"] == 271.0
    assert g["estimate"]["kwh"] == pytest.approx(g["wall_seconds"] / 3600 * 2 * 271 * 1.1 / 1000, rel=1e-3)


def test_energy_records_file_roundtrip(tmp_path):
    assert rf.read_energy_records(tmp_path) == {}
    EM.save_energy_record(tmp_path, {"stage": "ingest", "wall_seconds": 1.0})
    EM.save_energy_record(tmp_path, {"stage": "dedup", "wall_seconds": 2.0})
    assert set(rf.read_energy_records(tmp_path)) == {"ingest", "dedup"}
    assert (tmp_path / "run" / "energy.json").exists()


def test_energy_config_range_checks():
    validate_energy(EnergyConfig())
    for bad in (
        dict(pue=0.9),
        dict(grid_kg_per_kwh=-1),
        dict(country_iso_code="US"),
        dict(projection_gpus=[]),
        dict(scaling_efficiency=0.0),
        dict(cpu_watts_per_core=0),
    ):
        with pytest.raises(ConfigError):
            validate_energy(EnergyConfig(**bad))
    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    with pytest.raises(ValidationError, match="gpu"):  # a closed choice (TrackingMode): rejected when composed
        OmegaConf.merge(OmegaConf.structured(EnergyConfig), {"tracking_mode": "gpu"})


def test_energy_settings_default_to_energy_config():
    d = EnergyConfig()
    for key in ("pue", "grid_kg_per_kwh", "cpu_watts_per_core", "gpu_watts", "projection_gpus", "scaling_efficiency"):
        assert E.energy_setting(None, key) == getattr(d, key), key
        assert E.energy_setting({key: None}, key) == getattr(d, key), key  # None = the default
    assert E.energy_setting({"pue": 1.1}, "pue") == 1.1 and E.energy_setting(EnergyConfig(gpu_watts=271.0), "gpu_watts") == 271.0
    assert (E.PUE_US_AVERAGE, E.GRID_US_AVERAGE_KG_PER_KWH, E.CPU_WATTS_PER_CORE, E.GPU_SYSTEM_WATTS["V100"]) == (
        d.pue,
        d.grid_kg_per_kwh,
        d.cpu_watts_per_core,
        d.gpu_watts,
    )
    with pytest.raises(AttributeError):
        E.energy_setting(None, "no_such_setting")
