"""The timed trial behind ``precision=auto`` on a CPU, and the per-machine cache of its verdicts.

:func:`make_step_trial` times a few forward + backward + SGD steps of a fresh copy of the model
in one (precision, memory layout) setting; :func:`interleaved_trials` runs every candidate
setting in :data:`TRIAL_ROUNDS` interleaved rounds (each candidate's best round counts, so a
burst of other load does not decide alone); the verdicts are cached per machine, torch
version, model, image size, batch and thread count in :func:`cache_file` (a JSON file under
``$PIPELINE_CACHE_DIR``, default ``~/.cache/hashtag-pretrain``), so the trial (a few seconds)
is paid once. The policy that uses them is :mod:`pipeline.train.precision`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import torch

from pipeline.io.atomic import write_json

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # precision -> autocast dtype
log = logging.getLogger(__name__)

CACHE_ENV = "PIPELINE_CACHE_DIR"  # where trial verdicts are cached (default ~/.cache/hashtag-pretrain)


TrialFn = Callable[[str, bool], float]  # (precision, channels_last) -> img/s


def cache_file() -> Path:
    """The per-machine cache of trial verdicts: ``$PIPELINE_CACHE_DIR/precision_trials.json``
    (default ``$XDG_CACHE_HOME`` or ``~/.cache``, subfolder ``hashtag-pretrain``)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hashtag-pretrain"
    )
    return Path(root) / "precision_trials.json"


def read_cache(path: Path) -> dict:
    """The cached verdicts ``{key: {"timings": {setting: img/s}, "when": ...}}``; ``{}`` if missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_cache(path: Path, key: str, value: dict) -> None:
    """Add one verdict to the cache file (atomic write); a read-only cache only logs a warning."""
    data = read_cache(path)
    data[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data)
    except OSError as exc:  # a read-only home must not stop training
        log.warning("could not cache the precision trial in %s: %s", path, exc)


TRIAL_ROUNDS = 2  # rounds over the candidates; each candidate's best round counts
TRIAL_MARGIN = 0.10  # candidates this close to the fastest count as equal (precision.preferred_candidate)


def interleaved_trials(trial: TrialFn, cands: list[tuple[str, bool]], rounds: int) -> dict:
    """img/s per candidate: the best of ``rounds`` interleaved rounds (the first candidate of the
    first round also pays the process's one-time costs, and a busy machine slows some rounds)."""
    best: dict[str, float] = {}
    for _ in range(max(1, rounds)):
        for p, cl in cands:
            k = f"{p}{'_cl' if cl else ''}"
            best[k] = max(best.get(k, 0.0), round(trial(p, cl), 2))
    return best


def make_step_trial(
    build_model: Callable[[], torch.nn.Module],
    *,
    batch_size: int,
    image_size: int,
    num_classes: int,
    device: torch.device,
    steps: int = 3,
    warmup: int = 2,
) -> TrialFn:
    """A trial function: img/s of ``steps`` timed forward + backward + SGD steps of a fresh model.

    ``build_model()`` makes a new model each call (the run's own model is never touched);
    torch's RNG state is saved and restored around it, so a trial changes no result. Inputs
    are random (B, 3, S, S) float32 images and soft targets (B, C).
    """

    def run(precision: str, channels_last: bool) -> float:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(0)
            model = build_model().to(device)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            x = torch.randn(batch_size, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
            y = torch.softmax(torch.randn(batch_size, max(1, num_classes), device=device), dim=1)
            dt = AUTOCAST_DTYPES[precision]
            t0 = 0.0
            for i in range(warmup + steps):
                if i == warmup:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                with torch.autocast(device.type, dtype=dt or torch.float32, enabled=dt is not None):
                    out = model(x)
                loss = -(y * torch.log_softmax(out.float(), dim=1)).sum(1).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt_s = time.perf_counter() - t0
            del model, opt
        return batch_size * steps / dt_s if dt_s > 0 else 0.0

    return run
