"""Image validation, canonical RGB conversion, size capping and re-encoding (ingest).

The canonical form of a sample's image is: fully decoded, EXIF orientation applied,
first frame of an animation, RGB with any alpha composited on white (dropping alpha
turns transparent backgrounds black: on the demo's openclipart about 1,960 unrelated
drawings then get the same pHash), 16-bit and float modes scaled to 8 bit, longer side capped at
``max_side`` px (Lanczos), then re-encoded as JPEG, lossless WebP or PNG.

``pixel_sha256`` hashes the canonical RGB pixels *before* the size cap, together with
their size, so two files that decode to the same picture (a PNG and its symlinked copy,
or the same image re-saved) get the same hash: the dedup stage's exact-duplicate key.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import Rejected

ENCODINGS = {"jpeg": "jpg", "webp": "webp", "png": "png"}
"""Encoder name -> tar member extension."""

SHARD_FORMATS = ("JPEG", "PNG", "WEBP")
"""Pillow's names of the :data:`ENCODINGS`: the formats ingest writes into shards."""


def set_pixel_cap(max_pixels: int) -> None:
    """Raise Pillow's decompression-bomb limit to our own cap, deliberately.

    Pillow refuses images above 2 x ``Image.MAX_IMAGE_PIXELS`` at open time and warns
    above it; :func:`decode_image` checks ``max_pixels`` itself from the header, before
    any pixel is decoded, and quarantines larger images as ``decompression_bomb``.
    """
    Image.MAX_IMAGE_PIXELS = int(max_pixels)


def looks_like_svg(data: bytes) -> bool:
    """True if the bytes start (after a BOM and whitespace) like an SVG/XML document."""
    head = data[:512].lstrip(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"<?xml") or head.startswith(b"<svg") or b"<svg" in head[:256]


@dataclass
class CanonicalImage:
    """A decoded, canonical sample image.

    Attributes:
        image: PIL image, mode ``RGB``, longer side <= max_side px.
        orig_width, orig_height: size in px after EXIF orientation, before the cap.
        pixel_sha256: hex SHA-256 of ``b"{w}x{h}:" + RGB bytes`` before the cap.
        source_format: Pillow's format name of the input (``PNG``, ``JPEG``, ``SVG``...).
        frames: number of frames in the input (> 1 for animations; the first is kept).
    """

    image: Image.Image
    orig_width: int
    orig_height: int
    pixel_sha256: str
    source_format: str
    frames: int = 1


def _rasterize_svg(data: bytes, max_side: int) -> Image.Image:
    try:
        import cairosvg  # imported lazily: needs the system libcairo2
    except (ImportError, OSError) as exc:  # pragma: no cover - depends on the machine
        raise Rejected("undecodable_svg", f"cairosvg unavailable: {exc}") from exc
    try:
        png = cairosvg.svg2png(bytestring=data, output_width=max_side, unsafe=False)
    except Exception as exc:  # cairosvg raises many types on bad input
        raise Rejected("undecodable_svg", f"{type(exc).__name__}: {exc}"[:300]) from exc
    return Image.open(io.BytesIO(png))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency on white."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        background.alpha_composite(img)
        return background.convert("RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    max_side: int,
    min_side: int = 1,
    rasterize_svg: bool = True,
) -> CanonicalImage:
    """Fully decode ``data`` into a :class:`CanonicalImage`.

    Args:
        data: encoded image bytes (JPEG, PNG, WebP, GIF, BMP, TIFF, ... or SVG).
        max_pixels: largest accepted width x height of the input, in pixels.
        max_side: the longer side of the output is capped to this many px.
        min_side: inputs whose shorter side is below this many px are rejected.
        rasterize_svg: rasterize SVG with cairosvg at ``max_side`` px wide.

    Raises:
        Rejected: with reason ``empty_file``, ``undecodable_image``, ``truncated_image``,
            ``decompression_bomb``, ``too_small``, ``svg_disabled`` or ``undecodable_svg``.
    """
    if not data:
        raise Rejected("empty_file")
    if looks_like_svg(data):
        if not rasterize_svg:
            raise Rejected("svg_disabled")
        img = _rasterize_svg(data, max_side)
        source_format = "SVG"
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Rejected("decompression_bomb", str(exc)[:200]) from exc
        except UnidentifiedImageError as exc:
            raise Rejected("undecodable_image", "unknown image format") from exc
        except Exception as exc:
            raise Rejected("undecodable_image", f"{type(exc).__name__}: {exc}"[:300]) from exc
        source_format = img.format or "unknown"
    w, h = img.size
    if w * h > max_pixels:
        raise Rejected("decompression_bomb", f"{w}x{h} px > max_pixels={max_pixels}")
    try:
        frames = int(getattr(img, "n_frames", 1) or 1)  # counting frames reads the whole file
        if frames > 1:
            img.seek(0)
        img.load()
    except OSError as exc:
        msg = str(exc)
        reason = "truncated_image" if "truncated" in msg or "broken data stream" in msg else "undecodable_image"
        raise Rejected(reason, msg[:300]) from exc
    except Exception as exc:
        raise Rejected("undecodable_image", f"{type(exc).__name__}: {exc}"[:300]) from exc
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # corrupt EXIF: keep the image as stored
        pass
    try:
        rgb = _to_rgb(img)
    except Exception as exc:
        raise Rejected("undecodable_image", f"mode {img.mode}: {exc}"[:300]) from exc
    w, h = rgb.size
    if min(w, h) < min_side:
        raise Rejected("too_small", f"{w}x{h} px < min_side={min_side}")
    digest = hashlib.sha256(f"{w}x{h}:".encode() + rgb.tobytes()).hexdigest()
    if max(w, h) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return CanonicalImage(rgb, w, h, digest, source_format, frames)


def encode_image(img: Image.Image, encoding: str, quality: int = 95, webp_method: int = 0) -> bytes:
    """Encode an RGB image; ``encoding`` is ``jpeg`` (``quality`` 1-100), ``webp`` (lossless,
    effort ``webp_method`` 0-6) or ``png``.

    Raises:
        ValueError: for an unknown encoding.
    """
    buf = io.BytesIO()
    if encoding == "jpeg":
        img.save(buf, "JPEG", quality=quality)
    elif encoding == "webp":
        img.save(buf, "WEBP", lossless=True, method=webp_method)
    elif encoding == "png":
        img.save(buf, "PNG", compress_level=6)
    else:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of {sorted(ENCODINGS)}")
    return buf.getvalue()
