"""Structured configs (dataclasses in Hydra's ConfigStore): one place for types and defaults.

``conf/config.yaml`` starts from the ``schema`` node stored here, so a mistyped key
(``ingest.shard_sise=5``) or a wrong type (``ingest.shard_size=many``) is rejected by
Hydra before any work, with the key named. Range checks that types cannot express
live in :func:`validate`, which every stage calls first.

Every field is documented where it is defined; ``python -m pipeline.ingest --cfg job``
prints the resolved config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


class RawFormat(str, Enum):
    """Raw input formats ingest reads (see README, "Raw input formats")."""

    folder = "folder"  # image folder + JSONL/CSV index with path and tags columns
    img2dataset = "img2dataset"  # webdataset tars as written by img2dataset
    imagefolder = "imagefolder"  # <root>/<split>/<class>/<image>, ImageNet layout


class Encoding(str, Enum):
    """How ingest re-encodes images in the canonical shards."""

    jpeg = "jpeg"  # lossy, for photos
    webp = "webp"  # lossless WebP, for clip art and emoji (flat colours, sharp edges)
    png = "png"  # lossless PNG


@dataclass
class SourceConfig:
    """One raw input source."""

    name: str = "???"  # short name, becomes the ``source`` field and the id prefix
    format: RawFormat = RawFormat.folder
    root: str = "???"  # image root (folder, imagefolder) or folder of tars (img2dataset)
    index: Optional[str] = None  # folder format: the JSONL or CSV file (path, tags[, id, caption, meta])
    split: Optional[str] = None  # imagefolder format: the split subfolder to read, e.g. "train"
    encoding: Optional[Encoding] = None  # overrides ingest.encoding for this source
    max_samples: Optional[int] = None  # read at most this many samples (quick runs, tests)


@dataclass
class DataConfig:
    """The raw inputs of a run."""

    cache: str = "data/raw"  # where data_tools.fetch_demo puts downloads
    sources: List[SourceConfig] = field(default_factory=list)  # pretraining sources (ingested into shards)
    eval_sets: List[SourceConfig] = field(default_factory=list)  # evaluation images dedup decontaminates against


@dataclass
class IngestConfig:
    """Ingest stage: raw input -> canonical WebDataset shards."""

    shard_size: int = 1000  # samples per input unit; one output shard per unit (img2dataset: per input tar)
    max_side: int = 512  # px; the longer side of stored images is capped to this
    min_side: int = 8  # px; images whose shorter side is smaller are quarantined
    max_pixels: int = 700_000_000  # width x height cap of the *input* (decompression bombs)
    max_file_bytes: int = 256 * 1024 * 1024  # larger encoded inputs are quarantined
    encoding: Encoding = Encoding.jpeg  # default re-encoding (per-source override in data.sources)
    jpeg_quality: int = 95
    rasterize_svg: bool = True  # rasterize SVG inputs with cairosvg (else quarantine them)
    workers: int = 0  # processes per rank; 0 = all cores of this machine / local ranks
    merge_timeout_s: float = 3600.0  # rank 0 waits this long for other ranks' parts
    progress: bool = True  # tqdm progress bar on stderr


class VocabKind(str, Enum):
    """Which hashtags become classes (Mahajan et al. 2018, section 2.1)."""

    imagenet1k = "imagenet1k"  # synonyms of the 1,000 ImageNet-1k synsets (the paper's "1.5k" set)
    wordnet_nouns = "wordnet_nouns"  # any WordNet noun synset with >= min_count samples (the "17k" set)
    topk = "topk"  # the top_k most frequent WordNet noun synsets (the "8.5k" set)
    raw = "raw"  # normalized hashtags as they are, no WordNet (for comparison)


@dataclass
class VocabConfig:
    """Vocabulary stage: hashtags -> WordNet synset classes, and resampling weights."""

    kind: VocabKind = VocabKind.wordnet_nouns
    min_count: int = 5  # samples a class needs to be kept (wordnet_nouns, topk, raw)
    top_k: int = 1000  # classes kept by kind=topk
    wordnet_dir: str = "${data.cache}/nltk_data/corpora/wordnet"  # laid out by data_tools.fetch_demo
    imagenet_info_dir: str = "${data.cache}/imagenet_info"  # timm's synset lists (fetch_demo)
    plot: bool = True  # class frequency by rank, before/after resampling (PNG)


@dataclass
class DedupConfig:
    """Dedup stage: exact and near duplicates, eval decontamination, withdrawn ids."""

    near_radius: int = 4  # max Hamming distance between 64-bit pHashes to call two images near duplicates
    hash_size: int = 8  # pHash grid (hash_size^2 bits); 8 -> 64-bit hashes
    near: bool = True  # remove near duplicates inside the pretraining set (keep the first by key)
    eval_radius: int = 4  # Hamming radius for eval contamination
    withdrawn: Optional[str] = None  # file with one withdrawn sample id per line (ids as in shards: source:id)
    workers: int = 0  # hashing processes; 0 = all cores
    progress: bool = True


@dataclass
class PipelineConfig:
    """Root config of every stage (``conf/config.yaml`` extends it)."""

    run_dir: str = "runs/demo"  # the run folder; each stage writes only <run_dir>/<stage>/
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)


def register() -> None:
    """Store the schema in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name="schema", node=PipelineConfig)


register()


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; raised before any work."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config error at {key}: {msg}")


def validate(cfg: Any) -> None:
    """Range and consistency checks that types cannot express.

    Raises:
        ConfigError: naming the first offending key.
    """
    ing = cfg.ingest
    _check(ing.shard_size > 0, "ingest.shard_size", f"must be > 0, got {ing.shard_size}")
    _check(ing.max_side >= 16, "ingest.max_side", f"must be >= 16 px, got {ing.max_side}")
    _check(1 <= ing.min_side <= ing.max_side, "ingest.min_side", "must be in [1, max_side]")
    _check(ing.max_pixels > 0, "ingest.max_pixels", "must be > 0")
    _check(1 <= ing.jpeg_quality <= 100, "ingest.jpeg_quality", "must be in [1, 100]")
    _check(ing.workers >= 0, "ingest.workers", "must be >= 0 (0 = all cores)")
    names = [s.name for s in cfg.data.sources]
    _check(len(names) == len(set(names)), "data.sources", f"source names must be unique: {names}")
    entries = [(f"data.sources[{i}]", s) for i, s in enumerate(cfg.data.sources)]
    entries += [(f"data.eval_sets[{i}]", s) for i, s in enumerate(cfg.data.eval_sets)]
    for key, s in entries:
        _check(bool(s.name) and s.name != "???" and ":" not in s.name, f"{key}.name", "must be set, without ':'")
        fmt = RawFormat(s.format)
        if fmt is RawFormat.folder:
            _check(bool(s.index), f"{key}.index", "the folder format needs an index file (JSONL or CSV)")
        if fmt is RawFormat.imagefolder:
            _check(bool(s.split), f"{key}.split", "the imagefolder format needs a split (e.g. train)")
        _check(s.max_samples is None or s.max_samples > 0, f"{key}.max_samples", "must be > 0")
    dd = cfg.dedup
    _check(dd.hash_size in (8, 16), "dedup.hash_size", f"must be 8 or 16 (64- or 256-bit pHash), got {dd.hash_size}")
    _check(0 <= dd.near_radius <= dd.hash_size**2 // 4, "dedup.near_radius", "must be in [0, bits/4]")
    _check(0 <= dd.eval_radius <= dd.hash_size**2 // 4, "dedup.eval_radius", "must be in [0, bits/4]")
    _check(dd.workers >= 0, "dedup.workers", "must be >= 0 (0 = all cores)")


def to_container(cfg: Any) -> dict:
    """The resolved config as plain JSON-able data (enums as their values)."""
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
    return cfg


def default_workers(requested: int) -> int:
    """Processes to use per rank: ``requested`` or, for 0, cores / local world size."""
    if requested > 0:
        return requested
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, (os.cpu_count() or 1) // max(1, local_world))
