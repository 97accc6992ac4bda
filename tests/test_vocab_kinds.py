"""The vocabulary kinds of the findings sweeps: ``visual_nouns`` (physical synsets, senses chosen from
co-occurring hashtags) and ``target_aligned`` (synsets under a target's class names), on WordNet 3.0 and
the fixture corpus."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURE, WORDNET, stage_cfg

from pipeline.config import VocabKind
from pipeline.errors import ConfigError
from pipeline.io.labels import load_vocab
from pipeline.io.run_folder import SENSES_FILE, VOCAB
from pipeline.text.aligned import aligned_roots, aligned_synsets, class_name_words, read_class_names
from pipeline.text.sense_choice import PHYSICAL_ROOT, VisualNounMapper, choose_senses
from pipeline.text.wordnet_canon import wordnet_nouns
from pipeline.vocab import run_vocab


@pytest.fixture(scope="module")
def nouns():
    if not (WORDNET / "lexnames").is_file():
        pytest.fail("WordNet 3.0 missing: run `python -m data_tools.fetch_demo --only wordnet imagenet_info` first")
    return wordnet_nouns(str(WORDNET))


def _physical(nouns, name: str) -> bool:
    s = nouns.synset(name)
    return PHYSICAL_ROOT in {a.name() for a in s.closure(lambda z: z.hypernyms() + z.instance_hypernyms())}


def test_context_chooses_the_sense_and_a_different_context_another(nouns):
    flowers = [["plant", "flower"]] * 4 + [["plant", "tree"]] * 3 + [["rose", "flower"]] * 3
    factories = [["plant", "factory"]] * 6 + [["mill", "factory"]] * 4
    in_garden = choose_senses(flowers, nouns)["plant"]
    in_industry = choose_senses(factories, nouns)["plant"]
    assert in_garden.chosen == "plant.n.02" and in_garden.reason == "context"  # the organism, not sense 1
    assert in_industry.chosen == "plant.n.01" and in_industry.reason == "default"  # factory supports sense 1
    assert in_garden.default == in_industry.default == "plant.n.01"
    assert in_garden.scores[in_garden.candidates.index("plant.n.02")] > 0
    assert in_garden.to_dict()["changed"] and not in_industry.to_dict()["changed"]


def test_abstract_senses_and_adjectives_map_to_nothing(nouns):
    tags = [["theme", "white", "dog"]] * 6
    choices = choose_senses(tags, nouns)
    assert choices["theme"].chosen is None and "not physical" in choices["theme"].reason
    assert choices["white"].chosen is None and choices["white"].reason == "mostly an adjective"
    mapper = VisualNounMapper(nouns)
    mapper.fit(tags)
    assert mapper.map_many(["theme", "white", "dog", "happiness", "puppy"]) == [None, None, "dog.n.01", None, "puppy.n.01"]
    assert nouns.mostly_adjective("white") and not nouns.mostly_adjective("animal")


def test_rare_hashtags_get_no_record_and_a_near_tie_keeps_wordnets_order(nouns):
    assert "plant" not in choose_senses([["plant", "flower"]] * 4, nouns)  # 4 < min_samples = 5
    # #man next to #woman supports several person senses of man about equally: the first stays
    choice = choose_senses([["man", "woman"]] * 6, nouns)["man"]
    assert choice.chosen == "man.n.01"


def test_visual_nouns_stage_on_the_fixture_corpus(prepared_fixture, tmp_path, nouns):
    run = tmp_path / "run"
    for s in ("ingest", "dedup"):
        (run / s).parent.mkdir(parents=True, exist_ok=True)
        (run / s).symlink_to(prepared_fixture / s, target_is_directory=True)
    man = run_vocab(stage_cfg(run, "vocab=visual_nouns", "vocab.min_count=2", "vocab.plot=false"))
    doc = load_vocab(run)
    assert doc["kind"] == "visual_nouns" and doc["num_classes"] > 0
    assert all(_physical(nouns, c["id"]) for c in doc["classes"])
    records = json.loads((run / VOCAB / SENSES_FILE).read_text())
    assert records and man["outputs"]["senses"] == SENSES_FILE
    assert doc["choice"]["ambiguous_hashtags"] == len(records)
    for r in records:
        assert r["samples"] >= 5 and len(r["candidates"]) > 1
        assert r["chosen"] is None or (r["chosen"] in r["candidates"] and _physical(nouns, r["chosen"]))
    # the choices are the classes: a hashtag mapped in senses.json is a member of its class (if kept)
    members = {h: c["id"] for c in doc["classes"] for h in c["hashtags"]}
    assert all(members.get(r["hashtag"], r["chosen"]) == r["chosen"] for r in records)


@pytest.mark.slow
def test_aligned_roots_from_class_names(nouns):
    assert class_name_words("musical-instrument", nouns) == ["musical_instrument"]
    assert class_name_words("animal-marine", nouns) == ["animal"]  # a modifier is not a root
    roots = aligned_roots(["plant-flower", "plant-other", "animal-mammal", "other-object", "keycap"], nouns)
    assert roots["plant-flower"] == ["plant.n.02", "flower.n.01"] and roots["plant-other"] == ["plant.n.02"]
    assert roots["animal-mammal"] == ["animal.n.01", "mammal.n.01"] and roots["keycap"] == []
    allowed, too_general = aligned_synsets(roots, nouns)
    assert too_general == ["object.n.01"] and "object.n.01" not in allowed
    assert {"puppy.n.01", "rose.n.01", "plant.n.02"} <= allowed and "plant.n.01" not in allowed


@pytest.mark.slow
def test_target_aligned_stage_on_the_fixture_corpus(prepared_fixture, tmp_path, nouns):
    run = tmp_path / "run"
    for s in ("ingest", "dedup"):
        (run / s).parent.mkdir(parents=True, exist_ok=True)
        (run / s).symlink_to(prepared_fixture / s, target_is_directory=True)
    cfg = stage_cfg(run, "vocab=fluent_aligned", "vocab.min_count=2", "vocab.plot=false")
    assert cfg.vocab.kind is VocabKind.target_aligned
    names = read_class_names(FIXTURE / "fluent_emoji" / "subgroup" / "train")
    assert names == ["animal-mammal", "face-smiling", "food-fruit"]
    man = run_vocab(cfg)
    doc = load_vocab(run)
    roots = doc["choice"]["aligned_roots"]
    assert sorted(roots) == names and "animal.n.01" in roots["animal-mammal"]
    root_set = {r for rs in roots.values() for r in rs}
    for c in doc["classes"]:
        above = {a.name() for a in nouns.synset(c["id"]).closure(lambda z: z.hypernyms() + z.instance_hypernyms())}
        assert ({c["id"]} | above) & root_set, c["id"]
    assert "target_class_names" in man["inputs"]


def test_target_aligned_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="vocab.align_classes"):
        run_vocab(stage_cfg(tmp_path, "vocab.kind=target_aligned"))
    with pytest.raises(FileNotFoundError, match="vocab.align_classes"):
        read_class_names(tmp_path / "missing")


def test_context_ties_are_broken_by_tag_not_by_hash_order(nouns):
    # flower and tree co-occur with plant equally often: the recorded context is sorted, whatever PYTHONHASHSEED is
    choice = choose_senses([["plant", "tree", "flower"]] * 5, nouns)["plant"]
    assert choice.context == ["flower", "tree"]
