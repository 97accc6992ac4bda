"""The project's expected-failure types (foundation layer: imports nothing of the pipeline).

Every stage raises one of these for a failure that is the user's to fix, and the CLI
(:mod:`pipeline.cli`) turns each into one line ``error: <message>; hint: <hint>`` and exit
status 2 (or :attr:`ReportedFailure.exit_code`), with no traceback:

* :class:`ConfigError`: a config value out of range or inconsistent, raised before any work.
* :class:`ReportedFailure`: a failure already reported by a child process (torchrun, a worker).
* :class:`CheckpointError` / :class:`CheckpointRefused`: a checkpoint that is missing, corrupt,
  unsafe or does not fit the model.
* :class:`Rejected`: one input sample rejected, with a reason of :data:`REASONS`; ingest writes it
  to ``ingest/quarantine.jsonl`` instead of a shard (never raised out of a stage).
"""

from __future__ import annotations

import os
from pathlib import Path


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; raised before any work."""


class ReportedFailure(RuntimeError):
    """A failure whose cause was already reported (by a child process); the CLI prints this one
    line, no traceback, and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = int(exit_code)

    def __reduce__(self):
        return type(self), (str(self), self.exit_code)


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


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, unsafe, or does not fit the model; names the file.

    ``path`` is the file (a :class:`~pathlib.Path`, or None where not known); ``hint`` what to do, one line
    (None: the CLI's hint for a pretraining checkpoint).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.hint = hint

    def __reduce__(self):  # picklable across processes with its path and hint
        return type(self), (str(self), self.path, self.hint)


class CheckpointRefused(CheckpointError):
    """A checkpoint holds objects other than tensors and plain data (a pickle that could run code
    when loaded) and was refused unread. ``path`` is the file, ``reason`` why (one sentence, without
    the path), ``detail`` torch's own first line."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = "") -> None:
        super().__init__(f"refusing to load {path}: {reason}" + (f". Detail: {detail}" if detail else ""), path)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        return type(self), (self.path, self.reason, self.detail)
