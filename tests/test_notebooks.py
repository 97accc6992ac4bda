"""Every notebook in notebooks/ runs top to bottom on a tiny run, and is committed without outputs."""

from __future__ import annotations

import shutil

import nbformat
import pytest
from conftest import REPO, WORDNET, pretrain_overrides, stage_cfg
from nbclient import NotebookClient

from pipeline.run import run_pipeline

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
TINY_RUN = (
    *pretrain_overrides(max_steps=4, heldout_fraction=0.1),
    "transfer.methods=[linear_probe,finetune]",
    "transfer.inits=[pretrained]",
    "transfer.low_data_per_class=[2]",
    "transfer.full=false",
    "transfer.finetune_epochs=1",
    "transfer.min_epoch_images=20",
    "transfer.batch_size=8",
    "transfer.probe_Cs=[1.0]",
    "transfer.workers=0",
    "transfer.threads=1",
    "transfer.progress=false",
    "energy.codecarbon=false",
    "run.report=false",
)


@pytest.fixture(scope="module")
def tiny_run(prepared_fixture, tmp_path_factory):
    """A run folder with every stage done on the fixture corpus (a WordNet vocabulary where WordNet is present)."""
    run = tmp_path_factory.mktemp("notebook_run") / "run"
    for s in ("ingest", "dedup"):
        shutil.copytree(prepared_fixture / s, run / s)
    vocab = ("vocab.kind=wordnet_nouns", "vocab.min_count=2") if WORDNET.exists() else ("vocab.kind=raw", "vocab.min_count=2")
    run_pipeline(stage_cfg(run, "vocab.plot=false", *vocab, *TINY_RUN))
    return run


def test_notebooks_are_committed_without_outputs():
    assert len(NOTEBOOKS) >= 4
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"
            assert str(REPO) not in cell.source, f"{path.name}: an absolute path of this machine"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
@pytest.mark.slow
def test_notebook_runs_on_a_tiny_run(path, tiny_run, seed_sweep, monkeypatch):
    monkeypatch.setenv("PIPELINE_RUN_DIR", str(tiny_run))
    monkeypatch.setenv("PIPELINE_SWEEPS_DIR", str(seed_sweep.parent))  # 04_findings: a sweep with 2 seeds
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel then draws inline (matplotlib-inline)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    # something was shown: tables (markdown) and figures
    kinds = {k for c in nb.cells if c.cell_type == "code" for o in c.outputs for k in (o.get("data") or {})}
    assert "text/markdown" in kinds and "image/png" in kinds
