"""The one holder of a front end's pool, and the cache of the decorator's holders.

A holder keeps at most one live runner (an Engine, or a SerialWorker in serial mode): it reuses it while its
workers fit a call, replaces it when they do not, stops it keeping its exit results, and raises what its exit
hooks raised. Each decorated function has one; so has each WorkerPool, which adds MPIRE's keep_alive rules on top.

The decorator's holders are forgotten (not closed: the pools belong to the parent) in forked children, and closed
at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._engine import Engine
from ._log import logger
from ._pool_insights import PoolInsights
from ._settings import WorkerSettings

if TYPE_CHECKING:
    from ._runner import Runner

EXIT_STOP_TIMEOUT = 5.0  # seconds a pool gets at interpreter exit to run exit hooks before it is killed


class PoolHolder:
    """At most one live runner for one front end, and the replaced ones that calls still use."""

    def __init__(self, name: str, *, start: Callable[[WorkerSettings], Runner] = Engine,
                 fits: Callable[[WorkerSettings, WorkerSettings], bool] = WorkerSettings.same_workers,
                 on_replace: Callable[[], None] | None = None, wait_for_busy: bool = False,
                 cached: bool = True) -> None:
        """*start* makes a runner for settings; *fits(current, wanted)* says whether a live one can serve a call;
        *on_replace* reports that a usable one is replaced (default: a debug log line). A replaced runner that a
        call still uses is retired (stopped once idle), or with *wait_for_busy* (WorkerPool, as MPIRE) stopped
        at once after its background jobs. *cached* holders are forgotten after a fork and closed at exit."""
        self.name = name
        self.lock = threading.RLock()
        self.engine: Runner | None = None
        self.retiring: list[Runner] = []  # replaced while calls still ran on them; stopped once idle
        self.exit_results: list[Any] = []
        self.last_insights: PoolInsights | None = None  # of the runner stopped or terminated last
        self._start = start
        self._fits = fits
        self._on_replace = on_replace or self._log_replace
        self._wait_for_busy = wait_for_busy
        self._cached = cached
        if cached:
            _holders.add(self)

    def engine_for(self, settings: WorkerSettings) -> Runner:
        """The live runner if its workers fit *settings*, else a new one (the old one retired first)."""
        with self.lock:
            engine = self.engine
            if engine is not None:
                if engine.usable and self._fits(engine.settings, settings):
                    return engine
                if engine.usable:
                    self._on_replace()
                self.engine = None
                if self._wait_for_busy:
                    self.stop(engine)
                else:
                    self.retire(engine)
            engine = self.engine = self._start(settings)
            if self._cached:
                _close_at_exit_first()
            return engine

    def detach(self, engine: Runner) -> bool:
        """Stop handing *engine* out to new calls; whether it was the live one."""
        with self.lock:
            if self.engine is not engine:
                return False
            self.engine = None
            return True

    def release(self, engine: Runner) -> None:
        """End *engine* after a call that did not keep its workers (keep_alive=False)."""
        with self.lock:
            self.detach(engine)
            self.retire(engine)

    def retire(self, engine: Runner) -> None:
        """Stop *engine* now if no call uses it, else once the last one ends (call_ended)."""
        with self.lock:
            if not engine.usable or not engine.in_use():
                self.stop(engine)
            elif engine not in self.retiring:
                self.retiring.append(engine)  # another call (a thread, an open imap) still runs on it

    def call_ended(self) -> None:
        """Stop replaced runners that no call uses any more."""
        with self.lock:
            for engine in [e for e in self.retiring if not e.in_use()]:
                self.stop(engine)

    def stop(self, engine: Runner, timeout: float | None = None) -> None:
        """Let *engine* finish its background jobs and stop it, running the exit hooks; keeps their results and
        raises the first exit hook error. Stopping one that is stopped already changes nothing."""
        with self.lock:
            if engine in self.retiring:
                self.retiring.remove(engine)
            if not engine.usable:
                return  # stopped before (its exit results are kept), or the parent's after a fork
            engine.wait_async_jobs(timeout)
            self._remember_insights(engine)
            self.exit_results = list(engine.stop(timeout))
            if engine.exit_errors:
                raise engine.exit_errors[0]

    def kill(self, engine: Runner) -> None:
        """End *engine*'s workers now, without exit hooks; its unfinished calls fail with PoolClosedError."""
        self._remember_insights(engine)
        engine.terminate()

    def close(self, timeout: float | None = None) -> list[Any]:
        """Stop every runner held (running the exit hooks); returns the exit results."""
        with self.lock:
            engine, self.engine = self.engine, None
            for old in list(self.retiring):
                self.stop(old, timeout)
            if engine is not None:
                self.stop(engine, timeout)
            return list(self.exit_results)

    def terminate(self) -> None:
        """End the workers now, without exit hooks (a Ctrl-C while closing at exit)."""
        engines = [e for e in (self.engine, *self.retiring) if e is not None]
        self.engine, self.retiring = None, []
        for engine in engines:
            engine.abort(KeyboardInterrupt())

    def forget(self) -> None:
        """In a forked child: the parent's workers are not ours to stop."""
        self.engine = None
        self.retiring = []

    def _remember_insights(self, engine: Runner) -> None:
        if engine.insights is not None:
            self.last_insights = engine.insights

    def _log_replace(self) -> None:
        logger().debug("parallelize: %s: worker settings changed, starting new workers", self.name)


_holders: weakref.WeakSet[PoolHolder] = weakref.WeakSet()


def _forget_all() -> None:
    for holder in list(_holders):
        holder.forget()


def _close_all() -> None:
    holders = list(_holders)
    for holder in holders:
        try:
            holder.close(EXIT_STOP_TIMEOUT)
        except KeyboardInterrupt:
            # Ctrl-C while exit hooks run: the user wants out. End every pool now, without a second traceback.
            for rest in holders:
                rest.terminate()
            return
        except Exception:  # at exit, one failing pool must not keep the others alive
            continue


def _close_at_exit_first() -> None:
    """Have _close_all run before the exit hooks registered so far. atexit runs the latest registered first, and
    multiprocessing registers its own when its util module is first imported, which the first worker start may do:
    run first, it would terminate daemonic workers without their exit hooks and wait for ever for the others."""
    atexit.unregister(_close_all)
    atexit.register(_close_all)


os.register_at_fork(after_in_child=_forget_all)
