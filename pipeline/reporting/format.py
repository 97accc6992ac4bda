"""Number and table formatting of the run report (``pipeline.report``) and the notebooks.

Every formatter takes whatever a stage wrote (int, float, numeric string, None, NaN) and
returns a string; a missing value (None or NaN) prints as ``-``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

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


def _cell(x: Any) -> str:
    """Markdown-safe table cell."""
    return str(x).replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: Iterable[Iterable[Any]], align: str | None = None) -> list[str]:
    """A GitHub-flavoured markdown table; ``align`` is one char per column (l, r, c)."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(_cell(h) for h in headers) + " |", "| " + " | ".join(sep.get(a, "---") for a in align) + " |"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


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
