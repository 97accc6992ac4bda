"""Write folder+index sources in img2dataset's webdataset output layout (for test fixtures).

Output folder, as ``img2dataset --output_format webdataset`` leaves it (minus the
per-shard ``.parquet``, which needs pyarrow)::

    00000.tar          members KEY.jpg, KEY.json, KEY.txt per sample
    00000_stats.json   count, successes, failed_to_download, failed_to_resize,
                       duration, start_time, end_time, status_dict

* KEY: img2dataset's ``compute_key``: shard id * 10**ceil(log10(samples_per_shard))
  + position in the shard, zero-padded to 5 + that many digits (``000010003``).
  Samples are written in a seeded shuffled order, not key order, as the real tool's
  thread pool does; failed samples leave gaps in the keys and are absent from the tar.
* KEY.jpg: the image re-encoded as JPEG (quality 95), RGB, alpha composited on white,
  resized like img2dataset's ``resize_mode`` (``border`` default: longer side to
  ``image_size``, padded with white to a square; ``keep_ratio``: shorter side to
  ``image_size``; ``no``).
* KEY.txt: the caption: the row's caption (if any) then its tags as ``#hashtags``
  (whitespace and punctuation removed: ``"candy cane"`` -> ``#candycane``).
* KEY.json (4-space indent, like img2dataset): url, caption, key, status,
  error_message, width, height, original_width, original_height, exif (a JSON string),
  sha256 (of the KEY.jpg bytes). ``url`` is ``<source>/<path>``, never a local path.

Images larger than ``max_pixels`` (header size, checked before decoding) and
undecodable files (e.g. SVG) count as ``failed_to_resize``.

CLI::

    python -m data_tools.to_img2dataset --input INDEX.jsonl ROOT [--input ...] --out DIR
        [--samples-per-shard 10000] [--limit N] [--image-size 256]
        [--resize-mode border|keep_ratio|no] [--seed 0] [--max-pixels 100000000]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import random
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .common import LOG, atomic_write_bytes, atomic_write_text, setup_logging
from .index_io import read_index

OOM_SHARD_COUNT = 5
JPEG_QUALITY = 95
DEFAULT_MAX_PIXELS = 100_000_000
_NON_HASHTAG = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Sample:
    """One input image: its source name, index row and file path."""

    source: str
    row: dict
    image_path: Path


def hashtag(tag: str) -> str:
    """``"candy cane"`` -> ``"#candycane"``; ``""`` if nothing word-like is left."""
    word = _NON_HASHTAG.sub("", tag)
    return f"#{word}" if word else ""


def caption_text(row: dict) -> str:
    """The sample caption: the row's caption (if any) followed by its tags as hashtags."""
    tags = [h for h in (hashtag(t) for t in row.get("tags", [])) if h]
    parts = [row["caption"]] if row.get("caption") else []
    if tags:
        parts.append(" ".join(dict.fromkeys(tags)))
    return " ".join(parts)


def compute_key(index: int, shard_id: int, samples_per_shard: int, oom_shard_count: int = OOM_SHARD_COUNT) -> str:
    """img2dataset's sample key: zero-padded ``shard_id * 10**oom + index``."""
    oom_sample = max(1, math.ceil(math.log10(samples_per_shard)))
    return f"{shard_id * 10**oom_sample + index:0{oom_sample + oom_shard_count}d}"


@contextlib.contextmanager
def _pillow_pixel_limit() -> Iterator[None]:
    """Deliberately lift Pillow's decompression-bomb check for a block.

    Callers apply their own cap on the header size before anything is decoded.
    """
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def encode_jpeg(path: Path, image_size: int, resize_mode: str, max_pixels: int) -> tuple[bytes, dict]:
    """Decode ``path``, flatten on white, resize and JPEG-encode it.

    Returns:
        (jpeg bytes, {width, height, original_width, original_height, exif}).

    Raises:
        ValueError: the image exceeds ``max_pixels`` or ``resize_mode`` is unknown.
        OSError / PIL.UnidentifiedImageError: the file cannot be decoded.
    """
    from PIL import Image

    with _pillow_pixel_limit(), Image.open(path) as im:
        ow, oh = im.size
        if ow * oh > max_pixels:
            raise ValueError(f"image too large: {ow}x{oh} > {max_pixels} pixels")
        exif = {str(k): str(v).strip() for k, v in im.getexif().items()}
        if im.mode in ("I", "I;16", "I;16B", "F"):
            im = im.point(lambda v: v / 256).convert("L")  # 16-bit grey -> 8-bit
        rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    if resize_mode == "border":
        scale = image_size / max(ow, oh)
        new = (max(1, round(ow * scale)), max(1, round(oh * scale)))
        rgb = rgb.resize(new, Image.LANCZOS if scale > 1 else Image.BOX)
        canvas = Image.new("RGB", (image_size, image_size), (255, 255, 255))
        canvas.paste(rgb, ((image_size - new[0]) // 2, (image_size - new[1]) // 2))
        rgb = canvas
    elif resize_mode == "keep_ratio":
        scale = image_size / min(ow, oh)
        new = (max(1, round(ow * scale)), max(1, round(oh * scale)))
        rgb = rgb.resize(new, Image.LANCZOS if scale > 1 else Image.BOX)
    elif resize_mode != "no":
        raise ValueError(f"unknown resize_mode {resize_mode!r} (border, keep_ratio, no)")
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=JPEG_QUALITY)
    info = {"width": rgb.width, "height": rgb.height, "original_width": ow, "original_height": oh, "exif": json.dumps(exif)}
    return buf.getvalue(), info


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = len(data), int(mtime), 0o444
    ti.uname = ti.gname = "bigdata"  # what webdataset's TarWriter writes
    tar.addfile(ti, io.BytesIO(data))


def write_shard(
    samples: Sequence[Sample],
    shard_id: int,
    out: Path,
    samples_per_shard: int,
    image_size: int,
    resize_mode: str,
    max_pixels: int,
    seed: int,
    fixed_time: float | None = None,
) -> dict:
    """Write ``out/<shard>.tar`` and ``out/<shard>_stats.json`` for one shard; return the stats."""
    start = time.time() if fixed_time is None else fixed_time
    order = list(range(len(samples)))
    random.Random(seed * 1_000_003 + shard_id).shuffle(order)
    status: dict[str, int] = {}
    successes = failed = 0
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in order:
            s = samples[i]
            key = compute_key(i, shard_id, samples_per_shard)
            try:
                jpg, info = encode_jpeg(s.image_path, image_size, resize_mode, max_pixels)
            except Exception as exc:  # noqa: BLE001 - like img2dataset: count and go on
                failed += 1
                msg = f"{type(exc).__name__}: {exc}"
                status[msg] = status.get(msg, 0) + 1
                LOG.warning("to_img2dataset: %s/%s failed: %s", s.source, s.row["id"], msg)
                continue
            successes += 1
            status["success"] = status.get("success", 0) + 1
            caption = caption_text(s.row)
            meta = {
                "url": f"{s.source}/{s.row['path']}",
                "caption": caption,
                "key": key,
                "status": "success",
                "error_message": None,
                **info,
                "sha256": hashlib.sha256(jpg).hexdigest(),
            }
            mtime = start if fixed_time is None else fixed_time
            _add_member(tar, f"{key}.jpg", jpg, mtime)
            _add_member(tar, f"{key}.json", json.dumps(meta, indent=4).encode(), mtime)
            _add_member(tar, f"{key}.txt", caption.encode(), mtime)
    name = f"{shard_id:0{OOM_SHARD_COUNT}d}"
    atomic_write_bytes(out / f"{name}.tar", buf.getvalue())
    end = time.time() if fixed_time is None else fixed_time
    stats = {
        "count": len(samples),
        "successes": successes,
        "failed_to_download": 0,
        "failed_to_resize": failed,
        "duration": end - start,
        "start_time": start,
        "end_time": end,
        "status_dict": status,
    }
    atomic_write_text(out / f"{name}_stats.json", json.dumps(stats, indent=4))
    return stats


def load_samples(inputs: Iterable[tuple[Path, Path]], limit: int | None = None) -> list[Sample]:
    """Samples of each (index, root) pair, in index order, at most ``limit`` per input.

    The source name is the index file's stem.
    """
    samples = []
    for index, root in inputs:
        rows = read_index(Path(index))[:limit] if limit else read_index(Path(index))
        samples.extend(Sample(Path(index).stem, r, Path(root) / r["path"]) for r in rows)
    return samples


def to_img2dataset(
    samples: Sequence[Sample],
    out: Path,
    samples_per_shard: int = 10000,
    image_size: int = 256,
    resize_mode: str = "border",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
    fixed_time: float | None = None,
) -> list[dict]:
    """Write ``samples`` as img2dataset shards into ``out``; return each shard's stats.

    ``fixed_time`` (seconds) replaces the clock in stats and tar headers, for
    byte-reproducible fixtures.

    Raises:
        ValueError: ``samples_per_shard`` < 1.
    """
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats = []
    for shard_id, first in enumerate(range(0, len(samples), samples_per_shard)):
        chunk = samples[first : first + samples_per_shard]
        stats.append(write_shard(chunk, shard_id, out, samples_per_shard, image_size, resize_mode, max_pixels, seed, fixed_time))
        LOG.info("to_img2dataset: shard %05d: %d/%d written", shard_id, stats[-1]["successes"], len(chunk))
    return stats


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(
        prog="python -m data_tools.to_img2dataset", description="Write folder+index sources as img2dataset webdataset shards."
    )
    ap.add_argument(
        "--input",
        nargs=2,
        action="append",
        required=True,
        metavar=("INDEX", "ROOT"),
        type=Path,
        help="an index JSONL and its root folder (repeatable)",
    )
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--samples-per-shard", type=int, default=10000)
    ap.add_argument("--limit", type=int, default=None, help="at most N rows per input")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--resize-mode", choices=("border", "keep_ratio", "no"), default="border")
    ap.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    ap.add_argument("--seed", type=int, default=0, help="seed of the member order shuffle")
    args = ap.parse_args(argv)
    setup_logging()
    samples = load_samples([(i, r) for i, r in args.input], args.limit)
    stats = to_img2dataset(
        samples, args.out, args.samples_per_shard, args.image_size, args.resize_mode, args.max_pixels, args.seed
    )
    return 0 if sum(s["successes"] for s in stats) else 1


if __name__ == "__main__":
    raise SystemExit(main())
