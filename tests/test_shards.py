"""The shard layer: ingest's index beside each tar, one reader, codes computed once on the canonical pixels."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile

import numpy as np
import pytest
import webdataset as wds
from conftest import FIXTURE
from PIL import Image

from pipeline.io.shards import ShardReader, index_path, iter_samples, parse_key, shard_key, shard_paths
from pipeline.vision.dedup_codes import shard_codes
from pipeline.vision.images import decode_image
from pipeline.vision.near_index import hamming, perceptual_hash, phash_bytes, trim_uniform_border


def _img2dataset_samples() -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} of the fixture's img2dataset tars (JPEG copies of fixture images, img2dataset layout)."""
    out: dict[str, dict[str, bytes]] = {}
    for p in sorted((FIXTURE / "img2dataset").glob("*.tar")):
        with tarfile.open(p) as tf:
            for m in tf:
                if m.isfile():
                    k, _, e = m.name.partition(".")
                    out.setdefault(k, {})[e] = tf.extractfile(m).read()
    return out


def _canon(blob: bytes) -> Image.Image:
    return decode_image(blob, max_pixels=10**8, max_side=512, min_side=1, rasterize_svg=True).image


def test_index_agrees_with_the_tar_member_by_member(ingested_fixture):
    paths = shard_paths(ingested_fixture)
    assert paths and all(index_path(p).is_file() for p in paths)
    for p in paths:
        reader = ShardReader(p, require_index=True)
        with tarfile.open(p) as tf:
            tar = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
        assert {f"{k}.{e}" for k in reader.keys for e in reader.members[k]} == set(tar)
        for k in reader.keys:
            for e in reader.members[k]:
                assert reader.read(k, e) == tar[f"{k}.{e}"]
            assert reader.metadata(k) == json.loads(tar[f"{k}.json"])  # the index holds the metadata
        reader.close()


def test_webdataset_reads_the_shards_as_they_are(ingested_fixture):
    paths = shard_paths(ingested_fixture)
    ours = [s for p in paths for s in ShardReader(p)]
    theirs = list(wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in theirs] == [s["__key__"] for s in ours] and len(ours) > 16
    for a, b in zip(ours, theirs):
        assert {k: v for k, v in b.items() if not k.startswith("__")} == {k: v for k, v in a.items() if k != "__key__"}
    assert [s["__key__"] for s in iter_samples(paths)] == [s["__key__"] for s in ours]


def test_stored_codes_are_the_perceptual_hash_of_the_canonical_pixels(ingested_fixture):
    """Lossless (webp) shards: decoding the stored image gives the canonical pixels, so the stored
    code must equal the hash of the decoded member; JPEG shards (img2dataset source) keep the code of
    the pixels before encoding, which is what an eval copy of the same input gets."""
    src = {k: d["jpg"] for k, d in _img2dataset_samples().items()}
    n_lossless = n_jpeg = 0
    for p in shard_paths(ingested_fixture):
        r = ShardReader(p)
        codes8, codes16 = shard_codes(r, 8), shard_codes(r, 16)
        for i, k in enumerate(r.keys):
            meta = r.metadata(k)
            ext, off, size = r.image_member(k)
            if ext == "webp":
                stored = Image.open(io.BytesIO(r.read_range(off, size))).convert("RGB")
                assert np.array_equal(codes8[i], perceptual_hash(stored, 8))
                assert np.array_equal(codes16[i], perceptual_hash(stored, 16))
                n_lossless += 1
            elif meta["source"] == "img2dataset":
                original = src[meta["id"].split(":", 1)[1]]
                assert np.array_equal(codes8[i], perceptual_hash(_canon(original), 8))  # = the eval side's code
                n_jpeg += 1
    assert n_lossless > 20 and n_jpeg >= 8


def test_a_jpeg_shard_and_its_eval_copy_get_the_same_code(ingested_fixture, tmp_path):
    """An eval image identical to a pretraining input, the pretraining copy stored as JPEG: the stored
    code and the eval code agree exactly (before, dedup hashed the decoded JPEG: a few bits off)."""
    from pipeline.io.readers import plan_units
    from pipeline.vision.dedup_codes import hash_eval_unit

    blobs = {k: d["jpg"] for k, d in _img2dataset_samples().items()}
    ev = tmp_path / "ev" / "val" / "copies"
    ev.mkdir(parents=True)
    for k, b in blobs.items():
        (ev / f"{k}.jpg").write_bytes(b)
    from conftest import make_cfg

    from pipeline.config import to_container

    cfg = make_cfg(
        "data=fixture",
        f"data.cache={FIXTURE}",
        "data.eval_sets=[{name: ev, format: imagefolder, root: " + str(tmp_path / "ev") + ", split: val}]",
    )
    units, _ = plan_units(cfg.data.eval_sets, "png", 2000)
    ing = to_container(cfg.ingest)
    eval_codes = {e[0].split("/")[-1][:-4]: e[2] for u in units for e in hash_eval_unit((u, ing, 8))}
    old_way_differs = 0
    for p in shard_paths(ingested_fixture):
        r = ShardReader(p)
        codes = shard_codes(r, 8)
        for i, k in enumerate(r.keys):
            meta = r.metadata(k)
            if meta["source"] != "img2dataset":
                continue
            sid = meta["id"].split(":", 1)[1]
            assert np.array_equal(codes[i], eval_codes[sid]), sid
            ext, off, size = r.image_member(k)
            decoded_jpeg = Image.open(io.BytesIO(r.read_range(off, size))).convert("RGB")
            old_way_differs += hamming(perceptual_hash(decoded_jpeg), eval_codes[sid]) > 0
    assert len(eval_codes) == len(blobs) >= 8
    assert old_way_differs >= 1  # hashing the stored JPEG instead (the old dedup) misses some exact codes


def test_border_trimming_brings_padded_copies_within_the_radius():
    """Real img2dataset-style ``border`` output (data_tools.to_img2dataset over fixture images): white
    bands padding a non-square image to a square are cropped before hashing; an image's own margins are not."""
    dist_new, dist_old = {}, {}
    for d in _img2dataset_samples().values():
        meta = json.loads(d["json"])
        a, b = _canon((FIXTURE / meta["url"]).read_bytes()), _canon(d["jpg"])
        shape = "square" if meta["original_width"] == meta["original_height"] else "padded"
        dist_new.setdefault(shape, []).append(hamming(perceptual_hash(a), perceptual_hash(b)))
        dist_old.setdefault(shape, []).append(hamming(phash_bytes(a), phash_bytes(b)))
    # square copies (no padding): 0 bits before; trimming leaves them within the radius (one moves to 2 bits)
    assert len(dist_new["square"]) == 10 and max(dist_old["square"]) == 0 and max(dist_new["square"]) <= 4
    # padded copies of the 10 non-square images: none within the default near radius (4 bits) before, 5 now
    assert len(dist_new["padded"]) == 10
    assert sum(d <= 4 for d in dist_old["padded"]) == 0 and sum(d <= 4 for d in dist_new["padded"]) == 5
    assert sum(dist_new["padded"]) < sum(dist_old["padded"]) / 2


def test_trim_keeps_margins_and_photographs():
    img = Image.new("RGB", (100, 40), (255, 255, 255))
    img.paste(Image.new("RGB", (60, 36), (200, 10, 10)), (20, 2))
    t = trim_uniform_border(img)
    assert t.size == (60, 40)  # 40 px of side bands (40% of the width) trimmed; 4 px of top/bottom margin (10%) kept
    small = Image.new("RGB", (64, 64), (255, 255, 255))
    small.paste(Image.new("RGB", (58, 58), (0, 0, 200)), (3, 3))
    assert trim_uniform_border(small).size == (64, 64)  # a 3 px margin is not padding
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    assert trim_uniform_border(noisy) is noisy
    blank = Image.new("RGB", (10, 10), (7, 7, 7))
    assert trim_uniform_border(blank) is blank


def test_a_shard_without_index_is_indexed_on_the_fly_and_a_stale_index_refused(ingested_fixture, tmp_path, caplog):
    src = shard_paths(ingested_fixture)[0]
    old = tmp_path / src.name
    shutil.copy(src, old)  # as ingested before the index existed: a tar alone
    with caplog.at_level(logging.WARNING, logger="pipeline.io.shards"):
        r = ShardReader(old)
    assert not r.indexed and "re-run ingest" in caplog.text
    ref = ShardReader(src)
    assert r.keys == ref.keys and r.members == ref.members
    assert r.metadata(r.keys[0]) == ref.metadata(ref.keys[0])
    with pytest.raises(FileNotFoundError, match="re-run ingest"):
        ShardReader(old, require_index=True)
    shutil.copy(index_path(src), index_path(old))
    with open(old, "ab") as fh:
        fh.write(b"\0" * 512)  # the tar changed after ingest
    with pytest.raises(ValueError, match="re-run ingest"):
        ShardReader(old)


def test_shard_keys_are_parsed_in_one_place():
    assert shard_key(3, 17) == "000003_000017" and parse_key("000003_000017") == (3, 17)
    for bad in ("3_17", "000003-000017", "abcdef_000001", ""):
        with pytest.raises(ValueError, match="not a shard key"):
            parse_key(bad)
