"""The shard-level epoch plan (pipeline.train.shard_plan): a deal that covers every sample once, balanced,
replication whose expectation is the weight whatever the world size, and the same class frequencies as the
whole-corpus plan on the fixture's real labels."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.io.labels import load_labels
from pipeline.io.shard_labels import read_shard_labels, read_shard_table
from pipeline.train.epoch_plan import SampleIndex, make_epoch_plan
from pipeline.train.shard_plan import deal_shards, rank_items, step_sizes


def _table(rng, n_shards):
    samples = rng.integers(1, 400, n_shards)
    weights = {s: rng.gamma(0.7, 1 / 0.7, int(n)) + 0.05 for s, n in zip(range(n_shards), samples)}
    expected = np.array([weights[s].sum() for s in range(n_shards)])
    return np.arange(n_shards) * 3 + 7, samples, expected, weights


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_deal_covers_every_sample_once_and_balances_expected_items(world):
    rng = np.random.default_rng(0)
    shards, samples, expected, _ = _table(rng, 37)
    deal = deal_shards(shards, samples, expected, seed=5, epoch=2, world=world)
    assert len(deal) == world
    seen = {int(s): np.zeros(n, int) for s, n in zip(shards, samples)}
    mass = np.zeros(world)
    per_sample = {int(s): e / n for s, n, e in zip(shards, samples, expected)}
    for r, slices in enumerate(deal):
        for sl in slices:
            seen[sl.shard][sl.start : sl.stop] += 1
            mass[r] += (sl.stop - sl.start) * per_sample[sl.shard]
    assert all((v == 1).all() for v in seen.values())  # every sample of every shard on exactly one rank
    # each rank within one sample's worth of the mean (the split is by position, in proportion to the cut)
    assert np.abs(mass - expected.sum() / world).max() <= max(per_sample.values()) + 1e-9
    assert deal == deal_shards(shards, samples, expected, seed=5, epoch=2, world=world)  # deterministic
    if world == 1:
        other = deal_shards(shards, samples, expected, seed=5, epoch=3, world=1)
        assert [s.shard for s in other[0]] != [s.shard for s in deal[0]]  # a new shard order each epoch


def test_replication_expectation_is_the_weight_and_independent_of_world_size():
    rng = np.random.default_rng(1)
    shards, samples, expected, weights = _table(rng, 9)
    wof = dict(zip(shards.tolist(), weights.values()))
    copies = {w: {int(s): np.zeros(n, int) for s, n in zip(shards, samples)} for w in (1, 3)}
    epochs = 400
    for epoch in range(epochs):
        for world in (1, 3):
            deal = deal_shards(shards, samples, expected, seed=0, epoch=epoch, world=world)
            for slices in deal:
                sh, rows, reps = rank_items(slices, wof.__getitem__, seed=0, epoch=epoch)
                for s in np.unique(sh):
                    m = sh == s
                    n_copies = np.bincount(rows[m], minlength=len(wof[int(s)]))
                    copies[world][int(s)] += n_copies
                    # copy numbers run 0..c-1 for a sample with c copies
                    assert np.array_equal(np.bincount(rows[m][reps[m] == 0], minlength=len(n_copies)), n_copies > 0)
    for s in wof:
        assert np.array_equal(copies[1][s], copies[3][s])  # the same copies whatever the world size
        mean = copies[1][s] / epochs
        se = np.sqrt(np.maximum(wof[s] - np.floor(wof[s]), 1e-3) / epochs)
        assert np.all(np.abs(mean - wof[s]) < 5 * se + 1e-9)


def test_step_sizes_give_every_rank_the_same_steps():
    sizes = step_sizes([130, 129, 140], 32)
    assert sizes.shape == (3, 5) and sizes.sum(axis=1).tolist() == [130, 129, 140]
    assert (sizes.max(axis=1) - sizes.min(axis=1) <= 1).all()  # each rank's batches within one item
    with pytest.raises(ValueError, match="smaller batch_size"):
        step_sizes([100, 2], 10)


def test_one_epoch_on_the_fixture_matches_the_whole_corpus_plan(prepared_fixture):
    """Real labels: the shard plan's items of one epoch, all ranks together, follow the expected class
    frequencies (sqrt resampling) as closely as the whole-corpus plan's, and the ranks' items are balanced."""
    folder = prepared_fixture / "vocab" / "shard_labels"
    table = read_shard_table(folder)
    labels = load_labels(prepared_fixture)
    tables = {s: read_shard_labels(folder, s) for s in table.column("shard").to_pylist()}
    wof = {s: np.asarray(t.column("weight_sqrt").to_pylist()) for s, t in tables.items()}
    classes = {s: t.column("classes").to_pylist() for s, t in tables.items()}
    w = labels.weights("sqrt")
    expected = np.zeros(labels.num_classes)
    for i in range(len(labels)):
        expected[labels.indices[labels.indptr[i] : labels.indptr[i + 1]]] += w[i]
    index = SampleIndex(labels.keys, labels.indptr, labels.indices.astype(np.int64), w)
    err_old, err_new = [], []
    for epoch in range(20):
        freq_new = np.zeros(labels.num_classes)
        deal = deal_shards(
            np.asarray(table.column("shard").to_pylist()),
            np.asarray(table.column("samples").to_pylist()),
            np.asarray(table.column("expected_sqrt").to_pylist()),
            seed=0,
            epoch=epoch,
            world=2,
        )
        counts = []
        for slices in deal:
            sh, rows, _ = rank_items(slices, wof.__getitem__, seed=0, epoch=epoch)
            counts.append(len(rows))
            for s, r in zip(sh.tolist(), rows.tolist()):
                freq_new[classes[s][r]] += 1
        # balanced up to the split by position and the replication's randomness (a few items on the tiny fixture)
        assert abs(counts[0] - counts[1]) <= 0.1 * sum(counts) + 3 * np.sqrt(sum(counts))
        plan = make_epoch_plan(index, seed=0, epoch=epoch, world=2, batch_size=16)
        freq_old = np.zeros(labels.num_classes)
        for r in plan.rows:
            freq_old[labels.indices[labels.indptr[r] : labels.indptr[r + 1]]] += 1
        err_old.append(np.abs(freq_old - expected).sum() / expected.sum())
        err_new.append(np.abs(freq_new - expected).sum() / expected.sum())
    # both plans' class frequencies deviate from the expectation by the replication's noise alone
    assert np.mean(err_new) < 1.25 * np.mean(err_old) and np.mean(err_old) < 1.25 * np.mean(err_new)


def test_step_sizes_without_the_array_match_it():
    from pipeline.train.shard_plan import StepSizes

    rng = np.random.default_rng(4)
    for _ in range(20):
        counts = rng.integers(50, 400, rng.integers(1, 9))
        sz = StepSizes.from_counts(counts, 16)
        steps = -(-counts.max() // 16)
        want = np.stack([(p // steps) + (np.arange(steps) < p % steps) for p in counts])
        assert sz.steps == steps and np.array_equal(sz.array(), want)
        assert [sz.global_batch(t) for t in range(steps)] == want.sum(0).tolist()
        assert sz.num_items == counts.sum() and all(list(sz.rank_sizes(r)) == want[r].tolist() for r in range(len(counts)))
    with pytest.raises(ValueError, match="cannot fill"):
        StepSizes.from_counts([100, 3], 16)
