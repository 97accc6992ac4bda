"""Audit a run folder for sample ids that must not be in it (withdrawn images).

``python -m pipeline.audit <run_dir> --ids FILE [--json]``

``FILE`` lists ``source:id`` sample ids, one per line (``#`` comments), like
``ingest.withdrawn`` and ``dedup.withdrawn``. The audit finds their shard keys
(``UUUUUU_PPPPPP``, from the shards and ingest's part files) and scans **every** file below
the run folder (following linked stage folders) for an id or a key:

==================================  ====================================================
artifact                            how it is read
==================================  ====================================================
``*.tar`` (ingest shards)           each sample's ``.json`` (its ``id``) and member names
``*.npz`` (vocab labels, dedup      ``np.load(allow_pickle=False)``: every string array
hash caches)
``*.pt``, ``*.pth`` (checkpoints,   ``torch.load(weights_only=True)``: every string,
trunk)                              including the resolved config
``*.json``, ``*.jsonl``             parsed: every string value and key
anything else (txt, logs, index,    bytes, as text
safetensors, png)
==================================  ====================================================

An id or key matches as a whole token (``src:a`` does not match ``src:ab``). Records that
say a sample was *kept out* are not findings: ingest's quarantine rows
(``quarantine.jsonl`` and the ``quarantine`` rows of ``parts/*.json``), dedup's
``removed.jsonl`` rows with reason ``withdrawn``, and the ``withdrawn`` array of its hash
caches. It also checks that the vocabulary's class counts are exactly the labels of the
samples in ``labels.npz`` (so no count includes a sample that is not listed there).

Exit status: 0 nothing found; 1 an id or key was found (every place is printed); 2 a usage
error, or a file that cannot be read safely (a pickle, a truncated file): unverified.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.io.shards import ShardReader

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
    found: list[str] = field(default_factory=list)  # an id or key where it must not be
    excluded: list[str] = field(default_factory=list)  # records of exclusion (allowed)
    unverified: list[str] = field(default_factory=list)  # files that could not be read safely
    files: int = 0


def read_ids(path: str | os.PathLike) -> set[str]:
    """Ids of ``path`` (one per line, ``#`` comments)."""
    return {s for line in Path(path).read_text(encoding="utf-8").splitlines() if (s := line.strip()) and not s.startswith("#")}


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
        if rel.startswith("ingest/shards/") and p.suffix == ".tar":
            try:
                with ShardReader(p, warn_unindexed=False) as reader:
                    for key, meta in reader.iter_metadata():
                        if meta.get("id") in needles.ids:
                            needles.keys[key] = meta["id"]
            except (tarfile.TarError, OSError, ValueError):
                pass  # reported by the scan
        elif rel.startswith("ingest/parts/") and p.suffix == ".json":
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
    elif suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            for name in z.files:
                hits = set().union(*(needles.find(s) for s in _strings(z[name])))
                target = rep.excluded if name == "withdrawn" and rel.startswith("dedup/hashes/") else rep.found
                target += [f"{_label(needles, h)}: {rel} array {name!r}" for h in sorted(hits)]
    elif suffix in (".pt", ".pth"):
        import torch

        obj = torch.load(p, map_location="cpu", weights_only=True)
        rep.found += [f"{_label(needles, h)}: {rel}" for h in sorted(set().union(*(needles.find(s) for s in _strings(obj))))]
    elif suffix == ".jsonl":
        rows = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        kind = {"ingest/quarantine.jsonl": "quarantine", "dedup/removed.jsonl": "removed"}.get(rel)
        _scan_json_rows(rel, rows, needles, rep, kind)
    elif suffix == ".json":
        obj = json.loads(p.read_text(encoding="utf-8"))
        if rel.startswith("ingest/parts/") and isinstance(obj, dict):
            _scan_json_rows(f"{rel} quarantine", obj.get("quarantine", []), needles, rep, "quarantine")
            obj = {k: v for k, v in obj.items() if k != "quarantine"}
        hits = set().union(*(needles.find(s) for s in _strings(obj)))
        rep.found += [f"{_label(needles, h)}: {rel}" for h in sorted(hits)]
    else:
        text = p.read_bytes().decode("utf-8", "replace")
        rep.found += [f"{_label(needles, h)}: {rel}" for h in sorted(needles.find(text))]


def _check_vocab_counts(root: Path, rep: Report) -> None:
    labels, vocab = root / "vocab" / "labels.npz", root / "vocab" / "vocab.json"
    if not labels.exists():
        return
    try:
        with np.load(labels, allow_pickle=False) as z:
            counts = np.bincount(z["indices"], minlength=z["class_counts"].size)
            same = np.array_equal(counts, z["class_counts"])
            n = int(z["keys"].size)
        doc = json.loads(vocab.read_text(encoding="utf-8")) if vocab.exists() else None
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
            rep.unverified.append(f"{p.relative_to(root).as_posix()}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
    _check_vocab_counts(root, rep)
    return rep


def main(argv: list[str] | None = None) -> int:
    """Command line: print the findings; return the exit status (0 clean, 1 found, 2 unverified/usage)."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.audit", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="the run folder to scan")
    ap.add_argument("--ids", required=True, help="file of source:id sample ids, one per line")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    root, ids_file = Path(args.run_dir), Path(args.ids)
    if not root.is_dir():
        print(f"error: run folder {root} does not exist", file=sys.stderr)
        return 2
    if not ids_file.is_file():
        print(f"error: ids file {ids_file} does not exist", file=sys.stderr)
        return 2
    ids = read_ids(ids_file)
    rep = audit(root, ids, skip={ids_file})
    status = 1 if rep.found else 2 if rep.unverified else 0
    if args.json:
        print(json.dumps({"run_dir": str(root), "ids": len(ids), "files": rep.files, "found": rep.found,
                          "excluded": rep.excluded, "unverified": rep.unverified, "status": status}, indent=1))
    else:
        for line in rep.found:
            print(f"FOUND      {line}")
        for line in rep.unverified:
            print(f"UNVERIFIED {line}")
        for line in rep.excluded:
            print(f"excluded   {line}")
        verdict = {0: "clean", 1: "FOUND", 2: "UNVERIFIED"}[status]
        print(f"audit {verdict}: {len(ids)} ids, {rep.files} files scanned, {len(rep.found)} found, "
              f"{len(rep.unverified)} unverified, {len(rep.excluded)} exclusion records")
    return status


if __name__ == "__main__":
    sys.exit(main())
