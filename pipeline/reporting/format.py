"""Number and table formatting of the run report (``pipeline.report``) and the notebooks.

Every formatter takes whatever a stage wrote (int, float, numeric string, None, NaN) and
returns a string; a missing value (None or NaN) prints as ``-``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence

__all__ = [
    "is_missing",
    "fmt_int",
    "fmt_num",
    "fmt_pct",
    "fmt_frac",
    "fmt_seconds",
    "fmt_bytes",
    "md_table",
    "fmt_ci_pct",
    "fmt_diff_points",
    "fmt_g",
    "fmt_per_class",
]


def is_missing(x: Any) -> bool:
    """True for None and NaN (a number a stage did not record); the formatters print ``-`` for it."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_int(x: Any) -> str:
    """``16709`` -> ``16,709``; missing -> ``-``."""
    if is_missing(x):
        return "-"
    try:
        return f"{int(round(float(x))):,}"
    except (TypeError, ValueError):
        return str(x)


def fmt_num(x: Any, digits: int = 3) -> str:
    """A float with ``digits`` significant digits (thousands separated when large)."""
    if is_missing(x):
        return "-"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if v == 0:
        return "0"
    if abs(v) >= 10**digits:
        return f"{v:,.0f}"
    if abs(v) < 1e-3:
        return f"{v:.{digits}g}"
    s = f"{v:.{max(0, digits - 1 - int(math.floor(math.log10(abs(v)))))}f}"
    return s


def fmt_pct(x: Any, digits: int = 1) -> str:
    """A fraction 0-1 as a percentage: ``0.962`` -> ``96.2%``."""
    if is_missing(x):
        return "-"
    return f"{100 * float(x):.{digits}f}%"


def fmt_frac(x: Any) -> str:
    """A metric in [0, 1] with 4 decimals."""
    return "-" if is_missing(x) else f"{float(x):.4f}"


def fmt_seconds(s: Any) -> str:
    """``92.951`` -> ``93.0 s``; ``4000`` -> ``1.11 h``."""
    if is_missing(s):
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
    """A byte count in decimal units: ``1234567`` -> ``1.2 MB``; missing -> ``-``."""
    if is_missing(n):
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"


_ALIGN = {"l": ":---", "r": "---:", "c": ":---:", "-": "---"}
_NEWLINES = re.compile(r"\r\n|\r|\n")


def _cell(x: object) -> str:
    """One markdown table cell: ``str(x)`` with ``|`` escaped as ``\\|`` and each line break replaced by a space.

    No other formatting: callers format numbers first (``fmt_*``); None prints as ``None``.
    """
    return _NEWLINES.sub(" ", str(x).replace("|", "\\|"))


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: Sequence[str] | None = None) -> list[str]:
    """A GitHub-flavoured markdown table, as its lines (no trailing newline): the project's one table writer.

    Cells are written unpadded (``| a | b |``) by ``str``, with ``|`` escaped as ``\\|`` and line
    breaks replaced by a space (here only). Join the lines with ``"\\n"`` for the text.

    Args:
        header: the column names (at least one).
        rows: the rows, each with exactly ``len(header)`` cells of any type (written by ``str``).
        align: one letter per column, a string such as ``"llr"`` or a list: ``l`` left (``:---``),
            ``r`` right (``---:``), ``c`` centred (``:---:``), ``-`` unspecified (``---``);
            None = the first column left, the others right.

    Returns:
        ``[header line, separator line, one line per row]``.

    Raises:
        ValueError: an empty header, an ``align`` of another length or with another letter, or a
            row whose length is not the header's.
    """
    n = len(header)
    if n == 0:
        raise ValueError("md_table: empty header")
    cols = list(align) if align is not None else ["l"] + ["r"] * (n - 1)
    if len(cols) != n or any(a not in _ALIGN for a in cols):
        raise ValueError(f"md_table: align {align!r} needs one of {''.join(_ALIGN)} for each of the {n} columns")
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(_ALIGN[a] for a in cols) + " |"]
    for i, row in enumerate(rows):
        if len(row) != n:
            raise ValueError(f"md_table: row {i} has {len(row)} cells, the header {n}: {row!r}")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines


def fmt_ci_pct(x: Any, ci: Any, digits: int = 1) -> str:
    """``0.612, [0.59, 0.634]`` -> ``61.2% [59.0, 63.4]`` (no interval: just the percentage)."""
    if is_missing(x):
        return "-"
    if not ci or any(is_missing(v) for v in ci):
        return fmt_pct(x, digits)
    return f"{100 * float(x):.{digits}f}% [{100 * float(ci[0]):.{digits}f}, {100 * float(ci[1]):.{digits}f}]"


def fmt_diff_points(g: dict) -> str:
    """A pretrained-minus-scratch difference in points with its interval: ``+2.5 [+0.3, +4.7]``."""
    if is_missing(g.get("diff")):
        return "-"
    return f"{100 * float(g['diff']):+.1f} [{100 * float(g['lo']):+.1f}, {100 * float(g['hi']):+.1f}]"


def fmt_g(x: Any) -> str:
    """A number in Python's ``g`` format (``0.1``, ``1e-05``); missing -> ``-``."""
    return "-" if is_missing(x) else f"{float(x):g}"


def fmt_per_class(v: Any) -> str:
    """Labelled images per class of a transfer row: None (the capped full set) -> ``full``, else ``fmt_int``."""
    return "full" if v is None else fmt_int(v)
