"""Fetch Microsoft's Fluent Emoji SVGs and render them as an in-domain transfer target.

Two steps, both run by ``python -m data_tools.fetch_demo`` (source ``fluent_emoji``):

1. **fetch** (:func:`data_tools.fluent_fetch.fetch_fluent_emoji`): ``npm pack
   fluentui-emoji@1.3.0`` (MIT, Microsoft's Fluent Emoji) into
   ``<cache>/fluentui_emoji_npm/``, with the emojibase-data 17.0.0 labels of the ``npm``
   source.
2. **render** (:func:`data_tools.fluent_convert.convert_fluent_emoji`): every SVG whose
   name matches an emojibase emoji is rendered at 64x64, composited on white, as an RGB
   PNG, into two targets in the ImageNet folder layout::

       <cache>/fluent_emoji/subgroup/{train,val}/<subgroup-key>/<name>.<style>.png
       <cache>/fluent_emoji/group/{train,val}/<group-key>/<name>.<style>.png

   with train and val holding different emoji families, ``manifest.json`` and
   ``emoji.jsonl``.

One module per job:

* :mod:`data_tools.fluent_fetch`: the npm package (pinned SHA-256, SVG counts), reading its SVGs.
* :mod:`data_tools.fluent_match`: file stem -> emojibase emoji (CLDR slugs, skin-tone
  suffixes, :data:`~data_tools.fluent_match.ALIASES`), and the split unit (``family_key``).
* :mod:`data_tools.fluent_plan`: matching a whole package, the seeded train/val split by
  family, the classes of both targets (:class:`~data_tools.fluent_plan.Settings`).
* :mod:`data_tools.fluent_render`: SVG -> PNG, by worker processes.
* :mod:`data_tools.fluent_target`: a target folder: images, ``emoji.jsonl``, ``manifest.json``.
* :mod:`data_tools.fluent_convert`: the resumable cache step and its ``sources.json`` entries.

This module is the command line, and keeps the names of the two steps importable from
here (``fetch_fluent_emoji``, ``convert_fluent_emoji``, ``PACKAGE_DIR``, ``OUT_DIR``,
``Settings``, and ``family_key``, which ``manifest.json`` names as
``data_tools.fetch_fluent_emoji.family_key``).

Run alone: ``python -m data_tools.fetch_fluent_emoji --cache data/raw [--workers N]``.
"""

from __future__ import annotations

from .common import cache_parser, run_cli
from .fluent_convert import OUT_DIR, convert_fluent_emoji, render_workers
from .fluent_fetch import PACKAGE_DIR, fetch_fluent_emoji
from .fluent_match import family_key
from .fluent_plan import Settings

__all__ = ["OUT_DIR", "PACKAGE_DIR", "Settings", "convert_fluent_emoji", "family_key", "fetch_fluent_emoji", "main"]


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m data_tools.fetch_fluent_emoji [--cache data/raw] [--workers N] [--force]``."""
    ap = cache_parser(__doc__)
    ap.add_argument("--workers", type=int, default=None, help=f"render processes (default: {render_workers()})")
    ap.add_argument("--force", action="store_true", help="fetch and render again")
    ap.add_argument("--seed", type=int, default=Settings.seed, help="split seed (default 0)")
    ap.add_argument("--val-fraction", type=float, default=Settings.val_fraction)
    ap.add_argument(
        "--min-class-units", type=int, default=Settings.min_class_units, help="smallest class, in emoji families (default 8)"
    )
    args = ap.parse_args(argv)
    settings = Settings(seed=args.seed, val_fraction=args.val_fraction, min_class_units=args.min_class_units)

    def action() -> None:
        fetch_fluent_emoji(args.cache, force=args.force)
        convert_fluent_emoji(args.cache, force=args.force, workers=args.workers, settings=settings)

    return run_cli(action)


if __name__ == "__main__":
    raise SystemExit(main())
