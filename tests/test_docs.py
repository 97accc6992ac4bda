"""The names the documentation gives exist: every ``pipeline.<module>[.<name>]`` and every
``pipeline/<path>.py`` written in the README, the benchmarks, the config files and the
package's own docstrings resolves (a moved or renamed block fails here, not in a reader's hands)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"\bpipeline(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
SLASHED = re.compile(r"\bpipeline/[A-Za-z0-9_/]+\.py\b")


def _documents() -> list[Path]:
    # benchmarks/RESULTS.md is left out: it is generated, and its profiles name the code as it was when measured
    return (
        [REPO / "README.md"]
        + sorted((REPO / "pipeline").rglob("*.py"))
        + sorted((REPO / "benchmarks").glob("*.py"))
        + sorted((REPO / "conf").rglob("*.yaml"))
    )


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module of the package, or an attribute (at any depth) of one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_resolver_rejects_what_does_not_exist():
    assert resolves("pipeline.io.run_folder.STAGES") and resolves("pipeline.train.loader")
    assert not resolves("pipeline.loader") and not resolves("pipeline.io.run_folder.NO_SUCH_NAME")


@pytest.mark.parametrize("doc", _documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_documented_names_exist(doc):
    text = doc.read_text(encoding="utf-8")
    missing = sorted({m for m in DOTTED.findall(text) if not resolves(m)})
    missing += sorted({m for m in SLASHED.findall(text) if not (REPO / m).exists()})
    assert not missing, f"{doc.relative_to(REPO)} names what does not exist: {missing}"
