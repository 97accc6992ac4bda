"""Malformed and unusual ingest input, built from the real fixture images.

Every generator returns bytes (or writes files) derived from images of
``tests/fixtures/corpus``; :func:`build_corpus` lays all of them out as three raw sources
(a folder + JSONL index, a folder + CSV index, a folder of img2dataset tars) and returns,
per sample id (``source:id`` as ingest names it), what ingest must do with it: write it
(with an optional check of the written pixels and metadata) or quarantine it with one
specific reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"
WRITTEN = "written"


# --------------------------------------------------------------------------- real images
def fixture_bytes(rel: str) -> bytes:
    """The bytes of a file of the fixture corpus."""
    return (FIXTURE / rel).read_bytes()


def emoji_png(name: str = "1f34e") -> bytes:
    """A real 64 x 64 RGBA emoji PNG (Noto, via emoji-datasource-google)."""
    return fixture_bytes(f"emoji_google/{name}.png")


def on_white(img: Image.Image) -> Image.Image:
    """RGBA composited on white, as RGB (what ingest stores for transparent images)."""
    rgba = img.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    bg.alpha_composite(rgba)
    return bg.convert("RGB")


def emoji_rgba(name: str = "1f34e") -> Image.Image:
    return Image.open(io.BytesIO(emoji_png(name))).convert("RGBA")


def wide_rgb() -> Image.Image:
    """A real non-square image: Tux Paint's police car stamp (199 x 56) on white."""
    return on_white(Image.open(FIXTURE / "tuxpaint/vehicles/emergency/sedan_police.png"))


def photo_jpeg() -> bytes:
    """A real JPEG as img2dataset wrote it (first image member of the fixture tar)."""
    with tarfile.open(FIXTURE / "img2dataset" / "00000.tar") as tf:
        m = next(m for m in tf if m.name.endswith(".jpg"))
        return tf.extractfile(m).read()


def real_svg() -> bytes:
    """A real Tux Paint SVG stamp."""
    return fixture_bytes("tuxpaint/symbols/money/00_symbols/yen_1_yen.svg")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def rgb_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


# --------------------------------------------------------------------------- bad image bytes
def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` fraction of ``data``."""
    return data[: max(1, int(len(data) * keep))]


def truncated_jpeg() -> bytes:
    return truncated(photo_jpeg(), 0.5)


def truncated_png() -> bytes:
    return truncated(emoji_png(), 0.33)


def not_an_image() -> bytes:
    """An HTML error page, as a scraper stores it under ``.jpg``."""
    return b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>gone</body></html>\n"


def noise_bytes(n: int = 4096, seed: str = "noise") -> bytes:
    """Deterministic pseudo-random bytes (no valid image signature)."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}{i}".encode()).digest()
        i += 1
    return b"\x00\x01" + out[: n - 2]


def png_claiming_size(w: int, h: int) -> bytes:
    """A real-looking PNG of a few bytes whose header claims ``w`` x ``h`` px (a decompression bomb)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def gif_claiming_size(w: int, h: int) -> bytes:
    """A tiny GIF whose logical screen and frame claim ``w`` x ``h`` px."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", w, h)
    i = data.index(b",")  # image descriptor
    data[i + 5 : i + 9] = struct.pack("<HH", w, h)
    return bytes(data)


BROKEN_SVG = b"<svg xmlns='http://www.w3.org/2000/svg'><g><rect width="
BILLION_LAUGHS_SVG = (
    b'<?xml version="1.0"?>\n<!DOCTYPE svg [\n <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaa">\n'
    + b"".join(f' <!ENTITY {c} "{("&" + p + ";") * 20}">\n'.encode() for p, c in zip("abcdef", "bcdefg"))
    + b']>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><text>&g;</text></svg>'
)
XXE_SVG = (
    b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><text y="20">&x;</text></svg>'
)
ASPECT_BOMB_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1000000"><rect width="1" height="1000000" fill="red"/></svg>'
)


# --------------------------------------------------------------------------- unusual but valid images
def cmyk_tiff() -> tuple[bytes, Image.Image]:
    """A CMYK TIFF of a real emoji, and the RGB image ingest must store (exactly)."""
    rgb = on_white(emoji_rgba())
    return encode(rgb.convert("CMYK"), "TIFF"), rgb


def cmyk_jpeg() -> tuple[bytes, Image.Image]:
    """A CMYK JPEG (Adobe) of a real emoji, and the RGB image it shows (up to JPEG loss)."""
    rgb = on_white(emoji_rgba("1f436"))
    return encode(rgb.convert("CMYK"), "JPEG", quality=95), rgb


def gray16_png() -> tuple[bytes, np.ndarray]:
    """A 16-bit grayscale PNG (values x 257) and the 8-bit gray values ingest must store."""
    gray = np.asarray(on_white(emoji_rgba()).convert("L"), dtype=np.uint16)
    img = Image.fromarray(gray * 257)
    assert img.mode.startswith("I")
    return encode(img, "PNG"), gray


def la_png() -> tuple[bytes, np.ndarray, np.ndarray]:
    """An LA (gray + alpha) PNG; its gray and alpha planes."""
    la = emoji_rgba().convert("LA")
    arr = np.asarray(la)
    return encode(la, "PNG"), arr[..., 0], arr[..., 1]


def palette_transparent_png() -> tuple[bytes, np.ndarray]:
    """A palette PNG whose transparent index is magenta; the mask of transparent pixels."""
    rgba = emoji_rgba()
    alpha = np.asarray(rgba)[..., 3]
    p = rgba.convert("RGB").quantize(colors=200)
    idx = np.asarray(p).copy()
    idx[alpha < 128] = 255
    pal = p.getpalette()[: 256 * 3]
    pal += [0] * (768 - len(pal))
    pal[255 * 3 : 255 * 3 + 3] = [255, 0, 255]
    out = Image.fromarray(idx.astype(np.uint8), "P")
    out.putpalette(pal)
    return encode(out, "PNG", transparency=255), alpha < 128


def bilevel_png() -> bytes:
    return encode(on_white(emoji_rgba()).convert("1"), "PNG")


def exif_rotated_jpeg() -> tuple[bytes, Image.Image]:
    """A JPEG stored rotated 90 degrees with EXIF Orientation 6, and the upright image it shows."""
    upright = wide_rgb()
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes()), upright


def animated_gif() -> tuple[bytes, list[Image.Image]]:
    """A 3-frame GIF of three real emoji; the frames as RGB."""
    frames = [on_white(emoji_rgba(n)) for n in ("1f34e", "1f436", "1f697")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0), frames


# --------------------------------------------------------------------------- expectations
@dataclass
class Case:
    """What ingest must do with one input sample."""

    expect: str  # WRITTEN or a quarantine reason
    check: Callable[[dict, np.ndarray], None] | None = None  # (shard metadata, stored RGB pixels) for written samples
    tags: list[str] | None = None  # expected normalized hashtags of a written sample


def _close(expected: Image.Image | np.ndarray, tol: float) -> Callable[[dict, np.ndarray], None]:
    exp = rgb_array(expected) if isinstance(expected, Image.Image) else np.asarray(expected, dtype=np.int16)

    def check(meta: dict, px: np.ndarray) -> None:
        assert px.shape == exp.shape, (px.shape, exp.shape)
        err = float(np.abs(px.astype(np.int16) - exp).mean())
        assert err <= tol, f"mean abs pixel error {err:.2f} > {tol}"

    return check


def image_cases() -> dict[str, tuple[bytes | None, str, Case]]:
    """id -> (file bytes, file name, expectation) for the folder source; bytes None = no file."""
    cmyk_t, cmyk_t_rgb = cmyk_tiff()
    cmyk_j, cmyk_j_rgb = cmyk_jpeg()
    g16, g16_gray = gray16_png()
    la, la_l, la_a = la_png()
    pal, pal_mask = palette_transparent_png()
    exif, upright = exif_rotated_jpeg()
    gif, frames = animated_gif()

    def check_la(meta, px):
        assert (px[la_a == 0] == 255).all(), "transparent LA pixels must be white"
        opaque = la_a == 255
        assert (px[opaque] == la_l[opaque][:, None]).all(), "opaque LA pixels keep their gray"

    def check_palette(meta, px):
        assert (px[pal_mask] == 255).all(), "the transparent palette index must become white, not magenta"
        assert not ((px[..., 0] == 255) & (px[..., 1] == 0) & (px[..., 2] == 255)).any()

    def check_exif(meta, px):
        assert (meta["orig_width"], meta["orig_height"]) == upright.size, "EXIF orientation not applied"
        shown = upright.copy()
        shown.thumbnail((max(px.shape[:2]),) * 2, Image.Resampling.LANCZOS, reducing_gap=3.0)
        _close(shown, 6.0)(meta, px)

    def check_gif(meta, px):
        assert meta["frames"] == 3
        errs = [float(np.abs(px.astype(np.int16) - rgb_array(f)).mean()) for f in frames]
        assert errs[0] < 4 and errs[0] < min(errs[1:]) / 3, f"not the first frame: {errs}"

    def check_svg(meta, px):
        assert meta["source_format"] == "SVG" and max(px.shape[:2]) == 128
        assert px.std() > 10, "rasterized SVG is blank"

    def check_gray16(meta, px):
        assert (px == g16_gray[..., None]).all(), "16-bit values must be scaled to 8 bit (/257)"

    return {
        "baseline_rgba": (emoji_png(), "baseline.png", Case(WRITTEN, _close(on_white(emoji_rgba()), 0))),
        "truncated_jpeg": (truncated_jpeg(), "trunc.jpg", Case("truncated_image")),
        "truncated_png": (truncated_png(), "trunc.png", Case("truncated_image")),
        "zero_bytes": (b"", "zero.jpg", Case("empty_file")),
        "html_as_jpg": (not_an_image(), "page.jpg", Case("undecodable_image")),
        "noise_as_png": (noise_bytes(), "noise.png", Case("undecodable_image")),
        "bomb_png": (png_claiming_size(30000, 30000), "bomb.png", Case("decompression_bomb")),
        "bomb_gif": (gif_claiming_size(65000, 65000), "bomb.gif", Case("decompression_bomb")),
        "too_small": (encode(on_white(emoji_rgba()).resize((3, 3)), "PNG"), "tiny.png", Case("too_small")),
        "cmyk_tiff": (cmyk_t, "cmyk.tif", Case(WRITTEN, _close(cmyk_t_rgb, 0))),
        "cmyk_jpeg": (cmyk_j, "cmyk.jpg", Case(WRITTEN, _close(cmyk_j_rgb, 4.0))),
        "gray16_png": (g16, "gray16.png", Case(WRITTEN, check_gray16)),
        "la_png": (la, "la.png", Case(WRITTEN, check_la)),
        "palette_transparency": (pal, "pal.png", Case(WRITTEN, check_palette)),
        "bilevel": (bilevel_png(), "bilevel.png", Case(WRITTEN)),
        "exif_rotated": (exif, "exif.jpg", Case(WRITTEN, check_exif)),
        "animated_gif": (gif, "anim.gif", Case(WRITTEN, check_gif)),
        "svg": (real_svg(), "yen.svg", Case(WRITTEN, check_svg)),
        "svg_broken": (BROKEN_SVG, "broken.svg", Case("undecodable_svg")),
        "svg_billion_laughs": (BILLION_LAUGHS_SVG, "lol.svg", Case("undecodable_svg")),
        "svg_xxe": (XXE_SVG, "xxe.svg", Case("undecodable_svg")),
        "svg_aspect_bomb": (ASPECT_BOMB_SVG, "tall.svg", Case("undecodable_svg")),
        "svg_bytes_as_png": (real_svg(), "svg_named.png", Case(WRITTEN, check_svg)),
        "missing": (None, "nope.png", Case("missing_file")),
    }


def _jsonl(rec: dict) -> bytes:
    return json.dumps(rec).encode("utf-8") + b"\n"


def build_folder_source(root: Path) -> tuple[dict, dict[str, Case]]:
    """Images + a JSONL index with every image case and every tag case; (source config, expected)."""
    imgs = root / "imgs"
    imgs.mkdir(parents=True)
    lines: list[bytes] = []
    expected: dict[str, Case] = {}
    for sid, (data, fname, case) in image_cases().items():
        if data is not None:
            (imgs / fname).write_bytes(data)
        lines.append(_jsonl({"id": sid, "path": fname, "tags": ["#fuzz", sid]}))
        expected[sid] = case
    good = "baseline.png"
    os.mkfifo(imgs / "fifo.png")  # reading it would block forever
    (imgs / "dir.png").mkdir()
    outside = root / "outside.png"
    outside.write_bytes(emoji_png())
    os.symlink(outside, imgs / "link_out.png")
    os.symlink("baseline.png", imgs / "link_in.png")
    paths = {
        "fifo": ("fifo.png", "missing_file"),
        "directory": ("dir.png", "missing_file"),
        "symlink_outside": ("link_out.png", "path_outside_root"),
        "symlink_inside": ("link_in.png", WRITTEN),
        "dotdot_path": ("../outside.png", "path_outside_root"),
        "absolute_path": (str(outside), "path_outside_root"),
        "nul_in_path": ("base\x00line.png", "invalid_metadata"),
    }
    for sid, (p, expect) in paths.items():
        lines.append(_jsonl({"id": sid, "path": p, "tags": ["fuzz"]}))
        expected[sid] = Case(expect)
    tag_rows: dict[str, tuple[object, Case]] = {
        "tags_control_chars": (["\x00ca\x07t", "\u200bdog\u200d", "a\x1bb"], Case(WRITTEN, tags=["cat", "dog", "ab"])),
        "tags_only_control": (["\x00\x01\x02", "\u200b", "\x7f"], Case("no_hashtags")),
        "tags_empty_list": ([], Case("no_hashtags")),
        "tags_null": (None, Case("no_hashtags")),
        "tags_number": (5, Case("invalid_metadata")),
        "tags_non_string": (["ok", 7], Case("invalid_metadata")),
        "tags_whitespace": (["  ", "#", "\t\n"], Case("no_hashtags")),
        "tags_long": (["x" * 5000], Case("no_hashtags")),  # longer than ingest.max_hashtag_chars: dropped, not cut
        "tags_long_and_short": (["x" * 5000, "dog"], Case(WRITTEN, tags=["dog"])),
        "tags_unicode": (
            ["Ｃａｆé", "Straße", "猫", "שָׁלוֹם", "e\u0301"],
            Case(WRITTEN, tags=["café", "strasse", "猫", "שָׁלוֹם", "é"]),
        ),
        "tags_newline": (["hello\nworld"], Case(WRITTEN, tags=["hello_world"])),
    }
    for sid, (tags, case) in tag_rows.items():
        lines.append(_jsonl({"id": sid, "path": good, "tags": tags}))
        expected[sid] = case
    lines.append(_jsonl({"id": "tags_absent", "path": good}))
    expected["tags_absent"] = Case("no_hashtags")
    # lone surrogates, valid JSON escapes that no UTF-8 encoder accepts
    for sid, raw in {
        "surrogate_tag": b'{"id": "surrogate_tag", "path": "baseline.png", "tags": ["\\ud83d"]}',
        "surrogate_caption": b'{"id": "surrogate_caption", "path": "baseline.png", "tags": ["x"], "caption": "#a \\udcff"}',
        "surrogate_meta": b'{"id": "surrogate_meta", "path": "baseline.png", "tags": ["x"], "meta": {"k": "\\udfff"}}',
        "surrogate_path": b'{"id": "surrogate_path", "path": "base\\ud800.png", "tags": ["x"]}',
    }.items():
        lines.append(raw + b"\n")
        expected[sid] = Case("invalid_utf8")
    lines.append(b'{"id": "sur\\ud800id", "path": "baseline.png", "tags": ["x"]}\n')
    expected["sur\\ud800id"] = Case("invalid_utf8")  # quarantine rows show the surrogate backslash-escaped
    lines.append(_jsonl({"id": "caption_hashtags", "path": good, "tags": [], "caption": "at the beach #Sunset #beach_life!"}))
    expected["caption_hashtags"] = Case(WRITTEN, tags=["sunset", "beach_life"])
    index = root / "index.jsonl"
    body = b"".join(lines)
    offset = len(body)
    body += b'{"id": "latin1", "path": "baseline.png", "tags": ["caf\xe9"]}\n'
    expected[f"index.jsonl@{offset}"] = Case("invalid_utf8")
    offset = len(body)
    body += b"{this is not json\n"
    expected[f"index.jsonl@{offset}"] = Case("invalid_metadata")
    offset = len(body)
    body += b"[1, 2, 3]\n"
    expected[f"index.jsonl@{offset}"] = Case("invalid_metadata")
    index.write_bytes(body)
    src = {"name": "fz", "format": "folder", "root": str(imgs), "index": str(index), "encoding": "png"}
    return src, {f"fz:{k}": v for k, v in expected.items()}


def build_csv_source(root: Path) -> tuple[dict, dict[str, Case]]:
    """A CSV index over real images: good rows, Latin-1 bytes, NUL and control characters in tags."""
    imgs = root / "imgs"
    imgs.mkdir(parents=True)
    (imgs / "a.png").write_bytes(emoji_png("1f436"))
    rows = [
        b"path,tags,id",
        b"a.png,dog|#Puppy,good",
        b"a.png,caf\xe9|x,latin1",
        b"a.png,d\x00og|\x07cat,nul",
        b"a.png,,empty",
        b"nope.png,x,missing",
    ]
    index = root / "index.csv"
    index.write_bytes(b"\n".join(rows) + b"\n")
    src = {"name": "fzcsv", "format": "folder", "root": str(imgs), "index": str(index), "encoding": "png"}
    return src, {
        "fzcsv:good": Case(WRITTEN, tags=["dog", "puppy"]),
        "fzcsv:latin1": Case("invalid_utf8"),
        "fzcsv:nul": Case(WRITTEN, tags=["dog", "cat"]),
        "fzcsv:empty": Case("no_hashtags"),
        "fzcsv:missing": Case("missing_file"),
    }


# --------------------------------------------------------------------------- tars
def add_member(tf: tarfile.TarFile, name: str | bytes, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    """Append one member of any type (names may be raw bytes: tarfile keeps them as surrogate escapes)."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "surrogateescape")
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    ti.mtime = 0
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _meta(key: str, **kw) -> bytes:
    return json.dumps({"key": key, "status": "success", **kw}).encode()


def add_sample(
    tf: tarfile.TarFile,
    key: str,
    image: bytes | None,
    caption: str | None = "#fuzz #tar",
    meta: bytes | None = b"auto",
    ext: str = "jpg",
) -> None:
    if image is not None:
        add_member(tf, f"{key}.{ext}", image)
    if caption is not None:
        add_member(tf, f"{key}.txt", caption.encode())
    if meta is not None:
        add_member(tf, f"{key}.json", _meta(key) if meta == b"auto" else meta)


def build_tar_source(root: Path) -> tuple[dict, dict[str, Case]]:
    """img2dataset-style tars: unsafe members, missing members, bad metadata, duplicate keys
    across two tars, a truncated tar and a file that is not a tar."""
    root.mkdir(parents=True)
    jpg = photo_jpeg()
    exp: dict[str, Case] = {}
    with tarfile.open(root / "00000.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        add_sample(tf, "good", jpg)
        exp["good"] = Case(WRITTEN, tags=["fuzz", "tar"])
        add_sample(tf, "dupkey", jpg, caption="#first")
        exp["dupkey"] = Case(WRITTEN)  # ids are source:key; the copy in 00001.tar is removed by dedup
        add_member(tf, "../escape.jpg", jpg)
        exp["../escape.jpg"] = Case("unsafe_member")
        add_member(tf, "../../escape.json", _meta("x"))
        exp["../../escape.json"] = Case("unsafe_member")
        add_member(tf, "/abs/path.jpg", jpg)
        exp["/abs/path.jpg"] = Case("unsafe_member")
        add_member(tf, "sym.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")
        exp["sym.jpg"] = Case("unsafe_member")
        add_member(tf, "hard.jpg", kind=tarfile.LNKTYPE, link="good.jpg")
        exp["hard.jpg"] = Case("unsafe_member")
        add_member(tf, "dev.jpg", kind=tarfile.CHRTYPE)
        exp["dev.jpg"] = Case("unsafe_member")
        add_member(tf, "fifo.jpg", kind=tarfile.FIFOTYPE)
        exp["fifo.jpg"] = Case("unsafe_member")
        add_member(tf, "subdir", kind=tarfile.DIRTYPE)  # directories are skipped, not samples
        add_sample(tf, "subdir/nested", jpg)
        exp["subdir/nested"] = Case(WRITTEN)
        add_sample(tf, "nojson", jpg, meta=None)
        exp["nojson"] = Case("missing_json")
        add_sample(tf, "noimage", None)
        exp["noimage"] = Case("missing_image")
        add_sample(tf, "zero", b"")
        exp["zero"] = Case("empty_file")
        add_sample(tf, "html", not_an_image())
        exp["html"] = Case("undecodable_image")
        add_sample(tf, "truncjpg", truncated_jpeg())
        exp["truncjpg"] = Case("truncated_image")
        add_sample(tf, "svg", real_svg(), ext="svg")
        exp["svg"] = Case(WRITTEN)
        add_sample(tf, "jsonlatin1", jpg, meta=b'{"key": "jsonlatin1", "status": "success", "tags": ["caf\xe9"]}')
        exp["jsonlatin1"] = Case("invalid_utf8")
        add_sample(tf, "jsonsurrogate", jpg, meta=b'{"key": "jsonsurrogate", "status": "success", "tags": ["\\ud800"]}')
        exp["jsonsurrogate"] = Case("invalid_utf8")
        add_sample(tf, "jsonbad", jpg, meta=b"{not json")
        exp["jsonbad"] = Case("invalid_metadata")
        add_sample(tf, "jsonlist", jpg, meta=b"[1]")
        exp["jsonlist"] = Case("invalid_metadata")
        add_sample(tf, "failed", jpg, meta=_meta("failed", status="failed_to_download", error_message="404"))
        exp["failed"] = Case("download_failed")
        add_sample(tf, "notags", jpg, caption="no hashtags here")
        exp["notags"] = Case("no_hashtags")
        add_sample(tf, "ctrltags", jpg, caption="#c\x00a\x07t #\u200bdog")
        exp["ctrltags"] = Case(WRITTEN, tags=["c"])  # a caption hashtag ends at the first non-word character
        add_member(tf, b"badname\xff.jpg", jpg)
        add_member(tf, b"badname\xff.json", b'{"status": "success", "tags": ["x"]}')
        exp["badname\\udcff"] = Case("invalid_utf8")  # key from a non-UTF-8 member name
    with tarfile.open(root / "00001.tar", "w") as tf:
        add_sample(tf, "dupkey", jpg, caption="#second")
        exp["dupkey#2"] = Case(WRITTEN)  # same id "tars:dupkey" in another unit
        add_sample(tf, "other", jpg)
        exp["other"] = Case(WRITTEN)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        add_sample(tf, "beforecut", jpg)
        add_sample(tf, "aftercut", jpg * 3)
    raw = buf.getvalue()
    cut = raw.index(b"aftercut.jpg") + 512 + len(jpg)  # inside the second image's data
    (root / "00002.tar").write_bytes(raw[:cut])
    exp["beforecut"] = Case(WRITTEN)
    exp["aftercut"] = Case("truncated_tar")  # the sample the archive ends in
    exp["00002.tar#truncated"] = Case("truncated_tar")
    (root / "00003.tar").write_bytes(b"not a tar archive at all\n")
    exp["00003.tar"] = Case("unreadable_input")
    (root / "00004.tar").write_bytes(b"")  # a zero-byte "tar" (an interrupted download)
    exp["00004.tar"] = Case("unreadable_input")
    src = {"name": "tars", "format": "img2dataset", "root": str(root), "encoding": "png"}
    return src, {f"tars:{k}": v for k, v in exp.items()}


def build_corpus(root: Path) -> tuple[list[dict], dict[str, Case]]:
    """All three sources under ``root``; (source configs, expected outcome per ``source:id``)."""
    sources, expected = [], {}
    for build, sub in ((build_folder_source, "folder"), (build_csv_source, "csv"), (build_tar_source, "tars")):
        src, exp = build(root / sub)
        sources.append(src)
        expected.update(exp)
    return sources, expected


def sources_override(sources: list[dict]) -> str:
    """A Hydra override ``data.sources=[...]`` for source dicts (values without special characters)."""
    items = ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in s.items()) + "}" for s in sources)
    return f"data.sources=[{items}]"
