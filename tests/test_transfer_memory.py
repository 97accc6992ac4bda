"""benchmarks.transfer_memory: the activation arithmetic is measured, and checkpointing keeps less."""

from __future__ import annotations

import sys

import torch
from conftest import REPO

if str(REPO) not in sys.path:  # benchmarks/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO))
from benchmarks import transfer_memory as tm  # noqa: E402
from pipeline.train.models import create_model  # noqa: E402


def test_saved_activations_are_measured_and_checkpointing_keeps_less():
    model = create_model("resnext_mini", num_classes=10).train()
    fp32 = tm.activation_bytes(model, 64, None)
    bf16 = tm.activation_bytes(model, 64, torch.bfloat16)
    # every block saves its input and its own intermediate tensors
    assert fp32["total"] > fp32["largest_block"] > 0 and fp32["block_inputs"] > 0
    assert fp32["block_inputs"] + fp32["largest_block"] + fp32["outside_blocks"] < fp32["total"]
    assert bf16["total"] < fp32["total"]  # bf16 autocast saves half-size tensors for most ops
    rows = tm.table([tm._row("resnext_mini", 64)])
    assert len(rows) == 3 and rows[2].startswith("| resnext_mini |")
