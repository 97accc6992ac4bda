"""Build the committed test fixture ``tests/fixtures/corpus/`` from a converted cache.

Usage: ``python -m data_tools.make_fixtures [--cache data/raw] [--out tests/fixtures/corpus]``

A small real subset (file bytes copied, symlinks resolved into plain copies) with its
own indexes in the folder+index schema (roots are the fixture subfolders) and a
``sources.json`` (``base`` "."). Choices are fixed lists or sorted rules, never random,
so a rebuild from the same cache gives the same files. The folder is built under a
staged name and swapped in at the end; ``README.md`` is generated (provenance,
licenses, near-duplicate groups by id).

Raises SourceError (exit 1) if the cache lacks a converted source or a chosen item.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .common import LOG, SourceError, atomic_write_json, atomic_write_text, cache_parser, run_cli, staged_dir
from .convert_emoji import normalize_hexcode
from .fetch_npm import EMOJIBASE_DATA
from .index_io import SOURCES_JSON, converted_dir, read_index, read_sources, write_index
from .to_img2dataset import Sample, to_img2dataset

MAX_FIXTURE_BYTES = 3 * 1024 * 1024
SMALL_PNG = 40 * 1024
FIXED_TIME = 1_700_000_000.0  # stats/tar timestamps of the img2dataset shards

# Emoji (emojibase hexcodes; FE0F is ignored when matching the files).
EMOJI_SKIN_GROUPS = ("1F44B", "1F44D")  # waving hand, thumbs up: base + 5 skin tones each
SKIN_TONES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
EMOJI_OTHERS = (
    "1F9D1-1F3FB-200D-1F91D-200D-1F9D1-1F3FC",  # people holding hands, two tones (list tone)
    "1F600",
    "2764-FE0F",
    "0023-FE0F-20E3",
    "1F1FA-1F1F8",
    "1F436",
    "1F415",
    "1F431",
    "1F34E",
    "1F697",
    "2600-FE0F",
    "1F3E0",
    "1F4BB",
    "1F468-200D-1F469-200D-1F467",
    "1F3F3-FE0F-200D-1F308",
    "1F441-FE0F-200D-1F5E8-FE0F",
)
# Openclipart: a symlinked pair whose SVGs declare Adobe DTD entities.
OPENCLIPART_PAIR = ("computer/floppy_frederic_moser_01.png", "office/floppy_frederic_moser_01.png")
OPENCLIPART_STARS = 5
OPENCLIPART_SVG_STARS = 2
OPENCLIPART_SVG_SPREAD = 2
SMALL_SVG = 20 * 1024
TUXPAINT_PAIRS = 2
TUXPAINT_SINGLES = 6
FASHION_PER_CLASS = {"train": 5, "val": 3}
I2D_TAKE = {"emoji_google": 8, "openclipart": 8, "tuxpaint": 4}
I2D_PER_SHARD = 10

LICENSES = {
    "emoji_google": "Apache-2.0 (Noto Emoji, via emoji-datasource-google 16.0.0)",
    "emoji_twitter": "CC-BY-4.0 (Twemoji by Twitter, Inc and other contributors, via emoji-datasource-twitter 16.0.0)",
    "emojibase": "MIT (emojibase-data 17.0.0, en/data.json)",
    "openclipart": "public domain (Open Clip Art Library, Debian openclipart-png/-svg 1:0.18+dfsg-19)",
    "tuxpaint": "GPL-2.0 (Tux Paint stamps, Debian tuxpaint-stamps-default 2022.06.04-1)",
    "fashion_mnist": "MIT (Fashion-MNIST by Zalando Research, Debian dataset-fashion-mnist)",
}


def _load(cache: Path, name: str) -> tuple[dict, Path, list[dict]]:
    """(sources.json entry, absolute root, rows) of a converted source."""
    entry = read_sources(converted_dir(cache) / SOURCES_JSON)["sources"].get(name)
    if not entry:
        raise SourceError(name, f"not converted in {cache}: run `python -m data_tools.fetch_demo` first")
    rows = read_index(cache / entry["index"]) if "index" in entry else []
    return entry, cache / entry["root"], rows


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)  # follows symlinks: the fixture holds plain copies


# --------------------------------------------------------------------------- emoji


def pick_emoji(rows_by_vendor: dict[str, list[dict]]) -> list[str]:
    """Stems of the chosen emoji, present in every vendor (sorted)."""
    wanted = [normalize_hexcode(h) for h in EMOJI_SKIN_GROUPS]
    wanted += [normalize_hexcode(f"{h}-{t}") for h in EMOJI_SKIN_GROUPS for t in SKIN_TONES]
    wanted += [normalize_hexcode(h) for h in EMOJI_OTHERS]
    stems = []
    for norm in wanted:
        per_vendor = {v: [r["id"] for r in rows if normalize_hexcode(r["id"]) == norm] for v, rows in rows_by_vendor.items()}
        if any(len(ids) != 1 for ids in per_vendor.values()) or len({ids[0] for ids in per_vendor.values()}) != 1:
            raise SourceError("emoji", f"fixture emoji {norm} is not present exactly once in every vendor")
        stems.append(next(iter(per_vendor.values()))[0])
    return sorted(stems)


def build_emoji(cache: Path, out: Path, index_out: dict[str, list[dict]]) -> list[list[str]]:
    """Copy the chosen emoji of both vendors and an emojibase excerpt; return skin groups."""
    srcs = {v: _load(cache, f"emoji_{v}") for v in ("google", "twitter")}
    stems = pick_emoji({v: s[2] for v, s in srcs.items()})
    for vendor, (_e, root, rows) in srcs.items():
        by_id = {r["id"]: r for r in rows}
        for stem in stems:
            _copy(root / by_id[stem]["path"], out / f"emoji_{vendor}" / by_id[stem]["path"])
        index_out[f"emoji_{vendor}"] = [by_id[s] for s in stems]
    data = json.loads((cache / "npm" / EMOJIBASE_DATA).read_text(encoding="utf-8"))
    norms = {normalize_hexcode(s) for s in stems}
    excerpt = [
        e
        for e in data
        if normalize_hexcode(e["hexcode"]) in norms or any(normalize_hexcode(k["hexcode"]) in norms for k in e.get("skins", []))
    ]
    atomic_write_text(out / "emojibase_excerpt.json", json.dumps(excerpt, ensure_ascii=False, indent=1) + "\n")
    google = {r["id"]: r for r in index_out["emoji_google"]}
    groups = []
    for base in EMOJI_SKIN_GROUPS:
        b = normalize_hexcode(base)
        groups.append(sorted(s for s in stems if normalize_hexcode(s) == b or google[s]["meta"].get("parent_hexcode") == base))
    return groups


# --------------------------------------------------------------------------- openclipart


def pick_openclipart(rows: list[dict], root: Path) -> dict[str, list[str]]:
    """Chosen ids by role: pair, stars, no_keywords, spread (one per category)."""
    by_id = {r["id"]: r for r in rows}

    def small(r: dict) -> bool:
        return (root / r["path"]).stat().st_size < SMALL_PNG and (r["meta"].get("width") or 0) >= 8

    for rid in OPENCLIPART_PAIR:
        if rid not in by_id or not small(by_id[rid]):
            raise SourceError("openclipart", f"fixture image {rid} missing or not small")
    if not by_id[OPENCLIPART_PAIR[1]]["meta"]["is_symlink"]:
        raise SourceError("openclipart", f"{OPENCLIPART_PAIR[1]} is expected to be a symlink")
    stars = [r["id"] for r in rows if r["id"].startswith("shapes/stars/") and "magick" in r["tags"] and small(r)][
        :OPENCLIPART_STARS
    ]
    chosen = set(OPENCLIPART_PAIR) | set(stars)
    no_kw = [r["id"] for r in rows if r["meta"]["n_keywords"] == 0 and small(r) and r["id"] not in chosen][:1]
    chosen |= set(no_kw)
    spread = []
    for cat in sorted({r["meta"]["category"] for r in rows}):
        for r in rows:
            if (
                r["meta"]["category"] == cat
                and r["id"] not in chosen
                and not r["meta"]["is_symlink"]
                and r["meta"]["n_keywords"] > 0
                and small(r)
                and (r["meta"].get("width") or 0) >= 32
                and (root / r["path"]).stat().st_size < SMALL_PNG // 2
            ):
                spread.append(r["id"])
                break
    if len(stars) < OPENCLIPART_STARS or not no_kw:
        raise SourceError("openclipart", "not enough small star or keyword-less images for the fixture")
    return {"pair": list(OPENCLIPART_PAIR), "stars": stars, "no_keywords": no_kw, "spread": spread}


def build_openclipart(cache: Path, out: Path, index_out: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Copy the chosen PNGs and a few of their SVGs (under ``openclipart_svg/``)."""
    _entry, root, rows = _load(cache, "openclipart")
    svg_root = root.parent / "svg"
    roles = pick_openclipart(rows, root)
    by_id = {r["id"]: r for r in rows}
    ids = sorted({i for ids in roles.values() for i in ids})
    for rid in ids:
        _copy(root / by_id[rid]["path"], out / "openclipart" / by_id[rid]["path"])
    index_out["openclipart"] = [by_id[i] for i in ids]

    def svg_small(rid: str) -> bool:
        return (svg_root / (rid[:-4] + ".svg")).stat().st_size <= SMALL_SVG

    svg_ids = [
        *roles["pair"],
        *roles["no_keywords"],
        *roles["stars"][:OPENCLIPART_SVG_STARS],
        *[i for i in roles["spread"] if svg_small(i)][:OPENCLIPART_SVG_SPREAD],
    ]
    for rid in svg_ids:
        rel = rid[:-4] + ".svg"
        _copy(svg_root / rel, out / "openclipart_svg" / rel)
    roles["with_svg"] = sorted(svg_ids)
    return roles


# --------------------------------------------------------------------------- tuxpaint


def pick_tuxpaint(rows: list[dict], root: Path) -> dict[str, list[str]]:
    """Chosen ids by role: pairs (PNG+SVG stems), mirror (mirror + original), singles."""
    size = {r["id"]: (root / r["path"]).stat().st_size for r in rows}
    by_id = {r["id"]: r for r in rows}
    pngs_with_pair = sorted(
        (size[r["id"]] + size[r["meta"]["pair"]], r["id"])
        for r in rows
        if r["meta"]["format"] == "png" and r["meta"]["pair"] and r["meta"]["has_caption"]
    )
    pairs = []
    for _s, rid in pngs_with_pair[:TUXPAINT_PAIRS]:
        pairs += [rid, by_id[rid]["meta"]["pair"]]
    mirrors = sorted(
        (size[r["id"]] + size[r["meta"]["mirror_of"]], r["id"])
        for r in rows
        if r["meta"]["mirror"] and r["meta"].get("mirror_of")
    )
    mirror = [mirrors[0][1], by_id[mirrors[0][1]]["meta"]["mirror_of"]] if mirrors else []
    chosen = set(pairs) | set(mirror)
    singles = []
    for top in sorted({r["id"].split("/", 1)[0] for r in rows}):
        cands = sorted(
            (size[r["id"]], r["id"])
            for r in rows
            if r["id"].startswith(top + "/")
            and r["meta"]["format"] == "png"
            and r["id"] not in chosen
            and not r["meta"]["pair"]
            and not r["meta"]["mirror"]
            and r["meta"]["has_caption"]
            and size[r["id"]] < SMALL_PNG // 2
            and (r["meta"].get("width") or 0) >= 32
        )
        if cands:
            singles.append(cands[0][1])
        if len(singles) >= TUXPAINT_SINGLES:
            break
    return {"pairs": pairs, "mirror": mirror, "singles": singles}


def build_tuxpaint(cache: Path, out: Path, index_out: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Copy the chosen stamps with their caption ``.txt`` files."""
    _entry, root, rows = _load(cache, "tuxpaint")
    roles = pick_tuxpaint(rows, root)
    by_id = {r["id"]: r for r in rows}
    ids = sorted({i for ids in roles.values() for i in ids})
    for rid in ids:
        row = by_id[rid]
        _copy(root / row["path"], out / "tuxpaint" / row["path"])
        if row["meta"]["caption_from"]:
            _copy(root / row["meta"]["caption_from"], out / "tuxpaint" / row["meta"]["caption_from"])
    index_out["tuxpaint"] = [by_id[i] for i in ids]
    return roles


# --------------------------------------------------------------------------- fashion


def build_fashion(cache: Path, out: Path) -> dict[str, int]:
    """Copy the first 5 train / 3 val PNGs of each class and ``classes.json``."""
    entry, root, _rows = _load(cache, "fashion_mnist")
    classes = json.loads((cache / entry["classes"]).read_text(encoding="utf-8"))
    counts = {}
    for split, n in FASHION_PER_CLASS.items():
        for cls in classes["classes"]:
            files = sorted((root / split / cls).glob("*.png"))[:n]
            if len(files) < n:
                raise SourceError("fashion_mnist", f"{split}/{cls} has fewer than {n} images")
            for f in files:
                _copy(f, out / "fashion_mnist" / split / cls / f.name)
        counts[split] = n * len(classes["classes"])
    classes["counts"] = {s: {c: n for c in classes["classes"]} for s, n in FASHION_PER_CLASS.items()}
    classes["note"] = "fixture subset: the first images (by index) of each class"
    atomic_write_json(out / "fashion_mnist" / "classes.json", classes)
    return counts


# --------------------------------------------------------------------------- main


def build_img2dataset(out: Path, index_out: dict[str, list[dict]]) -> list[str]:
    """Shards made by :mod:`data_tools.to_img2dataset` from fixture images; return tar names."""
    samples = []
    for source, n in I2D_TAKE.items():
        rows = [r for r in index_out[source] if r["path"].endswith(".png")][:n]
        samples += [Sample(source, r, out / source / r["path"]) for r in rows]
    stats = to_img2dataset(samples, out / "img2dataset", samples_per_shard=I2D_PER_SHARD, fixed_time=FIXED_TIME, seed=0)
    if sum(s["successes"] for s in stats) != len(samples):
        raise SourceError("img2dataset", "some fixture images failed to convert")
    return sorted(p.name for p in (out / "img2dataset").glob("*.tar"))


def write_sources(out: Path, index_out: dict[str, list[dict]], fashion: dict[str, int]) -> None:
    """Write the fixture indexes and ``sources.json`` (paths relative to the fixture folder)."""
    entries = {}
    for name, rows in sorted(index_out.items()):
        n = write_index(out / f"{name}.jsonl", rows)
        entries[name] = {
            "format": "folder+index",
            "root": name,
            "index": f"{name}.jsonl",
            "count": n,
            "license": LICENSES[name],
            "fixture_of": name,
        }
    entries["fashion_mnist"] = {
        "format": "imagefolder",
        "root": "fashion_mnist",
        "splits": {"train": "fashion_mnist/train", "val": "fashion_mnist/val"},
        "classes": "fashion_mnist/classes.json",
        "count": sum(fashion.values()),
        "counts": fashion,
        "license": LICENSES["fashion_mnist"],
        "fixture_of": "fashion_mnist",
    }
    atomic_write_json(out / SOURCES_JSON, {"format_version": 1, "base": ".", "sources": entries})


def render_readme(
    emoji_groups: list[list[str]],
    oc: dict[str, list[str]],
    tux: dict[str, list[str]],
    tars: list[str],
    index_out: dict[str, list[dict]],
) -> str:
    """The fixture's README.md text."""

    def ids(xs: list[str]) -> str:
        return ", ".join(f"`{x}`" for x in xs)

    counts = {k: len(v) for k, v in index_out.items()}
    return f"""# Demo corpus fixture

A small **real** subset of the demo corpus sources, made by
`python -m data_tools.make_fixtures --cache data/raw --out tests/fixtures/corpus`
(deterministic: fixed lists and sorted rules, no randomness). File bytes are copied
from the packages (symlinks resolved into plain copies). Do not edit by hand: rebuild.

It is laid out like a converted cache: `sources.json` (`"base": "."`: roots and
indexes are relative to this folder) and one folder+index JSONL per source, in the
schema `{{"id", "path" (relative to the root), "tags", "caption"?, "meta"}}`. The
index rows are copied from the full conversion, so `meta` describes the original
files (e.g. `is_symlink` is true for the copy of a symlink).

## Parts, provenance and license

| part | count | from | license |
|---|---|---|---|
| `emoji_google/`, `emoji_google.jsonl` | {counts["emoji_google"]} | npm emoji-datasource-google 16.0.0, `img/google/64` | {LICENSES["emoji_google"]} |
| `emoji_twitter/`, `emoji_twitter.jsonl` | {counts["emoji_twitter"]} | npm emoji-datasource-twitter 16.0.0, `img/twitter/64` | {LICENSES["emoji_twitter"]} |
| `emojibase_excerpt.json` | entries of the chosen emoji | npm emojibase-data 17.0.0 `en/data.json` | {LICENSES["emojibase"]} |
| `openclipart/`, `openclipart.jsonl` | {counts["openclipart"]} | Debian openclipart-png, `usr/share/openclipart/png` | {LICENSES["openclipart"]} |
| `openclipart_svg/` | {len(oc["with_svg"])} | Debian openclipart-svg (the tag source of those PNGs) | {LICENSES["openclipart"]} |
| `tuxpaint/`, `tuxpaint.jsonl` | {counts["tuxpaint"]} stamps + caption `.txt` | Debian tuxpaint-stamps-default | {LICENSES["tuxpaint"]} |
| `fashion_mnist/` | 5 train + 3 val per class | Debian dataset-fashion-mnist, decoded to PNG | {LICENSES["fashion_mnist"]} |
| `img2dataset/` | {", ".join(tars)} | `data_tools.to_img2dataset` over fixture images | as the images they hold |

## What the special files are for

- Emoji skin-tone groups (near duplicates under pHash, same vendor), one per line:
{chr(10).join("  - " + ids(g) for g in emoji_groups)}
- `1f9d1-1f3fb-200d-1f91d-200d-1f9d1-1f3fc` has a two-person skin tone (`meta.skin_tone` is a list).
- Emoji whose file names contain `fe0f` (joined with emojibase after removing FE0F):
  {ids([r["id"] for r in index_out["emoji_google"] if "fe0f" in r["id"]])}.
- The same hexcode in `emoji_google/` and `emoji_twitter/` is the same concept drawn
  by two vendors: related, not duplicates.
- Openclipart exact duplicates (a symlinked copy in the package, here two copies):
  {ids(oc["pair"])}. Their SVGs declare Adobe DTD entities (`<!ENTITY ns_svg ...>`),
  which the safe SVG parser must handle.
- Openclipart "magick/stars" spirograph near duplicates: {ids(oc["stars"])}.
- Openclipart image without keywords (its only tag is its title): {ids(oc["no_keywords"])}.
- Openclipart spread, one per category: {ids(oc["spread"])}.
- `openclipart_svg/` holds the SVGs of {ids(oc["with_svg"])}, for the keyword parser.
- Tux Paint stems in both PNG and SVG (the same drawing twice): {ids(tux["pairs"])}.
- Tux Paint pre-mirrored stamp and its original (mirror image near duplicate; the
  mirror has no `.txt` and takes its caption from the original's): {ids(tux["mirror"])}.
- Tux Paint other stamps: {ids(tux["singles"])}.
- `img2dataset/`: tars in img2dataset's webdataset layout (`KEY.jpg`, `KEY.json`,
  `KEY.txt` with `#hashtags`, members not in key order, `NNNNN_stats.json`), made with
  fixed timestamps; `python -m data_tools.inspect_shards tests/fixtures/corpus/img2dataset/*.tar`.
"""


def make_fixtures(cache: Path, out: Path) -> int:
    """Build the fixture folder ``out`` from ``cache``; return its size in bytes.

    Raises:
        SourceError: a source is missing from the cache or a chosen item is absent.
    """
    cache, out = Path(cache), Path(out)
    index_out: dict[str, list[dict]] = {}
    with staged_dir(out) as tmp:
        emoji_groups = build_emoji(cache, tmp, index_out)
        oc = build_openclipart(cache, tmp, index_out)
        tux = build_tuxpaint(cache, tmp, index_out)
        fashion = build_fashion(cache, tmp)
        tars = build_img2dataset(tmp, index_out)
        write_sources(tmp, index_out, fashion)
        atomic_write_text(tmp / "README.md", render_readme(emoji_groups, oc, tux, tars, index_out))
        total = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if total > MAX_FIXTURE_BYTES:
            raise SourceError("fixtures", f"fixture is {total:,} bytes, over the {MAX_FIXTURE_BYTES:,} budget")
    LOG.info("fixtures: wrote %s (%s bytes, %d files)", out, f"{total:,}", sum(1 for p in out.rglob("*") if p.is_file()))
    return total


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = cache_parser(__doc__)
    ap.prog = "python -m data_tools.make_fixtures"
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/corpus"), help="fixture folder")
    args = ap.parse_args(argv)
    return run_cli(lambda: make_fixtures(args.cache, args.out))


if __name__ == "__main__":
    raise SystemExit(main())
