"""Issue 13, items 1-2: what ends a hashtag (Instagram's rule, any script), no leading or trailing
``_``, and the per-image caps (count and length) with their counts in the ingest manifest."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from conftest import FIXTURE, make_cfg

from pipeline.text.hashtags import (
    MAX_HASHTAG_CHARS,
    MAX_HASHTAGS,
    cap_hashtags,
    extract_hashtags,
    normalize_hashtag,
    normalize_hashtags,
)


def tags_of(caption: str) -> list[str]:
    return normalize_hashtags(extract_hashtags(caption))


# --------------------------------------------------------------------------- real captions
def test_the_img2dataset_caption_of_the_issue():
    caption = "#rolling_on_the_floor_laughing #smileys_&_emotion #animals_&_nature"
    assert extract_hashtags(caption) == ["rolling_on_the_floor_laughing", "smileys_", "animals_"]
    assert tags_of(caption) == ["rolling_on_the_floor_laughing", "smileys", "animals"]


def test_every_caption_of_the_committed_img2dataset_fixture():
    """The real captions in tests/fixtures/corpus/img2dataset: every ``#word`` is a tag, none ends in ``_``."""
    seen = 0
    for tar in sorted((FIXTURE / "img2dataset").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if not m.name.endswith(".txt"):
                    continue
                caption = tf.extractfile(m).read().decode("utf-8")
                words = [w[1:] for w in caption.split() if w.startswith("#")]
                assert extract_hashtags(caption) == words, caption
                tags = tags_of(caption)
                assert tags and all(t == t.strip("_") and t == t.casefold() for t in tags), caption
                seen += 1
    assert seen >= 15
    assert tags_of("A kangaroo. #animals #marsupials #cartoon #kangaroosilo") == [
        "animals",
        "marsupials",
        "cartoon",
        "kangaroosilo",
    ]
    assert tags_of("Celtic Triskell #hash #celtic #decoration #breizh #CelticTriskell") == [
        "hash",
        "celtic",
        "decoration",
        "breizh",
        "celtictriskell",
    ]


# --------------------------------------------------------------------------- what ends a hashtag
@pytest.mark.parametrize(
    "caption, expected",
    [
        # & . - ' , ! and emoji end a tag; '_' does not
        ("#smileys_&_emotion", ["smileys"]),
        ("#rock'n'roll #t-shirt #end. #a,b #wow!", ["rock", "t", "end", "a", "wow"]),
        ("#beach_life_ #__init__", ["beach_life", "init"]),
        # Arabic (letters + harakat, the Arabic comma ends a tag)
        ("مساء الخير #القاهرة_الجميلة، #سَفَر", ["القاهرة_الجميلة", "سَفَر"]),
        # CJK: kana, kanji, the long-vowel mark; the full-width number sign starts a tag, the katakana middle dot ends one
        ("東京 #猫好き ＃東京タワー #カフェ・ラテ #コーヒー", ["猫好き", "東京タワー", "カフェ", "コーヒー"]),
        ("#맛집 #서울", ["맛집", "서울"]),
        # accented Latin, precomposed or combining (NFKC composes), casefolded
        ("#Café #crème-brûlée #Ete\u0301. #Straße", ["café", "crème", "eté", "strasse"]),
        # emoji in the middle of a word: the tag ends at the emoji; variation selectors are not letters
        ("#cat😺lover #love❤️you #🍕 #pizza🍕", ["cat", "love", "pizza"]),
        # Devanagari and Thai vowel signs (combining marks) are part of the word
        ("#हिन्दी #ภาษาไทย", ["हिन्दी", "ภาษาไทย"]),
        # Persian with a zero-width non-joiner inside the word (removed by normalization)
        ("#می\u200cخواهم", ["میخواهم"]),
        # digits, full-width forms
        ("#2024 #ＣＡＴ #h2o", ["2024", "cat", "h2o"]),
    ],
)
def test_scripts_and_word_ends(caption, expected):
    assert tags_of(caption) == expected


def test_what_starts_no_hashtag():
    assert extract_hashtags("see page.html#section and &#39;quoted&#39; or a#b") == []
    assert extract_hashtags("# alone, #, ## and #-dash #&x") == []
    assert extract_hashtags("##double #a #b") == ["double", "a", "b"]
    assert extract_hashtags("") == []


def test_normalization_strips_underscores_but_keeps_listed_tags_whole():
    assert normalize_hashtag("_smileys_") == "smileys"
    assert normalize_hashtag("#__") == ""
    assert normalize_hashtag(" brown bear_ ") == "brown_bear"
    assert normalize_hashtag("t-shirt") == "t-shirt"  # a tag given in a list is not re-split
    assert normalize_hashtag("cat\ufe0f") == "cat"  # a stray variation selector
    long = "x" * 100_000
    assert normalize_hashtag(long) == long  # no truncation: the cap drops it (cap_hashtags)


# --------------------------------------------------------------------------- caps
def test_cap_hashtags_drops_long_tags_then_keeps_the_first_n():
    assert (MAX_HASHTAGS, MAX_HASHTAG_CHARS) == (30, 72)
    tags = [f"t{i}" for i in range(40)]
    kept, too_long, over = cap_hashtags(["x" * 73, *tags, "y" * 72])
    assert kept == tags[:30] and too_long == 1 and over == 11
    assert cap_hashtags(["x" * 100_000]) == ([], 1, 0)
    assert cap_hashtags(["abc", "abcd"], max_count=5, max_chars=3) == (["abc"], 1, 0)
    assert cap_hashtags([], 1, 1) == ([], 0, 0)
    with pytest.raises(ValueError):
        cap_hashtags(["a"], max_count=0)


def test_the_longest_wordnet_noun_fits_under_the_default_cap():
    """The justification of MAX_HASHTAG_CHARS: no WordNet 3.0 noun lemma is longer (needs make fetch-test-data)."""
    from conftest import WORDNET

    if not WORDNET.exists():
        pytest.skip("WordNet not fetched (make fetch-test-data)")
    with open(WORDNET / "index.noun", encoding="utf-8") as fh:  # one noun lemma per line, after the license header
        longest = max((line.split(" ", 1)[0] for line in fh if not line.startswith(" ")), key=len)
    assert len(longest) == MAX_HASHTAG_CHARS - 1


def _folder_source(root: Path, rows: list[dict]) -> dict:
    import shutil

    img = next(p for p in sorted((FIXTURE / "emoji_google").glob("*.png")))
    (root / "imgs").mkdir(parents=True)
    shutil.copy(img, root / "imgs" / "a.png")
    with open(root / "index.jsonl", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"path": "a.png", **r}, ensure_ascii=False) + "\n")
    return {"root": str(root / "imgs"), "index": str(root / "index.jsonl")}


def test_ingest_applies_the_caps_and_counts_them(tmp_path):
    from pipeline.ingest import run_ingest
    from pipeline.io.quarantine import load_quarantine
    from pipeline.io.shards import iter_metadata, shard_paths

    many = [f"tag{i}" for i in range(45)]
    rows = [
        {"id": "huge", "tags": ["x" * 100_000]},  # nothing left: quarantined
        {"id": "many", "tags": many},  # 15 over the count
        {"id": "mixed", "tags": ["y" * 100_000, "dog"], "caption": "#cat #" + "z" * 500},  # 2 too long
        {"id": "ok", "tags": ["dog"]},
    ]
    src = _folder_source(tmp_path / "src", rows)
    cfg = make_cfg(
        f"run_dir={tmp_path / 'run'}",
        "ingest.progress=false",
        "ingest.workers=1",
        "data.eval_sets=[]",
        "data.sources=[{name: caps, format: folder, root: '" + src["root"] + "', index: '" + src["index"] + "'}]",
    )
    man = run_ingest(cfg)
    c = man["counts"]
    assert c["input"] == 4 and c["written"] == 3 and c["by_reason"] == {"no_hashtags": 1}
    # counted in written samples; the quarantined one is in quarantine.jsonl
    assert c["hashtags_dropped"] == {"too_long": 2, "over_count": 15, "images": 2}
    (row,) = load_quarantine(cfg.run_dir)
    assert row["id"] == "caps:huge" and "max_hashtag_chars=72" in row["detail"] and len(row["detail"]) < 300
    metas = {m["id"]: m for _, _, m in iter_metadata(shard_paths(cfg.run_dir))}
    assert metas["caps:many"]["hashtags"] == many[:30]
    assert metas["caps:mixed"]["hashtags"] == ["dog", "cat"]
    for shard in shard_paths(cfg.run_dir):  # nothing near 100,000 characters reaches a shard
        with tarfile.open(shard) as tf:
            assert all(m.size < 5_000 for m in tf.getmembers() if m.name.endswith(".json"))

    # the caps are config keys, range-checked before any work
    cfg2 = make_cfg(
        f"run_dir={tmp_path / 'run2'}",
        "ingest.progress=false",
        "ingest.workers=1",
        "data.eval_sets=[]",
        "ingest.max_hashtags=2",
        "ingest.max_hashtag_chars=4",
        "data.sources=[{name: caps, format: folder, root: '" + src["root"] + "', index: '" + src["index"] + "'}]",
    )
    c2 = run_ingest(cfg2)["counts"]
    assert c2["written"] == 3  # tag0..tag9 fit in 4 characters
    metas = {m["id"]: m for _, _, m in iter_metadata(shard_paths(cfg2.run_dir))}
    assert metas["caps:many"]["hashtags"] == ["tag0", "tag1"] and metas["caps:mixed"]["hashtags"] == ["dog", "cat"]
    from pipeline.config import validate
    from pipeline.errors import ConfigError

    for bad in ("ingest.max_hashtags=0", "ingest.max_hashtag_chars=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            validate(make_cfg(bad))
