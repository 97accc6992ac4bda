"""Fetch the emoji images and the emojibase labels from the npm registry.

Writes ``<cache>/npm/package.json`` pinning exact versions, runs
``npm install --ignore-scripts --no-audit --no-fund`` in a staged folder, checks the
installed versions and counts (3,786 64x64 PNGs per vendor; emojibase ``en/data.json``
parses), writes ``<cache>/npm/.complete.json`` and moves the folder into place.
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import LOG, SourceError, atomic_write_json, check_count, read_marker, run, staged_dir, write_marker

SOURCE = "npm"
PACKAGES = {
    "emoji-datasource-google": "16.0.0",
    "emoji-datasource-twitter": "16.0.0",
    "emojibase-data": "17.0.0",
}
VENDORS = ("google", "twitter")
EXPECTED = {"png_google": 3786, "png_twitter": 3786, "emojibase_entries": 1949, "emojibase_with_skins": 3979}
EMOJIBASE_DATA = "node_modules/emojibase-data/en/data.json"


def vendor_image_dir(vendor: str) -> str:
    """Folder of a vendor's 64 px PNGs, relative to the npm folder."""
    return f"node_modules/emoji-datasource-{vendor}/img/{vendor}/64"


def _installed_version(folder: Path, package: str) -> str:
    meta = folder / "node_modules" / package / "package.json"
    try:
        return json.loads(meta.read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError) as exc:
        raise SourceError(SOURCE, f"{package} is not installed ({meta.name}: {exc})") from exc


def verify_npm(folder: Path) -> tuple[dict, dict]:
    """Check versions and counts of an npm install; return (versions, counts).

    Raises:
        SourceError: naming the package and the expected vs found version or count.
    """
    versions = {}
    for package, pin in PACKAGES.items():
        versions[package] = got = _installed_version(folder, package)
        if got != pin:
            raise SourceError(SOURCE, f"expected {package}@{pin}, found {got}")
    try:
        versions["emojibase"] = _installed_version(folder, "emojibase")  # peer dependency
    except SourceError:
        pass
    counts = {}
    for vendor in VENDORS:
        img = folder / vendor_image_dir(vendor)
        counts[f"png_{vendor}"] = len(list(img.glob("*.png"))) if img.is_dir() else 0
    try:
        data = json.loads((folder / EMOJIBASE_DATA).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(SOURCE, f"cannot read {EMOJIBASE_DATA}: {exc}") from exc
    counts["emojibase_entries"] = len(data)
    counts["emojibase_with_skins"] = len(data) + sum(len(e.get("skins", [])) for e in data)
    for key, expected in EXPECTED.items():
        check_count(SOURCE, key.replace("_", " "), expected, counts[key])
    return versions, counts


def fetch_npm(cache: Path, force: bool = False, keep_downloads: bool = False) -> dict:
    """Install the pinned npm packages into ``<cache>/npm/``; return the marker.

    ``keep_downloads`` is accepted for a uniform signature (npm keeps its own cache).

    Raises:
        SourceError: npm failed or a version/count check failed.
    """
    dest = cache / SOURCE
    if not force and (marker := read_marker(dest)) is not None:
        LOG.info("%s: already complete (%s), skipping", SOURCE, dest)
        return marker
    with staged_dir(dest) as tmp:
        atomic_write_json(
            tmp / "package.json",
            {"name": "demo-corpus-npm", "private": True, "version": "0.0.0", "dependencies": PACKAGES},
        )
        LOG.info("%s: npm install %s", SOURCE, " ".join(f"{k}@{v}" for k, v in PACKAGES.items()))
        run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--save-exact"], SOURCE, cwd=tmp)
        versions, counts = verify_npm(tmp)
        LOG.info("%s: verified %s", SOURCE, ", ".join(f"{k}={v:,}" for k, v in counts.items()))
        marker = write_marker(tmp, SOURCE, versions=versions, counts=counts)
    return marker
