"""Google's blob emoji (Noto Emoji v1) as a second in-domain transfer target, built like the Fluent one.

The pretraining corpus holds Google's *current* Noto drawings and Twitter's; the blob set is
Google's earlier art (Android 4.4-7, replaced in 2017), drawn differently, under Apache-2.0.
Blobmoji (npm ``@svgmoji/blob``) continues that art, but its npm releases (3.1.0, 3.2.0) ship
only JavaScript that loads the drawings from a CDN; Iconify's ``@iconify-json/noto-v1`` 1.2.5
(Apache-2.0, Google Inc.) holds the blob drawings themselves: 2,162 icons as SVG bodies in one
``icons.json``, named by CLDR name (``grinning-face``, ``baby-medium-skin-tone``).

:func:`fetch_blob_emoji`: ``npm pack @iconify-json/noto-v1@1.2.5`` into ``<cache>/noto_v1_npm/``
(the tarball kept, its SHA-256 pinned, the icon count checked). :func:`convert_blob_emoji` turns each
icon into an SVG (:func:`icon_svgs`), matches the names to emojibase
(:func:`data_tools.fluent_plan.plan_images`; ``-skin-tone`` suffixes dropped to Fluent's tone form) and
renders both targets with Fluent's layout, split and class rule (:mod:`data_tools.fluent_target`) into
``<cache>/blob_emoji/{subgroup,group}/{train,val}/<class>/<name>.blob.png`` (64 px RGB on white), with
``manifest.json`` and ``emoji.jsonl``. With the defaults (seed 0, val fraction 0.3, classes of >= 8
families) the subgroup target has 54 classes, 1,061 train / 529 val images of 1,010 emoji (one style,
skin tones as extra images).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Mapping

from .common import SourceError, check_count, sha256_file
from .fluent_convert import emojibase_labels, fetched_inputs, render_emoji_targets
from .fluent_fetch import fetch_npm_tarball
from .fluent_plan import DEFAULT_SETTINGS, Plan, Settings, plan_images

SOURCE = "blob_emoji"
PACKAGE = "@iconify-json/noto-v1"
VERSION = "1.2.5"
PACKAGE_DIR = "noto_v1_npm"
TARBALL = f"iconify-json-noto-v1-{VERSION}.tgz"
TARBALL_SHA256 = "2bf62c26c2c2884aa99e90aec942cdaee17a5921f05690694f4978ad4b017c37"
EXPECTED_ICONS = 2162
STYLE = "blob"
OUT_DIR = "blob_emoji"
LICENSE = (
    "Apache-2.0 (Noto Emoji v1, the blob drawings, Copyright Google Inc.; npm @iconify-json/noto-v1 1.2.5 by Iconify); "
    "labels: emojibase-data 17.0.0, MIT"
)
_TONE = "-skin-tone"


def read_icons(tarball: Path) -> dict:
    """The ``package/icons.json`` (IconifyJSON: ``icons`` name -> ``{"body", optional "width", "height",
    "left", "top"}``, default ``width``/``height`` at the top) of the npm tarball.

    Raises:
        ValueError: the tarball has no readable ``icons.json`` with an ``icons`` mapping.
    """
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            fh = tf.extractfile("package/icons.json")
            data = json.loads(fh.read()) if fh is not None else None
    except (OSError, KeyError, tarfile.TarError, ValueError) as exc:
        raise ValueError(f"cannot read package/icons.json of {tarball.name}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("icons"), dict):
        raise ValueError(f"{tarball.name}: package/icons.json has no 'icons' mapping")
    return data


def stem_of(name: str) -> str:
    """Fluent's file-name form of an Iconify icon name: ``baby-medium-skin-tone`` -> ``baby-medium``.

    Names with a tone in the middle (``man-dark-skin-tone-blond-hair``) are left as they are and
    match no emoji (left out, listed in the manifest).
    """
    return name[: -len(_TONE)] if name.endswith(_TONE) else name


def icon_svgs(icons: Mapping) -> dict[str, bytes]:
    """One standalone SVG document per icon, keyed like Fluent's tarball members
    (``package/icons/blob/<stem>.svg``, :attr:`data_tools.fluent_plan.FluentImage.member`).

    The view box is the icon's ``left top width height`` (the set's defaults where the icon has none).
    """
    w0, h0 = icons.get("width", 16), icons.get("height", 16)
    out = {}
    for name, icon in icons["icons"].items():
        w, h = icon.get("width", w0), icon.get("height", h0)
        box = f"{icon.get('left', 0)} {icon.get('top', 0)} {w} {h}"
        svg = (
            '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{box}" width="{w}" height="{h}">{icon["body"]}</svg>'
        )
        out[f"package/icons/{STYLE}/{stem_of(name)}.svg"] = svg.encode()
    return out


def verify_tarball(tarball: Path) -> dict[str, int]:
    """Check the tarball's SHA-256 and icon count; return ``{"icons": count}``.

    Raises:
        SourceError: the checksum or the count is not the pinned one, or ``icons.json`` is unreadable.
    """
    digest = sha256_file(tarball)
    if digest != TARBALL_SHA256:
        raise SourceError(SOURCE, f"{tarball.name}: SHA-256 {digest}, expected {TARBALL_SHA256}")
    try:
        icons = read_icons(tarball)
    except ValueError as exc:
        raise SourceError(SOURCE, str(exc)) from exc
    check_count(SOURCE, "icons", EXPECTED_ICONS, len(icons["icons"]))
    return {"icons": len(icons["icons"])}


def fetch_blob_emoji(cache: Path, force: bool = False, keep_downloads: bool = False) -> dict:
    """``npm pack @iconify-json/noto-v1@1.2.5`` into ``<cache>/noto_v1_npm/``; return the marker.

    The emojibase labels of the ``npm`` source are fetched too when missing. ``keep_downloads`` is
    accepted for a uniform signature: the tarball is the kept artifact.

    Raises:
        SourceError: npm failed, or the checksum or the icon count is not the pinned one.
    """
    return fetch_npm_tarball(
        cache, SOURCE, PACKAGE, VERSION, PACKAGE_DIR, TARBALL, verify_tarball, ("package.json",), force,
        sha256=TARBALL_SHA256, license=LICENSE,
    )  # fmt: skip


def convert_blob_emoji(
    cache: Path, force: bool = False, workers: int | None = None, settings: Settings = DEFAULT_SETTINGS
) -> dict:
    """Render ``<cache>/blob_emoji/`` and record ``blob_emoji_subgroup`` and ``blob_emoji_group`` in
    ``converted/sources.json`` (as :func:`data_tools.fluent_convert.render_emoji_targets`: skipped when
    done with the same inputs and settings, resumable).

    Returns:
        the manifest.

    Raises:
        SourceError: the package or the labels are not fetched or unreadable, or a render failed.
    """
    cache = Path(cache)
    inputs, fp_pkg = fetched_inputs(cache, SOURCE, PACKAGE_DIR, f"{PACKAGE}@{VERSION}", TARBALL_SHA256)
    pkg = cache / PACKAGE_DIR

    def load() -> tuple[dict[str, bytes], Plan]:
        svgs = icon_svgs(read_icons(pkg / TARBALL))
        stems = [member.rsplit("/", 1)[1][: -len(".svg")] for member in svgs]
        return svgs, plan_images({STYLE: stems}, *emojibase_labels(cache, SOURCE))

    return render_emoji_targets(
        cache, SOURCE, OUT_DIR, inputs, fp_pkg, load, force, workers, settings, "Noto Emoji v1 (blob)", LICENSE
    )
