"""What every target of one transfer-stage run shares: the pretrained trunk, device, precision, output arrays.

:func:`read_pretrained` reads the pretrain stage's outputs (through :mod:`pipeline.io.run_folder`);
:class:`SuiteContext` holds the resolved runtime and builds the models (pretrained trunk or seeded
random init), the features, the fine-tuning settings and, once per stage, the pretraining images'
feature bank of the feature-space decontamination. :func:`resolve_runtime` picks the device, threads
and precision; :func:`stage_inputs` fingerprints what the stage read (the manifest's ``inputs``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import ConfigError
from pipeline.evaluation.correctness import save_correctness
from pipeline.evaluation.finetune import FinetuneSettings, settings_from_recipe
from pipeline.evaluation.linear_probe import extract_features
from pipeline.evaluation.nn_bank import BankPart, bank_key, describe, open_bank
from pipeline.evaluation.ranks import micro_batch_size
from pipeline.evaluation.resume import RunRecords
from pipeline.evaluation.target_data import fingerprint
from pipeline.io.manifest import file_sha256
from pipeline.io.run_folder import (
    CORRECT_FILE,
    DEDUP,
    MANIFEST,
    MODEL_FILE,
    PRETRAIN,
    TRUNK_FILE,
    path,
    read_manifest,
    read_model_info,
    stage_dir,
)
from pipeline.seeding import item_seed
from pipeline.system import available_cores, pick_device, thread_plan
from pipeline.train.distributed import DistInfo, broadcast_object
from pipeline.train.models import ResNeXt, create_model, list_models, load_trunk
from pipeline.train.precision import PrecisionChoice, resolve_for_model

log = logging.getLogger(__name__)

__all__ = ["read_pretrained", "SuiteContext", "resolve_runtime", "stage_inputs"]


def read_pretrained(run_dir) -> tuple[Path, dict, dict]:
    """The trunk path, ``model.json`` and manifest of the pretrain stage.

    Raises:
        FileNotFoundError: the pretrain stage has not finished in ``run_dir``.
        pipeline.errors.ConfigError: ``model.json`` names a model :func:`pipeline.train.models.list_models` lacks.
    """
    pre = stage_dir(run_dir, PRETRAIN)
    trunk, info_file = path(run_dir, PRETRAIN, TRUNK_FILE), path(run_dir, PRETRAIN, MODEL_FILE)
    man = read_manifest(pre)
    missing = [p.name for p in (trunk, info_file) if not p.exists()] + ([] if man else [MANIFEST])
    if missing:
        raise FileNotFoundError(
            f"no finished pretrain stage in {pre} (missing {', '.join(missing)}); "
            f"run `python -m pipeline.pretrain run_dir={run_dir}` first"
        )
    info = read_model_info(run_dir)
    assert man is not None and info is not None  # both files exist (checked above)
    if info.get("model") not in list_models():
        raise ConfigError(f"config error at pretrain: {info_file} names an unknown model {info.get('model')!r}")
    return trunk, info, man


class SuiteContext:
    """Shared state of one transfer-stage run: device, precision, the trunks, the pretraining feature bank.

    ``arrays`` collects every target's ``correct.npz`` entries (:func:`save_arrays` rewrites the file),
    ``epoch_rows`` the ``finetune_epochs.jsonl`` rows; ``nn_skip`` says why there is no feature-space
    decontamination (None: there is); ``records`` the finished parts and fine-tuning checkpoints of the
    stage (:class:`pipeline.evaluation.resume.RunRecords`; None: nothing is kept, nothing resumed);
    ``bank_info`` the ``{"images", "seconds"}`` of the pretraining feature bank, once embedded or restored.
    """

    def __init__(
        self,
        cfg,
        trunk_path: Path,
        model_name: str,
        size: int,
        device,
        prec: PrecisionChoice,
        workers: int,
        out: Path,
        ranks: DistInfo | None = None,
    ) -> None:
        self.cfg, self.tc = cfg, cfg.transfer
        # this process's place in a torchrun/SLURM job (pipeline.evaluation.ranks); rank 0 alone writes
        self.ranks = ranks if ranks is not None else DistInfo(0, 1, 0, torch.device(device), None)
        self.is_main = self.ranks.is_main
        self.trunk_path, self.model_name, self.size = trunk_path, model_name, size
        self.device, self.prec, self.workers, self.out = device, prec, workers, out
        self.autocast, self.channels_last = prec.autocast_dtype, prec.channels_last
        self.progress = bool(self.tc.progress)
        self.bank: BankPart | None = None
        self.arrays: dict[str, np.ndarray] = {}
        self.epoch_rows: list[dict] = []
        self.nn_skip: str | None = None  # why there is no feature-space decontamination (None: there is)
        self.records: RunRecords | None = None  # the finished parts and checkpoints (None: no resume)
        self.bank_info: dict | None = None  # {"images", "seconds"} of the pretraining feature bank

    def trunk(self, init: str, seed: int) -> ResNeXt:
        """The pretrained trunk, or (``scratch``) the random init of ``seed`` (scratch probe features = scratch
        fine-tune start), on the device in the resolved memory layout; no classifier."""
        if init == "pretrained":
            m = load_trunk(self.trunk_path, self.model_name)
        else:  # the same random init for a given seed (scratch probe features = scratch fine-tune start)
            torch.manual_seed(item_seed("scratch-init", seed))
            m = create_model(self.model_name, num_classes=0)
        m = m.to(self.device)
        return m.to(memory_format=torch.channels_last) if self.channels_last else m

    def features(self, model, batches, total: int, desc: str, stages=None) -> tuple[np.ndarray, np.ndarray]:
        """:func:`pipeline.evaluation.linear_probe.extract_features` with this run's device and precision."""
        return extract_features(
            model,
            batches,
            device=self.device,
            autocast_dtype=self.autocast,
            channels_last=self.channels_last,
            total=total,
            progress=self.progress,
            desc=desc,
            stages=stages,
        )

    def settings(
        self, r: dict, *, epochs: int, n: int, base_lr: float, seed: int, max_epoch_images=None, eval_every_epoch: bool
    ) -> FinetuneSettings:
        """:func:`pipeline.evaluation.finetune.settings_from_recipe` of recipe ``r`` with this run's runtime."""
        return settings_from_recipe(
            r,
            n=n,
            device_batch=micro_batch_size(r["device_batch"], int(r["batch_size"]), self.ranks.world),
            epochs=epochs,
            base_lr=base_lr,
            seed=seed,
            eval_every_epoch=eval_every_epoch,
            max_epoch_images=max_epoch_images,
            autocast_dtype=self.autocast,
            grad_scaler=self.prec.grad_scaler,
            channels_last=self.channels_last,
            workers=self.workers,
            progress=self.progress,
        )

    def pretraining_bank(self, model) -> BankPart:
        """This rank's part of the pretraining images' feature bank in ``model`` (:mod:`pipeline.evaluation.nn_bank`):
        embedded once per trunk and world size (or read from an earlier run's ``transfer/nn_bank/``), once per stage.

        Collective: every rank calls it. Sets ``bank_info`` (``{"images", "seconds"}``).
        """
        if self.bank is None:
            key = None
            if self.is_main:  # one fingerprint of the trunk and the images, on every rank
                key = bank_key(self.cfg.run_dir, file_sha256(self.trunk_path), self.size, self.prec.key(), self.ranks.world)
            key = broadcast_object(self.ranks, key)
            self.bank = open_bank(
                self.cfg.run_dir,
                self.ranks,
                key,
                lambda b: extract_features(
                    model, b, device=self.device, autocast_dtype=self.autocast, channels_last=self.channels_last
                ),
                size=self.size,
                dim=int(model.num_features),
                batch_size=int(self.tc.eval_batch_size),
                workers=self.workers,
                center=bool(self.tc.nn_center),
                progress=self.progress,
            )
            self.bank_info = describe(self.bank)
            log.info(
                "feature decontamination: %d pretraining images %s (%d rank%s, %.1fs)",
                self.bank_info["images"],
                "read from an earlier run's bank" if self.bank.reused else "embedded",
                self.ranks.world,
                "" if self.ranks.world == 1 else "s",
                self.bank_info["seconds"],
            )
        return self.bank

    def save_arrays(self) -> None:
        """Rewrite ``<out>/correct.npz`` with every array collected so far (rank 0)."""
        if self.is_main:
            save_correctness(self.out / CORRECT_FILE, self.arrays)


def resolve_runtime(
    tc, model_name: str, num_classes: int, size: int, recorded: dict | None = None, ranks: DistInfo | None = None
):
    """The device, thread plan and precision of the stage, applied globally (torch threads, matmul precision).

    With ``ranks`` (a torchrun/SLURM job): the rank's device (``cuda:<local rank>`` on GPUs), the node's cores
    shared by its ``LOCAL_WORLD_SIZE`` ranks, and rank 0's precision choice broadcast to every rank.

    A timed trial of the fine-tuning step picks the precision on the CPU (``transfer.precision=auto``;
    cached per machine, :func:`pipeline.train.precision.resolve_for_model`). ``recorded``: the choice of an
    earlier, unfinished run of the stage with the same config (:func:`pipeline.evaluation.resume.saved_state`),
    kept when ``transfer.precision`` is ``auto`` or names it.

    Returns:
        ``(device, plan, prec)``: ``torch.device``, :class:`pipeline.system.ThreadPlan` (``threads``,
        ``workers``) and :class:`pipeline.train.precision.PrecisionChoice`.
    Raises:
        pipeline.errors.ConfigError: a precision the device cannot run (``transfer.precision``).
    """
    device = ranks.device if ranks is not None else pick_device(tc.device)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) if ranks is not None and ranks.distributed else 1
    plan = thread_plan(device.type, available_cores(), local_world, threads=tc.threads, workers=tc.workers)
    torch.set_num_threads(plan.threads)
    if ranks is not None and not ranks.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 logs progress
    choice = None
    if ranks is None or ranks.is_main:  # a timed trial of the fine-tuning step on the CPU (cached per machine)
        choice = resolve_for_model(
            tc.precision,
            tc.channels_last,
            device,
            model=model_name,
            num_classes=num_classes,
            image_size=size,
            batch_size=tc.batch_size,
            threads=plan.threads,
            recorded=recorded,
            where="transfer.precision",
        )
    if ranks is not None and ranks.distributed:  # rank 0's choice: every rank the same numerics
        choice = PrecisionChoice.from_dict(broadcast_object(ranks, choice.to_dict() if choice is not None else None))
    assert choice is not None  # rank 0 resolved it, or it was broadcast
    choice.apply_global()
    return device, plan, choice


def stage_inputs(run_dir, pre_man: dict, trunk_path: Path, targets) -> dict:
    """The manifest's ``inputs``: the pretrain stage's key and trunk hash, dedup's key, each target's fingerprints."""
    dedup_man = read_manifest(stage_dir(run_dir, DEDUP))
    return {
        "pretrain": pre_man.get("config_hash"),
        "trunk_sha256": file_sha256(trunk_path),
        "dedup": (dedup_man or {}).get("config_hash"),
        "targets": {t.name: {"train": fingerprint(t.train_set), "val": fingerprint(t.val_set)} for t in targets},
    }
