"""Resume state of the transfer stage: finished parts are kept, a killed fine-tuning run restarts from its checkpoint.

Everything lives under ``<run_dir>/transfer/runs/`` (the names are in :mod:`pipeline.io.run_folder`):

* ``key.json``: the key the records belong to (:func:`stage_key`: the transfer config without its
  runtime keys, the seed, the inputs' fingerprints and the resolved precision) and the precision
  choice. A stage started with another key clears the folder first (:meth:`RunRecords.open`), so a
  changed config starts over as before; the same key keeps every finished part.
* ``<target>/<part>/record.json`` (+ ``record.npz`` for its arrays): one finished part of a target,
  written atomically when it finishes and read instead of redoing it: ``lr_selection``,
  ``decontamination``, each linear probe (init, setting) with all its seeds, each fine-tuning run
  (init, setting, seed) (:func:`pipeline.io.run_folder.transfer_run_name`).
* ``<target>/finetune-.../step_NNNNNNNN.pt``: the last checkpoint of a fine-tuning run in progress
  (:class:`FinetuneCheckpoints`, the no-pickle format of :mod:`pipeline.train.checkpoint`), written at
  every epoch end but the last and every ``transfer.checkpoint_every_steps`` optimizer steps; removed
  when the run's record is written.

A run resumed from its checkpoint ends with the same weights, rows and per-image correctness as an
uninterrupted one on the CPU: the model, optimizer, scheduler, gradient scaler and RNG states are
restored, and the epoch plan (order and per-image augmentation seeds, :func:`pipeline.evaluation.finetune.epoch_batches`)
is rebuilt and continued at the batch where the checkpoint was taken.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import to_container
from pipeline.config_views import result_view
from pipeline.errors import CheckpointError
from pipeline.io.atomic import read_json, remove_stale_temps, write_bytes, write_json
from pipeline.io.manifest import canonical_hash
from pipeline.io.run_folder import (
    RUN_ARRAYS_FILE,
    RUN_RECORD_FILE,
    RUNS_DIR,
    RUNS_KEY_FILE,
    TRANSFER,
    path,
    transfer_run_dir,
)
from pipeline.train.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint

log = logging.getLogger(__name__)

__all__ = ["FinetunePosition", "FinetuneCheckpoints", "RunRecords", "stage_key", "config_key", "saved_state", "run_identity"]

_ARRAY = "$array"  # a record's JSON marks an array stored in record.npz as {"$array": name}


def stage_key(cfg, inputs: dict, numerics: dict) -> str:
    """The key the transfer stage's records belong to: 16 hex digits.

    Args:
        cfg: the resolved config (``seed`` and ``transfer`` are read; runtime keys such as
            ``transfer.checkpoint_every_steps``, threads, workers and progress are left out, and so are
            ``precision`` and ``channels_last``, which enter as ``numerics``).
        inputs: the stage's inputs (:func:`pipeline.evaluation.suite_context.stage_inputs`: the pretrain
            stage's key and trunk hash, dedup's key, each target's file listing).
        numerics: the resolved precision's :meth:`pipeline.train.precision.PrecisionChoice.key`.
    """
    view = result_view({"seed": cfg.seed, "transfer": to_container(cfg.transfer)})
    view["transfer"] = {k: v for k, v in view["transfer"].items() if k not in ("precision", "channels_last")}
    return canonical_hash({"config": view, "inputs": inputs, "numerics": numerics})


def saved_state(run_dir) -> dict | None:
    """``transfer/runs/key.json`` of an earlier run of the stage: ``{"key", "config_key", "precision_choice"}``, or
    None if there is none.

    Raises:
        ValueError: the file exists but is not valid JSON.
    """
    return read_json(path(run_dir, TRANSFER, RUNS_DIR) / RUNS_KEY_FILE, missing_ok=True)


def config_key(cfg, inputs: dict) -> str:
    """:func:`stage_key` without the numerics: whether a saved precision choice may be kept (same config and inputs)."""
    return stage_key(cfg, inputs, {})


# --------------------------------------------------------------------------- records of finished parts


def _split(obj: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    """``obj`` as JSON-able data, its numpy arrays moved into ``arrays`` (named by their place)."""
    if isinstance(obj, np.ndarray):
        arrays[where] = obj
        return {_ARRAY: where}
    if isinstance(obj, dict):
        return {str(k): _split(v, arrays, f"{where}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split(v, arrays, f"{where}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _join(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY}:
            return arrays[obj[_ARRAY]]
        return {k: _join(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays) for v in obj]
    return obj


class RunRecords:
    """The finished parts of this stage's targets and the fine-tuning checkpoints, under ``<run_dir>/transfer/runs/``.

    Open it with :meth:`open`; :meth:`load` gives a finished part's record (None: not finished),
    :meth:`save` records one, :meth:`checkpoints` gives a fine-tuning run's checkpoints.
    """

    def __init__(self, run_dir, key: str, every_steps: int, writer: bool = True) -> None:
        """Records of ``key`` as they are (use :meth:`open` to start or continue them); ``writer=False`` (ranks
        other than 0) never writes or removes a file."""
        self.run_dir, self.key, self.every_steps, self.writer = run_dir, key, int(every_steps), writer
        self.root = path(run_dir, TRANSFER, RUNS_DIR)

    @classmethod
    def open(cls, run_dir, key: str, config_key: str, precision_choice: dict, every_steps: int) -> RunRecords:
        """The records of ``key``: an earlier run's folder if it has the same key, else a new empty one.

        Args:
            key: :func:`stage_key`; config_key: :func:`config_key` (recorded with the precision choice so
                that a rerun with the same config keeps it, :func:`pipeline.train.precision.resolve_for_run`).
            precision_choice: the resolved :meth:`pipeline.train.precision.PrecisionChoice.to_dict`.
            every_steps: ``transfer.checkpoint_every_steps``.
        Raises:
            OSError: the folder cannot be written.
        """
        rec = cls(run_dir, key, every_steps)
        saved = saved_state(run_dir)
        same = saved is not None and saved.get("key") == key
        if not same:
            if saved is not None:
                log.info("transfer: config or inputs changed (key %s -> %s): starting over", saved.get("key"), key)
            if rec.root.exists():
                shutil.rmtree(rec.root)  # records of another key, or of none (key.json removed by hand): not ours
        rec.root.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(rec.root)
        if not same:
            write_json(rec.root / RUNS_KEY_FILE, {"key": key, "config_key": config_key, "precision_choice": precision_choice})
        else:
            done = sorted(p.parent.relative_to(rec.root).as_posix() for p in rec.root.glob(f"*/*/{RUN_RECORD_FILE}"))
            running = sorted(p.parent.relative_to(rec.root).as_posix() for p in rec.root.glob("*/*/step_*.pt"))
            log.info(
                "transfer: resuming (key %s): %d finished parts kept, %d fine-tuning run(s) to continue",
                key,
                len(done),
                len(running),
            )
        return rec

    def folder(self, target: str, part: str) -> Path:
        """``<run_dir>/transfer/runs/<target>/<part>`` (:func:`pipeline.io.run_folder.transfer_run_dir`)."""
        return transfer_run_dir(self.run_dir, target, part)

    def load(self, target: str, part: str) -> dict | None:
        """The record of a finished part (its arrays back in place as numpy arrays), or None if it has not finished.

        A checkpoint left beside the record (a kill between the two) is removed.

        Raises:
            ValueError: the record is not valid JSON (never the case for a file this class wrote).
        """
        folder = self.folder(target, part)
        rec = read_json(folder / RUN_RECORD_FILE, missing_ok=True)
        if rec is None:
            return None
        for p in folder.glob("step_*.pt") if self.writer else ():  # a kill between recording the run and removing its checkpoint
            p.unlink(missing_ok=True)
        arrays: dict[str, np.ndarray] = {}
        if (folder / RUN_ARRAYS_FILE).exists():
            with np.load(folder / RUN_ARRAYS_FILE, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        return _join(rec, arrays)

    def done(self, target: str, part: str) -> bool:
        """Whether ``part`` of ``target`` has finished (its record exists)."""
        return (self.folder(target, part) / RUN_RECORD_FILE).is_file()

    def save(self, target: str, part: str, record: dict) -> None:
        """Record a finished part: its numpy arrays (at any depth) in ``record.npz``, the rest in ``record.json``, each
        written atomically, the JSON last; then its checkpoints are removed.

        Raises:
            TypeError: a value JSON cannot hold (other than numpy arrays and scalars).
        """
        if not self.writer:
            return
        folder = self.folder(target, part)
        arrays: dict[str, np.ndarray] = {}
        doc = _split(record, arrays, "")
        if arrays:
            buf = io.BytesIO()
            np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy stubs: **kwds may hit allow_pickle: bool
            write_bytes(folder / RUN_ARRAYS_FILE, buf.getvalue())
        write_json(folder / RUN_RECORD_FILE, doc)
        for p in folder.glob("step_*.pt"):
            p.unlink(missing_ok=True)

    def checkpoints(self, target: str, part: str, identity: dict) -> FinetuneCheckpoints:
        """The checkpoints of fine-tuning run ``part`` of ``target``; ``identity`` is what its checkpoint must match
        (the stage key is added)."""
        return FinetuneCheckpoints(self.folder(target, part), {"stage_key": self.key, **identity}, self.every_steps)


# --------------------------------------------------------------------------- fine-tuning checkpoints


@dataclass
class FinetunePosition:
    """Where a fine-tuning run is, besides its model, optimizer, scheduler and scaler states (a checkpoint's position)."""

    epoch: int = 0  # the epoch in progress (0-based)
    batches: int = 0  # its batches done
    step: int = 0  # optimizer steps done in the run
    loss_sum: float = 0.0  # the epoch's loss summed over its images so far
    seen: int = 0  # the epoch's images so far
    lr_last: float = 0.0  # the lr of the epoch's last step so far (its peak lr before the first)
    train_images: int = 0  # images of the finished epochs
    eval_seconds: float = 0.0  # wall seconds spent scoring val so far
    seconds: float = 0.0  # wall seconds of the run so far (a resumed run adds its own)
    epoch_seconds: float = 0.0  # wall seconds of the epoch in progress so far
    rows: list[dict] = field(default_factory=list)  # the finished epochs' rows (pipeline.evaluation.finetune.finetune)

    def next_epoch(self, peak_lr: float) -> None:
        """Move to the start of the next epoch (its lr before the first step: ``peak_lr``)."""
        self.epoch, self.batches, self.loss_sum, self.seen, self.lr_last, self.epoch_seconds = (
            self.epoch + 1,
            0,
            0.0,
            0,
            peak_lr,
            0.0,
        )


def _plain_identity(identity: dict) -> dict:
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


class FinetuneCheckpoints:
    """The checkpoints of one fine-tuning run, in its own folder; the last one is kept.

    ``identity`` (JSON-able: the stage key, the target, the run, the recipe) is stored in every checkpoint,
    and a checkpoint whose identity differs is refused (:class:`pipeline.errors.CheckpointError`).
    ``every_steps``: a checkpoint every this many optimizer steps inside an epoch (0: at epoch ends only).
    """

    def __init__(self, folder: Path, identity: dict, every_steps: int) -> None:
        self.folder, self.identity, self.every_steps = Path(folder), _plain_identity(identity), int(every_steps)

    def _hint(self) -> str:
        return (
            f"delete {self.folder} to redo this fine-tuning run from its start, or redo the stage "
            "(a new run_dir, or run.force=[transfer] with pipeline.run)"
        )

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after optimizer step ``step`` inside an epoch."""
        return self.every_steps > 0 and step % self.every_steps == 0

    def resume(
        self, model: torch.nn.Module, optimizer, scheduler, scaler: torch.amp.GradScaler, ema: torch.nn.Module | None = None
    ) -> FinetunePosition | None:
        """Load the run's last checkpoint, if any, into ``model``, ``optimizer``, ``scheduler``, ``scaler``, the weight
        average ``ema`` (a ``torch.optim.swa_utils.AveragedModel``, if the run keeps one) and the RNGs.

        Returns:
            the position to continue from, or None (no checkpoint: the run starts from its beginning).
        Raises:
            pipeline.errors.CheckpointError: the checkpoint is unreadable or unsafe, does not fit the model, or was
                written by another run or recipe (one line naming the file and the fields that differ).
        """
        last = latest_checkpoint(self.folder)
        if last is None:
            return None
        try:
            got = load_checkpoint(last, model, optimizer, scheduler, restore_rng=True)
        except CheckpointError as exc:
            raise CheckpointError(str(exc).splitlines()[0], last, hint=self._hint()) from exc
        extra = got["extra"]
        theirs = _plain_identity(extra.get("identity") or {})
        if theirs != self.identity:
            diff = sorted(k for k in set(theirs) | set(self.identity) if theirs.get(k) != self.identity.get(k))
            if "settings" in diff:
                a, b = theirs.get("settings") or {}, self.identity.get("settings") or {}
                diff = [k for k in diff if k != "settings"] + sorted(
                    f"settings.{k}" for k in set(a) | set(b) if a.get(k) != b.get(k)
                )
            raise CheckpointError(
                f"checkpoint {last} was written by another fine-tuning run or recipe (differs in {', '.join(diff)}); not resumed",
                last,
                hint=self._hint(),
            )
        if extra.get("grad_scaler") and scaler.is_enabled():
            scaler.load_state_dict(extra["grad_scaler"])
        if ema is not None:
            if not extra.get("ema"):
                raise CheckpointError(f"checkpoint {last} holds no weight average (ema_decay)", last, hint=self._hint())
            ema.load_state_dict(extra["ema"])
        names = {f.name for f in fields(FinetunePosition)}
        pos = FinetunePosition(**{k: v for k, v in (extra.get("position") or {}).items() if k in names})
        log.info(
            "%s: resuming fine-tuning from %s (epoch %d, batch %d, step %d)",
            self.folder.name,
            last.name,
            pos.epoch + 1,
            pos.batches,
            pos.step,
        )
        return pos

    def save(
        self,
        model: torch.nn.Module,
        optimizer,
        scheduler,
        scaler: torch.amp.GradScaler,
        pos: FinetunePosition,
        ema: torch.nn.Module | None = None,
    ) -> Path:
        """Write ``step_NNNNNNNN.pt`` (atomic) for position ``pos`` (with the weight average ``ema``'s state, if any)
        and delete the older ones; return the file.

        Raises:
            OSError: the file cannot be written (naming it).
        """
        target = save_checkpoint(
            checkpoint_path(self.folder, pos.step),
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            step=pos.step,
            epoch=pos.epoch,
            data_position={"epoch": pos.epoch, "batches": pos.batches},
            extra={
                "identity": self.identity,
                "position": asdict(pos),
                "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "ema": ema.state_dict() if ema is not None else None,
            },
        )
        prune_checkpoints(self.folder, 1)
        return target


_RUNTIME_SETTINGS = ("workers", "progress", "activation_checkpointing")  # never change a run's results


def run_identity(target: str, part: str, *, num_classes: int, train_images: int, settings: Any) -> dict:
    """What a fine-tuning run's checkpoint must match besides the stage key: the target, the run, its classes and
    training images, and its settings (a :class:`pipeline.evaluation.finetune.FinetuneSettings`) without the
    ones that never change results (``workers``, ``progress``, ``activation_checkpointing``)."""
    recipe = {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in asdict(settings).items() if k not in _RUNTIME_SETTINGS}
    return {"target": target, "run": part, "num_classes": int(num_classes), "train_images": int(train_images), "settings": recipe}
