"""The held-out evaluation hook of the pretraining loop: precision@1 and mAP, appended to ``eval.jsonl``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pipeline.train.distributed import DistInfo
from pipeline.train.loader import ShardStream
from pipeline.train.precision import PrecisionChoice
from pipeline.train.train_loop import evaluate, truncate_metrics

__all__ = ["HeldoutEval"]

log = logging.getLogger(__name__)


class HeldoutEval:
    """``run_eval(step)`` for :func:`pipeline.train.train_loop.train`: on rank 0, evaluate ``model`` on the held-out
    ``stream`` (:func:`pipeline.train.train_loop.evaluate`) and append the row (precision_at_1, mAP, samples, step)
    to ``eval_file``; returns the row, or None on other ranks and without held-out samples (``stream`` None)."""

    def __init__(
        self,
        model: torch.nn.Module,
        stream: ShardStream | None,
        info: DistInfo,
        precision: PrecisionChoice,
        num_classes: int,
        eval_file: Path,
    ) -> None:
        self.model, self.stream, self.info = model, stream, info
        self.precision, self.num_classes, self.eval_file = precision, num_classes, eval_file
        self.evals: list[dict] = []

    @property
    def enabled(self) -> bool:
        """True on rank 0 when there are held-out samples."""
        return self.info.is_main and self.stream is not None

    def __call__(self, step: int) -> dict | None:
        if not self.enabled:
            return None
        assert self.stream is not None  # enabled: there is a held-out stream
        r = evaluate(
            self.model,
            self.stream,
            device=self.info.device,
            num_classes=self.num_classes,
            autocast_dtype=self.precision.autocast_dtype,
            channels_last=self.precision.channels_last,
        )
        r["step"] = step
        self.evals.append(r)
        # a rerun after a kill may redo an eval that is already logged (the step-0 eval of a run
        # killed before its first checkpoint, an epoch-end eval after the checkpoint of that step)
        truncate_metrics(self.eval_file, step - 1)
        with open(self.eval_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
        log.info(
            "held-out eval at step %d: precision@1 %.4f, mAP %.4f (%d samples)", step, r["precision_at_1"], r["mAP"], r["samples"]
        )
        return r
