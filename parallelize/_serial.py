"""Worker 0 in the calling thread, for serial mode (PARALLELIZE_DISABLE=1, backend="serial", nested calls).

It stands in for an Engine (see _runner): a call's Job hands it chunks and is told what became of each, exactly as
a worker's answers are fed to it, so on_error, retries and their backoff are the Job's own in both modes. Tasks and
hooks receive what a worker would give them (worker id 0, shared objects, worker state), while pdb, coverage and
profilers see the code, and a task's exception is the object it raised, not a copy.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import PoolClosedError
from ._insights import NestedCalls
from ._serialize import LocalFailure
from ._task_timer import TaskTimes
from ._worker import call_item, leading_arguments

if TYPE_CHECKING:
    from ._job import Job, ProgressWatch
    from ._messages import ChunkStats, RunChunk
    from ._pool_insights import PoolInsights
    from ._settings import WorkerSettings


class SerialWorker:
    """Worker 0, in this thread: its leading arguments, its state, its hooks, and the jobs given to it."""

    foreign = False  # it never outlives a fork in a usable state: it has no processes to inherit
    serial = True
    insights: PoolInsights | None = None  # (a pool's insights are its workers'; a watched call has its own)

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.prefix = leading_arguments(0, settings.pass_worker_id, settings.shared_objects, settings.worker_state)
        self.init_ran = False
        self.closed = False
        self.exit_errors: list[BaseException] = []  # an exit hook's error is raised by stop() itself
        self._functions: dict[int, Callable[..., Any]] = {}
        self._ids = itertools.count()
        self._jobs: list[tuple[Job, int]] = []  # unfinished jobs, with the thread that submitted each
        self._lock = threading.Lock()
        self._init(settings.worker_init)

    @property
    def usable(self) -> bool:
        return not self.closed

    def new_job_id(self) -> int:
        return next(self._ids)

    def task_seconds(self, func_id: int) -> float | None:
        return None  # chunk sizes do not matter in this thread

    def function_id(self, func: Callable[..., Any]) -> int:
        func_id = next(self._ids)
        self._functions[func_id] = functools.partial(func, *self.prefix) if self.prefix else func
        return func_id

    def update_hooks(self, worker_init: Callable[..., Any] | None, worker_exit: Callable[..., Any] | None,
                     worker_lifespan: int | None) -> int:
        """As Engine.update_hooks for the one live worker: a new worker_init runs only if none has run."""
        self.settings = self.settings._replace(worker_init=worker_init, worker_exit=worker_exit,
                                               worker_lifespan=worker_lifespan)
        self._init(worker_init)
        return 1

    # --- calls ----------------------------------------------------------------------------------------------------

    def submit(self, job: Job, *, background: bool = False) -> None:
        """Take *job*; one nobody waits on (background) runs now, as a worker would have run it meanwhile."""
        if self.closed:
            raise PoolClosedError("the pool has been stopped; start a new one")
        job.finish_listeners.append(self._job_finished)
        with self._lock:
            self._jobs.append((job, threading.get_ident()))
        if background:
            self.drive(lambda: job.finished)

    def drive(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run chunks here until done(). Tasks in this thread cannot be interrupted, so there is no *timeout*.

        Each thread runs the jobs it submitted (a job is not thread-safe); a job handed to another thread (an
        imap generator read elsewhere) is run by whichever thread reads it."""
        while not done():
            job = self._next_job()
            if job is None or not self._step(job):
                return done()  # nothing here can make it true
        return True

    def cancel(self, job: Job, *, settle: bool = False) -> None:
        job.cancel()

    def call_started(self) -> None:
        """(Calls need no counting: nothing stops this worker under a running call but the caller itself.)"""

    def call_ended(self) -> None:
        """(See call_started.)"""

    def in_use(self) -> bool:
        return bool(self._jobs)

    def has_async_jobs(self) -> bool:
        return False  # they ran when they were submitted

    def wait_async_jobs(self, timeout: float | None = None) -> bool:
        return True

    def worker_pids(self) -> list[int]:
        return []

    # --- the end -------------------------------------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> list[Any]:
        """Run the exit hook (its error propagates); its result, as a list like a pool's exit results."""
        if self.closed:
            return []
        self.closed = True
        worker_exit = self.settings.worker_exit
        return [worker_exit(*self.prefix)] if worker_exit is not None else []

    def terminate(self, reason: str = "Pool was terminated") -> None:
        self.closed = True  # no exit hook, as for workers that are killed

    def abort(self, cause: BaseException) -> None:
        self.terminate()

    # --- internals -------------------------------------------------------------------------------------------------

    def _init(self, worker_init: Callable[..., Any] | None) -> None:
        """Run *worker_init* unless a worker_init ran already (a worker runs at most one, as in MPIRE)."""
        if worker_init is not None and not self.init_ran:
            self.init_ran = True
            worker_init(*self.prefix)

    def _next_job(self) -> Job | None:
        me = threading.get_ident()
        with self._lock:
            mine = [job for job, thread in self._jobs if thread == me]
            return mine[0] if mine else self._jobs[0][0] if self._jobs else None

    def _job_finished(self, job: Job) -> None:
        with self._lock:
            self._jobs = [(j, thread) for j, thread in self._jobs if j is not job]
        self._functions.pop(job.func_id, None)

    def _step(self, job: Job) -> bool:
        """Run *job*'s next chunk, or wait for its next retry; False if it has nothing to run at all."""
        chunk = job.take()
        if chunk is None:
            retry_at = job.next_retry_at()
            if retry_at is None:
                return job.finished  # (it may have just ended: its input ran out)
            time.sleep(max(0.0, retry_at - time.monotonic()))  # the backoff the user asked for
            return True
        func = self._functions[job.func_id]
        if job.progress is not None:
            func = _reporting(func, job, job.progress)
        t0 = time.perf_counter()
        if chunk.collect:
            values, failures, stats = _run_collected(func, chunk)
            if job.record is not None:
                job.record.chunk(0, stats)
        else:
            values, failures = _run_chunk(func, chunk)
        job.complete(chunk, values, failures, time.perf_counter() - t0)
        return True


def _reporting(func: Callable[..., Any], job: Job, progress: ProgressWatch) -> Callable[..., Any]:
    """*func*, telling *job*'s progress bar after each call: a bar over a chunk run here moves per task."""
    done = 0

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        try:
            return func(*args, **kwargs)
        finally:
            done += 1
            progress.advance(job, done)

    return call


def _run_collected(func: Callable[..., Any],
                   chunk: RunChunk) -> tuple[list[Any], list[LocalFailure] | None, ChunkStats]:
    """_run_chunk for a watched call: each task timed, and the calls the tasks make reported as nested."""
    times = TaskTimes()
    position = itertools.count()

    def timed(*args: Any, **kwargs: Any) -> Any:
        index = next(position)  # the chunk's items are called in order, once each
        t0 = time.perf_counter()
        value = func(*args, **kwargs)
        times.note(time.perf_counter() - t0, index)
        return value

    with NestedCalls() as nested:
        values, failures = _run_chunk(timed, chunk)
    return values, failures, times.stats(chunk, 0.0, nested, in_process=False)


def _run_chunk(func: Callable[..., Any], chunk: RunChunk) -> tuple[list[Any], list[LocalFailure] | None]:
    """A worker's chunk loop, in this thread: values stop at the first failure unless the job keeps going (and a
    Ctrl-C or SystemExit is not a task failure here: it stops the caller, as in a plain loop)."""
    values: list[Any] = []
    failures: list[LocalFailure] = []
    for position, item in enumerate(chunk.items):
        try:
            values.append(call_item(func, item, chunk.call_mode))
        except Exception as exc:
            failures.append(LocalFailure(position, exc))
            if not chunk.keep_going:
                break
            values.append(None)
    return values, failures or None
