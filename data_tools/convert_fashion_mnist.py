"""Convert Fashion-MNIST (Debian dataset-fashion-mnist idx files) into an ImageNet-style folder.

Writes ``<cache>/fashion_mnist/{train,val}/<class>/<index:05d>.png`` (28x28 greyscale;
train = the 60,000-image train split, val = the 10,000-image t10k test split; index =
position in the split's idx file) and ``<cache>/fashion_mnist/classes.json``. Class
folder names, in Fashion-MNIST's label order 0-9: t-shirt_top, trouser, pullover,
dress, coat, sandal, shirt, sneaker, bag, ankle_boot. Note that torchvision's
``ImageFolder`` numbers classes by sorted folder name, not by this order;
``classes.json`` has both.

The folder is built under ``.fashion_mnist.partial`` and renamed when complete, after
checking 6,000 / 1,000 images per class.

Run alone: ``python -m data_tools.convert_fashion_mnist --cache data/raw``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import (
    LOG,
    SourceError,
    atomic_write_json,
    cache_parser,
    check_count,
    marker_fingerprint,
    progress,
    run_cli,
    staged_dir,
    write_marker,
)
from .fetch_debian import FASHION_DIR, FASHION_FILES
from .idx import read_idx
from .index_io import SOURCES_JSON, converted_dir, update_sources

SOURCE = "fashion_mnist"
INPUT = "fashion_mnist_deb"
CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
SPLITS = {"train": ("train_images", "train_labels", 6000), "val": ("val_images", "val_labels", 1000)}


def load_split(base: Path, images_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split's images (N, 28, 28) uint8 and labels (N,) uint8.

    Raises:
        ValueError: bad idx data, image/label count mismatch or a label outside 0-9.
    """
    images = read_idx(base / FASHION_FILES[images_key])
    labels = read_idx(base / FASHION_FILES[labels_key])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"shape mismatch: images {images.shape}, labels {labels.shape}")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise ValueError(f"label {int(labels.max())} outside 0-{len(CLASSES) - 1}")
    return images, labels


def write_split(images: np.ndarray, labels: np.ndarray, out: Path, desc: str) -> dict[str, int]:
    """Write each image as ``out/<class>/<index:05d>.png``; return per-class counts."""
    from PIL import Image

    for name in CLASSES:
        (out / name).mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(CLASSES, 0)
    for i in progress(range(len(images)), desc=desc, unit="img"):
        name = CLASSES[int(labels[i])]
        Image.fromarray(np.ascontiguousarray(images[i])).save(out / name / f"{i:05d}.png", optimize=False)
        counts[name] += 1
    return counts


def convert_fashion_mnist(cache: Path) -> dict:
    """Build ``<cache>/fashion_mnist/`` and its sources.json entry; return the entry.

    Raises:
        SourceError: the input is not fetched, cannot be decoded or has wrong counts.
    """
    cache = Path(cache)
    fingerprint = marker_fingerprint(cache / INPUT)
    if fingerprint is None:
        raise SourceError(
            SOURCE, f"{cache / INPUT} is not complete: run `python -m data_tools.fetch_demo --only fashion_mnist_deb`"
        )
    base = cache / INPUT / FASHION_DIR
    counts: dict[str, dict[str, int]] = {}
    with staged_dir(cache / SOURCE) as tmp:
        for split, (img_key, lab_key, per_class) in SPLITS.items():
            try:
                images, labels = load_split(base, img_key, lab_key)
            except (OSError, ValueError) as exc:
                raise SourceError(SOURCE, f"{split}: {exc}") from exc
            counts[split] = write_split(images, labels, tmp / split, f"{SOURCE}/{split}")
            for name, n in counts[split].items():
                check_count(SOURCE, f"{split} images of class {name}", per_class, n)
            LOG.info("%s: wrote %s (%s images)", SOURCE, split, f"{sum(counts[split].values()):,}")
        classes = {
            "classes": list(CLASSES),
            "label_to_class": {str(i): c for i, c in enumerate(CLASSES)},
            "imagefolder_index": {c: i for i, c in enumerate(sorted(CLASSES))},
            "splits": {"train": "train (60,000)", "val": "t10k test (10,000)"},
            "counts": counts,
            "image": {"width": 28, "height": 28, "mode": "L", "format": "png"},
            "license": "MIT (Fashion-MNIST, Zalando Research)",
        }
        atomic_write_json(tmp / "classes.json", classes)
        write_marker(tmp, SOURCE, counts=counts, input_fingerprint=fingerprint)
    entry = {
        "format": "imagefolder",
        "root": SOURCE,
        "splits": {"train": f"{SOURCE}/train", "val": f"{SOURCE}/val"},
        "classes": f"{SOURCE}/classes.json",
        "count": sum(sum(c.values()) for c in counts.values()),
        "counts": {split: sum(c.values()) for split, c in counts.items()},
        "license": classes["license"],
        "input_fingerprint": fingerprint,
    }
    update_sources(converted_dir(cache) / SOURCES_JSON, SOURCE, entry)
    return entry


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m data_tools.convert_fashion_mnist [--cache data/raw]``."""
    args = cache_parser(__doc__).parse_args(argv)
    return run_cli(lambda: convert_fashion_mnist(args.cache))


if __name__ == "__main__":
    raise SystemExit(main())
