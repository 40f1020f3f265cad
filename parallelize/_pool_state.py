"""What the parts of a running pool share: its workers, the jobs it serves, and what it reports when it ends.

Only the thread holding the driver's role (see _driving) reads or changes it, except ``incoming``, which the
engine's lock guards.
"""

from __future__ import annotations

from typing import Any

from . import _errors  # its WorkerDiedError is made on first use (see there)
from ._config import worker_start_timeout
from ._functions import FunctionRegistry
from ._job import Job
from ._pool_insights import PoolInsights
from ._settings import WorkerSettings
from ._workers import Life, Workers, WorkerSlot
from .backends import Backend

MAX_START_FAILURES = 3  # workers in a row failing to start fail the calls instead of being replaced


class PoolState:
    def __init__(self, settings: WorkerSettings, backend: Backend) -> None:
        self.workers = Workers(settings, backend, worker_start_timeout())
        self.functions = FunctionRegistry()
        self.jobs: list[Job] = []  # being served
        self.incoming: list[Job] = []  # submitted since the last step (under the engine's lock)
        self.to_cancel: list[Job] = []  # failed or cancelled jobs whose chunks may still run in workers
        self.insights = PoolInsights(settings.n_jobs) if settings.enable_insights else None
        self.exit_results: list[Any] = []
        self.exit_errors: list[BaseException] = []
        self.stopping = False  # stop() was called: workers finish what they have, run their exit hooks and end
        self.start_failures = 0  # workers in a row that failed to start (see start_failed)
        self.strictest_exit_timeout: float | None = None  # of every call so far, for exits when none runs
        self.task_seconds: dict[int, float] = {}  # func_id -> time per task measured in the workers (see observe)

    @property
    def settings(self) -> WorkerSettings:
        return self.workers.settings

    # --- hook timeouts: settings of the calls, which travel on their jobs ---

    def note_call_timeouts(self, job: Job) -> None:
        if job.worker_exit_timeout is not None:
            self.strictest_exit_timeout = min(job.worker_exit_timeout,
                                              self.strictest_exit_timeout or job.worker_exit_timeout)

    def init_timeout(self) -> float | None:
        """The worker_init timeout that applies now: the strictest among the running calls (a worker serves them
        all)."""
        return self._strictest("worker_init_timeout", None)

    def exit_timeout(self) -> float | None:
        """As init_timeout, or with no call running, the strictest of every call so far."""
        return self._strictest("worker_exit_timeout", self.strictest_exit_timeout)

    def _strictest(self, field: str, default: float | None) -> float | None:
        return min((t for job in self.jobs if not job.finished and (t := getattr(job, field)) is not None),
                   default=default)

    def exit_began(self, slot: WorkerSlot) -> None:
        slot.exit_began(self.exit_timeout())

    # --- what the workers measured ---

    def observe(self, func_id: int, n_tasks: int, duration: float) -> None:
        """A chunk of *n_tasks* of *func_id* took *duration* seconds in its worker: the next calls of the function
        size their chunks from it (see _chunking)."""
        per_task = duration / n_tasks
        known = self.task_seconds.get(func_id)
        self.task_seconds[func_id] = per_task if known is None else 0.7 * known + 0.3 * per_task

    # --- failures that end calls ---

    def start_failed(self, what: str) -> None:
        """A worker died or hung before it was ready. The next would most likely fail the same way (an
        unimportable main module, shared objects that cannot be unpickled): after MAX_START_FAILURES in a row,
        the calls fail instead of waiting on endless replacements. *what* describes the last one."""
        self.start_failures += 1
        if self.start_failures >= MAX_START_FAILURES:
            self.fail_all(_errors.WorkerDiedError(f"{self.start_failures} workers in a row failed to start, before "
                                                  f"running any task (the last: {what})"))

    def fail_all(self, error: BaseException) -> None:
        for job in self.jobs + self.incoming:
            job.fail(error)

    def end_calls(self, error: BaseException) -> None:
        """The pool ends: calls still open (an imap being read, a pending submit) fail with *error*, at once,
        never ending with a silent part of their results. Calls that already have every result keep them."""
        for job in self.jobs + self.incoming:
            if not job.finished:
                job.fail(error)
                job.withdraw_results()

    def init_failed(self, error: BaseException) -> None:
        """A worker_init failed or timed out: the calls fail, and so do the other workers still in their init
        (they would most likely fail the same way, and nobody may be left driving to enforce their timeouts)."""
        self.fail_all(error)
        for slot in self.workers:
            if slot.life is Life.STARTING:
                self.workers.kill(slot)

    def exit_failed(self, error: BaseException) -> None:
        """A worker_exit raised, timed out or returned what cannot be read here: stop() re-raises it."""
        self.exit_errors.append(error)
        self.fail_all(error)
