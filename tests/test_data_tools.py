"""Tests of data_tools: converters' parsing on the committed fixture, formats, failure handling.

No network and no ``data/raw`` cache needed: everything runs on
``tests/fixtures/corpus`` or on tiny files built in a temp folder.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from data_tools import common, fetch_deb, fetch_demo
from data_tools.common import SourceError, check_count, png_size, staged_dir
from data_tools.convert_emoji import emoji_rows, emojibase_lookup, normalize_hexcode
from data_tools.convert_fashion_mnist import CLASSES, load_split, write_split
from data_tools.convert_openclipart import openclipart_row
from data_tools.convert_tuxpaint import read_caption, stem_phrase, tuxpaint_row
from data_tools.fetch_debian import FASHION_FILES
from data_tools.fetch_imagenet_info import verify_lines
from data_tools.idx import read_idx, read_idx_header, write_idx
from data_tools.index_io import is_converted, make_row, publish_index, read_index, read_sources, validate_row, write_index
from data_tools.inspect_shards import describe, read_shard
from data_tools.lexnames import LEXNAMES, render_lexnames
from data_tools.svg_meta import parse_svg_meta, parse_svg_meta_bytes, strip_doctype
from data_tools.to_img2dataset import Sample, caption_text, compute_key, hashtag, to_img2dataset
from pipeline.io.atomic import read_jsonl

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "corpus"


def _rows(name: str) -> dict[str, dict]:
    return {r["id"]: r for r in read_index(FIXTURE / f"{name}.jsonl")}


# --------------------------------------------------------------------------- lexnames


def test_lexnames_has_45_numbered_lines_in_wordnet_order():
    lines = render_lexnames().splitlines()
    assert len(lines) == 45 and render_lexnames().endswith("\n")
    for i, line in enumerate(lines):
        num, name, pos = line.split("\t")
        assert num == f"{i:02d}"
        assert name == LEXNAMES[i]
        assert pos == {"noun": "1", "verb": "2", "adj": "3", "adv": "4"}[name.split(".")[0]]
    assert lines[0] == "00\tadj.all\t3"
    assert lines[2] == "02\tadv.all\t4"
    assert lines[3] == "03\tnoun.Tops\t1"
    assert lines[5] == "05\tnoun.animal\t1"
    assert lines[29] == "29\tverb.body\t2"
    assert lines[44] == "44\tadj.ppl\t3"
    assert len(set(LEXNAMES)) == 45


def test_lexnames_parse_like_nltk():
    # NLTK's reader: `index, lexname, _ = line.split(); assert int(index) == i`
    names = []
    for i, line in enumerate(io.StringIO(render_lexnames())):
        index, lexname, _ = line.split()
        assert int(index) == i
        names.append(lexname)
    assert names.index("noun.animal") == 5 and names.index("noun.artifact") == 6


# --------------------------------------------------------------------------- idx


def _idx_bytes(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def test_idx_decoder_reads_handmade_ubyte_file(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "tiny-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(_idx_bytes(0x08, (2, 3, 4), images.tobytes()))
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, images)


def test_idx_decoder_big_endian_int32_and_roundtrip(tmp_path):
    raw = _idx_bytes(0x0C, (3,), struct.pack(">3i", 1, -2, 70000))
    np.testing.assert_array_equal(read_idx(io.BytesIO(raw)), [1, -2, 70000])
    labels = np.array([9, 0, 3], dtype=np.uint8)
    write_idx(tmp_path / "l.idx", labels)
    assert (tmp_path / "l.idx").read_bytes() == _idx_bytes(0x08, (3,), labels.tobytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "l.idx"), labels)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "dtype"),
        (b"\x00\x00\x08\x02" + struct.pack(">I", 2), "truncated"),
        (_idx_bytes(0x08, (2, 2), b"\x00\x01\x02"), "size mismatch"),
        (_idx_bytes(0x08, (2,), b"\x00\x01\x02"), "size mismatch"),
    ],
)
def test_idx_decoder_rejects_bad_files(raw, message):
    with pytest.raises(ValueError, match=message):
        read_idx(io.BytesIO(raw))


def test_idx_header_only(tmp_path):
    fh = io.BytesIO(_idx_bytes(0x08, (60000, 28, 28), b""))
    dtype, shape = read_idx_header(fh)
    assert dtype == np.uint8 and shape == (60000, 28, 28) and fh.tell() == 16


def test_fashion_split_decode_and_imagefolder_layout(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 0], dtype=np.uint8)
    write_idx(tmp_path / FASHION_FILES["val_images"], images)
    write_idx(tmp_path / FASHION_FILES["val_labels"], labels)
    got_images, got_labels = load_split(tmp_path, "val_images", "val_labels")
    np.testing.assert_array_equal(got_images, images)
    counts = write_split(got_images, got_labels, tmp_path / "val", "test")
    assert counts["t-shirt_top"] == 2 and counts["ankle_boot"] == 2 and counts["bag"] == 1
    from PIL import Image

    with Image.open(tmp_path / "val" / "ankle_boot" / "00010.png") as im:
        assert im.mode == "L" and im.size == (28, 28)
        np.testing.assert_array_equal(np.asarray(im), images[10])


def test_fashion_split_rejects_bad_label_and_count_mismatch(tmp_path):
    write_idx(tmp_path / FASHION_FILES["val_images"], np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / FASHION_FILES["val_labels"], np.array([1, 10], np.uint8))
    with pytest.raises(ValueError, match="label 10"):
        load_split(tmp_path, "val_images", "val_labels")
    write_idx(tmp_path / FASHION_FILES["val_labels"], np.array([1], np.uint8))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_split(tmp_path, "val_images", "val_labels")


def test_fixture_fashion_mnist_layout():
    classes = json.loads((FIXTURE / "fashion_mnist" / "classes.json").read_text())
    assert classes["classes"] == list(CLASSES)
    for split, n in (("train", 5), ("val", 3)):
        for cls in CLASSES:
            files = sorted((FIXTURE / "fashion_mnist" / split / cls).glob("*.png"))
            assert len(files) == n, (split, cls)
            assert png_size(files[0]) == (28, 28)


# --------------------------------------------------------------------------- emoji


def test_normalize_hexcode_removes_fe0f_case_insensitively():
    assert normalize_hexcode("2764-fe0f") == "2764"
    assert normalize_hexcode("1F441-FE0F-200D-1F5E8-FE0F") == "1F441-200D-1F5E8"
    assert normalize_hexcode("0023-fe0f-20e3") == normalize_hexcode("0023-20E3") == "0023-20E3"
    assert normalize_hexcode("1f44b-1f3fb") == "1F44B-1F3FB"


def test_emoji_join_on_fixture_excerpt_reproduces_index():
    excerpt = json.loads((FIXTURE / "emojibase_excerpt.json").read_text(encoding="utf-8"))
    lookup = emojibase_lookup(excerpt)
    for vendor in ("google", "twitter"):
        rows, unmatched = emoji_rows(FIXTURE / f"emoji_{vendor}", lookup, vendor)
        assert unmatched == []
        assert {r["id"]: r for r in rows} == _rows(f"emoji_{vendor}")


def test_emoji_rows_content_fe0f_skins_and_multitone():
    rows = _rows("emoji_google")
    heart = rows["2764-fe0f"]
    assert heart["tags"][0] == "red heart" and heart["meta"]["hexcode"] == "2764"  # emojibase drops FE0F here
    wave = rows["1f44b"]
    assert wave["meta"]["skin_tone"] is None and "hello" in wave["tags"]
    tones = [rows[f"1f44b-{t}"]["meta"]["skin_tone"] for t in ("1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff")]
    assert tones == [1, 2, 3, 4, 5]
    dark = rows["1f44b-1f3ff"]
    assert dark["tags"][0] == "waving hand: dark skin tone"
    assert dark["meta"]["parent_hexcode"] == "1F44B" and "wave" in dark["tags"]  # inherited tags
    pair = rows["1f9d1-1f3fb-200d-1f91d-200d-1f9d1-1f3fc"]
    assert pair["meta"]["skin_tone"] == [1, 2]
    assert all(r["meta"]["vendor"] == "google" and r["path"] == r["id"] + ".png" for r in rows.values())


def test_emoji_unmatched_images_are_kept_with_empty_tags(tmp_path):
    src = FIXTURE / "emoji_google" / "1f600.png"
    (tmp_path / "1f600.png").write_bytes(src.read_bytes())
    (tmp_path / "e999.png").write_bytes(src.read_bytes())
    lookup = emojibase_lookup([{"label": "grinning face", "hexcode": "1F600", "tags": ["face"], "group": 0}])
    rows, unmatched = emoji_rows(tmp_path, lookup, "google")
    assert unmatched == ["e999"]
    by_id = {r["id"]: r for r in rows}
    assert by_id["e999"]["tags"] == [] and by_id["e999"]["meta"]["unmatched"] is True
    assert by_id["1f600"]["tags"] == ["grinning face", "face"]


def test_emojibase_lookup_rejects_colliding_hexcodes():
    with pytest.raises(ValueError, match="normalize to 2764"):
        emojibase_lookup([{"label": "a", "hexcode": "2764"}, {"label": "b", "hexcode": "2764-FE0F"}])


# --------------------------------------------------------------------------- openclipart


def _fixture_svgs() -> list[str]:
    root = FIXTURE / "openclipart_svg"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.svg"))


def test_fixture_has_svgs_for_the_special_openclipart_images():
    svgs = _fixture_svgs()
    assert "computer/floppy_frederic_moser_01.svg" in svgs
    assert "office/floppy_frederic_moser_01.svg" in svgs
    assert len(svgs) >= 5


def test_openclipart_svg_keyword_parse_matches_index():
    rows = _rows("openclipart")
    for rel in _fixture_svgs():
        meta = parse_svg_meta(FIXTURE / "openclipart_svg" / rel)
        row = rows[rel[:-4] + ".png"]
        assert meta.error is None, rel
        assert meta.keywords == row["tags"][: row["meta"]["n_keywords"]], rel
        assert row.get("caption") == meta.title
        if meta.title and meta.title not in meta.keywords:
            assert row["tags"][-1] == meta.title


def test_openclipart_entity_svg_parses_safely():
    data = (FIXTURE / "openclipart_svg" / "office" / "floppy_frederic_moser_01.svg").read_bytes()
    assert b"<!ENTITY ns_svg" in data
    body, n = strip_doctype(data)
    assert n == 11 and b"<!DOCTYPE" not in body and b"<!ENTITY" not in body
    meta = parse_svg_meta_bytes(data)
    assert meta.error is None and meta.title == "Floppy"
    assert meta.keywords == ["office", "icon", "openclipart", "computer", "work", "storage", "appicon"]


def test_openclipart_image_without_keywords():
    rows = _rows("openclipart")
    empty = [r for r in rows.values() if r["meta"]["n_keywords"] == 0]
    assert empty, "the fixture must hold an image without keywords"
    for r in empty:
        assert r["tags"] == ([r["caption"]] if r.get("caption") else [])


def test_openclipart_row_on_fixture_files(tmp_path):
    rows = _rows("openclipart")
    png_root, svg_root = FIXTURE / "openclipart", FIXTURE / "openclipart_svg"
    rel = "computer/floppy_frederic_moser_01.png"
    row = openclipart_row(png_root, svg_root, rel)
    assert row["tags"] == rows[rel]["tags"] and row["meta"]["width"] == rows[rel]["meta"]["width"]
    assert row["meta"]["category"] == "computer" and row["meta"]["is_symlink"] is False
    no_svg = next(r for r in sorted(rows) if r[:-4] + ".svg" not in _fixture_svgs())
    row = openclipart_row(png_root, svg_root, no_svg)
    assert row["tags"] == [] and "cannot read svg" in row["meta"]["svg_error"]


def test_openclipart_symlink_detection(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.png").write_bytes((FIXTURE / "openclipart" / "computer" / "floppy_frederic_moser_01.png").read_bytes())
    os.symlink("../a/x.png", tmp_path / "b" / "x.png")
    row = openclipart_row(tmp_path, tmp_path / "svg", "b/x.png")
    assert row["meta"]["is_symlink"] is True and row["meta"]["link_target"] == "a/x.png"
    assert row["meta"]["category"] == "b" and (row["meta"]["width"], row["meta"]["height"]) == (81, 87)


@pytest.mark.parametrize(
    "data",
    [
        b"<svg><metadata>",  # truncated
        b"",  # empty
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "x"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]><svg>&c;</svg>',  # entity expansion bomb
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]><svg>&x;</svg>',
    ],
)
def test_svg_parser_reports_errors_instead_of_raising_or_expanding(data):
    meta = parse_svg_meta_bytes(data)
    assert meta.error and meta.keywords == [] and meta.title is None


def test_svg_parser_reads_keywords_and_work_title():
    svg = b"""<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
      xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
      <metadata><rdf:RDF><cc:Work><dc:title>Red  apple</dc:title>
      <dc:subject><rdf:Bag><rdf:li>fruit</rdf:li><rdf:li> food </rdf:li><rdf:li>fruit</rdf:li><rdf:li/></rdf:Bag></dc:subject>
      <dc:creator><cc:Agent><dc:title>Somebody</dc:title></cc:Agent></dc:creator>
      </cc:Work></rdf:RDF></metadata></svg>"""
    meta = parse_svg_meta_bytes(svg)
    assert meta.error is None
    assert meta.keywords == ["fruit", "food"] and meta.title == "Red apple"


# --------------------------------------------------------------------------- tuxpaint


def test_tuxpaint_rows_on_fixture_reproduce_index():
    rows = _rows("tuxpaint")
    root = FIXTURE / "tuxpaint"
    rels = set(rows)
    for rel, expected in rows.items():
        assert tuxpaint_row(root, rel, rels) == expected, rel


def test_tuxpaint_pairs_mirror_and_captions():
    rows = _rows("tuxpaint")
    svgs = [r for r in rows.values() if r["meta"]["format"] == "svg"]
    assert len(svgs) >= 2
    for svg in svgs:
        png = rows[svg["meta"]["pair"]]
        assert png["meta"]["pair"] == svg["id"] and png["caption"] == svg["caption"]
        assert png["meta"]["caption_from"] == svg["meta"]["caption_from"]  # one .txt for both
    mirror = next(r for r in rows.values() if r["meta"]["mirror"])
    assert mirror["meta"]["caption_from"] == mirror["meta"]["mirror_of"][:-4] + ".txt"
    assert "mirror" not in mirror["tags"][-1]
    assert rows["food/fruit/banana.png"]["tags"] == ["food", "fruit", "banana"]


def test_stem_phrase_and_caption_first_line(tmp_path):
    assert stem_phrase("Candy_cane_photo_1") == "Candy cane photo 1"
    assert stem_phrase("adelaide-rosella") == "adelaide rosella"
    assert stem_phrase("sedan_police_mirror") == "sedan police"
    txt = tmp_path / "x.txt"
    txt.write_bytes("\ufeff\nA seahorse.  \nfr.utf8=Un hippocampe.\n".encode())
    assert read_caption(txt) == "A seahorse."
    assert read_caption(tmp_path / "missing.txt") is None


# --------------------------------------------------------------------------- index format


def test_validate_row_rejects_bad_rows():
    good = make_row("a/b.png", "a/b.png", ["x", " x ", "", "two  words"], caption=" hi ", k=1)
    assert good["tags"] == ["x", "two words"] and good["caption"] == "hi"
    validate_row(good)
    for bad in (
        {**good, "path": "/abs/b.png"},
        {**good, "path": "../b.png"},
        {**good, "tags": "x"},
        {**good, "tags": [""]},
        {**good, "meta": None},
        {**good, "caption": 3},
        {**good, "extra": 1},
        {**good, "id": ""},
        ["a", "a.png"],
    ):
        with pytest.raises(ValueError):
            validate_row(bad)


def test_publish_index_writes_the_index_and_its_sources_entry(tmp_path):
    cache, src = tmp_path / "cache", tmp_path / "cache" / "src"
    src.mkdir(parents=True)
    common.write_marker(src, "src")
    fp = common.marker_fingerprint(src)
    rows = [make_row("b", "b.png", ["t"]), make_row("a", "a.png", ["u"])]
    entry = publish_index(cache, "src", rows, "src/png", {"images": 2}, "MIT", fp, svg_parser="safe")
    assert entry == {
        "format": "folder+index",
        "root": "src/png",
        "index": "converted/src.jsonl",
        "count": 2,
        "counts": {"images": 2},
        "license": "MIT",
        "svg_parser": "safe",
        "input_fingerprint": fp,
    }
    assert read_sources(cache / "converted" / "sources.json")["sources"]["src"] == entry
    assert [r["id"] for r in read_index(cache / "converted" / "src.jsonl")] == ["a", "b"]
    assert is_converted(cache, "src", src)
    common.write_marker(src, "src", again=True)  # a re-fetch changes the marker: the conversion is stale
    assert not is_converted(cache, "src", src)


def test_read_index_names_the_line_that_is_not_an_object(tmp_path):
    (tmp_path / "i.jsonl").write_text(json.dumps(make_row("a", "a.png", ["t"])) + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"i.jsonl:2: expected a JSON object, got list"):
        read_index(tmp_path / "i.jsonl")


def test_write_index_sorts_and_rejects_duplicates(tmp_path):
    rows = [make_row("b", "b.png", ["t"]), make_row("a", "a.png", [])]
    assert write_index(tmp_path / "i.jsonl", rows) == 2
    assert [r["id"] for r in read_jsonl(tmp_path / "i.jsonl")] == ["a", "b"]
    assert sorted(os.listdir(tmp_path)) == ["i.jsonl"]  # no temp file left
    with pytest.raises(ValueError, match="duplicate id"):
        write_index(tmp_path / "j.jsonl", rows + [make_row("a", "c.png", [])])
    assert not (tmp_path / "j.jsonl").exists()


def test_fixture_indexes_point_at_real_files_without_symlinks():
    sources = json.loads((FIXTURE / "sources.json").read_text())
    assert sources["base"] == "."
    folder_index = {k: v for k, v in sources["sources"].items() if v["format"] == "folder+index"}
    assert set(folder_index) == {"emoji_google", "emoji_twitter", "openclipart", "tuxpaint"}
    for name, entry in folder_index.items():
        rows = read_index(FIXTURE / entry["index"])
        assert len(rows) == entry["count"] and [r["id"] for r in rows] == sorted(r["id"] for r in rows)
        for r in rows:
            assert (FIXTURE / entry["root"] / r["path"]).is_file(), (name, r["id"])
    assert not [p for p in FIXTURE.rglob("*") if p.is_symlink()]
    total = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert total <= 3 * 1024 * 1024


def test_fixture_symlinked_pair_is_an_exact_duplicate():
    rows = _rows("openclipart")
    link = rows["office/floppy_frederic_moser_01.png"]
    assert link["meta"]["is_symlink"] and link["meta"]["link_target"] == "computer/floppy_frederic_moser_01.png"
    a = (FIXTURE / "openclipart" / link["path"]).read_bytes()
    b = (FIXTURE / "openclipart" / link["meta"]["link_target"]).read_bytes()
    assert a == b
    stars = [r for r in rows if r.startswith("shapes/stars/")]
    assert len(stars) >= 5


# --------------------------------------------------------------------------- img2dataset


def test_compute_key_and_hashtags():
    assert compute_key(3, 1, 10000) == "000010003"
    assert compute_key(0, 0, 10000) == "000000000"
    assert compute_key(7, 2, 10) == "000027"
    assert hashtag("candy cane") == "#candycane" and hashtag("t-shirt") == "#tshirt" and hashtag(":)") == ""
    assert caption_text({"caption": "A frog.", "tags": ["animals", "frog", "Frog  "]}) == "A frog. #animals #frog #Frog"
    assert caption_text({"tags": []}) == ""


def test_fixture_img2dataset_tars_have_the_real_layout():
    tars = sorted((FIXTURE / "img2dataset").glob("*.tar"))
    assert [t.name for t in tars] == ["00000.tar", "00001.tar"]
    fields = {
        "url",
        "caption",
        "key",
        "status",
        "error_message",
        "width",
        "height",
        "original_width",
        "original_height",
        "exif",
        "sha256",
    }
    for t in tars:
        names, samples = read_shard(t)
        keys = list(dict.fromkeys(n.split(".")[0] for n in names))
        assert keys != sorted(keys), "members must not be in key order"
        stats = json.loads((t.parent / f"{t.stem}_stats.json").read_text())
        assert stats["count"] == stats["successes"] == len(samples) == 10
        for key, sample in samples.items():
            assert set(sample) == {"jpg", "json", "txt"}
            meta = json.loads(sample["json"])
            assert set(meta) == fields and meta["key"] == key and meta["status"] == "success"
            assert meta["sha256"] == hashlib.sha256(sample["jpg"]).hexdigest()
            assert sample["txt"].decode() == meta["caption"] and "#" in meta["caption"]
            assert sample["jpg"][:3] == b"\xff\xd8\xff"
            assert not meta["url"].startswith("/")


def test_to_img2dataset_flattens_alpha_on_white_and_counts_failures(tmp_path):
    from PIL import Image

    im = Image.new("RGBA", (40, 20), (255, 0, 0, 0))  # fully transparent red
    im.paste((0, 0, 255, 255), (0, 0, 10, 20))  # opaque blue stripe on the left
    im.save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    Image.new("L", (50, 50)).save(tmp_path / "big.png")
    samples = [Sample("t", make_row(n, n, ["tag one"]), tmp_path / n) for n in ("a.png", "bad.png", "big.png")]
    stats = to_img2dataset(samples, tmp_path / "out", samples_per_shard=10, image_size=64, max_pixels=2000, fixed_time=1.0)
    assert stats[0]["successes"] == 1 and stats[0]["failed_to_resize"] == 2
    _names, shard = read_shard(tmp_path / "out" / "00000.tar")
    assert list(shard) == ["000000"]
    meta = json.loads(shard["000000"]["json"])
    assert (meta["width"], meta["height"], meta["original_width"], meta["original_height"]) == (64, 64, 40, 20)
    assert shard["000000"]["txt"] == b"#tagone"
    out = Image.open(io.BytesIO(shard["000000"]["jpg"]))
    assert out.mode == "RGB"
    assert min(out.getpixel((50, 32))) > 240  # transparent area became white, not red/black
    r, g, b = out.getpixel((5, 32))
    assert b > 200 and r < 60  # the opaque stripe kept its colour
    assert any("too large" in k for k in stats[0]["status_dict"])


def test_to_img2dataset_shards_keys_and_member_order(tmp_path):
    rows = sorted(_rows("emoji_google").values(), key=lambda r: r["id"])[:12]
    samples = [Sample("emoji_google", r, FIXTURE / "emoji_google" / r["path"]) for r in rows]
    stats = to_img2dataset(samples, tmp_path, samples_per_shard=8, image_size=32, fixed_time=5.0)
    assert [s["count"] for s in stats] == [8, 4] and all(s["start_time"] == 5.0 for s in stats)
    names, shard = read_shard(tmp_path / "00000.tar")
    keys = list(dict.fromkeys(n.split(".")[0] for n in names))
    assert sorted(keys) == [f"{i:06d}" for i in range(8)] and keys != sorted(keys)
    _names, shard1 = read_shard(tmp_path / "00001.tar")
    assert sorted(shard1) == [f"{10 + i:06d}" for i in range(4)]
    by_url = {json.loads(s["json"])["url"]: s for s in shard.values()}
    assert f"emoji_google/{rows[0]['path']}" in by_url
    assert sorted(os.listdir(tmp_path)) == ["00000.tar", "00000_stats.json", "00001.tar", "00001_stats.json"]


def test_inspect_shards_describe():
    text = describe(FIXTURE / "img2dataset" / "00000.tar", 1)
    assert "30 members, 10 samples" in text and "keys in sorted order: False" in text


# --------------------------------------------------------------------------- fetch plumbing


def test_check_count_message_names_source_expected_and_found():
    check_count("tuxpaint", "png stamps", 796, 796)
    with pytest.raises(SourceError, match=r"^tuxpaint: expected 6,000 images, found 5,999$"):
        check_count("tuxpaint", "images", 6000, 5999)


def test_imagenet_info_line_checks():
    verify_lines("imagenet_synsets.txt", "\n".join(f"n{i:08d}" for i in range(1000)) + "\n")
    with pytest.raises(SourceError, match="expected 1,000 lines"):
        verify_lines("imagenet_synsets.txt", "n00000001\n")
    with pytest.raises(SourceError, match="not a wnid"):
        verify_lines("imagenet_synset_to_lemma.txt", "n0000000x\tdog\n")


def test_staged_dir_keeps_old_folder_on_failure_and_wipes_partials(tmp_path):
    final = tmp_path / "src"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_dir(final) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert (final / "old.txt").exists() and not (final / "new.txt").exists()
    with staged_dir(final) as tmp:
        assert list(tmp.iterdir()) == []  # the leftover partial was wiped
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_apt_download_runs_update_once_then_retries(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, source, cwd=None, timeout=0):
        calls.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"]:
            if sum(c == ["apt-get", "download"] for c in calls) == 1:
                raise SourceError(source, "E: Unable to locate package openclipart-png")
            for pkg in cmd[2:]:
                (Path(cwd) / f"{pkg.split('=')[0]}_1.0_all.deb").write_bytes(b"deb")
            return ""
        if cmd[:2] == ["dpkg-deb", "-f"]:
            return Path(cmd[2]).name.split("_")[0] if cmd[3] == "Package" else "1.0"
        return ""

    monkeypatch.setattr(fetch_deb, "run", fake_run)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    debs = fetch_deb.download_debs(tmp_path, "openclipart", {"openclipart-png": None})
    assert calls.count(["apt-get", "update"]) == 1 and calls.count(["apt-get", "download"]) == 2
    assert debs["openclipart-png"].parent == tmp_path / ".downloads"
    assert [p.name for p in (tmp_path / ".downloads").iterdir()] == ["openclipart-png_1.0_all.deb"]


def test_fetch_demo_reports_failures_and_continues(tmp_path, monkeypatch):
    done = []

    def ok(cache, force=False, keep_downloads=False):
        done.append("imagenet_info")
        return {}

    def broken(cache, force=False, keep_downloads=False):
        raise SourceError("openclipart", "expected 8,121 png paths, found 12")

    monkeypatch.setattr(fetch_demo, "FETCHERS", {"openclipart": (broken, "openclipart"), "imagenet_info": (ok, "imagenet_info")})
    converted = []
    monkeypatch.setattr(
        fetch_demo, "CONVERTERS", {"openclipart": (lambda c: converted.append(c), "openclipart", ("openclipart",))}
    )
    failures = fetch_demo.run_all(tmp_path, None, force=False, convert=True, keep_downloads=False)
    assert done == ["imagenet_info"] and converted == []
    assert failures == {
        "openclipart": "expected 8,121 png paths, found 12",
        "convert openclipart": "skipped: source openclipart failed",
    }
    assert fetch_demo.main(["--cache", str(tmp_path)]) == 1


def test_png_size_reads_header_only(tmp_path):
    assert png_size(FIXTURE / "emoji_google" / "1f44b.png") == (64, 64)
    (tmp_path / "x.png").write_bytes(b"GIF89a" + b"\x00" * 30)
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(tmp_path / "x.png")


def test_atomic_write_leaves_no_temp_on_error(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    common.atomic_write_json(target, {"a": 1})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(common.os, "replace", boom)
    with pytest.raises(OSError):
        common.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["f.json"]
