"""Run pipeline stages in child processes a test can SIGKILL, and compare two runs' outputs.

Children are forked from a ``forkserver`` that has imported the pipeline once, so each
attempt starts in milliseconds instead of the seconds a fresh ``python -m pipeline.<stage>``
needs to import torch; each child is still a separate process that dies by a real
SIGKILL with its files as they are at that instant.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import signal
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PRELOAD = ["fuzz.stages", "pipeline.ingest", "pipeline.dedup", "pipeline.vocab", "pipeline.pretrain", "pipeline.transfer"]
_CTX = None

# keys of manifests, parts and metric rows that measure time or this run's share of work
VOLATILE = ("second", "per_s", "this_run", "finished_at", "wait_fraction")


def context():
    """The forkserver context (started on first use, with the pipeline preloaded)."""
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(PRELOAD)
    return _CTX


def _noop() -> None:
    pass


def warm_up() -> float:
    """Start the forkserver (imports the pipeline once); return the seconds it took."""
    t0 = time.monotonic()
    p = context().Process(target=_noop)
    p.start()
    p.join()
    return time.monotonic() - t0


def _child(stage: str, overrides: list[str], log_file: str) -> None:
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import logging

    from hydra import compose, initialize_config_dir

    from pipeline.cli import CONF_DIR

    logging.basicConfig(level=logging.INFO, force=True)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    getattr(importlib.import_module(f"pipeline.{stage}"), f"run_{stage}")(cfg)


def run_stage(
    stage: str, overrides: list[str], log_file: Path, kill_after: float | None = None, timeout: float = 600.0
) -> tuple[int, float]:
    """Run ``pipeline.<stage>.run_<stage>(cfg)`` in a child; SIGKILL it after ``kill_after`` s.

    Returns:
        (exit code: 0 finished, -9 killed, other = failed; wall seconds).
    """
    p = context().Process(target=_child, args=(stage, list(overrides), str(log_file)))
    t0 = time.monotonic()
    p.start()
    p.join(kill_after if kill_after is not None else timeout)
    if p.exitcode is None:
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        if kill_after is None:
            raise TimeoutError(f"{stage} did not finish within {timeout} s (log: {log_file})")
    return p.exitcode, time.monotonic() - t0


# --------------------------------------------------------------------------- comparing outputs
def _strip(obj: Any, drop: tuple[str, ...] = ()) -> Any:
    """``obj`` without keys that measure time (:data:`VOLATILE`) or are in ``drop``."""
    if isinstance(obj, dict):
        return {k: _strip(v, drop) for k, v in obj.items() if k not in drop and not any(m in k for m in VOLATILE)}
    if isinstance(obj, list):
        return [_strip(v, drop) for v in obj]
    return obj


def _tensors_equal(a: Any, b: Any, where: str, drop: tuple[str, ...]) -> list[str]:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        return [] if ok else [f"{where}: tensors differ"]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys differ {sorted(set(a) ^ set(b))[:5]}"]
        out: list[str] = []
        for k in a:
            if k == "config_json":  # the resolved config names the run folder
                if _strip(json.loads(a[k]), drop) != _strip(json.loads(b[k]), drop):
                    out.append(f"{where}[config_json] differs")
                continue
            out += _tensors_equal(a[k], b[k], f"{where}[{k!r}]", drop)
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: lengths differ"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _tensors_equal(x, y, f"{where}[{i}]", drop)]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"[:200]]


# ``run_dir`` differs between the runs compared; ``labels.npz`` (in the vocab manifest's
# ``outputs.sha256``) hashes a zip whose member timestamps numpy sets to the write time;
# ``code_version`` changes if the code is edited or committed between the two runs
DROP = ("run_dir", "labels.npz", "code_version")


def compare_file(a: Path, b: Path, drop: tuple[str, ...] = DROP) -> list[str]:
    """Differences between two output files of the same name (empty list: equal).

    Shards, indexes, text and images must be byte-identical; JSON/JSONL equal except
    volatile keys; ``.npz`` equal arrays; checkpoints and trunks equal tensors.
    """
    name = a.name
    if name.endswith(".json"):
        return _tensors_equal(_strip(json.loads(a.read_text()), drop), _strip(json.loads(b.read_text()), drop), name, drop)
    if name.endswith(".jsonl"):
        ra = [_strip(json.loads(x), drop) for x in a.read_text().splitlines()]
        rb = [_strip(json.loads(x), drop) for x in b.read_text().splitlines()]
        return _tensors_equal(ra, rb, name, drop)
    if name.endswith(".npz"):
        with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
            if set(za.files) != set(zb.files):
                return [f"{name}: arrays differ"]
            return [f"{name}[{k}] differs" for k in za.files if not np.array_equal(za[k], zb[k])]
    if name.endswith((".pt", ".pth")):
        import torch

        return _tensors_equal(torch.load(a, weights_only=True), torch.load(b, weights_only=True), name, drop)
    if name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return _tensors_equal(load_file(str(a)), load_file(str(b)), name, drop)
    return [] if a.read_bytes() == b.read_bytes() else [f"{name}: bytes differ"]


def compare_stage(ref: Path, got: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """Differences between two runs' output folders of one stage (same files, equal content)."""
    files_a = {p.relative_to(ref).as_posix() for p in ref.rglob("*") if p.is_file()}
    files_b = {p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()}
    files_a = {f for f in files_a if not any(i in f for i in ignore)}
    files_b = {f for f in files_b if not any(i in f for i in ignore)}
    diffs = [f"only in reference: {f}" for f in sorted(files_a - files_b)]
    diffs += [f"only in resumed run: {f}" for f in sorted(files_b - files_a)]
    for f in sorted(files_a & files_b):
        diffs += [f"{f}: {d}" for d in compare_file(ref / f, got / f)]
    return diffs


def partial_files(folder: Path) -> list[str]:
    """Visible files that are not complete: unparsable JSON/JSONL, unreadable tars, npz or
    checkpoints. Temp files (``.*.tmp-*``) are invisible to readers and are not checked."""
    bad = []
    for p in folder.rglob("*"):
        if not p.is_file() or p.name.startswith("."):
            continue
        try:
            if p.suffix == ".json":
                json.loads(p.read_text(encoding="utf-8"))
            elif p.suffix == ".jsonl":
                for line in p.read_text(encoding="utf-8").splitlines():
                    json.loads(line)
            elif p.suffix == ".tar":
                with tarfile.open(p) as tf:
                    for m in tf:
                        tf.extractfile(m).read()
            elif p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    [z[k] for k in z.files]
            elif p.suffix in (".pt", ".pth"):
                import torch

                torch.load(p, weights_only=True)
            elif p.suffix == ".safetensors":
                from safetensors.torch import load_file

                load_file(str(p))
        except Exception as exc:  # noqa: BLE001 - any failure to read is a partial file
            bad.append(f"{p.relative_to(folder)}: {type(exc).__name__}: {exc}"[:300])
    return bad


def temp_files(folder: Path) -> list[str]:
    """Temp files of interrupted atomic writes left below ``folder``."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*tmp-*"))
