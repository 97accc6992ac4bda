"""Scanning a run folder for sample ids that must not be in it (withdrawn images): ``python -m pipeline.audit``.

:func:`audit` finds the shard keys of the ids (from the shards and ingest's part files), then scans every
file below the run folder (following linked stage folders) for an id or a key as a whole token; records of
exclusion (ingest's quarantine rows, dedup's ``withdrawn`` removals) are listed apart, and the vocabulary's
class counts are checked against the labels of the samples in ``labels.npz``. See :mod:`pipeline.audit` for
how each kind of file is read.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq

from pipeline.io import run_folder as rf
from pipeline.io.shards import ShardReader

# run-folder paths, relative and with "/" (as the scan names files)
_SHARDS = f"{rf.INGEST}/{rf.SHARD_DIR}/"
_PARTS = f"{rf.INGEST}/{rf.PART_DIR}/"  # ingest's per-unit part files (what each unit wrote and rejected)
_HASHES = f"{rf.DEDUP}/hashes/"  # dedup's per-shard hash caches of earlier versions
_QUARANTINE = f"{rf.INGEST}/{rf.QUARANTINE_FILE}"
_REMOVED = f"{rf.DEDUP}/{rf.REMOVED_FILE}"

TOKEN = re.compile(r"[\w.\-:]+")
_EDGE = re.compile(r"[\w.\-:/]")


@dataclass
class Needles:
    """The ids and keys to look for; tokens are matched by set lookup, other strings by search."""

    ids: set[str]
    keys: dict[str, str] = field(default_factory=dict)  # shard key -> id

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        every = self.ids | set(self.keys)
        self.tokens = {n for n in every if TOKEN.fullmatch(n)}
        self.other = every - self.tokens

    def find(self, text: str) -> set[str]:
        """The needles occurring in ``text`` as whole tokens."""
        hits = {t for t in TOKEN.findall(text) if t in self.tokens}
        for n in self.other:
            start = text.find(n)
            while start >= 0:
                end = start + len(n)
                if (start == 0 or not _EDGE.match(text[start - 1])) and (end == len(text) or not _EDGE.match(text[end])):
                    hits.add(n)
                    break
                start = text.find(n, start + 1)
        return hits


@dataclass
class Report:
    """What an audit found: ``found`` (an id or key where it must not be: the audit fails), ``excluded``
    (records that a sample was kept out: allowed), ``unverified`` (files that could not be read safely)."""

    found: list[str] = field(default_factory=list)  # an id or key where it must not be
    excluded: list[str] = field(default_factory=list)  # records of exclusion (allowed)
    unverified: list[str] = field(default_factory=list)  # files that could not be read safely
    files: int = 0


def _strings(obj: Any) -> Iterator[str]:
    """Every string in nested data (dict keys too; tensors and numbers skipped)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str):
                yield k
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, np.ndarray) and obj.dtype.kind in "US":
        for v in obj.ravel().tolist():
            yield v if isinstance(v, str) else v.decode("utf-8", "replace")


def _label(needles: Needles, hit: str) -> str:
    return f"{hit} (key of {needles.keys[hit]})" if hit in needles.keys else hit


def _walk_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def find_keys(root: Path, needles: Needles) -> None:
    """Add the shard keys of the needles' ids, from the shards' metadata and ingest's parts."""
    for p in _walk_files(root):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(_SHARDS) and p.suffix == ".tar":
            try:
                with ShardReader(p, warn_unindexed=False) as reader:
                    for key, meta in reader.iter_metadata():
                        if meta.get("id") in needles.ids:
                            needles.keys[key] = meta["id"]
            except (tarfile.TarError, OSError, ValueError):
                pass  # reported by the scan
        elif rel.startswith(_PARTS) and p.suffix == ".json":
            try:
                for key, sid in json.loads(p.read_text(encoding="utf-8")).get("ids", []):
                    if sid in needles.ids:
                        needles.keys[key] = sid
            except (OSError, ValueError, TypeError):
                pass
    needles.refresh()


def _scan_json_rows(rel: str, rows: list, needles: Needles, rep: Report, kind: str | None = None) -> None:
    """Rows of a JSONL file (or a list in a JSON file); ``kind`` ``quarantine`` or ``removed``
    marks records of exclusion."""
    for n, row in enumerate(rows):
        hits = set().union(*(needles.find(s) for s in _strings(row)))
        if not hits:
            continue
        where = f"{rel} row {n + 1}"
        if kind == "quarantine":
            rep.excluded += [f"{_label(needles, h)}: {where} (quarantined: {row.get('reason')})" for h in sorted(hits)]
        elif kind == "removed" and row.get("reason") == "withdrawn":
            rest = {h for h in needles.find(str(row.get("duplicate_of") or ""))}
            rep.excluded += [f"{_label(needles, h)}: {where} (removed: withdrawn)" for h in sorted(hits - rest)]
            rep.found += [f"{_label(needles, h)}: {where} (duplicate_of)" for h in sorted(rest)]
        else:
            rep.found += [f"{_label(needles, h)}: {where}" for h in sorted(hits)]


def _scan_file(root: Path, p: Path, needles: Needles, rep: Report) -> None:
    rel = p.relative_to(root).as_posix()
    suffix = p.suffix
    if suffix == ".tar":
        with ShardReader(p, warn_unindexed=False) as reader:
            for key in reader.keys:
                for ext in reader.members[key]:
                    if key in needles.keys:
                        rep.found.append(f"{_label(needles, key)}: {rel} member {key}.{ext}")
                if "json" in reader.members[key]:
                    meta = json.loads(reader.read(key, "json"))
                    for h in sorted(set().union(*(needles.find(s) for s in _strings(meta))) - {key}):
                        rep.found.append(f"{_label(needles, h)}: {rel} member {key}.json")
    elif suffix == ".parquet":  # a shard index or a shard's labels (io.shard_index, io.shard_labels): every string of every row
        for row in pq.read_table(p).to_pylist():  # unreadable: listed as unverified by audit()
            hits = set().union(*(needles.find(s) for s in _strings(row)))
            rep.found += [f"{_label(needles, h)}: {rel} row {row.get('key')}" for h in sorted(hits)]
    elif suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            for name in z.files:
                hits = set().union(*(needles.find(s) for s in _strings(z[name])))
                target = rep.excluded if name == "withdrawn" and rel.startswith(_HASHES) else rep.found
                target += [f"{_label(needles, h)}: {rel} array {name!r}" for h in sorted(hits)]
    elif suffix in (".pt", ".pth"):
        import torch

        obj = torch.load(p, map_location="cpu", weights_only=True)
        rep.found += [f"{_label(needles, h)}: {rel}" for h in sorted(set().union(*(needles.find(s) for s in _strings(obj))))]
    elif suffix == ".jsonl":
        rows = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        kind = {_QUARANTINE: "quarantine", _REMOVED: "removed"}.get(rel)
        _scan_json_rows(rel, rows, needles, rep, kind)
    elif suffix == ".json":
        obj = json.loads(p.read_text(encoding="utf-8"))
        if rel.startswith(_PARTS) and isinstance(obj, dict):
            _scan_json_rows(f"{rel} quarantine", obj.get("quarantine", []), needles, rep, "quarantine")
            obj = {k: v for k, v in obj.items() if k != "quarantine"}
        hits = set().union(*(needles.find(s) for s in _strings(obj)))
        rep.found += [f"{_label(needles, h)}: {rel}" for h in sorted(hits)]
    else:
        text = p.read_bytes().decode("utf-8", "replace")
        rep.found += [f"{_label(needles, h)}: {rel}" for h in sorted(needles.find(text))]


def _check_vocab_counts(root: Path, rep: Report) -> None:
    labels = rf.path(root, rf.VOCAB, rf.LABELS_FILE)
    if not labels.exists():
        return
    try:
        with np.load(labels, allow_pickle=False) as z:
            counts = np.bincount(z["indices"], minlength=z["class_counts"].size)
            same = np.array_equal(counts, z["class_counts"])
            n = int(z["keys"].size)
        doc = rf.read_vocab(root)
    except Exception as exc:  # noqa: BLE001 - reported as unverified
        rep.unverified.append(f"vocab counts: {type(exc).__name__}: {exc}")
        return
    if not same:
        rep.found.append("vocab/labels.npz: class_counts differ from the labels of the listed samples")
    if doc is not None:
        if [c["samples"] for c in doc.get("classes", [])] != counts.tolist():
            rep.found.append("vocab/vocab.json: class sample counts differ from labels.npz")
        if doc.get("totals", {}).get("samples_kept") != n:
            rep.found.append("vocab/vocab.json: totals.samples_kept differs from the samples in labels.npz")


def audit(run_dir: str | os.PathLike, ids: set[str], skip: set[Path] | None = None) -> Report:
    """Scan every file of ``run_dir`` for ``ids`` and their shard keys; return the :class:`Report`."""
    root = Path(run_dir)
    needles = Needles(set(ids))
    find_keys(root, needles)
    rep = Report()
    skip = {p.resolve() for p in (skip or set())}
    for p in _walk_files(root):
        if p.resolve() in skip:
            continue
        rep.files += 1
        try:
            _scan_file(root, p, needles, rep)
        except Exception as exc:  # noqa: BLE001 - anything unreadable is unverified, never skipped silently
            first = str(exc).splitlines()[0] if str(exc) else ""
            rep.unverified.append(f"{p.relative_to(root).as_posix()}: {type(exc).__name__}: {first}"[:300])
    _check_vocab_counts(root, rep)
    return rep
