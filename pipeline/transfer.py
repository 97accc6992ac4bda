"""Transfer stage: what the hashtag pretraining buys on a suite of labelled targets.

``python -m pipeline.transfer run_dir=runs/demo ['transfer/target=[fashion_mnist]'] [transfer.KEY=...]
[transfer.targets.NAME.KEY=...]``
``torchrun --nproc_per_node=G [--nnodes=M ...] -m pipeline.transfer run_dir=...`` (one job over the ranks: each
part's images split into rank blocks, DDP fine-tuning, rank 0 writes; :mod:`pipeline.evaluation.ranks`)

**The suite.** ``transfer.targets`` maps a name to a target folder in the ImageNet layout
(``<root>/<train_split>/<class>/<img>``, ``<root>/<val_split>/<class>/<img>``), filled by the
``transfer/target`` config group (``conf/transfer/target/<name>.yaml``, each with a
``# @package transfer.targets.<name>`` header). ``conf/config.yaml`` selects
``[fluent_emoji_subgroup, blob_emoji_subgroup, fashion_mnist]``: two in-domain emoji targets (Microsoft's
Fluent Emoji, 67 emoji subgroups, and Google's earlier blob emoji, 54 subgroups; val emoji never seen in
train) and the out-of-domain Fashion-MNIST.
``'transfer/target=[fashion_mnist]'`` runs one; ``+transfer=imagenet1k
transfer.targets.imagenet1k.root=/path/to/imagenet`` runs ImageNet-1k alone with its recipe.
The other ``transfer.*`` keys are the recipe every target shares; a target file may override
the keys listed in ``pipeline.config.TARGET_RECIPE_KEYS`` (its values win over
``transfer.KEY=`` on the command line; use ``transfer.targets.NAME.KEY=`` for one target).
Every target's config and folders are checked before any work.

What each target runs (linear probe and fine-tuning, pretrained vs scratch, low-data and full
settings, the lr chosen on held-out training images, intervals, lower-bound accuracies) is
described in :mod:`pipeline.evaluation.suite`.

**Budget** (``make demo``: 2 CPU cores, resnext_mini at 64 px): the demo defaults are 10 (Fashion-MNIST) / 5
(emoji targets) labelled images per class and the full setting capped at 200 / 40 per class, 2,000 of
Fashion-MNIST's 10,000 val images / all of the emoji targets', 10 probe seeds on layer2-4 features, and
fine-tuning by LP-FT (a probe's head on the same features first, :mod:`pipeline.evaluation.head_init`): 4 epochs
of >= 1,000 images, 3 seeds in the low-data setting, the lr chosen from [0.01, 0.03] by runs of that budget on
held-out training images. The figures of a fresh-clone demo are in docs/stages/transfer.md ("Measured figures").

Reads ``<run_dir>/pretrain/{trunk.safetensors, model.json, manifest.json}``,
``<run_dir>/dedup/{eval_contamination.json, removed.jsonl}``, the ingest shards (feature
decontamination) and the target folders. Writes only ``<run_dir>/transfer/``:
``results.json`` (schema in :mod:`pipeline.evaluation.results`), ``correct.npz``, ``finetune_epochs.jsonl``
(one row per epoch per fine-tuning run), ``runs/`` (the resume state), ``manifest.json`` last.

**Resuming.** Every finished part of a target (lr selection, decontamination, each linear probe and
each fine-tuning run) is recorded under ``runs/`` as it finishes, and a fine-tuning run writes a
checkpoint at each epoch end but the last and every ``transfer.checkpoint_every_steps`` optimizer steps; a rerun
with the same key (config without its runtime keys, inputs, precision) keeps the finished parts and
continues the interrupted run from its checkpoint, with the results of an uninterrupted run; another
key starts over (:mod:`pipeline.evaluation.resume`).
"""

from __future__ import annotations

import logging
import time

from pipeline.cli import hydra_entry
from pipeline.config import validate
from pipeline.config_views import results_config
from pipeline.errors import ConfigError
from pipeline.evaluation.decontamination import feature_check_skip
from pipeline.evaluation.ranks import micro_batch_size
from pipeline.evaluation.results import new_results, stage_counts
from pipeline.evaluation.resume import RunRecords, config_key, saved_state, stage_key
from pipeline.evaluation.suite import run_target
from pipeline.evaluation.suite_context import SuiteContext, read_pretrained, resolve_runtime, stage_inputs
from pipeline.evaluation.targets import open_targets
from pipeline.io.atomic import remove_stale_temps, write_json, write_jsonl
from pipeline.io.manifest import write_manifest
from pipeline.io.run_folder import CORRECT_FILE, EPOCHS_FILE, MANIFEST, RESULTS_FILE, RUNS_DIR, TRANSFER, stage_dir
from pipeline.train.distributed import barrier, broadcast_object, cleanup, init_distributed
from pipeline.train.precision import describe_choice, hardware_record

log = logging.getLogger(__name__)
STAGE = TRANSFER


def run_transfer(cfg) -> dict | None:
    """Run the transfer suite for ``cfg``; return the stage's manifest (on rank 0; None on the other ranks).

    Under torchrun or a multi-task SLURM job every rank runs this function: the work is split over the
    ranks (:mod:`pipeline.evaluation.ranks`) and rank 0 alone writes.

    Writes ``results.json`` (schema in :mod:`pipeline.evaluation.results`; atomically, after every part of every
    target), ``correct.npz`` (:mod:`pipeline.evaluation.correctness`), ``finetune_epochs.jsonl``, ``runs/`` (each
    finished part's record, the running fine-tuning run's checkpoint: :mod:`pipeline.evaluation.resume`) and
    ``manifest.json`` last. Parts an earlier run with the same key finished are read back, not redone.

    Raises:
        pipeline.errors.ConfigError: bad ``transfer.*`` values, train/val classes that differ, a world size the
            fine-tuning batch does not split over or larger than a target's scored val images.
        FileNotFoundError: pretrain not finished, or a target folder missing; all before any work. (Without
            finished ingest and dedup stages in the run folder the feature-space check is skipped, with the
            reason in ``contamination.features.reason`` and a warning.)
        pipeline.errors.CheckpointError: a fine-tuning checkpoint left by a killed run is unreadable or was written
            by another run or recipe (one line naming it).
    """
    # plan: every input checked before any work
    validate(cfg)
    t0 = time.perf_counter()
    tc = cfg.transfer
    trunk_path, info, pre_man = read_pretrained(cfg.run_dir)
    model_name = info["model"]
    size = int(tc.image_size or info["image_size"])
    targets = open_targets(tc)
    ranks = init_distributed(str(tc.device))
    try:
        check_world(targets, ranks.world)
        return _run(cfg, tc, ranks, trunk_path, model_name, size, pre_man, targets, t0)
    finally:
        cleanup(ranks)


def check_world(targets, world: int) -> None:
    """Every target's fine-tuning batch splits over ``world`` ranks and its scored val images are at least ``world``.

    Raises:
        pipeline.errors.ConfigError: one line naming the target and the key.
    """
    for t in targets:
        r = t.recipe
        micro_batch_size(r["device_batch"], int(r["batch_size"]), world, f"transfer.targets.{t.name}.device_batch")
        n_val = len(t.val_set) if r["max_val_images"] is None else min(len(t.val_set), int(r["max_val_images"]))
        if n_val < world:
            raise ConfigError(
                f"config error at transfer.targets.{t.name}.max_val_images: {n_val} scored val images for {world} ranks; "
                "every rank scores a block of them (run on fewer ranks)"
            )


def _run(cfg, tc, ranks, trunk_path, model_name: str, size: int, pre_man: dict, targets, t0: float) -> dict | None:
    main = ranks.is_main
    nn_skip = feature_check_skip(cfg.run_dir, bool(tc.nn_decontam))
    inputs = stage_inputs(cfg.run_dir, pre_man, trunk_path, targets) if main else None
    inputs = broadcast_object(ranks, inputs)  # one fingerprint of the inputs (the resume key) on every rank
    saved, ckey = saved_state(cfg.run_dir), config_key(cfg, inputs)
    # an earlier run with this config and these inputs keeps its precision choice (auto may resolve otherwise here)
    recorded = saved.get("precision_choice") if saved and saved.get("config_key") == ckey else None
    device, plan, prec = resolve_runtime(tc, model_name, targets[0].num_classes, size, recorded, ranks)
    log.info(
        "transfer on %s%s; targets %s",
        describe_choice(prec, plan),
        f", {ranks.world} ranks ({ranks.backend})" if ranks.distributed else "",
        [t.name for t in targets],
    )

    out = stage_dir(cfg.run_dir, STAGE)
    key = stage_key(cfg, inputs, prec.key())
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for f in (MANIFEST, RESULTS_FILE, CORRECT_FILE):
            (out / f).unlink(missing_ok=True)
        remove_stale_temps(out)
        write_jsonl(out / EPOCHS_FILE, [])
        records = RunRecords.open(cfg.run_dir, key, ckey, prec.to_dict(), int(tc.checkpoint_every_steps))
    else:
        records = RunRecords(cfg.run_dir, key, int(tc.checkpoint_every_steps), writer=False)
    barrier(ranks)  # the records folder is rank 0's before any rank looks into it
    st = SuiteContext(cfg, trunk_path, model_name, size, device, prec, plan.workers, out, ranks)
    st.nn_skip = nn_skip
    st.records = records
    results = new_results(tc, [t.name for t in targets], model_name, size, int(cfg.seed))
    results["world_size"] = ranks.world

    def write(section: dict) -> None:
        results["targets"][section["target"]] = section
        if st.bank_info is not None:
            results["pretraining_bank"] = dict(st.bank_info)
        if main:
            write_json(out / RESULTS_FILE, results)

    # the blocks: one suite run per target
    for t in targets:
        sec = run_target(st, t, write)
        results["seconds"][t.name] = sec["seconds"]["total"]

    # write (rank 0)
    results["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    barrier(ranks)
    if not main:
        return None
    write_json(out / RESULTS_FILE, results)
    write_jsonl(out / EPOCHS_FILE, st.epoch_rows)
    counts = stage_counts(results, len(st.epoch_rows), size)
    counts.update(
        device=str(device),
        world_size=ranks.world,
        precision=prec.precision,
        channels_last=prec.channels_last,
        hardware=hardware_record(prec, plan, device),
    )
    return write_manifest(
        out,
        stage=STAGE,
        config=results_config(cfg, "seed", "transfer"),
        inputs=inputs,
        counts=counts,
        seconds=time.perf_counter() - t0,
        outputs={"results": RESULTS_FILE, "correct": CORRECT_FILE, "finetune_epochs": EPOCHS_FILE, "runs": RUNS_DIR + "/"},
    )


def main() -> None:
    """Hydra entry point: ``python -m pipeline.transfer [overrides]``."""
    hydra_entry(run_transfer, STAGE)


if __name__ == "__main__":
    main()
