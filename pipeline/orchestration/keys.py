"""Stage keys: when a finished stage is up to date.

Each stage gets a *key*: a hash of the config sections it depends on (without the fields
that never change results, :func:`pipeline.config.runtime`) and of the keys of the stages it
reads (:data:`pipeline.io.run_folder.UPSTREAM`). ``pipeline.run`` records the key of every
finished stage in ``<run_dir>/run/stages.json`` and skips a stage whose key is unchanged.
"""

from __future__ import annotations

from dataclasses import make_dataclass
from pathlib import Path
from typing import List

from pipeline.config import DedupConfig, IngestConfig, PretrainConfig, SourceConfig, TransferConfig, VocabConfig
from pipeline.config_views import result_view
from pipeline.io.manifest import canonical_hash, file_sha256, read_manifest, stage_dir
from pipeline.io.run_folder import STAGES, UPSTREAM

__all__ = ["stage_config", "stage_keys", "recorded_numerics", "manifest_hash"]


def _digest(path: str | None) -> str | None:
    """SHA-256 of a side input file (a withdrawn-ids list), so editing it in place changes the key."""
    return file_sha256(path) if path and Path(path).is_file() else None


# the schema of the sections a stage key hashes (runtime fields are dropped by it: pipeline.config.runtime)
_SECTION_SCHEMA = make_dataclass(
    "StageSections",
    [
        ("sources", List[SourceConfig]),
        ("eval_sets", List[SourceConfig]),
        ("ingest", IngestConfig),
        ("dedup", DedupConfig),
        ("vocab", VocabConfig),
        ("pretrain", PretrainConfig),
        ("transfer", TransferConfig),
    ],
)


def stage_config(cfg: dict, stage: str) -> dict:
    """The config sections ``stage`` depends on, from the resolved config ``cfg`` (a plain dict), without the
    fields that never change results; what its key hashes and its manifest records."""
    return _sections(cfg, stage)


def _sections(cfg: dict, stage: str) -> dict:
    pick = {
        "ingest": {
            "sources": cfg["data"]["sources"],
            "ingest": cfg["ingest"],
            "withdrawn_sha256": _digest(cfg["ingest"].get("withdrawn")),
        },
        "dedup": {
            "eval_sets": cfg["data"]["eval_sets"],
            "dedup": cfg["dedup"],
            "ingest": cfg["ingest"],
            "withdrawn_sha256": _digest(cfg["dedup"].get("withdrawn")),
        },
        "vocab": {"vocab": cfg["vocab"]},
        "pretrain": {"pretrain": cfg["pretrain"], "seed": cfg["seed"]},
        "transfer": {"transfer": cfg.get("transfer", {}), "seed": cfg["seed"]},
    }[stage]
    return result_view(pick, _SECTION_SCHEMA)


def recorded_numerics(run_dir, stage: str) -> dict | None:
    """The precision choice a finished stage recorded in its manifest (``counts.hardware.precision_choice``)."""
    man = read_manifest(stage_dir(run_dir, stage)) if run_dir is not None else None
    return (((man or {}).get("counts") or {}).get("hardware") or {}).get("precision_choice")


def _pin_numerics(section: dict, recorded: dict | None) -> dict:
    """Replace ``precision: auto`` / ``channels_last: null`` by what the stage resolved to.

    The resolved numerics change results, so they belong in the key; ``auto`` in a run folder
    means "what this folder already has" (a finished stage is not redone because another
    machine would resolve ``auto`` differently; an explicit different value redoes it).
    """
    if not recorded:
        return section
    out = dict(section)
    if out.get("precision") in ("auto", recorded.get("precision")):
        out["precision"] = recorded.get("precision")
        out["tf32"] = recorded.get("tf32", False)
    if out.get("channels_last") in (None, recorded.get("channels_last")):
        out["channels_last"] = recorded.get("channels_last")
    return out


def stage_keys(cfg: dict, run_dir=None) -> dict[str, str]:
    """The key of every stage for the resolved config ``cfg`` (a plain dict).

    With ``run_dir``, the precision and layout that finished stages resolved ``auto`` to
    (:func:`recorded_numerics`) are part of their keys.
    """
    keys: dict[str, str] = {}
    for s in STAGES:
        sec = _sections(cfg, s)
        if s in ("pretrain", "transfer") and run_dir is not None:
            sec = {**sec, s: _pin_numerics(sec[s], recorded_numerics(run_dir, s))}
        keys[s] = canonical_hash({"stage": s, "config": sec, "upstream": [keys[u] for u in UPSTREAM[s]]})
    return keys


def manifest_hash(manifest: dict | None) -> str | None:
    """Identity of one finished execution of a stage (its manifest's hash)."""
    return canonical_hash(manifest) if manifest else None
