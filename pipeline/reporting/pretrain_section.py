"""The report's pretraining section, and the hardware line a stage's manifest gives (pretrain, transfer).

The section is built as data -> rows -> table: :func:`pretrain_facts` reads what the stage wrote into a
:class:`PretrainFacts`, :func:`pretrain_rows` and :func:`heldout_rows` (pure) turn it into table rows,
and :func:`section_pretrain` adds the prose and the plots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.io import run_folder as rf
from pipeline.reporting.format import fmt_frac, fmt_int, fmt_num, fmt_pct, fmt_seconds, md_table
from pipeline.reporting.plots import heldout_eval_plot, training_curves_plot
from pipeline.reporting.run_view import Run, not_run_lines


def hardware_lines(hw: dict | None) -> list[str]:
    """What a stage ran on and why it chose its numerics (``counts.hardware`` of its manifest)."""
    if not hw:
        return []
    pc = hw.get("precision_choice") or {}
    layout = "channels_last" if pc.get("channels_last") else "NCHW"
    trial = ", ".join(f"{k} {v:.0f} img/s" for k, v in (pc.get("trial") or {}).items())
    return [
        f"Hardware: {hw.get('facts', '?')} (CPU capability {hw.get('cpu_capability', '?')}"
        + (f", GPU {hw['gpu']}" if hw.get("gpu") else "")
        + f"); precision **{pc.get('precision', '?')}**, {layout}"
        + (", TF32" if pc.get("tf32") else "")
        + f": {pc.get('reason', '?')}"
        + (f" (trial: {trial})" if trial and "trial" not in str(pc.get("reason")) else "")
        + f"; {hw.get('threads', '?')} threads, {hw.get('workers', '?')} loader workers.",
        "",
    ]


@dataclass(frozen=True)
class PretrainFacts:
    """What pretrain wrote: whether it finished (has a manifest), the ``counts`` and ``pretrain`` config of
    ``pretrain/manifest.json``, ``pretrain/model.json``, the held-out evaluations (``eval.jsonl``: step,
    precision_at_1, mAP) and the logged steps (``metrics.jsonl``). An unfinished stage has only ``metrics``."""

    finished: bool = False
    counts: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    evals: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)

    @property
    def final_eval(self) -> dict:
        """The held-out evaluation of the highest step ({} if none)."""
        return max(self.evals, key=lambda e: e.get("step", -1)) if self.evals else {}


def pretrain_facts(run: Run) -> PretrainFacts:
    """The pretrain stage's facts; without a manifest (not run, running or killed) only its metrics so far."""
    if not run.manifests.get("pretrain"):
        return PretrainFacts(metrics=rf.read_metrics(run.dir))
    return PretrainFacts(
        finished=True,
        counts=run.counts("pretrain"),
        config=run.config("pretrain").get("pretrain", {}),
        model=rf.read_model_info(run.dir) or {},
        evals=rf.read_evals(run.dir),
        metrics=rf.read_metrics(run.dir),
    )


def pretrain_rows(facts: PretrainFacts) -> list[list[str]]:
    """Rows ``[what, value]``: steps (and whether ``max_steps`` stopped the run), epochs, batch, lr, samples,
    throughput (images/s), data-wait fraction, training time (s) and final loss."""
    c, pc = facts.counts, facts.config
    stopped = pc.get("max_steps") and c.get("steps", 0) < c.get("total_steps", 0)
    return [
        [
            "optimizer steps (done / planned)",
            f"{fmt_int(c.get('steps'))} / {fmt_int(c.get('total_steps'))}"
            + (f" (stopped by max_steps={pc.get('max_steps')})" if stopped else ""),
        ],
        ["epochs", fmt_int(c.get("epochs"))],
        ["global batch (accumulation)", f"{fmt_int(c.get('global_batch'))} ({c.get('accum', 1)})"],
        ["peak lr (warmup steps)", f"{fmt_num(c.get('peak_lr'))} ({fmt_int(c.get('warmup_steps'))})"],
        ["training / held-out samples", f"{fmt_int(c.get('train_samples'))} / {fmt_int(c.get('heldout_samples'))}"],
        ["images/s (training)", fmt_num(c.get("images_per_second"))],
        ["data-wait fraction", fmt_pct(c.get("data_wait_fraction"))],
        ["training time this run", fmt_seconds(c.get("train_seconds_this_run"))],
        ["final loss", fmt_num(c.get("final_loss"), 4)],
    ]


def heldout_rows(facts: PretrainFacts) -> list[list[str]]:
    """Rows ``[model, precision@1, mAP]`` (4 decimals): trained (the manifest's figures, else the final
    evaluation's), scratch (random init, step 0) and the class-prior baseline."""
    c, final = facts.counts, facts.final_eval
    return [
        [
            f"trained (final eval, step {fmt_int(final.get('step'))})",
            fmt_frac(c.get("heldout_precision_at_1", final.get("precision_at_1"))),
            fmt_frac(c.get("heldout_mAP", final.get("mAP"))),
        ],
        ["scratch: random init (step 0)", fmt_frac(c.get("scratch_precision_at_1")), fmt_frac(c.get("scratch_mAP"))],
        [
            "class-prior baseline (predict by class frequency)",
            fmt_frac(c.get("prior_precision_at_1")),
            fmt_frac(c.get("prior_mAP")),
        ],
    ]


def section_pretrain(run: Run, plot_dir: Path, made: set[str]) -> list[str]:
    """Model and training facts, held-out precision@1 and mAP against scratch and the class prior, the curves.

    A pretrain stage without a manifest (running or killed) still gets its training curves so far.
    """
    facts = pretrain_facts(run)
    metrics = facts.metrics
    if not facts.finished:
        out = not_run_lines(run, "pretrain")
        if metrics:  # a run in progress (or killed): its curves so far
            training_curves_plot(
                metrics,
                plot_dir / "training_curves.png",
                title=f"pretraining so far (step {metrics[-1].get('step')}, no manifest yet)",
            )
            made.add("training_curves.png")
            out += [
                "",
                f"Curves so far, up to step {fmt_int(metrics[-1].get('step'))}:",
                "",
                f"![training curves]({rf.PLOT_DIR}/training_curves.png)",
            ]
        return out

    c, pc, model, evals = facts.counts, facts.config, facts.model, facts.evals
    out = [
        f"Model **{pc.get('model', model.get('model', '?'))}** at {pc.get('image_size', model.get('image_size', '?'))} px, "
        f"{fmt_int(c.get('num_classes'))} classes, {pc.get('loss', '?')} loss, {pc.get('resampling', '?')} resampling; "
        f"{c.get('world', 1)} rank(s) on {c.get('device', '?')} ({c.get('precision', '?')}).",
        "",
    ]
    out += hardware_lines(c.get("hardware"))
    out += md_table(["", "value"], pretrain_rows(facts)) + [""]
    evaluated = c.get("heldout_evaluated", c.get("heldout_samples"))
    of = "" if evaluated == c.get("heldout_samples") else f", {fmt_int(evaluated)} of them evaluated (pretrain.heldout_eval_max)"
    out += [f"Held-out evaluation ({fmt_int(c.get('heldout_samples'))} samples held out by key hash{of}):", ""]
    out += md_table(["", "precision@1", "mAP"], heldout_rows(facts)) + [""]
    if evals and facts.final_eval.get("step") == 0:
        out += [
            "_No held-out evaluation after step 0: the run stopped before the end of an epoch "
            "(evaluations run at epoch ends unless `pretrain.eval_every_steps` is set), so the "
            '"trained" row is the random-init level._',
            "",
        ]
    if metrics:
        training_curves_plot(
            metrics, plot_dir / "training_curves.png", title=f"{pc.get('model', '')}: loss, learning rate and throughput by step"
        )
        made.add("training_curves.png")
        out += [f"![training curves]({rf.PLOT_DIR}/training_curves.png)", ""]
    if evals:
        prior = {"precision_at_1": c.get("prior_precision_at_1"), "mAP": c.get("prior_mAP")}
        heldout_eval_plot(
            evals, plot_dir / "heldout_eval.png", prior=prior, title="held-out precision@1 and mAP by step (step 0 = scratch)"
        )
        made.add("heldout_eval.png")
        out += [f"![held-out evaluation]({rf.PLOT_DIR}/heldout_eval.png)"]
    return out
