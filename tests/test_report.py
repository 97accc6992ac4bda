"""The run report (``pipeline.report``) and the sweep summary, built from the REAL output of every stage.

The session fixture ``pipeline_run`` (tests/conftest.py) runs ``pipeline.run.run_pipeline`` over the
fixture corpus with tiny settings; every number asserted here is read back from what the stages
wrote (manifests, ``vocab/vocab.json``, ``transfer/results.json``, ``run/energy.json``), so a change
in a stage's output that the report does not follow fails these tests. The pure formatting tests at
the end use hand-made values on purpose.
"""

from __future__ import annotations

import shutil

import pytest
from conftest import copy_run

from pipeline.io import run_folder as rf
from pipeline.report import PLOTS, write_report
from pipeline.report import main as report_main
from pipeline.reporting.energy_section import EnergyInputs, energy_inputs, energy_rows, stage_energy
from pipeline.reporting.format import fmt_ci_pct, fmt_diff_points, fmt_int, fmt_num, fmt_pct, fmt_seconds, md_table
from pipeline.reporting.pretrain_section import PretrainFacts, heldout_rows, pretrain_facts, pretrain_rows
from pipeline.reporting.run_view import Run
from pipeline.reporting.stage_sections import (
    DedupFacts,
    IngestFacts,
    StageState,
    VocabFacts,
    contamination_rows,
    dedup_rows,
    ingest_facts,
    ingest_source_rows,
    overview_rows,
    quarantine_rows,
    stage_states,
    top_class_rows,
    vocab_facts,
)
from pipeline.reporting.transfer_section import gain_rows, result_rows, target_section, transfer_facts
from pipeline.summarize import write_summary

SECTIONS = ("Stages", "Ingest", "Dedup", "Vocabulary", "Pretraining", "Transfer", "Energy and emissions", "Full-scale projection")


def _section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _pct_ci(x: float, ci: list) -> str:  # written out independently of fmt_ci_pct
    return f"{100 * x:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


@pytest.fixture(scope="module")
def report(pipeline_run):
    """The report pipeline.run wrote at the end of the run, and the run folder."""
    path = pipeline_run / rf.REPORT_FILE
    assert path.is_file()
    return pipeline_run, path.read_text(encoding="utf-8")


@pytest.mark.slow
def test_every_section_is_built_from_finished_stages(report):
    run, text = report
    assert text.startswith(f"# Run report: {run.name}\n")
    for title in SECTIONS:
        assert f"\n## {title}\n" in text, title
        assert "could not be built" not in _section(text, title), title
    for s in rf.STAGES:
        assert f"| {s} | done |" in text, s
    assert str(run.parent) not in text and "/tmp/" not in text  # no absolute paths


def test_data_sections_show_the_stage_counts(report):
    run, text = report
    ing = rf.read_manifest(rf.stage_dir(run, rf.INGEST))["counts"]
    assert f"Input **{ing['input']:,}** = written **{ing['written']:,}** + quarantined **{ing['quarantined']:,}**" in text
    assert ing["input"] == ing["written"] + ing["quarantined"] and ing["written"] > 0
    for name, v in ing["by_source"].items():
        assert f"| {name} | {v['input']:,} | {v['written']:,} | {v['quarantined']:,} |" in text
    dd = rf.read_manifest(rf.stage_dir(run, rf.DEDUP))["counts"]
    assert f"| {dd['samples']:,} | {dd['exact']:,} | {dd['near']:,} |" in text
    assert dd["kept"] == dd["samples"] - dd["removed"]
    voc = rf.read_vocab(run)
    assert f"**{voc['num_classes']:,} classes**" in _section(text, "Vocabulary")
    top = max(voc["classes"], key=lambda c: c["samples"])
    assert f"| {top['lemma'] or top['id']} | {top['id']} | {top['samples']:,} |" in text


def test_pretraining_section_shows_the_manifest_and_eval_numbers(report):
    run, text = report
    pt = rf.read_manifest(rf.stage_dir(run, rf.PRETRAIN))["counts"]
    sec = _section(text, "Pretraining")
    assert f"{pt['steps']:,} / {pt['total_steps']:,}" in sec and pt["steps"] == 6
    assert f"| scratch: random init (step 0) | {pt['scratch_precision_at_1']:.4f} | {pt['scratch_mAP']:.4f} |" in sec
    assert f"| class-prior baseline (predict by class frequency) | {pt['prior_precision_at_1']:.4f} |" in sec
    final = max(rf.read_evals(run), key=lambda e: e["step"])
    assert f"final eval, step {final['step']:,})" in sec


def test_transfer_section_shows_every_row_and_gain_of_results_json(report):
    run, text = report
    res = rf.read_transfer_results(run)
    sec = _section(text, "Transfer")
    assert res["target_order"] and set(res["target_order"]) == set(res["targets"])
    n_rows = 0
    for name in res["target_order"]:
        t = res["targets"][name]
        part = sec.split(f"### Target `{name}`\n", 1)[1].split("### Target", 1)[0]
        assert f"{t['num_classes']:,} classes" in part and f"{t['val_images']:,} val images scored" in part
        for r in t["rows"]:
            method = r["method"].replace("_", " ")
            tpc = "full" if r["train_per_class"] is None else f"{r['train_per_class']:,}"
            line = (
                f"| {method} | {r['init']} | {tpc} | {r['train_images']:,} | {len(r['seeds'])} | "
                f"{_pct_ci(r['top1'], r['top1_ci'])} | {_pct_ci(r['top5'], r['top5_ci'])} | "
            )
            assert line in part, line
            n_rows += 1
        for g in t["gains"]:
            tpc = "full" if g["train_per_class"] is None else f"{g['train_per_class']:,}"
            diff = f"{100 * g['diff']:+.1f} [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]"
            verdict = {"gain": "gain", "loss": "loss (scratch better)"}.get(g["verdict"], g["verdict"])
            assert (
                f"| {g['method'].replace('_', ' ')} | {tpc} | {100 * g['pretrained']:.1f}% | "
                f"{100 * g['scratch']:.1f}% | {diff} | {verdict} |"
            ) in part
    assert n_rows >= 4


def test_energy_and_projection_sections_use_the_run_records(report):
    run, text = report
    records = rf.read_energy_records(run)
    sec = _section(text, "Energy and emissions")
    for s in rf.STAGES:
        r = records[s]
        assert r["codecarbon"] is None  # energy.codecarbon=false in the fixture run
        assert f"| {s} | {fmt_seconds(r['wall_seconds'])} | {fmt_num(r['cpu_seconds'])} |" in sec, s
        assert f"| {fmt_num(1000 * r['estimate']['kwh'])} | {fmt_num(1000 * r['estimate']['kg_co2e'])} |" in sec, s
    assert "PUE 1.58" in sec and "Grid 0.429" in sec  # EnergyConfig's defaults, as recorded
    proj = _section(text, "Full-scale projection")
    assert "resnext101_32x16d" in proj and "336 GPUs" in proj and "Goyal" in proj
    assert "this run's pretrain (CPU machine)" in proj


def test_plots_exist_and_are_linked(report):
    run, text = report
    for name in PLOTS:
        p = run / rf.PLOT_DIR / name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000, name
        assert f"]({rf.PLOT_DIR}/{name})" in text, name


@pytest.mark.slow
def test_report_cli_regenerates_the_same_report(pipeline_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(pipeline_run, run)
    (run / rf.REPORT_FILE).unlink()
    shutil.rmtree(run / rf.PLOT_DIR)
    assert report_main([str(run)]) == 0
    new = (run / rf.REPORT_FILE).read_text(encoding="utf-8")
    old = (pipeline_run / rf.REPORT_FILE).read_text(encoding="utf-8")
    drop = lambda t: [ln for ln in t.splitlines()[3:]]  # noqa: E731  (title and generation time differ)
    assert drop(new) == drop(old)
    assert report_main([str(tmp_path / "missing")]) == 2


def test_summary_of_a_one_job_sweep_lists_the_transfer_results(pipeline_run, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(pipeline_run, sweep / "job0", ignore=shutil.ignore_patterns("report", "checkpoints"))
    out = write_summary(sweep)
    res = rf.read_transfer_results(pipeline_run)
    text = out["text"]
    assert "1 jobs: 1 ok, 0 failed, 0 incomplete." in text
    for name in res["target_order"]:
        for r in res["targets"][name]["rows"]:
            tpc = "full" if r["train_per_class"] is None else str(r["train_per_class"])
            col = f"top1 {name} {r['method']} {r['init']} {tpc}"
            assert col in out["header"]
            assert f"{r['top1']:.4f} [{r['top1_ci'][0]:.4f}, {r['top1_ci'][1]:.4f}]" in text
    pt = rf.read_manifest(rf.stage_dir(pipeline_run, rf.PRETRAIN))["counts"]
    assert f"| {pt['heldout_precision_at_1']:.4f} | {pt['heldout_mAP']:.4f} |" in text


def test_report_shows_missing_stages_as_not_run(prepared_fixture, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = write_report(empty).read_text()
    for title in ("Ingest", "Dedup", "Vocabulary", "Pretraining", "Transfer"):
        assert "not run" in _section(text, title), title
    assert "| transfer | not run |" in text and "Full-scale projection" in text

    partial = copy_run(prepared_fixture, tmp_path / "partial", stages=("ingest",))
    (partial / "pretrain").mkdir()  # a stage that started and has no manifest yet
    text = write_report(partial).read_text()
    assert "| ingest | done |" in text and "| dedup | not run |" in text
    assert "| pretrain | running or interrupted |" in text
    assert not (partial / "report" / "training_curves.png").exists()


def test_section_readers_return_what_the_stages_wrote(pipeline_run):
    run = Run(pipeline_run)
    assert [(st.stage, st.status) for st in stage_states(run)] == [(s, "done") for s in rf.STAGES]
    ing = ingest_facts(run)
    manifest = rf.read_manifest(rf.stage_dir(pipeline_run, rf.INGEST))
    assert ing is not None and ing.counts == manifest["counts"] and ing.seconds == manifest["seconds"]
    voc = vocab_facts(run)
    assert voc is not None and voc.vocab == rf.read_vocab(pipeline_run)
    pt = pretrain_facts(run)
    evals = rf.read_evals(pipeline_run)
    assert pt.finished and pt.evals == evals and pt.final_eval == max(evals, key=lambda e: e["step"])
    tr = transfer_facts(run)
    res = rf.read_transfer_results(pipeline_run)
    assert tr is not None and tr.finished and list(tr.targets) == res["target_order"]
    assert tr.finetune_epochs == rf.read_finetune_epochs(pipeline_run) != []
    records = rf.read_energy_records(pipeline_run)
    stages = stage_energy(energy_inputs(run, records, None))
    assert [st.stage for st in stages] == list(rf.STAGES) and not any(st.assumed for st in stages)
    for st in stages:
        assert st.estimate_wh == 1000 * records[st.stage]["estimate"]["kwh"] and st.codecarbon is None


# ----------------------------------------------------------------------------- pure formatting


def test_formatting_helpers():
    assert fmt_int(16709) == "16,709" and fmt_int(None) == "-" and fmt_int(float("nan")) == "-"
    assert fmt_seconds(92.951) == "93.0 s" and fmt_seconds(7200 * 2) == "4.00 h"
    assert "years" in fmt_seconds(86400 * 2000)
    assert fmt_num(0.012345) == "0.0123" and fmt_num(12345.6) == "12,346" and fmt_pct(0.962) == "96.2%"
    assert fmt_ci_pct(0.612, [0.59, 0.634]) == "61.2% [59.0, 63.4]" and fmt_ci_pct(0.612, None) == "61.2%"
    assert fmt_diff_points({"diff": 0.025, "lo": 0.003, "hi": 0.047}) == "+2.5 [+0.3, +4.7]"
    assert md_table(["a", "b"], [["x|y", 1]]) == ["| a | b |", "| :--- | ---: |", "| x\\|y | 1 |"]


def test_target_section_formats_a_hand_made_target():
    row = {
        "method": "linear_probe",
        "init": "pretrained",
        "train_per_class": 2,
        "train_images": 20,
        "seeds": [0, 1, 2],
        "top1": 0.4125,
        "top1_ci": [0.38, 0.445],
        "top5": 0.8,
        "top5_ci": [0.78, 0.81],
        "lower_bound_top1": 0.4,
        "lower_bound_top1_ci": [0.37, 0.43],
        "best_C": 0.01,
        "seconds": 1.5,
    }
    sec = {
        "num_classes": 10,
        "image_size": 32,
        "val_images": 200,
        "val_images_available": 10000,
        "contamination": {
            "phash": {"checked": True, "eval_set": "fashion_mnist_val", "count": 3},
            "features": {"checked": False, "reason": "transfer.nn_decontam=false"},
        },
        "rows": [row],
        "gains": [
            {
                "method": "linear_probe",
                "train_per_class": 2,
                "pretrained": 0.4125,
                "scratch": 0.2,
                "diff": 0.2125,
                "lo": 0.15,
                "hi": 0.27,
                "verdict": "gain",
            }
        ],
    }
    text = "\n".join(target_section("fashion_mnist", sec))
    assert "### Target `fashion_mnist`" in text and "200 val images scored (of 10,000)" in text
    assert "| linear probe | pretrained | 2 | 20 | 3 | 41.2% [38.0, 44.5] | 80.0% [78.0, 81.0] | 40.0% [37.0, 43.0] | - |" in text
    assert "| linear probe | 2 | 41.2% | 20.0% | +21.2 [+15.0, +27.0] | gain |" in text
    assert "3 of 200 val images have a near duplicate" in text
    assert "features: not checked (transfer.nn_decontam=false)" in text


def test_overview_rows():
    states = [StageState("ingest", "done", 92.951, "2026-01-02T03:04:05+00:00", "abc1234"), StageState("dedup", "not run")]
    assert overview_rows(states) == [
        ["ingest", "done", "93.0 s", "2026-01-02T03:04:05+00:00", "abc1234"],
        ["dedup", "not run", "-", "-", "-"],
    ]


def test_ingest_rows_per_source_with_total_and_reasons_by_count():
    facts = IngestFacts(
        counts={
            "input": 1200,
            "written": 1100,
            "quarantined": 100,
            "by_source": {
                "b_clipart": {"input": 200, "written": 150, "quarantined": 50},
                "a_emoji": {"input": 1000, "written": 950, "quarantined": 50},
            },
            "by_reason": {"too_small": 30, "decode_error": 70},
        }
    )
    assert ingest_source_rows(facts) == [
        ["a_emoji", "1,000", "950", "50"],
        ["b_clipart", "200", "150", "50"],
        ["**total**", "1,200", "1,100", "100"],
    ]
    assert quarantine_rows(facts) == [["decode_error", "70"], ["too_small", "30"]]
    assert ingest_source_rows(IngestFacts({"input": 3})) == [] and quarantine_rows(IngestFacts({})) == []


def test_dedup_rows_and_contamination_rows():
    facts = DedupFacts(
        counts={"samples": 1000, "exact": 10, "near": 20, "eval_contamination": 3, "withdrawn": 1, "removed": 34, "kept": 966},
        eval_contamination={
            "val_b": {"images": 50, "contaminated": 0, "contaminated_fraction": 0.0},
            "val_a": {"images": 2000, "contaminated": 3, "contaminated_fraction": 0.0015},
        },
    )
    assert dedup_rows(facts) == [["1,000", "10", "20", "3", "1", "34", "966"]]  # the older key eval_contamination
    assert contamination_rows(facts) == [["val_a", "2,000", "3", "0.15%"], ["val_b", "50", "0", "0.00%"]]


def test_top_class_rows_most_samples_first_with_four_hashtags():
    dog = {"id": "n02084071", "lemma": "dog", "samples": 5, "hashtags": {"dog": 3, "puppy": 4, "doggo": 1, "hound": 2, "pup": 1}}
    cat = {"id": "n02121620", "lemma": None, "samples": 1200, "hashtags": {"cat": 1200}}
    facts = VocabFacts(vocab={"classes": [dog, cat]})
    assert top_class_rows(facts) == [
        ["n02121620", "n02121620", "1,200", "#cat (1,200)"],
        ["dog", "n02084071", "5", "#puppy (4), #dog (3), #hound (2), #doggo (1) ..."],
    ]
    assert top_class_rows(facts, n=1) == top_class_rows(facts)[:1]


def test_pretrain_rows_and_heldout_rows_from_the_final_eval():
    counts = {
        "steps": 6,
        "total_steps": 40,
        "epochs": 1,
        "global_batch": 64,
        "accum": 2,
        "peak_lr": 0.1,
        "warmup_steps": 5,
        "train_samples": 900,
        "heldout_samples": 100,
        "images_per_second": 123.456,
        "data_wait_fraction": 0.034,
        "train_seconds_this_run": 92.951,
        "final_loss": 4.56789,
        "scratch_precision_at_1": 0.01,
        "scratch_mAP": 0.02,
        "prior_precision_at_1": 0.05,
        "prior_mAP": 0.03,
    }
    evals = [{"step": 6, "precision_at_1": 0.125, "mAP": 0.0625}, {"step": 0, "precision_at_1": 0.01, "mAP": 0.02}]
    facts = PretrainFacts(finished=True, counts=counts, config={"max_steps": 6}, evals=evals)
    assert pretrain_rows(facts) == [
        ["optimizer steps (done / planned)", "6 / 40 (stopped by max_steps=6)"],
        ["epochs", "1"],
        ["global batch (accumulation)", "64 (2)"],
        ["peak lr (warmup steps)", "0.100 (5)"],
        ["training / held-out samples", "900 / 100"],
        ["images/s (training)", "123"],
        ["data-wait fraction", "3.4%"],
        ["training time this run", "93.0 s"],
        ["final loss", "4.568"],
    ]
    assert pretrain_rows(PretrainFacts(counts=counts))[0] == ["optimizer steps (done / planned)", "6 / 40"]
    assert heldout_rows(facts) == [
        ["trained (final eval, step 6)", "0.1250", "0.0625"],  # the manifest has no heldout_*: the step-6 eval
        ["scratch: random init (step 0)", "0.0100", "0.0200"],
        ["class-prior baseline (predict by class frequency)", "0.0500", "0.0300"],
    ]
    with_manifest = PretrainFacts(counts={**counts, "heldout_precision_at_1": 0.25, "heldout_mAP": 0.5}, evals=evals)
    assert heldout_rows(with_manifest)[0] == ["trained (final eval, step 6)", "0.2500", "0.5000"]


def test_energy_rows_recorded_assumed_gpu_and_codecarbon_stages():
    inputs = EnergyInputs(
        stages=["ingest", "dedup", "vocab", "extra"],
        records={
            "ingest": {
                "wall_seconds": 10.0,
                "cpu_seconds": 15.0,
                "busy_cores": 1.5,
                "gpus": 0,
                "estimate": {"kwh": 0.002, "kg_co2e": 0.001},
                "codecarbon": {"kwh": 0.003, "kg_co2e": 0.0012, "measured": True, "basis": "RAPL"},
            },
            "dedup": {
                "wall_seconds": 5.0,
                "cpu_seconds": 2.0,
                "gpus": 2,
                "estimate": {"kwh": 0.004, "kg_co2e": 0.002},
                "codecarbon": None,
                "codecarbon_error": "no counters",
            },
            "extra": {},  # no wall time anywhere: left out
        },
        manifest_seconds={"ingest": 10.0, "dedup": 5.0, "vocab": 3600.0, "extra": None},
        cores=4,
        pue=1.5,
        grid_kg_per_kwh=0.5,
        cpu_watts_per_core=4.0,
        gpu_watts=300.0,
    )
    stages = stage_energy(inputs)
    assert [(st.stage, st.assumed) for st in stages] == [("ingest", False), ("dedup", False), ("vocab", True)]
    # vocab without a record: 1 h x 4 cores x 4 W x PUE 1.5 = 24 Wh; x 0.5 kg/kWh = 12 g
    assert stages[2].estimate_wh == pytest.approx(24.0) and stages[2].estimate_g == pytest.approx(12.0)
    assert stages[1].codecarbon_error == "no counters" and stages[1].codecarbon_wh is None
    assert energy_rows(stages) == [
        ["ingest", "10.0 s", "15.0", "1.50 cores", "2.00", "1.00", "3.00", "1.20", "measured"],
        ["dedup", "5.0 s", "2.00", "2 GPU(s)", "4.00", "2.00", "-", "-", "not measured"],
        ["vocab *", "60.0 min", "-", "4 cores (assumed)", "24.0 *", "12.0 *", "-", "-", "not measured"],
        ["**total**", "", "", "", "30.0 *", "15.0 *", "3.00", "1.20", "1 of 3 stages"],
    ]


def test_transfer_rows_order_and_pre_suite_gains():
    def row(method, init, tpc, top1, **kw):
        return {"method": method, "init": init, "train_per_class": tpc, "train_images": 10 * (tpc or 50), "top1": top1, **kw}

    sec = {
        "rows": [
            row("finetune", "scratch", None, 0.4, base_lr=0.1, epochs=3),
            row("finetune", "pretrained", None, 0.5, base_lr=0.1, epochs=3),
            row("linear_probe", "pretrained", 4, 0.35, best_C=0.01),
            row("linear_probe", "scratch", 2, 0.25, best_C=1.0),
            row("linear_probe", "pretrained", 2, 0.3, best_C=0.01, seeds=[0, 1]),
        ]
    }
    assert [r[:5] + r[9:11] for r in result_rows(sec)] == [
        ["linear probe", "pretrained", "2", "20", "2", "-", "C 0.0100"],
        ["linear probe", "scratch", "2", "20", "1", "-", "C 1.00"],
        ["linear probe", "pretrained", "4", "40", "1", "-", "C 0.0100"],
        ["finetune", "pretrained", "full", "500", "1", "3", "lr 0.1"],
        ["finetune", "scratch", "full", "500", "1", "3", "lr 0.1"],
    ]
    # no "gains" (a results file from before the suite): differences where both inits ran, without intervals
    assert gain_rows(sec) == [
        ["linear probe", "2", "30.0%", "25.0%", "+5.0", "-"],
        ["finetune", "full", "50.0%", "40.0%", "+10.0", "-"],
    ]
    assert gain_rows({**sec, "gains": []}) == []


# ----------------------------------------------------------------------------- benchmarks: demo row, stale rows


def test_benchmark_demo_row_is_read_from_the_run_records(pipeline_run, tmp_path):
    from benchmarks.common import Context
    from benchmarks.demo import run as demo_run

    records = rf.read_energy_records(pipeline_run)
    (row,) = demo_run(Context(run_dir=pipeline_run, work_dir=tmp_path))
    assert row["name"] == "whole_pipeline" and row["details"]["source"] == "run/energy.json"
    assert row["ours"] == round(sum(r["wall_seconds"] for r in records.values()), 1) > 0
    assert row["details"]["stages_missing_from_energy_json"] == []
    assert row["met"] is None  # the fetch is not in the records: a lower bound under the goal gets no verdict


def test_results_md_marks_rows_not_remeasured_as_stale():
    from benchmarks.__main__ import shown_rows

    rows = [
        {"name": "a", "measured": {"at": "2026-11-22T04:44:29+00:00", "mode": "full", "stale": True}},
        {"name": "b", "measured": {"at": "2026-12-01T15:43:49+00:00", "mode": "full", "stale": True, "cpu_capability": "AVX2"}},
        {"name": "c", "measured": {"at": "now", "mode": "quick", "stale": False, "cpu_capability": "AVX512"}},
    ]
    a, b, c = (r["measured"]["mode"] for r in shown_rows(rows))
    assert a == "full; **stale**: not remeasured, CPU capability not recorded"
    assert b == "full; **stale**: not remeasured, CPU capability AVX2"
    assert c == "quick; CPU capability AVX512"
    assert rows[0]["measured"]["mode"] == "full"  # results.json's rows are left as they are
