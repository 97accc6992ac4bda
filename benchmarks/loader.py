"""Training loader throughput, images/s: decode + random-resized crop + flip + normalize, in batches.

* **ours**: the pretraining loader, :class:`pipeline.train.loader.ShardStream` +
  :func:`pipeline.train.loader.make_loader` (2 workers, batch 64, 64 px, the train transform),
  over the demo shards, normalizing in the workers (``normalize_in_workers=True``, as
  ``pipeline.pretrain`` does on a CPU device). One epoch from ``iter()`` to the last
  batch, worker start-up included.
* **anchor (a)**, the per-core decode limit: a tight one-process loop on one torch thread over the
  same image bytes held in memory (PIL open, convert to RGB, torchvision's random-resized-crop box,
  resize, flip, to a uint8 tensor, stack 64, normalize), times the number of workers.
* **anchor (b)**: torchvision ``ImageFolder`` + ``DataLoader`` (2 workers, batch 64,
  shuffle) on the same images written as files, with the transforms users write
  (``RandomResizedCrop(64)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize``).

Images: every second shard of the demo run (all sources; ``--opt stride=1`` for all), the
first shard of each source with ``--quick``. Each side's CPU seconds per image (all its
processes) are recorded too: they depend much less on other load than images/s.

Goals: ours >= 0.85 x (a) and >= 1.0 x (b). Reps are interleaved (ours, a, b, ours, ...).
``details`` also gives the rate of ours without decoding (shard index + reading each item's
bytes by offset), to separate the two costs.
"""

from __future__ import annotations

import io
import random

from benchmarks.common import Context, Timer, log, main, median, read_images, result, select_shards, write_image_files
from pipeline.vision.transforms import rrc_box  # the same crop sampling as ours: the anchor differs only in the data path

WORKERS = 2
BATCH = 64
SIZE = 64


def _index_for(shards):
    """A SampleIndex of every sample of ``shards``: one class each, weight 1 (each seen once)."""
    import numpy as np

    from pipeline.io.shards import ShardReader
    from pipeline.train.epoch_plan import SampleIndex

    keys = set()
    for p in shards:
        with ShardReader(p) as reader:
            keys.update(reader.keys)
    keys = np.array(sorted(keys))
    n = len(keys)
    return SampleIndex(keys, np.arange(n + 1, dtype=np.int64), np.zeros(n, dtype=np.int64), np.ones(n))


def _stream(shards, index, workers: int = WORKERS):
    from pipeline.train.loader import ShardStream

    st = ShardStream(
        {int(p.stem): p for p in shards},
        index,
        seed=0,
        rank=0,
        world=1,
        batch_size=BATCH,
        image_size=SIZE,
        train=True,
        shuffle_buffer=1000,
        normalize_in_workers=True,
    )
    st.set_epoch(0)
    return st


def run_ours(shards, index, workers: int = WORKERS) -> tuple[int, Timer]:
    """One epoch of the pipeline's loader: (images, timer)."""
    from pipeline.train.loader import make_loader
    from pipeline.vision.transforms import normalize

    stream = _stream(shards, index, workers)
    n = 0
    with Timer() as t:
        for batch in make_loader(stream, workers):
            x = normalize(batch["images"])
            n += x.shape[0]
    return n, t


def run_tar_only(shards, index) -> tuple[int, Timer]:
    """Ours without decoding, one process: reading the shard indexes (cache cleared first) and
    every planned item's image bytes by offset, in batch order."""
    from pipeline.io.shards import _image_offsets
    from pipeline.seeding import item_seed
    from pipeline.train.loader import MemberReader, shuffle_order

    _image_offsets.cache_clear()
    n = 0
    with Timer() as t:
        stream = _stream(shards, index)  # set_epoch scans the shards' headers
        rows = stream.plan.rank_items(0)[0]
        with MemberReader(stream.shards) as reader:
            order = shuffle_order(len(rows), random.Random(item_seed("buffer", 0, 0, 0)), stream.shuffle_buffer)
            for r in rows[order]:
                reader.read(int(index.shard_of[r]), int(stream._row_offset[r]), int(stream._row_size[r]))
                n += 1
    return n, t


def run_decode_limit(blobs: list[bytes]) -> tuple[int, Timer]:
    """Anchor (a): one process, images in memory, the same decode + augment + normalize, on one torch
    thread as each DataLoader worker runs (torch sets 1 thread in its workers): a per-core rate. Until
    2026-12-07 it ran on the process's 2 threads, so its stack + normalize used a second core and the
    rate x workers overstated the limit (its CPU time exceeded its wall time)."""
    import warnings

    import numpy as np
    import torch
    from PIL import Image

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # read only, stacked (copied)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    rng = random.Random(0)
    n = 0
    batch = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with Timer() as t:
        for b in blobs:
            img = Image.open(io.BytesIO(b))
            if img.format == "JPEG":
                img.draft("RGB", (2 * SIZE, 2 * SIZE))
            img = img.convert("RGB")
            out = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=rrc_box(img.width, img.height, rng))
            if rng.random() < 0.5:
                out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            batch.append(torch.from_numpy(np.asarray(out)).permute(2, 0, 1))
            if len(batch) == BATCH:
                x = (torch.stack(batch).float().div_(255) - mean) / std
                n += x.shape[0]
                batch = []
        if batch:
            x = (torch.stack(batch).float().div_(255) - mean) / std
            n += x.shape[0]
    torch.set_num_threads(threads)
    return n, t


def run_pipeline_transform_one_process(blobs: list[bytes], size: int) -> tuple[int, Timer]:
    """The pipeline's own decode + train transform in one process at ``size`` px (no tar, no workers)."""
    from pipeline.vision.transforms import decode, train_transform

    rng = random.Random(0)
    with Timer() as t:
        for b in blobs:
            train_transform(decode(b, size), size, rng)
    return len(blobs), t


def run_imagefolder(root) -> tuple[int, Timer]:
    """Anchor (b): torchvision ImageFolder + DataLoader, the transforms users write."""
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(SIZE),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    ds = datasets.ImageFolder(str(root), transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS)
    n = 0
    with Timer() as t:
        for x, _ in dl:
            n += x.shape[0]
    return n, t


def run(ctx: Context) -> list[dict]:
    shards = select_shards(ctx, stride=2)  # every second shard: all sources, half the time (--opt stride=1: all)
    images = read_images(shards)
    blobs = [b for _, _, b in images]
    index = _index_for(shards)
    log(f"loader: {len(blobs)} images in {len(shards)} shards, {ctx.reps} reps")
    root = None if ctx.ours_only else write_image_files(ctx, shards)
    runs: dict[str, list] = {"ours": [], "limit": [], "folder": [], "tar": []}

    def rec(kind: str, n: int, t: Timer) -> None:
        runs[kind].append({"per_second": n / t.seconds, "cpu_ms_per_image": 1000 * t.cpu / n, "images": n, "seconds": t.seconds})
        log(f"loader rep {len(runs[kind]) - 1}: {kind} {n / t.seconds:,.0f} img/s, {1000 * t.cpu / n:.2f} CPU ms/image")

    for _ in range(ctx.reps):
        rec("ours", *run_ours(shards, index))
        if ctx.ours_only:
            continue
        rec("limit", *run_decode_limit(blobs))
        rec("folder", *run_imagefolder(root))
        rec("tar", *run_tar_only(shards, index))
    n224 = t224 = None
    if not ctx.ours_only:
        n224, t224 = run_pipeline_transform_one_process(blobs[::4], 224)  # every 4th image: a per-core rate
        log(f"loader: pipeline decode + train transform at 224 px, one process: {n224 / t224.seconds:,.0f} img/s")

    def med(kind: str, key: str = "per_second"):
        return median(r[key] for r in runs[kind])

    o = med("ours")
    a = med("limit") * WORKERS if runs["limit"] else None
    b = med("folder")
    cpu = {k: med(k, "cpu_ms_per_image") for k in runs if runs[k]}
    common = {
        "images": len(blobs),
        "shards": [p.name for p in shards],
        "workers": WORKERS,
        "batch": BATCH,
        "image_size": SIZE,
        "ours_per_rep": [r["per_second"] for r in runs["ours"]],
        "ours_per_worker_wall": o / WORKERS if o else None,
        # images per CPU-second over all of the loader's processes: the per-core rate, robust to other load
        "ours_per_core": 1000 / cpu["ours"] if cpu.get("ours") else None,
        "ours_per_core_224_one_process": n224 / t224.cpu if t224 is not None and t224.cpu > 0 else None,
        "cpu_ms_per_image": cpu,
    }
    title = f"training loader ({WORKERS} workers, batch {BATCH}, {SIZE} px: decode + RRC + flip + normalize)"
    cpu_ratio = lambda k: cpu[k] / cpu["ours"] if k in cpu and cpu.get("ours") else None
    return [
        result(
            "loader_vs_decode_limit",
            ours=o,
            anchor=a,
            unit="images/s",
            goal="ours >= 0.85 x anchor",
            met=None if a is None else o >= 0.85 * a,
            title=title,
            ours_is="ShardStream + make_loader, normalized in the workers (as on a CPU device)",
            anchor_is=f"one-process PIL decode+augment loop on the same bytes in memory, x {WORKERS} workers",
            details={
                **common,
                "anchor_per_core_per_rep": [r["per_second"] for r in runs["limit"]],
                "cpu_efficiency_vs_anchor": cpu_ratio("limit"),
                "scan_and_read_per_second": med("tar") if runs["tar"] else None,
            },
        ),
        result(
            "loader_vs_imagefolder",
            ours=o,
            anchor=b,
            unit="images/s",
            goal="ours >= 1.0 x anchor",
            met=None if b is None else o >= b,
            title=title,
            ours_is="ShardStream + make_loader, normalized in the workers (as on a CPU device)",
            anchor_is=f"torchvision ImageFolder + DataLoader ({WORKERS} workers) on the same images as files",
            details={
                **common,
                "anchor_per_rep": [r["per_second"] for r in runs["folder"]],
                "cpu_efficiency_vs_anchor": cpu_ratio("folder"),
            },
        ),
    ]


if __name__ == "__main__":
    main(run)
