"""Tests of the blob emoji target (data_tools.blob_emoji): Iconify icons to SVGs, names to emoji, the render.

They run on the committed excerpt ``tests/data/blob_emoji`` (16 real icons of ``@iconify-json/noto-v1``) and
the emojibase excerpt of ``tests/data/fluent_emoji``; ``test_real_output_*`` check the target written by
``python -m data_tools.fetch_demo --only blob_emoji`` into ``data/raw`` and skip when it is not there.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from data_tools import fetch_demo, fluent_fetch
from data_tools.blob_emoji import OUT_DIR, PACKAGE_DIR, SOURCE, TARBALL, convert_blob_emoji, fetch_blob_emoji, icon_svgs, stem_of
from data_tools.common import SourceError, write_marker
from data_tools.fetch_npm import EMOJIBASE_DATA
from data_tools.fluent_plan import SPLITS, Settings
from data_tools.index_io import SOURCES_JSON, read_sources

HERE = Path(__file__).resolve().parent / "data"
ICONS = HERE / "blob_emoji" / "icons_excerpt.json"
EMOJIBASE = HERE / "fluent_emoji"
REAL = Path(__file__).resolve().parents[1] / "data" / "raw" / OUT_DIR
SMALL = Settings(min_class_units=2, min_per_split=1, val_fraction=0.5)


def _icons() -> dict:
    return json.loads(ICONS.read_text(encoding="utf-8"))


def _fake_cache(tmp_path: Path) -> Path:
    """A cache holding the excerpts as if fetched: npm/ (emojibase) and noto_v1_npm/ (the tarball)."""
    cache = tmp_path / "cache"
    npm = cache / "npm"
    base = npm / Path(EMOJIBASE_DATA).parent
    base.mkdir(parents=True)
    (base / "data.json").write_bytes((EMOJIBASE / "emojibase_data_excerpt.json").read_bytes())
    (base / "messages.json").write_bytes((EMOJIBASE / "emojibase_messages.json").read_bytes())
    write_marker(npm, "npm")
    pkg = cache / PACKAGE_DIR
    pkg.mkdir()
    data = ICONS.read_bytes()
    with tarfile.open(pkg / TARBALL, "w:gz") as tf:
        info = tarfile.TarInfo("package/icons.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    write_marker(pkg, SOURCE)
    return cache


def test_stem_of_drops_a_trailing_skin_tone_only():
    assert stem_of("man-artist-dark-skin-tone") == "man-artist-dark"
    assert stem_of("woman-artist-medium-light-skin-tone") == "woman-artist-medium-light"
    assert stem_of("man-dark-skin-tone-blond-hair") == "man-dark-skin-tone-blond-hair"
    assert stem_of("dog-face") == "dog-face"


def test_icon_svgs_are_whole_documents_with_the_sets_view_box():
    svgs = icon_svgs(_icons())
    assert len(svgs) == 16
    doc = svgs["package/icons/blob/dog-face.svg"].decode()
    assert doc.startswith("<svg ") and doc.endswith("</svg>") and 'viewBox="0 0 128 128"' in doc
    assert "package/icons/blob/man-artist-dark.svg" in svgs
    odd = icon_svgs({"width": 16, "height": 16, "icons": {"x": {"body": "<g/>", "width": 20, "left": -2}}})
    assert 'viewBox="-2 0 20 16"' in odd["package/icons/blob/x.svg"].decode()


def test_convert_matches_names_renders_and_records_both_targets(tmp_path):
    cache = _fake_cache(tmp_path)
    manifest = convert_blob_emoji(cache, workers=1, settings=SMALL)
    c = manifest["counts"]
    assert c["svg_files"] == 16 and c["matched_images"] == 14 and c["left_out_files"] == 2
    assert sorted(manifest["left_out"]["unmatched"]) == ["blob/dark", "blob/man-dark-skin-tone-blond-hair"]
    assert manifest["license"].startswith("Apache-2.0") and "Noto Emoji v1" in manifest["what"]
    sub = manifest["targets"]["subgroup"]
    assert {"animal-mammal", "food-fruit"} <= set(sub["classes"])
    rows = [json.loads(line) for line in (cache / OUT_DIR / "emoji.jsonl").read_text().splitlines()]
    artist = [r for r in rows if r["label"] == "man artist"]
    assert len(artist) == 1 and sorted(artist[0]["files"]) == ["blob/man-artist", "blob/man-artist-dark"]
    for row in rows:  # split by emoji identity: every file of an emoji is on its one side
        for target, cls in row.get("classes", {}).items():
            for f in row["files"]:
                stem = f.split("/")[1]
                assert (cache / OUT_DIR / target / row["split"] / cls / f"{stem}.blob.png").is_file()
    pngs = sorted((cache / OUT_DIR / "subgroup").rglob("*.png"))
    assert len(pngs) == sum(sub["counts"][s]["images"] for s in SPLITS)
    with Image.open(pngs[0]) as im:
        assert im.mode == "RGB" and im.size == (64, 64)
    sources = read_sources(cache / "converted" / SOURCES_JSON)["sources"]
    assert (
        sources["blob_emoji_subgroup"]["root"] == f"{OUT_DIR}/subgroup"
        and "Apache-2.0" in sources["blob_emoji_subgroup"]["license"]
    )
    assert convert_blob_emoji(cache, workers=1, settings=SMALL) == manifest  # complete: skipped


def test_convert_without_the_package_names_the_fetch_command(tmp_path):
    cache = _fake_cache(tmp_path)
    (cache / PACKAGE_DIR / ".complete.json").unlink()
    with pytest.raises(SourceError, match="--only npm blob_emoji"):
        convert_blob_emoji(cache, workers=1, settings=SMALL)


def test_fetch_refuses_a_tarball_that_is_not_the_pinned_one(tmp_path, monkeypatch):
    cache = _fake_cache(tmp_path)
    (cache / PACKAGE_DIR / ".complete.json").unlink()

    def fake_npm_pack(cmd, source, cwd=None, timeout=0):
        (Path(cwd) / TARBALL).write_bytes(b"not the package")
        return ""

    monkeypatch.setattr(fluent_fetch, "run", fake_npm_pack)
    with pytest.raises(SourceError, match="SHA-256"):
        fetch_blob_emoji(cache, force=True)
    assert not (cache / PACKAGE_DIR / ".complete.json").exists()


def test_fetch_demo_has_the_step():
    assert "blob_emoji" in fetch_demo.FETCHERS
    assert fetch_demo.CONVERTERS["blob_emoji"][2] == ("blob_emoji_subgroup", "blob_emoji_group")


@pytest.mark.skipif(not (REAL / "manifest.json").is_file(), reason="data/raw/blob_emoji not rendered")
def test_real_output_counts_and_no_emoji_in_both_splits():
    m = json.loads((REAL / "manifest.json").read_text())
    sub = m["targets"]["subgroup"]
    assert sub["n_classes"] == 54 and sub["counts"]["train"]["images"] == 1061 and sub["counts"]["val"]["images"] == 529
    rows = [json.loads(line) for line in (REAL / "emoji.jsonl").read_text().splitlines()]
    fam_split: dict[str, set] = {}
    for r in rows:
        fam_split.setdefault(r["family"], set()).add(r["split"])
    assert all(len(s) == 1 for s in fam_split.values())
