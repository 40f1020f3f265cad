"""Adapters: every peer behind the same small interface (open a pool, map, close), each used the way its users do.

Hooks follow the mpire/parallelize convention: the task is called as ``func(*prefix, item)`` where the prefix is
``shared`` (if given) then the worker-state dict (if ``state``); ``init(*prefix)`` runs once per worker,
``exit(*prefix)`` once per worker at the end and its return values come back from ``close()``. Peers without such
hooks (multiprocessing.Pool, ProcessPoolExecutor) get the prefix through their ``initializer`` and module globals,
inherited through fork (no copy of ``shared``); joblib gets ``shared`` as an argument of every task (its
documented way: large arrays are memory-mapped) and runs ``init`` lazily in each worker. Peers without exit hooks
say so (``exit_hooks = False``) and workloads then merge per-task results in the parent instead.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .floor import ForkFloor


@dataclass(frozen=True)
class Hooks:
    shared: Any = None
    state: bool = False
    init: Callable[..., Any] | None = None
    exit: Callable[..., Any] | None = None

    def prefix(self) -> list[Any]:
        return [*([self.shared] if self.shared is not None else []), *([{}] if self.state else [])]

    @property
    def empty(self) -> bool:
        return self.shared is None and not self.state and self.init is None and self.exit is None


NO_HOOKS = Hooks()

# --- worker-side helpers for the stdlib peers and joblib (module level: picklable by reference) ----------------

_PREFIX: list[Any] = []
_TOKEN: Any = None


def _setup_worker(hooks: Hooks) -> None:
    global _PREFIX
    _PREFIX = hooks.prefix()
    if hooks.init is not None:
        hooks.init(*_PREFIX)


def _call_prefixed(func: Callable[..., Any], item: Any) -> Any:
    return func(*_PREFIX, item)


def _call_lazy(token: Any, hooks: Hooks, func: Callable[..., Any], shared: Any, item: Any) -> Any:
    """joblib: set the worker up on its first task of this pool (token), then call."""
    global _TOKEN, _PREFIX
    if token != _TOKEN:
        _TOKEN = token
        _PREFIX = [*([shared] if shared is not None else []), *([{}] if hooks.state else [])]
        if hooks.init is not None:
            hooks.init(*_PREFIX)
    return func(*_PREFIX, item)


# --- the peers ---------------------------------------------------------------------------------------------------


class Peer:
    """One way of running a map. ``open`` / ``map`` / ``close``; ``prepare`` runs untimed before a cold start."""

    name = "?"
    module: str | None = None  # what must be importable
    exit_hooks = True
    forks = True  # workers are forked (so a global set in the parent is visible)
    only_in: tuple[str, ...] | None = None  # the workloads it runs in (None: all)

    def __init__(self, n_jobs: int) -> None:
        self.n_jobs = n_jobs
        self.hooks = NO_HOOKS

    def missing(self) -> str | None:
        if self.module is None:
            return None
        try:
            importlib.import_module(self.module)
        except ImportError as exc:
            return f"{self.name}: skipped, {self.module} is not installed ({exc})"
        return None

    def version(self) -> str:
        if self.module is None:
            return ""
        return str(getattr(importlib.import_module(self.module.split(".")[0]), "__version__", "?"))

    def prepare(self) -> None:
        pass

    def open(self, hooks: Hooks = NO_HOOKS, warm: bool = True) -> None:
        self.hooks = hooks

    def map(self, func: Callable[..., Any], items: Sequence[Any], chunk_size: int | None = None) -> list[Any]:
        raise NotImplementedError

    def close(self) -> list[Any]:
        return []

    def pids(self) -> list[int]:
        return []

    def _wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        return func if not self.hooks.prefix() else functools.partial(_call_prefixed, func)


class Serial(Peer):
    name = "serial"

    def open(self, hooks: Hooks = NO_HOOKS, warm: bool = True) -> None:
        self.hooks = hooks
        self.prefix = hooks.prefix()
        if hooks.init is not None:
            hooks.init(*self.prefix)

    def map(self, func: Callable[..., Any], items: Sequence[Any], chunk_size: int | None = None) -> list[Any]:
        prefix = self.prefix
        return [func(*prefix, item) for item in items] if prefix else [func(item) for item in items]

    def close(self) -> list[Any]:
        return [self.hooks.exit(*self.prefix)] if self.hooks.exit is not None else []


class MpPool(Peer):
    name = "mp.Pool"
    exit_hooks = False

    def open(self, hooks: Hooks = NO_HOOKS, warm: bool = True) -> None:
        self.hooks = hooks
        ctx = multiprocessing.get_context("fork")
        self.pool = ctx.Pool(self.n_jobs, *((_setup_worker, (hooks,)) if not hooks.empty else ()))

    def map(self, func: Callable[..., Any], items: Sequence[Any], chunk_size: int | None = None) -> list[Any]:
        return self.pool.map(self._wrap(func), items, chunksize=chunk_size)

    def close(self) -> list[Any]:
        self.pool.close()
        self.pool.join()
        return []

    def pids(self) -> list[int]:
        return [p.pid for p in self.pool._pool if p.pid is not None]  # type: ignore[attr-defined]


class Executor(Peer):
    """concurrent.futures.ProcessPoolExecutor; ``tuned`` uses mp.Pool's chunksize rule instead of the default 1."""

    name = "ppe"
    exit_hooks = False

    def __init__(self, n_jobs: int, tuned: bool = False) -> None:
        super().__init__(n_jobs)
        self.tuned = tuned
        self.name = "ppe (tuned chunks)" if tuned else "ppe (chunksize=1)"

    def open(self, hooks: Hooks = NO_HOOKS, warm: bool = True) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.hooks = hooks
        setup: dict[str, Any] = {} if hooks.empty else {"initializer": _setup_worker, "initargs": (hooks,)}
        self.executor = ProcessPoolExecutor(self.n_jobs, mp_context=multiprocessing.get_context("fork"), **setup)

    def map(self, func: Callable[..., Any], items: Sequence[Any], chunk_size: int | None = None) -> list[Any]:
        if chunk_size is None:
            chunk_size = max(1, -(-len(items) // (4 * self.n_jobs))) if self.tuned else 1
        return list(self.executor.map(self._wrap(func), items, chunksize=chunk_size))

    def close(self) -> list[Any]:
        self.executor.shutdown(wait=True)
        return []

    def pids(self) -> list[int]:
        return list(getattr(self.executor, "_processes", {}) or {})


class Joblib(Peer):
    name = "joblib (loky)"
    module = "joblib"
    exit_hooks = False
    forks = False
    _tokens = itertools.count()

    def prepare(self) -> None:
        """A cold start: shut loky's reusable executor down, so the next call spawns new workers."""
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=False)
            reusable_executor._executor = None

    def open(self, hooks: Hooks = NO_HOOKS, warm: bool = True) -> None:
        from joblib import Parallel

        self.hooks = hooks
        self.token = (os.getpid(), next(self._tokens))
        self.parallel = Parallel(n_jobs=self.n_jobs, backend="loky")

    def map(self, func: Callable[..., Any], items: Sequence[Any], chunk_size: int | None = None) -> list[Any]:
        from joblib import Parallel, delayed

        parallel = self.parallel if chunk_size is None else Parallel(n_jobs=self.n_jobs, backend="loky",
                                                                     batch_size=chunk_size)
        if self.hooks.empty:
            return list(parallel(delayed(func)(item) for item in items))
        # shared travels as a task argument (joblib memory-maps large arrays); the hooks without it
        shared = self.hooks.shared
        call, token, hooks = delayed(_call_lazy), self.token, dataclasses.replace(self.hooks, shared=None)
        return list(parallel(call(token, hooks, func, shared, item) for item in items))

    def close(self) -> list[Any]:
        return []

    def pids(self) -> list[int]:
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
        return list(getattr(executor, "_processes", {}) or {}) if executor is not None else []


class MpireLike(Peer):
    """mpire.WorkerPool, or parallelize.WorkerPool through the same code (it has the same API)."""

    def __init__(self, n_jobs: int, name: str, module: str) -> None:
        super().__init__(n_jobs)
        self.name, self.module = name, module

    def open(self, hooks: Hooks = NO_HOOKS, warm: bool = True) -> None:
        cls = importlib.import_module(self.module).WorkerPool
        self.hooks = hooks
        self.pool = cls(n_jobs=self.n_jobs, shared_objects=hooks.shared, use_worker_state=hooks.state,
                        keep_alive=warm, start_method="fork")

    def map(self, func: Callable[..., Any], items: Sequence[Any], chunk_size: int | None = None) -> list[Any]:
        # concatenate_numpy_output=False: mpire would otherwise glue array results into one array (W5)
        return list(self.pool.map(func, items, chunk_size=chunk_size, worker_init=self.hooks.init,
                                  worker_exit=self.hooks.exit, concatenate_numpy_output=False))

    def close(self) -> list[Any]:
        self.pool.stop_and_join()
        results = list(self.pool.get_exit_results())
        self.pool.terminate()
        return results

    def pids(self) -> list[int]:
        workers = getattr(self.pool, "_workers", None)  # mpire
        if workers:
            return [w.pid for w in workers if w is not None and w.pid is not None]
        engine = getattr(self.pool, "_engine", None)  # parallelize
        return list(engine.worker_pids()) if engine is not None else []


class Decorated(Peer):
    """``@parallel``: one decorated copy of each task function, options given per call as users would."""

    name = "parallelize @parallel"
    module = "parallelize"
    _decorated: dict[Callable[..., Any], Any] = {}  # noqa: RUF012 (a per-process cache, shared on purpose)

    def function(self, func: Callable[..., Any]) -> Any:
        from parallelize import parallel

        if func not in self._decorated:
            self._decorated[func] = parallel(func)
        return self._decorated[func]

    def prepare(self) -> None:
        for decorated in self._decorated.values():
            decorated.close()

    def open(self, hooks: Hooks = NO_HOOKS, warm: bool = True) -> None:
        self.hooks = hooks
        self.used: list[Any] = []
        self.options: dict[str, Any] = {"n_jobs": self.n_jobs}
        for key, value in (("shared_objects", hooks.shared), ("worker_init", hooks.init),
                           ("worker_exit", hooks.exit)):
            if value is not None:
                self.options[key] = value
        if hooks.state:
            self.options["worker_state"] = True

    def map(self, func: Callable[..., Any], items: Sequence[Any], chunk_size: int | None = None) -> list[Any]:
        decorated = self.function(func)
        if decorated not in self.used:
            self.used.append(decorated)
        if chunk_size is not None:
            return decorated(items, chunk_size=chunk_size, **self.options)  # type: ignore[no-any-return]
        return decorated(items, **self.options)  # type: ignore[no-any-return]

    def close(self) -> list[Any]:
        results: list[Any] = []
        for decorated in self.used:
            results.extend(decorated.close())
        self.used = []
        return results

    def pids(self) -> list[int]:
        return [pid for decorated in self.used for pid in decorated.worker_pids()]


class DecoratedWithInsights(Decorated):
    """``@parallel`` with each map watched by ``parallelize.insights()``: what collecting insights costs, as a
    per-round ratio to ``@parallel`` alone (same pool: the cache of decorated functions is shared)."""

    name = "parallelize @parallel + insights()"
    only_in = ("W1", "W1s")  # trivial tasks: where timing each one costs the most

    def map(self, func: Callable[..., Any], items: Sequence[Any], chunk_size: int | None = None) -> list[Any]:
        import parallelize

        with parallelize.insights() as report:
            results = super().map(func, items, chunk_size)
        if sum(call.n_completed for call in report.calls) != len(items):
            raise AssertionError(f"insights() saw {report!r} for a map of {len(items)} tasks")
        return results


class DaskCluster:
    """The cluster the Dask rows share: started by the workload that measures them (see workloads.WDask)."""

    client: Any = None


class DecoratedOnDask(Decorated):
    """``@parallel(backend="dask")`` on the workload's cluster (a warm pool: its workers are running tasks there)."""

    name = "parallelize @parallel (dask)"
    module = "distributed"
    only_in = ("W8-dask", "W8-dask-cold")
    _decorated: dict[Callable[..., Any], Any] = {}  # noqa: RUF012 (its own cache: other options than Decorated's)

    def function(self, func: Callable[..., Any]) -> Any:
        from parallelize import parallel

        decorated = self._decorated.get(func)
        if decorated is None or decorated.decorator_options["cluster"] is not DaskCluster.client:
            decorated = self._decorated[func] = parallel(backend="dask", cluster=DaskCluster.client)(func)
        return decorated


class JoblibOnDask(Peer):
    """joblib's dask backend on the same cluster: ``parallel_config(backend="dask")``, its documented way."""

    name = "joblib (dask)"
    module = "distributed"
    exit_hooks = False
    forks = False
    only_in = ("W8-dask", "W8-dask-cold")

    def map(self, func: Callable[..., Any], items: Sequence[Any], chunk_size: int | None = None) -> list[Any]:
        import joblib

        with joblib.parallel_config(backend="dask", n_jobs=self.n_jobs):
            return list(joblib.Parallel()(joblib.delayed(func)(item) for item in items))


class Floor(Peer):
    name = "floor (fork+pipes)"

    def open(self, hooks: Hooks = NO_HOOKS, warm: bool = True) -> None:
        self.hooks = hooks
        self.floor = ForkFloor(self.n_jobs, hooks.shared, hooks.state, hooks.init, hooks.exit)

    def map(self, func: Callable[..., Any], items: Sequence[Any], chunk_size: int | None = None) -> list[Any]:
        return self.floor.map(func, items, chunk_size)

    def close(self) -> list[Any]:
        return self.floor.close()

    def pids(self) -> list[int]:
        return list(self.floor.pids)


MPIRE = "mpire"
MP_POOL = MpPool.name
FLOOR = Floor.name
SERIAL = Serial.name


def all_peers(n_jobs: int) -> list[Peer]:
    """Every peer, in the order of the table."""
    return [
        Serial(n_jobs), MpPool(n_jobs), Executor(n_jobs), Executor(n_jobs, tuned=True), Joblib(n_jobs),
        MpireLike(n_jobs, MPIRE, "mpire"), Decorated(n_jobs), DecoratedWithInsights(n_jobs),
        MpireLike(n_jobs, "parallelize WorkerPool", "parallelize"), Floor(n_jobs), DecoratedOnDask(n_jobs),
        JoblibOnDask(n_jobs),
    ]


SMOKE_PEERS = (SERIAL, Decorated.name, DecoratedWithInsights.name, "parallelize WorkerPool", FLOOR)
# Rows that also report their per-round time ratio to another peer's, in their note.
RATIO_TO = {DecoratedWithInsights.name: Decorated.name, DecoratedOnDask.name: JoblibOnDask.name}
