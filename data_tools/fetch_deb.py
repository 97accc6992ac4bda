"""Download Debian packages with ``apt-get download`` and unpack them with ``dpkg -x``.

No root is needed, except when the package lists are missing or stale: then
``apt-get download`` fails, :func:`download_debs` runs ``apt-get update`` once (root
only) and retries. Pinned versions (``name=version``) are tried first; if a pinned
version is gone from the archive the newest one is taken with a warning, and the
count checks that follow decide whether it is still acceptable.

Downloads go to a temp folder and are renamed into ``<cache>/.downloads/`` when
``apt-get`` has finished (apt verifies the archive's hashes), so an interrupted
download is simply redone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .common import LOG, SourceError, remove_path, run, sha256_file

DOWNLOADS = ".downloads"


def _apt_download(pkgs: list[str], tmp: Path, source: str) -> None:
    run(["apt-get", "download", *pkgs], source, cwd=tmp)


def _apt_update(source: str, why: str) -> None:
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise SourceError(
            source,
            f"apt-get download failed ({why}); if the package lists are missing or stale, "
            "run `sudo apt-get update` once, then retry",
        )
    LOG.info("%s: apt-get download failed; running `apt-get update` once and retrying", source)
    run(["apt-get", "update"], source)


def deb_field(deb: Path, field: str, source: str) -> str:
    """One control field (``Package``, ``Version``) of a .deb, via ``dpkg-deb -f``."""
    return run(["dpkg-deb", "-f", str(deb), field], source).strip()


def _find_cached(downloads: Path, name: str, version: str | None, source: str) -> Path | None:
    for deb in sorted(downloads.glob(f"{name}_*.deb")):
        try:
            if deb_field(deb, "Package", source) != name:
                continue
            if version and deb_field(deb, "Version", source) != version:
                continue
        except SourceError:
            LOG.warning("%s: removing unreadable cached download %s", source, deb.name)
            deb.unlink()
            continue
        return deb
    return None


def download_debs(cache: Path, source: str, packages: dict[str, str | None]) -> dict[str, Path]:
    """Make sure ``<cache>/.downloads/`` holds a .deb of each package; return name -> path.

    Args:
        cache: the cache folder.
        source: source name, for messages.
        packages: package name -> pinned version (or None for the candidate version).

    Raises:
        SourceError: if apt-get cannot download a package even after ``apt-get update``.
    """
    downloads = cache / DOWNLOADS
    downloads.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for name, version in packages.items():
        if (deb := _find_cached(downloads, name, version, source)) is not None:
            LOG.info("%s: using cached %s", source, deb.name)
            found[name] = deb
    missing = {n: v for n, v in packages.items() if n not in found}
    if not missing:
        return found
    for stale in downloads.glob(f".tmp-{source}-*"):  # left by an interrupted run
        remove_path(stale)
    tmp = downloads / f".tmp-{source}-{os.getpid()}"
    tmp.mkdir()
    try:
        pinned = [f"{n}={v}" if v else n for n, v in missing.items()]
        LOG.info("%s: apt-get download %s", source, " ".join(pinned))
        try:
            _apt_download(pinned, tmp, source)
        except SourceError as first:
            LOG.debug("%s: %s", source, first.reason)
            _apt_update(source, first.reason.strip().splitlines()[-1])
            try:
                _apt_download(pinned, tmp, source)
            except SourceError:
                if not any(missing.values()):
                    raise
                LOG.warning(
                    "%s: pinned versions not available (%s); downloading the candidate versions",
                    source,
                    ", ".join(pinned),
                )
                _apt_download(list(missing), tmp, source)
        for deb in sorted(tmp.glob("*.deb")):
            name = deb_field(deb, "Package", source)
            if name in missing:
                target = downloads / deb.name
                os.replace(deb, target)
                found[name] = target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lost = sorted(set(packages) - set(found))
    if lost:
        raise SourceError(source, f"apt-get download produced no .deb for {', '.join(lost)}")
    return found


def extract_debs(debs: dict[str, Path], dest: Path, source: str) -> dict[str, dict]:
    """``dpkg -x`` each .deb into ``dest``; return name -> {version, file, sha256}."""
    info = {}
    for name, deb in sorted(debs.items()):
        LOG.info("%s: dpkg -x %s", source, deb.name)
        run(["dpkg", "-x", str(deb), str(dest)], source)
        info[name] = {
            "version": deb_field(deb, "Version", source),
            "file": deb.name,
            "sha256": sha256_file(deb),
        }
    return info


def forget_downloads(debs: dict[str, Path]) -> None:
    """Delete downloaded .deb files (after their source has been completed)."""
    for deb in debs.values():
        deb.unlink(missing_ok=True)
