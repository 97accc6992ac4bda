"""The report's transfer section: per target, decontamination, accuracies with intervals, and the gains."""

from __future__ import annotations

from pathlib import Path

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
from pipeline.reporting.pretrain_section import hardware_lines
from pipeline.reporting.run_view import Run, not_run_lines


def _verdict(g: dict) -> str:
    v = g.get("verdict")
    if v is None and not is_missing(g.get("lo")):
        v = "gain" if g["lo"] > 0 else "loss" if g["hi"] < 0 else "no measurable gain"
    labels: dict[str | None, str] = {"gain": "gain", "loss": "loss (scratch better)"}
    return labels.get(v, v or "-")


def _row_order(rows: list[dict]) -> list[dict]:
    order: dict[str | None, int] = {"linear_probe": 0, "finetune": 1}
    return sorted(
        rows,
        key=lambda r: (
            order.get(r.get("method"), 9),
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


def target_section(name: str, sec: dict) -> list[str]:
    """The report's part for one target: facts, decontamination, the accuracy table, the gains table."""
    rows = _row_order(list(sec.get("rows") or []))
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
    out += _lr_line(sec) + ([""] if sec.get("lr_selection") else [])
    out += ["Decontamination (lower-bound accuracies count flagged val images as wrong):", ""] + _decontam_lines(sec) + [""]
    table = []
    for r in rows:
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
    out += md_table(
        [
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
        ],
        table,
        "lllrrrrrrrrr",
    ) + [""]
    gains = sec.get("gains")
    if gains is None:  # a pre-suite results file: differences without intervals
        gains = []
        for method in ("linear_probe", "finetune"):
            for size in sorted(
                {r.get("train_per_class") for r in rows if r.get("method") == method}, key=lambda v: (v is None, v or 0)
            ):
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
    if gains:
        order = {"linear_probe": 0, "finetune": 1}
        gains = sorted(
            gains, key=lambda g: (order.get(g.get("method"), 9), g.get("train_per_class") is None, g.get("train_per_class") or 0)
        )
        grows = [
            [
                g.get("method", "?").replace("_", " "),
                fmt_per_class(g.get("train_per_class")),
                fmt_pct(g.get("pretrained")),
                fmt_pct(g.get("scratch")),
                fmt_diff_points(g) if not is_missing(g.get("lo")) else f"{100 * float(g['diff']):+.1f}",
                _verdict(g),
            ]
            for g in gains
        ]
        out += [
            'Pretrained minus scratch (same architecture, random init, same val images), top-1; "no measurable '
            'gain" where the 95% interval of the difference covers 0:',
            "",
        ]
        out += md_table(
            ["method", "train / class", "pretrained", "scratch", "difference (points) [95% CI]", "verdict"], grows, "llrrrl"
        ) + [""]
    return out


def section_transfer(run: Run, plot_dir: Path, made: set[str]) -> list[str]:
    """The transfer suite: one :func:`target_section` per target, the transfer plot and fine-tuning curves.

    Results without a manifest (the stage still running or killed) are shown as partial.
    """
    res = rf.read_transfer_results(run.dir)
    if res is None:
        return not_run_lines(run, "transfer")
    from pipeline.reporting.plots import finetune_curves_plot, transfer_plot

    targets = transfer_targets(res)
    out = []
    if not run.manifests.get("transfer"):
        out += ["_The transfer stage has not finished (no manifest): partial results._", ""]
    model = res.get("model") or next((s.get("model") for s in targets.values() if s.get("model")), None)
    out += [
        f"Transfer suite of {len(targets)} target{'s' if len(targets) != 1 else ''}: "
        + ", ".join(f"**{n}**" for n in targets)
        + (f"; trunk {model}" if model else "")
        + (f"; total {fmt_seconds((res.get('seconds') or {}).get('total'))}" if (res.get("seconds") or {}).get("total") else "")
        + ".",
        "",
    ]
    out += hardware_lines(run.counts("transfer").get("hardware") if run.manifests.get("transfer") else None)
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
    epochs = rf.read_finetune_epochs(run.dir)
    if epochs and finetune_curves_plot(epochs, plot_dir / "finetune_epochs.png"):
        made.add("finetune_epochs.png")
        out += [f"![fine-tuning by epoch]({rf.PLOT_DIR}/finetune_epochs.png)"]
    return out
