"""Structured configs (dataclasses in Hydra's ConfigStore): one place for types and defaults.

``conf/config.yaml`` starts from the ``schema`` node stored here, so a mistyped key
(``ingest.shard_sise=5``) or a wrong type (``ingest.shard_size=many``) is rejected by
Hydra before any work, with the key named. Range checks that types cannot express
live in :func:`validate`, which every stage calls first.

Every field is documented where it is defined; ``python -m pipeline.ingest --cfg job``
prints the resolved config. Each field also carries whether it changes results: fields
declared with :func:`runtime` (threads, workers, progress output, checkpoint cadence, ...)
never do, so they are left out of the stage keys (:func:`pipeline.config_views.result_view`, used by
:func:`pipeline.orchestration.keys.stage_keys`) and a resumed run may change them
(:func:`pipeline.config_views.resume_recipe`);
:func:`resumable` marks a field that changes results but that a resumed run may still
change (``pretrain.max_steps``). Closed choices are enums (``StrEnum``: their ``str()`` is the
value), so a wrong value is rejected by Hydra with the allowed values listed.

Why one file of ~830 lines (over the project's 450): it is the one schema, section by section,
each dataclass followed by its ``validate_<section>`` so a key, its default, its comment and its
range check are read together; split by section, the cross-section checks (``validate``) and the
ConfigStore registration would import every part anyway. The views derived from the field marks
live in :mod:`pipeline.config_views`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from pipeline.errors import ConfigError

RESULTS = "results"  # field metadata: False = the value never changes a stage's results
RESUMABLE = "resumable"  # field metadata: True = a resumed run may change the value
NEUTRAL = "neutral"  # field metadata: the value at which a field added later leaves stage keys as they were


def runtime(default: Any = None) -> Any:
    """A config field that never changes results (how fast, where, how verbose): not part of the stage key.

    A resumed run may change it too. Use for immutable defaults only.
    """
    return field(default=default, metadata={RESULTS: False})


def added(default: Any) -> Any:
    """A field that changes results, added after run folders exist: at ``default`` (which must reproduce
    what the code did before the field existed) it is left out of stage keys and resume recipes, so
    those folders stay up to date; any other value is part of the key like every results field."""
    return field(default=default, metadata={NEUTRAL: default})


def resumable(default: Any = None) -> Any:
    """A config field that changes results but that a resumed run may change (e.g. ``pretrain.max_steps``)."""
    return field(default=default, metadata={RESUMABLE: True})


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config error at {key}: {msg}")


class RawFormat(StrEnum):
    """Raw input formats ingest reads (docs/stages/ingest.md, "Raw input formats"; one reader each in pipeline.io.readers)."""

    folder = "folder"  # image folder + JSONL/CSV index with path and tags columns
    img2dataset = "img2dataset"  # webdataset tars as written by img2dataset
    imagefolder = "imagefolder"  # <root>/<split>/<class>/<image>, ImageNet layout


class Encoding(StrEnum):
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
    # how the data stages run their per-shard work (pipeline.executor: ingest, dedup, vocab): "local" = this process or a
    # pool of data.workers processes; "ray" = Ray tasks, on a local Ray or the cluster at ray.address. Same outputs
    engine: str = runtime("local")
    workers: int = runtime(0)  # processes (local) or CPUs of a local Ray; 0 = the available cores


@dataclass
class RayConfig:
    """Where ``data.engine=ray`` runs (:mod:`pipeline.executor`)."""

    address: Optional[str] = runtime(None)  # None: start a local Ray; "auto": the cluster this node joined; "ray://host:port"
    max_retries: int = runtime(3)  # times a task whose worker died is run again


def validate_data(data: Any) -> None:
    """Checks of ``data.sources``, ``data.eval_sets`` and ``data.engine`` (ConfigError naming the key)."""
    _check(data.engine in ("local", "ray"), "data.engine", f"must be local or ray, got {data.engine!r}")
    _check(data.workers >= 0, "data.workers", "must be >= 0 (0: the available cores)")
    names = [s.name for s in data.sources]
    _check(len(names) == len(set(names)), "data.sources", f"source names must be unique: {names}")
    entries = [(f"data.sources[{i}]", s) for i, s in enumerate(data.sources)]
    entries += [(f"data.eval_sets[{i}]", s) for i, s in enumerate(data.eval_sets)]
    for key, s in entries:
        _check(bool(s.name) and s.name != "???" and ":" not in s.name, f"{key}.name", "must be set, without ':'")
        fmt = RawFormat(s.format)
        if fmt is RawFormat.folder:
            _check(bool(s.index), f"{key}.index", "the folder format needs an index file (JSONL or CSV)")
        if fmt is RawFormat.imagefolder:
            _check(bool(s.split), f"{key}.split", "the imagefolder format needs a split (e.g. train)")
        _check(s.max_samples is None or s.max_samples > 0, f"{key}.max_samples", "must be > 0")


@dataclass
class IngestConfig:
    """Ingest stage: raw input -> canonical WebDataset shards."""

    shard_size: int = 1000  # samples per input unit; one output shard per unit (img2dataset: per input tar)
    max_side: int = 512  # px; the longer side of stored images is capped to this
    min_side: int = 8  # px; images whose shorter side is smaller are quarantined
    # width x height cap of the input (Pillow's default); larger -> quarantined as decompression_bomb
    max_pixels: int = 89_478_485
    max_file_bytes: int = 256 * 1024 * 1024  # larger encoded inputs are quarantined
    encoding: Encoding = Encoding.jpeg  # default re-encoding (per-source override in data.sources)
    jpeg_quality: int = 95
    webp_method: int = 0  # lossless WebP effort 0-6: 0 is ~10x faster than 4 for ~1.6x the bytes (measured on the demo)
    rasterize_svg: bool = True  # rasterize SVG inputs with cairosvg (else quarantine them)
    # per-image hashtag caps, after normalization and dedup (pipeline.text.hashtags, where the figures come from):
    # tags beyond them are dropped and counted in the manifest (counts.hashtags_dropped); an image left
    # with no tag is quarantined as no_hashtags
    max_hashtags: int = 30  # tags kept per image, the first ones (Instagram allows 30 per post)
    max_hashtag_chars: int = 72  # longer tags are dropped, not cut (project choice: the longest WordNet noun lemma has 71)
    # file of sample ids (source:id per line, '#' comments) never to write: quarantined as "withdrawn".
    # Changing it redoes only the units that hold (or held) a listed id. Ids withdrawn after ingest:
    # dedup.withdrawn keeps them out of every later artifact; python -m pipeline.audit checks a run.
    withdrawn: Optional[str] = None
    workers: int = runtime(0)  # processes per rank; 0 = all cores of this machine / local ranks
    merge_timeout_s: float = runtime(3600.0)  # rank 0 waits this long for other ranks' parts
    progress: bool = runtime(True)  # progress on stderr: a live bar on a terminal, else a line every 30 s (pipeline.progress)


def validate_ingest(ing: Any) -> None:
    """Range checks of ``ingest.*`` (ConfigError naming the key)."""
    _check(ing.shard_size > 0, "ingest.shard_size", f"must be > 0, got {ing.shard_size}")
    _check(ing.max_side >= 16, "ingest.max_side", f"must be >= 16 px, got {ing.max_side}")
    _check(1 <= ing.min_side <= ing.max_side, "ingest.min_side", "must be in [1, max_side]")
    _check(ing.max_pixels > 0, "ingest.max_pixels", "must be > 0")
    _check(1 <= ing.jpeg_quality <= 100, "ingest.jpeg_quality", "must be in [1, 100]")
    _check(0 <= ing.webp_method <= 6, "ingest.webp_method", "must be in [0, 6]")
    _check(ing.workers >= 0, "ingest.workers", "must be >= 0 (0 = all cores)")
    _check(ing.max_hashtags >= 1, "ingest.max_hashtags", f"must be >= 1 tag per image, got {ing.max_hashtags}")
    _check(ing.max_hashtag_chars >= 1, "ingest.max_hashtag_chars", f"must be >= 1 character, got {ing.max_hashtag_chars}")


class VocabKind(StrEnum):
    """Which hashtags become classes (Mahajan et al. 2018, section 2.1)."""

    imagenet1k = "imagenet1k"  # synonyms of the 1,000 ImageNet-1k synsets (the paper's "1.5k" set)
    wordnet_nouns = "wordnet_nouns"  # any WordNet noun synset with >= min_count samples (the "17k" set)
    topk = "topk"  # the top_k most frequent WordNet noun synsets (the "8.5k" set)
    raw = "raw"  # normalized hashtags as they are, no WordNet (for comparison)
    target_aligned = "target_aligned"  # synsets under the target's class names (vocab.align_classes; pipeline.text.aligned)
    visual_nouns = "visual_nouns"  # physical-entity synsets, senses chosen from co-occurring hashtags (text.sense_choice)


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
    # probability per hashtag occurrence of being replaced by a random other hashtag of the corpus, before the
    # vocabulary is built, seeded by sample key (pipeline.text.label_noise; the label_noise experiment)
    label_noise: float = added(0.0)
    # kind=target_aligned: a folder whose sub-folders are the target's classes (an ImageFolder split)
    align_classes: str = added("")
    progress: bool = runtime(True)  # tqdm progress bar over samples on stderr
    # also write labels.npz, the whole-corpus view (the report's fallback plot, the audit, notebooks): built in the
    # driver from the shard labels, about 150 bytes a sample while written. Pretraining reads shard_labels/ only:
    # turn it off for corpora of ~10^8 samples and more
    whole_corpus_labels: bool = added(True)


def validate_vocab(vc: Any) -> None:
    """Range checks of ``vocab.*`` (ConfigError naming the key)."""
    _check(vc.min_count >= 1, "vocab.min_count", f"must be >= 1 sample, got {vc.min_count}")
    _check(vc.top_k >= 1, "vocab.top_k", f"must be >= 1 class, got {vc.top_k}")
    _check(0.0 <= vc.label_noise <= 1.0, "vocab.label_noise", f"must be a probability in [0, 1], got {vc.label_noise}")
    _check(VocabKind(vc.kind) is VocabKind.raw or bool(vc.wordnet_dir), "vocab.wordnet_dir", "must be set for WordNet kinds")
    _check(
        VocabKind(vc.kind) is not VocabKind.target_aligned or bool(vc.align_classes),
        "vocab.align_classes",
        "must name the target's class folders for kind=target_aligned (e.g. ${data.cache}/fluent_emoji/subgroup/train)",
    )


@dataclass
class DedupConfig:
    """Dedup stage: exact and near duplicates, eval decontamination, withdrawn ids."""

    near_radius: int = 4  # max Hamming distance between 64-bit pHashes to call two images near duplicates
    hash_size: int = 8  # pHash grid (hash_size^2 bits); 8 -> 64-bit hashes
    near: bool = True  # remove near duplicates inside the pretraining set (keep the first by key)
    eval_radius: int = 4  # Hamming radius for eval contamination
    withdrawn: Optional[str] = None  # file with one withdrawn sample id per line (ids as in shards: source:id)
    workers: int = runtime(0)  # processes of the eval hashing and of data.engine=local (Ray: a local Ray's CPUs); 0 = all cores
    # codes per partition of the near-duplicate search (pipeline.vision.shard_dedup): more codes than this are
    # searched as (radius + 1) * distinct codes / partition_size tasks; the outputs do not depend on it
    partition_size: int = runtime(32_768)
    # write phash.index + index_keys.txt (the survivors' codes as one faiss index, for querying new eval sets later):
    # built in the driver, about 120 bytes a code; false at 10^8 codes and more
    save_index: bool = added(True)
    progress: bool = runtime(True)


def validate_dedup(dd: Any) -> None:
    """Range checks of ``dedup.*`` (ConfigError naming the key)."""
    _check(dd.hash_size in (8, 16), "dedup.hash_size", f"must be 8 or 16 (64- or 256-bit pHash), got {dd.hash_size}")
    _check(0 <= dd.near_radius <= dd.hash_size**2 // 4, "dedup.near_radius", "must be in [0, bits/4]")
    _check(0 <= dd.eval_radius <= dd.hash_size**2 // 4, "dedup.eval_radius", "must be in [0, bits/4]")
    _check(dd.workers >= 0, "dedup.workers", "must be >= 0 (0 = all cores)")
    _check(dd.partition_size >= 1, "dedup.partition_size", f"must be >= 1, got {dd.partition_size}")


class LossKind(StrEnum):
    """Pretraining loss (Mahajan et al. 2018, sec. 3.1 compares the two)."""

    softmax = "softmax"  # cross-entropy against the 1/k soft target (the paper's choice)
    sigmoid = "sigmoid"  # per-class sigmoid + binary cross-entropy


class Resampling(StrEnum):
    """How the Zipfian label distribution is resampled (sec. 2.1; sqrt was best)."""

    natural = "natural"
    sqrt = "sqrt"
    uniform = "uniform"


class Schedule(StrEnum):
    """Learning-rate schedule after warmup."""

    cosine = "cosine"  # cosine decay to final_lr_fraction of the peak
    step = "step"  # x gamma at each milestone (Goyal et al. 2017)


class Precision(StrEnum):
    """Numerics of training and feature extraction (pipeline.train.precision)."""

    auto = "auto"  # the fastest sound choice this device runs natively (a timed trial on the CPU)
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # CUDA only, with a gradient scaler


class Device(StrEnum):
    """Where a stage computes."""

    auto = "auto"  # CUDA when available, else the CPU
    cpu = "cpu"
    cuda = "cuda"


class DecodedCache(StrEnum):
    """Whether pretraining decodes the shards once into a uint8 cache (pipeline.train.decoded_cache)."""

    auto = "auto"  # when it fits in decoded_cache_max_gb
    on = "on"
    off = "off"


@dataclass
class PretrainConfig:
    """Pretraining stage: ResNeXt with multi-label softmax on the shards (DDP)."""

    model: str = "resnext_mini"  # a name from pipeline.train.models.list_models()
    loss: LossKind = LossKind.softmax
    resampling: Resampling = Resampling.sqrt
    image_size: int = 64  # px, random-resized-crop output (224 in the paper)
    batch_size: int = 64  # images per device per micro-batch (24 per GPU in the paper)
    global_batch: Optional[int] = None  # images per optimizer step; None = batch_size x world (no accumulation)
    # the demo: 8 epochs of ~10.3k images: ~10 min on 2 quiet AVX2 cores in fp32 (~5 min with native bf16);
    # 3 epochs: features no better than random init for Fashion-MNIST
    epochs: int = 8
    max_steps: Optional[int] = resumable(None)  # stop after this many optimizer steps (smoke runs, tests)
    base_lr: float = 0.1  # per 256 images (linear scaling rule, Goyal et al. 2017 sec. 2.1)
    reference_batch: int = 256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4  # not applied to BN parameters and biases
    warmup_epochs: float = 1.0  # linear warmup from warmup_start_lr to the scaled lr (Goyal sec. 2.2)
    warmup_start_lr: float = 0.1
    schedule: Schedule = Schedule.cosine
    milestones: List[float] = field(default_factory=lambda: [1 / 3, 2 / 3, 8 / 9])  # step: fractions of training
    gamma: float = 0.1  # step: lr factor at each milestone
    final_lr_fraction: float = 0.0  # cosine: final lr as a fraction of the peak
    # "auto": the fastest sound choice this device runs natively (pipeline.train.precision: CUDA bf16, else fp16 +
    # gradient scaler, else fp32; CPU bf16 only with native support and a timed trial that shows it faster),
    # "fp32", "bf16", "fp16" (CUDA). The resolved choice is recorded in the manifest and kept by a resumed run.
    precision: Precision = Precision.auto
    channels_last: Optional[bool] = None  # NHWC layout; None = auto (CPU: timed trial; CUDA: tensor-core GPUs)
    compile: bool = runtime(False)  # torch.compile the model (inductor; CPU needs gcc); compile time is paid at the first steps
    device: Device = runtime(Device.auto)
    # DataLoader workers per rank (decode + augmentation); None = from the cores (pipeline.system.thread_plan)
    workers: Optional[int] = runtime(None)
    # raise the loader workers' niceness by this much (0-19). None = auto: 19 when training on the CPU from the decoded
    # cache (the workers only crop and normalize, in the gaps the step's threads leave; 0.97x the bare loop instead of
    # 0.89x, AVX2, 2026-12-01), else 0. Set 0 on a machine shared with other jobs, where such workers would starve
    worker_nice: Optional[int] = runtime(None)
    # a decoded uint8 copy of the training images (pipeline.train.decoded_cache), built at the start of the stage and
    # removed at its end; the same batches bit for bit, so not part of the stage key. "auto": when it fits in
    # decoded_cache_max_gb (estimate 1.5 x N x 3 x (2 x image_size)^2 bytes); "on"; "off": decode the shards every epoch
    decoded_cache: DecodedCache = runtime(DecodedCache.auto)
    decoded_cache_max_gb: float = runtime(4.0)
    shuffle_buffer: int = 1000  # samples in each rank's shuffle buffer
    heldout_fraction: float = 0.05  # samples held out (by key hash) for precision@1 and mAP
    # evaluate at most this many of them (0 = all): the ones with the lowest second key hash, the same set on any
    # world size. Rank 0 holds their float32 scores, samples x classes x 4 bytes (1.4 GB at 17k classes); at 10^9
    # samples the 5% held out would be 5 x 10^7. The default leaves every run folder with <= 20,000 held-out samples
    # as it was (the demo has 569); one pretrained before this field with more keeps its eval over all of them
    heldout_eval_max: int = added(20_000)
    # train on this share of the non-held-out samples, chosen by key hash (nested: every sample of 0.25 is in
    # 0.5; the held-out set is the same for every fraction); the data_scale experiment
    data_fraction: float = added(1.0)
    eval_every_steps: int = runtime(0)  # 0 = at the end of each epoch
    checkpoint_every_steps: int = runtime(50)
    keep_checkpoints: int = runtime(3)
    tensorboard: bool = runtime(False)
    progress: bool = runtime(True)
    # torch intra-op threads per rank; 0 = from the available cores (affinity, cgroup, SLURM) / local ranks
    threads: int = runtime(0)
    audit_data: bool = runtime(False)  # gather every rank's sample keys at the end and check they are disjoint (tests, debugging)


def validate_pretrain(pt: Any) -> None:
    """Range checks of ``pretrain.*`` (ConfigError naming the key)."""
    _check(pt.image_size >= 16, "pretrain.image_size", "must be >= 16 px")
    _check(pt.batch_size >= 2, "pretrain.batch_size", "must be >= 2 (BatchNorm needs 2+ images)")
    _check(pt.global_batch is None or pt.global_batch >= pt.batch_size, "pretrain.global_batch", "must be >= batch_size")
    _check(pt.epochs >= 1, "pretrain.epochs", "must be >= 1")
    _check(pt.max_steps is None or pt.max_steps >= 1, "pretrain.max_steps", "must be >= 1")
    _check(0 <= pt.heldout_fraction < 0.5, "pretrain.heldout_fraction", "must be in [0, 0.5)")
    _check(pt.heldout_eval_max >= 0, "pretrain.heldout_eval_max", "must be >= 0 (0: every held-out sample)")
    _check(0 < pt.data_fraction <= 1, "pretrain.data_fraction", f"must be in (0, 1], got {pt.data_fraction}")
    _check(pt.worker_nice is None or 0 <= pt.worker_nice <= 19, "pretrain.worker_nice", "must be null or in 0..19")
    _check(pt.decoded_cache_max_gb >= 0, "pretrain.decoded_cache_max_gb", "must be >= 0")
    _check(
        (pt.workers is None or pt.workers >= 0) and pt.checkpoint_every_steps >= 1 and pt.keep_checkpoints >= 1,
        "pretrain.workers/checkpoint_every_steps/keep_checkpoints",
        "must be >= 0 / >= 1 / >= 1",
    )
    _check(pt.warmup_epochs >= 0 and pt.base_lr > 0, "pretrain.warmup_epochs/base_lr", "must be >= 0 / > 0")


@dataclass
class RunConfig:
    """The main job (``python -m pipeline.run``): which stages, and how."""

    stages: List[str] = field(default_factory=lambda: ["ingest", "dedup", "vocab", "pretrain", "transfer"])
    force: List[str] = field(default_factory=list)  # stages to redo even if their inputs and config are unchanged
    pretrain_nproc: int = 1  # > 1: launch pretraining with torchrun --nproc_per_node=N (DDP) from the main job
    transfer_nproc: int = 1  # > 1: launch the transfer stage with torchrun --nproc_per_node=N from the main job
    report: bool = True  # write <run_dir>/report.md at the end
    shared_dir: Optional[str] = None  # sweeps: run shared_stages once here and link them into each job's run_dir
    shared_stages: List[str] = field(default_factory=lambda: ["ingest", "dedup"])  # stages a sweep's jobs share


class TrackingMode(StrEnum):
    """What codecarbon measures."""

    process = "process"  # this process and its children
    machine = "machine"  # the whole machine


@dataclass
class EnergyConfig:
    """Energy and emissions of each stage (``pipeline.reporting.energy``) and the full-scale projection in the report.

    Each stage gets two numbers side by side: the Patterson et al. 2021 estimate
    (kWh = hours x processors x W x PUE / 1000; tCO2e = kWh x grid / 1000) and codecarbon's
    offline tracker (a measurement where energy counters exist, else codecarbon's own model).
    """

    enabled: bool = True  # pipeline.run measures each stage (records in <run_dir>/run/energy.json); false: no codecarbon
    codecarbon: bool = True  # also run codecarbon's OfflineEmissionsTracker (never online); on failure the estimate alone
    country_iso_code: str = "USA"  # 3-letter ISO code for codecarbon's offline grid table (used when force_grid=false)
    force_grid: bool = True  # make codecarbon use grid_kg_per_kwh too, so the two numbers differ only in energy
    grid_kg_per_kwh: float = 0.429  # kgCO2e per kWh; US average grid (Patterson et al. 2021)
    pue: float = 1.58  # datacenter PUE; 1.58 US average, 1.1 efficient cloud (Patterson et al. 2021)
    # W per busy core (hardware thread): server TDP/thread 2-4 W + memory share; codecarbon's fallback
    cpu_watts_per_core: float = 4.0
    gpu_watts: float = 325.0  # W per GPU, system power per chip: V100 325, P100 271 (Patterson et al. 2021)
    tracking_mode: TrackingMode = TrackingMode.process  # codecarbon's tracking mode
    measure_power_secs: float = 5.0  # codecarbon's power sampling interval
    log_level: str = "warning"  # codecarbon's logger level (its INFO lines are noise)
    projection_model: str = "resnext101_32x16d"  # report: model of the full-scale projection (ResNeXt-101 32xCd)
    projection_images: float = 3.5e9  # report: images in the full-scale dataset (Mahajan et al. 2018: 3.5B)
    projection_epochs: float = 1.0  # report: passes over projection_images
    projection_gpus: List[int] = field(default_factory=lambda: [8, 64, 336])  # report: GPU counts (paper: 336)
    scaling_efficiency: Optional[float] = None  # report: fixed efficiency in (0, 1]; None = Goyal et al. (~90% at 256)


def validate_energy(ec: Any) -> None:
    """Range checks of ``energy.*`` (ConfigError naming the key)."""
    _check(1.0 <= ec.pue <= 3.0, "energy.pue", f"must be in [1, 3] (1.1 efficient cloud, 1.58 US average), got {ec.pue}")
    _check(0 <= ec.grid_kg_per_kwh <= 2.0, "energy.grid_kg_per_kwh", f"must be in [0, 2] kgCO2e/kWh, got {ec.grid_kg_per_kwh}")
    _check(0 < ec.cpu_watts_per_core <= 100, "energy.cpu_watts_per_core", f"must be in (0, 100] W, got {ec.cpu_watts_per_core}")
    _check(0 < ec.gpu_watts <= 2000, "energy.gpu_watts", f"must be in (0, 2000] W, got {ec.gpu_watts}")
    _check(ec.measure_power_secs > 0, "energy.measure_power_secs", "must be > 0")
    _check(
        str(ec.log_level).lower() in ("debug", "info", "warning", "error", "critical"),
        "energy.log_level",
        "must be debug, info, warning, error or critical",
    )
    _check(
        len(ec.country_iso_code) == 3 and ec.country_iso_code.isalpha(),
        "energy.country_iso_code",
        f"must be a 3-letter ISO code, got {ec.country_iso_code!r}",
    )
    _check(ec.projection_images > 0 and ec.projection_epochs > 0, "energy.projection_images/projection_epochs", "must be > 0")
    _check(
        len(ec.projection_gpus) > 0 and all(g >= 1 for g in ec.projection_gpus),
        "energy.projection_gpus",
        "must be a non-empty list of GPU counts >= 1",
    )
    _check(
        ec.scaling_efficiency is None or 0 < ec.scaling_efficiency <= 1, "energy.scaling_efficiency", "must be in (0, 1] or null"
    )


@dataclass
class TransferTargetConfig:
    """One target of the transfer suite: ``transfer.targets.<name>`` (``conf/transfer/target/<name>.yaml``).

    ``root``, the splits and ``emoji_index`` describe the folder; every other field, when set,
    overrides the recipe key of the same name in ``transfer`` for this target only. Unset
    (``???`` in ``--cfg job``) = ``transfer.<key>``; ``null`` is a value (e.g. no cap).
    """

    root: str = MISSING  # folder with <train_split>/<class>/<img> and <val_split>/<class>/<img>
    train_split: str = "train"  # subfolder of root with the labelled training images
    val_split: str = "val"  # subfolder of root the accuracies are measured on
    # JSONL of the target's emoji (emoji.jsonl of data_tools.fluent_target: hexcode, files "<style>/<stem>"):
    # the feature-space decontamination then takes pretraining images of the same emoji (sample id = hexcode)
    # as the known non-copies; null = random pretraining images
    emoji_index: Optional[str] = None
    # per-target overrides of the recipe (see TransferConfig for what each does)
    low_data_per_class: List[int] = MISSING
    full: bool = MISSING
    max_train_per_class: Optional[int] = MISSING
    max_val_images: Optional[int] = MISSING
    probe_Cs: List[float] = MISSING
    probe_holdout_fraction: float = MISSING
    probe_seeds: int = MISSING
    finetune_epochs: int = MISSING
    finetune_seeds: int = MISSING
    finetune_head_init: str = added(MISSING)  # unset: left out of stage keys (run folders of before it stay current)
    finetune_head_stages: Optional[List[str]] = added(MISSING)
    min_epoch_images: int = MISSING
    batch_size: int = MISSING
    device_batch: Optional[int] = MISSING
    label_smoothing: float = MISSING
    ema_decay: Optional[float] = MISSING
    test_image_size: Optional[int] = MISSING
    crop_min_scale: float = MISSING
    base_lr: float = MISSING
    finetune_lr_grid: List[float] = MISSING
    lr_select_setting: str = MISSING
    lr_select_epochs: int = MISSING
    lr_select_max_images: Optional[int] = MISSING
    warmup_epochs: float = MISSING
    eval_every_epoch: bool = MISSING
    eval_cache_mb: float = MISSING


_TARGET_FOLDER_KEYS = ("root", "train_split", "val_split", "emoji_index")
FINETUNE_HEAD_INITS = ("random", "probe")  # transfer.finetune_head_init
# TransferConfig keys a target may override: the fields of TransferTargetConfig after its folder keys
TARGET_RECIPE_KEYS = tuple(f.name for f in fields(TransferTargetConfig) if f.name not in _TARGET_FOLDER_KEYS)


class TransferMethod(StrEnum):
    """How a pretrained trunk is transferred (Mahajan et al. 2018, sec. 3)."""

    linear_probe = "linear_probe"  # logistic regression on frozen pooled features
    finetune = "finetune"  # the whole network trained on the target


class ProbeSolver(StrEnum):
    """How the linear probe's logistic regression is solved (pipeline.evaluation.probe_solver; the same objective)."""

    auto = "auto"  # L-BFGS when the features fit transfer.probe_memory_mb on the device, else sgd
    lbfgs = "lbfgs"  # full-batch L-BFGS on the device, to scikit-learn's tolerance (probe_tol, probe_max_iter)
    sgd = "sgd"  # minibatch Adam over the feature rows (in RAM or a memory-mapped file), seeded epochs


class TransferInit(StrEnum):
    """The trunk a transfer run starts from."""

    pretrained = "pretrained"  # <run_dir>/pretrain/trunk.safetensors
    scratch = "scratch"  # the same model, random init


@dataclass
class TransferConfig:
    """Transfer stage: a suite of labelled targets (ImageNet folder layout), each with a linear probe and
    full fine-tuning, pretrained vs scratch, low-data and full (``pipeline.transfer``).

    ``targets`` is filled by the ``transfer/target`` config group (``conf/config.yaml`` selects
    ``[fluent_emoji_subgroup, blob_emoji_subgroup, fashion_mnist]``; ``'transfer/target=[fashion_mnist]'`` picks one,
    ``+transfer=imagenet1k`` switches to ImageNet-1k). The other keys are the recipe every target
    shares unless it overrides a key. Defaults fit the demo's budget: the three targets in 16.0 minutes on 2 AVX512
    CPU cores at 64 px (fresh-clone demo of 2026-12-08; docs/stages/transfer.md, "Measured figures").
    """

    targets: Dict[str, TransferTargetConfig] = field(default_factory=dict)  # name -> target (run in name order of the defaults)
    image_size: Optional[int] = None  # px; None = the pretraining image size (<run_dir>/pretrain/model.json)
    methods: List[TransferMethod] = field(default_factory=lambda: [TransferMethod.linear_probe, TransferMethod.finetune])
    inits: List[TransferInit] = field(default_factory=lambda: [TransferInit.pretrained, TransferInit.scratch])
    low_data_per_class: List[int] = field(default_factory=lambda: [10])  # labelled images per class of the low-data settings
    full: bool = True  # also the "full" setting: all training images, at most max_train_per_class per class
    max_train_per_class: Optional[int] = 200  # cap of the full setting (None = all)
    # a stratified seeded subset of this many val images (None = all), the same for every run
    max_val_images: Optional[int] = 2000
    probe_Cs: List[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0])  # inverse L2 strengths tried by the probe
    probe_holdout_fraction: float = 0.2  # share of each class held out from the training images to choose C
    probe_max_iter: int = 500  # L-BFGS iterations per logistic-regression fit
    probe_tol: float = 1e-3  # L-BFGS stopping tolerance (1e-4: 2-3x the time, top-1 within 0.3 points on the demo)
    probe_solver: ProbeSolver = added(ProbeSolver.auto)  # the probe's solver (torch; scikit-learn's objective)
    probe_memory_mb: Optional[float] = runtime(None)  # MiB the L-BFGS probe may hold on the device (None: half the free)
    # low-data settings: seeded draws of the labelled subset for the probe (the full setting: 1). The seed spread
    # dominates the interval at 5/class: on the demo's emoji target pretrained minus random was +2.6 [-4.5, +9.7]
    # points with 3 draws, +2.7 [+1.3, +4.1] with 10 (AVX2, 2026-12-01); each draw costs ~4 s there
    probe_seeds: int = 10
    # residual stages whose globally pooled outputs, concatenated, are the probe's features (Goyal et al. 2019 probe
    # each stage); ["layer4"] = the penultimate layer only. On the demo's emoji target at 5/class (3 seeds, AVX2,
    # 2026-12-01) pretrained minus random: layer4 +2.2 points, layer3 +4.9, layer2-4 +3.5 (and +2.3 at 40/class)
    probe_stages: List[str] = field(default_factory=lambda: ["layer2", "layer3", "layer4"])
    # epochs of every fine-tuning run (pretrained and scratch alike). On the demo's emoji target (LP-FT head on layer2-4,
    # 3 seeds, AVX512, 2026-12-08) pretrained top-1 at 5/class and full: 4 epochs lr 0.003 20.5% / 30.9%, 8 epochs lr
    # 0.01 22.3% / 31.2%, lr 0.03 22.7% / 32.1% (the probe: 20.2% / 30.2%); 2 epochs of a random head: 11.9% / 20.5%
    finetune_epochs: int = 4
    finetune_seeds: int = 3  # low-data settings: seeded draws (subset, head, augmentation) per fine-tuning init
    # the new classifier fine-tuning starts from: "random" (N(0, 0.01^2)) or "probe" (LP-FT, Kumar et al. 2022: BatchNorm
    # statistics of the run's training images, then a linear probe on the frozen features the head reads, see
    # finetune_head_stages; pipeline.evaluation.head_init), for both inits and the lr selection's runs alike
    finetune_head_init: str = "probe"
    # the residual stages whose pooled outputs, concatenated, the fine-tuned classifier reads: null = the penultimate
    # layer (layer4), as torchvision's and timm's heads; a list such as the probe's [layer2, layer3, layer4] gives the
    # fine-tuned network the probe's features, so LP-FT starts from the probe itself (pipeline.train.models.ResNeXt)
    finetune_head_stages: Optional[List[str]] = field(default_factory=lambda: ["layer2", "layer3", "layer4"])
    min_epoch_images: int = 1000  # an epoch is at least this many images (low-data sets are passed over repeatedly)
    batch_size: int = 64  # fine-tuning images per optimizer step, over all ranks (the global batch; lr scaled by it)
    # images per forward pass on one rank (BatchNorm's batch): a step's batch is cut into micro-batches of this many,
    # dealt round-robin to the ranks, gradients accumulated (pipeline.evaluation.finetune). null: batch_size / world
    # size (one forward per rank and step). Set it and a run's results do not depend on the world size beyond
    # floating point; batch_size must be a multiple of device_batch x world size
    device_batch: Optional[int] = added(None)
    # the ImageNet fine-tuning recipe's options (conf/transfer/target/imagenet1k.yaml sets them; the demo keeps them off):
    label_smoothing: float = added(0.0)  # fine-tuning cross-entropy with smoothed targets (Szegedy et al. 2016, sec. 7)
    # an exponential moving average of the fine-tuned weights and buffers (torch.optim.swa_utils.AveragedModel with
    # get_ema_multi_avg_fn), updated every optimizer step and scored beside the raw weights (ema_top1/ema_top5 rows);
    # null: none. timm's ImageNet recipes use 0.9998-0.9999 per step
    ema_decay: Optional[float] = added(None)
    # px of the val images fine-tuning is scored on (resize to size/0.875, centre crop); null: the training size.
    # Touvron et al. 2019 (FixRes): testing above the train resolution fixes the apparent object size that
    # random-resized crops enlarge (224 train -> 288-320 test). The linear probe keeps the training size
    test_image_size: Optional[int] = added(None)
    # activation checkpointing per residual block while fine-tuning (pipeline.train.models.ResNeXt.set_grad_checkpointing):
    # the same gradients for about a third more compute, ~6-10x less activation memory (docs/scaling.md)
    activation_checkpointing: bool = runtime(False)
    crop_min_scale: float = 0.35  # random-resized crop area range [this, 1]; ImageNet uses 0.08, too small for 28 px clothes
    eval_batch_size: int = 256  # images per forward pass for features and val accuracy
    base_lr: float = 0.03  # fine-tuning lr per reference_batch images when finetune_lr_grid has < 2 values
    # fine-tuning lrs (per reference_batch) tried on a stratified held-out part of the training images of the
    # lr_select_setting setting (pretrained init, lr_select_epochs short runs), once per target; never on val
    finetune_lr_grid: List[float] = field(default_factory=lambda: [0.01, 0.03])
    lr_select_setting: str = "largest"  # whose training images are split: "largest" (the full setting if on, else the
    # largest low-data one), "full", or a low_data_per_class value such as "10"
    lr_select_holdout_fraction: float = 0.2  # share of each class of that setting held out to score each lr
    # epochs of each selection run: the fine-tuning budget, so the lr is chosen for the runs it serves (with 2 epochs
    # where the runs had 4-8, the selection picked the lowest lr of [0.003, 0.01, 0.03] and val preferred the highest)
    lr_select_epochs: int = 4
    lr_select_max_images: Optional[int] = 1000  # images per selection epoch at most (None = the whole fit part)
    reference_batch: int = 256  # images the base_lr refers to (Goyal et al. 2017: lr = base_lr x batch / 256)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # Nesterov momentum (as in pretraining, Mahajan et al. 2018)
    weight_decay: float = 1e-4  # not applied to BN parameters and biases
    warmup_epochs: float = 0.5  # linear warmup over this many epochs, then cosine decay to 0
    warmup_start_fraction: float = 0.1  # warmup starts at this fraction of the peak lr
    eval_every_epoch: bool = False  # score val after every fine-tuning epoch (false: after the last one only)
    n_boot: int = 1000  # bootstrap resamples of the val images for every 95% interval
    ci_level: float = 0.95  # coverage of the intervals
    # feature-space decontamination (Mahajan et al. 2018): max cosine similarity of each val image to the
    # pretraining images in the pretrained trunk's pooled features (faiss IndexFlatIP, L2-normalized)
    nn_decontam: bool = True
    nn_center: bool = False  # centre the features on the pretraining images' mean before L2 normalization (measured: no better)
    nn_known_copies: int = 200  # val images (seeded sample) made into known copies: JPEG, resized, padded, cropped
    nn_copy_quantile: float = 0.01  # threshold = this quantile of the known copies' similarities
    nn_threshold: Optional[float] = None  # a fixed threshold instead of the calibrated one
    nn_non_copies: int = 500  # known non-copy pairs scored (same emoji by another vendor, else random images)
    # the search over the pretraining images' features (each rank its part, pipeline.evaluation.nn_bank): a faiss
    # index_factory string (inner product). "Flat": exact, each rank scans its memory-mapped part a chunk at a time
    # (memory: one chunk); "IVF4096,Flat" / "HNSW32": an index in memory, 4 x D bytes per image of the part, faster
    # search (recall@1 99.8% / 99.4% of Flat's on the demo); "IVF65536,PQ64": 64 bytes per image, approximate
    # similarities, recall@1 26% on the demo (docs/stages/transfer.md)
    nn_index: str = added("Flat")
    nn_nprobe: int = added(32)  # inverted lists visited per query by an IVF index
    # as pretrain.precision: "auto" (pipeline.train.precision policy), "fp32", "bf16", "fp16" (CUDA)
    precision: Precision = Precision.auto
    channels_last: Optional[bool] = None  # NHWC memory layout; None = auto (as pretrain.channels_last)
    device: Device = runtime(Device.auto)
    workers: Optional[int] = runtime(None)  # DataLoader worker processes (decode + augmentation); None = from the cores
    # torch intra-op threads; 0 = the available cores (on a busy machine 1 is several times faster: no waiting on a descheduled
    # thread)
    threads: int = runtime(0)
    eval_cache_mb: float = 1024.0  # keep eval-preprocessed images in memory up to this size (decoded once, not per epoch)
    progress: bool = runtime(True)  # tqdm progress bars on stderr
    # a fine-tuning checkpoint every this many optimizer steps inside an epoch, besides each epoch's end (0: epoch ends
    # only); a killed stage resumes from it (pipeline.evaluation.resume). ImageNet at batch 256: ~5,000 steps per epoch
    checkpoint_every_steps: int = runtime(1000)


def _is_unset(node: Any, key: str) -> bool:
    if OmegaConf.is_config(node):
        return OmegaConf.is_missing(node, key)
    return getattr(node, key, MISSING) == MISSING if not isinstance(node, dict) else node.get(key, MISSING) == MISSING


def transfer_recipe(tc: Any, name: str) -> dict:
    """The effective recipe of target ``name``: ``transfer.<key>`` with the target's overrides applied.

    Returns a plain dict of every ``TransferConfig`` key but ``targets``, plus ``name``,
    ``root``, ``train_split``, ``val_split``, ``emoji_index`` and ``overridden`` (the keys the
    target sets).
    """
    t = tc.targets[name]
    base = to_container(tc) if OmegaConf.is_config(tc) else dict(vars(tc))
    out = {k: v for k, v in base.items() if k != "targets"}
    overridden = []
    for k in TARGET_RECIPE_KEYS:
        if not _is_unset(t, k):
            v = t[k] if OmegaConf.is_config(t) else getattr(t, k)
            out[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            overridden.append(k)
    for k in _TARGET_FOLDER_KEYS:
        out[k] = None if _is_unset(t, k) else (t[k] if OmegaConf.is_config(t) else getattr(t, k))
    out["name"], out["overridden"] = name, overridden
    return out


def validate_transfer(tc: Any) -> None:
    """Range checks of ``transfer.*`` and of every target's effective recipe (ConfigError naming the key)."""
    _check(
        len(tc.methods) > 0 and len(set(tc.methods)) == len(tc.methods),
        "transfer.methods",
        f"must be a non-empty list of distinct methods, got {[str(m) for m in tc.methods]}",
    )
    _check(
        len(tc.inits) > 0 and len(set(tc.inits)) == len(tc.inits),
        "transfer.inits",
        f"must be a non-empty list of distinct inits, got {[str(i) for i in tc.inits]}",
    )
    _check(
        len(tc.targets) > 0,
        "transfer.targets",
        "no target selected (conf/transfer/target/*.yaml; e.g. 'transfer/target=[fashion_mnist]')",
    )
    _check(tc.image_size is None or tc.image_size >= 16, "transfer.image_size", "must be >= 16 px")
    _check(tc.probe_max_iter >= 1 and tc.probe_tol > 0, "transfer.probe_max_iter/probe_tol", "must be >= 1 / > 0")
    _check(tc.probe_memory_mb is None or tc.probe_memory_mb > 0, "transfer.probe_memory_mb", "must be > 0 MiB or null")
    _check(
        bool(tc.probe_stages)
        and set(tc.probe_stages) <= {"layer1", "layer2", "layer3", "layer4"}
        and len(set(tc.probe_stages)) == len(tc.probe_stages),
        "transfer.probe_stages",
        f"must be a non-empty list of distinct stages from layer1..layer4, got {list(tc.probe_stages)}",
    )
    _check(tc.eval_batch_size >= 1, "transfer.eval_batch_size", "must be >= 1")
    _check(0 < tc.lr_select_holdout_fraction < 1, "transfer.lr_select_holdout_fraction", "must be in (0, 1)")
    _check(
        tc.reference_batch > 0 and 0 < tc.warmup_start_fraction <= 1,
        "transfer.reference_batch/warmup_start_fraction",
        "must be > 0 / in (0, 1]",
    )
    _check(tc.n_boot >= 100, "transfer.n_boot", f"must be >= 100 bootstrap resamples, got {tc.n_boot}")
    _check(0.5 <= tc.ci_level < 1, "transfer.ci_level", f"must be in [0.5, 1), got {tc.ci_level}")
    _check(bool(str(tc.nn_index).strip()) and tc.nn_nprobe >= 1, "transfer.nn_index/nn_nprobe", "must be a faiss spec / >= 1")
    _check(tc.nn_known_copies >= 1 and tc.nn_non_copies >= 1, "transfer.nn_known_copies/nn_non_copies", "must be >= 1")
    _check(0 <= tc.nn_copy_quantile < 0.5, "transfer.nn_copy_quantile", "must be in [0, 0.5)")
    _check(tc.nn_threshold is None or -1 <= tc.nn_threshold <= 1, "transfer.nn_threshold", "must be a cosine in [-1, 1] or null")
    _check((tc.workers is None or tc.workers >= 0) and tc.threads >= 0, "transfer.workers/threads", "must be >= 0")
    _check(tc.checkpoint_every_steps >= 0, "transfer.checkpoint_every_steps", "must be >= 0 (0: at epoch ends only)")
    for name in tc.targets:
        _check(
            bool(name) and all(c.isalnum() or c in "_-." for c in str(name)),
            f"transfer.targets.{name}",
            "target names may hold letters, digits, '_', '-' and '.' only",
        )
        r = transfer_recipe(tc, name)

        def key(k: str, name: str = name, r: dict = r) -> str:
            return f"transfer.targets.{name}.{k}" if k in r["overridden"] else f"transfer.{k}"

        _check(bool(r["root"]), f"transfer.targets.{name}.root", "must be set (the folder with the train and val splits)")
        _check(
            bool(r["train_split"]) and bool(r["val_split"]) and r["train_split"] != r["val_split"],
            f"transfer.targets.{name}.train_split",
            "train_split and val_split must be set and differ",
        )
        _check(all(int(k) >= 1 for k in r["low_data_per_class"]), key("low_data_per_class"), "must be >= 1 image per class")
        _check(bool(r["full"]) or len(r["low_data_per_class"]) > 0, key("full"), "no data setting left (full=false, no low-data)")
        _check(r["max_train_per_class"] is None or r["max_train_per_class"] >= 2, key("max_train_per_class"), "must be >= 2")
        _check(r["max_val_images"] is None or r["max_val_images"] >= 1, key("max_val_images"), "must be >= 1")
        _check(len(r["probe_Cs"]) > 0 and all(c > 0 for c in r["probe_Cs"]), key("probe_Cs"), "must be a non-empty list of C > 0")
        _check(0 < r["probe_holdout_fraction"] < 1, key("probe_holdout_fraction"), "must be in (0, 1)")
        _check(
            r["probe_seeds"] >= 1 and r["finetune_seeds"] >= 1,
            key("probe_seeds" if r["probe_seeds"] < 1 else "finetune_seeds"),
            "must be >= 1 seed",
        )
        _check(r["finetune_epochs"] >= 1, key("finetune_epochs"), "must be >= 1")
        hs = r["finetune_head_stages"]
        _check(
            hs is None or (bool(hs) and set(hs) <= {"layer1", "layer2", "layer3", "layer4"} and len(set(hs)) == len(hs)),
            key("finetune_head_stages"),
            f"must be null or a non-empty list of distinct stages from layer1..layer4, got {hs}",
        )
        _check(
            r["finetune_head_init"] in FINETUNE_HEAD_INITS,
            key("finetune_head_init"),
            f"must be one of {list(FINETUNE_HEAD_INITS)}, got {r['finetune_head_init']!r}",
        )
        _check(r["min_epoch_images"] >= 0, key("min_epoch_images"), "must be >= 0")
        _check(r["batch_size"] >= 2, key("batch_size"), "must be >= 2 (BatchNorm needs 2+ images)")
        _check(0 <= r["label_smoothing"] < 1, key("label_smoothing"), "must be in [0, 1)")
        _check(r["ema_decay"] is None or 0 < r["ema_decay"] < 1, key("ema_decay"), "must be in (0, 1) or null")
        _check(r["test_image_size"] is None or r["test_image_size"] >= 16, key("test_image_size"), "must be >= 16 px or null")
        _check(
            r["device_batch"] is None or 2 <= r["device_batch"] <= r["batch_size"],
            key("device_batch"),
            "must be null or in [2, batch_size] (BatchNorm needs 2+ images per forward pass)",
        )
        _check(0 < r["crop_min_scale"] <= 1, key("crop_min_scale"), "must be in (0, 1]")
        _check(r["base_lr"] > 0, key("base_lr"), "must be > 0")
        _check(all(lr > 0 for lr in r["finetune_lr_grid"]), key("finetune_lr_grid"), "must hold learning rates > 0 (or be empty)")
        sel = str(r["lr_select_setting"])
        _check(
            sel == "largest"
            or sel == "full"
            and r["full"]
            or sel.isdigit()
            and int(sel) in [int(k) for k in r["low_data_per_class"]],
            key("lr_select_setting"),
            f"must be 'largest', 'full' (with full=true) or one of low_data_per_class, got {sel!r}",
        )
        _check(r["lr_select_epochs"] >= 1, key("lr_select_epochs"), "must be >= 1")
        _check(r["lr_select_max_images"] is None or r["lr_select_max_images"] >= 2, key("lr_select_max_images"), "must be >= 2")
        _check(r["warmup_epochs"] >= 0, key("warmup_epochs"), "must be >= 0")
        _check(r["eval_cache_mb"] >= 0, key("eval_cache_mb"), "must be >= 0")


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
    transfer: TransferConfig = field(default_factory=TransferConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def register() -> None:
    """Store the schema in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name="schema", node=PipelineConfig)


register()


def validate(cfg: Any) -> None:
    """Range and consistency checks that types cannot express, section by section (each section's checks
    follow its dataclass above).

    Raises:
        ConfigError: naming the first offending key.
    """
    validate_data(cfg.data)
    validate_ingest(cfg.ingest)
    validate_dedup(cfg.dedup)
    validate_vocab(cfg.vocab)
    validate_pretrain(cfg.pretrain)
    validate_transfer(cfg.transfer)
    if getattr(cfg, "energy", None) is not None:
        validate_energy(cfg.energy)


def to_container(cfg: Any) -> dict:
    """The resolved config as plain JSON-able data (enums as their values)."""
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
    return cfg
