"""The project's one markdown-table writer (``pipeline.reporting.format.md_table``) and the tables built on it:
the sweep summary's (``pipeline.reporting.sweep_table.markdown_table``) and ``benchmarks/RESULTS.md``'s.

Hand-made values; every expected line is written out in full.
"""

from __future__ import annotations

import pytest

from pipeline.reporting.format import md_table
from pipeline.reporting.sweep_jobs import Interval
from pipeline.reporting.sweep_table import markdown_table


def test_md_table_default_alignment_and_cells_written_by_str():
    assert md_table(["a", "b", "c"], [["x", 1, None], ("y", 2.5, "-")]) == [
        "| a | b | c |",
        "| :--- | ---: | ---: |",
        "| x | 1 | None |",
        "| y | 2.5 | - |",
    ]


def test_md_table_escapes_pipes_and_line_breaks_in_every_cell():
    lines = md_table(["a|b", "note"], [["x|y", "two\nlines"], ["crlf", "a\r\nb\rc"]], "ll")
    assert lines == [
        "| a\\|b | note |",
        "| :--- | :--- |",
        "| x\\|y | two lines |",
        "| crlf | a b c |",
    ]


def test_md_table_alignment_letters_as_string_or_list():
    sep = "| :--- | ---: | :---: | --- |"
    assert md_table(["a", "b", "c", "d"], [], "lrc-")[1] == sep
    assert md_table(["a", "b", "c", "d"], [], ["l", "r", "c", "-"])[1] == sep
    assert md_table(["only"], []) == ["| only |", "| :--- |"]


@pytest.mark.parametrize(
    "header, rows, align, message",
    [
        ([], [], None, "empty header"),
        (["a", "b"], [], "l", "align"),
        (["a", "b"], [], "lx", "align"),
        (["a", "b"], [["1", "2"], ["3"]], None, "row 1 has 1 cells, the header 2"),
    ],
)
def test_md_table_refuses_malformed_input(header, rows, align, message):
    with pytest.raises(ValueError, match=message):
        md_table(header, rows, align)


def test_sweep_markdown_table_formats_values_then_uses_md_table():
    header = ["job", "pretrain.lr", "status", "heldout_mAP", "gain fm linear_probe 2", "seconds", "error"]
    rows = [
        ["job0", 0.1, "ok", 0.12346, Interval(0.05, -0.01, 0.11), 12.34, "bad | thing\nhere"],
        ["job1", None, "failed", None, Interval(0.02, None, None), None, ""],
    ]
    assert markdown_table(header, rows) == [
        "| job | pretrain.lr | status | heldout_mAP | gain fm linear_probe 2 | seconds | error |",
        "| :--- | :--- | :--- | ---: | ---: | ---: | :--- |",
        "| job0 | 0.1000 | ok | 0.1235 | +0.0500 [-0.0100, +0.1100] | 12.3 | bad \\| thing here |",
        "| job1 | - | failed | - | +0.0200 | - |  |",
    ]


def test_benchmark_results_table_uses_md_table(tmp_path):
    from benchmarks.report import write_report

    row = {
        "name": "demo_check",
        "title": "a check",
        "ours": 1234.4,
        "anchor": 1000,
        "unit": "images/s",
        "ratio": 1.2344,
        "goal": "ours >= 1.0 x anchor | both",
        "met": True,
        "measured": {"at": "T0"},
    }
    old = dict(row, name="older", met=False, measured={"at": "T-1", "mode": "quick"})
    path = tmp_path / "RESULTS.md"
    write_report(
        path,
        [row, old],
        machine={},
        command="python -m benchmarks",
        started="T0",
        total_seconds=60.0,
        runs={},
        mode="quick",
        run_dir="runs/demo",
        previous_profiles={},
    )
    lines = path.read_text(encoding="utf-8").splitlines()
    i = lines.index("| what | ours | anchor | unit | ratio | goal | met | measured |")
    assert lines[i + 1 : i + 4] == [
        "| :--- | ---: | ---: | :--- | ---: | :--- | :--- | :--- |",
        "| demo_check | 1,234 | 1,000 | images/s | 1.23 | ours >= 1.0 x anchor \\| both | **met** | this run |",
        "| older | 1,234 | 1,000 | images/s | 1.23 | ours >= 1.0 x anchor \\| both | **not met** | T-1 (quick) |",
    ]
