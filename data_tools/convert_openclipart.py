"""Convert openclipart (Debian openclipart-png + openclipart-svg) into a folder+index source.

Every PNG path under ``openclipart/usr/share/openclipart/png`` becomes a row, symlinked
copies included (id = path relative to that root; they are real duplicates the dedup
stage must find). Tags = the ``dc:subject`` keywords of the SVG at the same relative
path under ``usr/share/openclipart/svg`` (``.svg`` for ``.png``) + the work's
``dc:title`` as one phrase; caption = the title. ``meta``: category (top-level
folder), is_symlink, link_target (the path the symlink resolves to, relative to the
root), width/height (from the PNG header, no decoding), n_keywords, and svg_error
when the SVG is missing or unparsable (the row is kept).

The summary counts PNGs over 100 and over 178 megapixels: Pillow refuses to decode
images above 2 x ``Image.MAX_IMAGE_PIXELS`` (178,956,970 px) unless told otherwise.

Run alone: ``python -m data_tools.convert_openclipart --cache data/raw``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from .common import LOG, SourceError, cache_parser, marker_fingerprint, png_size, progress, run_cli
from .fetch_debian import OPENCLIPART_PNG, OPENCLIPART_SVG
from .index_io import make_row, publish_index
from .svg_meta import SAFE_PARSER, parse_svg_meta

SOURCE = "openclipart"
PILLOW_BOMB_PIXELS = 178_956_970  # 2 * PIL.Image.MAX_IMAGE_PIXELS (Pillow's hard error)


def list_pngs(png_root: Path) -> list[str]:
    """Relative POSIX paths of every ``.png`` (files and symlinks) under ``png_root``, sorted."""
    rels = []
    for dirpath, _dirs, files in os.walk(png_root):
        for f in files:
            if f.lower().endswith(".png"):
                rels.append((Path(dirpath) / f).relative_to(png_root).as_posix())
    return sorted(rels)


def openclipart_row(png_root: Path, svg_root: Path, rel: str) -> dict:
    """Index row of one PNG path (see the module docstring for the fields)."""
    png = png_root / rel
    meta: dict = {"category": rel.split("/", 1)[0], "is_symlink": png.is_symlink()}
    if meta["is_symlink"]:
        target = Path(os.path.realpath(png))
        try:
            meta["link_target"] = target.relative_to(png_root.resolve()).as_posix()
        except ValueError:
            meta["link_target"] = None  # points outside the root: report, do not follow
            meta["link_error"] = "symlink target outside the png root"
    try:
        meta["width"], meta["height"] = png_size(png)
    except (OSError, ValueError) as exc:
        meta["width"] = meta["height"] = None
        meta["png_error"] = str(exc)
    svg = parse_svg_meta(svg_root / (rel[:-4] + ".svg"))
    if svg.error:
        meta["svg_error"] = svg.error
    meta["n_keywords"] = len(svg.keywords)
    tags = [*svg.keywords, *([svg.title] if svg.title else [])]
    return make_row(rel, rel, tags, caption=svg.title, **meta)


def summarize(rows: list[dict]) -> dict:
    """Counts for sources.json: paths, symlinks, keywords, megapixel outliers, SVG errors."""
    kw = Counter(k for r in rows for k in r["tags"][: r["meta"]["n_keywords"]])
    area = [(r["meta"]["width"] or 0) * (r["meta"]["height"] or 0) for r in rows]
    unique = [a for a, r in zip(area, rows) if not r["meta"]["is_symlink"]]
    return {
        "png_paths": len(rows),
        "png_symlinks": sum(r["meta"]["is_symlink"] for r in rows),
        "categories": len({r["meta"]["category"] for r in rows}),
        "distinct_keywords": len(kw),
        "keywords_per_image": round(sum(r["meta"]["n_keywords"] for r in rows) / max(len(rows), 1), 3),
        "images_without_keywords": sum(r["meta"]["n_keywords"] == 0 for r in rows),
        "svg_errors": sum("svg_error" in r["meta"] for r in rows),
        "png_errors": sum("png_error" in r["meta"] for r in rows),
        "over_100_megapixels": sum(a > 100_000_000 for a in area),
        "over_178_megapixels": sum(a > 178_000_000 for a in area),
        "over_pillow_bomb_limit": sum(a > PILLOW_BOMB_PIXELS for a in area),
        "unique_files_over_100_megapixels": sum(a > 100_000_000 for a in unique),
        "max_pixels": max(area, default=0),
    }


def convert_openclipart(cache: Path) -> dict:
    """Write ``converted/openclipart.jsonl`` and its sources.json entry; return the entry.

    Raises:
        SourceError: the openclipart source is not fetched.
    """
    cache = Path(cache)
    folder = cache / SOURCE
    fingerprint = marker_fingerprint(folder)
    if fingerprint is None:
        raise SourceError(SOURCE, f"{folder} is not complete: run `python -m data_tools.fetch_demo --only openclipart`")
    png_root, svg_root = folder / OPENCLIPART_PNG, folder / OPENCLIPART_SVG
    rels = list_pngs(png_root)
    rows = [openclipart_row(png_root, svg_root, rel) for rel in progress(rels, desc=SOURCE, unit="img")]
    counts = summarize(rows)
    for r in rows:
        if "svg_error" in r["meta"]:
            LOG.warning("%s: %s: %s", SOURCE, r["id"], r["meta"]["svg_error"])
    entry = publish_index(
        cache,
        SOURCE,
        rows,
        f"{SOURCE}/{OPENCLIPART_PNG}",
        counts,
        "public domain (Open Clip Art Library)",
        fingerprint,
        svg_parser=SAFE_PARSER,
    )
    LOG.info("%s: wrote %s: %s", SOURCE, entry["index"], ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    return entry


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m data_tools.convert_openclipart [--cache data/raw]``."""
    args = cache_parser(__doc__).parse_args(argv)
    return run_cli(lambda: convert_openclipart(args.cache))


if __name__ == "__main__":
    raise SystemExit(main())
