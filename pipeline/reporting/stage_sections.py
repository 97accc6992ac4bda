"""The report's sections on the data stages: the stage overview, ingest, dedup and vocabulary.

Each section is built in three steps: a reader (``*_facts``, ``stage_states``) collects what the
stage wrote, through the run-folder contract, into a small frozen dataclass; pure row builders
(``*_rows``) turn that into table rows of strings; ``section_*`` adds the prose and calls
:func:`pipeline.reporting.format.md_table`. A section takes the
:class:`pipeline.reporting.run_view.Run` and returns markdown lines; one that draws a plot writes
it into ``plot_dir`` and adds its file name to ``made``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.io import run_folder as rf
from pipeline.io.atomic import write_bytes
from pipeline.io.labels import load_labels
from pipeline.reporting.format import fmt_bytes, fmt_int, fmt_num, fmt_pct, fmt_seconds, md_table
from pipeline.reporting.plots import class_frequency_plot
from pipeline.reporting.run_view import Run, not_run_lines
from pipeline.text.resampling import class_mass

log = logging.getLogger("pipeline.report")

OVERVIEW_HEADER = ["stage", "status", "wall time", "finished (UTC)", "code"]
SOURCE_HEADER = ["source", "input", "written", "quarantined"]
DEDUP_HEADER = ["samples in", "exact duplicates", "near duplicates", "eval-contaminated", "withdrawn", "removed", "kept"]
CONTAMINATION_HEADER = ["eval set", "images", "contaminated", "fraction"]
TOP_CLASS_HEADER = ["class", "id", "samples", "hashtags"]


def _or_dash(x: Any) -> Any:
    return "-" if x is None else x


# --------------------------------------------------------------------------------------
# overview
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageState:
    """One stage in the overview: its status (:meth:`Run.status`) and what its manifest records (None if none)."""

    stage: str
    status: str
    seconds: float | None = None
    finished_at: str | None = None
    code_version: str | None = None


def stage_states(run: Run) -> list[StageState]:
    """The state of every stage of :data:`pipeline.io.run_folder.STAGES`, in pipeline order."""
    out = []
    for s in rf.STAGES:
        m = run.manifests.get(s) or {}
        out.append(StageState(s, run.status(s), m.get("seconds"), m.get("finished_at"), m.get("code_version")))
    return out


def overview_rows(states: Sequence[StageState]) -> list[list[str]]:
    """Rows of :data:`OVERVIEW_HEADER`: stage, status, wall time, finish time (UTC) and code version."""
    return [[st.stage, st.status, fmt_seconds(st.seconds), st.finished_at or "-", st.code_version or "-"] for st in states]


def section_overview(run: Run) -> list[str]:
    """The table of stages: status, wall time, finish time and code version of each."""
    return md_table(OVERVIEW_HEADER, overview_rows(stage_states(run)), "llrll")


# --------------------------------------------------------------------------------------
# ingest
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestFacts:
    """What ingest wrote: the ``counts`` of ``ingest/manifest.json`` (input, written, quarantined, shards,
    shard_bytes, images_per_second_this_run, processed_this_run, ``by_source``: {source: {input, written,
    quarantined}}, ``by_reason``: {reason: samples}) and the stage's wall time (s)."""

    counts: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None


def ingest_facts(run: Run) -> IngestFacts | None:
    """The ingest stage's facts; None if it has no manifest."""
    manifest = run.manifests.get("ingest")
    if not manifest:
        return None
    return IngestFacts(run.counts("ingest"), manifest.get("seconds"))


def ingest_source_rows(facts: IngestFacts) -> list[list[str]]:
    """Rows of :data:`SOURCE_HEADER`: one per source (by name), then the ``**total**`` row; [] without ``by_source``."""
    c = facts.counts
    by_source = c.get("by_source") or {}
    if not by_source:
        return []
    rows = [
        [name, fmt_int(v.get("input")), fmt_int(v.get("written")), fmt_int(v.get("quarantined"))]
        for name, v in sorted(by_source.items())
    ]
    rows.append(["**total**", fmt_int(c.get("input")), fmt_int(c.get("written")), fmt_int(c.get("quarantined"))])
    return rows


def quarantine_rows(facts: IngestFacts) -> list[list[str]]:
    """Rows ``[reason, samples]`` of the quarantine reasons, the most frequent first (ties in the stage's order)."""
    reasons = facts.counts.get("by_reason") or {}
    return [[k, fmt_int(v)] for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])]


def section_ingest(run: Run) -> list[str]:
    """Ingest counts (input = written + quarantined), per source, and the quarantine reasons."""
    facts = ingest_facts(run)
    if facts is None:
        return not_run_lines(run, "ingest")
    c = facts.counts
    out = [
        f"Input **{fmt_int(c.get('input'))}** = written **{fmt_int(c.get('written'))}** + "
        f"quarantined **{fmt_int(c.get('quarantined'))}**; {fmt_int(c.get('shards'))} shards, "
        f"{fmt_bytes(c.get('shard_bytes'))}; {fmt_num(c.get('images_per_second_this_run'))} images/s "
        f"({fmt_int(c.get('processed_this_run'))} processed in this run), stage time "
        f"{fmt_seconds(facts.seconds)}.",
        "",
    ]
    sources = ingest_source_rows(facts)
    if sources:
        out += md_table(SOURCE_HEADER, sources) + [""]
    reasons = quarantine_rows(facts)
    if reasons:
        out += ["Quarantine reasons (`ingest/quarantine.jsonl` has one line per sample):", ""]
        out += md_table(["reason", "samples"], reasons)
    else:
        out += ["Nothing was quarantined."]
    return out


# --------------------------------------------------------------------------------------
# dedup
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupFacts:
    """What dedup wrote: the ``counts`` and ``dedup`` config of ``dedup/manifest.json``, its wall time (s),
    and ``dedup/eval_contamination.json`` ({eval set: {images, contaminated, contaminated_fraction}}; {} if none)."""

    counts: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    eval_contamination: dict[str, dict] = field(default_factory=dict)


def dedup_facts(run: Run) -> DedupFacts | None:
    """The dedup stage's facts; None if it has no manifest."""
    manifest = run.manifests.get("dedup")
    if not manifest:
        return None
    return DedupFacts(
        run.counts("dedup"),
        run.config("dedup").get("dedup", {}),
        manifest.get("seconds"),
        rf.read_eval_contamination(run.dir) or {},
    )


def dedup_rows(facts: DedupFacts) -> list[list[str]]:
    """The one row of :data:`DEDUP_HEADER`: samples in, the removals by kind, removed and kept."""
    c = facts.counts
    return [
        [
            fmt_int(c.get("samples")),
            fmt_int(c.get("exact")),
            fmt_int(c.get("near")),
            fmt_int(c.get("eval_contaminated", c.get("eval_contamination"))),
            fmt_int(c.get("withdrawn")),
            fmt_int(c.get("removed")),
            fmt_int(c.get("kept")),
        ]
    ]


def contamination_rows(facts: DedupFacts) -> list[list[str]]:
    """Rows of :data:`CONTAMINATION_HEADER`, one per eval set (by name); the fraction as a percentage, 2 decimals."""
    return [
        [k, fmt_int(v.get("images")), fmt_int(v.get("contaminated")), fmt_pct(v.get("contaminated_fraction"), 2)]
        for k, v in sorted(facts.eval_contamination.items())
    ]


def section_dedup(run: Run) -> list[str]:
    """Dedup removals (exact, near, eval-contaminated, withdrawn) and the eval sets' contamination."""
    facts = dedup_facts(run)
    if facts is None:
        return not_run_lines(run, "dedup")
    c, cfg = facts.counts, facts.config
    out = md_table(DEDUP_HEADER, dedup_rows(facts), "rrrrrrr")
    bits = int(cfg.get("hash_size") or 8) ** 2
    out += [
        "",
        f"pHash {bits}-bit (of the canonical pixels, uniform borders trimmed; computed at ingest), "
        f"near radius {_or_dash(cfg.get('near_radius'))}, eval radius {_or_dash(cfg.get('eval_radius'))}; stored codes "
        f"read at {fmt_num(c.get('codes_images_per_second'))} images/s; withdrawn ids requested "
        f"{fmt_int(c.get('withdrawn_requested'))}; stage time {fmt_seconds(facts.seconds)}.",
        "",
    ]
    rows = contamination_rows(facts)
    if rows:
        out += [
            "Evaluation images with a near-duplicate in the pretraining data (`dedup/eval_contamination.json`; "
            "the matching pretraining samples are removed):",
            "",
        ]
        out += md_table(CONTAMINATION_HEADER, rows)
    else:
        out += ["No evaluation sets were checked for contamination."]
    return out


# --------------------------------------------------------------------------------------
# vocabulary
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabFacts:
    """What vocab wrote: the ``counts`` and ``vocab`` config of ``vocab/manifest.json`` and ``vocab/vocab.json``
    ({kind, num_classes, min_count, top_k, classes: [{id, lemma, hashtags: {tag: samples}, samples}]}; {} if absent)."""

    counts: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    vocab: dict[str, Any] = field(default_factory=dict)


def vocab_facts(run: Run) -> VocabFacts | None:
    """The vocab stage's facts; None if it has no manifest."""
    if not run.manifests.get("vocab"):
        return None
    return VocabFacts(run.counts("vocab"), run.config("vocab").get("vocab", {}), rf.read_vocab(run.dir) or {})


def vocab_count_rows(facts: VocabFacts) -> list[list[str]]:
    """Rows ``[what, count]`` of the sample and hashtag accounting of the vocab stage."""
    c = facts.counts
    return [
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


def top_class_rows(facts: VocabFacts, n: int = 10) -> list[list[str]]:
    """Rows of :data:`TOP_CLASS_HEADER` for the ``n`` classes with the most samples (ties in vocab.json's order).

    The hashtags cell lists a class's 4 most frequent hashtags as ``#tag (samples)``, then `` ...`` if it has more.
    """
    top = sorted(facts.vocab.get("classes") or [], key=lambda r: -int(r.get("samples", 0)))[:n]
    rows = []
    for r in top:
        tags = sorted((r.get("hashtags") or {}).items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"#{t} ({fmt_int(k)})" for t, k in tags[:4]) + (" ..." if len(tags) > 4 else "")
        rows.append([r.get("lemma") or r.get("id"), r.get("id", "-"), fmt_int(r.get("samples")), shown])
    return rows


def _label_frequency_plot(run: Run, plot_dir: Path, made: set[str]) -> str | None:
    """Copy vocab's class_frequency.png, or draw it from labels.npz; return a note on its origin."""
    src = run.path(rf.VOCAB, rf.CLASS_FREQUENCY_PLOT)
    dst = plot_dir / rf.CLASS_FREQUENCY_PLOT
    if src.exists():
        write_bytes(dst, src.read_bytes())
        made.add(dst.name)
        return "copied from `vocab/class_frequency.png`"
    try:
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
    facts = vocab_facts(run)
    if facts is None:
        return not_run_lines(run, "vocab")
    vc, doc = facts.config, facts.vocab
    n_classes = doc.get("num_classes", facts.counts.get("classes"))
    out = [
        f"Vocabulary **{vc.get('kind', doc.get('kind', '?'))}**: **{fmt_int(n_classes)} classes** "
        f"(min count {vc.get('min_count', doc.get('min_count', '-'))}"
        + (f", top {doc.get('top_k')}" if doc.get("top_k") else "")
        + ").",
        "",
    ]
    out += md_table(["", "count"], vocab_count_rows(facts)) + [""]
    top = top_class_rows(facts)
    if top:
        out += ["Most frequent classes (hashtags merged into each):", ""]
        out += md_table(TOP_CLASS_HEADER, top, "llrl") + [""]
    note = _label_frequency_plot(run, plot_dir, made)
    if note:
        out += [
            f"![label frequency by rank]({rf.PLOT_DIR}/{rf.CLASS_FREQUENCY_PLOT})",
            "",
            f"Class frequency by rank, before and after resampling ({note}).",
        ]
    return out
