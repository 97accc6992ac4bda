"""The ImageNet-1k transfer stage projected to one 8-GPU node and to 4 nodes, from per-image costs measured here.

``python -m benchmarks.transfer_projection [--json FILE] [--quick]``

What is measured on this CPU (the machine running the command):

* **fine-tuning and feature extraction per image**: ``resnext101_32x8d`` at 224 px, batch 4, fp32: seconds
  per image of a training step (forward, backward, SGD step; :func:`pipeline.train.optim.make_optimizer`) and of
  a no-grad forward pass (the probe's features, val scoring). Their ratio converts a GPU training rate into a
  forward-only rate (assumed to carry over to the GPU: both are convolution-bound);
* **one full-batch L-BFGS iteration of the probe** (:func:`pipeline.evaluation.probe_solver.lbfgs_fit`, the
  layer2-4 features, D = 3,584, 1,000 classes) at several N, fitted ``seconds = a + b N`` (least squares over
  the sizes; the fit's largest relative residual is printed): the per-row cost an iteration adds.

What is taken from published figures (none measured on a GPU here; ``benchmarks.gpu_check`` will measure them):

* the per-GPU training rate of ``resnext101_32x8d`` at 224 px, AMP: timm's RTX 3090 figure
  (:data:`pipeline.reporting.full_scale.ANCHOR_THROUGHPUT`), other models scaled by mult-adds
  (:func:`pipeline.reporting.full_scale.anchor_gpu_throughput`); an "A100-class" column multiplies it by 1.49,
  the ratio of NVIDIA's A100 40GB figure (908 img/s) to timm's RTX 3090 figure (609 img/s) for
  ``resnext101_32x4d`` (``benchmarks.gpu_check.ANCHORS``; two software stacks: a rough ratio);
* scaling efficiency over GPUs: :func:`pipeline.reporting.full_scale.goyal_scaling_efficiency` (1.0 within a
  node, ~0.97 at 32 GPUs);
* the probe's L-BFGS on a GPU: its flops (4 N D K per evaluation: logits and gradient; about two evaluations
  per iteration, the line search) at 25% of an A100's 156 TF32 TFLOP/s, at most ``probe_max_iter`` iterations
  for each of the grid's fits and the refit (an upper bound: warm-started fits stop earlier).

The workload is ``conf/transfer/target/imagenet1k.yaml`` composed with ``+transfer=imagenet1k`` (1,281,167
training and 50,000 val images, 1,000 classes): the lr selection runs, both inits' fine-tuning runs of every
setting (epochs of at least ``min_epoch_images``), val scored every epoch at ``test_image_size`` (twice with a
weight average), and both inits' probe features (every training image of the full setting and the val images,
at the training size) and fits. Host memory per rank: each rank keeps the features of its block of the training
images for one init at a time (4 bytes x N / world x D), the val images streamed (``eval_cache_mb: 0``).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

IMAGENET_TRAIN, IMAGENET_VAL, IMAGENET_CLASSES = 1_281_167, 50_000, 1000
PROBE_DIM = 3584  # layer2-4 pooled (512 + 1024 + 2048)
A100_VS_3090 = 908.40 / 609.01  # resnext101_32x4d: NVIDIA DLE A100 40GB vs timm RTX 3090 (benchmarks.gpu_check.ANCHORS)
TF32_EFFECTIVE = 0.25 * 156e12  # flop/s of the probe's matmuls on one A100 (an assumption: 25% of TF32 peak)


def _per_image_seconds(model_name: str, size: int, batch: int, reps: int) -> dict:
    """Seconds per image of a training step and of a no-grad forward pass, median of ``reps`` after a warm-up."""
    from pipeline.train.models import create_model
    from pipeline.train.optim import make_optimizer

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=IMAGENET_CLASSES)
    opt = make_optimizer(model, 0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, IMAGENET_CLASSES, (batch,))

    def train() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    out = {}
    for name, fn in (("train", train), ("forward", forward)):
        fn()  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) / batch)
        out[name] = float(np.median(times))
    return out


def _lbfgs_iteration_seconds(sizes: list[int], d: int, k: int) -> dict:
    """Seconds per L-BFGS iteration at each N (3 iterations timed, first-call costs untimed), and the fit a + b N."""
    from pipeline.evaluation.probe_solver import lbfgs_fit

    rng = np.random.default_rng(0)
    secs = []
    for n in sizes:
        xs = torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32))
        y = torch.from_numpy(rng.integers(0, k, n))
        lbfgs_fit(xs[:256], y[:256], k, 1.0, max_iter=1, tol=1e-12)
        t = time.perf_counter()
        _, _, it = lbfgs_fit(xs, y, k, 1.0, max_iter=3, tol=1e-12)
        secs.append((time.perf_counter() - t) / max(1, it))
    b, a = np.polyfit(np.asarray(sizes, float), np.asarray(secs), 1)
    fit = a + b * np.asarray(sizes, float)
    return {
        "sizes": sizes,
        "seconds": [round(s, 4) for s in secs],
        "a": float(a),
        "b_per_row": float(b),
        "max_rel_residual": float(np.max(np.abs(fit - secs) / np.asarray(secs))),
    }


def workload(recipe: dict) -> dict:
    """Images of each kind the imagenet1k recipe processes (both inits), from its effective recipe (a dict).

    Returns ``{"train": training images (lr selection + fine-tuning), "forward_train_size": forward-only images at
    the training size (probe features, lr hold-out scoring), "forward_test_size": val images scored during
    fine-tuning, "probe_fits": [(rows, fits)]}``.
    """
    n, inits = IMAGENET_TRAIN, 2
    full = min(n, IMAGENET_CLASSES * recipe["max_train_per_class"]) if recipe["max_train_per_class"] else n
    settings = [IMAGENET_CLASSES * int(k) for k in recipe["low_data_per_class"]] + ([full] if recipe["full"] else [])
    grid = len(recipe["finetune_lr_grid"]) if len(recipe["finetune_lr_grid"]) > 1 else 0
    fit_part = int(full * (1 - recipe["lr_select_holdout_fraction"]))
    per_sel_epoch = min(fit_part, recipe["lr_select_max_images"] or fit_part)
    train = grid * recipe["lr_select_epochs"] * per_sel_epoch
    fwd_train = grid * (full - fit_part)
    fwd_test = 0
    epochs = int(recipe["finetune_epochs"])
    for i, m in enumerate(settings):
        seeds = 1 if (recipe["full"] and i == len(settings) - 1) else int(recipe["finetune_seeds"])
        per_epoch = max(1, math.ceil(recipe["min_epoch_images"] / m)) * m
        train += inits * seeds * epochs * per_epoch
        scored = epochs if recipe["eval_every_epoch"] else 1
        fwd_test += inits * seeds * scored * IMAGENET_VAL * (2 if recipe["ema_decay"] else 1)
    fwd_train += inits * (full + IMAGENET_VAL)  # probe features: every image of the full setting, and val
    fits = [(m, 1 if (recipe["full"] and i == len(settings) - 1) else int(recipe["probe_seeds"])) for i, m in enumerate(settings)]
    return {"train": train, "forward_train_size": fwd_train, "forward_test_size": fwd_test, "probe_fits": fits}


def project(recipe: dict, measured: dict, model: str, gpus: int, gpu_scale: float) -> dict:
    """Hours of the transfer stage on ``gpus`` GPUs (see the module docstring for every assumption)."""
    from pipeline.reporting.full_scale import anchor_gpu_throughput, goyal_scaling_efficiency

    w = workload(recipe)
    size, test = int(recipe.get("image_size") or 224), int(recipe["test_image_size"] or 224)
    rate = anchor_gpu_throughput(model, size)["images_per_second"] * gpu_scale  # training img/s per GPU
    fwd_ratio = measured["forward"] / measured["train"]  # forward-only cost per image, in training steps
    train_equiv = w["train"] + fwd_ratio * (w["forward_train_size"] + w["forward_test_size"] * (test / size) ** 2)
    eff = goyal_scaling_efficiency(gpus)
    finetune_h = train_equiv / (rate * gpus * eff) / 3600
    fits = 1 + len(recipe["probe_Cs"])  # the grid and the refit
    probe_flops = sum(2 * 4 * m * PROBE_DIM * IMAGENET_CLASSES * recipe["probe_max_iter"] * fits * s for m, s in w["probe_fits"])
    probe_h = probe_flops / (TF32_EFFECTIVE * gpus) / 3600
    rank_gb = 4 * IMAGENET_TRAIN / gpus * PROBE_DIM / 1e9
    return {
        "model": model,
        "gpus": gpus,
        "train_img_s_per_gpu": round(rate, 1),
        "scaling_efficiency": round(eff, 3),
        "train_equivalent_images": int(train_equiv),
        "finetune_and_features_hours": round(finetune_h, 2),
        "probe_fit_hours_upper_bound": round(probe_h, 2),
        "total_hours": round(finetune_h + probe_h, 2),
        "probe_features_gb_per_rank": round(rank_gb, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.transfer_projection", description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="also write the measurements and rows to this file")
    ap.add_argument("--quick", action="store_true", help="smaller measurements (development)")
    args = ap.parse_args(argv)
    from benchmarks.common import compose_cfg
    from pipeline.config import transfer_recipe
    from pipeline.reporting.format import md_table

    torch.set_num_threads(max(1, torch.get_num_threads()))
    recipe = transfer_recipe(compose_cfg("+transfer=imagenet1k").transfer, "imagenet1k")
    t0 = time.perf_counter()
    per_image = _per_image_seconds("resnext101_32x8d", 224, 2 if args.quick else 4, 1 if args.quick else 3)
    sizes = [1000, 2000, 4000] if args.quick else [2000, 4000, 8000, 16000]
    probe = _lbfgs_iteration_seconds(sizes, PROBE_DIM, IMAGENET_CLASSES)
    rows = [
        {**project(recipe, per_image, model, gpus, scale), "gpu": label}
        for model in ("resnext101_32x8d", "resnext101_32x48d")
        for gpus in (8, 32)
        for label, scale in (("RTX 3090-class (anchor)", 1.0), ("A100-class (x1.49)", A100_VS_3090))
    ]
    w = workload(recipe)
    probe_min = (probe["a"] + probe["b_per_row"] * IMAGENET_TRAIN) / 60
    header = ["model", "GPUs", "GPU kind", "train img/s per GPU", "efficiency", "fine-tuning + features (h)"]
    header += ["probe fits, upper bound (h)", "total (h)", "probe features per rank (GB)"]
    keys = ["model", "gpus", "gpu", "train_img_s_per_gpu", "scaling_efficiency", "finetune_and_features_hours"]
    keys += ["probe_fit_hours_upper_bound", "total_hours", "probe_features_gb_per_rank"]
    lines = [
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads: resnext101_32x8d at "
        f"224 px, {1 / per_image['train']:.2f} img/s training, {1 / per_image['forward']:.2f} img/s forward "
        f"(forward / train per image {per_image['forward'] / per_image['train']:.3f})",
        f"probe L-BFGS iteration (D {PROBE_DIM}, K {IMAGENET_CLASSES}) at N {probe['sizes']}: {probe['seconds']} s; "
        f"fit {probe['a']:.3f} + {probe['b_per_row'] * 1e6:.1f} us x N "
        f"(largest residual {100 * probe['max_rel_residual']:.1f}%); at N = {IMAGENET_TRAIN:,} on this CPU: "
        f"{probe_min:.1f} min per iteration (extrapolated {IMAGENET_TRAIN / sizes[-1]:.0f}x beyond the largest N measured)",
        f"workload (both inits): {w['train'] / 1e6:.1f}M training images, {w['forward_train_size'] / 1e6:.2f}M forward "
        f"at {recipe.get('image_size') or 224} px, {w['forward_test_size'] / 1e6:.1f}M val forward at "
        f"{recipe['test_image_size']} px",
        "",
        *md_table(header, [[r[k] for k in keys] for r in rows]),
        "",
        f"measured in {time.perf_counter() - t0:.0f} s",
    ]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"per_image_seconds": per_image, "probe_lbfgs": probe, "workload": w, "rows": rows}, fh, indent=1)
    return 0


__all__ = ["workload", "project", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
