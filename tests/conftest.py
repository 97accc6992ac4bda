"""Shared test helpers: composing the real Hydra config, the committed fixture corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pipeline.cli import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "corpus"


def make_cfg(*overrides: str):
    """Compose ``conf/config.yaml`` with Hydra's compose API and the given overrides."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def fixture_cfg(tmp_path):
    """A config over the committed real fixture corpus, writing into a temp run folder."""

    def _make(*overrides: str):
        return make_cfg("data=fixture", f"data.cache={FIXTURE}", f"run_dir={tmp_path / 'run'}",
                        "ingest.progress=false", "ingest.workers=1", *overrides)

    return _make


@pytest.fixture(scope="session")
def ingested_fixture(tmp_path_factory):
    """The committed fixture corpus ingested once per test session (shards of 16 samples).

    Returns the run folder; tests must not modify its ``ingest/`` folder.
    """
    from pipeline.ingest import run_ingest

    run_dir = tmp_path_factory.mktemp("fixture_run")
    cfg = make_cfg("data=fixture", f"data.cache={FIXTURE}", f"run_dir={run_dir}", "ingest.progress=false",
                   "ingest.workers=1", "ingest.shard_size=16")
    run_ingest(cfg)
    return run_dir
