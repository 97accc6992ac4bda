"""The options the findings sweeps vary: nested data fractions (pretrain.data_fraction) and seeded label
noise (vocab.label_noise), on the real fixture corpus; and that adding such an option left the stage keys
of existing run folders as they were."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import make_cfg, stage_cfg

from pipeline.config import to_container, validate
from pipeline.errors import ConfigError
from pipeline.io.shards import iter_metadata, shard_paths
from pipeline.orchestration.keys import stage_keys
from pipeline.text.label_noise import replace_hashtags
from pipeline.train.sample_split import build_indexes


def _fixture_tags(run) -> tuple[list[str], list[list[str]]]:
    keys, tags = [], []
    for _, key, meta in iter_metadata(shard_paths(run)):
        keys.append(key)
        tags.append(list(meta["hashtags"]))
    return keys, tags


def test_data_fractions_are_nested_deterministic_and_keep_the_heldout_set(prepared_fixture):
    sets, held, order = {}, {}, {}
    for f in (0.25, 0.5, 1.0):
        train, heldout, _ = build_indexes(prepared_fixture, "sqrt", 0.1, data_fraction=f)
        sets[f], held[f], order[f] = set(train.keys), set(heldout.keys), list(train.keys)
        assert train.weights.mean() == pytest.approx(1.0)
    assert sets[0.25] < sets[0.5] < sets[1.0]  # nested: each fraction's samples are in every larger one
    assert held[0.25] == held[0.5] == held[1.0] and not held[1.0] & sets[1.0]  # the same held-out samples, never trained on
    n = len(sets[1.0])
    assert abs(len(sets[0.5]) - n / 2) < 4 * np.sqrt(n / 4) and abs(len(sets[0.25]) - n / 4) < 4 * np.sqrt(3 * n / 16)
    again, _, _ = build_indexes(prepared_fixture, "sqrt", 0.1, data_fraction=0.25)
    assert list(again.keys) == order[0.25]  # the same samples in the same order on every call
    with pytest.raises(ConfigError, match="pretrain.data_fraction"):
        build_indexes(prepared_fixture, "sqrt", 0.1, data_fraction=1e-6)  # no training sample left


def test_label_noise_rate_and_seeding_on_the_fixture_hashtags(prepared_fixture):
    keys, tags = _fixture_tags(prepared_fixture)
    occurrences = sum(len(t) for t in tags)
    same, counts = replace_hashtags(keys, tags, 0.0)
    assert same == tags and counts.replaced == 0
    for rate in (0.1, 0.25):
        noisy, counts = replace_hashtags(keys, tags, rate)
        assert counts.occurrences == occurrences
        sd = np.sqrt(occurrences * rate * (1 - rate))
        assert abs(counts.replaced - rate * occurrences) < 4 * sd, (counts, rate)
        changed = sum(len(set(a) - set(b)) for a, b in zip(tags, noisy))
        assert 0 < changed <= counts.replaced
        vocab = {t for ts in tags for t in ts}
        assert {t for ts in noisy for t in ts} <= vocab  # replacements come from the corpus's hashtags
        # seeded by key: the same sample gets the same noise whatever the order or the other samples
        order = np.random.default_rng(0).permutation(len(keys))
        shuffled, _ = replace_hashtags([keys[i] for i in order], [tags[i] for i in order], rate)
        assert [shuffled[j] for j in np.argsort(order)] == noisy
    heavy, _ = replace_hashtags(keys, tags, 1.0)
    singles = [(a, b) for a, b in zip(tags, heavy) if len(a) == 1]
    assert singles and all(a != b for a, b in singles)  # rate 1: every hashtag replaced, never by itself
    freq = Counter(t for ts in tags for t in ts)
    drawn = Counter(t for ts in heavy for t in ts)
    top = freq.most_common(1)[0][0]
    assert drawn[top] > drawn[min(freq, key=freq.get)]  # drawn from the marginal: frequent hashtags come up more
    with pytest.raises(ValueError, match="rate"):
        replace_hashtags(keys, tags, 1.5)


def test_the_vocab_stage_applies_label_noise_and_records_it(prepared_fixture, tmp_path):
    from conftest import copy_run

    from pipeline.io.labels import load_labels
    from pipeline.io.manifest import read_manifest
    from pipeline.vocab import run_vocab

    run = copy_run(prepared_fixture, tmp_path / "run", stages=("ingest", "dedup"))
    base = ["vocab.kind=raw", "vocab.min_count=2", "vocab.plot=false"]
    run_vocab(stage_cfg(run, *base, "vocab.label_noise=0.25"))
    man = read_manifest(run / "vocab")
    noise = man["counts"]["label_noise"]
    assert noise["rate"] == 0.25 and 0.15 < noise["replaced_share"] < 0.35
    clean = load_labels(prepared_fixture)
    noisy = load_labels(run)
    assert noisy.num_classes != clean.num_classes or not np.array_equal(noisy.indices, clean.indices)


@pytest.mark.slow
def test_new_options_at_their_defaults_leave_stage_keys_unchanged(tmp_path):
    cfg = to_container(make_cfg(f"run_dir={tmp_path}"))
    keys = stage_keys(cfg)
    assert "data_fraction" not in str(keys) and stage_keys(cfg) == keys
    with_defaults = to_container(
        make_cfg(f"run_dir={tmp_path}", "pretrain.data_fraction=1.0", "vocab.label_noise=0.0", "vocab.align_classes=")
    )
    assert stage_keys(with_defaults) == keys
    changed = stage_keys(to_container(make_cfg(f"run_dir={tmp_path}", "pretrain.data_fraction=0.5")))
    assert changed["pretrain"] != keys["pretrain"] and changed["vocab"] == keys["vocab"]
    noisy = stage_keys(to_container(make_cfg(f"run_dir={tmp_path}", "vocab.label_noise=0.1")))
    assert noisy["vocab"] != keys["vocab"] and noisy["pretrain"] != keys["pretrain"]  # downstream follows
    for bad in ("pretrain.data_fraction=0", "pretrain.data_fraction=1.5", "vocab.label_noise=-0.1", "vocab.label_noise=1.1"):
        with pytest.raises(ConfigError):
            validate(make_cfg(bad))
