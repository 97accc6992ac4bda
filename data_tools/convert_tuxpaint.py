"""Convert Tux Paint's default stamps into a folder+index source.

Every ``.png`` and ``.svg`` under ``tuxpaint/usr/share/tuxpaint/stamps`` becomes a row
(83 stems exist in both formats: both are kept, and each names the other in
``meta.pair``). id = path = the path relative to that root.

* caption: first line of the sibling ``<stem>.txt`` (one ``.txt`` serves both the PNG
  and the SVG of a stem), stripped. Tux Paint's pre-mirrored ``<stem>_mirror.png``
  files have no ``.txt``: they take the caption of ``<stem>.txt``
  (``meta.caption_from`` says which file was used).
* tags: the folder names below ``stamps/`` (categories, outermost first) + the stem
  as a phrase (``_`` and ``-`` to spaces, a ``_mirror`` suffix dropped).
* meta: category (folder path), format (png/svg), has_caption, caption_from,
  mirror (bool), mirror_of (the unmirrored stamp's path, for mirrors), pair (the
  other format's path, if any), width/height for PNGs.

Run alone: ``python -m data_tools.convert_tuxpaint --cache data/raw``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .common import LOG, SourceError, cache_parser, marker_fingerprint, png_size, progress, run_cli
from .fetch_debian import TUXPAINT_STAMPS
from .index_io import make_row, publish_index

SOURCE = "tuxpaint"
FORMATS = (".png", ".svg")
MIRROR_SUFFIX = "_mirror"


def stem_phrase(stem: str) -> str:
    """``"Candy_cane-photo_1"`` -> ``"Candy cane photo 1"`` (a ``_mirror`` suffix dropped)."""
    if stem.endswith(MIRROR_SUFFIX):
        stem = stem[: -len(MIRROR_SUFFIX)]
    return " ".join(re.split(r"[_\-\s]+", stem)).strip()


def read_caption(txt: Path) -> str | None:
    """First non-empty line of a Tux Paint description file (English), or None.

    The file is UTF-8 (undecodable bytes replaced); later lines are translations.
    """
    try:
        text = txt.read_bytes().decode("utf-8-sig", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.strip("\ufeff \t\r"):
            return line.strip("\ufeff \t\r")
    return None


def list_stamps(root: Path) -> list[str]:
    """Relative POSIX paths of every PNG and SVG stamp under ``root``, sorted."""
    rels = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if os.path.splitext(f)[1].lower() in FORMATS:
                rels.append((Path(dirpath) / f).relative_to(root).as_posix())
    return sorted(rels)


def tuxpaint_row(root: Path, rel: str, all_rels: set[str]) -> dict:
    """Index row of one stamp (see the module docstring)."""
    folder, _, name = rel.rpartition("/")
    stem, ext = os.path.splitext(name)
    mirror = stem.endswith(MIRROR_SUFFIX)
    prefix = f"{folder}/" if folder else ""
    candidates = [f"{prefix}{stem}.txt"]
    if mirror:
        candidates.append(f"{prefix}{stem[: -len(MIRROR_SUFFIX)]}.txt")
    caption, caption_from = None, None
    for cand in candidates:
        if (root / cand).is_file():
            caption, caption_from = read_caption(root / cand), cand
            break
    other = f"{prefix}{stem}{'.svg' if ext.lower() == '.png' else '.png'}"
    meta: dict = {
        "category": folder,
        "format": ext.lower().lstrip("."),
        "has_caption": caption is not None,
        "caption_from": caption_from,
        "mirror": mirror,
        "pair": other if other in all_rels else None,
    }
    if mirror:
        base = f"{prefix}{stem[: -len(MIRROR_SUFFIX)]}{ext}"
        meta["mirror_of"] = base if base in all_rels else None
    if meta["format"] == "png":
        try:
            meta["width"], meta["height"] = png_size(root / rel)
        except (OSError, ValueError) as exc:
            meta["png_error"] = str(exc)
    tags = [*(folder.split("/") if folder else []), stem_phrase(stem)]
    return make_row(rel, rel, tags, caption=caption, **meta)


def convert_tuxpaint(cache: Path) -> dict:
    """Write ``converted/tuxpaint.jsonl`` and its sources.json entry; return the entry.

    Raises:
        SourceError: the tuxpaint source is not fetched.
    """
    cache = Path(cache)
    folder = cache / SOURCE
    fingerprint = marker_fingerprint(folder)
    if fingerprint is None:
        raise SourceError(SOURCE, f"{folder} is not complete: run `python -m data_tools.fetch_demo --only tuxpaint`")
    root = folder / TUXPAINT_STAMPS
    rels = list_stamps(root)
    rel_set = set(rels)
    rows = [tuxpaint_row(root, rel, rel_set) for rel in progress(rels, desc=SOURCE, unit="stamp")]
    counts = {
        "stamps": len(rows),
        "png": sum(r["meta"]["format"] == "png" for r in rows),
        "svg": sum(r["meta"]["format"] == "svg" for r in rows),
        "stems_in_both": sum(r["meta"]["pair"] is not None for r in rows) // 2,
        "with_caption": sum(r["meta"]["has_caption"] for r in rows),
        "mirror": sum(r["meta"]["mirror"] for r in rows),
        "categories": len({t for r in rows for t in r["meta"]["category"].split("/") if t}),
    }
    missing = [r["id"] for r in rows if not r["meta"]["has_caption"]]
    if missing:
        LOG.warning("%s: %d stamps have no caption file: %s", SOURCE, len(missing), ", ".join(missing[:10]))
    entry = publish_index(cache, SOURCE, rows, f"{SOURCE}/{TUXPAINT_STAMPS}", counts, "GPL-2.0 (Tux Paint stamps)", fingerprint)
    LOG.info("%s: wrote %s: %s", SOURCE, entry["index"], ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    return entry


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m data_tools.convert_tuxpaint [--cache data/raw]``."""
    args = cache_parser(__doc__).parse_args(argv)
    return run_cli(lambda: convert_tuxpaint(args.cache))


if __name__ == "__main__":
    raise SystemExit(main())
