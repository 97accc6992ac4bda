"""Fetchers for the Debian-packaged sources: openclipart, tuxpaint, fashion_mnist_deb.

Each fetcher downloads its pinned packages (:mod:`data_tools.fetch_deb`), unpacks them
into a staged folder, checks the file counts pinned in this module (per package version), writes
``<cache>/<source>/.complete.json`` (versions, counts, .deb hashes) and only then
moves the folder into place. A completed source is skipped unless ``force``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable

from .common import (
    LOG,
    SourceError,
    check_count,
    read_marker,
    staged_dir,
    write_marker,
)
from .fetch_deb import download_debs, extract_debs, forget_downloads

OPENCLIPART_PACKAGES = {"openclipart-png": "1:0.18+dfsg-19", "openclipart-svg": "1:0.18+dfsg-19"}
TUXPAINT_PACKAGES = {"tuxpaint-stamps-default": "2022.06.04-1"}
FASHION_PACKAGES = {"dataset-fashion-mnist": "0.0~git20200523.55506a9-1"}

OPENCLIPART_PNG = "usr/share/openclipart/png"
OPENCLIPART_SVG = "usr/share/openclipart/svg"
TUXPAINT_STAMPS = "usr/share/tuxpaint/stamps"
FASHION_DIR = "usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "val_images": "t10k-images-idx3-ubyte.gz",
    "val_labels": "t10k-labels-idx1-ubyte.gz",
}

EXPECTED_OPENCLIPART = {"png_paths": 8121, "png_symlinks": 1221, "svg_paths": 8121, "categories": 22}
EXPECTED_TUXPAINT = {"png": 796, "svg": 248, "stems_in_both": 83}
EXPECTED_FASHION = {"train": 60000, "val": 10000}


def _walk_files(root: Path, suffix: str) -> list[Path]:
    """Every path (file or symlink) under ``root`` ending in ``suffix``, sorted."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out.extend(Path(dirpath) / f for f in files if f.lower().endswith(suffix))
    return sorted(out)


def verify_openclipart(folder: Path, source: str = "openclipart") -> dict:
    """Count PNG paths, symlinked copies, SVG paths and categories; raise on a mismatch."""
    png_root, svg_root = folder / OPENCLIPART_PNG, folder / OPENCLIPART_SVG
    for d in (png_root, svg_root):
        if not d.is_dir():
            raise SourceError(source, f"expected folder {d.relative_to(folder)} after unpacking")
    pngs = _walk_files(png_root, ".png")
    counts = {
        "png_paths": len(pngs),
        "png_symlinks": sum(p.is_symlink() for p in pngs),
        "svg_paths": len(_walk_files(svg_root, ".svg")),
        "categories": sum(1 for d in png_root.iterdir() if d.is_dir()),
    }
    for key, expected in EXPECTED_OPENCLIPART.items():
        check_count(source, key.replace("_", " "), expected, counts[key])
    counts["png_unique_files"] = counts["png_paths"] - counts["png_symlinks"]
    return counts


def verify_tuxpaint(folder: Path, source: str = "tuxpaint") -> dict:
    """Count PNG and SVG stamps and stems present in both formats; raise on a mismatch."""
    root = folder / TUXPAINT_STAMPS
    if not root.is_dir():
        raise SourceError(source, f"expected folder {TUXPAINT_STAMPS} after unpacking")
    pngs, svgs = _walk_files(root, ".png"), _walk_files(root, ".svg")
    both = {p.with_suffix("") for p in pngs} & {s.with_suffix("") for s in svgs}
    counts = {"png": len(pngs), "svg": len(svgs), "stems_in_both": len(both)}
    for key, expected in EXPECTED_TUXPAINT.items():
        check_count(source, f"{key.replace('_', ' ')} stamps", expected, counts[key])
    return counts


def verify_fashion(folder: Path, source: str = "fashion_mnist_deb") -> dict:
    """Check the four idx files exist and their headers give 60,000 / 10,000 28x28 images."""
    from .idx import read_idx_header

    base = folder / FASHION_DIR
    counts = {}
    for key, name in FASHION_FILES.items():
        path = base / name
        if not path.is_file():
            raise SourceError(source, f"expected file {FASHION_DIR}/{name} after unpacking")
        with gzip.open(path, "rb") as fh:
            try:
                _dtype, shape = read_idx_header(fh)
            except ValueError as exc:
                raise SourceError(source, f"{name}: {exc}") from exc
        split = key.split("_")[0]
        check_count(source, f"{split} {key.split('_')[1]} in {name}", EXPECTED_FASHION[split], shape[0])
        if key.endswith("images") and tuple(shape[1:]) != (28, 28):
            raise SourceError(source, f"{name}: expected 28x28 images, found {shape[1:]}")
        counts[key] = shape[0]
    return counts


def fetch_deb_source(
    cache: Path,
    source: str,
    packages: dict[str, str | None],
    verify: Callable[[Path, str], dict],
    force: bool = False,
    keep_downloads: bool = False,
) -> dict:
    """Download, unpack into ``<cache>/<source>/``, verify and mark one Debian source.

    Returns:
        the completion marker (dict), also when the source was already complete.

    Raises:
        SourceError: download, unpack or count check failed (the partial folder is
            wiped by the next run).
    """
    dest = cache / source
    if not force and (marker := read_marker(dest)) is not None:
        LOG.info("%s: already complete (%s), skipping", source, dest)
        return marker
    debs = download_debs(cache, source, packages)
    with staged_dir(dest) as tmp:
        info = extract_debs(debs, tmp, source)
        for name, pin in packages.items():
            if pin and info[name]["version"] != pin:
                LOG.warning("%s: got %s %s instead of pinned %s", source, name, info[name]["version"], pin)
        counts = verify(tmp, source)
        LOG.info("%s: verified %s", source, ", ".join(f"{k}={v:,}" for k, v in counts.items()))
        marker = write_marker(tmp, source, packages=info, counts=counts)
    if not keep_downloads:
        forget_downloads(debs)
    return marker


def fetch_openclipart(cache: Path, force: bool = False, keep_downloads: bool = False) -> dict:
    """Fetch openclipart-png + openclipart-svg into ``<cache>/openclipart/``."""
    return fetch_deb_source(cache, "openclipart", OPENCLIPART_PACKAGES, verify_openclipart, force, keep_downloads)


def fetch_tuxpaint(cache: Path, force: bool = False, keep_downloads: bool = False) -> dict:
    """Fetch tuxpaint-stamps-default into ``<cache>/tuxpaint/``."""
    return fetch_deb_source(cache, "tuxpaint", TUXPAINT_PACKAGES, verify_tuxpaint, force, keep_downloads)


def fetch_fashion_mnist_deb(cache: Path, force: bool = False, keep_downloads: bool = False) -> dict:
    """Fetch dataset-fashion-mnist into ``<cache>/fashion_mnist_deb/``."""
    return fetch_deb_source(cache, "fashion_mnist_deb", FASHION_PACKAGES, verify_fashion, force, keep_downloads)
