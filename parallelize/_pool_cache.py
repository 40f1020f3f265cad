"""The pool behind each decorated function: created on first call, reused, rebuilt when settings change.

Pools are forgotten (not closed: they belong to the parent) in forked children, and closed at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import Any

from ._engine import Engine
from ._settings import WorkerSettings

logger = logging.getLogger("parallelize")

EXIT_STOP_TIMEOUT = 5.0  # seconds a pool gets at interpreter exit to run exit hooks before it is killed


class PoolHolder:
    """Owns at most one live engine for one decorated function."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.RLock()
        self.engine: Engine | None = None
        self.retiring: list[Engine] = []  # replaced while calls still ran on them; stopped once idle
        self.exit_results: list[Any] = []
        _holders.add(self)

    def engine_for(self, settings: WorkerSettings) -> Engine:
        """The live engine if its workers fit *settings*, else a new one (the old one is stopped first)."""
        with self.lock:
            engine = self.engine
            if engine is not None and (not engine.usable or not engine.settings.same_workers(settings)):
                if engine.usable:
                    logger.debug("parallelize: %s: worker settings changed, starting new workers", self.name)
                self.engine = None
                if engine.usable and engine.in_use():
                    self.retiring.append(engine)  # another call (a thread, an open imap) still runs on it
                else:
                    self._stop(engine)
                engine = None
            if engine is None:
                engine = self.engine = Engine(settings)
            return engine

    def release(self, engine: Engine) -> None:
        """End *engine* after a call that did not keep its workers (keep_alive=False)."""
        with self.lock:
            if self.engine is engine:
                self.engine = None
            if not engine.in_use():
                self._stop(engine)
            elif engine not in self.retiring:
                self.retiring.append(engine)

    def call_ended(self) -> None:
        """Stop replaced engines that no call uses any more."""
        with self.lock:
            for engine in [e for e in self.retiring if not e.in_use()]:
                self.retiring.remove(engine)
                self._stop(engine)

    def close(self, timeout: float | None = None) -> list[Any]:
        """Stop the workers (running their exit hooks); returns the exit results."""
        with self.lock:
            engine, self.engine = self.engine, None
            retiring, self.retiring = self.retiring, []
            for old in retiring:
                self._stop(old, timeout)
            if engine is not None:
                self._stop(engine, timeout)
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

    def _stop(self, engine: Engine, timeout: float | None = None) -> None:
        engine.wait_async_jobs(timeout)
        self.exit_results = list(engine.stop(timeout))
        if engine.exit_errors:
            raise engine.exit_errors[0]


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


os.register_at_fork(after_in_child=_forget_all)
atexit.register(_close_all)
