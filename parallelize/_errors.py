"""The exception hierarchy. Every error parallelize raises on its own account derives from ParallelError.

    ParallelError (Exception)
    ├── ConfigError (ValueError)            bad option or PARALLELIZE_* value; raised before any process starts
    ├── PoolBusyError (RuntimeError)        a second map on a WorkerPool while an imap is still being consumed
    ├── PoolClosedError (RuntimeError)      the pool was terminated or closed before the call finished
    ├── TaskTimeoutError (TimeoutError)     a task, worker_init or worker_exit ran past its timeout
    ├── ResultTimeoutError (TimeoutError)   AsyncResult.get(timeout) ran out (also multiprocessing.TimeoutError)
    ├── WorkerDiedError (BrokenProcessPool) a worker process ended without reporting (signal, os._exit, OOM)
    ├── ResultPicklingError (PicklingError) a task's return value could not be sent back to the caller
    ├── RemoteError                         a task's exception that could not itself be pickled
    └── RemoteTraceback                     the worker's traceback, attached as ``__cause__`` of a task's error

Warnings: ForkAfterThreadsWarning (RuntimeWarning), when a fork pool starts workers in a threaded program.

Exceptions raised by the user's function are re-raised with their original type; the worker's traceback is
attached as ``__cause__`` (a RemoteTraceback).
"""

from __future__ import annotations

import multiprocessing
import pickle
from typing import TYPE_CHECKING, Any


class ParallelError(Exception):
    """Base class of the errors parallelize raises itself. Each also derives from the builtin it resembles
    (``ConfigError`` is a ``ValueError``, ``TaskTimeoutError`` a ``TimeoutError``...). Exceptions raised by your
    own function are re-raised with their own type instead."""


class ConfigError(ParallelError, ValueError):
    """An option or environment variable has a value that is not allowed."""


class PoolBusyError(ParallelError, RuntimeError):
    """The pool is running a lazy job (imap) that must be finished or closed before another starts."""


class PoolClosedError(ParallelError, RuntimeError):
    """The pool was terminated or closed (terminate(), close(), leaving ``with``) while a call still needed it.

    An open imap raises it at its next step, and a pending apply_async or submit gets it as its error: a call
    never ends with a silent part of its results.
    """


class ClusterError(ParallelError, ConnectionError):
    """A cluster backend (``backend="dask"``) cannot be used: its scheduler cannot be reached, or a package it
    needs is missing. The message names the address and where it was configured."""


class TaskTimeoutError(ParallelError, TimeoutError):
    """A task, worker_init or worker_exit ran longer than its timeout (``task_timeout``, ``worker_init_timeout``,
    ``worker_exit_timeout``).

    The error is raised inside the task first, so its ``finally`` blocks run and the worker lives on; a task that
    does not return within a second of that has its worker stopped and replaced. The error names the task and
    its worker. It is also a builtin ``TimeoutError``.
    """


class ResultTimeoutError(ParallelError, multiprocessing.TimeoutError, TimeoutError):
    """``AsyncResult.get(timeout)`` ran out: both multiprocessing's and the builtin TimeoutError, as code written
    for either expects. The task goes on; a later ``get()`` may still return its result."""


if TYPE_CHECKING:
    from concurrent.futures.process import BrokenProcessPool

    class WorkerDiedError(ParallelError, BrokenProcessPool):
        """A worker process ended unexpectedly (killed by a signal, os._exit, out of memory)."""

else:

    def __getattr__(name: str) -> Any:
        # WorkerDiedError derives from BrokenProcessPool, whose module brings concurrent.futures and logging
        # with it: ~5 ms of start-up, paid here only when a worker dies or a program names the class.
        if name != "WorkerDiedError":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from concurrent.futures.process import BrokenProcessPool

        class WorkerDiedError(ParallelError, BrokenProcessPool):
            """A worker process ended unexpectedly (killed by a signal, os._exit, out of memory)."""

            __qualname__ = "WorkerDiedError"  # pickled by name, as if defined at the top of this module

        return globals().setdefault(name, WorkerDiedError)  # one class, even when two threads get here at once


class ResultPicklingError(ParallelError, pickle.PicklingError):
    """A task returned a value that cannot be pickled, so it cannot travel back to the caller."""


class RemoteError(ParallelError):
    """Stands in for an exception raised in a worker that could not be pickled.

    Carries the original type name, its repr and the worker's traceback text.
    """

    def __init__(self, type_name: str, exc_repr: str, traceback_text: str) -> None:
        super().__init__(f"{type_name}: {exc_repr}")
        self.type_name = type_name
        self.exc_repr = exc_repr
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str]]:
        return (RemoteError, (self.type_name, self.exc_repr, self.traceback_text))


class RemoteTraceback(ParallelError):
    """Attached as ``__cause__`` of a re-raised task exception; its text is the worker's traceback."""

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return "\n\nTraceback in the worker process:\n" + self.traceback_text


class ForkAfterThreadsWarning(RuntimeWarning):
    """A fork-based pool is starting workers while other threads of the program run (risk of a deadlock)."""
