"""Training step throughput on the CPU, images/s, and the data-wait fraction.

* **ours**: the pretraining stage itself, :func:`pipeline.pretrain.run_pretrain` with
  ``pretrain.max_steps`` on a fresh copy of the prepared run (the demo's shards and
  vocabulary; ``resnext_mini``, 64 px, batch 64, and the precision, memory format,
  threads and loader workers that :mod:`pipeline.train.precision` picks on this machine). The figures
  come from its own ``metrics.jsonl`` (one row per optimizer step: images/s and
  data-wait fraction): the steady state after ``warmup`` steps (the first step pays for
  starting the loader workers), and the manifest's whole-run figures beside them.
* **anchor**: a bare PyTorch loop on the same model, batch, resolution, precision, memory
  format and thread count (the stage's resolved choice, read from its manifest), on
  synthetic tensors already in memory: forward under autocast,
  soft-target cross-entropy, backward, SGD (Nesterov momentum, weight decay) step.
  Same number of steps, same warm-up steps dropped, same torch thread count.

Where the CPU runs bf16 natively, both precisions are measured (``precision=fp32`` and
``precision=bf16`` given explicitly to both sides); elsewhere bf16 is emulated and only
the resolved precision (fp32) is measured.

Goals: ours >= 0.95 x anchor and a data-wait fraction < 5%. Full runs also time, once each,
ours with ``pretrain.threads=1`` and the bare loop with one thread (``details.variants``,
``details.anchor_by_threads``): what was tried against the cores' contention below. On a machine whose cores
are all busy with the model, the loader's workers take CPU from the step: that cost is
in "ours" and not in the anchor (the anchor decodes nothing), and ``details`` records
the CPU seconds the workers used.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from benchmarks.common import Context, Timer, compose_cfg, log, main, median, prepared_run, result

MODEL = "resnext_mini"
BATCH = 64
SIZE = 64


def _steps(ctx: Context) -> tuple[int, int]:
    steps = int(ctx.options.get("steps", 20 if ctx.quick else 40))
    warmup = int(ctx.options.get("warmup", 3 if ctx.quick else 5))
    return steps, warmup


def run_ours(ctx: Context, prepared, rep: int, steps: int, warmup: int, extra: tuple[str, ...] = ()) -> dict:
    """``run_pretrain`` for ``steps`` steps in a fresh run folder; figures from its metrics.

    ``extra``: more config overrides (diagnostic variants, e.g. ``pretrain.threads=1``).
    """
    from pipeline.pretrain import run_pretrain

    d = ctx.work_dir / f"pretrain_rep{rep}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for stage in ("ingest", "vocab"):
        (d / stage).symlink_to((prepared / stage).resolve(), target_is_directory=True)
    # No held-out split by default: its evaluations (at step 0 and at the end) are outside
    # the measured steps and would only add minutes (--opt heldout=0.05 restores the default).
    cfg = compose_cfg(
        f"run_dir={d}",
        f"pretrain.model={MODEL}",
        f"pretrain.batch_size={BATCH}",
        f"pretrain.image_size={SIZE}",
        f"pretrain.max_steps={steps}",
        "pretrain.progress=false",
        f"pretrain.heldout_fraction={ctx.options.get('heldout', 0)}",
        *extra,
    )
    r0 = os.times()
    with Timer() as t:
        man = run_pretrain(cfg)
    r1 = os.times()
    rows = [json.loads(x) for x in (d / "pretrain" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steady = [r for r in rows if r["step"] > warmup]
    dts = [r["images"] / r["images_per_second"] for r in steady]
    waits = [r["data_wait_fraction"] * dt for r, dt in zip(steady, dts)]
    c = man["counts"]
    out = {
        "images_per_second": sum(r["images"] for r in steady) / sum(dts),
        "data_wait_fraction": sum(waits) / sum(dts),
        "manifest_images_per_second": c["images_per_second"],
        "manifest_data_wait_fraction": c["data_wait_fraction"],
        "first_step_data_wait_seconds": rows[0]["data_wait_fraction"] * rows[0]["images"] / rows[0]["images_per_second"],
        "stage_seconds": t.seconds,
        "precision": c["precision"],
        "num_classes": c["num_classes"],
        "cpu_seconds_children": (r1.children_user + r1.children_system) - (r0.children_user + r0.children_system),
        "cpu_seconds_self": (r1.user + r1.system) - (r0.user + r0.system),
        "channels_last": bool(c["channels_last"]),
        "threads": c["hardware"]["threads"],
        "workers": c["hardware"]["workers"],
        "precision_reason": c["hardware"]["precision_choice"]["reason"],
    }
    shutil.rmtree(d, ignore_errors=True)
    return out


def run_bare(
    num_classes: int, steps: int, warmup: int, channels_last: bool = True, precision: str = "fp32", threads: int | None = None
) -> float:
    """The anchor: images/s of a bare forward/loss/backward/SGD loop after ``warmup`` steps,
    with the stage's resolved ``precision`` / ``channels_last`` and ``threads`` (None: the policy's)."""
    import torch

    from pipeline.system import available_cores, thread_plan
    from pipeline.train.models import create_model
    from pipeline.train.precision import PrecisionChoice

    torch.set_num_threads(threads or thread_plan("cpu", available_cores()).threads)
    prec = PrecisionChoice(precision, channels_last)
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=num_classes)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(BATCH, num_classes)
    for i in range(BATCH):
        cls = torch.randint(0, num_classes, (3,))
        y[i, cls] = 1.0
    y = y / y.sum(1, keepdim=True)
    t0 = None
    for s in range(steps):
        if s == warmup:
            t0 = time.perf_counter()
        with prec.autocast("cpu"):
            logits = model(x)
        loss = -(y * torch.log_softmax(logits.float(), dim=1)).sum(1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    return BATCH * (steps - warmup) / (time.perf_counter() - t0)


def _pair(ctx: Context, prepared, steps: int, warmup: int, extra: tuple[str, ...] = (), tag: str = "") -> tuple[list, list]:
    """``ctx.reps`` interleaved repetitions of ours and the bare loop under the same settings."""
    ours, bare = [], []
    for r in range(ctx.reps):
        o = run_ours(ctx, prepared, r, steps, warmup, extra=extra)
        ours.append(o)
        log(
            f"train_step{tag} rep {r}: ours {o['images_per_second']:.1f} img/s ({o['precision']}, "
            f"{'channels_last' if o['channels_last'] else 'NCHW'}, {o['threads']} threads, {o['workers']} workers), "
            f"data wait {o['data_wait_fraction']:.1%}"
        )
        if ctx.ours_only:
            continue
        b = run_bare(
            o["num_classes"], steps, warmup, channels_last=o["channels_last"], precision=o["precision"], threads=o["threads"]
        )
        bare.append(b)
        log(f"train_step{tag} rep {r}: bare loop {b:.1f} img/s")
    return ours, bare


def run(ctx: Context) -> list[dict]:
    import logging

    from pipeline.system import cpu_bf16_native

    logging.basicConfig(level=logging.WARNING)
    steps, warmup = _steps(ctx)
    prepared = prepared_run(ctx)
    # --opt extra=KEY=VALUE,KEY=VALUE: overrides for ours in every rep (e.g. pretrain.worker_nice=19)
    extra = tuple(x for x in ctx.options.get("extra", "").split(",") if x)
    ours, bare = _pair(ctx, prepared, steps, warmup, extra=extra)
    by_precision = {}
    if cpu_bf16_native() and not ctx.quick:  # both precisions run natively here: measure both
        for p in ("fp32", "bf16"):
            o2, b2 = _pair(ctx, prepared, steps, warmup, extra=(f"pretrain.precision={p}",), tag=f" {p}")
            oi2, a2 = median(o["images_per_second"] for o in o2), median(b2) if b2 else None
            by_precision[p] = {"ours": oi2, "anchor": a2, "ratio": (oi2 / a2) if a2 else None}
    # What was tried (full runs by default): one intra-op thread; decoding the shards every step (no decoded cache)
    default_variants = "" if (ctx.quick or ctx.ours_only) else "pretrain.threads=1;pretrain.decoded_cache=off"
    variants = {}
    for v in [x for x in ctx.options.get("variants", default_variants).split(";") if x]:
        # diagnostic variants, e.g. --opt "variants=pretrain.threads=1;pretrain.workers=1"
        o = run_ours(ctx, prepared, 99, steps, warmup, extra=tuple(v.split(",")))
        variants[v] = {k: o[k] for k in ("images_per_second", "data_wait_fraction", "cpu_seconds_self", "cpu_seconds_children")}
        log(f"train_step variant {v}: {o['images_per_second']:.1f} img/s, data wait {o['data_wait_fraction']:.1%}")
    by_threads = {}
    for th in [int(x) for x in ctx.options.get("bare_threads", "" if (ctx.quick or ctx.ours_only) else "1").split(",") if x]:
        by_threads[th] = run_bare(
            ours[0]["num_classes"],
            steps,
            warmup,
            channels_last=ours[0]["channels_last"],
            precision=ours[0]["precision"],
            threads=th,
        )
        log(f"train_step bare loop with {th} threads: {by_threads[th]:.1f} img/s")
    oi = median(o["images_per_second"] for o in ours)
    ow = median(o["data_wait_fraction"] for o in ours)
    a = median(bare)
    det = {
        "model": MODEL,
        "batch": BATCH,
        "extra_overrides": list(extra),
        "image_size": SIZE,
        "steps": steps,
        "warmup_steps_dropped": warmup,
        "precision": ours[0]["precision"],
        "channels_last": ours[0]["channels_last"],
        "num_classes": ours[0]["num_classes"],
        "torch_threads": ours[0]["threads"],
        "loader_workers": ours[0]["workers"],
        "precision_reason": ours[0]["precision_reason"],
        "by_precision": by_precision,
        "ours_per_rep": ours,
        "anchor_per_rep": bare,
        # each rep runs ours then the bare loop back to back: their ratio cancels the machine's drift between reps
        "paired_ratios": [o["images_per_second"] / b for o, b in zip(ours, bare)],
        "median_paired_ratio": median(o["images_per_second"] / b for o, b in zip(ours, bare)) if bare else None,
        "variants": variants,
        "anchor_by_threads": by_threads,
        "manifest_images_per_second": median(o["manifest_images_per_second"] for o in ours),
        "manifest_data_wait_fraction": median(o["manifest_data_wait_fraction"] for o in ours),
    }
    title = (
        f"training step on CPU ({MODEL}, {SIZE} px, batch {BATCH}, {ours[0]['precision']}, "
        f"{'channels_last' if ours[0]['channels_last'] else 'NCHW'})"
    )
    return [
        result(
            "train_step",
            ours=oi,
            anchor=a,
            unit="images/s",
            goal="ours >= 0.95 x anchor",
            met=None if a is None else oi >= 0.95 * a,
            title=title,
            ours_is="pipeline.pretrain.run_pretrain (max_steps), steady-state steps from metrics.jsonl",
            anchor_is="bare forward/loss/backward/SGD loop on synthetic tensors",
            details=det,
        ),
        result(
            "train_data_wait",
            ours=ow,
            anchor=None,
            unit="fraction of step time",
            goal="< 0.05",
            met=ow < 0.05,
            title="data-wait fraction of the training steps",
            ours_is="time waiting for the next batch / step time (steady state)",
            anchor_is="",
            details={
                "manifest_data_wait_fraction": det["manifest_data_wait_fraction"],
                "per_rep": [o["data_wait_fraction"] for o in ours],
            },
        ),
    ]


if __name__ == "__main__":
    main(run)
