"""Rewrite the JSON shard indexes of a run folder (format 1, ingested before the Parquet index) as Parquet, once.

Usage: ``python -m data_tools.upgrade_shard_index RUN_DIR``

Every stage reads a JSON index as it is, so this is optional: it makes dedup and vocab read their columns
instead of parsing every sample's metadata (:mod:`pipeline.io.shard_index`). Each shard's Parquet index is
written atomically and read back equal to the JSON one before the JSON file is deleted; a shard that already
has a Parquet index is left alone, so the command can be rerun after an interruption. The ingest manifest's
list of outputs is updated to name the new files. The stage keys do not change (the index is not a stage
input, the tars are): no stage is redone because of it.

Exit status: 0 when every shard has a Parquet index afterwards, 1 on an error (one line: the shard and why).
"""

from __future__ import annotations

import argparse
import sys
import time

from pipeline.io.atomic import read_json, write_json
from pipeline.io.manifest import MANIFEST, stage_dir
from pipeline.io.run_folder import INGEST
from pipeline.io.shard_index import index_path, upgrade_indexes
from pipeline.io.shards import shard_paths


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a run folder with a finished ingest stage")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        shards = shard_paths(args.run_dir)
        done, kept = upgrade_indexes(shards)
        man_path = stage_dir(args.run_dir, INGEST) / MANIFEST  # its list of outputs names the new files
        man = read_json(man_path)
        for entry in man["outputs"]["shards"]:
            entry["index"] = index_path(entry["path"]).as_posix()
        write_json(man_path, man)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.run_dir}: {done} JSON shard index(es) rewritten as Parquet, {kept} already Parquet "
        f"({len(shards)} shards, {time.perf_counter() - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
