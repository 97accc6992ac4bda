"""The report's sections on the data stages: the stage overview, ingest, dedup and vocabulary.

Each section takes the :class:`pipeline.reporting.run_view.Run` and returns markdown lines;
a section that draws a plot writes it into ``plot_dir`` and adds its file name to ``made``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.io import run_folder as rf
from pipeline.io.atomic import write_bytes
from pipeline.reporting.format import fmt_bytes, fmt_int, fmt_num, fmt_pct, fmt_seconds, md_table
from pipeline.reporting.run_view import Run, not_run_lines

log = logging.getLogger("pipeline.report")


def section_overview(run: Run) -> list[str]:
    """The table of stages: status, wall time, finish time and code version of each."""
    rows = []
    for s in rf.STAGES:
        m = run.manifests.get(s)
        rows.append(
            [
                s,
                run.status(s),
                fmt_seconds(m.get("seconds")) if m else "-",
                (m.get("finished_at") or "-") if m else "-",
                (m.get("code_version") or "-") if m else "-",
            ]
        )
    return md_table(["stage", "status", "wall time", "finished (UTC)", "code"], rows, "llrll")


def section_ingest(run: Run) -> list[str]:
    """Ingest counts (input = written + quarantined), per source, and the quarantine reasons."""
    manifest = run.manifests.get("ingest")
    if not manifest:
        return not_run_lines(run, "ingest")
    c = run.counts("ingest")
    out = [
        f"Input **{fmt_int(c.get('input'))}** = written **{fmt_int(c.get('written'))}** + "
        f"quarantined **{fmt_int(c.get('quarantined'))}**; {fmt_int(c.get('shards'))} shards, "
        f"{fmt_bytes(c.get('shard_bytes'))}; {fmt_num(c.get('images_per_second_this_run'))} images/s "
        f"({fmt_int(c.get('processed_this_run'))} processed in this run), stage time "
        f"{fmt_seconds(manifest.get('seconds'))}.",
        "",
    ]
    by_source = c.get("by_source") or {}
    if by_source:
        rows = [
            [name, fmt_int(v.get("input")), fmt_int(v.get("written")), fmt_int(v.get("quarantined"))]
            for name, v in sorted(by_source.items())
        ]
        rows.append(["**total**", fmt_int(c.get("input")), fmt_int(c.get("written")), fmt_int(c.get("quarantined"))])
        out += md_table(["source", "input", "written", "quarantined"], rows) + [""]
    reasons = c.get("by_reason") or {}
    if reasons:
        out += ["Quarantine reasons (`ingest/quarantine.jsonl` has one line per sample):", ""]
        out += md_table(["reason", "samples"], [[k, fmt_int(v)] for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])])
    else:
        out += ["Nothing was quarantined."]
    return out


def section_dedup(run: Run) -> list[str]:
    """Dedup removals (exact, near, eval-contaminated, withdrawn) and the eval sets' contamination."""
    manifest = run.manifests.get("dedup")
    if not manifest:
        return not_run_lines(run, "dedup")
    c = run.counts("dedup")
    cfg = run.config("dedup").get("dedup", {})
    out = md_table(
        ["samples in", "exact duplicates", "near duplicates", "eval-contaminated", "withdrawn", "removed", "kept"],
        [
            [
                fmt_int(c.get("samples")),
                fmt_int(c.get("exact")),
                fmt_int(c.get("near")),
                fmt_int(c.get("eval_contaminated", c.get("eval_contamination"))),
                fmt_int(c.get("withdrawn")),
                fmt_int(c.get("removed")),
                fmt_int(c.get("kept")),
            ]
        ],
        "rrrrrrr",
    )
    bits = int(cfg.get("hash_size") or 8) ** 2
    out += [
        "",
        f"pHash {bits}-bit (of the canonical pixels, uniform borders trimmed; computed at ingest), "
        f"near radius {cfg.get('near_radius', '-')}, eval radius {cfg.get('eval_radius', '-')}; stored codes read at "
        f"{fmt_num(c.get('codes_images_per_second'))} images/s; withdrawn ids requested "
        f"{fmt_int(c.get('withdrawn_requested'))}; stage time {fmt_seconds(manifest.get('seconds'))}.",
        "",
    ]
    ec = rf.read_eval_contamination(run.dir) or {}
    if ec:
        out += [
            "Evaluation images with a near-duplicate in the pretraining data (`dedup/eval_contamination.json`; "
            "the matching pretraining samples are removed):",
            "",
        ]
        out += md_table(
            ["eval set", "images", "contaminated", "fraction"],
            [
                [k, fmt_int(v.get("images")), fmt_int(v.get("contaminated")), fmt_pct(v.get("contaminated_fraction"), 2)]
                for k, v in sorted(ec.items())
            ],
        )
    else:
        out += ["No evaluation sets were checked for contamination."]
    return out


def _label_frequency_plot(run: Run, plot_dir: Path, made: set[str]) -> str | None:
    """Copy vocab's class_frequency.png, or draw it from labels.npz; return a note on its origin."""
    src = run.path(rf.VOCAB, rf.CLASS_FREQUENCY_PLOT)
    dst = plot_dir / rf.CLASS_FREQUENCY_PLOT
    if src.exists():
        write_bytes(dst, src.read_bytes())
        made.add(dst.name)
        return "copied from `vocab/class_frequency.png`"
    try:
        from pipeline.io.labels import load_labels
        from pipeline.reporting.plots import class_frequency_plot
        from pipeline.text.resampling import class_mass

        labels = load_labels(run.dir)
        masses = {
            s: class_mass(labels.indptr, labels.indices, labels.weights(s), labels.num_classes)
            for s in ("natural", "sqrt", "uniform")
        }
        kind = run.config("vocab").get("vocab", {}).get("kind", "vocab")
        class_frequency_plot(masses, dst, title=f"{kind}: {labels.num_classes} classes, {len(labels)} samples")
        made.add(dst.name)
        return "drawn by the report from `vocab/labels.npz`, as the stage ran with `vocab.plot=false`"
    except Exception as exc:  # noqa: BLE001
        log.warning("report: no label-frequency plot (%s)", exc)
        return None


def section_vocab(run: Run, plot_dir: Path, made: set[str]) -> list[str]:
    """Vocabulary size, sample accounting, the most frequent classes and the label-frequency plot."""
    if not run.manifests.get("vocab"):
        return not_run_lines(run, "vocab")
    c = run.counts("vocab")
    vc = run.config("vocab").get("vocab", {})
    doc = rf.read_vocab(run.dir) or {}
    n_classes = doc.get("num_classes", c.get("classes"))
    out = [
        f"Vocabulary **{vc.get('kind', doc.get('kind', '?'))}**: **{fmt_int(n_classes)} classes** "
        f"(min count {vc.get('min_count', doc.get('min_count', '-'))}"
        + (f", top {doc.get('top_k')}" if doc.get("top_k") else "")
        + ").",
        "",
    ]
    rows = [
        ["samples seen (ingested)", fmt_int(c.get("samples_seen"))],
        ["removed by dedup", fmt_int(c.get("samples_removed_by_dedup"))],
        ["excluded: no in-vocabulary hashtag", fmt_int(c.get("samples_excluded_no_label"))],
        ["samples kept (with >= 1 class)", fmt_int(c.get("samples_kept"))],
        ["kept share (of samples left after dedup)", fmt_pct(c.get("kept_share"))],
        ["hashtag occurrences", fmt_int(c.get("hashtag_occurrences"))],
        [
            "unmapped hashtags (distinct / occurrences)",
            f"{fmt_int(c.get('unmapped_hashtags'))} / {fmt_int(c.get('unmapped_occurrences'))}",
        ],
        [
            "classes below min count (dropped / occurrences)",
            f"{fmt_int(c.get('dropped_classes'))} / {fmt_int(c.get('dropped_class_occurrences'))}",
        ],
    ]
    out += md_table(["", "count"], rows) + [""]
    classes = doc.get("classes") or []
    if classes:
        top = sorted(classes, key=lambda r: -int(r.get("samples", 0)))[:10]
        trows = []
        for r in top:
            tags = sorted((r.get("hashtags") or {}).items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"#{t} ({fmt_int(n)})" for t, n in tags[:4]) + (" ..." if len(tags) > 4 else "")
            trows.append([r.get("lemma") or r.get("id"), r.get("id", "-"), fmt_int(r.get("samples")), shown])
        out += ["Most frequent classes (hashtags merged into each):", ""]
        out += md_table(["class", "id", "samples", "hashtags"], trows, "llrl") + [""]
    note = _label_frequency_plot(run, plot_dir, made)
    if note:
        out += [
            f"![label frequency by rank]({rf.PLOT_DIR}/{rf.CLASS_FREQUENCY_PLOT})",
            "",
            f"Class frequency by rank, before and after resampling ({note}).",
        ]
    return out
