"""One worker's life in the calling thread, for serial mode (PARALLELIZE_DISABLE=1, backend="serial").

Both APIs use it, so tasks and hooks receive exactly what a worker process would give them (worker id 0, shared
objects, worker state) while pdb, coverage and profilers see the code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ._worker import leading_arguments


class SerialWorker:
    """Worker 0, in this thread: its leading arguments, its state, and its hooks."""

    def __init__(self, *, pass_worker_id: bool, shared_objects: Any, worker_state: bool) -> None:
        self.prefix = leading_arguments(0, pass_worker_id, shared_objects, worker_state)
        self.init_ran = False

    def init(self, worker_init: Callable[..., Any] | None) -> None:
        """Run *worker_init* unless a worker_init ran already (a worker runs at most one, as in MPIRE)."""
        if worker_init is not None and not self.init_ran:
            self.init_ran = True
            worker_init(*self.prefix)

    def bind(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """*func* with the leading arguments in front, as the worker calls it."""
        return functools.partial(func, *self.prefix) if self.prefix else func

    def exit(self, worker_exit: Callable[..., Any]) -> Any:
        return worker_exit(*self.prefix)
