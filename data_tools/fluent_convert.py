"""The Fluent Emoji step of the converted cache: render ``<cache>/fluent_emoji/`` once, resumably.

:func:`convert_fluent_emoji` reads the fetched package and labels
(:mod:`data_tools.fluent_fetch`), plans (:mod:`data_tools.fluent_plan`) and renders
(:func:`data_tools.fluent_target.render_target`) both targets into ``<cache>/fluent_emoji/``
with a ``.complete.json`` marker, and records them in ``converted/sources.json`` as the
sources ``fluent_emoji_subgroup`` and ``fluent_emoji_group``. The render is resumable: it
runs in ``<cache>/.fluent_emoji.partial/`` whose images are written atomically and kept
by a rerun with the same plan; a finished output with the same inputs and settings is
skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping

from pipeline.io.atomic import fsync_dir
from pipeline.system import available_cores

from .common import LOG, SourceError, atomic_write_json, marker_fingerprint, read_marker, remove_path, write_marker
from .fetch_npm import EMOJIBASE_DATA
from .fluent_fetch import (
    EMOJIBASE_MESSAGES,
    LICENSE,
    PACKAGE,
    PACKAGE_DIR,
    SOURCE,
    TARBALL,
    TARBALL_SHA256,
    VERSION,
    read_svgs,
    svg_names,
)
from .fluent_plan import DEFAULT_SETTINGS, SPLITS, TARGETS, Plan, Settings, plan_images
from .fluent_target import render_target
from .index_io import SOURCES_JSON, converted_dir, update_sources

OUT_DIR = "fluent_emoji"
MAX_RENDER_WORKERS = 4  # render processes by default: the cores this process may use, at most this many


def render_workers() -> int:
    """Render processes by default: :func:`pipeline.system.available_cores` (CPU affinity, cgroup
    quota, ``SLURM_CPUS_PER_TASK``), at most :data:`MAX_RENDER_WORKERS`."""
    return min(MAX_RENDER_WORKERS, available_cores())


def _load_json(path: Path, what: str, source: str = SOURCE):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(source, f"cannot read {what} {path}: {exc}") from exc


def _plan_digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def convert_fluent_emoji(
    cache: Path, force: bool = False, workers: int | None = None, settings: Settings = DEFAULT_SETTINGS
) -> dict:
    """Render ``<cache>/fluent_emoji/`` and record both targets in ``converted/sources.json``.

    Skipped (the existing manifest returned) when ``<cache>/fluent_emoji/.complete.json``
    records the same inputs and settings, unless ``force``. An interrupted render resumes
    from ``<cache>/.fluent_emoji.partial/`` if its plan is unchanged.

    Returns:
        the manifest.

    Raises:
        SourceError: an input is not fetched or unreadable, or a render failed.
    """
    cache = Path(cache)
    inputs, fp_pkg = fetched_inputs(cache, SOURCE, PACKAGE_DIR, f"{PACKAGE}@{VERSION}", TARBALL_SHA256)
    pkg = cache / PACKAGE_DIR

    def load() -> tuple[dict[str, bytes], Plan]:
        svgs = read_svgs(pkg / TARBALL)
        return svgs, plan_images(svg_names(svgs), *emojibase_labels(cache, SOURCE))

    return render_emoji_targets(cache, SOURCE, OUT_DIR, inputs, fp_pkg, load, force, workers, settings, "Fluent Emoji", LICENSE)


def fetched_inputs(cache: Path, source: str, package_dir: str, package: str, tarball_sha256: str) -> tuple[dict, str]:
    """The ``inputs`` an emoji target's render records (package, tarball SHA-256, labels, both fetch markers'
    fingerprints) and the package marker's fingerprint.

    Raises:
        SourceError: ``<cache>/<package_dir>`` or ``<cache>/npm`` is not fetched (the message names the fetch command).
    """
    pkg, npm = Path(cache) / package_dir, Path(cache) / "npm"
    fp_pkg, fp_npm = marker_fingerprint(pkg), marker_fingerprint(npm)
    if fp_pkg is None or fp_npm is None:
        raise SourceError(
            source, f"{pkg if fp_pkg is None else npm} is not complete: run `python -m data_tools.fetch_demo --only npm {source}`"
        )
    inputs = {
        "package": package,
        "tarball_sha256": tarball_sha256,
        "labels": "emojibase-data@17.0.0",
        "package_marker_sha256": fp_pkg,
        "npm_marker_sha256": fp_npm,
    }
    return inputs, fp_pkg


def emojibase_labels(cache: Path, source: str) -> tuple[list, dict]:
    """emojibase-data's ``en/data.json`` entries and ``en/messages.json`` of the ``npm`` source in ``cache``.

    Raises:
        SourceError: (naming ``source``) a file is missing or unreadable.
    """
    npm = Path(cache) / "npm"
    return _load_json(npm / EMOJIBASE_DATA, "emojibase data", source), _load_json(
        npm / EMOJIBASE_MESSAGES, "emojibase messages", source
    )


def render_emoji_targets(
    cache: Path,
    source: str,
    out_dir: str,
    inputs: dict,
    fingerprint: str,
    load: Callable[[], tuple[Mapping[str, bytes], Plan]],
    force: bool,
    workers: int | None,
    settings: Settings,
    what: str,
    license: str,
) -> dict:
    """Render an emoji set's ``subgroup`` and ``group`` targets into ``<cache>/<out_dir>/``, resumably, and
    record them in ``converted/sources.json`` as ``<source>_subgroup`` and ``<source>_group``.

    Skipped (the existing manifest returned) when the folder's ``.complete.json`` records the same
    ``inputs`` and ``settings``, unless ``force``. Else ``load()`` gives the SVGs (``FluentImage.member`` ->
    bytes) and the plan (:func:`data_tools.fluent_plan.plan_images`), rendered into
    ``<cache>/.<out_dir>.partial/`` (kept by a rerun of the same plan) and renamed into place.

    Returns:
        the manifest.

    Raises:
        SourceError: an input is unreadable, or a render failed.
    """
    cache = Path(cache)
    final = cache / out_dir
    state = {"inputs": inputs, "settings": asdict(settings)}
    digest = _plan_digest(state)
    done = read_marker(final)
    if not force and done is not None and done.get("plan_sha256") == digest and (final / "manifest.json").is_file():
        LOG.info("%s: %s already complete, skipping", source, final)
        manifest = _load_json(final / "manifest.json", "manifest", source)
    else:
        try:
            svgs, plan = load()
        except (OSError, tarfile.TarError, ValueError) as exc:
            raise SourceError(source, str(exc)) from exc
        if plan.unmatched:
            LOG.warning(
                "%s: %d SVGs match no emojibase emoji (left out): %s", source, len(plan.unmatched), ", ".join(plan.unmatched[:10])
            )
        partial = final.with_name(f".{final.name}.partial")
        plan_file = partial / ".plan.json"
        if partial.exists() and (
            force or not plan_file.is_file() or _load_json(plan_file, "plan", source).get("plan_sha256") != digest
        ):
            remove_path(partial)
        partial.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_file, {"plan_sha256": digest, **state})
        manifest = render_target(svgs, plan, partial, settings, workers or render_workers(), inputs, what, license, source)
        write_marker(partial, source, plan_sha256=digest, counts=manifest["counts"])
        plan_file.unlink()
        old = final.with_name(f".{final.name}.old")
        remove_path(old)
        if final.exists():
            os.replace(final, old)
        os.replace(partial, final)
        fsync_dir(final.parent)
        remove_path(old)
        c = manifest["counts"]
        LOG.info(
            "%s: wrote %s (%s images of %s emoji, %s left out)",
            source,
            final,
            f"{c['matched_images']:,}",
            f"{c['distinct_emoji']:,}",
            c["left_out_files"],
        )
    for target in TARGETS:
        t = manifest["targets"][target]
        entry = {
            "format": "imagefolder",
            "root": f"{out_dir}/{target}",
            "splits": {s: f"{out_dir}/{target}/{s}" for s in SPLITS},
            "classes": f"{out_dir}/manifest.json",
            "count": sum(t["counts"][s]["images"] for s in SPLITS),
            "counts": {s: t["counts"][s]["images"] for s in SPLITS},
            "n_classes": t["n_classes"],
            "license": license,
            "input_fingerprint": fingerprint,
        }
        update_sources(converted_dir(cache) / SOURCES_JSON, f"{source}_{target}", entry)
    return manifest
