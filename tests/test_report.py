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
from pipeline.reporting.format import fmt_ci_pct, fmt_diff_points, fmt_int, fmt_num, fmt_pct, fmt_seconds, md_table
from pipeline.reporting.transfer_section import target_section
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
