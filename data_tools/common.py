"""Small shared helpers: errors, logging, atomic writes, staged folders, hashing.

Everything that writes a file goes through the pipeline's atomic writers
(:mod:`pipeline.io.atomic`: temp name in the same folder, fsync, ``os.replace``), so an interrupted run leaves either the old
file or the new one. Folders are built under a hidden ``.<name>.partial`` sibling and
renamed into place by :func:`staged_dir`; a leftover partial folder from an
interrupted run is wiped and rebuilt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from pipeline.io.atomic import fsync_dir
from pipeline.io.atomic import write_bytes as atomic_write_bytes  # noqa: F401
from pipeline.io.atomic import write_json as atomic_write_json
from pipeline.io.atomic import write_jsonl as atomic_write_jsonl  # noqa: F401
from pipeline.io.atomic import write_text as atomic_write_text  # noqa: F401
from pipeline.io.manifest import file_sha256 as sha256_file

LOG = logging.getLogger("data_tools")

MARKER_NAME = ".complete.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class SourceError(RuntimeError):
    """A source could not be fetched, unpacked, verified or converted.

    The message always starts with the source name, so it can be printed as is.
    """

    def __init__(self, source: str, message: str):
        super().__init__(f"{source}: {message}")
        self.source = source
        self.reason = message


def setup_logging(verbose: bool = False) -> None:
    """Log ``HH:MM:SS LEVEL message`` lines to stderr (INFO, or DEBUG if ``verbose``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def progress(iterable: Iterable, **kwargs: Any) -> Iterable:
    """Wrap ``iterable`` in :func:`pipeline.progress.progress_bar`: a live bar on a terminal, else a
    log line every ``$PIPELINE_PROGRESS_INTERVAL_S`` seconds (30) and one when done."""
    from pipeline.progress import progress_bar

    return progress_bar(iterable, **kwargs)


# --------------------------------------------------------------------------- files


def run_cli(action: Callable[[], Any]) -> int:
    """Run a data_tools command's work: logging set up, a :class:`SourceError` printed.

    Returns:
        the exit status: 0, or 1 after a SourceError.
    """
    setup_logging()
    try:
        action()
    except SourceError as exc:
        LOG.error("%s", exc)
        return 1
    return 0


def cache_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of ``doc``, with ``--cache``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("data/raw"), help="cache folder (default data/raw)")
    return ap


def remove_path(path: Path) -> None:
    """Remove a file, symlink or folder tree if it exists (symlinks are not followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty ``.<name>.partial`` folder next to ``final``; on success move it to ``final``.

    A partial folder left by an interrupted run is wiped first. On success an existing
    ``final`` is replaced (moved aside, then deleted). On an exception the partial
    folder is left for inspection and wiped by the next run.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.partial")
    remove_path(partial)
    partial.mkdir()
    yield partial
    old = final.with_name(f".{final.name}.old")
    remove_path(old)
    if final.exists() or final.is_symlink():
        os.replace(final, old)
    os.replace(partial, final)
    fsync_dir(final.parent)
    remove_path(old)


# --------------------------------------------------------------------------- markers


def marker_path(folder: Path) -> Path:
    """Path of the completion marker of a source folder."""
    return Path(folder) / MARKER_NAME


def read_marker(folder: Path) -> dict | None:
    """The parsed completion marker of ``folder``, or None if absent or unreadable."""
    p = marker_path(folder)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def marker_fingerprint(folder: Path) -> str | None:
    """SHA-256 of the marker file's bytes (changes on every re-fetch), or None if absent."""
    p = marker_path(folder)
    return sha256_file(p) if p.is_file() else None


def write_marker(folder: Path, source: str, **fields: Any) -> dict:
    """Write ``folder/.complete.json`` recording ``source``, the UTC time and ``fields``."""
    marker = {
        "source": source,
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tool": "data_tools",
        **fields,
    }
    atomic_write_json(marker_path(folder), marker)
    return marker


# --------------------------------------------------------------------------- misc


def run(cmd: Sequence[str], source: str, cwd: Path | None = None, timeout: float = 1800) -> str:
    """Run ``cmd`` and return its stdout.

    Raises:
        SourceError: naming ``source``, the command, its exit code and its last
            stderr lines, if the program is missing, fails or times out.
    """
    shown = " ".join(cmd)
    LOG.debug("%s: running %s", source, shown)
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise SourceError(source, f"program not found: {cmd[0]} ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise SourceError(source, f"`{shown}` timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise SourceError(source, f"`{shown}` failed with exit code {proc.returncode}:\n{tail}")
    return proc.stdout


def png_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR header, without decoding the image.

    Raises:
        ValueError: if the file is not a PNG (bad signature or missing IHDR).
    """
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"not a PNG file (bad signature or IHDR): {path}")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def check_count(source: str, what: str, expected: int, found: int) -> None:
    """Raise :class:`SourceError` ``"<source>: expected N <what>, found M"`` unless equal."""
    if expected != found:
        raise SourceError(source, f"expected {expected:,} {what}, found {found:,}")


def is_safe_relpath(rel: str) -> bool:
    """True if ``rel`` is a relative POSIX path that stays inside its root (no ``..``)."""
    if not rel or rel.startswith("/") or "\\" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))
