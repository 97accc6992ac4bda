"""Writes ``benchmarks/RESULTS.md`` from the result rows (see :mod:`benchmarks.__main__`).

:data:`NOTES` holds what the figures alone do not say: where the time goes (from the
profiles) and what was tried, per result name. They are written by people from the
profiles and experiments, and shown next to the figures of every run, so keep them
about causes, not about particular numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.profile import markdown as profile_markdown
from pipeline.reporting.format import md_table
from pipeline.system import available_cores

_LOADER = """Where our loader's CPU goes (quick runs on a busy 2-core machine, CPU ms per image, which depends far less
on other load than images/s; `details.cpu_ms_per_image` has this run's figures). With every stage in one process
(`workers=0`: tar reading, key matching, shuffle buffer, decode, augment, normalize) ours cost about the same per
image as the one-process PIL loop, so decode and augmentation themselves are not slower. The extra comes from two
places, both measured by running the stream with 0, 1 and 2 workers:

1. `normalize()` in the main process (fixed). It ran on torch's intra-op pool (2 threads here) while the 2 workers
   held both cores, so the 4 elementwise passes over a 64-image batch (under 1 ms of work with one thread) spent
   tens of ms of CPU in OpenMP barrier waits: about 0.5 ms per image, a quarter of the loader's CPU. ImageFolder
   normalizes in its workers (one thread each). The pipeline now does the same on a CPU device
   (`ShardStream(normalize_in_workers=True)`, which `pipeline.pretrain` sets when the device is the CPU); on a
   GPU the workers still hand over uint8 and the device normalizes (4x less to copy).
2. Every worker read and parsed all of the rank's tars and ran the shuffle buffer over every item, then kept
   1/W of the batches, so Python `tarfile` header parsing (`calc_chksums`, `nts`, about 0.15 ms per sample) was
   paid W times: going from 1 to 2 workers added about 0.4 CPU ms per image. Fixed: the shuffle buffer now
   permutes item positions, `set_epoch` looks up each item's byte offset once per process
   (`pipeline.io.shards.member_offsets`, then one header scan per shard; now the shard index), and each worker
   seeks to and reads only its
   own batches' image members (batches identical to the old path, checked on the demo shards).

Both costs were per sample, not per pixel, so the gap was widest on the 64 px emoji shards (the `--quick`
selection is half emoji) and narrower on the larger clip art, where decoding dominates. With both removed,
`(a) x workers` is an upper bound a 2-core machine cannot reach: the main process needs CPU too, and fresh
workers start every epoch. The profile below shows the split by process."""

NOTES: dict[str, str] = {
    "loader_vs_decode_limit": _LOADER,
    "loader_vs_imagefolder": "See the notes of loader_vs_decode_limit (same measurement, same causes).",
    "train_step": """The stage sets torch's intra-op threads to cores / local ranks while its DataLoader workers
run on the same cores. Whenever a worker runs, one of the OpenMP threads of a convolution or its backward is
descheduled and the others wait at the barrier, so the step loses more than the workers' CPU share
(`cpu_seconds_children` in `details.ours_per_rep`). The bare loop decodes nothing and keeps every core. Two
defaults close most of that gap on a CPU: the decoded cache (`pretrain.decoded_cache=auto`, the images are
decoded once at the start of the stage, so the workers only crop, flip and normalize) and workers at niceness 19
(`pretrain.worker_nice=null` = auto when training on the CPU from the cache: they then run in the gaps the step
leaves). On a machine shared with other jobs set `pretrain.worker_nice=0`, or such workers starve. On GPUs the
loader does not share cores with the step this way. The py-spy profile below shows where the main process spends
its CPU (backward, convolutions, batch norm); OpenMP barrier waits inside torch are not visible to it.
`details.paired_ratios` gives ours / bare per repetition, which the machine's own drift disturbs less than the
ratio of medians.""",
    "ingest_per_core": """Ours does more than the tight loop per image: the SHA-256 of the full-size canonical pixels
(`rgb.tobytes()` plus hashing, before the size cap: tens of MB for the large openclipart PNGs), EXIF
orientation, a per-sample UTF-8/JSON check of the metadata, path checks that resolve every component of each
file's path, the tar members, and one fsync per shard and part file. Per stage it also plans the units (hashing
the index files) and writes the manifest: with the `--quick` subset (60 inputs per source) these fixed costs weigh
noticeably more than with 300 per source, so judge this goal on a full run. `details.cpu_ms_per_image` compares
CPU per image, which other load disturbs less than images/s. The py-spy profile below (quick, ours only, set-up
included) shows decode, WebP encoding and SVG rasterization, the work both sides share, on top.""",
    "dedup_hash": """imagededup runs its hashing in a worker pool even with one worker (pickling every file name and
hash), resizes the RGB image before converting to grey (3 channels through Lanczos instead of 1), and reads files;
ours reads the shard tar sequentially.""",
    "near_search_time_growth": """The multi-index search compares each query with the codes that share one of its
radius + 1 = 5 substrings exactly. With 64-bit codes those substrings are 12 bits (64 // 5), so each table has
only 4,096 buckets: the comparisons per query grow with N / 4,096 and with clustering (skin-tone variants,
flags and blank-ish clip art share substrings), and the search grows faster than N once N is well above a few
thousand (`details.old_5x12_layout_candidates_per_query` gives its bucket-mates per query at N and 4N, computed from the
codes, free of timing noise). The output grows faster than N too: near duplicates come in clusters, so a
random quarter of the hashes keeps about a sixteenth of the pairs (`pairs` in `details.runs`), and any exact
search has to emit them. What was tried: faiss's own multi-probe, 3 substrings of 21 bits probed with 1 flipped
bit (`IndexBinaryMultiHash(64, 3, 21)` with `nflip = 1`, exact for radius <= 5 by the pigeonhole principle: a
pair within 4 bits differs by at most 1 bit in one of the 3 substrings). It finds the same pairs
(`details.tried_3x21_flip1_seconds`) with 2^21 buckets per table; it pays 66 bucket probes per query instead of
5, so at the demo's sizes it is no faster in absolute terms, but its time grows less from N to 4N, and its
bucket-mates stay few up to millions of codes, where the 12-bit layout's grow with N / 4,096.
`pipeline.vision.near_index.build_index` now chooses that layout wherever radius + 1 substrings would be shorter than
16 bits (radius 4 on 64-bit pHashes: 3 x 21 bits, nflip 1), so ours and the tried layout are the same index
from this version on; `details.old_5x12_layout_candidates_per_query` reports the old 12-bit layout's bucket-mates
for comparison. imagededup's brute force converts its whole hash dict for every query and compares all
pairs, so it grows with N^2.""",
    "hashtag_canonicalization": """Once a hashtag has been seen, mapping it is one dict lookup per occurrence. The
first pass over a corpus resolves every distinct hashtag through NLTK (synset lookups, morphology, the compact
lemma index): that is the cold figure, and it is the cost that matters only while new hashtags keep appearing.
The whole labelling step (`build_vocabulary`: mapping, counting, choosing classes, CSR labels) is slower than
the mapping alone, but still linear in occurrences.""",
    "whole_pipeline": """`make demo` is not run by the benchmarks unless asked (it rewrites runs/demo and takes many
minutes): `--demo-command "make demo"` times that command (run it on an empty data/raw and run folder for the
fresh-machine figure); otherwise the sum of the stages in run/energy.json is shown, which excludes the set-up and
the fetch and any stage the main job skipped or resumed, so it is never called met.""",
}


def fmt(x, unit: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    x = float(x)
    if unit.startswith("fraction"):
        return f"{100 * x:.1f}%"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _when(measured: dict, started: str) -> str:
    """The ``measured`` cell: ``this run``, or the time and mode of the earlier run that measured the row."""
    return "this run" if measured.get("at") == started else f"{measured.get('at', '?')} ({measured.get('mode', '?')})"


def _met(m) -> str:
    return {True: "**met**", False: "**not met**", None: "–"}[m]


def _details(d: dict, skip=("shards",)) -> list[str]:
    out = []
    for k, v in d.items():
        if k in skip or v is None or (isinstance(v, (dict, list)) and not v):
            continue
        if isinstance(v, float):
            v = fmt(v)
        elif isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
            v = ", ".join(fmt(x) for x in v)
        elif isinstance(v, (dict, list)):
            v = json.dumps(_rounded(v), default=str)
            if len(v) > 400:
                v = v[:400] + " ..."
        out.append(f"  - {k}: {v}")
    return out


def _rounded(x):
    """Floats in nested dicts/lists to 4 significant digits (for the details lines)."""
    if isinstance(x, float):
        return float(f"{x:.4g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def write_report(
    path: Path,
    rows: list[dict],
    *,
    machine: dict,
    command: str,
    started: str,
    total_seconds: float,
    runs: dict,
    mode: str,
    run_dir: str,
    previous_profiles: dict,
) -> None:
    L: list[str] = ["# Benchmarks", ""]
    L += [
        f"Measured by `{command}` (`make bench` runs `python -m benchmarks`), started {started}, "
        f"{mode} run, {total_seconds / 60:.1f} min, on the demo run `{run_dir}`. Each figure is the median of the "
        "reps of a measurement; ours and its anchor ran interleaved in the same process on the same real images. "
        "Rows measured by an earlier run (`--only`) say so in the last column.",
        "",
    ]
    L += md_table(
        ["what", "ours", "anchor", "unit", "ratio", "goal", "met", "measured"],
        [
            [
                r["name"],
                fmt(r["ours"], r["unit"]),
                fmt(r["anchor"], r["unit"]),
                r["unit"],
                fmt(r["ratio"]),
                r["goal"],
                _met(r.get("met")),
                _when(r.get("measured", {}), started),
            ]
            for r in rows
        ],
        "lrrlrlll",
    )
    L += ["", "## Machine", ""]
    v = machine.get("versions", {})
    cap = machine.get("cpu_capability") or {}
    L += [f"- CPU capability (torch): {cap.get('torch', '?')}, native bf16: {'yes' if cap.get('bf16_native') else 'no'}"]
    L += [
        f"- {machine.get('cores')} cores, {machine.get('cpu_model')} ({', '.join(machine.get('cpu_features', []))}), "
        f"{machine.get('memory_gib')} GiB, no GPU",
        f"- Python {machine.get('python')}, {machine.get('platform')}",
        "- " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- load average at the start: {machine.get('load_average')}; before each measurement: "
        + ", ".join(f"{k} {r.get('load_average_before')}" for k, r in runs.items()),
        "- seconds per measurement: " + ", ".join(f"{k} {r['seconds']:.0f}" for k, r in runs.items()),
        "",
    ]
    if mode == "quick":
        L += ["**Quick run**: small sizes and one rep, for development; the figures are indicative only.", ""]
    L += ["## Measurements", ""]
    for r in rows:
        L += [f"### {r['name']}: {r.get('title', '')}", ""]
        if r.get("ours_is"):
            L.append(f"- ours: {r['ours_is']}")
        if r.get("anchor_is"):
            L.append(f"- anchor: {r['anchor_is']}")
        L.append(
            f"- result: ours {fmt(r['ours'], r['unit'])}, anchor {fmt(r['anchor'], r['unit'])} {r['unit']}, "
            f"ratio {fmt(r['ratio'])}; goal {r['goal']}: {_met(r.get('met'))}"
        )
        det = _details(r.get("details", {}))
        if det:
            L += ["- details:", *det]
        if r["name"] in NOTES:
            L += ["", NOTES[r["name"]]]
        L.append("")
    unmet = [r for r in rows if r.get("met") is False]
    if unmet or previous_profiles:
        L += ["## Goals not met: bottlenecks and profiles", ""]
        shown = set()
        for r in unmet:
            L.append(f"- **{r['name']}** ({r['goal']}, ratio {fmt(r['ratio'])}): see the notes under its measurement.")
        L.append("")
        for mod, prof in previous_profiles.items():
            if mod in shown:
                continue
            shown.add(mod)
            L += [f"### Profile: {mod}", "", profile_markdown(mod, prof)]
    L += ["## Projection to the paper's setting", ""]
    try:
        from benchmarks.project import defaults_from_results, project, table

        d = _defaults(rows, defaults_from_results)
        if d.get("images_per_second") and d.get("loader_per_core"):
            from pipeline.reporting.energy import CPU_WATTS_PER_CORE

            cores = available_cores()
            res = project(
                images_per_second=d["images_per_second"],
                measured_model=d["measured_model"],
                measured_image_size=d["measured_image_size"],
                loader_per_core=d["loader_per_core"],
                device=f"{cores}-core CPU",
                device_watts=cores * CPU_WATTS_PER_CORE,
                throughput_source="this machine's CPU, train_step row",
            )
            L += [
                "`python -m benchmarks.project` with this run's figures (GPU counts 8, 64 and 336 shown; "
                "pass `--images-per-second X` for a measured GPU figure):",
                "",
                table(res, gpus_shown=(8, 64, 336)),
                "",
                "Assumptions:",
                "",
            ] + [f"- {s}" for s in res["assumptions"]]
            if d.get("loader_source"):
                L.append(f"- loader rate measured as {d['loader_source']}")
        else:
            L.append("Needs the train_step and loader rows.")
    except Exception as exc:  # the report must not fail on the projection
        L.append(f"(projection failed: {type(exc).__name__}: {exc})")
    L += [
        "",
        "## Reproduce",
        "",
        "```bash",
        "make demo                     # the demo run the benchmarks read (runs/demo)",
        "make bench                    # installs .[test,bench], runs python -m benchmarks (budget: < 20 min on 2 quiet cores)",
        "python -m benchmarks --quick --only loader      # one measurement, small sizes",
        "python -m benchmarks --profile loader --keep-work   # py-spy speedscope profile of our side",
        "python -m benchmarks --only demo --demo-command 'make demo'   # time a demo run (rewrites runs/demo)",
        "python -m benchmarks.project --images-per-second X   # projection from a measured per-GPU figure",
        "```",
        "",
    ]
    path.write_text("\n".join(L), encoding="utf-8")


def _defaults(rows: list[dict], from_results) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as t:
        p = Path(t) / "results.json"
        p.write_text(json.dumps(rows), encoding="utf-8")
        return from_results(p)
