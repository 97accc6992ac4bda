"""Shared test helpers: composing the real Hydra config, the committed fixture corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pipeline.cli import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "corpus"

# Session fixtures that run whole stages (tens of seconds each): a test that uses one is in the
# slow lane whatever its own marks say, so `make test-fast` never pays for them.
SLOW_FIXTURES = {"pipeline_run", "seed_sweep", "tiny_run"}


def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` every test that uses a fixture of :data:`SLOW_FIXTURES`."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def _precision_trial_cache(tmp_path_factory):
    """Precision-trial verdicts (pipeline.train.precision) go to a temp folder, not the user's cache."""
    import os

    old = os.environ.get("PIPELINE_CACHE_DIR")
    os.environ["PIPELINE_CACHE_DIR"] = str(tmp_path_factory.mktemp("precision_cache"))
    yield
    if old is None:
        os.environ.pop("PIPELINE_CACHE_DIR", None)
    else:
        os.environ["PIPELINE_CACHE_DIR"] = old


def die_once(fn):
    """``fn`` wrapped for a ``worker_process_setup_hook``: the first call in any worker (no file at
    ``PIPELINE_TEST_KILL_MARKER`` yet) creates that file and kills its own process, as a node lost mid-stage."""
    import os

    marker = Path(os.environ["PIPELINE_TEST_KILL_MARKER"])

    def dying(*args, **kwargs):
        if not marker.exists():
            marker.touch()
            os._exit(1)
        return fn(*args, **kwargs)

    return dying


def ray_killing_once(hook: str, marker):
    """A context manager: a local Ray of 2 CPUs whose workers run ``hook`` (``"test_module.function"``, importable from
    tests/) at start, with ``PIPELINE_TEST_KILL_MARKER`` = ``marker`` (the hooks kill one worker once, then touch it);
    shut down on exit."""
    import contextlib
    import os

    ray = pytest.importorskip("ray")

    @contextlib.contextmanager
    def _ray():
        path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="ERROR",
            runtime_env={
                "env_vars": {"PIPELINE_TEST_KILL_MARKER": str(marker), "PYTHONPATH": path},
                "worker_process_setup_hook": hook,
            },
        )
        try:
            yield ray
        finally:
            ray.shutdown()

    return _ray()


def make_cfg(*overrides: str):
    """Compose ``conf/config.yaml`` with Hydra's compose API and the given overrides."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def fixture_cfg(tmp_path):
    """A config over the committed real fixture corpus, writing into a temp run folder."""

    def _make(*overrides: str):
        return make_cfg(
            "data=fixture",
            f"data.cache={FIXTURE}",
            f"run_dir={tmp_path / 'run'}",
            "ingest.progress=false",
            "ingest.workers=1",
            *overrides,
        )

    return _make


@pytest.fixture(scope="session")
def ingested_fixture(tmp_path_factory):
    """The committed fixture corpus ingested once per test session (shards of 16 samples).

    Returns the run folder; tests must not modify its ``ingest/`` folder.
    """
    from pipeline.ingest import run_ingest

    run_dir = tmp_path_factory.mktemp("fixture_run")
    cfg = make_cfg(
        "data=fixture",
        f"data.cache={FIXTURE}",
        f"run_dir={run_dir}",
        "ingest.progress=false",
        "ingest.workers=1",
        "ingest.shard_size=16",
    )
    run_ingest(cfg)
    return run_dir


WORDNET = REPO / "data" / "raw" / "nltk_data" / "corpora" / "wordnet"
IMAGENET_INFO = REPO / "data" / "raw" / "imagenet_info"


def stage_cfg(run_dir, *overrides: str):
    """A config over the fixture corpus for later stages (dedup, vocab, pretrain) in ``run_dir``."""
    return make_cfg(
        "data=fixture",
        f"data.cache={FIXTURE}",
        f"run_dir={run_dir}",
        "ingest.progress=false",
        "ingest.workers=1",
        "ingest.shard_size=16",
        "dedup.progress=false",
        "dedup.workers=1",
        f"vocab.wordnet_dir={WORDNET}",
        f"vocab.imagenet_info_dir={IMAGENET_INFO}",
        "vocab.progress=false",
        *overrides,
    )


@pytest.fixture(scope="session")
def prepared_fixture(ingested_fixture, tmp_path_factory):
    """The fixture corpus through ingest, dedup and vocab (raw hashtags, min_count 2), once.

    Returns the run folder; copy its stage folders before writing beside them.
    """
    import shutil

    from pipeline.dedup import run_dedup
    from pipeline.vocab import run_vocab

    run = tmp_path_factory.mktemp("prepared") / "run"
    shutil.copytree(ingested_fixture / "ingest", run / "ingest")
    run_dedup(stage_cfg(run))
    run_vocab(stage_cfg(run, "vocab.kind=raw", "vocab.min_count=2", "vocab.plot=false"))
    return run


def copy_run(src, dst, stages=("ingest", "dedup", "vocab")):
    """Copy finished stage folders of run ``src`` into a new run folder ``dst``."""
    import shutil

    for s in stages:
        shutil.copytree(src / s, dst / s)
    return dst


TINY_PRETRAIN = {
    "model": "resnext_mini",
    "image_size": 32,
    "batch_size": 8,
    "epochs": 1,
    "workers": 0,
    "progress": False,
    "threads": 1,
}  # a pretraining of seconds on the fixture corpus


def pretrain_overrides(**extra) -> list[str]:
    """Hydra overrides ``pretrain.<key>=<value>`` of :data:`TINY_PRETRAIN` with ``extra`` on top (bools as true/false)."""
    merged = {**TINY_PRETRAIN, **extra}
    return [f"pretrain.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in merged.items()]


PROBE_ONLY_TRANSFER = (  # one low-data linear probe, pretrained init only: the transfer stage in seconds
    "transfer.low_data_per_class=[2]",
    "transfer.full=false",
    "transfer.finetune_epochs=1",
    "transfer.min_epoch_images=20",
    "transfer.batch_size=10",
    "transfer.workers=0",
    "transfer.progress=false",
    "transfer.threads=1",
    "transfer.probe_Cs=[1.0]",
    "transfer.max_val_images=20",
    "transfer.inits=[pretrained]",
)

TINY_TRANSFER = (  # the transfer suite in seconds on the fixture targets
    "transfer.low_data_per_class=[2]",
    "transfer.targets.fluent_emoji_subgroup.low_data_per_class=[2]",
    "transfer.targets.blob_emoji_subgroup.low_data_per_class=[2]",
    "transfer.finetune_epochs=2",
    "transfer.min_epoch_images=40",
    "transfer.batch_size=16",
    "transfer.workers=0",
    "transfer.progress=false",
    "transfer.threads=1",
    "transfer.probe_Cs=[0.01,1.0]",
    "transfer.lr_select_max_images=32",
    "transfer.lr_select_epochs=1",
    "transfer.nn_known_copies=10",
    "transfer.nn_non_copies=50",
    "transfer.n_boot=200",
)

PIPELINE_RUN = (  # every stage in ~30 s on the fixture corpus (raw-hashtag vocabulary, 6 optimizer steps)
    "vocab=raw",
    "vocab.min_count=2",
    "vocab.plot=false",
    *pretrain_overrides(max_steps=6, heldout_fraction=0.1, checkpoint_every_steps=100, precision="fp32", channels_last=False),
    *TINY_TRANSFER,
    "transfer.probe_seeds=2",
    "transfer.finetune_seeds=1",
    "transfer.precision=fp32",
    "transfer.channels_last=false",
    "energy.codecarbon=false",
)


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """The fixture corpus through every stage by ``pipeline.run.run_pipeline`` (:data:`PIPELINE_RUN`), once.

    The run writes its report (``report.md``, ``report/*.png``) at the end. Returns the run folder;
    tests must not modify it (copy it first).
    """
    from pipeline.run import run_pipeline

    run = tmp_path_factory.mktemp("pipeline_run") / "run"
    run_pipeline(stage_cfg(run, *PIPELINE_RUN))
    return run


def run_sweep(sweep_dir, *overrides: str, experiment: str = "smoke", timeout: float = 300):
    """``python -m pipeline.run -m experiment=EXPERIMENT hydra.sweep.dir=SWEEP_DIR OVERRIDES`` in a subprocess
    (no distributed or SLURM variables of the calling shell); returns the CompletedProcess."""
    import os
    import subprocess
    import sys

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        and not k.startswith(("SLURM_", "SUBMITIT_"))
    }
    cmd = [sys.executable, "-m", "pipeline.run", "-m", f"experiment={experiment}", f"hydra.sweep.dir={sweep_dir}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def seed_sweep(tmp_path_factory):
    """The smoke sweep (2 losses) with 2 pretraining seeds over the fixture corpus: 4 jobs, in ``<tmp>/sweeps/smoke``."""
    sweep = tmp_path_factory.mktemp("sweeps") / "smoke"
    proc = run_sweep(sweep, "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep
