"""Throughput scaling and the projection of the full-scale run (the paper's 3.5B images, up to 336 GPUs).

:func:`project_full_run` turns a per-device training throughput into hours, GPU-hours, kWh and
tCO2e, with every assumption returned beside the numbers; energy by the Patterson et al. 2021
formula (:mod:`pipeline.reporting.energy`). A throughput measured on one model is carried to
another by the mult-adds ratio (:func:`scale_throughput`, a rough scaling; mult-adds from the papers or counted by
``torch.utils.flop_counter.FlopCounterMode``, :func:`count_mult_adds`); the anchor is timm's
published figure for ResNeXt-101 32x8d (:func:`anchor_gpu_throughput`); multi-GPU scaling
follows Goyal et al. 2017 (:func:`goyal_scaling_efficiency`).
"""

from __future__ import annotations

import math
from typing import TypedDict

from pipeline.reporting.energy import (
    DEFAULTS,
    GPU_SYSTEM_WATTS,
    GRID_US_AVERAGE_KG_PER_KWH,
    PUE_US_AVERAGE,
    patterson_kwh,
    patterson_tco2e,
)

# Mahajan et al. 2018 / facebookresearch/WSL-Images README: mult-adds at 224 px
MULT_ADDS_224 = {
    "resnext101_32x8d": 16e9,
    "resnext101_32x16d": 36e9,
    "resnext101_32x32d": 87e9,
    "resnext101_32x48d": 153e9,
}


class _Anchor(TypedDict):
    model: str
    images_per_second: float
    image_size: int
    device: str
    precision: str
    source: str


# timm's published inference/training benchmark tables (huggingface/pytorch-image-models, results/)
ANCHOR_THROUGHPUT: _Anchor = {
    "model": "resnext101_32x8d",
    "images_per_second": 276.0,
    "image_size": 224,
    "device": "RTX 3090",
    "precision": "AMP",
    "source": "timm benchmark (RTX 3090, AMP, NCHW): resnext101_32x8d 276 img/s",
}
# Goyal et al. 2017: ~90% scaling efficiency from 8 to 256 GPUs
GOYAL_EFFICIENCY = {"from_devices": 8, "to_devices": 256, "efficiency": 0.90}
FULL_SCALE_IMAGES = DEFAULTS.projection_images  # Mahajan et al. 2018: up to 3.5B Instagram images


def count_mult_adds(model, image_size: int) -> int:
    """Mult-adds of one forward pass of ``model`` on a ``(1, 3, S, S)`` image (S = ``image_size`` px).

    Counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per
    multiply-accumulate of the matrix products and convolutions (a grouped convolution:
    ``2 x out_elements x (in_channels / groups) x kh x kw``; biases are not counted), so
    mult-adds = FLOPs / 2. BatchNorm, activations and pooling are not counted, as in the
    published figures (Mahajan et al. 2018, Table 1; torchvision's ``GFLOPS``, which are mult-adds).

    The forward pass runs in eval mode without gradients on the device of ``model``'s
    parameters: a model built under ``with torch.device("meta"):`` is counted from shapes
    alone, without memory or compute (:func:`model_mult_adds` does this).

    Returns:
        The count, an int (e.g. 16,414,015,488 for ResNeXt-101 32x8d at 224 px).
    """
    import torch  # torch is imported on first use: the projection arithmetic of this module does not need it
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    counter = FlopCounterMode(display=False)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def model_mult_adds(model_name: str, image_size: int = 224, num_classes: int = 1000) -> float:
    """Mult-adds of a model at ``image_size`` px.

    The papers' figures (Mahajan et al. 2018, Table 1, scaled by pixel count ``(image_size / 224) ** 2``)
    for the ResNeXt-101 32xCd models of :data:`MULT_ADDS_224`; else :func:`count_mult_adds` on the
    registered model built on the meta device (shapes only: no weights allocated, no compute).

    Raises:
        ValueError: ``model_name`` is not a registered model (:func:`pipeline.train.models.create_model`).
    """
    if model_name in MULT_ADDS_224:
        return MULT_ADDS_224[model_name] * (image_size / 224.0) ** 2
    import torch  # see count_mult_adds

    from pipeline.train.models import create_model

    with torch.device("meta"):
        model = create_model(model_name, num_classes=num_classes)
    return float(count_mult_adds(model, image_size))


def scale_throughput(
    images_per_second: float, *, from_mult_adds: float, to_model: str, to_image_size: int = 224, from_label: str = ""
) -> dict:
    """Rough scaling of a measured throughput to another model: throughput x (mult-adds ratio).

    ``from_mult_adds`` is the measured model's mult-adds *at its own image size*; the
    target's mult-adds at ``to_image_size`` are the paper's figure at 224 px times
    ``(to_image_size / 224) ** 2``. Throughput is taken as inversely proportional to
    mult-adds per image, which ignores memory bandwidth, kernel efficiency of wider
    grouped convolutions, batch size and data loading: a rough scaling, good to a
    factor of about 2, not a measurement.
    """
    to_madds = model_mult_adds(to_model, to_image_size)
    ratio = from_mult_adds / to_madds
    return {
        "images_per_second": images_per_second * ratio,
        "from_images_per_second": images_per_second,
        "from": from_label,
        "from_mult_adds": from_mult_adds,
        "to_model": to_model,
        "to_image_size": to_image_size,
        "to_mult_adds": to_madds,
        "ratio": ratio,
        "note": "rough scaling by the mult-adds ratio (incl. resolution); not a measurement",
    }


def anchor_gpu_throughput(to_model: str = DEFAULTS.projection_model, to_image_size: int = 224) -> dict:
    """Per-GPU training throughput of ``to_model`` from the timm anchor figure
    (resnext101_32x8d, 276 img/s on one RTX 3090 with AMP), scaled by mult-adds."""
    a = ANCHOR_THROUGHPUT
    return scale_throughput(
        a["images_per_second"],
        from_mult_adds=model_mult_adds(a["model"], a["image_size"]),
        to_model=to_model,
        to_image_size=to_image_size,
        from_label=a["source"],
    )


def goyal_scaling_efficiency(devices: int) -> float:
    """Scaling efficiency vs. linear for ``devices`` GPUs, after Goyal et al. 2017.

    1.0 up to 8 GPUs (one server), then falling linearly in log2(devices) to 0.90 at
    256 GPUs (Goyal: ~90% from 8 to 256), extrapolated beyond (0.89 at 336), floor 0.5.
    """
    g = GOYAL_EFFICIENCY
    if devices <= g["from_devices"]:
        return 1.0
    slope = (1.0 - g["efficiency"]) / math.log2(g["to_devices"] / g["from_devices"])
    return max(0.5, 1.0 - slope * math.log2(devices / g["from_devices"]))


def project_full_run(
    *,
    images_per_second_per_device: float,
    model: str = DEFAULTS.projection_model,
    dataset_images: float = FULL_SCALE_IMAGES,
    epochs: float = DEFAULTS.projection_epochs,
    devices: int = 336,
    scaling_efficiency: float | None = None,
    watts_per_device: float = GPU_SYSTEM_WATTS["V100"],
    pue: float = PUE_US_AVERAGE,
    grid_kg_per_kwh: float = GRID_US_AVERAGE_KG_PER_KWH,
    device: str = "GPU",
    throughput_source: str = "",
) -> dict:
    """Hours, device-hours, kWh and tCO2e of training ``model`` on ``dataset_images`` for ``epochs``.

    ``hours = dataset_images x epochs / (images_per_second_per_device x devices x efficiency) / 3600``;
    energy and emissions by the Patterson formula with ``devices`` processors at
    ``watts_per_device``. Returns the numbers and an ``assumptions`` list of sentences.

    Raises:
        ValueError: a non-positive throughput, device count, dataset size or epochs, or an
            efficiency outside (0, 1].
    """
    if images_per_second_per_device <= 0 or devices < 1 or dataset_images <= 0 or epochs <= 0:
        raise ValueError("throughput, devices, dataset_images and epochs must be positive")
    eff_source = "given"
    if scaling_efficiency is None:
        scaling_efficiency = goyal_scaling_efficiency(devices)
        eff_source = "Goyal et al. 2017 (~90% from 8 to 256 GPUs; 1.0 up to 8, linear in log2(devices), extrapolated beyond 256)"
    if not 0 < scaling_efficiency <= 1:
        raise ValueError(f"scaling_efficiency must be in (0, 1], got {scaling_efficiency}")
    images = dataset_images * epochs
    aggregate = images_per_second_per_device * devices * scaling_efficiency
    seconds = images / aggregate
    hours = seconds / 3600.0
    kwh = patterson_kwh(hours, devices, watts_per_device, pue)
    t = patterson_tco2e(kwh, grid_kg_per_kwh)
    return {
        "model": model,
        "device": device,
        "devices": devices,
        "dataset_images": dataset_images,
        "epochs": epochs,
        "images": images,
        "images_per_second_per_device": images_per_second_per_device,
        "scaling_efficiency": scaling_efficiency,
        "aggregate_images_per_second": aggregate,
        "hours": hours,
        "days": hours / 24.0,
        "device_hours": hours * devices,
        "watts_per_device": watts_per_device,
        "pue": pue,
        "grid_kg_per_kwh": grid_kg_per_kwh,
        "kwh": kwh,
        "tco2e": t,
        "assumptions": [
            f"{model} trained on {dataset_images:,.0f} images x {epochs:g} epoch(s) = {images:,.0f} images",
            f"{images_per_second_per_device:,.1f} img/s per {device}" + (f" ({throughput_source})" if throughput_source else ""),
            f"{devices} {device}s at {scaling_efficiency:.0%} scaling efficiency ({eff_source})",
            f"{watts_per_device:g} W average system power per {device}, PUE {pue:g}, "
            f"grid {grid_kg_per_kwh:g} kgCO2e/kWh (Patterson et al. 2021 formula)",
            "training only: no data preprocessing, evaluation, checkpoint I/O, restarts or idle time",
        ],
    }
