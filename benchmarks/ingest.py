"""Ingest throughput per core, images/s, on a subset of the raw demo files.

* **ours**: the ingest stage, :func:`pipeline.ingest.run_ingest` with ``ingest.workers=1``
  on the first ``per_source`` samples of each demo source (``data.sources[i].max_samples``),
  in a fresh run folder: read, validate, decode (SVG rasterized with cairosvg), EXIF
  orientation, alpha on white, pixel SHA-256, cap to 512 px, re-encode (lossless WebP, as
  the demo config says), hashtags, tar shard, part file, manifest. The figure is the
  stage's own ``images_per_second_this_run`` (inputs / seconds of its work loop); the whole
  stage's wall time (planning included) is in ``details``.
* **anchor**: a tight loop over the same files: read, decode (cairosvg for SVG), convert
  to RGB with alpha composited on white, cap to 512 px, re-encode the same way. No
  hashing, metadata, tar or fsync.

Goal: ours >= 0.8 x anchor.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from benchmarks.common import Context, Timer, compose_cfg, log, main, median, result


def _cfg(ctx: Context, run_dir: Path, per_source: int):
    cache = ctx.options.get("cache", "data/raw")
    cfg = compose_cfg(f"run_dir={run_dir}", f"data.cache={cache}", "ingest.workers=1", "ingest.progress=false")
    for s in cfg.data.sources:
        s.max_samples = per_source
    return cfg


def run_ours(ctx: Context, rep: int, per_source: int) -> dict:
    from pipeline.ingest import run_ingest

    d = ctx.work_dir / f"ingest_rep{rep}"
    if d.exists():
        shutil.rmtree(d)
    cfg = _cfg(ctx, d, per_source)
    with Timer() as t:
        man = run_ingest(cfg)
    c = man["counts"]
    shutil.rmtree(d, ignore_errors=True)
    return {
        "input": c["input"],
        "written": c["written"],
        "quarantined": c["quarantined"],
        "cpu_ms_per_image": 1000 * t.cpu / c["input"],
        "images_per_second": c["images_per_second_this_run"],
        "stage_seconds": t.seconds,
        "stage_images_per_second": c["input"] / t.seconds,
    }


def work_list(ctx: Context, per_source: int) -> list[tuple[str, str, str]]:
    """``(path, encoding, source)`` of the inputs the stage reads, in its order."""
    from pipeline.io.readers import RawSample, iter_unit, plan_units

    cfg = _cfg(ctx, ctx.work_dir / "unused", per_source)
    units, _ = plan_units(cfg.data.sources, str(cfg.ingest.encoding), cfg.ingest.shard_size)
    out = []
    for u in units:
        for item in iter_unit(u, cfg.ingest.max_file_bytes):
            out.append((item.origin, u.encoding, u.source) if isinstance(item, RawSample) else (None, u.encoding, u.source))
    return out


def run_anchor(items, max_side: int = 512, max_pixels: int = 89_478_485) -> tuple[int, Timer]:
    """The tight loop: read, decode, RGB on white, cap, re-encode."""
    import cairosvg
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    n = 0
    with Timer() as t:
        for path, enc, _ in items:
            n += 1
            if path is None:
                continue
            data = Path(path).read_bytes()
            try:
                if data.lstrip()[:5] in (b"<?xml", b"<svg ") or b"<svg" in data[:256]:
                    img = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=data, output_width=max_side)))
                else:
                    img = Image.open(io.BytesIO(data))
                    if img.width * img.height > max_pixels:
                        continue
                img.load()
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    rgba = img.convert("RGBA")
                    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    bg.alpha_composite(rgba)
                    img = bg.convert("RGB")
                elif img.mode != "RGB":
                    img = img.convert("RGB")
                if max(img.size) > max_side:
                    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                if enc == "webp":
                    img.save(buf, "WEBP", lossless=True, method=0)
                elif enc == "png":
                    img.save(buf, "PNG", compress_level=6)
                else:
                    img.save(buf, "JPEG", quality=95)
            except Exception:  # what the stage would quarantine
                continue
    return n, t


def run(ctx: Context) -> list[dict]:
    import logging

    logging.basicConfig(level=logging.WARNING)
    per_source = int(ctx.options.get("per_source", 60 if ctx.quick else 300))
    items = work_list(ctx, per_source)
    log(f"ingest: {len(items)} inputs ({per_source} per source), one worker, {ctx.reps} reps")
    # warm-up, not timed: lazy imports (cairosvg, Pillow's WebP plugin) and the page cache, for both sides
    import cairosvg  # noqa: F401

    run_anchor(items)
    ours, anchor, cpu_a = [], [], []
    for r in range(ctx.reps):
        o = run_ours(ctx, r, per_source)
        ours.append(o)
        log(
            f"ingest rep {r}: ours {o['images_per_second']:.1f} img/s ({o['input']} inputs; whole stage "
            f"{o['stage_images_per_second']:.1f} img/s)"
        )
        if ctx.ours_only:
            continue
        n, t = run_anchor(items)
        anchor.append(n / t.seconds)
        cpu_a.append(1000 * t.cpu / n)
        log(f"ingest rep {r}: tight loop {n / t.seconds:.1f} img/s ({cpu_a[-1]:.2f} CPU ms/image)")
    o, a = median(x["images_per_second"] for x in ours), median(anchor)
    cpu_o, cpu_a_m = median(x["cpu_ms_per_image"] for x in ours), median(cpu_a)
    by_source: dict[str, int] = {}
    for _, _, src in items:
        by_source[src] = by_source.get(src, 0) + 1
    return [
        result(
            "ingest_per_core",
            ours=o,
            anchor=a,
            unit="images/s per core",
            goal="ours >= 0.8 x anchor",
            met=None if a is None else o >= 0.8 * a,
            title=f"ingest, one worker, first {per_source} samples of each demo source",
            ours_is="pipeline.ingest.run_ingest (workers=1): the stage's work-loop rate",
            anchor_is="tight read/decode/RGB-on-white/cap/re-encode loop on the same files",
            details={
                "inputs": len(items),
                "by_source": by_source,
                "ours_per_rep": ours,
                "anchor_per_rep": anchor,
                "cpu_ms_per_image": {"ours (whole stage)": cpu_o, "anchor": cpu_a_m},
                "cpu_efficiency_vs_anchor": (cpu_a_m / cpu_o) if cpu_a_m and cpu_o else None,
                "stage_images_per_second": median(x["stage_images_per_second"] for x in ours),
            },
        )
    ]


if __name__ == "__main__":
    main(run)
