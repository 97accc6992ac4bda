"""The hashtags of the ingested samples that survive dedup, read from shard metadata (never the images)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.io.shards import iter_metadata
from pipeline.progress import progress_bar

__all__ = ["SampleTags", "read_sample_tags"]


@dataclass
class SampleTags:
    """Hashtags of the samples that survive dedup, in shard order."""

    keys: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    seen: int = 0  # samples in the shards
    removed: int = 0  # of which removed by dedup


def read_sample_tags(paths: list[Path], removed: set[str], progress: bool = False, total: int | None = None) -> SampleTags:
    """Read every sample's ``key``, ``id`` and ``hashtags`` from shard metadata, skipping ``removed`` keys."""
    out = SampleTags()
    for _, key, meta in progress_bar(iter_metadata(paths), total=total, unit="sample", desc="vocab", disable=not progress):
        out.seen += 1
        if key in removed:
            out.removed += 1
            continue
        out.keys.append(key)
        out.ids.append(meta["id"])
        out.tags.append(list(meta["hashtags"]))
    return out
