"""The hashtags of the ingested samples that survive dedup, read from shard metadata (never the images), as Python
lists of the whole corpus: the reference the vocab stage's per-shard passes (:mod:`pipeline.text.shard_vocab`) are
tested against, and a convenience for notebooks on small runs (about 1 KB a sample: not for large corpora)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.io.shards import index_columns
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
    """Read every sample's ``key``, ``id`` and ``hashtags`` from the shard indexes (those three columns only),
    skipping ``removed`` keys."""
    out = SampleTags()
    with progress_bar(total=total, unit="sample", desc="vocab", disable=not progress) as bar:
        for p in paths:
            table = index_columns(p, ["key", "id", "hashtags"])  # by column: the rest of the metadata is not parsed
            for key, sid, tags in zip(*(table.column(c).to_pylist() for c in ("key", "id", "hashtags"))):
                out.seen += 1
                if key in removed:
                    out.removed += 1
                    continue
                out.keys.append(key)
                out.ids.append(sid)
                out.tags.append(tags)
            bar.update(table.num_rows)
    return out
