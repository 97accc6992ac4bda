"""Memory per GPU of fine-tuning a ResNeXt-101 at 224 px: weights, optimizer state and activations.

``python -m benchmarks.transfer_memory [--models resnext101_32x8d resnext101_32x48d] [--image-size 224] [--json FILE]``

What one device holds while fine-tuning with SGD + momentum (the transfer recipe,
:mod:`pipeline.evaluation.finetune`), per the arithmetic of Rajbhandari et al. 2020 (ZeRO, sec. 3):

* **model states**: fp32 weights, fp32 gradients and the fp32 momentum buffer, 12 bytes per
  parameter (autocast keeps fp32 weights; bf16/fp16 are only the compute copies);
* **activations**: the tensors autograd saves for the backward pass, per image. They are
  *measured* here, not estimated: one forward pass of a batch of 1 on the CPU, with
  ``torch.autograd.graph.saved_tensors_hooks`` recording every saved tensor's storage (a storage
  saved by several ops is counted once), in fp32 and under bf16 autocast;
* **with activation checkpointing** (``torch.utils.checkpoint`` around every residual block, as
  timm's ``set_grad_checkpointing``): the forward keeps only each block's input; the backward
  recomputes one block at a time, so the peak is the block inputs plus the largest block's own
  saved tensors (both measured the same way).

Left out: the cuDNN/cuBLAS workspaces, the allocator's fragmentation and the CUDA context
(~0.5-1 GB), the input batch and the loader's pinned buffers; so the figures are lower bounds
of ``torch.cuda.max_memory_allocated``, to be checked by ``python -m benchmarks.gpu_check``
when a GPU is lent. Per-image activation memory is linear in the batch (BatchNorm saves per
image); the table gives the largest per-device batch that fits 80 GB by this arithmetic.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from pipeline.reporting.format import md_table
from pipeline.train.models import create_model

GB = 1e9
DEVICE_GB = 80.0  # an A100/H100 80 GB


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]


def activation_bytes(model: nn.Module, image_size: int, dtype: torch.dtype | None) -> dict:
    """Saved-for-backward bytes of one image: the whole forward, and per residual block.

    Returns:
        ``{"total": bytes, "block_inputs": bytes, "largest_block": bytes, "outside_blocks": bytes}``.
    """
    x = torch.randn(1, 3, image_size, image_size)
    per_block: list[dict[tuple, int]] = []
    hooks = []
    for b in _blocks(model):
        hooks.append(b.register_forward_pre_hook(lambda m, a: per_block.append({})))
    total: dict[tuple, int] = {}
    inputs = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        key = (s.data_ptr(), s.nbytes())
        total[key] = s.nbytes()
        if per_block:
            per_block[-1][key] = s.nbytes()
        return t

    def count_input(m, args):
        nonlocal inputs
        inputs += args[0].untyped_storage().nbytes()

    hooks += [b.register_forward_pre_hook(count_input) for b in _blocks(model)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                model(x)  # saved tensors are recorded in the forward; no backward is needed
    finally:
        for h in hooks:
            h.remove()
    in_blocks = set().union(*[set(d) for d in per_block]) if per_block else set()
    outside = sum(v for k, v in total.items() if k not in in_blocks)
    return {
        "total": sum(total.values()),
        "block_inputs": inputs,
        "largest_block": max(sum(d.values()) for d in per_block),
        "outside_blocks": outside,
    }


def _row(name: str, image_size: int) -> dict:
    t0 = time.perf_counter()
    model = create_model(name, num_classes=1000).train()
    params = sum(p.numel() for p in model.parameters())
    out = {"model": name, "image_size": image_size, "params": params, "model_states_gb": 12 * params / GB}
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        a = activation_bytes(model, image_size, dtype)
        ckpt = a["block_inputs"] + a["largest_block"] + a["outside_blocks"]
        out[label] = {"act_gb_per_image": a["total"] / GB, "ckpt_gb_per_image": ckpt / GB, **{k: v / GB for k, v in a.items()}}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def table(rows: list[dict]) -> list[str]:
    """One markdown table: GB per device at a per-device batch, and the largest batch in 80 GB."""
    header = [
        "model",
        "params",
        "weights + grads + momentum (GB)",
        "activations per image, fp32 / bf16 (GB)",
        "with checkpointing per block, fp32 / bf16 (GB)",
        "largest batch in 80 GB, bf16: plain / checkpointed",
        "GB at batch 32, bf16: plain / checkpointed",
    ]
    out = []
    for r in rows:
        free = DEVICE_GB - r["model_states_gb"]
        b16 = r["bf16"]
        out.append(
            [
                r["model"],
                f"{r['params'] / 1e6:.1f}M",
                f"{r['model_states_gb']:.1f}",
                f"{r['fp32']['act_gb_per_image']:.3f} / {b16['act_gb_per_image']:.3f}",
                f"{r['fp32']['ckpt_gb_per_image']:.3f} / {b16['ckpt_gb_per_image']:.3f}",
                f"{int(free // b16['act_gb_per_image'])} / {int(free // b16['ckpt_gb_per_image'])}",
                f"{r['model_states_gb'] + 32 * b16['act_gb_per_image']:.0f} / "
                f"{r['model_states_gb'] + 32 * b16['ckpt_gb_per_image']:.0f}",
            ]
        )
    return md_table(header, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.transfer_memory", description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnext101_32x8d", "resnext101_32x48d"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = [_row(m, args.image_size) for m in args.models]
    print("\n".join(table(rows)))
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}; seconds per model: {[r['seconds'] for r in rows]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    return 0


__all__ = ["activation_bytes", "table", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
