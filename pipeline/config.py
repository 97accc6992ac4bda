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
    max_pixels: int = 89_478_485  # width x height cap of the input (Pillow's default); larger -> quarantined as decompression_bomb
    max_file_bytes: int = 256 * 1024 * 1024  # larger encoded inputs are quarantined
    encoding: Encoding = Encoding.jpeg  # default re-encoding (per-source override in data.sources)
    jpeg_quality: int = 95
    webp_method: int = 0  # lossless WebP effort 0-6: 0 is ~10x faster than 4 for ~1.6x the bytes (measured on the demo)
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
    require_dedup: bool = True  # fail if <run_dir>/dedup/ has not finished; false = count every ingested sample
    progress: bool = True  # tqdm progress bar over samples on stderr


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


class LossKind(str, Enum):
    """Pretraining loss (Mahajan et al. 2018, sec. 3.1 compares the two)."""

    softmax = "softmax"  # cross-entropy against the 1/k soft target (the paper's choice)
    sigmoid = "sigmoid"  # per-class sigmoid + binary cross-entropy


class Resampling(str, Enum):
    """How the Zipfian label distribution is resampled (sec. 2.1; sqrt was best)."""

    natural = "natural"
    sqrt = "sqrt"
    uniform = "uniform"


@dataclass
class PretrainConfig:
    """Pretraining stage: ResNeXt with multi-label softmax on the shards (DDP)."""

    model: str = "resnext_mini"  # a name from pipeline.models.list_models()
    loss: LossKind = LossKind.softmax
    resampling: Resampling = Resampling.sqrt
    image_size: int = 64  # px, random-resized-crop output (224 in the paper)
    batch_size: int = 64  # images per device per micro-batch (24 per GPU in the paper)
    global_batch: Optional[int] = None  # images per optimizer step; None = batch_size x world (no accumulation)
    epochs: int = 3
    max_steps: Optional[int] = None  # stop after this many optimizer steps (smoke runs, tests)
    base_lr: float = 0.1  # per 256 images (linear scaling rule, Goyal et al. 2017 sec. 2.1)
    reference_batch: int = 256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4  # not applied to BN parameters and biases
    warmup_epochs: float = 1.0  # linear warmup from warmup_start_lr to the scaled lr (Goyal sec. 2.2)
    warmup_start_lr: float = 0.1
    schedule: str = "cosine"  # "cosine" or "step"
    milestones: List[float] = field(default_factory=lambda: [1 / 3, 2 / 3, 8 / 9])  # step: fractions of training
    gamma: float = 0.1  # step: lr factor at each milestone
    final_lr_fraction: float = 0.0  # cosine: final lr as a fraction of the peak
    precision: str = "auto"  # "auto" (bf16 autocast where supported: CUDA bf16, or CPU), "bf16", "fp32"
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # "auto", "cpu" or "cuda"
    workers: int = 2  # DataLoader workers per rank (decode + augmentation)
    shuffle_buffer: int = 1000  # samples in each rank's shuffle buffer
    heldout_fraction: float = 0.05  # samples held out (by key hash) for precision@1 and mAP
    eval_every_steps: int = 0  # 0 = at the end of each epoch
    checkpoint_every_steps: int = 50
    keep_checkpoints: int = 3
    tensorboard: bool = False
    progress: bool = True
    threads: int = 0  # torch intra-op threads per rank; 0 = cores / local ranks
    audit_data: bool = False  # gather every rank's sample keys at the end and check they are disjoint (tests, debugging)


@dataclass
class RunConfig:
    """The main job (``python -m pipeline.run``): which stages, and how."""

    stages: List[str] = field(default_factory=lambda: ["ingest", "dedup", "vocab", "pretrain", "transfer"])
    force: List[str] = field(default_factory=list)  # stages to redo even if their inputs and config are unchanged
    pretrain_nproc: int = 1  # > 1: launch pretraining with torchrun --nproc_per_node=N (DDP) from the main job
    report: bool = True  # write <run_dir>/report.md at the end


@dataclass
class PipelineConfig:
    """Root config of every stage (``conf/config.yaml`` extends it)."""

    run_dir: str = "runs/demo"  # the run folder; each stage writes only <run_dir>/<stage>/
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


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
    _check(0 <= ing.webp_method <= 6, "ingest.webp_method", "must be in [0, 6]")
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
    pt = cfg.pretrain
    _check(pt.image_size >= 16, "pretrain.image_size", "must be >= 16 px")
    _check(pt.batch_size >= 2, "pretrain.batch_size", "must be >= 2 (BatchNorm needs 2+ images)")
    _check(pt.global_batch is None or pt.global_batch >= pt.batch_size, "pretrain.global_batch", "must be >= batch_size")
    _check(pt.epochs >= 1, "pretrain.epochs", "must be >= 1")
    _check(pt.max_steps is None or pt.max_steps >= 1, "pretrain.max_steps", "must be >= 1")
    _check(pt.schedule in ("cosine", "step"), "pretrain.schedule", f"must be cosine or step, got {pt.schedule!r}")
    _check(pt.precision in ("auto", "bf16", "fp32"), "pretrain.precision", "must be auto, bf16 or fp32")
    _check(pt.device in ("auto", "cpu", "cuda"), "pretrain.device", "must be auto, cpu or cuda")
    _check(0 <= pt.heldout_fraction < 0.5, "pretrain.heldout_fraction", "must be in [0, 0.5)")
    _check(pt.workers >= 0 and pt.checkpoint_every_steps >= 1 and pt.keep_checkpoints >= 1,
           "pretrain.workers/checkpoint_every_steps/keep_checkpoints", "must be >= 0 / >= 1 / >= 1")
    _check(pt.warmup_epochs >= 0 and pt.base_lr > 0, "pretrain.warmup_epochs/base_lr", "must be >= 0 / > 0")
    dd = cfg.dedup
    _check(dd.hash_size in (8, 16), "dedup.hash_size", f"must be 8 or 16 (64- or 256-bit pHash), got {dd.hash_size}")
    _check(0 <= dd.near_radius <= dd.hash_size**2 // 4, "dedup.near_radius", "must be in [0, bits/4]")
    _check(0 <= dd.eval_radius <= dd.hash_size**2 // 4, "dedup.eval_radius", "must be in [0, bits/4]")
    _check(dd.workers >= 0, "dedup.workers", "must be >= 0 (0 = all cores)")
    validate_vocab(cfg.vocab)


def validate_vocab(vc: Any) -> None:
    """Range checks of ``vocab.*`` (ConfigError naming the key)."""
    _check(vc.min_count >= 1, "vocab.min_count", f"must be >= 1 sample, got {vc.min_count}")
    _check(vc.top_k >= 1, "vocab.top_k", f"must be >= 1 class, got {vc.top_k}")
    _check(VocabKind(vc.kind) is VocabKind.raw or bool(vc.wordnet_dir), "vocab.wordnet_dir", "must be set for WordNet kinds")


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
