"""Quarantine reasons: why an input sample was rejected, and the exception that carries it.

Every rejected sample becomes one row of ``<stage>/quarantine.jsonl`` with its key, a
reason from :data:`REASONS` and a human-readable detail. Nothing is dropped silently:
ingest checks ``input == written + quarantined``. :func:`load_quarantine` reads ingest's rows.
"""

from __future__ import annotations

import os

from pipeline.io.atomic import read_jsonl
from pipeline.io.run_folder import INGEST, QUARANTINE_FILE, path

REASONS: dict[str, str] = {
    "missing_file": "the index names an image file that does not exist",
    "path_outside_root": "the image path (or a symlink) resolves outside the source root",
    "file_too_large": "the encoded file is larger than ingest.max_file_bytes",
    "empty_file": "zero-byte image file or tar member",
    "undecodable_image": "not an image, unknown format, or a decoder error",
    "truncated_image": "the image data ends early (truncated JPEG/PNG)",
    "decompression_bomb": "width x height exceeds ingest.max_pixels",
    "too_small": "shorter side below ingest.min_side px",
    "svg_disabled": "SVG input while ingest.rasterize_svg is false",
    "undecodable_svg": "SVG that cairosvg cannot rasterize (or refuses for safety)",
    "invalid_utf8": "caption, tags or metadata bytes are not valid UTF-8",
    "invalid_metadata": "metadata is not valid JSON or has the wrong types",
    "no_hashtags": "no hashtag left after normalization",
    "duplicate_id": "the same sample id appeared earlier in the same input unit",
    "unsafe_member": "tar member with an absolute path, '..', or a non-regular type (symlink, device)",
    "missing_image": "tar sample without an image member",
    "missing_json": "tar sample without its .json member",
    "download_failed": "img2dataset status is not 'success'",
    "truncated_tar": "the tar archive ends early; members after this point are lost",
    "unreadable_input": "the input file or archive could not be opened at all",
    "withdrawn": "the sample id is listed in ingest.withdrawn: never written to a shard",
}


class Rejected(Exception):
    """A sample is rejected; ``reason`` is a key of :data:`REASONS`, ``detail`` free text.

    Raises:
        ValueError: if ``reason`` is not a known reason (a programming error).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def load_quarantine(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``<run_dir>/ingest/quarantine.jsonl`` (``id``, ``source``, ``origin``, ``reason``, ``detail``, ``unit``).

    Raises:
        FileNotFoundError: the file does not exist (ingest has not run).
        ValueError: naming the file and line, for a line that is not JSON.
    """
    return read_jsonl(path(run_dir, INGEST, QUARANTINE_FILE))
