"""The vocabulary stage: WordNet canonicalization, vocabulary kinds, labels, removals."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE, REPO, make_cfg

from pipeline.config import VocabKind
from pipeline.errors import ConfigError
from pipeline.io.atomic import write_jsonl
from pipeline.io.labels import load_labels, load_vocab
from pipeline.io.manifest import stage_dir, write_manifest
from pipeline.io.run_folder import REMOVED_FILE
from pipeline.io.shards import iter_metadata, shard_paths
from pipeline.text.vocabulary import RawMapper, build_vocabulary
from pipeline.text.wordnet_canon import HashtagMapper, WordNetNouns, read_imagenet1k_wnids
from pipeline.vocab import run_vocab

WORDNET = REPO / "data/raw/nltk_data/corpora/wordnet"
IMAGENET_INFO = REPO / "data/raw/imagenet_info"
FETCH = "python -m data_tools.fetch_demo --only wordnet imagenet_info"


@pytest.fixture(scope="module")
def nouns() -> WordNetNouns:
    if not (WORDNET / "lexnames").is_file() or not (IMAGENET_INFO / "imagenet_synsets.txt").is_file():
        pytest.fail(f"WordNet 3.0 / ImageNet synset lists missing under {REPO / 'data/raw'}: run `{FETCH}` first")
    return WordNetNouns(WORDNET)


@pytest.fixture(scope="module")
def in1k(nouns) -> set[str]:
    return {nouns.from_wnid(w) for w in read_imagenet1k_wnids(IMAGENET_INFO)}


@pytest.fixture(scope="module")
def ingested(ingested_fixture, nouns) -> Path:
    """The session's ingest of the committed fixture corpus (conftest), read-only here."""
    return ingested_fixture


@pytest.fixture
def vocab_run(ingested, tmp_path):
    """``(cfg factory)``: a fresh run folder sharing the ingest via a symlink."""

    def _make(*overrides: str, name: str = "run"):
        run = tmp_path / name
        run.mkdir(exist_ok=True)
        if not (run / "ingest").exists():
            (run / "ingest").symlink_to(ingested / "ingest", target_is_directory=True)
        return make_cfg(
            "data=fixture",
            f"data.cache={FIXTURE}",
            f"run_dir={run}",
            f"vocab.wordnet_dir={WORDNET}",
            f"vocab.imagenet_info_dir={IMAGENET_INFO}",
            "vocab.progress=false",
            *overrides,
        )

    return _make


def _metas(run) -> list[dict]:
    return [m for _, _, m in iter_metadata(shard_paths(run))]


# ---- canonicalization ---------------------------------------------------------------


def test_synonyms_merge_into_one_class(nouns):
    m = HashtagMapper(nouns)
    tags = ["brownbear", "brown_bear", "ursus_arctos", "ursusarctos", "brownbears"]
    assert {m(t) for t in tags} == {"brown_bear.n.01"}
    v = build_vocabulary([[t] for t in tags], m, "wordnet_nouns", min_count=1, top_k=1)
    assert v.classes == ["brown_bear.n.01"] and v.counts.tolist() == [5]
    assert v.members[0] == {t: 1 for t in tags}
    assert nouns.info("brown_bear.n.01")["wnid"] == "n02132136"
    # a sample with two synonyms counts once for the class
    v2 = build_vocabulary([["brownbear", "ursus_arctos"]], m, "wordnet_nouns", min_count=1, top_k=1)
    assert v2.counts.tolist() == [1] and v2.indptr.tolist() == [0, 1]


def test_concatenated_multiword_hashtags(nouns):
    m = HashtagMapper(nouns)
    assert m("icecream") == m("ice_cream") == "ice_cream.n.01"
    assert m("teddybear") == m("teddy_bear") == "teddy.n.01"
    assert m("stjohnswort") == "st_john's_wort.n.01"  # apostrophe and dot dropped too
    assert m("tshirt") == m("t-shirt") == m("t_shirt")


def test_plural_and_inflected_forms(nouns):
    m = HashtagMapper(nouns)
    assert m("puppies") == m("puppy") == "puppy.n.01"
    assert m("geese") == m("goose") == "goose.n.01"  # irregular plural (noun.exc)
    assert m("animals") == m("animal") == "animal.n.01"


def test_ambiguous_lemma_takes_first_sense_and_unmappable_is_counted(nouns):
    m = HashtagMapper(nouns)
    assert m("dog") == "dog.n.01" == nouns.senses("dog")[0]
    v = build_vocabulary(
        [["face_with_tears_of_joy", "dog"], ["face_with_tears_of_joy"], ["zzqx"]], m, "wordnet_nouns", min_count=1, top_k=1
    )
    assert v.unmapped == Counter({"face_with_tears_of_joy": 2, "zzqx": 1})
    assert v.classes == ["dog.n.01"] and v.kept.tolist() == [0]  # samples without a class are excluded


def test_imagenet1k_uses_synonyms_of_in1k_synsets_only(nouns, in1k):
    assert len(in1k) == 1000
    m = HashtagMapper(nouns, in1k)
    assert m("tiger") == "tiger.n.02"  # sense 1 is "a fierce person"; the first IN-1k sense wins
    assert nouns.info("tiger.n.02")["wnid"] == "n02129604"
    assert m("dog") is None and m("puppy") is None  # dog.n.01 is not an IN-1k class; no hyponym walk
    assert m("brownbear") == "brown_bear.n.01"


def test_raw_kind_keeps_hashtags_apart():
    v = build_vocabulary([["brownbear"], ["brown_bear"], ["brown_bear", "x"]], RawMapper(), "raw", min_count=1, top_k=1)
    assert v.classes == ["brown_bear", "brownbear", "x"] and v.counts.tolist() == [2, 1, 1]
    assert not v.unmapped


def test_min_count_and_top_k(nouns):
    m = HashtagMapper(nouns)
    tags = [["dog"]] * 5 + [["cat"]] * 3 + [["tree"]] * 3 + [["apple", "dog"]] * 2
    v = build_vocabulary(tags, m, "wordnet_nouns", min_count=3, top_k=1)
    assert v.classes == ["dog.n.01", "cat.n.01", "tree.n.01"]  # by count, ties by name
    assert v.counts.tolist() == [7, 3, 3]
    assert v.dropped == Counter({"apple.n.01": 2})
    assert v.kept.size == 13  # apple samples keep their dog label
    v = build_vocabulary(tags, m, "topk", min_count=1, top_k=2)
    assert v.classes == ["dog.n.01", "cat.n.01"]
    assert v.kept.size == 10 and set(v.dropped) == {"tree.n.01", "apple.n.01"}


def test_cached_mapping_throughput(nouns):
    m = HashtagMapper(nouns)
    distinct = ["dog", "cat", "brownbear", "puppies", "face_with_tears_of_joy", "sunset", "icecream", "love"]
    lists = [distinct[i % 5 : i % 5 + 3] for i in range(100_000)]
    for t in distinct:
        m(t)  # the table and the cache are built before timing
    t0 = time.perf_counter()
    for tags in lists:
        m.map_many(tags)
    rate = 300_000 / (time.perf_counter() - t0)
    assert rate >= 1_000_000, f"{rate:.0f} occurrences/s"


# ---- the stage ------------------------------------------------------------------------


@pytest.mark.slow
def test_stage_on_fixture_corpus(vocab_run):
    cfg = vocab_run("vocab.require_dedup=false", "vocab.min_count=2")
    man = run_vocab(cfg)
    out = Path(cfg.run_dir) / "vocab"
    assert {"vocab.json", "labels.npz", "unmapped.json", "class_frequency.png", "manifest.json"} <= {
        p.name for p in out.iterdir()
    }
    doc, labels = load_vocab(cfg.run_dir), load_labels(cfg.run_dir)
    metas = _metas(cfg.run_dir)
    t = doc["totals"]
    assert t["samples_seen"] == len(metas) and t["samples_removed_by_dedup"] == 0
    assert t["samples_kept"] + t["samples_excluded_no_label"] == len(metas)
    assert t["samples_kept"] == len(labels) > 0 and 0 < t["kept_share"] <= 1
    # classes: indexed in order, WordNet ids, counts equal to the CSR labels
    C = doc["num_classes"]
    assert C == labels.num_classes == man["counts"]["classes"] > 0
    assert [c["index"] for c in doc["classes"]] == list(range(C))
    for c in doc["classes"]:
        assert c["wnid"][0] == "n" and len(c["wnid"]) == 9 and c["synset"] == c["id"]
        assert c["samples"] >= 2
    counts = np.bincount(labels.indices, minlength=C)
    assert counts.tolist() == labels.class_counts.tolist() == [c["samples"] for c in doc["classes"]]
    assert list(labels.keys) == sorted(labels.keys) and len(set(labels.keys)) == len(labels)
    # per-sample labels agree with the hashtags in the shards
    by_key = {m["key"]: m for m in metas}
    cls_of_tag = {h: c["index"] for c in doc["classes"] for h in c["hashtags"]}
    for key in labels.keys[:50]:
        want = sorted({cls_of_tag[h] for h in by_key[key]["hashtags"] if h in cls_of_tag})
        assert labels.classes_of(key) == want
    # samples without an in-vocabulary tag are not in labels
    excluded = [m["key"] for m in metas if not any(h in cls_of_tag for h in m["hashtags"])]
    assert len(excluded) == t["samples_excluded_no_label"] and not any(k in labels for k in excluded)
    # weights: every scheme, mean 1, float64
    for s in ("natural", "sqrt", "uniform"):
        w = labels.weights(s)
        assert w.dtype == np.float64 and w.shape == (len(labels),) and w.mean() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        labels.weights("bogus")
    # "animal" and "animals" merge; unmapped tags are listed, sorted by count, and really unmappable
    animal = next(c for c in doc["classes"] if c["id"] == "animal.n.01")
    assert {"animal", "animals"} <= set(animal["hashtags"])
    unmapped = json.loads((out / "unmapped.json").read_text())
    assert unmapped and sum(unmapped.values()) == t["unmapped_occurrences"]
    assert list(unmapped.values()) == sorted(unmapped.values(), reverse=True)
    nouns = WordNetNouns(WORDNET)
    assert all(nouns.senses(h) == () for h in unmapped)
    assert man["counts"]["canonicalize_hashtags_per_s"] > 0 and man["counts"]["distinct_hashtags"] >= len(unmapped)
    assert man["inputs"]["ingest"] and man["inputs"]["dedup"] is None
    # labels.npz is plain numpy: no pickle needed
    with np.load(out / "labels.npz", allow_pickle=False) as z:
        assert {"keys", "indptr", "indices", "weights_sqrt", "weights_uniform", "weights_natural"} <= set(z.files)


def test_removed_samples_never_reach_counts_or_labels(vocab_run):
    base_cfg = vocab_run("vocab.require_dedup=false", "vocab.kind=raw", "vocab.min_count=1", name="base")
    run_vocab(base_cfg)
    base = {c["id"]: c["samples"] for c in load_vocab(base_cfg.run_dir)["classes"]}
    cfg = vocab_run("vocab.kind=raw", "vocab.min_count=1", name="dedup")  # require_dedup defaults to true
    with pytest.raises(FileNotFoundError, match="dedup"):
        run_vocab(cfg)
    metas = _metas(cfg.run_dir)
    gone = [m for m in metas if "hand" in m["hashtags"]] + [m for m in metas if m["source"] == "tuxpaint"][:1]
    assert gone
    dd = stage_dir(cfg.run_dir, "dedup")
    write_jsonl(
        dd / REMOVED_FILE,
        ({"key": m["key"], "id": m["id"], "reason": "withdrawn", "duplicate_of": None, "distance": None} for m in gone),
    )
    write_manifest(dd, stage="dedup", config={"test": 1}, inputs={}, counts={"removed": len(gone)}, seconds=0.0)
    man = run_vocab(cfg)
    doc, labels = load_vocab(cfg.run_dir), load_labels(cfg.run_dir)
    assert doc["totals"]["samples_removed_by_dedup"] == len(gone) and doc["totals"]["removed_by_reason"] == {
        "withdrawn": len(gone)
    }
    assert man["inputs"]["dedup"] and man["inputs"]["dedup_removed"]
    assert not any(m["key"] in labels for m in gone)
    assert "hand" not in {c["id"] for c in doc["classes"]} and "hand" in base
    lost = Counter(h for m in gone for h in m["hashtags"])
    now = {c["id"]: c["samples"] for c in doc["classes"]}
    for tag, n in base.items():
        assert now.get(tag, 0) == n - lost[tag]
    assert sum(labels.class_counts) == sum(now.values())


def test_imagenet1k_and_topk_stage(vocab_run, in1k, nouns):
    cfg = vocab_run("vocab=imagenet1k", "vocab.require_dedup=false", name="in1k")
    assert cfg.vocab.kind is VocabKind.imagenet1k
    run_vocab(cfg)
    doc = load_vocab(cfg.run_dir)
    in1k_wnids = set(read_imagenet1k_wnids(IMAGENET_INFO))
    assert doc["num_classes"] > 0 and all(c["wnid"] in in1k_wnids for c in doc["classes"])
    cfg = vocab_run("vocab=topk", "vocab.top_k=3", "vocab.require_dedup=false", name="topk")
    run_vocab(cfg)
    doc = load_vocab(cfg.run_dir)
    samples = [c["samples"] for c in doc["classes"]]
    assert doc["num_classes"] == 3 and samples == sorted(samples, reverse=True)


def test_config_errors(vocab_run):
    with pytest.raises(ConfigError, match="vocab.min_count"):
        run_vocab(vocab_run("vocab.min_count=0", "vocab.require_dedup=false"))
    with pytest.raises(ConfigError, match="vocab.min_count"):  # nothing reaches the threshold
        run_vocab(vocab_run("vocab.min_count=100000", "vocab.require_dedup=false"))
    with pytest.raises(FileNotFoundError, match="fetch_demo"):
        run_vocab(vocab_run("vocab.wordnet_dir=/nonexistent/wordnet", "vocab.require_dedup=false"))


@pytest.mark.slow
def test_cli_reports_missing_ingest(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.vocab", f"run_dir={tmp_path / 'none'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "ingest" in r.stderr
