"""Print what webdataset tar shards hold: member count, keys, and the first samples' json.

Usage: ``python -m data_tools.inspect_shards SHARD.tar [...] [--samples 3]``

Members are grouped into samples by key (the name up to its first dot, as webdataset
does). Exit status 1 if a tar cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

from pipeline.io.shards import ShardReader, split_member


def read_shard(path: Path) -> tuple[list[str], dict[str, dict[str, bytes]]]:
    """(member names in tar order, key -> {extension: bytes}) of one tar, through
    :class:`pipeline.io.shards.ShardReader` (any WebDataset tar; an index beside it is used).

    Raises:
        tarfile.TarError / OSError: the file is missing or not a tar.
    """
    with ShardReader(path, warn_unindexed=False) as reader:
        names = [f"{k}.{e}" for k in reader.keys for e in reader.members[k]]
        samples = {k: {e: reader.read(k, e) for e in reader.members[k]} for k in reader.keys}
    return names, samples


def describe(path: Path, n_samples: int = 3) -> str:
    """A human-readable report of one tar (see the module docstring)."""
    names, samples = read_shard(path)
    keys_in_order = list(dict.fromkeys(split_member(n)[0] for n in names))
    exts = sorted({e for s in samples.values() for e in s})
    lines = [
        f"{path}: {len(names)} members, {len(samples)} samples, extensions {exts}",
        f"  keys (tar order): {' '.join(keys_in_order)}",
        f"  keys in sorted order: {keys_in_order == sorted(keys_in_order)}",
    ]
    incomplete = [k for k, s in samples.items() if set(s) != set(exts)]
    if incomplete:
        lines.append(f"  samples missing some extension: {' '.join(incomplete)}")
    for key in keys_in_order[:n_samples]:
        sample = samples[key]
        lines.append(f"  -- {key}: " + ", ".join(f"{e} {len(b)} B" for e, b in sorted(sample.items())))
        if "json" in sample:
            try:
                lines.append("     " + json.dumps(json.loads(sample["json"]), ensure_ascii=False))
            except ValueError as exc:
                lines.append(f"     json unreadable: {exc}")
        if "txt" in sample:
            lines.append("     txt: " + sample["txt"].decode("utf-8", "replace")[:200])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(prog="python -m data_tools.inspect_shards", description=__doc__.split("\n\n")[0])
    ap.add_argument("tars", nargs="+", type=Path)
    ap.add_argument("--samples", type=int, default=3, help="samples to show per tar (default 3)")
    args = ap.parse_args(argv)
    status = 0
    for path in args.tars:
        try:
            print(describe(path, args.samples))
        except (OSError, tarfile.TarError) as exc:
            print(f"{path}: cannot read: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
