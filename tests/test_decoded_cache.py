"""The decoded uint8 copy of the training images: same batches as decoding the shards, safe to rebuild."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.io.shards import iter_metadata, member_offsets, shard_paths
from pipeline.train.decoded_cache import DecodedCache, build_decoded_cache, estimate_bytes
from pipeline.train.epoch_plan import SampleIndex
from pipeline.train.loader import ShardStream, make_loader
from pipeline.vision.transforms import decode


def _index(run_dir) -> tuple[SampleIndex, dict]:
    paths = shard_paths(run_dir)
    keys = np.array(sorted(k for _, k, _ in iter_metadata(paths)))
    n = len(keys)
    return (SampleIndex(keys, np.arange(n + 1), np.arange(n, dtype=np.int64) % 5, np.ones(n)), {int(p.stem): p for p in paths})


def _batches(stream, workers, epoch=0):
    stream.set_epoch(epoch)
    return list(make_loader(stream, workers))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.slow
def test_batches_from_the_cache_equal_batches_from_the_shards(ingested_fixture, tmp_path, train):
    index, shards = _index(ingested_fixture)
    cache = build_decoded_cache(tmp_path / "cache", index.keys, shards, image_size=32, workers=2, progress=False)
    assert len(cache) == len(index.keys) > 16
    kw = dict(seed=7, rank=0, world=1, batch_size=8, image_size=32, train=train)
    plain = _batches(ShardStream(shards, index, **kw), 0, epoch=1)
    cached = _batches(ShardStream(shards, index, decoded=cache, **kw), 2, epoch=1)
    assert len(plain) == len(cached) > 1
    for a, b in zip(plain, cached):
        assert a["keys"] == b["keys"] and torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])


def test_cached_images_are_decode_output_with_the_shorter_side_capped(ingested_fixture, tmp_path):
    index, shards = _index(ingested_fixture)
    cache = build_decoded_cache(tmp_path / "c", index.keys, shards, image_size=16, workers=1, progress=False)
    key = str(index.keys[3])
    off, size = member_offsets(shards[int(key[:6])])[key]
    with open(shards[int(key[:6])], "rb") as fh:
        fh.seek(off)
        blob = fh.read(size)
    want = np.asarray(decode(blob, 16))
    got = cache.get(key)
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert min(got.shape[:2]) < 64
    assert max(min(cache.heights[i], cache.widths[i]) for i in range(len(cache))) < 64  # < 4 x image_size
    with pytest.raises(KeyError):
        cache.get("999999_000000")


def test_decode_reduces_the_shorter_side_by_an_integer_factor_and_never_enlarges():
    big = Image.new("RGB", (300, 150), (10, 200, 30))
    big.paste((250, 0, 0), (0, 0, 2, 2))  # one 2x2 block: reduced to its mean, one pixel
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    out = decode(buf.getvalue(), 32)
    assert out.size == (150, 75)  # shorter side 150 // 64 = 2: halved, in [64, 128), aspect kept
    assert out.getpixel((0, 0)) == (250, 0, 0) and out.getpixel((1, 0)) == (10, 200, 30)
    assert decode(buf.getvalue(), 16).size == (75, 38)  # 150 // 32 = 4 (a partial edge block is kept: ceil)
    edge = Image.new("RGB", (127, 127))
    buf = io.BytesIO()
    edge.save(buf, format="PNG")
    assert decode(buf.getvalue(), 32).size == (127, 127)  # 127 // 64 = 1: left as it is
    small = Image.new("RGB", (40, 20))
    buf = io.BytesIO()
    small.save(buf, format="WEBP")
    assert decode(buf.getvalue(), 32).size == (40, 20)


def test_a_complete_cache_is_reused_and_a_stale_one_rebuilt(ingested_fixture, tmp_path):
    index, shards = _index(ingested_fixture)
    folder = tmp_path / "cache"
    build_decoded_cache(folder, index.keys, shards, image_size=16, workers=1, progress=False)
    stamp = (folder / "pixels.u8").stat().st_mtime_ns
    build_decoded_cache(folder, index.keys, shards, image_size=16, workers=1, progress=False)
    assert (folder / "pixels.u8").stat().st_mtime_ns == stamp  # reused
    fewer = build_decoded_cache(folder, index.keys[:10], shards, image_size=16, workers=1, progress=False)
    assert len(fewer) == 10 and json.loads((folder / "meta.json").read_text())["images"] == 10
    (folder / "meta.json").unlink()  # a build killed before its last write
    with pytest.raises(FileNotFoundError):
        DecodedCache(folder)
    assert len(build_decoded_cache(folder, index.keys, shards, image_size=16, workers=1, progress=False)) == len(index.keys)


def test_a_missing_sample_fails_and_leaves_nothing(ingested_fixture, tmp_path):
    index, shards = _index(ingested_fixture)
    keys = np.array(sorted([*index.keys[:3], f"{int(index.keys[0][:6]):06d}_999999"]))
    with pytest.raises(RuntimeError, match="not found in shard"):
        build_decoded_cache(tmp_path / "cache", keys, shards, image_size=16, workers=1, progress=False)
    assert not (tmp_path / "cache").exists()


def test_estimate_covers_the_fixture_cache(ingested_fixture, tmp_path):
    assert estimate_bytes(10, 64) == int(1.5 * 10 * 3 * 128 * 128)
    index, shards = _index(ingested_fixture)
    cache = build_decoded_cache(tmp_path / "c", index.keys, shards, image_size=16, workers=1, progress=False)
    actual = sum(int(h) * int(w) * 3 for h, w in zip(cache.heights, cache.widths))
    assert actual <= estimate_bytes(len(index.keys), 16)


def test_worker_niceness_is_lowest_only_for_cpu_training_from_the_cache():
    from pipeline.train.loader import worker_nice

    assert worker_nice(None, "cpu", decoded=True) == 19
    assert worker_nice(None, "cpu", decoded=False) == 0  # decoding workers need their CPU share
    assert worker_nice(None, "cuda", decoded=True) == 0  # GPU runs: the workers have cores of their own
    assert worker_nice(0, "cpu", decoded=True) == 0 and worker_nice(5, "cuda", decoded=False) == 5
