"""Every quarantine reason, produced by real bad input built from real fixture images.

Ingest must finish on all of it, list each bad sample with its specific reason, write
nothing outside its folder, and keep input == written + quarantined.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from conftest import FIXTURE
from PIL import Image
from test_images import _png_claiming_size

from pipeline.errors import REASONS
from pipeline.ingest import run_ingest
from pipeline.io.shards import iter_metadata, shard_paths


def _real_png() -> bytes:
    return sorted((FIXTURE / "emoji_google").glob("*.png"))[0].read_bytes()


def _build_folder_source(root: Path) -> Path:
    """An image folder + JSONL index with one sample per folder-format reason."""
    img = root / "imgs"
    img.mkdir(parents=True)
    good = _real_png()
    (img / "good.png").write_bytes(good)
    (img / "truncated.png").write_bytes(good[: len(good) // 3])
    (img / "zero.png").write_bytes(b"")
    (img / "text.jpg").write_bytes(b"just text pretending to be an image\n" * 3)
    (img / "bomb.png").write_bytes(_png_claiming_size(30000, 30000))
    (img / "tiny.png").write_bytes(_png_bytes(Image.new("RGB", (3, 3))))
    (img / "bad.svg").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'><g>")
    (img / "big.png").write_bytes(good + b"\0" * 5000)
    outside = root / "secret.png"
    outside.write_bytes(good)
    os.symlink(outside, img / "link_out.png")
    lines = [
        {"id": "good", "path": "good.png", "tags": ["#Smile", "happy face"]},
        {"id": "dup", "path": "good.png", "tags": ["x"]},
        {"id": "dup", "path": "good.png", "tags": ["x"]},
        {"id": "truncated", "path": "truncated.png", "tags": ["x"]},
        {"id": "zero", "path": "zero.png", "tags": ["x"]},
        {"id": "text", "path": "text.jpg", "tags": ["x"]},
        {"id": "bomb", "path": "bomb.png", "tags": ["x"]},
        {"id": "tiny", "path": "tiny.png", "tags": ["x"]},
        {"id": "badsvg", "path": "bad.svg", "tags": ["x"]},
        {"id": "big", "path": "big.png", "tags": ["x"]},
        {"id": "missing", "path": "nope.png", "tags": ["x"]},
        {"id": "escape", "path": "../secret.png", "tags": ["x"]},
        {"id": "symlink", "path": "link_out.png", "tags": ["x"]},
        {"id": "notags", "path": "good.png", "tags": ["#", "  ", "\u200b"]},
        {"id": "badtags", "path": "good.png", "tags": "ok" and 5},
    ]
    index = root / "index.jsonl"
    with open(index, "wb") as fh:
        for row in lines:
            fh.write(json.dumps(row).encode() + b"\n")
        fh.write(b'{"id": "latin1", "path": "good.png", "tags": ["caf\xe9"]}\n')  # invalid UTF-8
        fh.write(b"{this is not json\n")
    return index


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes, kind=tarfile.REGTYPE, link: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _build_tars(folder: Path) -> None:
    """img2dataset-style tars with unsafe members, missing members, failures, truncation."""
    folder.mkdir(parents=True)
    good = _real_png()
    meta = lambda key, **kw: json.dumps({"key": key, "status": "success", "caption": "", **kw}).encode()
    with tarfile.open(folder / "00000.tar", "w") as tf:
        _add(tf, "000000001.png", good)
        _add(tf, "000000001.txt", b"a smiling face #smile #Happy")
        _add(tf, "000000001.json", meta("000000001"))
        _add(tf, "../escape.png", good)
        _add(tf, "/abs/path.png", good)
        _add(tf, "000000002.png", b"", tarfile.SYMTYPE, "/etc/passwd")
        _add(tf, "000000003.txt", b"#only_caption")
        _add(tf, "000000003.json", meta("000000003"))
        _add(tf, "000000004.png", good)
        _add(tf, "000000004.txt", b"#nojson")
        _add(tf, "000000005.png", good)
        _add(tf, "000000005.json", meta("000000005", status="failed_to_download", error_message="404"))
        _add(tf, "000000006.png", good)
        _add(tf, "000000006.txt", b"caf\xe9 #latin1")
        _add(tf, "000000006.json", meta("000000006"))
        _add(tf, "000000007.png", good)
        _add(tf, "000000007.json", b"[1, 2]")
    # a truncated tar: a good sample, then a member cut in the middle
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        _add(tf, "000000010.png", good)
        _add(tf, "000000010.json", meta("000000010", tags=["kept"]))
        _add(tf, "000000011.png", good * 4)
        _add(tf, "000000011.json", meta("000000011", tags=["lost"]))
    raw = buf.getvalue()
    cut = raw.index(b"000000011.png") + 512 + len(good)  # inside the second image's data
    (folder / "00001.tar").write_bytes(raw[:cut])
    (folder / "00002.tar").write_bytes(b"not a tar archive at all")


def test_every_reason_is_quarantined(fixture_cfg, tmp_path):
    index = _build_folder_source(tmp_path / "folder")
    _build_tars(tmp_path / "tars")
    cfg = fixture_cfg(
        "data.sources=[{name: bad, format: folder, root: "
        + str(tmp_path / "folder" / "imgs")
        + ", index: "
        + str(index)
        + "}, {name: badtar, format: img2dataset, root: "
        + str(tmp_path / "tars")
        + "}]",
        "ingest.max_file_bytes=" + str(len(_real_png()) + 1000),
    )
    before = {p for p in tmp_path.rglob("*")}
    man = run_ingest(cfg)
    after = {p for p in tmp_path.rglob("*")}
    run_dir = Path(cfg.run_dir)
    assert all(p.is_relative_to(run_dir) for p in after - before), "ingest wrote outside its run folder"
    assert not [p for p in (run_dir / "ingest").rglob(".*tmp-*")]
    c = man["counts"]
    assert c["input"] == c["written"] + c["quarantined"]
    rows = [json.loads(x) for x in (run_dir / "ingest" / "quarantine.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r["reason"] for r in rows}
    expected = {
        "bad:dup": "duplicate_id",
        "bad:truncated": "truncated_image",
        "bad:zero": "empty_file",
        "bad:text": "undecodable_image",
        "bad:bomb": "decompression_bomb",
        "bad:tiny": "too_small",
        "bad:badsvg": "undecodable_svg",
        "bad:big": "file_too_large",
        "bad:missing": "missing_file",
        "bad:escape": "path_outside_root",
        "bad:symlink": "path_outside_root",
        "bad:notags": "no_hashtags",
        "bad:badtags": "invalid_metadata",
        "badtar:../escape.png": "unsafe_member",
        "badtar:/abs/path.png": "unsafe_member",
        "badtar:000000002.png": "unsafe_member",
        "badtar:000000003": "missing_image",
        "badtar:000000004": "missing_json",
        "badtar:000000005": "download_failed",
        "badtar:000000006": "invalid_utf8",
        "badtar:000000007": "invalid_metadata",
        "badtar:00001.tar#truncated": "truncated_tar",
        "badtar:00002.tar": "unreadable_input",
    }
    for sid, reason in expected.items():
        assert by_id.get(sid) == reason, (sid, by_id.get(sid))
    reasons = {r["reason"] for r in rows}
    assert "invalid_utf8" in {r["reason"] for r in rows if r["source"] == "bad"}
    assert "invalid_metadata" in {r["reason"] for r in rows if r["id"].startswith("bad:index.jsonl@")}
    # every reason except svg_disabled (its own test) is exercised here
    assert set(REASONS) - reasons <= {"svg_disabled", "withdrawn"}, set(REASONS) - reasons  # both tested elsewhere
    written = {m["id"]: m for _, _, m in iter_metadata(shard_paths(cfg.run_dir))}
    assert set(written) == {"bad:good", "bad:dup", "badtar:000000001", "badtar:000000010"}  # first "dup" kept
    assert written["bad:good"]["hashtags"] == ["smile", "happy_face"]
    assert written["badtar:000000001"]["hashtags"] == ["smile", "happy"]


def test_svg_disabled(fixture_cfg, tmp_path):
    svgs = sorted((FIXTURE / "tuxpaint").rglob("*.svg"))
    root = svgs[0].parents[0]
    index = tmp_path / "i.jsonl"
    index.write_text(json.dumps({"id": "s", "path": svgs[0].name, "tags": ["stamp"]}) + "\n")
    cfg = fixture_cfg(
        "data.sources=[{name: s, format: folder, root: " + str(root) + ", index: " + str(index) + "}]",
        "ingest.rasterize_svg=false",
    )
    man = run_ingest(cfg)
    assert man["counts"]["by_reason"] == {"svg_disabled": 1}
