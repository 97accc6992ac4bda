"""Progress bars that suit both a terminal and a job log.

:func:`progress_bar` is a drop-in for ``tqdm(...)``. On a terminal it *is* a tqdm bar. Off
a terminal (CI, ``make demo > log``, SLURM), where tqdm would write every refresh as a
``\\r`` update, it returns a :class:`LogProgress` (a tqdm subclass: same methods) that
writes one plain line at most every :data:`DEFAULT_INTERVAL_S` seconds (set
``PIPELINE_PROGRESS_INTERVAL_S``), and a last line when the bar is closed::

    pretrain: 120/1000 step (12%), 2.35 step/s, elapsed 00:51, ETA 06:14, loss=4.210, lr=0.1
    pretrain: 1000/1000 step (100%), done in 07:05, 2.35 step/s, loss=3.100, lr=0.001

The rate in a periodic line is the rate since the previous line (the ETA is from it); in
the last line, the average over the whole bar. The postfix (``set_postfix``) ends the line.
The lines go to the ``pipeline.progress`` logger at INFO (so under Hydra they are in the
console and ``<run_dir>/<job>.log`` with a time stamp), or to ``file=`` when one is given,
or to stderr where logging has no handler.

Environment:
    ``PIPELINE_PROGRESS_INTERVAL_S``: seconds between log lines (float > 0; default 30).
    ``PIPELINE_PROGRESS``: ``auto`` (default: bar on a terminal, lines elsewhere), ``bar``
    (always tqdm, e.g. in a notebook), ``log`` (always lines), ``off`` (no progress output).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, Iterable

from tqdm import tqdm

__all__ = [
    "DEFAULT_INTERVAL_S",
    "ENV_INTERVAL",
    "ENV_MODE",
    "LogProgress",
    "progress_bar",
    "progress_interval_s",
    "progress_mode",
]

DEFAULT_INTERVAL_S = 30.0
ENV_INTERVAL = "PIPELINE_PROGRESS_INTERVAL_S"
ENV_MODE = "PIPELINE_PROGRESS"
MODES = ("auto", "bar", "log", "off")

log = logging.getLogger("pipeline.progress")
_now = time.monotonic  # the clock of the log lines (tests replace it)


def progress_interval_s() -> float:
    """Seconds between two progress lines off a terminal: ``$PIPELINE_PROGRESS_INTERVAL_S`` or 30.

    An unparsable or non-positive value falls back to the default, with a warning.
    """
    raw = os.environ.get(ENV_INTERVAL, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if not (v > 0 and math.isfinite(v)):
        log.warning("%s=%r is not a number of seconds > 0; using %g", ENV_INTERVAL, raw, DEFAULT_INTERVAL_S)
        return DEFAULT_INTERVAL_S
    return v


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _env_mode() -> str:
    mode = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in MODES:
        log.warning("%s=%r is not one of %s; using auto", ENV_MODE, mode, "/".join(MODES))
        return "auto"
    return mode


def progress_mode(file: Any = None) -> str:
    """``"bar"`` (live tqdm bar), ``"log"`` (periodic lines) or ``"off"`` for a bar on ``file``
    (None: stderr), from ``$PIPELINE_PROGRESS`` and whether ``file`` is a terminal."""
    mode = _env_mode()
    if mode == "auto":
        return "bar" if _isatty(sys.stderr if file is None else file) else "log"
    return mode


def _fmt_time(seconds: float) -> str:
    return tqdm.format_interval(max(0.0, seconds))


class _Discard:
    """A write-only sink for tqdm's own output (LogProgress writes its lines itself)."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


class LogProgress(tqdm):
    """A tqdm bar that writes a plain line at most every ``interval_s`` seconds, and one at ``close``.

    Everything tqdm offers works (``update``, ``set_postfix``, ``set_description``, iteration,
    ``with``); only the output differs. The last line is written when the bar is closed if
    ``leave`` is true (tqdm's default) or a periodic line was written before; a ``leave=False``
    bar that ends within the interval writes nothing.

    Args:
        interval_s: seconds between lines (default: :func:`progress_interval_s`).
        out: a text stream for the lines; None = the ``pipeline.progress`` logger (INFO), or
            stderr if logging has no handler.
        Other arguments: as for ``tqdm``. ``file`` is ignored (use ``out``).
    """

    def __init__(
        self, iterable: Iterable | None = None, *args: Any, interval_s: float | None = None, out: Any = None, **kw: Any
    ) -> None:
        self._interval = float(interval_s) if interval_s is not None else progress_interval_s()
        self._out = out
        self._lines = 0
        self._finished = False
        self._t0 = self._line_t = _now()
        self._line_n = kw.get("initial", 0) or 0
        kw["file"] = _Discard()
        kw.setdefault("mininterval", min(0.5, self._interval / 10))  # how often tqdm asks; we decide
        kw.setdefault("ncols", 80)  # no terminal to measure
        super().__init__(iterable, *args, **kw)

    # tqdm calls display() on its refreshes (throttled by mininterval); a line is written only
    # when interval_s has passed since the last one
    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self._finished:
            return True
        now = _now()
        if now - self._line_t >= self._interval:
            self._emit(now, final=False)
        return True

    def close(self) -> None:
        if getattr(self, "disable", True):
            return
        if not self._finished:
            self._finished = True
            leave = self.leave if self.leave is not None else abs(getattr(self, "pos", 0)) == 0
            if leave or self._lines:
                self._emit(_now(), final=True)
        super().close()

    def reset(self, total: float | None = None) -> None:
        self._t0 = self._line_t = _now()
        self._line_n = 0
        super().reset(total)

    def _count(self, n: float) -> str:
        if self.unit_scale:
            scale = 1 if self.unit_scale is True else self.unit_scale
            return tqdm.format_sizeof(n * scale, divisor=self.unit_divisor)
        return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.2f}"

    def _rate(self, rate: float | None) -> str:
        unit = self.unit
        if not rate or rate <= 0:
            return f"? {unit}/s"
        if rate >= 1:
            return f"{rate:.3g} {unit}/s"
        return f"{1 / rate:.3g} s/{unit}"

    def format_line(self, now: float, final: bool) -> str:
        """The line for the bar's state at ``now`` (a :data:`_now` reading); no side effects."""
        n, total = self.n, self.total
        desc = (self.desc or "").rstrip(": ") or "progress"
        where = f"{self._count(n)}/{self._count(total)} {self.unit}" if total else f"{self._count(n)} {self.unit}"
        if total:
            where += f" ({100 * n / total:.0f}%)"
        elapsed = now - self._t0
        parts = [where]
        if final:
            start = getattr(self, "initial", 0) or 0
            rate = (n - start) / elapsed if elapsed > 0 else None
            verb = "done in" if not total or n >= total else "stopped after"
            parts += [f"{verb} {_fmt_time(elapsed)}", self._rate(rate)]
        else:
            dt = now - self._line_t
            rate = (n - self._line_n) / dt if dt > 0 else None
            parts += [self._rate(rate), f"elapsed {_fmt_time(elapsed)}"]
            if total and rate and rate > 0 and n < total:
                parts.append(f"ETA {_fmt_time((total - n) / rate)}")
        if self.postfix:
            parts.append(str(self.postfix))
        return f"{desc}: " + ", ".join(parts)

    def _emit(self, now: float, final: bool) -> None:
        try:
            line = self.format_line(now, final)
            self._line_t, self._line_n = now, self.n
            self._lines += 1
            if self._out is not None:
                self._out.write(line + "\n")
                self._out.flush()
            elif log.hasHandlers():
                log.info(line)
            else:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
        except Exception:  # noqa: BLE001  (progress output must never break the work, e.g. at exit)
            pass


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    disable: bool | None = False,
    initial: float = 0,
    **kw: Any,
) -> tqdm:
    """A progress bar: a live tqdm bar on a terminal, a line every N seconds elsewhere.

    Use it as ``tqdm``::

        for x in progress_bar(items, desc="vocab", unit="sample", disable=not cfg.progress): ...
        bar = progress_bar(total=steps, initial=done, desc="pretrain", unit="step")
        bar.update(1); bar.set_postfix(loss=f"{loss:.3f}"); bar.close()   # or `with progress_bar(...) as bar:`

    Args:
        iterable: what to iterate over (or None, and call ``update``).
        total: expected number of iterations (None: ``len(iterable)`` where it has one).
        desc: the label (``"pretrain"``); it starts every log line.
        unit: what is counted (``"step"``, ``"img"``); rates are ``unit/s``.
        disable: True = no output at all; None = tqdm's meaning, output only on a terminal.
        initial: starting count (a resumed run); rates count from it.
        **kw: passed to tqdm (``leave``, ``postfix``, ``mininterval``, ``unit_scale``,
            ``file``...). Off a terminal, ``file`` receives the lines (default: the
            ``pipeline.progress`` logger at INFO) and ``leave=False`` bars shorter than the
            interval write nothing.
    Returns:
        a ``tqdm`` instance: tqdm itself on a terminal (or with ``PIPELINE_PROGRESS=bar``),
        else a :class:`LogProgress` writing one line at most every
        ``$PIPELINE_PROGRESS_INTERVAL_S`` seconds (default :data:`DEFAULT_INTERVAL_S` = 30)
        and a last line on ``close``.
    """
    args = dict(total=total, desc=desc, unit=unit, initial=initial, **kw)
    env = _env_mode()
    mode = progress_mode(kw.get("file"))
    if disable is True or mode == "off" or (disable is None and mode == "log" and env == "auto"):
        return tqdm(iterable, disable=True, **args)  # disable=None: tqdm's "only on a terminal"
    if mode == "bar":
        return tqdm(iterable, disable=disable, **args)
    out = args.pop("file", None)
    return LogProgress(iterable, out=out, **args)
