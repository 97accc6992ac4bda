"""The data stages' executors (pipeline.executor): in process, a local process pool and Ray tasks give the same
results in item order; a failing item fails the map; a Ray task whose worker dies is run again."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.executor import LocalExecutor, make_executor


def _square_plus(item: int, shared: int) -> tuple[int, int]:
    return item * item + shared, os.getpid()


def _fail_on_three(item: int, shared) -> int:
    if item == 3:
        raise ValueError(f"bad item {item}")
    return item


def _die_once(item: int, marker: str) -> int:
    """Kills its own worker process the first time item 2 runs (a node lost mid-task), then succeeds."""
    flag = Path(marker) / f"{item}.done"
    if item == 2 and not flag.exists():
        flag.touch()
        os._exit(1)
    return item * 10


@pytest.mark.parametrize("workers", [1, 2])
def test_local_executor_results_in_item_order(workers):
    with LocalExecutor(workers) as ex:
        out = ex.map(_square_plus, list(range(7)), shared=100)
    assert [r for r, _ in out] == [i * i + 100 for i in range(7)]
    pids = {pid for _, pid in out}
    assert (pids == {os.getpid()}) if workers == 1 else (os.getpid() not in pids)


@pytest.mark.parametrize("workers", [1, 2])
def test_local_executor_raises_the_items_error(workers):
    with pytest.raises(ValueError, match="bad item 3"), LocalExecutor(workers) as ex:
        ex.map(_fail_on_three, list(range(6)))


def test_unknown_engine_and_missing_ray_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="data.engine"):
        make_executor("spark")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as where it is not installed
    with pytest.raises(ConfigError, match=r"data.engine.*pip install"):
        make_executor("ray")


def test_an_unreachable_ray_address_is_a_config_error(monkeypatch):
    """``ray.address`` naming no cluster: one ConfigError naming the key, before any work. ``ray.init`` is stubbed to
    fail as it does after its connection retries (the real one retries for minutes)."""
    import types

    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(ConfigError, match=r"ray.address.*'10.0.0.9:6379'.*running Ray"):
        make_executor("ray", 2, "10.0.0.9:6379")
    assert calls == [{"include_dashboard": False, "logging_level": 30, "log_to_driver": True, "address": "10.0.0.9:6379"}]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for the module (the executor joins it, as it joins a cluster)."""
    ray = pytest.importorskip("ray")
    # the workers import this test module's functions by name: put tests/ on their path
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_executor_equals_local_and_retries_a_dead_worker(local_ray, tmp_path):
    with make_executor("ray", max_retries=2) as ex:
        assert ex.describe() == {"engine": "ray", "workers": 2}
        out = ex.map(_square_plus, list(range(7)), shared=100)
        assert [r for r, _ in out] == [r for r, _ in LocalExecutor(1).map(_square_plus, list(range(7)), shared=100)]
        # item 2's worker dies on its first try: the task runs again and the map completes, in order
        assert ex.map(_die_once, list(range(5)), shared=str(tmp_path)) == [0, 10, 20, 30, 40]
        assert (tmp_path / "2.done").exists()
        with pytest.raises(Exception, match="bad item 3"):
            ex.map(_fail_on_three, list(range(6)))
    assert local_ray.is_initialized()  # joined, not started: left running for its owner
