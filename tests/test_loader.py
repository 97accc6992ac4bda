"""Epoch plan and streaming loader: no sample lost or repeated, worker- and resume-exact."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from pipeline.io.shards import iter_metadata, member_offsets, shard_paths
from pipeline.train.epoch_plan import SampleIndex, make_epoch_plan, replication_counts
from pipeline.train.loader import ShardStream, make_loader, shuffle_order
from pipeline.train.sample_split import heldout_mask
from pipeline.train.targets import batch_soft_targets as soft_targets
from pipeline.vision.transforms import normalize, rrc_box


def _index_from_run(run_dir, weight=1.0) -> tuple[SampleIndex, dict]:
    paths = shard_paths(run_dir)
    keys = sorted(k for _, k, _ in iter_metadata(paths))
    n = len(keys)
    indptr = np.arange(n + 1, dtype=np.int64)
    indices = np.array([i % 7 for i in range(n)], dtype=np.int64)
    weights = np.full(n, weight) if np.isscalar(weight) else weight
    shards = {int(p.stem): p for p in paths}
    return SampleIndex(np.array(keys), indptr, indices, weights), shards


def _toy_index(shard_sizes, weights=None) -> SampleIndex:
    keys = np.array([f"{s:06d}_{i:06d}" for s, n in enumerate(shard_sizes) for i in range(n)])
    n = len(keys)
    w = np.ones(n) if weights is None else weights
    return SampleIndex(keys, np.arange(n + 1), np.zeros(n, dtype=np.int64), w)


@pytest.mark.parametrize("world,batch", [(1, 4), (2, 4), (3, 5), (4, 3)])
def test_plan_partitions_items_exactly(world, batch):
    index = _toy_index([7, 16, 3, 16, 1, 9], weights=np.linspace(0.3, 2.7, 52))
    plan = make_epoch_plan(index, seed=1, epoch=2, world=world, batch_size=batch)
    expected = Counter({i: c for i, c in enumerate(replication_counts(index.weights, 1, 2)) if c})
    got = Counter()
    for r in range(world):
        rows, reps = plan.rank_items(r)
        got.update(rows.tolist())
        assert plan.batch_sizes[r].sum() == len(rows)  # every item is in exactly one batch
        assert plan.batch_sizes[r].min() >= 1
        assert len(set(zip(rows.tolist(), reps.tolist()))) == len(rows)
    assert got == expected  # nothing lost, nothing repeated beyond its replication count
    assert plan.batch_sizes.shape == (world, plan.steps)
    assert max(plan.batch_sizes.max(), 1) <= batch + 1


def test_replication_expectation_and_determinism():
    w = np.array([0.5, 1.0, 2.5, 4.0] * 2500)
    c = replication_counts(w, seed=0, epoch=0)
    assert set(np.unique(c[w == 2.5])) == {2, 3} and (c[w == 1.0] == 1).all() and (c[w == 4.0] == 4).all()
    assert abs(c[w == 2.5].mean() - 2.5) < 0.05 and abs(c[w == 0.5].mean() - 0.5) < 0.05
    assert np.array_equal(c, replication_counts(w, 0, 0)) and not np.array_equal(c, replication_counts(w, 0, 1))


def _collect(stream, workers, epoch=0, skip=0):
    stream.set_epoch(epoch, skip_batches=skip)
    return list(make_loader(stream, workers))


def test_stream_covers_plan_for_every_rank_and_worker_count(ingested_fixture):
    index, shards = _index_from_run(ingested_fixture, weight=1.0)
    seen = Counter()
    per_rank_steps = []
    for rank in range(2):
        s = ShardStream(shards, index, seed=3, rank=rank, world=2, batch_size=8, image_size=32)
        b0 = _collect(s, 0)
        b2 = _collect(s, 2)
        assert [b["keys"] for b in b0] == [b["keys"] for b in b2]  # order independent of worker count
        assert all(torch.equal(x["images"], y["images"]) for x, y in zip(b0, b2))  # and the augmentation too
        assert [b["step"] for b in b0] == list(range(len(b0)))
        per_rank_steps.append(len(b0))
        for b in b0:
            seen.update(b["keys"])
            assert b["images"].dtype == torch.uint8 and b["images"].shape[1:] == (3, 32, 32)
            assert b["global_batch"] >= len(b["keys"])
    assert per_rank_steps[0] == per_rank_steps[1]
    assert seen == Counter(index.keys.tolist())  # each sample exactly once across ranks


def test_resume_skips_exactly(ingested_fixture):
    index, shards = _index_from_run(ingested_fixture, weight=1.0)
    s = ShardStream(shards, index, seed=5, rank=0, world=1, batch_size=6, image_size=32)
    full = _collect(s, 2, epoch=1)
    resumed = _collect(s, 2, epoch=1, skip=3)
    assert [b["step"] for b in resumed] == [b["step"] for b in full[3:]]
    assert all(torch.equal(a["images"], b["images"]) and a["keys"] == b["keys"] for a, b in zip(full[3:], resumed))
    other_epoch = _collect(s, 0, epoch=2)
    assert [b["keys"] for b in other_epoch] != [b["keys"] for b in full]


def test_normalize_in_workers_equals_normalize_on_the_device(ingested_fixture):
    index, shards = _index_from_run(ingested_fixture, weight=1.0)
    kw = dict(seed=4, rank=0, world=1, batch_size=8, image_size=32)
    raw = _collect(ShardStream(shards, index, **kw), 0)
    normed = _collect(ShardStream(shards, index, normalize_in_workers=True, **kw), 2)
    assert len(raw) == len(normed) > 1
    for a, b in zip(raw, normed):
        assert b["images"].dtype == torch.float32 and a["keys"] == b["keys"]
        assert torch.equal(normalize(a["images"]), b["images"])
        assert normalize(b["images"]) is b["images"]  # already normalized: passed through, not normalized twice
    assert abs(float(torch.cat([b["images"] for b in normed]).mean())) < 3


def test_shuffle_order_is_a_seeded_permutation():
    a = shuffle_order(500, random.Random(1), 64)
    assert sorted(a.tolist()) == list(range(500)) and a.tolist() != list(range(500))
    assert np.array_equal(a, shuffle_order(500, random.Random(1), 64))
    assert shuffle_order(7, random.Random(1), 1).tolist() == list(range(7))
    # a buffer of k items emits item i no earlier than position i - k + 1 (it is local, not global)
    assert all(pos >= i - 63 for pos, i in enumerate(a.tolist()) if pos < 500 - 64)


def test_member_offsets_point_at_the_image_bytes(ingested_fixture):
    import tarfile

    path = shard_paths(ingested_fixture)[0]
    offsets = member_offsets(path)
    with tarfile.open(path) as tf, open(path, "rb") as fh:
        for m in tf.getmembers():
            key, _, ext = m.name.partition(".")
            if ext in ("webp", "png", "jpg"):
                fh.seek(offsets[key][0])
                assert fh.read(offsets[key][1]) == tf.extractfile(m).read()
    assert len(offsets) == len({n.partition(".")[0] for n in tarfile.open(path).getnames()})


def test_missing_sample_fails_in_set_epoch_naming_it(ingested_fixture):
    index, shards = _index_from_run(ingested_fixture, weight=1.0)
    keys = index.keys.copy()
    keys[-1] = keys[-1][:7] + "999999"  # a key no shard holds (still sorted: last)
    bad = SampleIndex(keys, index.indptr, index.indices, index.weights)
    with pytest.raises(RuntimeError, match="999999"):
        ShardStream(shards, bad, seed=0, rank=0, world=1, batch_size=4, image_size=32).set_epoch(0)


def test_heldout_and_targets():
    keys = np.array([f"000000_{i:06d}" for i in range(4000)])
    m = heldout_mask(keys, 0.05)
    assert 0.03 < m.mean() < 0.07 and np.array_equal(m, heldout_mask(keys, 0.05))
    t = soft_targets(torch.tensor([[0, 2, -1], [1, -1, -1]]), 4)
    assert torch.allclose(t, torch.tensor([[0.5, 0, 0.5, 0], [0, 1.0, 0, 0]]))


def test_normalize_is_the_imagenet_formula():
    x = torch.randint(0, 256, (3, 3, 5, 7), dtype=torch.uint8)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    y = normalize(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.allclose(y.double(), (x.double() / 255 - mean.double()) / std.double(), atol=1e-5, rtol=0)
    assert torch.equal(x, x.clone())  # the uint8 input is left as it was


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_decode_reads_shard_formats_and_others(fmt):
    """The shard formats go through Pillow's short probe, any other through the full one; palette and
    RGBA images come back RGB; a large image is box-reduced below 4x size, a small one left as it is."""
    import io

    from PIL import Image

    from pipeline.vision.transforms import decode

    rng = np.random.default_rng(0)
    for side, size in [(40, 16), (300, 16)]:
        img = Image.fromarray(rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8))
        if fmt == "GIF":
            img = img.convert("P")
        buf = io.BytesIO()
        img.save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        out = decode(buf.getvalue(), size)
        assert out.mode == "RGB"
        if side == 40:
            assert out.size == img.size
        else:  # JPEG: drafted by DCT scaling (1/4: 75 x 57); the others box-reduced by 225 // 32 = 7 (43 x 33)
            assert out.size == ((75, 57) if fmt == "JPEG" else (43, 33)) and 2 * size <= min(out.size) < 4 * size
        if side == 40 and fmt in ("PNG", "WEBP", "BMP"):  # lossless: the exact pixels
            assert np.array_equal(np.asarray(out), np.asarray(img.convert("RGB")))
    with pytest.raises(Exception, match="cannot identify"):
        decode(b"not an image at all", 16)


def test_rrc_box_in_bounds():
    rng = random.Random(0)
    for w, h in [(64, 64), (512, 40), (30, 500), (8, 8)]:
        for _ in range(200):
            left, t, r, b = rrc_box(w, h, rng)
            assert 0 <= left < r <= w and 0 <= t < b <= h


class _NiceProbe(torch.utils.data.IterableDataset):
    seed = 0

    def __iter__(self):
        import os

        yield torch.tensor([os.nice(0)])


def test_worker_nice_lowers_only_the_workers_priority():
    import os

    base = os.nice(0)
    got = [int(x) for x in make_loader(_NiceProbe(), 1, worker_nice=7)]
    assert got == [min(19, base + 7)] and os.nice(0) == base
    assert [int(x) for x in make_loader(_NiceProbe(), 1)] == [base]
