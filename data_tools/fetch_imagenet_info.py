"""Fetch ImageNet class lists (wnids, lemmas) from the timm wheel, without installing timm.

``pip download --no-deps timm==1.0.31`` into a temp folder, then the wheel is read as
a zip and three files of ``timm/data/_info/`` are written to ``<cache>/imagenet_info/``:
``imagenet_synsets.txt`` (1,000 IN-1k wnids), ``imagenet22k_synsets.txt`` (21,841
IN-22k wnids) and ``imagenet_synset_to_lemma.txt`` (wnid TAB lemmas).
"""

from __future__ import annotations

import re
import sys
import tempfile
import zipfile
from pathlib import Path

from .common import LOG, SourceError, check_count, read_marker, run, staged_dir, write_marker

SOURCE = "imagenet_info"
TIMM_VERSION = "1.0.31"
INFO_DIR = "timm/data/_info"
FILES = {
    "imagenet_synsets.txt": 1000,
    "imagenet22k_synsets.txt": 21841,
    "imagenet_synset_to_lemma.txt": 21844,
}
WNID_RE = re.compile(r"^n\d{8}$")


def verify_lines(name: str, text: str) -> int:
    """Check each line of one info file (a wnid, or ``wnid<TAB>lemmas``); return the count.

    Raises:
        SourceError: on a malformed line or a count other than expected.
    """
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        wnid = line.split("\t", 1)[0]
        if not WNID_RE.match(wnid):
            raise SourceError(SOURCE, f"{name}:{n}: not a wnid line: {line[:60]!r}")
    check_count(SOURCE, f"lines in {name}", FILES[name], len(lines))
    return len(lines)


def fetch_imagenet_info(cache: Path, force: bool = False, keep_downloads: bool = False) -> dict:
    """Download the timm wheel and extract the ImageNet info files; return the marker.

    Raises:
        SourceError: pip failed, the wheel lacks a file, or a count check failed.
    """
    dest = cache / SOURCE
    if not force and (marker := read_marker(dest)) is not None:
        LOG.info("%s: already complete (%s), skipping", SOURCE, dest)
        return marker
    with tempfile.TemporaryDirectory(prefix="timm-wheel-") as wheel_dir:
        LOG.info("%s: pip download --no-deps timm==%s", SOURCE, TIMM_VERSION)
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                f"timm=={TIMM_VERSION}",
                "-d",
                wheel_dir,
            ],
            SOURCE,
        )
        wheels = sorted(Path(wheel_dir).glob(f"timm-{TIMM_VERSION}-*.whl"))
        if not wheels:
            raise SourceError(SOURCE, f"pip download produced no timm-{TIMM_VERSION} wheel")
        counts = {}
        with staged_dir(dest) as tmp, zipfile.ZipFile(wheels[0]) as zf:
            for name in FILES:
                try:
                    data = zf.read(f"{INFO_DIR}/{name}")
                except KeyError as exc:
                    raise SourceError(SOURCE, f"{wheels[0].name} has no {INFO_DIR}/{name}") from exc
                counts[name] = verify_lines(name, data.decode("utf-8"))
                (tmp / name).write_bytes(data)
            in1k = set((tmp / "imagenet_synsets.txt").read_text().split())
            in22k = set((tmp / "imagenet22k_synsets.txt").read_text().split())
            lemmas = {ln.split("\t", 1)[0] for ln in (tmp / "imagenet_synset_to_lemma.txt").read_text().splitlines()}
            if not (in1k | in22k) <= lemmas:
                raise SourceError(SOURCE, f"{len((in1k | in22k) - lemmas)} wnids have no lemma line")
            # Known quirk: IN-1k's n04399382 (teddy bear) is not in the 21,841 IN-22k list.
            counts["in1k_not_in_in22k"] = sorted(in1k - in22k)
            LOG.info("%s: verified %s", SOURCE, ", ".join(f"{k}={v}" for k, v in counts.items()))
            marker = write_marker(tmp, SOURCE, versions={"timm": TIMM_VERSION}, wheel=wheels[0].name, counts=counts)
    return marker
