"""Training checkpoints that resume exactly and cannot run code when loaded.

A checkpoint is one ``torch.save`` file, written atomically
(:func:`pipeline.io.atomic.atomic_path`), holding only tensors, numbers, strings, bools,
None, lists, tuples and dicts, so it loads with ``torch.load(weights_only=True)``:

    {"format": "hashtag-pretrain-checkpoint", "version": 1,
     "model": state_dict (no "module." prefix), "optimizer": ..., "scheduler": ...,
     "step": int (optimizer steps done), "epoch": int,
     "data_position": {str: int} (where the loader resumes; see the data module),
     "rng": {"torch": uint8 tensor, "cuda": [uint8 tensor per device],
             "numpy": {"name", "keys" (int64 tensor), "pos", "has_gauss", "cached_gaussian"},
             "python": [version, [625 ints], gauss_next]},
     "config_json": str (the resolved config), "extra": dict, "torch_version": str}

Loading always uses ``weights_only=True``: a file crafted to execute code while being
unpickled (a ``__reduce__`` returning ``os.system``) is refused with
:class:`CheckpointRefused` (a :class:`CheckpointError`), and a truncated or corrupt file
with :class:`CheckpointError`; both carry the file as ``path``. Files in a run's checkpoint
folder are named ``step_NNNNNNNN.pt`` (:func:`checkpoint_path`).
"""

from __future__ import annotations

import enum
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Mapping, cast

import numpy as np
import torch
from torch import nn

from pipeline.errors import CheckpointError, CheckpointRefused
from pipeline.io.atomic import atomic_path
from pipeline.train.models import unwrap_model as _unwrap

__all__ = [
    "checkpoint_path",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

FORMAT = "hashtag-pretrain-checkpoint"
VERSION = 1
_NAME_RE = re.compile(r"^step_(\d{8,})\.pt$")


def _strip_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Remove ``prefix`` from the keys, if every key has it (a state_dict saved from a wrapper)."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return dict(sd)


def _plain(obj: Any, where: str) -> Any:
    """``obj`` as data ``torch.load(weights_only=True)`` accepts: numpy arrays become tensors,
    numpy scalars Python numbers, Paths strings, enums their values, subclasses of
    str/int/float (e.g. ``torch.__version__``) their base type.

    Raises:
        TypeError: for anything else (naming its place), before any file is written.
    """
    if obj is None or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, enum.Enum):
        return _plain(obj.value, where)
    for kind in (bool, int, float, str):  # subclasses (TorchVersion, IntEnum) need their class
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"key {where}[{k!r}] must be a str or int")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"{where} has type {type(obj).__name__}; store only tensors, "
        "numbers, strings, lists and dicts (weights_only loading refuses others)"
    )


def _config_json(config: Any) -> str:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(config):
            config = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return json.dumps(config if config is not None else {}, sort_keys=True, default=str)


def _rng_state() -> dict:
    # numpy's stubs type get_state() as legacy=False (a dict); its default legacy=True gives the MT19937 tuple
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_version, list(py_internal), py_gauss],
    }


def _set_rng_state(rng: Mapping[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = rng["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    """``<folder>/step_NNNNNNNN.pt`` for optimizer step ``step`` (zero-padded to 8 digits)."""
    return Path(folder) / f"step_{step:08d}.pt"


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    step: int,
    epoch: int,
    data_position: Mapping[str, int] | None = None,
    config: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint (layout in the module docstring); rank 0 alone calls it.

    Args:
        path: target file, usually :func:`checkpoint_path`.
        model: the model, possibly DDP- or compile-wrapped (saved unwrapped).
        optimizer, scheduler: saved by their ``state_dict()`` (None -> not saved).
        step: optimizer steps done; epoch: epochs started (the caller's convention).
        data_position: ints telling the loader where to resume (e.g. epoch, samples seen).
        config: the resolved run config (dict or OmegaConf), stored as a JSON string.
        extra: any other plain data (numpy arrays become tensors).
    Also stores the torch (CPU and CUDA), numpy and Python RNG states of this process.

    Returns:
        the path written.
    Raises:
        TypeError: a value that ``weights_only`` loading would refuse, or a non-int data position.
        OSError: from the file system (disk full, read-only), naming the file.
    """
    position = dict(data_position or {})
    for k, v in position.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"data_position must map str to int, got {k!r}: {v!r}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "data_position": {k: int(v) for k, v in position.items()},
        "rng": _rng_state(),
        "config_json": _config_json(config),
        "extra": dict(extra or {}),
        "torch_version": torch.__version__,
    }
    payload = _plain(payload, "checkpoint")
    target = Path(path)
    with atomic_path(target) as tmp:
        torch.save(payload, tmp)
    return target


def _read(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        msg = str(exc)
        if "Weights only load failed" in msg or "Unsupported global" in msg:
            raise CheckpointRefused(
                path,
                "it contains objects other than tensors and plain data (a pickle that could run code when loaded); not loaded",
                msg.splitlines()[0],
            ) from exc
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt and cannot be read: "
            f"{type(exc).__name__}: {msg.splitlines()[0] if msg else ''}",
            path,
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file (written by pipeline.train.checkpoint)", path)
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {obj.get('version')}, expected {VERSION}", path)
    return obj


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` into the given objects.

    The file is read with ``torch.load(weights_only=True, map_location="cpu")``; the model
    (plain, DDP- or compile-wrapped; saved keys with a ``module.`` prefix are accepted too)
    is loaded with ``strict=True``; the optimizer and scheduler, when given, get their
    states (tensors move to the parameters' devices); with ``restore_rng`` the torch, CUDA
    (when the device count matches), numpy and Python RNG states are set as at save time.

    Returns:
        ``{"step": int, "epoch": int, "data_position": {str: int}, "config": dict,
        "extra": dict}``.
    Raises:
        CheckpointError: naming the file, if it is missing, truncated or corrupt, holds
            anything but plain data (possible code execution; refused unread), is not a
            pipeline checkpoint, or does not fit the model/optimizer/scheduler.
    """
    path = Path(path)
    ckpt = _read(path)
    try:
        state = _strip_prefix(ckpt["model"], "module.")
        _unwrap(model).load_state_dict(state, strict=True)
        if optimizer is not None:
            if ckpt["optimizer"] is None:
                raise ValueError("the checkpoint holds no optimizer state")
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            if ckpt["scheduler"] is None:
                raise ValueError("the checkpoint holds no scheduler state")
            scheduler.load_state_dict(ckpt["scheduler"])
        if restore_rng:
            _set_rng_state(ckpt["rng"])
        config = json.loads(ckpt["config_json"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit: {exc}", path) from exc
    return {
        "step": ckpt["step"],
        "epoch": ckpt["epoch"],
        "data_position": dict(ckpt["data_position"]),
        "config": config,
        "extra": ckpt["extra"],
    }


def _listed(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The ``step_NNNNNNNN.pt`` file with the highest step in ``folder``; None if there is none
    (or no folder). Temp files of interrupted writes (``.step_...tmp-PID``) are ignored."""
    found = _listed(folder)
    return found[-1][1] if found else None


def prune_checkpoints(folder: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` highest-step checkpoints in ``folder``; return the deleted.

    Raises:
        ValueError: if ``keep_last`` < 1 (pruning must never delete the newest checkpoint).
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    found = _listed(folder)
    doomed = [p for _, p in found[:-keep_last]] if len(found) > keep_last else []
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed
