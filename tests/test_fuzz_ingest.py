"""Ingest on malformed and unusual input (issue 8): a corpus of every fault kind built from
the real fixture images (:mod:`fuzz.corpus`), and hypothesis-generated random bytes and tags.

Ingest must finish, quarantine each bad sample with its specific reason, write the
valid-but-unusual ones correctly converted, write nothing outside its folder, and keep
input == written + quarantined. Nothing may raise except through quarantine.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from conftest import REPO, make_cfg
from fuzz import corpus
from fuzz.corpus import WRITTEN, build_corpus, sources_override
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.config import IngestConfig
from pipeline.errors import REASONS, Rejected
from pipeline.ingest import run_ingest
from pipeline.ingestion.worker import IngestSettings, process_unit
from pipeline.io.readers import RawSample, Rejection, WorkUnit, iter_unit
from pipeline.vision.images import CanonicalImage, decode_image, encode_image

# a small budget keeps `make test` fast; FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_ingest.py fuzzes longer
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "50")), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _tree(root: Path) -> dict[str, tuple]:
    """Every path below ``root`` (not following symlinks) with its type and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "fifo" if not p.is_file() else "file"
            digest = hash(p.read_bytes()) if kind == "file" else os.readlink(p) if kind == "link" else None
            out[str(p.relative_to(root))] = (kind, st_.st_mode, digest)
    return out


def _shard_samples(run_dir: Path) -> list[tuple[dict, np.ndarray]]:
    """(metadata, stored RGB pixels) of every written sample."""
    out = []
    for shard in sorted((run_dir / "ingest" / "shards").glob("*.tar")):
        with tarfile.open(shard) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf}
        for name, blob in members.items():
            if name.endswith(".json"):
                meta = json.loads(blob)
                img = members[name[: -len(".json")] + ".png"]
                out.append((meta, np.asarray(Image.open(io.BytesIO(img)).convert("RGB"))))
    return out


def test_fuzz_corpus_every_fault_is_quarantined_or_converted(tmp_path):
    sources, expected = build_corpus(tmp_path / "input")
    run_dir = tmp_path / "run"
    cfg = make_cfg(
        "data=fixture",
        f"data.cache={corpus.FIXTURE}",
        f"run_dir={run_dir}",
        sources_override(sources),
        "data.eval_sets=[]",
        "ingest.progress=false",
        "ingest.workers=1",
        "ingest.shard_size=8",
        "ingest.max_side=128",
        "dedup.progress=false",
        "dedup.workers=1",
    )
    fixture_before = _tree(corpus.FIXTURE)
    before = _tree(tmp_path)
    repo_before = set(os.listdir(REPO))
    man = run_ingest(cfg)

    # nothing written outside the stage folder (inputs untouched, no "../escape", no "/abs")
    after = _tree(tmp_path)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert all(p == "run" or p.startswith("run/ingest") for p in changed), sorted(changed)[:10]
    assert _tree(corpus.FIXTURE) == fixture_before
    assert set(os.listdir(REPO)) == repo_before
    assert not Path("/abs/path.jpg").exists()
    assert not list((run_dir / "ingest").rglob(".*tmp-*"))
    for p in (run_dir / "ingest").rglob("*.json"):
        json.loads(p.read_text(encoding="utf-8"))  # complete, valid UTF-8 JSON

    rows = [json.loads(x) for x in (run_dir / "ingest" / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    quarantined = {r["id"]: r["reason"] for r in rows}
    assert len(quarantined) == len(rows), [k for k, v in Counter(r["id"] for r in rows).items() if v > 1]
    samples = _shard_samples(run_dir)
    written_ids = Counter(m["id"] for m, _ in samples)
    by_id = {m["id"]: (m, px) for m, px in samples}

    problems = []
    n_written = 0
    for sid, case in expected.items():
        if case.expect == WRITTEN:
            n_written += 1
            real_id = sid.split("#")[0]
            if real_id not in written_ids:
                problems.append(f"{sid}: expected written, got {quarantined.get(real_id)!r}")
                continue
            meta, px = by_id[real_id]
            if case.tags is not None and meta["hashtags"] != case.tags:
                problems.append(f"{sid}: hashtags {meta['hashtags']} != {case.tags}")
            if case.check is not None:
                try:
                    case.check(meta, px)
                except AssertionError as exc:
                    problems.append(f"{sid}: {exc}")
        elif quarantined.get(sid) != case.expect:
            got = quarantined.get(sid, "written" if sid in written_ids else "nothing")
            problems.append(f"{sid}: expected {case.expect}, got {got}")
    assert not problems, "\n".join(problems)

    c = man["counts"]
    assert c["input"] == c["written"] + c["quarantined"] == len(expected)
    assert c["written"] == sum(written_ids.values()) == n_written
    assert c["quarantined"] == len(rows) == len(expected) - n_written
    assert set(c["by_reason"]) <= set(REASONS)
    assert written_ids["tars:dupkey"] == 2  # one key in two input tars: two units, both written ...

    # ... and the dedup stage removes the later one as duplicate_id (ids are unique downstream)
    from pipeline.dedup import run_dedup

    dman = run_dedup(cfg)
    removed = [json.loads(x) for x in (run_dir / "dedup" / "removed.jsonl").read_text().splitlines()]
    dup = [r for r in removed if r["reason"] == "duplicate_id"]
    assert [r["id"] for r in dup] == ["tars:dupkey"] and dman["counts"]["duplicate_id"] == 1
    kept_key = dup[0]["duplicate_of"]
    assert kept_key < dup[0]["key"]
    kept_meta = next(m for m, _ in samples if m["key"] == kept_key)
    assert kept_meta["hashtags"] == ["first"]  # the copy in the first tar is kept
    index_keys = (run_dir / "dedup" / "index_keys.txt").read_text().split()
    assert dup[0]["key"] not in index_keys


# --------------------------------------------------------------------------- hypothesis: images
def _seed_images() -> dict[str, bytes]:
    """Real fixture images in every container format ingest meets."""
    rgba = corpus.emoji_rgba()
    rgb = corpus.on_white(rgba)
    gif, _ = corpus.animated_gif()
    exif, _ = corpus.exif_rotated_jpeg()
    return {
        "png": corpus.emoji_png(),
        "jpeg": corpus.photo_jpeg(),
        "gif": gif,
        "exif_jpeg": exif,
        "webp": corpus.encode(rgba, "WEBP", lossless=True),
        "tiff": corpus.cmyk_tiff()[0],
        "bmp": corpus.encode(rgb, "BMP"),
        "png16": corpus.gray16_png()[0],
        "svg": corpus.real_svg(),
    }


SEEDS = _seed_images()
DECODE = dict(max_pixels=4_000_000, max_side=64, min_side=8)


def _decode_only_rejects(data: bytes) -> None:
    try:
        out = decode_image(data, **DECODE)
    except Rejected as r:
        assert r.reason in REASONS
        return
    assert isinstance(out, CanonicalImage) and out.image.mode == "RGB" and max(out.image.size) <= 64
    encode_image(out.image, "webp")  # what ingest does next must not raise either


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise(data):
    _decode_only_rejects(data)


@FUZZ
@given(
    st.sampled_from(sorted(SEEDS)),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8)), max_size=6),
    st.floats(0.02, 1.0),
)
def test_mutated_real_images_never_raise(kind, patches, keep):
    data = bytearray(SEEDS[kind])
    for where, blob in patches:
        i = int(where * len(data))
        data[i : i + len(blob)] = blob
    _decode_only_rejects(bytes(data[: max(1, int(len(data) * keep))]))


# --------------------------------------------------------------------------- hypothesis: tags and readers
TEXT = st.text(
    st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.characters(max_codepoint=0x1F)),
    max_size=12,
)
SETTINGS = IngestSettings(
    IngestConfig(
        max_side=64, min_side=8, max_pixels=4_000_000, max_file_bytes=1 << 20, jpeg_quality=90, webp_method=0, rasterize_svg=True
    ),
    plan_hash="fuzz",
)


def _run_unit(unit: WorkUnit, out: Path, n_inputs: int | None = None) -> dict:
    """process_unit must not raise; its part must balance and be valid UTF-8 JSON."""
    part = process_unit(unit, SETTINGS, out)
    assert part["input"] == part["written"] + part["quarantined"]
    if n_inputs is not None:
        assert part["input"] == n_inputs
    on_disk = json.loads((out / "parts" / f"{unit.number:06d}.json").read_text(encoding="utf-8"))
    assert on_disk["input"] == part["input"]
    if part["written"]:
        with tarfile.open(out / part["shard"]) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    json.loads(tf.extractfile(m).read().decode("utf-8"))
    return part


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {
                    "id": TEXT,
                    "path": st.sampled_from(["a.png", "b.jpg", "../a.png", "nope.png", "a\x00.png"]),
                    "tags": st.one_of(st.lists(TEXT, max_size=4), TEXT, st.none(), st.integers()),
                },
                optional={"caption": st.one_of(TEXT, st.integers()), "meta": st.dictionaries(TEXT, TEXT, max_size=2)},
            ),
            st.binary(max_size=60),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_folder_reader_random_records_and_bytes(records):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "imgs").mkdir()
        (root / "imgs" / "a.png").write_bytes(corpus.emoji_png())
        (root / "imgs" / "b.jpg").write_bytes(corpus.photo_jpeg())
        lines = [(json.dumps(r) if isinstance(r, dict) else r.replace(b"\n", b" ").replace(b"\r", b" ")) for r in records]
        lines = [ln.encode() if isinstance(ln, str) else ln for ln in lines]
        lines = [ln for ln in lines if ln.strip()]
        (root / "index.jsonl").write_bytes(b"".join(ln + b"\n" for ln in lines))
        unit = WorkUnit(0, "h", "folder", str(root / "imgs"), "webp", index=str(root / "index.jsonl"), start=0, count=len(lines))
        _run_unit(unit, root / "out", len(lines))


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=30), st.binary(max_size=20)), min_size=1, max_size=5))
def test_csv_reader_random_bytes(rows):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "imgs").mkdir()
        (root / "imgs" / "a.png").write_bytes(corpus.emoji_png())
        clean = lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ").replace(b",", b";").replace(b'"', b"'")
        body = b"path,tags,id\n" + b"".join(b"a.png," + clean(t) + b"," + clean(i) + b"\n" for _, t, i in rows)
        (root / "index.csv").write_bytes(body)
        unit = WorkUnit(0, "c", "folder", str(root / "imgs"), "webp", index=str(root / "index.csv"), start=0, count=len(rows))
        _run_unit(unit, root / "out", len(rows))


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.one_of(st.binary(min_size=1, max_size=12), st.sampled_from([b"../x", b"/abs/x", b"a/../../b"])),
            st.sampled_from(["jpg", "png", "json", "txt", "svg", "webp"]),
            st.one_of(st.binary(max_size=200), st.sampled_from(["jpeg", "png", "meta", "svg"])),
        ),
        min_size=1,
        max_size=8,
    ),
    TEXT,
    st.binary(max_size=40),
    st.booleans(),
)
def test_img2dataset_reader_random_members(members, tag, caption, cut):
    jpg = corpus.photo_jpeg()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "tars").mkdir()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
            for name, ext, payload in members:
                if payload == "jpeg":
                    payload = jpg
                elif payload == "png":
                    payload = corpus.emoji_png()
                elif payload == "svg":
                    payload = corpus.real_svg()
                elif payload == "meta":
                    payload = json.dumps({"status": "success", "tags": [tag], "caption": tag}).encode()
                if ext == "txt":
                    payload = caption
                try:
                    corpus.add_member(tf, name.replace(b"\x00", b"_") + b"." + ext.encode(), payload)
                except (ValueError, UnicodeError):  # names tarfile itself cannot write
                    continue
        raw = buf.getvalue()
        (root / "tars" / "00000.tar").write_bytes(raw[: len(raw) // 2] if cut else raw)
        unit = WorkUnit(0, "t", "img2dataset", str(root / "tars"), "webp", tar=str(root / "tars" / "00000.tar"))
        for item in iter_unit(unit, SETTINGS.ingest.max_file_bytes):
            assert isinstance(item, (RawSample, Rejection))
        _run_unit(unit, root / "out")
