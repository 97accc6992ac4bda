"""``imagefolder``: ``<root>/<split>/<class>/<image>`` (the ImageNet layout); the class folder
name (a WordNet id like ``n01440764`` or a name) is the sample's one tag. A unit is a slice
of the sorted listing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import Rejected
from pipeline.io.manifest import stat_fingerprint
from pipeline.io.readers.base import Item, RawSample, Rejection, WorkUnit, read_file


def _listing(root: Path) -> list[str]:
    """Sorted ``<class>/<file>`` paths below an imagefolder split folder."""
    out = []
    for cls in sorted(os.scandir(root), key=lambda e: e.name):
        if not cls.is_dir() or cls.name.startswith("."):
            continue
        for f in sorted(os.scandir(cls.path), key=lambda e: e.name):
            if not f.name.startswith(".") and not f.is_dir():
                out.append(f"{cls.name}/{f.name}")
    return out


def plan(src: Any, base: dict, first: int, shard_size: int) -> tuple[list[WorkUnit], dict]:
    """Units of ``shard_size`` files of the sorted ``<split>/<class>/<file>`` listing, numbered from ``first``.

    Raises:
        FileNotFoundError: the split folder does not exist.
    """
    split_root = Path(base["root"]) / src.split
    if not split_root.is_dir():
        raise FileNotFoundError(f"source {src.name!r}: split folder {split_root} does not exist")
    files = _listing(split_root)[: src.max_samples or None]
    shared = {k: v for k, v in base.items() if k != "root"}
    units = [
        WorkUnit(first + i, root=str(split_root), files=files[s : s + shard_size], count=len(files[s : s + shard_size]), **shared)
        for i, s in enumerate(range(0, len(files), shard_size))
    ]
    fingerprint = {
        "root": str(split_root),
        "samples": len(files),
        "listing": stat_fingerprint(split_root / f for f in files[:1000]),
    }
    return units, fingerprint


def read(unit: WorkUnit, max_bytes: int) -> Iterator[Item]:
    """Every file of an imagefolder unit, its class folder name as its one tag (or a :class:`Rejection`)."""
    root = Path(unit.root)
    for rel in unit.files:
        cls = rel.split("/", 1)[0]
        try:
            data = read_file(root, rel, max_bytes)
        except Rejected as r:
            yield Rejection(rel, f"{root}/{rel}", r.reason, r.detail)
            continue
        yield RawSample(rel, f"{root}/{rel}", data, [cls], None, {"label": cls, "path": rel})
