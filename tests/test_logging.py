"""faiss's loader messages stay out of an INFO log and show at DEBUG (pipeline.faiss_import)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROG = """
import logging, sys
logging.basicConfig(level=logging.{level}, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s")
import pipeline.vision.near_index  # imports faiss through pipeline.faiss_import
"""


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_faiss_loader_lines_only_at_debug(level):
    out = subprocess.run([sys.executable, "-c", PROG.format(level=level)], capture_output=True, text=True, check=True).stdout
    loader = [line for line in out.splitlines() if "faiss.loader" in line]
    if level == "INFO":
        assert loader == [], out
    else:
        assert loader and all(line.startswith("DEBUG faiss.loader") for line in loader), out
