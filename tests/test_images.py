"""Canonical image conversion: modes, alpha, orientation, animation, caps, hashing."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from conftest import FIXTURE
from PIL import Image

from pipeline.errors import Rejected
from pipeline.vision.images import decode_image, encode_image, looks_like_svg

KW = dict(max_pixels=50_000_000, max_side=512)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def real_emoji_bytes() -> bytes:
    """A real 64x64 RGBA emoji PNG from the committed fixture corpus."""
    return sorted((FIXTURE / "emoji_google").glob("*.png"))[0].read_bytes()


def test_real_rgba_emoji_is_composited_on_white():
    data = real_emoji_bytes()
    src = Image.open(io.BytesIO(data))
    assert src.mode in ("RGBA", "P", "LA")
    canon = decode_image(data, **KW)
    assert canon.image.mode == "RGB" and canon.image.size == src.size
    rgba = np.asarray(src.convert("RGBA"))
    out = np.asarray(canon.image)
    transparent = rgba[..., 3] == 0
    assert transparent.any(), "fixture emoji should have a transparent background"
    assert (out[transparent] == 255).all(), "transparent pixels must become white, not black"


def test_pixel_hash_ignores_container_but_not_pixels():
    data = real_emoji_bytes()
    a = decode_image(data, **KW)
    resaved = _png(Image.open(io.BytesIO(data)), compress_level=0)
    assert resaved != data
    assert decode_image(resaved, **KW).pixel_sha256 == a.pixel_sha256
    img = Image.open(io.BytesIO(data)).convert("RGBA")
    img.putpixel((32, 32), (1, 2, 3, 255))
    assert decode_image(_png(img), **KW).pixel_sha256 != a.pixel_sha256


@pytest.mark.parametrize("mode", ["CMYK", "L", "LA", "P", "I;16", "1"])
def test_modes_become_rgb(mode):
    base = Image.open(io.BytesIO(real_emoji_bytes())).convert("RGB")
    if mode == "I;16":
        arr = np.asarray(base.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(arr.astype("<u2"))
        assert img.mode == "I;16"
        data = _png(img)
    elif mode == "CMYK":
        buf = io.BytesIO()
        base.convert("CMYK").save(buf, "JPEG", quality=95)
        data = buf.getvalue()
    else:
        data = _png(base.convert(mode))
    canon = decode_image(data, **KW)
    assert canon.image.mode == "RGB" and canon.image.size == base.size
    if mode in ("L", "I;16"):
        # 16-bit values are scaled back to the 8-bit grey they came from
        np.testing.assert_allclose(np.asarray(canon.image)[..., 0], np.asarray(base.convert("L")), atol=1)


def test_palette_with_transparency_composites_white():
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 10, 20))
    data = _png(img, transparency=0)
    out = np.asarray(decode_image(data, **KW).image)
    assert (out[:, 15] == 255).all() and (out[:, 5] == [255, 0, 0]).all()


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    canon = decode_image(buf.getvalue(), **KW)
    assert canon.image.size == (20, 40) and (canon.orig_width, canon.orig_height) == (20, 40)


def test_animated_gif_keeps_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    canon = decode_image(buf.getvalue(), **KW)
    assert canon.frames == 3
    assert tuple(np.asarray(canon.image)[8, 8]) == (255, 0, 0)


def test_longer_side_capped_and_original_size_kept():
    img = Image.new("RGB", (1200, 300), (10, 20, 30))
    canon = decode_image(_png(img), max_pixels=10**8, max_side=256)
    assert canon.image.size == (256, 64)
    assert (canon.orig_width, canon.orig_height) == (1200, 300)


def _png_claiming_size(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h px (a decompression bomb's signature)."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty_file"),
        (b"this is not an image at all" * 10, "undecodable_image"),
        (_png_claiming_size(40000, 40000), "decompression_bomb"),
        (_png(Image.new("RGB", (4, 4))), "too_small"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><rect width=', "undecodable_svg"),
    ],
)
def test_rejections(data, reason):
    with pytest.raises(Rejected) as ei:
        decode_image(data, max_pixels=100_000_000, max_side=512, min_side=8)
    assert ei.value.reason == reason


def test_truncated_real_png():
    data = sorted((FIXTURE / "openclipart").rglob("*.png"))[0].read_bytes()
    with pytest.raises(Rejected) as ei:
        decode_image(data[: len(data) // 2], **KW)
    assert ei.value.reason in ("truncated_image", "undecodable_image")


def test_svg_rasterized_or_refused():
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50"><rect width="100" height="50" fill="blue"/></svg>'
    assert looks_like_svg(svg)
    canon = decode_image(svg, max_pixels=10**8, max_side=128)
    assert canon.image.size == (128, 64) and canon.source_format == "SVG"
    with pytest.raises(Rejected) as ei:
        decode_image(svg, max_pixels=10**8, max_side=128, rasterize_svg=False)
    assert ei.value.reason == "svg_disabled"


@pytest.mark.parametrize("enc,fmt", [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_encodings_roundtrip(enc, fmt):
    canon = decode_image(real_emoji_bytes(), **KW)
    blob = encode_image(canon.image, enc)
    back = Image.open(io.BytesIO(blob))
    assert back.format == fmt and back.size == canon.image.size
    if enc != "jpeg":  # lossless encodings keep the exact pixels
        assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(canon.image))
    with pytest.raises(ValueError):
        encode_image(canon.image, "gif")
