"""Executors of the data stages' per-shard work: the same function over the same items, in this process, in a
local process pool, or as Ray tasks on a cluster (img2dataset's distributor pattern).

A data stage writes its work once, as functions of one item (a shard, a unit) and of a ``shared`` read-only table
(the stage's small tables: a hashtag -> class map, a class index), and a driver that reduces their small results.
:func:`make_executor` picks how the functions run:

* ``local`` (the default): in this process when ``workers`` is 1, else in a pool of ``workers`` processes
  (``concurrent.futures.ProcessPoolExecutor``; ``shared`` is sent once to each worker, not with every item);
* ``ray``: one Ray task per item (``ray.remote(max_retries=...)``: a task whose worker dies is run again, so a
  function must write its outputs atomically or idempotently), ``shared`` put once in the object store and
  fetched once per worker and map. Without an
  address a local Ray is started with ``workers`` CPUs (and shut down by :meth:`Executor.close`); ``auto`` or
  ``ray://host:port`` joins a running cluster (``ray start --head`` on SLURM, a KubeRay cluster).

Results come back in the order of the items, whatever the executor, so a driver that reduces them in that order
gets the same floats on every executor.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
from typing import Any, Callable, Iterator, Sequence, TypeVar

from pipeline.errors import ConfigError
from pipeline.progress import progress_bar

__all__ = ["ENGINES", "Executor", "LocalExecutor", "RayExecutor", "make_executor"]

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
ENGINES = ("local", "ray")

_SHARED: Any = None  # the pool worker's copy of ``shared`` (set by _init_worker)


def _init_worker(shared: Any) -> None:
    """A pool worker: one thread for OpenMP and BLAS (faiss, numpy), since the pool already runs one task per core
    (Ray does the same for its tasks: ``OMP_NUM_THREADS`` = the task's CPUs); and the map's ``shared``."""
    global _SHARED
    _SHARED = shared
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _call(fn: Callable[[Any, Any], Any], item: Any) -> Any:
    return fn(item, _SHARED)


_RAY_SHARED: dict[str, Any] = {}  # a Ray worker's copy of the current map's ``shared``, by object id


def _ray_call(fn: Callable[[Any, Any], Any], item: Any, boxed: list) -> Any:
    """A Ray task: ``fn(item, shared)``, ``shared`` fetched from the object store once per worker and map (``boxed``
    holds its ObjectRef inside a list, so Ray does not fetch and unpickle it again for every task: a hashtag table
    of 10^5 entries took longer to unpickle than a shard's work)."""
    ref = boxed[0]
    key = ref.hex()
    if key not in _RAY_SHARED:
        import ray

        _RAY_SHARED.clear()  # one map's table at a time
        _RAY_SHARED[key] = ray.get(ref)
    return fn(item, _RAY_SHARED[key])


class Executor:
    """Runs ``fn(item, shared)`` for every item; :meth:`map` returns the results in item order."""

    name = "executor"
    workers = 1

    def map(
        self, fn: Callable[[T, Any], R], items: Sequence[T], shared: Any = None, desc: str = "", progress: bool = False
    ) -> list[R]:
        """``[fn(item, shared) for item in items]``, run by this executor (:meth:`imap`, collected)."""
        return list(self.imap(fn, items, shared, desc, progress))

    def imap(
        self, fn: Callable[[T, Any], R], items: Sequence[T], shared: Any = None, desc: str = "", progress: bool = False
    ) -> Iterator[R]:
        """``fn(item, shared)`` for every item, run by this executor, yielded in item order as they are ready (a
        driver folds them one by one: it never holds every item's result).

        Args:
            fn: a module-level function (pickled by reference for pool workers and Ray tasks).
            items: small, picklable work descriptions (a shard path and its own small inputs).
            shared: one read-only object every call needs (sent once per worker or put once in Ray's store).
            desc: the progress bar's name; ``progress``: show it (one tick per finished item).

        Raises:
            Whatever ``fn`` raised for the first failing item (Ray: after its retries), with the item in the message
            where the executor wraps it.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the pool or the local Ray this executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict:
        """What a manifest records: ``{"engine", "workers"}``."""
        return {"engine": self.name, "workers": self.workers}


class LocalExecutor(Executor):
    """In this process (``workers`` 1) or a pool of ``workers`` processes (fork where the platform has it)."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, int(workers))

    def imap(self, fn, items, shared=None, desc="", progress=False):
        with progress_bar(total=len(items), unit="shard", desc=desc, disable=not progress) as bar:
            if self.workers == 1 or len(items) <= 1:
                for it in items:
                    yield fn(it, shared)
                    bar.update(1)
                return
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with concurrent.futures.ProcessPoolExecutor(
                max_workers=min(self.workers, len(items)), mp_context=ctx, initializer=_init_worker, initargs=(shared,)
            ) as pool:
                futures: list = [pool.submit(_call, fn, it) for it in items]
                try:
                    for i in range(len(futures)):
                        out = futures[i].result()  # a failure raises here, in item order
                        futures[i] = None  # a consumed result is not kept: the driver folds one at a time
                        bar.update(1)
                        yield out
                finally:
                    for f in futures:
                        if f is not None:
                            f.cancel()  # what has not started, when the caller stops early or a task failed


class RayExecutor(Executor):
    """One Ray task per item, retried ``max_retries`` times when its worker dies (see the module)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int = 1, max_retries: int = 3) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "config error at data.engine: 'ray' needs the ray package (pip install 'hashtag-pretrain[ray]')"
            ) from None
        self._ray = ray
        self.max_retries = int(max_retries)
        self._started = False
        if not ray.is_initialized():
            kwargs: dict = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = max(1, int(workers))
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"config error at ray.address: cannot reach a Ray cluster at {address!r}: {exc}") from None
            self._started = not address
        self.workers = int(ray.cluster_resources().get("CPU", 1))

    def imap(self, fn, items, shared=None, desc="", progress=False):
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=self.max_retries)(_ray_call)
        boxed = [ray.put(shared)]
        refs = [remote.remote(fn, it, boxed) for it in items]
        with progress_bar(total=len(items), unit="shard", desc=desc, disable=not progress) as bar:
            try:
                for i in range(len(refs)):
                    out = ray.get(refs[i])  # a task that failed (after its retries) raises here
                    refs[i] = None  # the driver drops its reference: the object store may free the result
                    bar.update(1)
                    yield out
            finally:
                # the rest are dropped, not cancelled: ray.cancel racing a task's completion callback aborted the driver
                # (RAY_CHECK "it != submissible_tasks_.end()", ray 2.60, once in make test after a failed map; the race
                # of ray-project/ray#54785); a dropped task runs to its end and its result is freed
                refs.clear()

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


def make_executor(engine: str, workers: int = 1, address: str | None = None, max_retries: int = 3) -> Executor:
    """The executor of ``data.engine`` (``local`` or ``ray``): see the module.

    Raises:
        pipeline.errors.ConfigError: an unknown engine, ``ray`` without the ray package or with an unreachable
            ``address``; before any work.
    """
    if engine == "local":
        return LocalExecutor(workers)
    if engine == "ray":
        return RayExecutor(address or None, workers, max_retries)
    raise ConfigError(f"config error at data.engine: {engine!r} is not one of {', '.join(ENGINES)}")
