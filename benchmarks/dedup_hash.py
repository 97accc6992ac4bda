"""Perceptual hashing throughput, images/s, one process.

* **ours**: the images of every second demo shard (all sources; ``--opt stride=1`` for
  all) read through :class:`pipeline.io.shards.ShardReader`, decoded, and hashed with
  :func:`pipeline.vision.near_index.perceptual_hash` (border trimming + pHash, 64 bits), one after
  the other in one process. Ingest pays only the hash (it holds the decoded pixels); the
  dedup stage reads the stored codes and decodes nothing.
* **anchor**: imagededup's ``PHash().encode_images`` (``num_enc_workers=1``, one worker
  process) on the same images written as files.

Goal: ours >= 1.0 x anchor. ``details`` also says how often the two pHashes agree on the
same image (imagededup resizes in RGB then converts to grey; imagehash converts first).
"""

from __future__ import annotations

import logging

import numpy as np

from benchmarks.common import Context, Timer, log, main, median, read_images, result, select_shards, write_image_files


def run_ours(shards) -> tuple[int, Timer, dict]:
    import io

    from PIL import Image

    from pipeline.io.shards import ShardReader
    from pipeline.vision.near_index import perceptual_hash

    codes = {}
    with Timer() as t:
        for p in shards:
            with ShardReader(p) as reader:
                for key in reader.keys:
                    ext, off, size = reader.image_member(key)
                    with Image.open(io.BytesIO(reader.read_range(off, size))) as img:
                        codes[key] = perceptual_hash(img.convert("RGB"), 8)
    return len(codes), t, codes


def run_anchor(root) -> tuple[int, Timer, dict]:
    from imagededup.methods import PHash

    logging.getLogger("imagededup").setLevel(logging.WARNING)
    ph = PHash(verbose=False)
    with Timer() as t:
        enc = ph.encode_images(image_dir=str(root), recursive=True, num_enc_workers=1)
    return len(enc), t, enc


def agreement(ours: dict, theirs: dict) -> dict:
    """Share of images whose two pHashes are identical, and the mean Hamming distance."""
    dists = []
    for rel, hexcode in theirs.items():
        key = rel.rsplit("/", 1)[-1].split(".", 1)[0]
        if key in ours:
            a = np.frombuffer(bytes.fromhex(hexcode), dtype=np.uint8)
            dists.append(int(np.unpackbits(np.bitwise_xor(a, ours[key])).sum()))
    d = np.array(dists)
    return {
        "compared": int(d.size),
        "identical_share": float((d == 0).mean()) if d.size else None,
        "mean_hamming_bits": float(d.mean()) if d.size else None,
        "within_4_bits_share": float((d <= 4).mean()) if d.size else None,
    }


def run(ctx: Context) -> list[dict]:
    for name in ("imagededup", "imagededup.methods.hashing"):
        logging.getLogger(name).setLevel(logging.WARNING)
    shards = select_shards(ctx, stride=2)  # every second shard: all sources, half the time
    n_images = len(read_images(shards))
    root = None if ctx.ours_only else write_image_files(ctx, shards)
    log(f"dedup_hash: {n_images} images in {len(shards)} shards, {ctx.reps} reps")
    # warm-up, not timed: imagehash imports scipy.fftpack on its first call; imagededup at import
    import imagehash
    from PIL import Image

    imagehash.phash(Image.new("RGB", (64, 64)))
    if not ctx.ours_only:
        from imagededup.methods import PHash

        PHash(verbose=False).encode_image(image_array=np.zeros((64, 64, 3), dtype=np.uint8))
    ours, anchor, agree = [], [], None
    cpu_o, cpu_a = [], []
    for r in range(ctx.reps):
        n, t, codes = run_ours(shards)
        ours.append(n / t.seconds)
        cpu_o.append(1000 * t.cpu / n)
        log(f"dedup_hash rep {r}: ours {n / t.seconds:,.0f} img/s ({n} images, {cpu_o[-1]:.2f} CPU ms/image)")
        if ctx.ours_only:
            continue
        m, t2, enc = run_anchor(root)
        anchor.append(m / t2.seconds)
        cpu_a.append(1000 * t2.cpu / m)
        log(f"dedup_hash rep {r}: imagededup {m / t2.seconds:,.0f} img/s ({m} images, {cpu_a[-1]:.2f} CPU ms/image)")
        if agree is None:
            agree = agreement(codes, enc)
    o, a = median(ours), median(anchor)
    return [
        result(
            "dedup_hash",
            ours=o,
            anchor=a,
            unit="images/s",
            goal="ours >= 1.0 x anchor",
            met=None if a is None else o >= a,
            title="perceptual hashing (pHash, 64 bits), one process",
            ours_is="ShardReader + decode + pipeline.vision.near_index.perceptual_hash over the shards",
            anchor_is="imagededup PHash.encode_images(num_enc_workers=1) on the same images as files",
            details={
                "images": n_images,
                "shards": len(shards),
                "ours_per_rep": ours,
                "anchor_per_rep": anchor,
                "cpu_ms_per_image": {"ours": median(cpu_o), "anchor": median(cpu_a)},
                "cpu_efficiency_vs_anchor": (median(cpu_a) / median(cpu_o)) if cpu_a else None,
                "hash_agreement": agree,
                "note": "the two pHash definitions differ (imagehash: grey then 32x32 Lanczos, median "
                "over all 64 DCT terms, >; imagededup: 32x32 Lanczos in RGB then grey, median "
                "without the DC term, >=), so identical hashes are not expected",
            },
        )
    ]


if __name__ == "__main__":
    main(run)
