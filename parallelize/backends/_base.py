"""The interface between the engine and whatever runs workers (processes, threads, later a cluster).

The engine asks a backend for capabilities (``supports_kill``), never for its type. A backend starts workers
running ``_worker.run_worker``, carries messages to them without blocking the caller for long, and reports what
happened as events from ``wait()``.
"""

from __future__ import annotations

import abc
from collections.abc import MutableSequence
from typing import Any, NamedTuple

from .._worker import WorkerSpec

# The exit status of a worker that, while it was starting, found the main script starting a pool: the script
# lacks an `if __name__ == "__main__":` guard, and every worker would fail the same way.
EXIT_MAIN_REIMPORTED = 71


class Received(NamedTuple):
    """A worker sent a message. *key* is the backend's name for that worker (unique for the backend's life)."""

    key: int
    message: Any


class Exited(NamedTuple):
    """A worker ended. exitcode is negative for a signal (as in multiprocessing), None if unknown.

    *clock* is the worker's last clock (see _clock): what it was running when it ended.
    """

    key: int
    exitcode: int | None
    clock: tuple[int, ...]


Event = Received | Exited


class Backend(abc.ABC):
    supports_kill: bool = True  # kill() really ends a worker (a thread can only be disowned)
    supports_interrupt: bool = True  # interrupt() raises in the running task (TaskTimeoutError, ChunkCancelled)
    name: str = "abstract"

    @abc.abstractmethod
    def start_worker(self, key: int, spec: WorkerSpec) -> None:
        """Start a worker that runs ``run_worker(spec, ...)``; events about it carry *key*."""

    @abc.abstractmethod
    def send(self, key: int, message: Any) -> None:
        """Queue a message for a worker. Never blocks on a slow worker. Raises if it cannot be serialised."""

    @abc.abstractmethod
    def wait(self, timeout: float | None) -> list[Event]:
        """Block until something happens (or *timeout* seconds pass, or ``wakeup()`` is called)."""

    @abc.abstractmethod
    def wakeup(self) -> None:
        """Make a concurrent ``wait()`` return. Safe to call from any thread."""

    @abc.abstractmethod
    def clock(self, key: int) -> MutableSequence[int]:
        """The worker's task clock (see _clock), readable and writable while the worker runs."""

    @abc.abstractmethod
    def interrupt(self, key: int) -> None:
        """Make a worker look at its clock now: it interrupts its running task or hook if the clock says so
        (a timeout: _clock.TIMEOUT_NS; a cancelled job: _clock.CANCEL).

        Backends that cannot interrupt running code (supports_interrupt False) make this a no-op: the worker sees
        a cancellation before its next chunk, and the engine handles a timeout with kill().
        """

    @abc.abstractmethod
    def kill(self, key: int, grace: float) -> None:
        """Stop a worker now (SIGTERM, then SIGKILL after *grace* seconds); its Exited event follows."""

    @abc.abstractmethod
    def pid(self, key: int) -> int | None:
        """The OS process id of a worker, if it is a process."""

    @abc.abstractmethod
    def close(self, timeout: float) -> None:
        """Release everything; workers still running after *timeout* seconds are killed."""
