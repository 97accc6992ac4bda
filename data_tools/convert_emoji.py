"""Convert the Google and Twitter emoji PNGs into folder+index sources.

Each ``<hexcode>.png`` of ``emoji-datasource-<vendor>/img/<vendor>/64`` is joined with
emojibase-data ``en/data.json`` on the hexcode, after removing ``FE0F`` (variation
selector 16) from both sides and comparing case-insensitively. Emojibase's ``skins``
sub-entries (with their own hexcode and ``tone``) are joined too.

Row: ``id`` = file stem as shipped (e.g. ``1f44b-1f3fb``), ``path`` = ``<stem>.png``,
``tags`` = [label] + emojibase tags (skin variants have no tags of their own and
inherit their parent's), ``meta`` = hexcode (emojibase's), group, subgroup,
skin_tone (int 1-5, a list for multi-person tones, or None), vendor, emoji, and
``parent_hexcode`` for skin variants. Images without a match are kept with ``tags``
[] and ``meta.unmatched`` true, and counted.

Run alone: ``python -m data_tools.convert_emoji --cache data/raw``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from .common import LOG, SourceError, cache_parser, marker_fingerprint, run_cli
from .fetch_npm import EMOJIBASE_DATA, VENDORS, vendor_image_dir
from .index_io import make_row, publish_index

LICENSES = {
    "google": "Apache-2.0 (Noto Emoji); labels: emojibase-data MIT",
    "twitter": "CC-BY-4.0 (Twemoji); labels: emojibase-data MIT",
}


def normalize_hexcode(hexcode: str) -> str:
    """Upper-case hexcode without ``FE0F`` parts: ``"2764-fe0f"`` -> ``"2764"``."""
    return "-".join(p for p in hexcode.strip().upper().split("-") if p and p != "FE0F")


def emojibase_lookup(entries: Iterable[dict]) -> dict[str, dict]:
    """Map normalized hexcode -> info dict for every emojibase entry and skin variant.

    Info: label, tags, hexcode, group, subgroup, skin_tone, emoji, parent_hexcode.

    Raises:
        ValueError: if two entries normalize to the same hexcode, or an entry has no hexcode.
    """
    table: dict[str, dict] = {}

    def add(entry: dict, parent: dict | None) -> None:
        if not entry.get("hexcode"):
            raise ValueError(f"emojibase entry without hexcode: {entry.get('label')!r}")
        key = normalize_hexcode(entry["hexcode"])
        if key in table:
            raise ValueError(f"two emojibase entries normalize to {key}")
        tags = entry.get("tags") or (parent.get("tags") if parent else None) or []
        table[key] = {
            "label": entry.get("label") or "",
            "tags": list(tags),
            "tags_from_parent": parent is not None and not entry.get("tags"),
            "hexcode": entry["hexcode"],
            "group": entry.get("group", parent.get("group") if parent else None),
            "subgroup": entry.get("subgroup", parent.get("subgroup") if parent else None),
            "skin_tone": entry.get("tone"),
            "emoji": entry.get("emoji"),
            "parent_hexcode": parent["hexcode"] if parent else None,
        }

    for entry in entries:
        add(entry, None)
        for skin in entry.get("skins") or []:
            add(skin, entry)
    return table


def emoji_rows(image_dir: Path, lookup: dict[str, dict], vendor: str) -> tuple[list[dict], list[str]]:
    """Build index rows for every PNG in ``image_dir``; return (rows, unmatched stems)."""
    rows, unmatched = [], []
    for png in sorted(image_dir.glob("*.png")):
        stem = png.stem
        info = lookup.get(normalize_hexcode(stem))
        if info is None:
            unmatched.append(stem)
            rows.append(
                make_row(
                    stem,
                    png.name,
                    [],
                    hexcode=stem.upper(),
                    group=None,
                    subgroup=None,
                    skin_tone=None,
                    vendor=vendor,
                    unmatched=True,
                )
            )
            continue
        meta = {k: info[k] for k in ("hexcode", "group", "subgroup", "skin_tone", "emoji")}
        meta["vendor"] = vendor
        if info["parent_hexcode"]:
            meta["parent_hexcode"] = info["parent_hexcode"]
            meta["tags_from_parent"] = info["tags_from_parent"]
        rows.append(make_row(stem, png.name, [info["label"], *info["tags"]], **meta))
    return rows, unmatched


def load_emojibase(path: Path) -> list[dict]:
    """Parse emojibase ``data.json`` (a list of entries).

    Raises:
        SourceError: if it is missing or not a JSON list.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError("emoji", f"cannot read emojibase data {path}: {exc}") from exc
    if not isinstance(data, list):
        raise SourceError("emoji", f"{path}: expected a JSON list of emoji")
    return data


def convert_emoji(cache: Path, vendors: Iterable[str] = VENDORS) -> dict[str, dict]:
    """Write ``converted/emoji_<vendor>.jsonl`` and their sources.json entries.

    Returns:
        source name -> sources.json entry.

    Raises:
        SourceError: the npm source is not fetched or the emojibase data is unreadable.
    """
    cache = Path(cache)
    npm = cache / "npm"
    fingerprint = marker_fingerprint(npm)
    if fingerprint is None:
        raise SourceError("emoji", f"{npm} is not complete: run `python -m data_tools.fetch_demo --only npm`")
    lookup = emojibase_lookup(load_emojibase(npm / EMOJIBASE_DATA))
    entries = {}
    for vendor in vendors:
        name = f"emoji_{vendor}"
        image_dir = npm / vendor_image_dir(vendor)
        if not image_dir.is_dir():
            raise SourceError(name, f"image folder {image_dir} does not exist")
        rows, unmatched = emoji_rows(image_dir, lookup, vendor)
        if unmatched:
            LOG.warning(
                "%s: %d images have no emojibase entry (kept, tags []): %s", name, len(unmatched), ", ".join(unmatched[:10])
            )
        counts = {
            "images": len(rows),
            "unmatched": len(unmatched),
            "skin_variants": sum(1 for r in rows if "parent_hexcode" in r["meta"]),
            "distinct_tags": len({t for r in rows for t in r["tags"]}),
        }
        entry = publish_index(cache, name, rows, f"npm/{vendor_image_dir(vendor)}", counts, LICENSES[vendor], fingerprint)
        LOG.info("%s: wrote %s (%d rows, %d unmatched)", name, entry["index"], entry["count"], len(unmatched))
        entries[name] = entry
    return entries


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m data_tools.convert_emoji [--cache data/raw] [--vendor google ...]``."""
    ap = cache_parser(__doc__)
    ap.add_argument("--vendor", nargs="+", choices=VENDORS, default=list(VENDORS))
    args = ap.parse_args(argv)
    return run_cli(lambda: convert_emoji(args.cache, args.vendor))


if __name__ == "__main__":
    raise SystemExit(main())
