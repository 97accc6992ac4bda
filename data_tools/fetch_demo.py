"""Fetch, unpack, verify and convert the demo corpus sources.

Usage (from the repo root)::

    python -m data_tools.fetch_demo [--cache data/raw] [--only SOURCE ...] [--force]
                                    [--no-convert] [--keep-downloads] [-v]

Sources (each lands in ``<cache>/<folder>/`` with a ``.complete.json`` marker that
records versions and verified counts; a completed source is skipped next time):

==================  =====================  ==========================================
source              folder                 what
==================  =====================  ==========================================
npm                 npm/                   emoji-datasource-{google,twitter}, emojibase-data
fluent_emoji        fluentui_emoji_npm/    npm pack fluentui-emoji (Fluent Emoji SVGs; needs npm)
blob_emoji          noto_v1_npm/           npm pack @iconify-json/noto-v1 (Google's blob emoji; needs npm)
openclipart         openclipart/           Debian openclipart-png + openclipart-svg
tuxpaint            tuxpaint/              Debian tuxpaint-stamps-default
fashion_mnist_deb   fashion_mnist_deb/     Debian dataset-fashion-mnist
wordnet             wordnet_deb/ (marker)  Debian wordnet-base + wordnet-sense-index,
                    nltk_data/             laid out for NLTK (with lexnames)
imagenet_info       imagenet_info/         ImageNet wnid lists from the timm wheel
==================  =====================  ==========================================

Then the converters run (unless their output is already complete for the current
fetch): emoji_google, emoji_twitter (from npm), openclipart, tuxpaint, fashion_mnist
(from fashion_mnist_deb), writing ``<cache>/converted/*.jsonl`` and
``<cache>/converted/sources.json``, and fluent_emoji, which renders the transfer
targets ``<cache>/fluent_emoji/{subgroup,group}/{train,val}/<class>/`` (see
:mod:`data_tools.fetch_fluent_emoji`), and blob_emoji, which renders
``<cache>/blob_emoji/`` the same way (:mod:`data_tools.blob_emoji`).

A failing source is reported (name and reason) and the others go on; converters of a
failed source are skipped. Exit status: 0 if everything succeeded, 1 otherwise.
Interrupted runs resume: staged ``.<folder>.partial`` folders are wiped and redone.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path
from typing import Callable

from .blob_emoji import PACKAGE_DIR as BLOB_DIR
from .blob_emoji import convert_blob_emoji, fetch_blob_emoji
from .common import LOG, SourceError, setup_logging
from .convert_emoji import convert_emoji
from .convert_fashion_mnist import convert_fashion_mnist
from .convert_openclipart import convert_openclipart
from .convert_tuxpaint import convert_tuxpaint
from .fetch_debian import fetch_fashion_mnist_deb, fetch_openclipart, fetch_tuxpaint
from .fetch_imagenet_info import fetch_imagenet_info
from .fetch_npm import fetch_npm
from .fetch_wordnet import DEB_DIR, fetch_wordnet
from .fluent_convert import convert_fluent_emoji
from .fluent_fetch import PACKAGE_DIR as FLUENT_DIR
from .fluent_fetch import fetch_fluent_emoji
from .index_io import is_converted

# source name -> (fetch function, folder holding its marker)
FETCHERS: dict[str, tuple[Callable[..., dict], str]] = {
    "npm": (fetch_npm, "npm"),
    "fluent_emoji": (fetch_fluent_emoji, FLUENT_DIR),
    "blob_emoji": (fetch_blob_emoji, BLOB_DIR),
    "openclipart": (fetch_openclipart, "openclipart"),
    "tuxpaint": (fetch_tuxpaint, "tuxpaint"),
    "fashion_mnist_deb": (fetch_fashion_mnist_deb, "fashion_mnist_deb"),
    "wordnet": (fetch_wordnet, DEB_DIR),
    "imagenet_info": (fetch_imagenet_info, "imagenet_info"),
}

# converter name -> (function(cache), input source, names of the outputs it records)
CONVERTERS: dict[str, tuple[Callable[[Path], object], str, tuple[str, ...]]] = {
    "emoji": (convert_emoji, "npm", ("emoji_google", "emoji_twitter")),
    "openclipart": (convert_openclipart, "openclipart", ("openclipart",)),
    "tuxpaint": (convert_tuxpaint, "tuxpaint", ("tuxpaint",)),
    "fashion_mnist": (convert_fashion_mnist, "fashion_mnist_deb", ("fashion_mnist",)),
    "fluent_emoji": (convert_fluent_emoji, "fluent_emoji", ("fluent_emoji_subgroup", "fluent_emoji_group")),
    "blob_emoji": (convert_blob_emoji, "blob_emoji", ("blob_emoji_subgroup", "blob_emoji_group")),
}


def _attempt(label: str, fn: Callable[[], object], failures: dict[str, str]) -> bool:
    """Run ``fn``; on failure log why under ``label`` and record it. Return success."""
    t0 = time.monotonic()
    try:
        fn()
    except SourceError as exc:
        failures[label] = exc.reason
        LOG.error("FAILED %s: %s", label, exc.reason)
        return False
    except Exception as exc:  # noqa: BLE001 - report, go on with the other sources
        failures[label] = f"{type(exc).__name__}: {exc}"
        LOG.error("FAILED %s: unexpected %s\n%s", label, failures[label], traceback.format_exc())
        return False
    LOG.info("done %s (%.1f s)", label, time.monotonic() - t0)
    return True


def run_all(cache: Path, only: list[str] | None, force: bool, convert: bool, keep_downloads: bool) -> dict[str, str]:
    """Fetch the selected sources, then run their converters; return {label: failure reason}."""
    cache.mkdir(parents=True, exist_ok=True)
    selected = only or list(FETCHERS)
    failures: dict[str, str] = {}
    fetched_ok = set()
    for name in selected:
        fetch, _folder = FETCHERS[name]
        LOG.info("== fetch %s", name)
        if _attempt(name, lambda: fetch(cache, force=force, keep_downloads=keep_downloads), failures):  # noqa: B023 (called here)
            fetched_ok.add(name)
    if not convert:
        return failures
    for conv, (fn, source, outputs) in CONVERTERS.items():
        if source not in selected:
            continue
        label = f"convert {conv}"
        if source not in fetched_ok:
            LOG.error("SKIPPED %s: its source %s failed", label, source)
            failures[label] = f"skipped: source {source} failed"
            continue
        input_folder = cache / FETCHERS[source][1]
        if not force and all(is_converted(cache, out, input_folder) for out in outputs):
            LOG.info("== %s: already complete, skipping", label)
            continue
        LOG.info("== %s", label)
        _attempt(label, lambda: fn(cache), failures)  # noqa: B023 (called here)
    return failures


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 all good, 1 some source failed)."""
    ap = argparse.ArgumentParser(
        prog="python -m data_tools.fetch_demo",
        description="Download, unpack, verify and convert the demo corpus sources.",
    )
    ap.add_argument("--cache", type=Path, default=Path("data/raw"), help="cache folder (default: data/raw)")
    ap.add_argument(
        "--only", nargs="+", choices=list(FETCHERS), metavar="SOURCE", help=f"only these sources (of: {', '.join(FETCHERS)})"
    )
    ap.add_argument("--force", action="store_true", help="redo completed sources and conversions")
    ap.add_argument("--no-convert", dest="convert", action="store_false", help="fetch only")
    ap.add_argument("--keep-downloads", action="store_true", help="keep .deb files in <cache>/.downloads")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging (commands run)")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    t0 = time.monotonic()
    try:
        failures = run_all(args.cache, args.only, args.force, args.convert, args.keep_downloads)
    except KeyboardInterrupt:
        LOG.error("interrupted after %.0f s; run the same command again to resume", time.monotonic() - t0)
        return 130
    elapsed = time.monotonic() - t0
    if failures:
        LOG.error("%d step(s) failed after %.0f s:", len(failures), elapsed)
        for label, reason in failures.items():
            LOG.error("  %s: %s", label, reason.splitlines()[0] if reason else "")
        return 1
    LOG.info("all sources complete in %.0f s (cache: %s)", elapsed, args.cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
