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
error, or a file that cannot be read safely (a pickle, a truncated file): unverified. The scan is
:mod:`pipeline.io.withdrawn_audit`; the ids file is read by :func:`pipeline.io.removal.read_withdrawn`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.io.removal import read_withdrawn
from pipeline.io.withdrawn_audit import audit


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
    ids = read_withdrawn(str(ids_file), key="--ids")
    rep = audit(root, ids, skip={ids_file})
    status = 1 if rep.found else 2 if rep.unverified else 0
    if args.json:
        print(
            json.dumps(
                {
                    "run_dir": str(root),
                    "ids": len(ids),
                    "files": rep.files,
                    "found": rep.found,
                    "excluded": rep.excluded,
                    "unverified": rep.unverified,
                    "status": status,
                },
                indent=1,
            )
        )
    else:
        for line in rep.found:
            print(f"FOUND      {line}")
        for line in rep.unverified:
            print(f"UNVERIFIED {line}")
        for line in rep.excluded:
            print(f"excluded   {line}")
        verdict = {0: "clean", 1: "FOUND", 2: "UNVERIFIED"}[status]
        print(
            f"audit {verdict}: {len(ids)} ids, {rep.files} files scanned, {len(rep.found)} found, "
            f"{len(rep.unverified)} unverified, {len(rep.excluded)} exclusion records"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
