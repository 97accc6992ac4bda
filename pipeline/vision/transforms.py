"""Image transforms shared by pretraining (:mod:`pipeline.train.loader`) and transfer (:mod:`pipeline.evaluation`).

One implementation of each step, so the two stages see the same pixels for the same recipe:

- :func:`decode`: shard image bytes -> RGB PIL image, shorter side reduced below ``4 x size`` px (integer box reduction);
- :func:`train_transform`: random-resized crop (:func:`rrc_box`, torchvision's algorithm) +
  horizontal flip, seeded by a ``random.Random`` the caller derives with :func:`item_seed`;
- :func:`eval_transform`: resize the shorter side to ``size * 256/224`` then centre crop
  (the WSL models' eval recipe);
- :func:`normalize`: uint8 -> float32 with the ImageNet :data:`MEAN` / :data:`STD`, on the
  tensor's device (images travel as uint8: 4x less to copy to a GPU).

Every transform returns a uint8 tensor (3, size, size) in CHW order.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipeline.vision.images import SHARD_FORMATS

__all__ = ["MEAN", "STD", "decode", "eval_transform", "normalize", "rrc_box", "train_transform"]

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def rrc_box(width: int, height: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Random-resized-crop box (left, top, right, bottom) in px: torchvision's algorithm.

    Ten tries at a random area fraction in ``scale`` and log-uniform aspect ratio in
    ``ratio``; else the centre crop clamped to ``ratio`` (Szegedy et al. 2015 augmentation).
    """
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def decode(blob: bytes, size: int) -> Image.Image:
    """Decode a shard image to RGB, its shorter side reduced to between ``2 x size`` and ``4 x size`` px
    when it was longer.

    JPEGs are drafted (DCT scaling) to >= 2x ``size`` px first; any image whose shorter side is then
    still at least ``4 x size`` is box-reduced by the largest integer factor that keeps it >= 2x ``size``
    (Pillow's ``Image.reduce``: the mean of each f x f block, antialiased). So at most 2x upsampling remains
    for the smallest random-resized crops (side 0.28 of the image), the result is small enough to keep
    decoded (:mod:`pipeline.train.decoded_cache`), and no image pays a resampling pass of its own before
    the crop's: the crop's resize is the only interpolation (one process over the demo's shards, decode +
    crop: 1.05-1.10 ms an image against 1.23-1.26 for a bilinear resize to exactly 2x ``size`` and
    0.88-0.93 without any cap, ``docs/benchmarks.md``, training loader). Images are never enlarged.

    Pillow is asked for the formats ingest writes (:data:`pipeline.vision.images.SHARD_FORMATS`) first: probing
    every registered format cost 0.05 ms an image of the demo's 0.85 ms open + convert (one process, 8,146 WebPs,
    AVX512); any other format is still identified by the full probe.

    Raises:
        PIL.UnidentifiedImageError: the bytes are not an image Pillow can read.
    """
    fp = io.BytesIO(blob)
    try:
        img: Image.Image = Image.open(fp, formats=SHARD_FORMATS)
    except UnidentifiedImageError:
        img = Image.open(fp)
    if img.format == "JPEG":
        img.draft("RGB", (2 * size, 2 * size))
    if img.mode == "RGB":
        img.load()  # convert("RGB") would decode and then copy it (0.03 ms an image of the demo)
    else:
        img = img.convert("RGB")
    factor = min(img.width, img.height) // (2 * size)
    if factor >= 2:
        img = img.reduce(factor)
    return img


def train_transform(img: Image.Image, size: int, rng: random.Random, scale: tuple[float, float] = (0.08, 1.0)) -> torch.Tensor:
    """Random-resized crop (area fraction in ``scale``, aspect 3/4-4/3; torchvision's algorithm,
    :func:`rrc_box`) to ``size`` px + horizontal flip: uint8 tensor (3, size, size).

    ``scale``: ImageNet's (0.08, 1) (Szegedy et al. 2015), the pretraining loader's, suits
    large photos; on small, centred objects such as Fashion-MNIST's 28x28 clothes an 8% crop
    is a few pixels of texture, so transfer takes a larger minimum (``transfer.crop_min_scale``).
    """
    box = rrc_box(img.width, img.height, rng, scale=scale)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1)


def eval_transform(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to size*256/224 px, centre crop: uint8 tensor (3, size, size)."""
    short = max(size, round(size * 256 / 224))
    scale = short / min(img.width, img.height)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    out = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 normalized with the ImageNet mean and std, on its device.

    A floating-point batch is taken as already normalized (by the loader workers,
    ``ShardStream(normalize_in_workers=True)``) and returned unchanged.
    """
    if images.is_floating_point():
        return images
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1) * 255.0
    return images.float().sub_(mean).div_(std)  # (x / 255 - mean) / std in one new tensor and two in-place passes
