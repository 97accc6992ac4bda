"""The report's transfer section: per target, decontamination, accuracies with intervals, and the gains.

Built as data -> rows -> table: :func:`transfer_facts` reads what the stage wrote into a
:class:`TransferFacts`; per target (a dict of ``results.json``'s ``targets``), :func:`result_rows`
and :func:`gain_rows` (pure) turn its rows and gains into table rows; :func:`target_section` and
:func:`section_transfer` add the prose, the tables and the plots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.evaluation.results import transfer_targets
from pipeline.io import run_folder as rf
from pipeline.reporting.format import (
    fmt_ci_pct,
    fmt_diff_points,
    fmt_g,
    fmt_int,
    fmt_num,
    fmt_pct,
    fmt_per_class,
    fmt_seconds,
    is_missing,
    md_table,
)
from pipeline.reporting.plots import finetune_curves_plot, transfer_plot
from pipeline.reporting.pretrain_section import hardware_lines
from pipeline.reporting.run_view import Run, not_run_lines

RESULT_HEADER = [
    "method",
    "init",
    "train / class",
    "train images",
    "seeds",
    "top-1 [95% CI]",
    "top-5 [95% CI]",
    "lower-bound top-1 (pHash)",
    "lower-bound top-1 (features)",
    "epochs",
    "lr / C",
    "time",
]
GAIN_HEADER = ["method", "train / class", "pretrained", "scratch", "difference (points) [95% CI]", "verdict"]
_METHOD_ORDER: dict[str | None, int] = {"linear_probe": 0, "finetune": 1}


def _verdict(g: dict) -> str:
    v = g.get("verdict")
    if v is None and not is_missing(g.get("lo")):
        v = "gain" if g["lo"] > 0 else "loss" if g["hi"] < 0 else "no measurable gain"
    labels: dict[str | None, str] = {"gain": "gain", "loss": "loss (scratch better)"}
    return labels.get(v, v or "-")


def _row_order(rows: list[dict]) -> list[dict]:
    return sorted(
        rows,
        key=lambda r: (
            _METHOD_ORDER.get(r.get("method"), 9),
            r.get("train_per_class") is None,
            r.get("train_per_class") or 0,
            r.get("init") != "pretrained",
        ),
    )


def _decontam_lines(sec: dict) -> list[str]:
    cont = sec.get("contamination") or {}
    ph = cont.get("phash") or {}
    n = sec.get("val_images")
    if ph.get("checked"):
        out = [
            f"- pHash (dedup, eval set `{ph.get('eval_set')}`): {fmt_int(ph.get('count'))} of {fmt_int(n)} val images "
            "have a near duplicate among the pretraining images; counted wrong in *lower-bound (pHash)*."
        ]
    elif "phash" in cont:
        out = [
            "- pHash: not checked (no `data.eval_sets` entry for this val folder, or no dedup contamination file); "
            "*lower-bound (pHash)* equals top-1."
        ]
    else:
        out = [f"- pHash: {fmt_int(sec.get('contaminated_val'))} of {fmt_int(n)} val images contaminated."]
    f = cont.get("features") or {}
    if f.get("checked"):
        kc = f.get("known_copies") or {}
        by = kc.get("by_kind") or {}
        kinds = ", ".join(f"{k} {fmt_pct(v.get('share_above'), 0)}" for k, v in by.items())
        nc = f.get("non_copies") or {}
        ncs = "; ".join(
            f"{v.get('kind')}: {fmt_pct(v.get('share_above'))} of {fmt_int(v.get('n'))} pairs" for v in nc.values() if v.get("n")
        )
        out.append(
            f"- features (pretrained trunk, cosine of {'centred, ' if f.get('centered') else ''}L2-normalized pooled "
            f"features, nearest of {fmt_int(f.get('pretraining_images'))} pretraining images): threshold "
            f"**{fmt_num(f.get('threshold'), 4)}** = {f.get('rule')}; known copies above it: "
            f"{fmt_pct(kc.get('share_above'))} of {fmt_int(kc.get('n'))} ({kinds}); known non-copies above it: "
            f"{ncs or 'none scored'}. **{fmt_int(f.get('count'))} of {fmt_int(n)} val images** score above it, "
            "counted wrong in *lower-bound (features)*."
        )
        nc_share = max([v.get("share_above") or 0 for v in nc.values()] or [0])
        if nc_share >= 0.05:
            out.append(
                f"  The threshold does not separate copies from non-copies well here (up to {fmt_pct(nc_share)} of "
                "the known non-copies score above it), so *lower-bound (features)* is very conservative."
            )
        alt = [(k, v) for k, v in by.items() if v.get("val_flagged_at_its_quantile") is not None]
        if alt:
            out.append(
                f"  Val images flagged with a threshold from one kind of copy alone (its own {fmt_g(f.get('quantile'))} "
                "quantile): "
                + ", ".join(f"{k} {fmt_num(v.get('p1'), 3)}: {fmt_int(v['val_flagged_at_its_quantile'])}" for k, v in alt)
                + "."
            )
    else:
        out.append(f"- features: not checked ({f.get('reason', 'no feature decontamination in this run')}).")
    return out


def _left_out_lines(sec: dict) -> list[str]:
    """One line per split with image files left out of the target (zero-byte, not an image), the first few named."""
    out = []
    for split in ("train", "val"):
        parts: list[str] = []
        names: list[str] = []
        for key, what in (("empty_files", "zero-byte"), ("unreadable_files", "non-image")):
            got = (sec.get(key) or {}).get(split) or {}
            if got.get("count"):
                parts.append(f"{fmt_int(got['count'])} {what}")
                names += got.get("files") or []
        if parts:
            shown = ", ".join(f"`{f}`" for f in names[:5]) + (", ..." if len(names) > 5 else "")
            out.append(f"- {split}: {' and '.join(parts)} file(s) left out ({shown}; all in results.json).")
    return (["Image files left out of the target:", "", *out, ""]) if out else []


def _lr_line(sec: dict) -> list[str]:
    lrs = sec.get("lr_selection")
    if not lrs:
        return []
    if lrs.get("skipped"):
        return [f"Fine-tuning lr: base_lr {fmt_g(lrs.get('chosen_base_lr'))} per 256 images (no search: {lrs['skipped']})."]
    grid = ", ".join(f"{fmt_g(g['base_lr'])}: {fmt_pct(g.get('holdout_top1'))}" for g in lrs.get("grid") or [])
    return [
        f"Fine-tuning lr: base_lr **{fmt_g(lrs.get('chosen_base_lr'))}** per 256 images, chosen on training images "
        f"only: {fmt_int(lrs.get('epochs'))}-epoch runs ({lrs.get('init')} init, at most "
        f"{fmt_int(lrs.get('max_epoch_images'))} images per epoch) on {fmt_int(lrs.get('fit_images'))} images of the "
        f"`{lrs.get('setting')}` setting, scored on the other {fmt_int(lrs.get('holdout_images'))} (held-out top-1 per "
        f"lr: {grid}); {fmt_seconds(lrs.get('seconds'))}."
    ]


@dataclass(frozen=True)
class TransferFacts:
    """What transfer wrote: ``transfer/results.json`` and its targets (:func:`pipeline.evaluation.results.transfer_targets`:
    ``{name: {num_classes, image_size, val_images, rows, gains, contamination, lr_selection, ...}}``), whether the
    stage finished (has a manifest), the manifest's ``counts.hardware`` (None if unfinished) and
    ``transfer/finetune_epochs.jsonl``."""

    results: dict[str, Any]
    targets: dict[str, dict] = field(default_factory=dict)
    finished: bool = False
    hardware: dict | None = None
    finetune_epochs: list[dict] = field(default_factory=list)


def transfer_facts(run: Run) -> TransferFacts | None:
    """The transfer stage's facts; None without ``results.json`` (results without a manifest: a partial run)."""
    res = rf.read_transfer_results(run.dir)
    if res is None:
        return None
    finished = bool(run.manifests.get("transfer"))
    return TransferFacts(
        results=res,
        targets=transfer_targets(res),
        finished=finished,
        hardware=run.counts("transfer").get("hardware") if finished else None,
        finetune_epochs=rf.read_finetune_epochs(run.dir),
    )


def result_rows(sec: dict) -> list[list[str]]:
    """Rows of :data:`RESULT_HEADER` for one target's ``rows``: linear probe before fine-tuning, by training-set
    size (``full`` last), pretrained before scratch; accuracies as percentages with their 95% intervals."""
    table = []
    for r in _row_order(list(sec.get("rows") or [])):
        lr_c = (
            f"C {fmt_num(r['best_C'])}"
            if r.get("best_C") is not None
            else f"lr {fmt_g(r['base_lr'])}"
            if r.get("base_lr") is not None
            else "-"
        )
        table.append(
            [
                str(r.get("method", "?")).replace("_", " "),
                r.get("init", "?"),
                fmt_per_class(r.get("train_per_class")),
                fmt_int(r.get("train_images")),
                fmt_int(len(r.get("seeds") or [0])),
                fmt_ci_pct(r.get("top1"), r.get("top1_ci")),
                fmt_ci_pct(r.get("top5"), r.get("top5_ci")),
                fmt_ci_pct(r.get("lower_bound_top1"), r.get("lower_bound_top1_ci")),
                fmt_ci_pct(r.get("lower_bound_top1_nn"), r.get("lower_bound_top1_nn_ci")),
                fmt_int(r.get("epochs")) if r.get("epochs") is not None else "-",
                lr_c,
                fmt_seconds(r.get("seconds")),
            ]
        )
    return table


def target_gains(sec: dict) -> list[dict]:
    """One target's pretrained-minus-scratch gains, by method and training-set size (``full`` last).

    ``sec["gains"]`` as written; for a results file from before the transfer suite (no ``gains``), the
    top-1 differences of each method and size with both inits, without intervals (``lo`` None).
    """
    gains = sec.get("gains")
    if gains is None:
        rows = list(sec.get("rows") or [])
        gains = []
        for method in ("linear_probe", "finetune"):
            sizes = {r.get("train_per_class") for r in rows if r.get("method") == method}
            for size in sorted(sizes, key=lambda v: (v is None, v or 0)):
                pick = {r.get("init"): r for r in rows if r.get("method") == method and r.get("train_per_class") == size}
                a, b = pick.get("pretrained"), pick.get("scratch")
                if a and b:
                    gains.append(
                        {
                            "method": method,
                            "train_per_class": size,
                            "pretrained": a.get("top1"),
                            "scratch": b.get("top1"),
                            "diff": float(a["top1"]) - float(b["top1"]),
                            "lo": None,
                        }
                    )
    return sorted(
        gains,
        key=lambda g: (_METHOD_ORDER.get(g.get("method"), 9), g.get("train_per_class") is None, g.get("train_per_class") or 0),
    )


def gain_rows(sec: dict) -> list[list[str]]:
    """Rows of :data:`GAIN_HEADER` for :func:`target_gains`: top-1 of both inits, the difference in points with
    its 95% interval (without one: the difference alone) and the verdict."""
    return [
        [
            g.get("method", "?").replace("_", " "),
            fmt_per_class(g.get("train_per_class")),
            fmt_pct(g.get("pretrained")),
            fmt_pct(g.get("scratch")),
            fmt_diff_points(g) if not is_missing(g.get("lo")) else f"{100 * float(g['diff']):+.1f}",
            _verdict(g),
        ]
        for g in target_gains(sec)
    ]


def target_section(name: str, sec: dict) -> list[str]:
    """The report's part for one target: facts, decontamination, the accuracy table, the gains table."""
    n_val, avail = sec.get("val_images"), sec.get("val_images_available")
    out = [
        f"### Target `{name}`",
        "",
        f"{fmt_int(sec.get('num_classes'))} classes, {sec.get('image_size', '?')} px; {fmt_int(n_val)} val images scored"
        + (f" (of {fmt_int(avail)})" if avail and avail != n_val else "")
        + (
            f", {fmt_int(sec.get('train_images_available'))} training images available"
            if sec.get("train_images_available")
            else ""
        )
        + ". Every run is scored on the same val images; intervals are 95% (val bootstrap; with several seeds, "
        "the seed spread too)."
        + (
            f" Linear-probe features: the pooled outputs of {', '.join(sec['probe_stages'])}, concatenated."
            if sec.get("probe_stages")
            else ""
        ),
        "",
    ]
    out += _left_out_lines(sec)
    out += _lr_line(sec) + ([""] if sec.get("lr_selection") else [])
    out += ["Decontamination (lower-bound accuracies count flagged val images as wrong):", ""] + _decontam_lines(sec) + [""]
    out += md_table(RESULT_HEADER, result_rows(sec), "lllrrrrrrrrr") + [""]
    grows = gain_rows(sec)
    if grows:
        out += [
            'Pretrained minus scratch (same architecture, random init, same val images), top-1; "no measurable '
            'gain" where the 95% interval of the difference covers 0:',
            "",
        ]
        out += md_table(GAIN_HEADER, grows, "llrrrl") + [""]
    return out


def section_transfer(run: Run, plot_dir: Path, made: set[str]) -> list[str]:
    """The transfer suite: one :func:`target_section` per target, the transfer plot and fine-tuning curves.

    Results without a manifest (the stage still running or killed) are shown as partial.
    """
    facts = transfer_facts(run)
    if facts is None:
        return not_run_lines(run, "transfer")
    res, targets = facts.results, facts.targets
    out = []
    if not facts.finished:
        out += ["_The transfer stage has not finished (no manifest): partial results._", ""]
    model = res.get("model") or next((s.get("model") for s in targets.values() if s.get("model")), None)
    total = (res.get("seconds") or {}).get("total")
    out += [
        f"Transfer suite of {len(targets)} target{'s' if len(targets) != 1 else ''}: "
        + ", ".join(f"**{n}**" for n in targets)
        + (f"; trunk {model}" if model else "")
        + (f"; total {fmt_seconds(total)}" if total else "")
        + ".",
        "",
    ]
    out += hardware_lines(facts.hardware)
    for name, sec in targets.items():
        out += target_section(name, sec)
    panels = {n: list(s.get("rows") or []) for n, s in targets.items() if s.get("rows")}
    if panels:
        transfer_plot(
            panels,
            plot_dir / "transfer.png",
            title="top-1 by training-set size, 95% intervals (black tick: lower-bound top-1, features)",
        )
        made.add("transfer.png")
        out += [f"![transfer]({rf.PLOT_DIR}/transfer.png)", ""]
    if facts.finetune_epochs and finetune_curves_plot(facts.finetune_epochs, plot_dir / "finetune_epochs.png"):
        made.add("finetune_epochs.png")
        out += [f"![fine-tuning by epoch]({rf.PLOT_DIR}/finetune_epochs.png)"]
    return out
