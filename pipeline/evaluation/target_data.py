"""The labelled target set of the transfer stage, in the ImageNet folder layout.

``<root>/<train_split>/<class>/<image>`` and ``<root>/<val_split>/<class>/<image>``: the
layout of ImageNet-1k (``train/n01440764/...``) and of the demo's Fashion-MNIST
(``data/raw/fashion_mnist/{train,val}/<class>/<NNNNN>.png``). Read with torchvision's
``ImageFolder`` (classes = sorted folder names; both splits must have the same classes).

Small blocks, each testable alone:

- :func:`open_split`: one split as an ``ImageFolder`` whose images are RGB PIL images (zero-byte files and
  files that are no image left out and listed);
- :func:`per_class_order`, :func:`take_per_class`: deterministic (seeded), stratified,
  *nested* subsets (the 10-per-class images are among the 100-per-class ones, which are
  among the capped "full" set), so the low-data settings differ only in how much
  labelled data they get;
- :func:`stratified_holdout`: the split of training images the linear probe's C and the
  fine-tuning learning rate are chosen on (never the val images);
- :class:`TransformedSubset`: ``(uint8 (3, S, S) tensor, label)`` items with the eval
  recipe of :mod:`pipeline.vision.transforms` (resize shorter side to S*256/224, centre crop) or the
  training augmentation (random-resized crop + flip, seeded per item); normalization
  (``pipeline.vision.transforms.MEAN/STD``) runs later on the device (:func:`pipeline.vision.transforms.normalize`);
- :func:`eval_batches`: the eval images of a subset in order, from an in-memory uint8 cache
  when it fits in ``cache_mb`` (the demo's 10k val images at 64 px: 123 MB, decoded once
  instead of once per epoch and run) or streamed from disk (ImageNet at 224 px);
- :func:`relative_paths`, :func:`fingerprint`: ``<class>/<file>`` ids (as dedup writes them
  in ``eval_contamination.json``) and a machine-independent fingerprint of a split.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from pipeline.progress import progress_bar
from pipeline.seeding import item_seed
from pipeline.vision.transforms import eval_transform, train_transform

__all__ = [
    "emoji_groups",
    "emoji_rows_of",
    "EvalImages",
    "TransformedSubset",
    "eval_batches",
    "fingerprint",
    "image_signature_ok",
    "load_rgb",
    "open_split",
    "per_class_order",
    "relative_paths",
    "stratified_holdout",
    "take_per_class",
]


# the first bytes of the image formats torchvision's ImageFolder lists (IMG_EXTENSIONS) and Pillow decodes
SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),  # PNG
    (0, b"GIF87a"),
    (0, b"GIF89a"),
    (0, b"BM"),  # BMP
    (0, b"II*\x00"),  # TIFF, little-endian
    (0, b"MM\x00*"),  # TIFF, big-endian
    (8, b"WEBP"),  # RIFF....WEBP
    *((0, b"P%d" % k) for k in range(1, 7)),  # PBM / PGM / PPM (netpbm)
)


def image_signature_ok(path: str) -> bool:
    """True if the file starts like an image of a format in :data:`SIGNATURES` (reads 16 bytes: ~9 us a file, where
    opening it with Pillow costs ~0.6 ms, 2026-12-07, AVX512)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    return any(head[at : at + len(sig)] == sig for at, sig in SIGNATURES)


def load_rgb(path: str) -> Image.Image:
    """Open an image file as RGB (grey Fashion-MNIST -> 3 equal channels; JPEG drafted for speed).

    JPEGs are decoded at a reduced scale when they are much larger than needed (PIL's draft
    mode keeps at least 512 px on the shorter side, more than the 256 px the 224 px eval
    crop needs).

    Raises:
        OSError: naming the file, when Pillow cannot decode it (e.g. cut short after a valid header).
    """
    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            if img.format == "JPEG":
                img.draft("RGB", (512, 512))
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise OSError(
            f"target image {path} cannot be decoded ({type(exc).__name__}: {exc}); remove or replace the file and rerun "
            "(finished parts of the transfer stage are kept)"
        ) from exc


def open_split(
    root: str | os.PathLike, split: str, empty_files: list[str] | None = None, unreadable_files: list[str] | None = None
) -> ImageFolder:
    """``<root>/<split>`` as an ``ImageFolder`` of RGB images.

    Left out (their ``<class>/<file>`` paths appended to the lists when given): zero-byte image files
    (``empty_files``) and files whose first bytes are no image format's (``unreadable_files``:
    :func:`image_signature_ok`; a file cut short after a valid header is found only when decoded, :func:`load_rgb`).

    Raises:
        FileNotFoundError: the split folder does not exist or holds no class folder with images (a class
            folder with none, or only left-out ones, names its class).
    """
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"target split folder {folder} does not exist (expected <root>/{split}/<class>/<image>)")

    def valid(p: str) -> bool:
        if not has_file_allowed_extension(p, IMG_EXTENSIONS):
            return False
        empty = os.path.getsize(p) == 0
        if not empty and image_signature_ok(p):
            return True
        into = empty_files if empty else unreadable_files
        if into is not None:
            into.append(Path(p).relative_to(folder).as_posix())
        return False

    try:
        return ImageFolder(str(folder), loader=load_rgb, is_valid_file=valid)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"target split folder {folder}: {exc}") from None


def relative_paths(ds: ImageFolder) -> list[str]:
    """``<class>/<file>`` of every sample, in ``ds.samples`` order (dedup's eval id suffix)."""
    root = Path(ds.root)
    return [Path(p).relative_to(root).as_posix() for p, _ in ds.samples]


def fingerprint(ds: ImageFolder) -> dict:
    """A machine-independent fingerprint of a split: hash of its classes and (relative path, size) list."""
    h = hashlib.sha256()
    h.update("\0".join(ds.classes).encode())
    for rel, (p, _) in zip(relative_paths(ds), ds.samples):
        h.update(f"\n{rel}\0{os.stat(p).st_size}".encode())
    return {"images": len(ds.samples), "classes": len(ds.classes), "listing": h.hexdigest()[:16]}


def per_class_order(labels: np.ndarray | Sequence[int], seed: int, salt: str = "subset") -> list[np.ndarray]:
    """For each class, its sample indices in a seeded random order (stable across machines).

    Taking the first k of each list gives nested stratified subsets: the first 10 are
    among the first 100.
    """
    lab = np.asarray(labels)
    out = []
    for c in range(int(lab.max()) + 1 if len(lab) else 0):
        idx = np.flatnonzero(lab == c)
        rng = np.random.default_rng(item_seed(salt, seed, c))
        out.append(idx[rng.permutation(len(idx))])
    return out


def take_per_class(order: list[np.ndarray], k: int | None) -> np.ndarray:
    """The first ``k`` indices of every class (all of them for ``k=None``), sorted."""
    parts = [o[:k] if k is not None else o for o in order]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def stratified_holdout(
    labels: np.ndarray | Sequence[int],
    fraction: float,
    seed: int,
    salt: str = "probe-holdout",
    groups: np.ndarray | Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..N-1`` into (fit, holdout), about ``fraction`` of each class held out.

    Every class with 2+ samples keeps at least one sample on each side; a class with one
    sample stays in the fit part. Deterministic for a given seed and ``salt`` (the probe's C and
    the fine-tuning lr are chosen on differently salted splits).

    With ``groups`` (int (N,), e.g. :func:`emoji_groups`), whole groups are held out: per class, its groups
    in a seeded order until about ``fraction`` of its images (at least one group), always leaving one group
    in the fit part; a class of one group stays in the fit part. So a held-out image never has a near
    copy (the same emoji in another style or skin tone) in the fit part, as val has none in train.

    Returns:
        (fit positions, holdout positions), both sorted int64 arrays.
    """
    lab = np.asarray(labels)
    grp = None if groups is None else np.asarray(groups)
    held: list[np.ndarray] = []
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        if len(idx) < 2:
            continue
        rng = np.random.default_rng(item_seed(salt, seed, int(c)))
        if grp is None:
            idx = idx[rng.permutation(len(idx))]
            k = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
            held.append(idx[:k])
            continue
        names = np.unique(grp[idx])
        if len(names) < 2:
            continue
        names = names[rng.permutation(len(names))]
        want, taken = fraction * len(idx), []
        for name in names[:-1]:  # the last group always stays in the fit part
            taken.append(idx[grp[idx] == name])
            if sum(len(t) for t in taken) >= want:
                break
        held.append(np.concatenate(taken))
    hold = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    mask = np.ones(len(lab), dtype=bool)
    mask[hold] = False
    return np.flatnonzero(mask), hold


def emoji_groups(index_file: str | None, rel_paths: Sequence[str]) -> np.ndarray:
    """int64 (N,) group ids of images ``<class>/<stem>.<style>.<ext>``: images of one emoji family (the ``family`` of
    their row in an ``emoji.jsonl``, data_tools.fluent_target.emoji_rows, whose ``files`` are ``<style>/<stem>``) share
    an id; an image not listed, or every image when ``index_file`` is None, is a group of its own."""
    rows = emoji_rows_of(index_file, rel_paths) if index_file else [None] * len(rel_paths)
    ids: dict[str, int] = {}
    out = np.empty(len(rel_paths), np.int64)
    for i, (rel, row) in enumerate(zip(rel_paths, rows)):
        key = f"family:{row.get('family') or row.get('hexcode')}" if row else f"image:{rel}"
        out[i] = ids.setdefault(key, len(ids))
    return out


def emoji_rows_of(index_file: str, rel_paths: Sequence[str]) -> list[dict | None]:
    """The ``emoji.jsonl`` row (data_tools.fluent_target.emoji_rows: ``hexcode``, ``family``, ``files`` as
    ``<style>/<stem>``) of each image ``<class>/<stem>.<style>.<ext>``; None for an image it does not list."""
    by_file: dict[str, dict] = {}
    with open(index_file, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                for f in row.get("files") or []:
                    by_file[f] = row
    out = []
    for rel in rel_paths:
        stem, _, rest = Path(rel).name.partition(".")
        style = rest.rsplit(".", 1)[0] if "." in rest else rest
        out.append(by_file.get(f"{style}/{stem}"))
    return out


class TransformedSubset(Dataset):
    """Items ``indices`` of an ImageFolder as ``(uint8 (3, size, size) tensor, label)``.

    ``train=False``: the eval recipe (:func:`pipeline.vision.transforms.eval_transform`). ``train=True``:
    random-resized crop (area fraction in ``scale``) + flip (:func:`pipeline.vision.transforms.train_transform`);
    index it with ``(position, aug_seed)`` pairs so the augmentation depends only on the seed the sampler
    chose, never on the DataLoader worker that decodes the item.
    """

    def __init__(
        self,
        base: ImageFolder,
        indices: np.ndarray | Sequence[int],
        size: int,
        train: bool = False,
        scale: tuple[float, float] = (0.08, 1.0),
    ) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray([base.targets[i] for i in self.indices], dtype=np.int64)
        self.size = size
        self.train = train
        self.scale = (float(scale[0]), float(scale[1]))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item) -> tuple[torch.Tensor, int]:
        pos, aug = item if isinstance(item, tuple) else (item, item_seed("aug", item))
        path, label = self.base.samples[int(self.indices[pos])]
        img = self.base.loader(path)
        if self.train:
            x = train_transform(img, self.size, random.Random(aug), self.scale)
        else:
            x = eval_transform(img, self.size)
        return x, int(label)


def _loader(ds: Dataset, batch_size: int, workers: int, pin: bool = False) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin, persistent_workers=False)


class EvalImages:
    """The eval-transformed images of a :class:`TransformedSubset` (``train=False``), in order.

    Iterating gives ``(uint8 (B, 3, S, S), int64 (B,))`` batches. The images are decoded
    once into memory when they fit in ``cache_mb`` (first pass), else read from disk on
    every pass.
    """

    def __init__(
        self, ds: TransformedSubset, batch_size: int, workers: int, cache_mb: float, progress: bool = False, desc: str = "decode"
    ) -> None:
        if ds.train:
            raise ValueError("EvalImages needs a TransformedSubset with train=False")
        self.ds = ds
        self.batch_size = batch_size
        self.workers = workers
        self.labels = torch.from_numpy(ds.labels)
        nbytes = len(ds) * 3 * ds.size * ds.size
        self.cached = nbytes <= cache_mb * 2**20
        self.images: torch.Tensor | None = None
        self.progress = progress
        self.desc = desc

    def __len__(self) -> int:
        return len(self.ds)

    def _fill(self) -> None:
        imgs = torch.empty((len(self.ds), 3, self.ds.size, self.ds.size), dtype=torch.uint8)
        pos = 0
        with progress_bar(total=len(self.ds), desc=self.desc, unit="img", disable=not self.progress, leave=False) as bar:
            for x, _ in _loader(self.ds, max(self.batch_size, 256), self.workers):
                imgs[pos : pos + len(x)] = x
                pos += len(x)
                bar.update(len(x))
        self.images = imgs

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.cached:
            yield from _loader(self.ds, self.batch_size, self.workers)
            return
        if self.images is None:
            self._fill()
        images = self.images
        assert images is not None  # _fill() sets it
        for s in range(0, len(self.ds), self.batch_size):
            yield images[s : s + self.batch_size], self.labels[s : s + self.batch_size]


def eval_batches(
    ds: TransformedSubset, batch_size: int, workers: int, cache_mb: float, progress: bool = False, desc: str = "decode"
) -> EvalImages:
    """:class:`EvalImages` over ``ds`` (a re-iterable of uint8 image and label batches)."""
    return EvalImages(ds, batch_size, workers, cache_mb, progress, desc)
