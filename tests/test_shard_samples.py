"""The pretraining samples read shard by shard (pipeline.train.shard_samples) on the fixture's real labels: the same
training and held-out samples and weights as the whole-corpus view, every training sample dealt to exactly one rank
whatever the world size, copies that do not depend on the world size, and the loader streaming a rank's items."""

from __future__ import annotations

import dataclasses
import functools
import random
import shutil
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ConfigError
from pipeline.io.labels import load_labels, vocab_class_counts
from pipeline.io.run_folder import SHARD_LABELS_DIR, VOCAB, path
from pipeline.io.shard_labels import BUCKET_COLUMNS
from pipeline.io.shards import shard_paths
from pipeline.seeding import item_seed, key_buckets
from pipeline.train.loader import ShardStream, make_loader, shuffle_order
from pipeline.train.sample_split import build_indexes
from pipeline.train.shard_plan import StepSizes, replicate_shard
from pipeline.train.shard_samples import ShardSamples

SEED = 3


def _folder(run):
    return path(run, VOCAB, SHARD_LABELS_DIR)


def _ranks(run, world, **kw):
    """``world`` ShardSamples simulated in one process: the table exchange and the count exchange answered locally."""
    args = (_folder(run), kw.pop("scheme", "sqrt"), kw.pop("heldout", 0.1), kw.pop("fraction", 1.0))
    box = []
    ShardSamples(*args, gather=lambda obj: box.append(obj) or [obj])  # one process's split of every shard
    ranks = [ShardSamples(*args, rank=r, world=world, gather=lambda obj: box) for r in range(world)]
    for o in ranks:  # the count exchange: every rank's part of the counts, computed first, then summed by each
        o.gather = lambda part: [part]
    parts = {e: [o.epoch_counts(e, SEED) for o in ranks] for e in (1, 2)}
    for o in ranks:
        o.gather = lambda part: parts[part.shape[1]]
    return ranks


@pytest.mark.parametrize("fraction", [1.0, 0.4])
def test_split_and_weights_equal_the_whole_corpus_view(prepared_fixture, fraction):
    train, held, labels = build_indexes(prepared_fixture, "sqrt", 0.1, data_fraction=fraction)
    s = ShardSamples(_folder(prepared_fixture), "sqrt", 0.1, fraction)
    assert s.num_train == len(train.keys) and s.num_heldout == len(held.keys) > 0
    np.testing.assert_array_equal(s.heldout.keys, held.keys)
    np.testing.assert_array_equal(s.heldout.indptr, held.indptr)
    np.testing.assert_array_equal(s.heldout.indices, held.indices)
    # every training sample's scaled weight, shard by shard, equals the whole-corpus index's renormalized weight
    w = np.concatenate([s.train_weights(int(sh)) for sh in s.shards])
    np.testing.assert_allclose(w, train.weights, rtol=1e-12)
    np.testing.assert_allclose(s.expected.sum(), len(train.keys), rtol=1e-12)
    np.testing.assert_array_equal(vocab_class_counts(prepared_fixture), labels.class_counts)


@pytest.mark.parametrize("world", [1, 3])
def test_heldout_eval_max_keeps_the_same_lowest_hash_subset_on_any_world_size(prepared_fixture, world):
    full = ShardSamples(_folder(prepared_fixture), "sqrt", 0.3, 1.0)
    n = full.num_heldout
    assert n == full.num_heldout_eval > 20
    args = (_folder(prepared_fixture), "sqrt", 0.3, 1.0)
    parts = []  # the exchange answered in one process: every rank's part first, then each rank sees them all
    for r in range(world):
        ShardSamples(*args, rank=r, world=world, heldout_eval_max=n // 3, gather=lambda obj: parts.append(obj) or [obj])
    ranks = [ShardSamples(*args, rank=r, world=world, heldout_eval_max=n // 3, gather=lambda obj: parts) for r in range(world)]
    capped = ranks[-1]
    assert all(np.array_equal(r.heldout.keys, capped.heldout.keys) for r in ranks)
    assert capped.num_heldout == n and capped.num_heldout_eval == len(capped.heldout.keys) == n // 3
    assert capped.num_train == full.num_train  # the rest of the held-out set is still not trained on
    # the evaluated samples are the held-out samples with the lowest fraction buckets (then key), in key order
    salt, modulus = BUCKET_COLUMNS["fraction_bucket"]
    buckets = key_buckets(salt, full.heldout.keys, modulus)
    want = np.sort(full.heldout.keys[np.lexsort((full.heldout.keys, buckets))[: n // 3]])
    np.testing.assert_array_equal(capped.heldout.keys, want)
    for i, key in enumerate(capped.heldout.keys):  # and carry their own classes
        j = int(np.flatnonzero(full.heldout.keys == key)[0])
        np.testing.assert_array_equal(capped.heldout.classes(i), full.heldout.classes(j))
    assert ShardSamples(_folder(prepared_fixture), "sqrt", 0.3, 1.0, heldout_eval_max=n).num_heldout_eval == n


def test_labels_without_stored_buckets_give_the_same_split(prepared_fixture, tmp_path):
    folder = tmp_path / "shard_labels"
    shutil.copytree(_folder(prepared_fixture), folder)
    for f in folder.glob("0*.parquet"):
        t = pq.read_table(f)
        pq.write_table(t.drop_columns(list(BUCKET_COLUMNS)), f)
    old = ShardSamples(folder, "sqrt", 0.1, 0.4)
    new = ShardSamples(_folder(prepared_fixture), "sqrt", 0.1, 0.4)
    np.testing.assert_array_equal(old.heldout.keys, new.heldout.keys)
    np.testing.assert_array_equal(old.train_samples, new.train_samples)


def test_no_training_sample_is_a_config_error(prepared_fixture):
    with pytest.raises(ConfigError, match="pretrain.data_fraction"):
        ShardSamples(_folder(prepared_fixture), "sqrt", 0.1, 1e-6)
    with pytest.raises(ConfigError, match="pretrain.resampling"):
        ShardSamples(_folder(prepared_fixture), "nope", 0.1, 1.0)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_training_sample_on_one_rank_and_copies_independent_of_world(prepared_fixture, world):
    train, _, labels = build_indexes(prepared_fixture, "sqrt", 0.1)
    one = _ranks(prepared_fixture, 1)[0]
    one.epoch_sizes(2, SEED, batch_size=16)
    ranks = _ranks(prepared_fixture, world)
    every = [[sz.array() for sz in r.epoch_sizes(2, SEED, batch_size=16)] for r in ranks]
    # one pass over each rank's part of the shards gives every rank's count of its own slices
    assert all(sz[r.rank].sum() == _item_count(r, e) for r in ranks for e, sz in enumerate(every[0]))
    sizes = every[0]
    assert all(np.array_equal(a, b) for other in every for a, b in zip(other, sizes))  # every rank, the same steps
    for epoch in range(2):
        ref = Counter(item[0] for item in one.rank_stream(epoch, SEED).items())
        dealt, copies = [], Counter()
        for r in ranks:
            plan = r.rank_stream(epoch, SEED)
            items = list(plan.items())
            assert plan.steps == sizes[epoch].shape[1] and len(items) == sizes[epoch][r.rank].sum()
            dealt.append({k for sl in plan.slices for k in _slice_keys(r, sl)})
            got = Counter(item[0] for item in items)
            copies.update(got)
            # copy numbers run 0..c-1 for each sample, and the classes are the sample's
            assert Counter((item[0], item[2]) for item in items) == Counter((k, c) for k, n in got.items() for c in range(n))
            for key, classes, _, shard in items[:50]:
                assert sorted(classes.tolist()) == sorted(labels.classes_of(key)) and int(key[:6]) == shard
        assert sum(len(d) for d in dealt) == len(train.keys) == len(set().union(*dealt))  # each sample on one rank
        assert copies == ref  # a sample's copies do not depend on the world size


def _item_count(samples, epoch):
    """A rank's items in ``epoch`` from its own slices, one read each: the reference for the one-pass counts."""
    total = 0
    for sl in samples.deal(epoch, SEED)[samples.rank]:
        copies = replicate_shard(samples.train_weights(sl.shard), sl.shard, seed=SEED, epoch=epoch)
        total += int(copies[sl.start : sl.stop].sum())
    return total


def _slice_keys(samples, sl):
    sp = samples.split(sl.shard, labels=True)
    return sp.table.column("key").take(sp.train[sl.start : sl.stop]).to_pylist()


def test_stream_yields_the_plans_items_through_the_shuffle_buffer(prepared_fixture):
    """The streamed loader (items generated shard by shard, through the buffer) gives the batches that the
    position-based shuffle over the epoch's whole item list gives: in one process, with 2 workers, resumed."""
    ranks = _ranks(prepared_fixture, 2)
    for r in ranks:
        r.epoch_sizes(1, SEED, batch_size=8)
    shards = {int(p.stem): p for p in shard_paths(prepared_fixture)}
    for r in ranks:
        plan = r.rank_stream(0, SEED)
        items = list(plan.items())
        order = shuffle_order(len(items), random.Random(item_seed("buffer", SEED, 0, r.rank)), 50)
        sizes = list(plan.rank_batch_sizes(r.rank))
        ends = np.cumsum(sizes)
        want = [[(items[i][0], items[i][2]) for i in order[e - n : e]] for e, n in zip(ends, sizes)]

        def stream(r=r):
            planner = functools.partial(r.rank_stream, seed=SEED)
            kw = dict(seed=SEED, rank=r.rank, world=2, batch_size=8, image_size=32, shuffle_buffer=50)
            return ShardStream(shards, planner, **kw)

        def got(batches):
            return [list(zip(b["keys"], b["copies"])) for b in batches]

        st = stream()
        st.set_epoch(0)
        batches = list(st)
        assert [b["step"] for b in batches] == list(range(len(want)))
        assert [b["global_batch"] for b in batches] == [plan.global_batch(t) for t in range(plan.steps)]
        assert got(batches) == want
        labels = load_labels(prepared_fixture)
        for k, row in zip(batches[0]["keys"], batches[0]["labels"]):
            assert sorted(x for x in row.tolist() if x >= 0) == sorted(labels.classes_of(k))
        st = stream()
        st.set_epoch(0, skip_batches=3)
        assert got(make_loader(st, 2)) == want[3:]  # 2 workers, resumed after 3 batches: the same batches
        # items that do not match the planned counts (labels changed mid-run) fail loudly, in both directions
        for delta in (5, -5):
            bad = dataclasses.replace(plan, sizes=StepSizes.from_counts(plan.sizes.counts + delta, 8))
            st = ShardStream(shards, lambda e, bad=bad: bad, seed=SEED, rank=r.rank, world=2, batch_size=8, image_size=32)
            st.set_epoch(0)
            with pytest.raises(RuntimeError, match="do not fill its planned batches"):
                list(st)


def test_checkpoint_of_the_whole_corpus_plan_is_refused(tmp_path):
    import torch

    from pipeline.io.run_folder import CHECKPOINT_DIR
    from pipeline.train.checkpoint import checkpoint_path, save_checkpoint
    from pipeline.train.resume import resume_point

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    config = {"seed": 0, "pretrain": {"epochs": 2}}
    path_ = checkpoint_path(tmp_path / CHECKPOINT_DIR, 3)
    kw = dict(model=model, optimizer=opt, scheduler=sched, step=3, epoch=0, config=config, extra={})
    save_checkpoint(path_, data_position={"epoch": 0, "batches": 3}, **kw)  # no plan: the whole-corpus path's
    with pytest.raises(ConfigError, match="whole-corpus data path"):
        resume_point(tmp_path, model, opt, sched, config, True)
    save_checkpoint(path_, data_position={"epoch": 0, "batches": 3, "plan": 2}, **kw)
    assert resume_point(tmp_path, model, opt, sched, config, True).state.batches == 3
