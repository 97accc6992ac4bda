"""Layout and manifest writing of the Fluent Emoji targets: one folder holding both.

:func:`render_target` fills a folder with the two targets in the ImageNet folder layout::

    <out>/subgroup/{train,val}/<subgroup-key>/<name>.<style>.png
    <out>/group/{train,val}/<group-key>/<name>.<style>.png

e.g. ``subgroup/train/animal-mammal/dog-face.modern.png``, each image 64x64 RGB on white
(:mod:`data_tools.fluent_render`). The group target holds the same images (hard links
where the file system allows) plus those of subgroups too small to be classes. Besides the
images: ``manifest.json`` (:func:`build_manifest`: inputs, seed, thresholds, counts per
split and class, left-out names, dropped classes) and ``emoji.jsonl`` (:func:`emoji_rows`:
one row per emoji: hexcode, label, family, emojibase group and subgroup, split, files
``<style>/<stem>``, and ``classes``: target -> its class there, for the targets it is in).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

from .common import atomic_write_json, atomic_write_jsonl
from .fluent_fetch import LICENSE, SOURCE, svg_names
from .fluent_plan import DEFAULT_SETTINGS, SPLITS, TARGETS, FluentImage, Plan, Settings, build_layout
from .fluent_render import render_images


def emoji_rows(plan: Plan, layout: dict) -> list[dict]:
    """One row per emoji of ``plan``, sorted by hexcode (the lines of ``emoji.jsonl``).

    Each row: ``hexcode``, ``label``, ``family``, ``group``, ``subgroup``, ``split``,
    ``files`` (``<style>/<stem>``, in plan order) and, for an emoji in at least one target,
    ``classes`` (target -> its class there).
    """
    family_split = layout["family_split"]
    by_emoji: dict[str, dict] = {}
    for im in plan.images:
        row = by_emoji.setdefault(
            im.hexcode,
            {
                "hexcode": im.hexcode,
                "label": im.label,
                "family": im.family,
                "group": im.group,
                "subgroup": im.subgroup,
                "split": family_split[im.family],
                "files": [],
            },
        )
        row["files"].append(f"{im.style}/{im.stem}")
    for target in TARGETS:
        for im, _s, _c, rel in layout["targets"][target]["files"]:
            by_emoji[im.hexcode].setdefault("classes", {})[target] = rel.split("/")[2]
    return sorted(by_emoji.values(), key=lambda r: r["hexcode"])


def split_counts(files: list[tuple[FluentImage, str, str, str]]) -> dict:
    """Images, emoji and families per split, in all and per class, of one target's ``files``
    (``(image, split, class, relpath)`` rows of :func:`data_tools.fluent_plan.build_layout`)."""
    out: dict = {}
    for split in SPLITS:
        rows = [(im, cls) for im, s, cls, _ in files if s == split]
        per_class: dict[str, dict[str, int]] = {}
        for cls in sorted({c for _, c in rows}):
            ims = [im for im, c in rows if c == cls]
            per_class[cls] = {
                "images": len(ims),
                "emoji": len({im.hexcode for im in ims}),
                "families": len({im.family for im in ims}),
            }
        out[split] = {
            "images": len(rows),
            "emoji": len({im.hexcode for im, _ in rows}),
            "families": len({im.family for im, _ in rows}),
            "per_class": per_class,
        }
    return out


def build_manifest(
    plan: Plan,
    layout: dict,
    settings: Settings,
    svg_files: int,
    inputs: dict | None = None,
    what: str = "Fluent Emoji",
    license: str = LICENSE,
) -> dict:
    """The ``manifest.json`` of a target folder.

    Args:
        plan: the matched images; layout: :func:`data_tools.fluent_plan.build_layout` of it.
        svg_files: SVG files of the package (matched or not).
        inputs: recorded as ``inputs`` (versions, fingerprints).
        what: the emoji set's name; license: its license line.
    """
    family_split = layout["family_split"]
    styles = Counter(im.style for im in plan.images)
    manifest = {
        "what": f"{what} rendered as an ImageNet-layout transfer target; train/val split by emoji family",
        "license": license,
        "inputs": inputs or {},
        "settings": asdict(settings),
        # The name below is the public one: data_tools.fetch_fluent_emoji re-exports family_key (data_tools.fluent_match).
        "split_unit": "family: an emoji with all its styles and skin tones, and its man/woman/person forms "
        "(data_tools.fetch_fluent_emoji.family_key)",
        "image": {
            "width": settings.size,
            "height": settings.size,
            "mode": "RGB",
            "format": "png",
            "background": "white",
            "file": "<target>/<split>/<class>/<stem>.<style>.png",
        },
        "counts": {
            "svg_files": svg_files,
            "matched_images": len(plan.images),
            "matched_images_per_style": dict(sorted(styles.items())),
            "distinct_emoji": len({im.hexcode for im in plan.images}),
            "families": len(family_split),
            "families_per_split": dict(sorted(Counter(family_split.values()).items())),
            "left_out_files": len(plan.unmatched) + len(plan.duplicates) + len(plan.no_class),
        },
        "left_out": {"unmatched": plan.unmatched, "duplicates": plan.duplicates, "no_class": plan.no_class},
        "targets": {},
    }
    for target in TARGETS:
        t = layout["targets"][target]
        manifest["targets"][target] = {
            "root": target,
            "classes": t["classes"],
            "n_classes": len(t["classes"]),
            "dropped_classes": t["dropped"],
            "images_not_in_target": len(plan.images) - len(t["files"]),
            "counts": split_counts(t["files"]),
        }
    return manifest


def render_target(
    svgs: Mapping[str, bytes],
    plan: Plan,
    out: Path,
    settings: Settings = DEFAULT_SETTINGS,
    workers: int = 1,
    inputs: dict | None = None,
    what: str = "Fluent Emoji",
    license: str = LICENSE,
    source: str = SOURCE,
) -> dict:
    """Render ``plan`` into the folder ``out`` (both targets, manifest, emoji.jsonl).

    ``out`` is filled in place: images already there (whole PNGs of the right size,
    written atomically by an earlier run of the same plan) are kept, the others are
    rendered by ``workers`` processes (1: in this process). Callers that want an
    all-or-nothing folder render into a partial folder and rename it (as
    :func:`data_tools.fluent_convert.convert_fluent_emoji` does).

    Args:
        svgs: tarball member (``package/icons/<style>/<stem>.svg``) -> SVG bytes.
        inputs: recorded as ``inputs`` in the manifest (versions, fingerprints).
        what, license: the emoji set's name and license line, for the manifest (Fluent Emoji's by default;
            :mod:`data_tools.blob_emoji` renders Noto Emoji v1 with the same layout).
        source: the source name error messages start with.

    Returns:
        the manifest (also written to ``out/manifest.json``).

    Raises:
        SourceError: an SVG of the plan is missing or cannot be rendered.
    """
    out = Path(out)
    layout = build_layout(plan, settings)
    render_images(svgs, plan, layout, out, settings.size, workers, source)
    atomic_write_jsonl(out / "emoji.jsonl", emoji_rows(plan, layout))
    svg_files = sum(len(v) for v in svg_names(svgs).values()) if source == SOURCE else len(svgs)
    manifest = build_manifest(plan, layout, settings, svg_files, inputs, what, license)
    atomic_write_json(out / "manifest.json", manifest)
    return manifest
