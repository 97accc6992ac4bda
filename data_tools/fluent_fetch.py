"""Fetch of the Fluent Emoji package, and reading its SVGs.

:func:`fetch_fluent_emoji`: ``npm pack fluentui-emoji@1.3.0`` (MIT; the Fluent Emoji
artwork, Copyright (c) Microsoft Corporation, repackaged on npm by Mohammad Abu Mattar)
into ``<cache>/fluentui_emoji_npm/``: the 23.8 MB tarball is kept as is (its SHA-256
pinned), with its ``LICENSE`` and ``package.json`` beside it and a ``.complete.json``
marker counting the SVGs of ``package/icons/<style>/<name>.svg``: 3,145 ``modern``,
3,145 ``flat`` and 1,595 ``high-contrast``. The labels come from emojibase-data 17.0.0
of the ``npm`` source (:mod:`data_tools.fetch_npm`), fetched first if missing.

:func:`read_svgs` and :func:`svg_names` read the SVGs back out of the tarball.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Callable, Iterable

from .common import LOG, SourceError, atomic_write_bytes, is_safe_relpath, read_marker, run, sha256_file, staged_dir, write_marker
from .fetch_npm import fetch_npm

SOURCE = "fluent_emoji"
PACKAGE = "fluentui-emoji"
VERSION = "1.3.0"
PACKAGE_DIR = "fluentui_emoji_npm"
TARBALL = f"{PACKAGE}-{VERSION}.tgz"
TARBALL_SHA256 = "ec892e607e854859b812c7d827801756adc19955b0ef56d4ae8afcddd19492c5"
STYLES = ("modern", "flat", "high-contrast")
EXPECTED_SVGS = {"modern": 3145, "flat": 3145, "high-contrast": 1595}
EMOJIBASE_MESSAGES = "node_modules/emojibase-data/en/messages.json"
LICENSE = (
    "MIT (Fluent Emoji, Copyright (c) Microsoft Corporation; npm fluentui-emoji 1.3.0 by Mohammad Abu Mattar); "
    "labels: emojibase-data 17.0.0, MIT"
)


def read_svgs(tarball: Path, members: set[str] | None = None) -> dict[str, bytes]:
    """``package/icons/<style>/<name>.svg`` member -> bytes, from the npm tarball.

    Only regular files with safe relative names are read (``members``: only these).
    """
    out = {}
    with tarfile.open(tarball, "r:gz") as tf:
        for m in tf:
            name = m.name
            if not (m.isfile() and is_safe_relpath(name)):
                continue
            if not (name.startswith("package/icons/") and name.endswith(".svg")):
                continue
            if members is not None and name not in members:
                continue
            fh = tf.extractfile(m)
            if fh is not None:
                out[name] = fh.read()
    return out


def svg_names(members: Iterable[str]) -> dict[str, list[str]]:
    """style -> stems, from ``package/icons/<style>/<stem>.svg`` member names (other styles ignored)."""
    names: dict[str, list[str]] = {s: [] for s in STYLES}
    for name in members:
        parts = name.split("/")
        if len(parts) == 4 and parts[:2] == ["package", "icons"] and parts[2] in names and parts[3].endswith(".svg"):
            names[parts[2]].append(parts[3][: -len(".svg")])
    return names


def verify_tarball(tarball: Path) -> dict[str, int]:
    """Check the tarball's SHA-256 and SVG counts per style; return the counts.

    Raises:
        SourceError: on a checksum or count mismatch, or an unreadable tarball.
    """
    digest = sha256_file(tarball)
    if digest != TARBALL_SHA256:
        raise SourceError(SOURCE, f"{tarball.name}: SHA-256 {digest}, expected {TARBALL_SHA256}")
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            names = svg_names(m.name for m in tf if m.isfile())
    except (OSError, tarfile.TarError) as exc:
        raise SourceError(SOURCE, f"cannot read {tarball.name}: {exc}") from exc
    counts = {f"svg_{s}": len(names[s]) for s in STYLES}
    for s in STYLES:
        if counts[f"svg_{s}"] != EXPECTED_SVGS[s]:
            raise SourceError(SOURCE, f"expected {EXPECTED_SVGS[s]:,} {s} SVGs, found {counts[f'svg_{s}']:,}")
    return counts


def fetch_npm_tarball(
    cache: Path,
    source: str,
    package: str,
    version: str,
    folder: str,
    tarball: str,
    verify: Callable[[Path], dict],
    keep: tuple[str, ...],
    force: bool = False,
    **marker_fields,
) -> dict:
    """``npm pack <package>@<version>`` into ``<cache>/<folder>/`` (staged, then renamed), the emojibase labels of the
    ``npm`` source fetched first when missing; return the ``.complete.json`` marker (an existing one unless ``force``).

    ``verify(tarball)`` checks the tarball (checksum, counts) and returns its counts; the ``package/<name>`` files of
    ``keep`` are copied beside it; the marker records the versions, the tarball, the counts and ``marker_fields``.

    Raises:
        SourceError: npm failed or produced no tarball, or ``verify`` refused it.
    """
    cache = Path(cache)
    if read_marker(cache / "npm") is None:
        LOG.info("%s: needs emojibase-data of the npm source; fetching it", source)
        fetch_npm(cache)
    dest = cache / folder
    if not force and (marker := read_marker(dest)) is not None:
        LOG.info("%s: already complete (%s), skipping", source, dest)
        return marker
    with staged_dir(dest) as tmp:
        LOG.info("%s: npm pack %s@%s", source, package, version)
        run(["npm", "pack", f"{package}@{version}", "--pack-destination", ".", "--silent"], source, cwd=tmp)
        path = tmp / tarball
        if not path.is_file():
            raise SourceError(source, f"npm pack produced no {tarball}")
        counts = verify(path)
        with tarfile.open(path, "r:gz") as tf:
            for name in keep:
                fh = tf.extractfile(f"package/{name}")
                if fh is not None:
                    atomic_write_bytes(tmp / name, fh.read())
        LOG.info("%s: verified %s", source, ", ".join(f"{k}={v:,}" for k, v in counts.items()))
        marker = write_marker(tmp, source, versions={package: version}, tarball=tarball, counts=counts, **marker_fields)
    return marker


def fetch_fluent_emoji(cache: Path, force: bool = False, keep_downloads: bool = False) -> dict:
    """``npm pack fluentui-emoji@1.3.0`` into ``<cache>/fluentui_emoji_npm/``; return the marker.

    The emojibase labels of the ``npm`` source are fetched too when missing (a complete
    ``npm`` source is skipped). ``keep_downloads`` is accepted for a uniform signature:
    the tarball is the kept artifact.

    Raises:
        SourceError: npm failed, or the checksum or a count check failed.
    """
    return fetch_npm_tarball(
        cache,
        SOURCE,
        PACKAGE,
        VERSION,
        PACKAGE_DIR,
        TARBALL,
        verify_tarball,
        ("LICENSE", "package.json"),
        force,
        sha256=TARBALL_SHA256,
        license=LICENSE,
    )
