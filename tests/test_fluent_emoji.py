"""Tests of the Fluent Emoji target (data_tools.fluent_*): name matching, the identity split, rendering.

Most run on the committed excerpt ``tests/data/fluent_emoji`` (real SVGs and emojibase
entries, see its README) and never skip. ``test_real_output_*`` check the full target
written by ``python -m data_tools.fetch_demo --only fluent_emoji`` into ``data/raw`` and
skip when it is not there.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools import fetch_demo, fluent_convert, fluent_render
from data_tools.common import png_size, write_marker
from data_tools.fetch_npm import EMOJIBASE_DATA
from data_tools.fluent_convert import OUT_DIR, convert_fluent_emoji
from data_tools.fluent_fetch import EXPECTED_SVGS, PACKAGE_DIR, SOURCE, TARBALL, fetch_fluent_emoji, svg_names
from data_tools.fluent_match import ALIASES, build_label_index, family_key, match_name, slugify, split_tone
from data_tools.fluent_plan import SPLITS, TARGETS, Plan, Settings, build_layout, plan_images, split_units
from data_tools.fluent_render import render_svg
from data_tools.fluent_target import render_target
from data_tools.index_io import SOURCES_JSON, read_sources

EXCERPT = Path(__file__).resolve().parent / "data" / "fluent_emoji"
REAL = Path(__file__).resolve().parents[1] / "data" / "raw" / OUT_DIR
SMALL = Settings(min_class_units=2, min_per_split=1, val_fraction=0.5)


def _entries() -> list[dict]:
    return json.loads((EXCERPT / "emojibase_data_excerpt.json").read_text(encoding="utf-8"))


def _messages() -> dict:
    return json.loads((EXCERPT / "emojibase_messages.json").read_text(encoding="utf-8"))


def _excerpt_svgs() -> dict[str, bytes]:
    """The excerpt as tarball members: ``package/icons/<style>/<stem>.svg`` -> bytes."""
    return {f"package/icons/{p.parent.name}/{p.name}": p.read_bytes() for p in sorted((EXCERPT / "icons").glob("*/*.svg"))}


def _plan(aliases=ALIASES) -> Plan:
    return plan_images(svg_names(_excerpt_svgs()), _entries(), _messages(), aliases)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "label, slug",
    [
        ("dog face", "dog-face"),
        ("1st place medal", "1st-place-medal"),
        ("red apple", "red-apple"),
        ("piñata", "pinata"),
        ("man’s shoe", "mans-shoe"),
        ("keycap: 1", "keycap-1"),
        ("keycap: #", "keycap"),
        ("flag: Côte d’Ivoire", "flag-cote-divoire"),
        ("A button (blood type)", "a-button-blood-type"),
    ],
)
def test_slugify(label, slug):
    assert slugify(label) == slug


def test_split_tone_suffixes():
    assert split_tone("artist-medium-dark") == ("artist", "medium-dark")
    assert split_tone("artist-medium-light") == ("artist", "medium-light")
    assert split_tone("artist-medium") == ("artist", "medium")
    assert split_tone("woman-artist-light") == ("woman-artist", "light")
    assert split_tone("artist-default") == ("artist", "default")
    assert split_tone("dog-face") == ("dog-face", None)
    assert split_tone("dark") == ("dark", None)


def test_every_excerpt_file_matches_the_right_emoji():
    plan = _plan()
    assert not plan.unmatched and not plan.duplicates and not plan.no_class
    assert len(plan.images) == len(_excerpt_svgs()) == 46
    got = {(im.style, im.stem): im for im in plan.images}
    expect = {
        ("flat", "dog-face"): ("dog face", None, "animals-nature", "animal-mammal"),
        ("modern", "red-apple"): ("red apple", None, "food-drink", "food-fruit"),
        ("flat", "1st-place-medal"): ("1st place medal", None, "activities", "award-medal"),
        ("flat", "artist-dark"): ("artist", "dark", "people-body", "person-role"),
        ("flat", "woman-artist-light"): ("woman artist", "light", "people-body", "person-role"),
        ("high-contrast", "artist-default"): ("artist", "default", "people-body", "person-role"),
        # ends in "-light" but is an emoji of its own (the full name is tried first)
        ("modern", "horizontal-traffic-light"): ("horizontal traffic light", None, "travel-places", "transport-ground"),
        ("flat", "keycap-1"): ("keycap: 1", None, "symbols", "keycap"),
        ("flat", "keycap-hashtag"): ("keycap: #", None, "symbols", "keycap"),
        ("high-contrast", "keycap-asterisk"): ("keycap: *", None, "symbols", "keycap"),
        ("flat", "pinata"): ("piñata", None, "activities", "game"),
        ("flat", "blackbird"): ("black bird", None, "animals-nature", "animal-bird"),
        ("flat", "person-elf-default"): ("elf", "default", "people-body", "person-fantasy"),
        ("flat", "man-elf-medium"): ("man elf", "medium", "people-body", "person-fantasy"),
    }
    for key, (label, tone, group, subgroup) in expect.items():
        im = got[key]
        assert (im.label, im.tone, im.group, im.subgroup) == (label, tone, group, subgroup), key


def test_without_aliases_the_renamed_emoji_are_left_out():
    plan = _plan(aliases={})
    left = {w.split("/", 1)[1] for w in plan.unmatched}
    assert left == {"blackbird", "keycap-hashtag", "keycap-asterisk", "person-elf-default"}
    index = build_label_index(_entries())
    assert index.collisions == {"keycap": ["keycap: #", "keycap: *"]}


def test_tone_suffix_needs_skin_tones():
    index = build_label_index(_entries())
    assert match_name("dog-face-default", index)[0]["label"] == "dog face"  # -default: any emoji
    assert match_name("dog-face-dark", index) is None  # dog face has no skin tones
    assert match_name("artist-dark", index)[1] == "dark"
    assert match_name("no-such-emoji", index) is None


def test_family_key_joins_gender_forms_only():
    by = {e["label"]: e["hexcode"] for e in _entries()}
    fam = {label: family_key(h) for label, h in by.items()}
    assert fam["elf"] == fam["man elf"] == fam["woman elf"] == "1F9DD"
    assert fam["artist"] == fam["man artist"] == fam["woman artist"] == "1F9D1-200D-1F3A8"
    assert len({fam[x] for x in ("dog face", "cat face", "pig face", "tiger face")}) == 4
    assert family_key("1F44B-1F3FD") == "1F44B"  # skin tone removed
    assert family_key("1F474") == family_key("1F475") == family_key("1F9D3")  # older person
    assert family_key("2640-FE0F") == "2640"  # the female sign itself stays


# --------------------------------------------------------------------------- split


def test_split_units_stratified_seeded_and_bounded():
    rng = random.Random(0)
    unit_class = {f"c{c}-u{u}": f"c{c}" for c in range(40) for u in range(rng.randint(1, 30))}
    split = split_units(unit_class, val_fraction=0.3, seed=0, min_per_split=2)
    assert set(split) == set(unit_class)
    per = defaultdict(lambda: {"train": 0, "val": 0})
    for u, s in split.items():
        per[unit_class[u]][s] += 1
    for cls, c in per.items():
        n = c["train"] + c["val"]
        want = int(0.3 * n + 0.5)
        if n >= 4:
            want = min(max(want, 2), n - 2)
            assert c["train"] >= 2 and c["val"] >= 2, cls
        assert c["val"] == want, cls
    assert split_units(unit_class, seed=0) == split  # deterministic
    assert split_units(unit_class, seed=1) != split  # seeded
    # a class's draw does not depend on the other classes
    only = {u: c for u, c in unit_class.items() if c == "c3"}
    assert split_units(only, seed=0) == {u: split[u] for u in only}


def test_identity_split_never_shares_an_emoji_on_the_excerpt():
    plan = _plan()
    for seed in range(20):
        layout = build_layout(plan, Settings(seed=seed, min_class_units=2, min_per_split=1, val_fraction=0.5))
        for target, t in layout["targets"].items():
            sides = defaultdict(set)
            for im, split, cls, rel in t["files"]:
                assert rel == f"{target}/{split}/{cls}/{im.stem}.{im.style}.png"
                sides[("hexcode", im.hexcode)].add(split)
                sides[("family", im.family)].add(split)
            assert all(len(s) == 1 for s in sides.values()), (seed, target)
            classes = {(split, cls) for _, split, cls, _ in t["files"]}
            assert {c for s, c in classes if s == "train"} == {c for s, c in classes if s == "val"} == set(t["classes"])
    # all forms of "elf" (person, man, woman; all styles and tones) are on one side
    elf = [im for im in plan.images if im.label in ("elf", "man elf", "woman elf")]
    assert len(elf) == 5 and len({im.family for im in elf}) == 1  # one split unit


def test_class_threshold_drops_small_subgroups():
    plan = _plan()
    layout = build_layout(plan, Settings(min_class_units=4, min_per_split=1))
    t = layout["targets"]["subgroup"]
    assert t["classes"] == ["animal-mammal", "food-fruit"]  # the only subgroups with 4 families
    assert t["dropped"]["keycap"] == 3 and t["dropped"]["person-role"] == 1


# --------------------------------------------------------------------------- render


def test_render_is_rgb_on_white():
    png = render_svg((EXCERPT / "icons" / "flat" / "dog-face.svg").read_bytes())
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (64, 64)
    arr = np.asarray(img)
    assert tuple(arr[0, 0]) == (255, 255, 255)  # transparent corner -> white, not black
    assert (arr.sum(axis=2) < 600).mean() > 0.2  # and the dog is drawn
    half = (
        b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
        b'<rect x="8" y="8" width="16" height="16" fill="#000" fill-opacity="0.5"/></svg>'
    )
    arr = np.asarray(Image.open(io.BytesIO(render_svg(half, size=32))))
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert np.all(np.abs(arr[16, 16].astype(int) - 128) <= 2)  # 50% black over white is grey
    with pytest.raises(ValueError):
        render_svg(b"<svg><not-closed")


def test_render_target_writes_layout_manifest_and_resumes(tmp_path, monkeypatch):
    svgs, plan = _excerpt_svgs(), _plan()
    out = tmp_path / "fluent_emoji"
    manifest = render_target(svgs, plan, out, SMALL, workers=1)
    for target, t in manifest["targets"].items():
        for split in SPLITS:
            files = sorted((out / target / split).glob("*/*.png"))
            c = t["counts"][split]
            assert len(files) == c["images"] > 0
            assert {f.parent.name for f in files} == set(c["per_class"]) == set(t["classes"])
            for f in files:
                assert png_size(f) == (64, 64)
    assert manifest["counts"]["matched_images"] == 46 and manifest["counts"]["left_out_files"] == 0
    rows = [json.loads(line) for line in (out / "emoji.jsonl").read_text().splitlines()]
    assert len(rows) == manifest["counts"]["distinct_emoji"] == 21
    assert sum(len(r["files"]) for r in rows) == 46
    # a rerun renders nothing; a lost file is rendered again, alone
    calls = []
    real = fluent_render.render_svg
    monkeypatch.setattr(fluent_render, "render_svg", lambda data, size=64: calls.append(1) or real(data, size))
    render_target(svgs, plan, out, SMALL, workers=1)
    assert calls == []
    victim = next((out / "subgroup" / "train").glob("*/*.png"))
    victim.unlink()
    assert render_target(svgs, plan, out, SMALL, workers=1) == manifest
    assert len(calls) == 1 and victim.is_file()


def _n_render(settings: Settings) -> int:
    """How many excerpt images a render with ``settings`` writes (each once, linked into the other target)."""
    layout = build_layout(_plan(), settings)
    return len({(im.style, im.stem) for t in layout["targets"].values() for im, *_ in t["files"]})


def _fake_cache(tmp_path: Path) -> Path:
    """A cache holding the excerpt as if fetched: npm/ (emojibase) and fluentui_emoji_npm/ (tarball)."""
    cache = tmp_path / "cache"
    npm = cache / "npm"
    base = npm / Path(EMOJIBASE_DATA).parent
    base.mkdir(parents=True)
    (base / "data.json").write_bytes((EXCERPT / "emojibase_data_excerpt.json").read_bytes())
    (base / "messages.json").write_bytes((EXCERPT / "emojibase_messages.json").read_bytes())
    write_marker(npm, "npm")
    pkg = cache / PACKAGE_DIR
    pkg.mkdir()
    with tarfile.open(pkg / TARBALL, "w:gz") as tf:
        for name, data in _excerpt_svgs().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    write_marker(pkg, SOURCE)
    return cache


def test_convert_records_sources_skips_when_done_and_resumes(tmp_path, monkeypatch):
    cache = _fake_cache(tmp_path)
    n_render = _n_render(SMALL)
    assert n_render == 28  # images of classes in neither target are not rendered
    real = fluent_render.render_svg
    calls = []

    def crash_after_five(data, size=64):
        if len(calls) == 5:
            raise KeyboardInterrupt  # an interrupted run
        calls.append(1)
        return real(data, size)

    monkeypatch.setattr(fluent_render, "render_svg", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        convert_fluent_emoji(cache, workers=1, settings=SMALL)
    assert not (cache / OUT_DIR).exists()
    assert len(list((cache / f".{OUT_DIR}.partial").rglob("*.png"))) == 5
    calls.clear()
    monkeypatch.setattr(fluent_render, "render_svg", lambda data, size=64: calls.append(1) or real(data, size))
    manifest = convert_fluent_emoji(cache, workers=1, settings=SMALL)
    assert len(calls) == n_render - 5  # resumed: the 5 finished images were kept
    assert (cache / OUT_DIR / ".complete.json").is_file() and not (cache / f".{OUT_DIR}.partial").exists()
    sources = read_sources(cache / "converted" / SOURCES_JSON)["sources"]
    for target in TARGETS:
        entry = sources[f"fluent_emoji_{target}"]
        assert entry["format"] == "imagefolder" and (cache / entry["splits"]["val"]).is_dir()
        assert entry["count"] == sum(manifest["targets"][target]["counts"][s]["images"] for s in SPLITS)
    calls.clear()
    assert convert_fluent_emoji(cache, workers=1, settings=SMALL) == manifest
    assert calls == []  # complete: skipped
    other_settings = Settings(seed=1, min_class_units=2, min_per_split=1)
    other = convert_fluent_emoji(cache, workers=1, settings=other_settings)
    assert other["settings"]["seed"] == 1 and len(calls) == _n_render(other_settings)  # new settings: rendered again


def test_fetch_demo_has_the_step():
    assert fetch_demo.FETCHERS["fluent_emoji"] == (fetch_fluent_emoji, PACKAGE_DIR)
    fn, source, outputs = fetch_demo.CONVERTERS["fluent_emoji"]
    assert fn is convert_fluent_emoji and source == "fluent_emoji"
    assert outputs == ("fluent_emoji_subgroup", "fluent_emoji_group")


def _tree(root: Path) -> dict[str, bytes]:
    """relpath -> bytes of every file under ``root``."""
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_render_processes_do_not_change_the_bytes(tmp_path):
    svgs, plan = _excerpt_svgs(), _plan()
    one = render_target(svgs, plan, tmp_path / "w1", SMALL, workers=1)
    two = render_target(svgs, plan, tmp_path / "w2", SMALL, workers=2)
    assert one == two
    files = _tree(tmp_path / "w1")
    n_png = sum(one["targets"][t]["counts"][s]["images"] for t in TARGETS for s in SPLITS)
    assert files == _tree(tmp_path / "w2") and len([f for f in files if f.endswith(".png")]) == n_png == 54


def test_render_workers_come_from_the_available_cores(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")  # available_cores() honours SLURM's allotment
    assert fluent_convert.render_workers() == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert 1 <= fluent_convert.render_workers() <= fluent_convert.MAX_RENDER_WORKERS


def test_cli_module_keeps_its_names_and_renders_offline(tmp_path, capsys):
    from data_tools import fetch_fluent_emoji as cli

    assert cli.fetch_fluent_emoji is fetch_fluent_emoji and cli.convert_fluent_emoji is convert_fluent_emoji
    assert cli.family_key is family_key  # manifest.json's split_unit names data_tools.fetch_fluent_emoji.family_key
    assert (cli.PACKAGE_DIR, cli.OUT_DIR, cli.Settings) == (PACKAGE_DIR, OUT_DIR, Settings)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0 and "--min-class-units" in capsys.readouterr().out
    cache = _fake_cache(tmp_path)
    argv = ["--cache", str(cache), "--workers", "1", "--min-class-units", "2", "--val-fraction", "0.5", "--seed", "3"]
    assert cli.main(argv) == 0
    manifest = json.loads((cache / OUT_DIR / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["settings"] == {"seed": 3, "val_fraction": 0.5, "min_per_split": 2, "min_class_units": 2, "size": 64}
    assert "data_tools.fetch_fluent_emoji.family_key" in manifest["split_unit"]


# --------------------------------------------------------------------------- real output


def _real_manifest() -> dict:
    if not (REAL / ".complete.json").is_file():
        pytest.skip(
            f"the Fluent Emoji target is not rendered ({REAL.name} absent): python -m data_tools.fetch_demo --only fluent_emoji"
        )
    return json.loads((REAL / "manifest.json").read_text(encoding="utf-8"))


def test_real_output_no_emoji_in_both_splits():
    _real_manifest()
    rows = [json.loads(line) for line in (REAL / "emoji.jsonl").read_text(encoding="utf-8").splitlines()]
    file_to = {f: r for r in rows for f in r["files"]}  # "<style>/<stem>" -> emoji row
    has_default = set(file_to)  # "<style>/<stem>"

    def toneless(style: str, stem: str) -> str:
        """The file name without a skin-tone suffix, judged by the files alone (not by emojibase):
        ``artist-dark`` -> ``artist`` because ``artist-default`` exists; ``police-car-light`` stays."""
        base, tone = split_tone(stem)
        return base if tone and f"{style}/{base}-default" in has_default else stem

    for target in TARGETS:
        sides: dict[tuple[str, str], set[str]] = defaultdict(set)
        for split in SPLITS:
            for png in (REAL / target / split).glob("*/*.png"):
                stem, style = png.name[: -len(".png")].rsplit(".", 1)
                row = file_to[f"{style}/{stem}"]
                assert row["split"] == split and row["classes"][target] == png.parent.name, png
                sides[("hexcode", row["hexcode"])].add(split)
                sides[("family", row["family"])].add(split)
                # independent of the family table: the tone-less file name is on one side too
                sides[("name", toneless(style, stem))].add(split)
        both = sorted(k for k, s in sides.items() if len(s) > 1)
        assert not both, (target, both[:10])


def test_real_output_counts():
    m = _real_manifest()
    c = m["counts"]
    assert c["svg_files"] == sum(EXPECTED_SVGS.values()) == 7885
    assert c["matched_images"] + c["left_out_files"] == c["svg_files"]
    assert c["left_out_files"] == sum(len(v) for v in m["left_out"].values())
    for target in TARGETS:
        t = m["targets"][target]
        classes = {}
        for split in SPLITS:
            per = defaultdict(int)
            for png in (REAL / target / split).glob("*/*.png"):
                per[png.parent.name] += 1
            classes[split] = set(per)
            counts = t["counts"][split]
            assert sum(per.values()) == counts["images"]
            assert dict(per) == {k: v["images"] for k, v in counts["per_class"].items()}
            assert all(v["families"] >= m["settings"]["min_per_split"] for v in counts["per_class"].values())
        assert classes["train"] == classes["val"] == set(t["classes"])  # ImageFolder needs the same classes
    if m["settings"] == {"seed": 0, "val_fraction": 0.3, "min_per_split": 2, "min_class_units": 8, "size": 64}:
        assert c["distinct_emoji"] == 1595 and c["families"] == 1422 and c["left_out_files"] == 0
        assert m["targets"]["subgroup"]["n_classes"] == 67 and m["targets"]["group"]["n_classes"] == 9
        assert {s: m["targets"]["subgroup"]["counts"][s]["images"] for s in SPLITS} == {"train": 4912, "val": 2262}
        assert {s: m["targets"]["group"]["counts"][s]["images"] for s in SPLITS} == {"train": 5379, "val": 2506}
    sample = sorted((REAL / "subgroup" / "val").glob("*/*.png"))[::500]
    for png in sample:
        img = Image.open(png)
        assert img.mode == "RGB" and img.size == (64, 64)
