"""The run report: ``<run_dir>/report.md`` and its plots in ``<run_dir>/report/``.

``python -m pipeline.report RUN_DIR`` regenerates it from a run folder at any time;
:func:`write_report` is what ``pipeline.run`` calls at the end. The report only reads:
every number comes from a stage's ``manifest.json`` and side files (``ingest`` counts and
quarantine reasons, ``dedup/eval_contamination.json``, ``vocab/vocab.json``,
``pretrain/metrics.jsonl`` and ``eval.jsonl``, ``transfer/results.json`` and
``finetune_epochs.jsonl``) and from the energy records ``<run_dir>/run/energy.json``
(``{stage: record}``, see :func:`pipeline.reporting.energy.measure_energy`). A stage that has not
run is shown as "not run"; one whose folder exists without a manifest as "running or
interrupted"; a section whose files cannot be read says so instead of failing the report.

Plots (PNG, matplotlib Agg, written atomically): ``class_frequency.png`` (copied from the
vocab stage, or drawn from ``labels.npz`` when the stage ran with ``vocab.plot=false``),
``training_curves.png``, ``heldout_eval.png``, ``transfer.png``, ``finetune_epochs.png``,
``energy.png``. The report holds no absolute paths: the run is named by its folder name
and plots are linked relative to ``report.md``.

The full-scale projection (:func:`pipeline.reporting.energy.project_full_run`) is printed with every
assumption, for two per-device throughput sources: the timm anchor (ResNeXt-101 32x8d,
276 img/s on one RTX 3090 with AMP) and the throughput measured by this run's pretrain
stage, both scaled to the projected model by the mult-adds ratio (a rough scaling).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from pipeline.reporting import energy as E
from pipeline.io.atomic import write_bytes, write_text
from pipeline.io.manifest import code_version, read_manifest, stage_dir

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
PLOT_DIR = "report"
STAGES = ("ingest", "dedup", "vocab", "pretrain", "transfer")
PLOTS = ("class_frequency.png", "training_curves.png", "heldout_eval.png", "transfer.png", "finetune_epochs.png",
         "energy.png")
NOT_RUN = "not run"


# --------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------

def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_int(x: Any) -> str:
    """``16709`` -> ``16,709``; missing -> ``-``."""
    if _missing(x):
        return "-"
    try:
        return f"{int(round(float(x))):,}"
    except (TypeError, ValueError):
        return str(x)


def fmt_num(x: Any, digits: int = 3) -> str:
    """A float with ``digits`` significant digits (thousands separated when large)."""
    if _missing(x):
        return "-"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if v == 0:
        return "0"
    if abs(v) >= 10 ** digits:
        return f"{v:,.0f}"
    if abs(v) < 1e-3:
        return f"{v:.{digits}g}"
    s = f"{v:.{max(0, digits - 1 - int(math.floor(math.log10(abs(v)))))}f}"
    return s


def fmt_pct(x: Any, digits: int = 1) -> str:
    """A fraction 0-1 as a percentage: ``0.962`` -> ``96.2%``."""
    if _missing(x):
        return "-"
    return f"{100 * float(x):.{digits}f}%"


def fmt_frac(x: Any) -> str:
    """A metric in [0, 1] with 4 decimals."""
    return "-" if _missing(x) else f"{float(x):.4f}"


def fmt_seconds(s: Any) -> str:
    """``92.951`` -> ``93.0 s``; ``4000`` -> ``1.11 h``."""
    if _missing(s):
        return "-"
    s = float(s)
    if s < 1:
        return f"{s:.2f} s"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.2f} h"
    days = s / 86400
    if days < 100:
        return f"{days:.1f} days"
    if days < 3 * 365:
        return f"{days:,.0f} days"
    return f"{days:,.0f} days ({days / 365.25:,.0f} years)"


def fmt_bytes(n: Any) -> str:
    if _missing(n):
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"


def _cell(x: Any) -> str:
    """Markdown-safe table cell."""
    return str(x).replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: Iterable[Iterable[Any]], align: str | None = None) -> list[str]:
    """A GitHub-flavoured markdown table; ``align`` is one char per column (l, r, c)."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(_cell(h) for h in headers) + " |",
           "| " + " | ".join(sep.get(a, "---") for a in align) + " |"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


# --------------------------------------------------------------------------------------
# reading a run folder
# --------------------------------------------------------------------------------------

def _load_json(path: Path) -> Any:
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _load_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON Lines file; a torn last line (a stage still appending) is skipped."""
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class Run:
    """The run folder as the report sees it: manifests and side files, read once."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.dir = Path(run_dir)
        self.manifests: dict[str, dict | None] = {}
        self.errors: dict[str, str] = {}
        for s in STAGES:
            try:
                self.manifests[s] = read_manifest(stage_dir(self.dir, s))
            except (OSError, json.JSONDecodeError) as exc:
                self.manifests[s] = None
                self.errors[s] = f"{type(exc).__name__}: {exc}"

    def status(self, stage: str) -> str:
        if self.manifests.get(stage):
            return "done"
        if stage in self.errors:
            return "unreadable manifest"
        if stage_dir(self.dir, stage).exists():
            return "running or interrupted"
        return NOT_RUN

    def counts(self, stage: str) -> dict:
        return (self.manifests.get(stage) or {}).get("counts", {}) or {}

    def config(self, stage: str) -> dict:
        return (self.manifests.get(stage) or {}).get("config", {}) or {}

    def path(self, stage: str, name: str) -> Path:
        return stage_dir(self.dir, stage) / name


# --------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------

def _not_run(run: Run, stage: str) -> list[str]:
    st = run.status(stage)
    if st == NOT_RUN:
        return [f"_{NOT_RUN}_ (no `{stage}/` folder)."]
    if st == "unreadable manifest":
        return [f"_manifest could not be read: {run.errors[stage]}_"]
    return [f"_{st}_: `{stage}/` exists but has no `manifest.json` yet."]


def section_overview(run: Run) -> list[str]:
    rows = []
    for s in STAGES:
        m = run.manifests.get(s)
        rows.append([s, run.status(s), fmt_seconds(m.get("seconds")) if m else "-",
                     (m.get("finished_at") or "-") if m else "-", (m.get("code_version") or "-") if m else "-"])
    return md_table(["stage", "status", "wall time", "finished (UTC)", "code"], rows, "llrll")


def section_ingest(run: Run) -> list[str]:
    if not run.manifests.get("ingest"):
        return _not_run(run, "ingest")
    c = run.counts("ingest")
    out = [f"Input **{fmt_int(c.get('input'))}** = written **{fmt_int(c.get('written'))}** + "
           f"quarantined **{fmt_int(c.get('quarantined'))}**; {fmt_int(c.get('shards'))} shards, "
           f"{fmt_bytes(c.get('shard_bytes'))}; {fmt_num(c.get('images_per_second_this_run'))} images/s "
           f"({fmt_int(c.get('processed_this_run'))} processed in this run), stage time "
           f"{fmt_seconds(run.manifests['ingest'].get('seconds'))}.", ""]
    by_source = c.get("by_source") or {}
    if by_source:
        rows = [[name, fmt_int(v.get("input")), fmt_int(v.get("written")), fmt_int(v.get("quarantined"))]
                for name, v in sorted(by_source.items())]
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
    if not run.manifests.get("dedup"):
        return _not_run(run, "dedup")
    c = run.counts("dedup")
    cfg = run.config("dedup").get("dedup", {})
    out = md_table(
        ["samples in", "exact duplicates", "near duplicates", "eval-contaminated", "withdrawn", "removed", "kept"],
        [[fmt_int(c.get("samples")), fmt_int(c.get("exact")), fmt_int(c.get("near")),
          fmt_int(c.get("eval_contaminated", c.get("eval_contamination"))), fmt_int(c.get("withdrawn")),
          fmt_int(c.get("removed")), fmt_int(c.get("kept"))]], "rrrrrrr")
    bits = int(cfg.get("hash_size") or 8) ** 2
    out += ["", f"pHash {bits}-bit (of the canonical pixels, uniform borders trimmed; computed at ingest), "
            f"near radius {cfg.get('near_radius', '-')}, eval radius {cfg.get('eval_radius', '-')}; stored codes read at "
            f"{fmt_num(c.get('codes_images_per_second'))} images/s; withdrawn ids requested "
            f"{fmt_int(c.get('withdrawn_requested'))}; stage time {fmt_seconds(run.manifests['dedup'].get('seconds'))}.",
            ""]
    ec = _load_json(run.path("dedup", "eval_contamination.json")) or {}
    if ec:
        out += ["Evaluation images with a near-duplicate in the pretraining data (`dedup/eval_contamination.json`; "
                "the matching pretraining samples are removed):", ""]
        out += md_table(["eval set", "images", "contaminated", "fraction"],
                        [[k, fmt_int(v.get("images")), fmt_int(v.get("contaminated")),
                          fmt_pct(v.get("contaminated_fraction"), 2)] for k, v in sorted(ec.items())])
    else:
        out += ["No evaluation sets were checked for contamination."]
    return out


def _label_frequency_plot(run: Run, plot_dir: Path, made: set[str]) -> str | None:
    """Copy vocab's class_frequency.png, or draw it from labels.npz; return a note on its origin."""
    src = run.path("vocab", "class_frequency.png")
    dst = plot_dir / "class_frequency.png"
    if src.exists():
        write_bytes(dst, src.read_bytes())
        made.add(dst.name)
        return "copied from `vocab/class_frequency.png`"
    try:
        from pipeline.reporting.plots import class_frequency_plot
        from pipeline.text.resampling import class_mass
        from pipeline.vocab import load_labels

        labels = load_labels(run.dir)
        masses = {s: class_mass(labels.indptr, labels.indices, labels.weights(s), labels.num_classes)
                  for s in ("natural", "sqrt", "uniform")}
        kind = run.config("vocab").get("vocab", {}).get("kind", "vocab")
        class_frequency_plot(masses, dst, title=f"{kind}: {labels.num_classes} classes, {len(labels)} samples")
        made.add(dst.name)
        return "drawn by the report from `vocab/labels.npz`, as the stage ran with `vocab.plot=false`"
    except Exception as exc:  # noqa: BLE001
        log.warning("report: no label-frequency plot (%s)", exc)
        return None


def section_vocab(run: Run, plot_dir: Path, made: set[str]) -> list[str]:
    if not run.manifests.get("vocab"):
        return _not_run(run, "vocab")
    c = run.counts("vocab")
    vc = run.config("vocab").get("vocab", {})
    doc = _load_json(run.path("vocab", "vocab.json")) or {}
    n_classes = doc.get("num_classes", c.get("classes"))
    out = [f"Vocabulary **{vc.get('kind', doc.get('kind', '?'))}**: **{fmt_int(n_classes)} classes** "
           f"(min count {vc.get('min_count', doc.get('min_count', '-'))}"
           + (f", top {doc.get('top_k')}" if doc.get("top_k") else "") + ").", ""]
    rows = [
        ["samples seen (ingested)", fmt_int(c.get("samples_seen"))],
        ["removed by dedup", fmt_int(c.get("samples_removed_by_dedup"))],
        ["excluded: no in-vocabulary hashtag", fmt_int(c.get("samples_excluded_no_label"))],
        ["samples kept (with >= 1 class)", fmt_int(c.get("samples_kept"))],
        ["kept share (of samples left after dedup)", fmt_pct(c.get("kept_share"))],
        ["hashtag occurrences", fmt_int(c.get("hashtag_occurrences"))],
        ["unmapped hashtags (distinct / occurrences)",
         f"{fmt_int(c.get('unmapped_hashtags'))} / {fmt_int(c.get('unmapped_occurrences'))}"],
        ["classes below min count (dropped / occurrences)",
         f"{fmt_int(c.get('dropped_classes'))} / {fmt_int(c.get('dropped_class_occurrences'))}"],
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
        out += [f"![label frequency by rank]({PLOT_DIR}/class_frequency.png)", "",
                f"Class frequency by rank, before and after resampling ({note})."]
    return out


def hardware_lines(hw: dict | None) -> list[str]:
    """What a stage ran on and why it chose its numerics (``counts.hardware`` of its manifest)."""
    if not hw:
        return []
    pc = hw.get("precision_choice") or {}
    layout = "channels_last" if pc.get("channels_last") else "NCHW"
    trial = ", ".join(f"{k} {v:.0f} img/s" for k, v in (pc.get("trial") or {}).items())
    return [f"Hardware: {hw.get('facts', '?')} (CPU capability {hw.get('cpu_capability', '?')}"
            + (f", GPU {hw['gpu']}" if hw.get("gpu") else "") + f"); precision **{pc.get('precision', '?')}**, {layout}"
            + (", TF32" if pc.get("tf32") else "") + f": {pc.get('reason', '?')}"
            + (f" (trial: {trial})" if trial and "trial" not in str(pc.get("reason")) else "")
            + f"; {hw.get('threads', '?')} threads, {hw.get('workers', '?')} loader workers.", ""]


def section_pretrain(run: Run, plot_dir: Path, made: set[str]) -> list[str]:
    from pipeline.reporting.plots import heldout_eval_plot, training_curves_plot

    if not run.manifests.get("pretrain"):
        out = _not_run(run, "pretrain")
        metrics = _load_jsonl(run.path("pretrain", "metrics.jsonl"))
        if metrics:  # a run in progress (or killed): its curves so far
            training_curves_plot(metrics, plot_dir / "training_curves.png",
                                 title=f"pretraining so far (step {metrics[-1].get('step')}, no manifest yet)")
            made.add("training_curves.png")
            out += ["", f"Curves so far, up to step {fmt_int(metrics[-1].get('step'))}:", "",
                    f"![training curves]({PLOT_DIR}/training_curves.png)"]
        return out

    c = run.counts("pretrain")
    pc = run.config("pretrain").get("pretrain", {})
    model = _load_json(run.path("pretrain", "model.json")) or {}
    out = [f"Model **{pc.get('model', model.get('model', '?'))}** at {pc.get('image_size', model.get('image_size', '?'))} px, "
           f"{fmt_int(c.get('num_classes'))} classes, {pc.get('loss', '?')} loss, {pc.get('resampling', '?')} resampling; "
           f"{c.get('world', 1)} rank(s) on {c.get('device', '?')} ({c.get('precision', '?')}).", ""]
    out += hardware_lines(c.get("hardware"))
    rows = [
        ["optimizer steps (done / planned)", f"{fmt_int(c.get('steps'))} / {fmt_int(c.get('total_steps'))}"
         + (f" (stopped by max_steps={pc.get('max_steps')})" if pc.get("max_steps") and c.get("steps", 0) < c.get("total_steps", 0) else "")],
        ["epochs", fmt_int(c.get("epochs"))],
        ["global batch (accumulation)", f"{fmt_int(c.get('global_batch'))} ({c.get('accum', 1)})"],
        ["peak lr (warmup steps)", f"{fmt_num(c.get('peak_lr'))} ({fmt_int(c.get('warmup_steps'))})"],
        ["training / held-out samples", f"{fmt_int(c.get('train_samples'))} / {fmt_int(c.get('heldout_samples'))}"],
        ["images/s (training)", fmt_num(c.get("images_per_second"))],
        ["data-wait fraction", fmt_pct(c.get("data_wait_fraction"))],
        ["training time this run", fmt_seconds(c.get("train_seconds_this_run"))],
        ["final loss", fmt_num(c.get("final_loss"), 4)],
    ]
    out += md_table(["", "value"], rows) + [""]

    evals = _load_jsonl(run.path("pretrain", "eval.jsonl"))
    final = max(evals, key=lambda e: e.get("step", -1)) if evals else {}
    final_step = final.get("step")
    erows = [
        [f"trained (final eval, step {fmt_int(final_step)})", fmt_frac(c.get("heldout_precision_at_1", final.get("precision_at_1"))),
         fmt_frac(c.get("heldout_mAP", final.get("mAP")))],
        ["scratch: random init (step 0)", fmt_frac(c.get("scratch_precision_at_1")), fmt_frac(c.get("scratch_mAP"))],
        ["class-prior baseline (predict by class frequency)", fmt_frac(c.get("prior_precision_at_1")),
         fmt_frac(c.get("prior_mAP"))],
    ]
    out += [f"Held-out evaluation ({fmt_int(c.get('heldout_samples'))} samples held out by key hash):", ""]
    out += md_table(["", "precision@1", "mAP"], erows) + [""]
    if evals and final_step == 0:
        out += ["_No held-out evaluation after step 0: the run stopped before the end of an epoch "
                "(evaluations run at epoch ends unless `pretrain.eval_every_steps` is set), so the "
                "\"trained\" row is the random-init level._", ""]

    metrics = _load_jsonl(run.path("pretrain", "metrics.jsonl"))
    if metrics:
        training_curves_plot(metrics, plot_dir / "training_curves.png",
                             title=f"{pc.get('model', '')}: loss, learning rate and throughput by step")
        made.add("training_curves.png")
        out += [f"![training curves]({PLOT_DIR}/training_curves.png)", ""]
    if evals:
        prior = {"precision_at_1": c.get("prior_precision_at_1"), "mAP": c.get("prior_mAP")}
        heldout_eval_plot(evals, plot_dir / "heldout_eval.png", prior=prior,
                          title="held-out precision@1 and mAP by step (step 0 = scratch)")
        made.add("heldout_eval.png")
        out += [f"![held-out evaluation]({PLOT_DIR}/heldout_eval.png)"]
    return out


def _tpc(v: Any) -> str:
    return "full" if v is None else fmt_int(v)


def transfer_targets(res: dict | None) -> dict[str, dict]:
    """The per-target sections of a ``transfer/results.json`` in suite order (a pre-suite file with
    top-level ``rows`` is read as one target)."""
    if not isinstance(res, dict):
        return {}
    if isinstance(res.get("targets"), dict):
        order = [n for n in res.get("target_order") or [] if n in res["targets"]]
        order += [n for n in res["targets"] if n not in order]
        return {n: res["targets"][n] for n in order}
    if "rows" in res:
        return {str(res.get("target", "target")): res}
    return {}


def fmt_ci_pct(x: Any, ci: Any, digits: int = 1) -> str:
    """``0.612, [0.59, 0.634]`` -> ``61.2% [59.0, 63.4]`` (no interval: just the percentage)."""
    if _missing(x):
        return "-"
    if not ci or any(_missing(v) for v in ci):
        return fmt_pct(x, digits)
    return f"{100 * float(x):.{digits}f}% [{100 * float(ci[0]):.{digits}f}, {100 * float(ci[1]):.{digits}f}]"


def fmt_diff_points(g: dict) -> str:
    """A pretrained-minus-scratch difference in points with its interval: ``+2.5 [+0.3, +4.7]``."""
    if _missing(g.get("diff")):
        return "-"
    return f"{100 * float(g['diff']):+.1f} [{100 * float(g['lo']):+.1f}, {100 * float(g['hi']):+.1f}]"


def _verdict(g: dict) -> str:
    v = g.get("verdict")
    if v is None and not _missing(g.get("lo")):
        v = "gain" if g["lo"] > 0 else "loss" if g["hi"] < 0 else "no measurable gain"
    return {"gain": "gain", "loss": "loss (scratch better)"}.get(v, v or "-")


def _row_order(rows: list[dict]) -> list[dict]:
    order = {"linear_probe": 0, "finetune": 1}
    return sorted(rows, key=lambda r: (order.get(r.get("method"), 9), r.get("train_per_class") is None,
                                       r.get("train_per_class") or 0, r.get("init") != "pretrained"))


def _decontam_lines(sec: dict) -> list[str]:
    cont = sec.get("contamination") or {}
    ph = cont.get("phash") or {}
    n = sec.get("val_images")
    if ph.get("checked"):
        out = [f"- pHash (dedup, eval set `{ph.get('eval_set')}`): {fmt_int(ph.get('count'))} of {fmt_int(n)} val images "
               "have a near duplicate among the pretraining images; counted wrong in *lower-bound (pHash)*."]
    elif "phash" in cont:
        out = ["- pHash: not checked (no `data.eval_sets` entry for this val folder, or no dedup contamination file); "
               "*lower-bound (pHash)* equals top-1."]
    else:
        out = [f"- pHash: {fmt_int(sec.get('contaminated_val'))} of {fmt_int(n)} val images contaminated."]
    f = cont.get("features") or {}
    if f.get("checked"):
        kc = f.get("known_copies") or {}
        by = kc.get("by_kind") or {}
        kinds = ", ".join(f"{k} {fmt_pct(v.get('share_above'), 0)}" for k, v in by.items())
        nc = f.get("non_copies") or {}
        ncs = "; ".join(f"{v.get('kind')}: {fmt_pct(v.get('share_above'))} of {fmt_int(v.get('n'))} pairs"
                        for v in nc.values() if v.get("n"))
        out.append(f"- features (pretrained trunk, cosine of {'centred, ' if f.get('centered') else ''}L2-normalized pooled "
                   f"features, nearest of {fmt_int(f.get('pretraining_images'))} pretraining images): threshold "
                   f"**{fmt_num(f.get('threshold'), 4)}** = {f.get('rule')}; known copies above it: "
                   f"{fmt_pct(kc.get('share_above'))} of {fmt_int(kc.get('n'))} ({kinds}); known non-copies above it: "
                   f"{ncs or 'none scored'}. **{fmt_int(f.get('count'))} of {fmt_int(n)} val images** score above it, "
                   "counted wrong in *lower-bound (features)*.")
        nc_share = max([v.get("share_above") or 0 for v in nc.values()] or [0])
        if nc_share >= 0.05:
            out.append(f"  The threshold does not separate copies from non-copies well here (up to {fmt_pct(nc_share)} of "
                       "the known non-copies score above it), so *lower-bound (features)* is very conservative.")
        alt = [(k, v) for k, v in by.items() if v.get("val_flagged_at_its_quantile") is not None]
        if alt:
            out.append(f"  Val images flagged with a threshold from one kind of copy alone (its own {_g(f.get('quantile'))} "
                       "quantile): "
                       + ", ".join(f"{k} {fmt_num(v.get('p1'), 3)}: {fmt_int(v['val_flagged_at_its_quantile'])}"
                                   for k, v in alt) + ".")
    else:
        out.append(f"- features: not checked ({f.get('reason', 'no feature decontamination in this run')}).")
    return out


def _g(x: Any) -> str:
    return "-" if _missing(x) else f"{float(x):g}"


def _lr_line(sec: dict) -> list[str]:
    lrs = sec.get("lr_selection")
    if not lrs:
        return []
    if lrs.get("skipped"):
        return [f"Fine-tuning lr: base_lr {_g(lrs.get('chosen_base_lr'))} per 256 images (no search: {lrs['skipped']})."]
    grid = ", ".join(f"{_g(g['base_lr'])}: {fmt_pct(g.get('holdout_top1'))}" for g in lrs.get("grid") or [])
    return [f"Fine-tuning lr: base_lr **{_g(lrs.get('chosen_base_lr'))}** per 256 images, chosen on training images "
            f"only: {fmt_int(lrs.get('epochs'))}-epoch runs ({lrs.get('init')} init, at most "
            f"{fmt_int(lrs.get('max_epoch_images'))} images per epoch) on {fmt_int(lrs.get('fit_images'))} images of the "
            f"`{lrs.get('setting')}` setting, scored on the other {fmt_int(lrs.get('holdout_images'))} (held-out top-1 per "
            f"lr: {grid}); {fmt_seconds(lrs.get('seconds'))}."]


def target_section(name: str, sec: dict) -> list[str]:
    """The report's part for one target: facts, decontamination, the accuracy table, the gains table."""
    rows = _row_order(list(sec.get("rows") or []))
    n_val, avail = sec.get("val_images"), sec.get("val_images_available")
    out = [f"### Target `{name}`", "",
           f"{fmt_int(sec.get('num_classes'))} classes, {sec.get('image_size', '?')} px; {fmt_int(n_val)} val images scored"
           + (f" (of {fmt_int(avail)})" if avail and avail != n_val else "")
           + (f", {fmt_int(sec.get('train_images_available'))} training images available" if sec.get("train_images_available") else "")
           + ". Every run is scored on the same val images; intervals are 95% (val bootstrap; with several seeds, "
             "the seed spread too)."
           + (f" Linear-probe features: the pooled outputs of {', '.join(sec['probe_stages'])}, concatenated."
              if sec.get("probe_stages") else ""), ""]
    out += _lr_line(sec) + ([""] if sec.get("lr_selection") else [])
    out += ["Decontamination (lower-bound accuracies count flagged val images as wrong):", ""] + _decontam_lines(sec) + [""]
    table = []
    for r in rows:
        lr_c = (f"C {fmt_num(r['best_C'])}" if r.get("best_C") is not None else
                f"lr {_g(r['base_lr'])}" if r.get("base_lr") is not None else "-")
        table.append([str(r.get("method", "?")).replace("_", " "), r.get("init", "?"), _tpc(r.get("train_per_class")),
                      fmt_int(r.get("train_images")), fmt_int(len(r.get("seeds") or [0])),
                      fmt_ci_pct(r.get("top1"), r.get("top1_ci")), fmt_ci_pct(r.get("top5"), r.get("top5_ci")),
                      fmt_ci_pct(r.get("lower_bound_top1"), r.get("lower_bound_top1_ci")),
                      fmt_ci_pct(r.get("lower_bound_top1_nn"), r.get("lower_bound_top1_nn_ci")),
                      fmt_int(r.get("epochs")) if r.get("epochs") is not None else "-", lr_c, fmt_seconds(r.get("seconds"))])
    out += md_table(["method", "init", "train / class", "train images", "seeds", "top-1 [95% CI]", "top-5 [95% CI]",
                     "lower-bound top-1 (pHash)", "lower-bound top-1 (features)", "epochs", "lr / C", "time"],
                    table, "lllrrrrrrrrr") + [""]
    gains = sec.get("gains")
    if gains is None:  # a pre-suite results file: differences without intervals
        gains = []
        for method in ("linear_probe", "finetune"):
            for size in sorted({r.get("train_per_class") for r in rows if r.get("method") == method},
                               key=lambda v: (v is None, v or 0)):
                pick = {r.get("init"): r for r in rows if r.get("method") == method and r.get("train_per_class") == size}
                a, b = pick.get("pretrained"), pick.get("scratch")
                if a and b:
                    gains.append({"method": method, "train_per_class": size, "pretrained": a.get("top1"),
                                  "scratch": b.get("top1"), "diff": float(a["top1"]) - float(b["top1"]), "lo": None})
    if gains:
        order = {"linear_probe": 0, "finetune": 1}
        gains = sorted(gains, key=lambda g: (order.get(g.get("method"), 9), g.get("train_per_class") is None,
                                             g.get("train_per_class") or 0))
        grows = [[g.get("method", "?").replace("_", " "), _tpc(g.get("train_per_class")), fmt_pct(g.get("pretrained")),
                  fmt_pct(g.get("scratch")),
                  fmt_diff_points(g) if not _missing(g.get("lo")) else f"{100 * float(g['diff']):+.1f}", _verdict(g)]
                 for g in gains]
        out += ["Pretrained minus scratch (same architecture, random init, same val images), top-1; \"no measurable "
                "gain\" where the 95% interval of the difference covers 0:", ""]
        out += md_table(["method", "train / class", "pretrained", "scratch", "difference (points) [95% CI]", "verdict"],
                        grows, "llrrrl") + [""]
    return out


def section_transfer(run: Run, plot_dir: Path, made: set[str]) -> list[str]:
    res = _load_json(run.path("transfer", "results.json"))
    if res is None:
        return _not_run(run, "transfer")
    from pipeline.reporting.plots import finetune_curves_plot, transfer_plot

    targets = transfer_targets(res)
    out = []
    if not run.manifests.get("transfer"):
        out += ["_The transfer stage has not finished (no manifest): partial results._", ""]
    model = res.get("model") or next((s.get("model") for s in targets.values() if s.get("model")), None)
    out += [f"Transfer suite of {len(targets)} target{'s' if len(targets) != 1 else ''}: "
            + ", ".join(f"**{n}**" for n in targets) + (f"; trunk {model}" if model else "")
            + (f"; total {fmt_seconds((res.get('seconds') or {}).get('total'))}" if (res.get("seconds") or {}).get("total") else "")
            + ".", ""]
    out += hardware_lines(run.counts("transfer").get("hardware") if run.manifests.get("transfer") else None)
    for name, sec in targets.items():
        out += target_section(name, sec)
    panels = {n: list(s.get("rows") or []) for n, s in targets.items() if s.get("rows")}
    if panels:
        transfer_plot(panels, plot_dir / "transfer.png",
                      title="top-1 by training-set size, 95% intervals (black tick: lower-bound top-1, features)")
        made.add("transfer.png")
        out += [f"![transfer]({PLOT_DIR}/transfer.png)", ""]
    epochs = _load_jsonl(run.path("transfer", "finetune_epochs.jsonl"))
    if epochs and finetune_curves_plot(epochs, plot_dir / "finetune_epochs.png"):
        made.add("finetune_epochs.png")
        out += [f"![fine-tuning by epoch]({PLOT_DIR}/finetune_epochs.png)"]
    return out


def _energy_cfg_value(ec: Any, key: str, default: Any) -> Any:
    return E._get(ec, key, default)


def section_energy(run: Run, records: dict, ec: Any, plot_dir: Path, made: set[str]) -> list[str]:
    from pipeline.reporting.plots import energy_plot

    order = [s for s in STAGES if s in records or run.manifests.get(s)] + sorted(set(records) - set(STAGES))
    if not order:
        return [f"_{NOT_RUN}_: no stage has finished."]
    cores = os.cpu_count() or 1
    pue = float(_energy_cfg_value(ec, "pue", E.PUE_US_AVERAGE))
    grid = float(_energy_cfg_value(ec, "grid_kg_per_kwh", E.GRID_US_AVERAGE_KG_PER_KWH))
    w_core = float(_energy_cfg_value(ec, "cpu_watts_per_core", E.CPU_WATTS_PER_CORE))
    rows, names, est_wh, cc_wh, assumed = [], [], [], [], []
    tot_est = tot_cc = tot_kg_est = tot_kg_cc = 0.0
    unmeasured, bases, errors, n_cc = [], set(), set(), 0
    for s in order:
        r = records.get(s)
        est = (r or {}).get("estimate")
        cc = (r or {}).get("codecarbon")
        if est:
            wall = r.get("wall_seconds")
            procs = f"{fmt_num(r.get('busy_cores'))} cores" if not r.get("gpus") else f"{r['gpus']} GPU(s)"
            e_wh, e_g = 1000 * est["kwh"], 1000 * est["kg_co2e"]
            tot_est += e_wh
            tot_kg_est += e_g
            mark = ""
        else:
            man = run.manifests.get(s) or {}
            wall = (r or {}).get("wall_seconds", (r or {}).get("seconds", man.get("seconds")))
            if wall is None:
                continue
            e = E.estimate(float(wall), cores, w_core, pue=pue, grid_kg_per_kwh=grid, processor="CPU core")
            e_wh, e_g = 1000 * e["kwh"], 1000 * e["kg_co2e"]
            procs = f"{cores} cores (assumed)"
            mark = " *"
            unmeasured.append(s)
            tot_est += e_wh
            tot_kg_est += e_g
        if cc:
            c_wh, c_g = 1000 * cc["kwh"], 1000 * cc["kg_co2e"]
            tot_cc += c_wh
            tot_kg_cc += c_g
            n_cc += 1
            bases.add(cc.get("basis", "?"))
            cc_cells = [fmt_num(c_wh), fmt_num(c_g), "measured" if cc.get("measured") else "modelled"]
        else:
            c_wh = None
            if r and r.get("codecarbon_error"):
                errors.add(f"{s}: {r['codecarbon_error']}")
            cc_cells = ["-", "-", "not measured"]
        rows.append([s + mark, fmt_seconds(wall), fmt_num((r or {}).get("cpu_seconds")), procs,
                     fmt_num(e_wh) + mark, fmt_num(e_g) + mark, *cc_cells])
        names.append(s)
        est_wh.append(e_wh)
        cc_wh.append(c_wh)
        assumed.append(bool(mark))
    star = " *" if unmeasured else ""
    rows.append(["**total**", "", "", "", fmt_num(tot_est) + star, fmt_num(tot_kg_est) + star,
                 fmt_num(tot_cc) if n_cc else "-", fmt_num(tot_kg_cc) if n_cc else "-",
                 f"{n_cc} of {len(names)} stages" if 0 < n_cc < len(names) else ""])
    out = ["Energy (Wh) and emissions (g CO2e) per stage, PUE included. **Estimate** = Patterson et al. 2021: "
           "kWh = hours x processors x W per processor x PUE / 1000, kg CO2e = kWh x grid intensity; processors = "
           "busy CPU cores (process + children CPU seconds / wall seconds) or GPUs. **codecarbon** = its offline "
           "tracker, a hardware measurement only where it reads energy counters (RAPL, NVML), else its own model.", ""]
    out += md_table(["stage", "wall time", "CPU s", "processors", "estimate Wh", "estimate g CO2e", "codecarbon Wh",
                     "codecarbon g CO2e", "codecarbon basis"], rows, "lrrrrrrrl") + [""]
    first_est = next((records[s]["estimate"] for s in names if records.get(s, {}).get("estimate")), None)
    assume = first_est or {"pue": pue, "grid_kg_per_kwh": grid, "watts_per_processor": w_core}
    out += ["Assumptions:", "",
            f"- PUE {fmt_num(assume.get('pue'))} (Patterson et al. 2021: 1.58 US-average datacenter, 1.1 efficient cloud).",
            f"- Grid {fmt_num(assume.get('grid_kg_per_kwh'))} kg CO2e/kWh (Patterson et al. 2021: US average 0.429).",
            f"- CPU: {fmt_num(w_core)} W per busy core (server TDP per hardware thread is about 2-4 W, e.g. "
            "AMD EPYC 9654 360 W / 192 threads, Xeon Platinum 8380 270 W / 80 threads, plus memory and board; "
            "codecarbon's own fallback for unknown CPUs is 4 W per thread).",
            f"- GPU: {fmt_num(_energy_cfg_value(ec, 'gpu_watts', E.GPU_SYSTEM_WATTS['V100']))} W per GPU "
            "(Patterson et al. 2021 system power per chip: V100 325 W, P100 271 W)."]
    for b in sorted(bases):
        out.append(f"- codecarbon basis: {b}.")
    ccs = [records[s]["codecarbon"] for s in names if (records.get(s) or {}).get("codecarbon")]
    ram = sum(float(c.get("ram_kwh") or 0) for c in ccs)
    if ccs and ram > 0:
        watts = sorted({fmt_num(c.get("ram_power_w")) for c in ccs if c.get("ram_power_w")})
        out.append(f"- codecarbon also counts RAM ({', '.join(watts)} W, modelled from the installed memory size): "
                   f"{fmt_pct(ram / max(tot_cc / 1000, 1e-30), 0)} of its energy, a term the Patterson formula "
                   "(processors only) leaves out.")
    if unmeasured:
        out.append(f"- \\* No energy record for {', '.join(unmeasured)} (run one stage at a time rather than through "
                   f"`python -m pipeline.run`): the estimate takes the manifest's wall time and assumes all {cores} "
                   "cores of the machine that wrote this report were busy; codecarbon did not run.")
    for e in sorted(errors):
        out.append(f"- codecarbon unavailable for {e}; the estimate stands alone.")
    out.append("")
    if names:
        energy_plot(names, est_wh, cc_wh, plot_dir / "energy.png", title="energy per stage (PUE included)",
                    assumed=assumed)
        made.add("energy.png")
        out += [f"![energy per stage]({PLOT_DIR}/energy.png)"]
    return out


def _measured_throughput(run: Run, to_model: str) -> dict | None:
    """This run's pretrain throughput per device, scaled by mult-adds to ``to_model`` at 224 px."""
    c = run.counts("pretrain")
    pc = run.config("pretrain").get("pretrain", {})
    ips = c.get("images_per_second")
    if not ips or not pc.get("model"):
        return None
    world = int(c.get("world") or 1)
    size = int(pc.get("image_size") or 224)
    madds = E.model_mult_adds(pc["model"], size, int(c.get("num_classes") or 1000))
    per_device = float(ips) / world
    dev = str(c.get("device", "cpu"))
    label = (f"measured here: {pc['model']} at {size} px, {fmt_num(per_device)} img/s per "
             f"{'GPU' if dev.startswith('cuda') else 'CPU machine'} ({c.get('precision', '?')}; "
             f"{fmt_num(madds / 1e9)}B mult-adds)")
    s = E.scale_throughput(per_device, from_mult_adds=madds, to_model=to_model, from_label=label)
    s["device"] = "GPU" if dev.startswith("cuda") else "CPU machine"
    s["cores"] = os.cpu_count() or 1
    return s


def section_projection(run: Run, ec: Any) -> list[str]:
    model = str(_energy_cfg_value(ec, "projection_model", "resnext101_32x16d"))
    images = float(_energy_cfg_value(ec, "projection_images", E.FULL_SCALE_IMAGES))
    epochs = float(_energy_cfg_value(ec, "projection_epochs", 1.0))
    gpus = [int(g) for g in (_energy_cfg_value(ec, "projection_gpus", [8, 64, 336]) or [336])]
    eff = _energy_cfg_value(ec, "scaling_efficiency", None)
    gpu_w = float(_energy_cfg_value(ec, "gpu_watts", E.GPU_SYSTEM_WATTS["V100"]))
    pue = float(_energy_cfg_value(ec, "pue", E.PUE_US_AVERAGE))
    grid = float(_energy_cfg_value(ec, "grid_kg_per_kwh", E.GRID_US_AVERAGE_KG_PER_KWH))
    w_core = float(_energy_cfg_value(ec, "cpu_watts_per_core", E.CPU_WATTS_PER_CORE))
    sources = [("anchor (timm, RTX 3090 AMP)", E.anchor_gpu_throughput(model), "GPU", gpu_w)]
    try:
        m = _measured_throughput(run, model)
    except Exception as exc:  # noqa: BLE001
        log.warning("report: no measured throughput for the projection (%s)", exc)
        m = None
    if m:
        watts = gpu_w if m["device"] == "GPU" else m["cores"] * w_core
        sources.append((f"this run's pretrain ({m['device']})", m, m["device"], watts))
    rows, headline = [], None
    for name, src, dev, watts in sources:
        for n in gpus:
            p = E.project_full_run(images_per_second_per_device=src["images_per_second"], model=model,
                                   dataset_images=images, epochs=epochs, devices=n, scaling_efficiency=eff,
                                   watts_per_device=watts, pue=pue, grid_kg_per_kwh=grid, device=dev,
                                   throughput_source=src["from"])
            if headline is None and n == max(gpus):
                headline = (name, p, src)
            rows.append([name, fmt_num(src["images_per_second"]), f"{n} {dev}s", fmt_pct(p["scaling_efficiency"], 0),
                         fmt_seconds(p["hours"] * 3600), fmt_int(p["device_hours"]), fmt_num(p["kwh"] / 1000),
                         fmt_num(p["tco2e"])])
    out = [f"Projection of pretraining **{model}** on **{images / 1e9:g}B images x {epochs:g} epoch(s)** "
           f"at 224 px (Mahajan et al. 2018 scale), from two per-device throughput sources:", ""]
    out += md_table(["throughput source", "img/s per device", "devices", "scaling eff.", "time", "device-hours",
                     "MWh", "t CO2e"], rows, "lrlrrrrr") + [""]
    if headline:
        name, p, src = headline
        out += [f"Headline ({name}): {p['devices']} {p['device']}s, {fmt_seconds(p['hours'] * 3600)}, "
                f"{fmt_int(p['device_hours'])} {p['device']}-hours, {fmt_num(p['kwh'])} kWh, "
                f"{fmt_num(p['tco2e'])} t CO2e.", "", "Assumptions:", ""]
        out += [f"- {a}." for a in p["assumptions"]]
    for name, src, dev, watts in sources:
        out.append(f"- {name}: {src['from']}; scaled to {model} by the mult-adds ratio "
                   f"{fmt_num(src['from_mult_adds'] / 1e9)}B / {fmt_num(src['to_mult_adds'] / 1e9)}B = "
                   f"{fmt_num(src['ratio'])} ({src['note']}); {fmt_num(watts)} W per {dev}"
                   + (f" ({src['cores']} cores x {fmt_num(w_core)} W)" if dev == "CPU machine" else "") + ".")
    out += ["- Mult-adds at 224 px (Mahajan et al. 2018): ResNeXt-101 32x8d 16B, 32x16d 36B, 32x32d 87B, 32x48d 153B; "
            "a different resolution scales them by the pixel count.",
            "- The anchor's power is taken as the configured GPU power (V100 system power by default), "
            "though the anchor GPU is an RTX 3090 (350 W board power).",
            "- For scale: Mahajan et al. 2018 trained ResNeXt-101 32x16d on 336 GPUs in about 22 days "
            "(their whole training schedule)."]
    return out


# --------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------

def _guard(title: str, fn: Callable[[], list[str]]) -> list[str]:
    """A section, or a line saying why it could not be built (the report never fails on one stage's files)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        log.warning("report: section %s failed: %s: %s", title, type(exc).__name__, exc)
        return [f"_This section could not be built: {type(exc).__name__}: {exc}_"]


def build_report(run_dir: str | os.PathLike, energy_records: dict | None = None, energy_cfg: Any = None,
                 plot_dir: Path | None = None) -> tuple[str, set[str]]:
    """The report's markdown text and the names of the PNGs written into ``plot_dir``."""
    run = Run(run_dir)
    plot_dir = Path(plot_dir) if plot_dir is not None else run.dir / PLOT_DIR
    plot_dir.mkdir(parents=True, exist_ok=True)
    records = dict(energy_records) if energy_records is not None else E.read_energy_records(run.dir)
    made: set[str] = set()
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    lines = [f"# Run report: {run.dir.resolve().name}", "",
             f"Generated {now} by `python -m pipeline.report` (code {code_version()}). Every number below is read "
             "from the stages' manifests and side files in this run folder.", ""]
    parts = [
        ("Stages", lambda: section_overview(run)),
        ("Ingest", lambda: section_ingest(run)),
        ("Dedup", lambda: section_dedup(run)),
        ("Vocabulary", lambda: section_vocab(run, plot_dir, made)),
        ("Pretraining", lambda: section_pretrain(run, plot_dir, made)),
        ("Transfer", lambda: section_transfer(run, plot_dir, made)),
        ("Energy and emissions", lambda: section_energy(run, records, energy_cfg, plot_dir, made)),
        ("Full-scale projection", lambda: section_projection(run, energy_cfg)),
    ]
    for title, fn in parts:
        lines += [f"## {title}", ""] + _guard(title, fn) + [""]
    return "\n".join(lines).rstrip() + "\n", made


def write_report(run_dir: str | os.PathLike, energy_records: dict | None = None, energy_cfg: Any = None) -> Path:
    """Write ``<run_dir>/report.md`` (atomically) and its PNGs into ``<run_dir>/report/``.

    Args:
        run_dir: the run folder.
        energy_records: ``{stage: record}`` from :func:`pipeline.reporting.energy.measure_energy`;
            None = read ``<run_dir>/run/energy.json`` if present.
        energy_cfg: an ``EnergyConfig`` (or dict) for the assumptions of the fallback
            estimates and the projection; None = its defaults.

    Returns:
        The path of ``report.md``.
    """
    run_dir = Path(run_dir)
    plot_dir = run_dir / PLOT_DIR
    text, made = build_report(run_dir, energy_records, energy_cfg, plot_dir)
    for name in PLOTS:  # plots of an earlier report whose data is gone
        if name not in made:
            (plot_dir / name).unlink(missing_ok=True)
    path = run_dir / REPORT_FILE
    write_text(path, text)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.report RUN_DIR``: regenerate the report of a run folder."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="the run folder (with ingest/, dedup/, ... subfolders)")
    ap.add_argument("--energy", default=None,
                    help="energy records JSON ({stage: record}); default <run_dir>/run/energy.json if present")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"error: no run folder {run_dir}", file=sys.stderr)
        return 2
    records = None
    if args.energy:
        with open(args.energy, encoding="utf-8") as fh:
            records = json.load(fh)
    path = write_report(run_dir, records)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
