"""Issue 13, item 4: off a terminal, a progress line at most every N seconds (rate, ETA, postfix);
on a terminal, tqdm's live bar."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO
from tqdm import tqdm

import pipeline.progress as P
from pipeline.progress import LogProgress, progress_bar


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(P, "_now", c)
    monkeypatch.delenv(P.ENV_MODE, raising=False)
    return c


def test_lines_at_the_set_interval_with_rate_eta_and_postfix(clock, monkeypatch):
    monkeypatch.setenv(P.ENV_INTERVAL, "30")
    out = io.StringIO()  # not a terminal
    # mininterval=0, miniters=1: tqdm hands every update to the bar, which alone decides when to write
    bar = progress_bar(total=200, initial=20, desc="pretrain", unit="step", file=out, mininterval=0, miniters=1)
    assert isinstance(bar, LogProgress)
    for i in range(100):  # one step per second, for 100 s
        clock.t += 1
        bar.update(1)
        bar.set_postfix(loss=f"{5 - i / 100:.2f}")
    assert out.getvalue().count("\n") == 3  # at 30, 60, 90 s: not one per update
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 4
    assert (
        lines[0] == "pretrain: 50/200 step (25%), 1 step/s, elapsed 00:30, ETA 02:30, loss=4.72"
    )  # written by the update, before that step's set_postfix
    assert lines[1].startswith("pretrain: 80/200 step (40%), 1 step/s, elapsed 01:00, ETA 02:00")
    assert lines[3] == "pretrain: 120/200 step (60%), stopped after 01:40, 1 step/s, loss=4.01"


def test_rate_is_over_the_last_interval_and_done_line_averages(clock, monkeypatch):
    monkeypatch.setenv(P.ENV_INTERVAL, "10")
    out = io.StringIO()
    with progress_bar(total=40, desc="ingest", unit="shard", file=out, mininterval=0, miniters=1) as bar:
        for dt, n in [(10, 10), (10, 30)]:  # 1 shard/s, then 3 shards/s
            clock.t += dt
            bar.update(n)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("ingest: 10/40 shard (25%), 1 shard/s, elapsed 00:10, ETA 00:30")
    assert lines[1].startswith("ingest: 40/40 shard (100%), 3 shard/s, elapsed 00:20")
    assert lines[2] == "ingest: 40/40 shard (100%), done in 00:20, 2 shard/s"
    # slow work reads as seconds per unit; an unknown total has no percentage or ETA
    out2 = io.StringIO()
    bar = progress_bar(desc="fetch", unit="file", file=out2, mininterval=0, miniters=1)
    clock.t += 40
    bar.update(4)
    bar.close()
    assert out2.getvalue().splitlines() == ["fetch: 4 file, 10 s/file, elapsed 00:40", "fetch: 4 file, done in 00:40, 10 s/file"]


def test_iteration_leave_and_disable(clock, monkeypatch):
    monkeypatch.setenv(P.ENV_INTERVAL, "5")
    out = io.StringIO()
    assert list(progress_bar(range(7), desc="x", file=out)) == list(range(7))
    assert out.getvalue() == "x: 7/7 it (100%), done in 00:00, ? it/s\n"  # one line at the end
    out = io.StringIO()
    assert list(progress_bar(range(3), desc="short", leave=False, file=out)) == [0, 1, 2]
    assert out.getvalue() == ""  # a transient bar shorter than the interval writes nothing
    for disable in (True, None):  # None is tqdm's "only on a terminal"
        out = io.StringIO()
        bar = progress_bar(total=3, desc="off", disable=disable, file=out)
        bar.update(3)
        bar.set_postfix(a=1)
        bar.close()
        assert out.getvalue() == "" and bar.disable
    monkeypatch.setenv(P.ENV_MODE, "off")
    assert progress_bar(total=1, file=io.StringIO()).disable


def test_a_terminal_gets_the_live_tqdm_bar(clock, monkeypatch):
    tty = _TTY()
    bar = progress_bar(total=3, desc="live", file=tty)
    assert type(bar) is tqdm and not bar.disable
    bar.update(3)
    bar.close()
    assert "\r" in tty.getvalue() and "live" in tty.getvalue()
    assert type(progress_bar(total=3, file=tty, disable=None)) is tqdm  # on a terminal None means on
    monkeypatch.setenv(P.ENV_MODE, "log")  # forced lines even on a terminal
    assert isinstance(progress_bar(total=3, file=tty), LogProgress)
    monkeypatch.setenv(P.ENV_MODE, "bar")  # forced bar off a terminal (a notebook)
    assert type(progress_bar(total=3, file=io.StringIO())) is tqdm


def test_interval_from_the_environment(monkeypatch, caplog):
    monkeypatch.delenv(P.ENV_INTERVAL, raising=False)
    assert P.progress_interval_s() == P.DEFAULT_INTERVAL_S == 30.0
    monkeypatch.setenv(P.ENV_INTERVAL, "0.25")
    assert P.progress_interval_s() == 0.25
    for bad in ("soon", "0", "-3", "inf", "nan"):
        monkeypatch.setenv(P.ENV_INTERVAL, bad)
        with caplog.at_level(logging.WARNING, logger="pipeline.progress"):
            assert P.progress_interval_s() == 30.0
        assert P.ENV_INTERVAL in caplog.text


def test_lines_go_to_the_log_without_a_file(clock, monkeypatch, caplog):
    monkeypatch.setenv(P.ENV_INTERVAL, "1")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # stderr not a terminal
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        bar = progress_bar(total=2, desc="vocab", unit="sample", mininterval=0, miniters=1)
        clock.t += 2
        bar.update(1)
        bar.close()
    msgs = [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]
    assert msgs == [
        "vocab: 1/2 sample (50%), 2 s/sample, elapsed 00:02, ETA 00:02",
        "vocab: 1/2 sample (50%), stopped after 00:02, 2 s/sample",
    ]
    assert sys.stderr.getvalue() == ""


def test_reset_starts_the_rates_again(clock, monkeypatch):
    monkeypatch.setenv(P.ENV_INTERVAL, "10")
    out = io.StringIO()
    bar = progress_bar(total=10, desc="r", file=out, mininterval=0, miniters=1)
    clock.t += 5
    bar.update(10)
    bar.reset(total=20)
    clock.t += 10
    bar.update(5)
    assert out.getvalue().splitlines() == ["r: 5/20 it (25%), 2 s/it, elapsed 00:10, ETA 00:30"]
    bar.close()


def test_a_real_process_off_a_terminal_writes_few_lines(tmp_path):
    """A real clock, stderr a pipe: ~1.2 s of updates every 10 ms at a 0.3 s interval -> about 4 lines
    plus the last one, never a carriage return (tqdm alone would write a refresh every 0.1 s)."""
    code = textwrap.dedent("""
        import logging, sys, time
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
        from pipeline.progress import progress_bar
        bar = progress_bar(total=120, desc="job", unit="step")
        for i in range(120):
            time.sleep(0.01)
            bar.update(1)
            bar.set_postfix(loss=1.0 / (i + 1))
        bar.close()
    """)
    env = dict(os.environ, PIPELINE_PROGRESS_INTERVAL_S="0.3")
    env.pop(P.ENV_MODE, None)
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert "\r" not in p.stderr
    assert 2 <= len(lines) <= 1.2 / 0.3 * 2 + 1, lines  # generous for a loaded machine, far below 120
    assert all(line.startswith("job: ") and "step/s" in line and "loss=" in line for line in lines), lines
    assert "ETA" in lines[0] and "done in" in lines[-1]
