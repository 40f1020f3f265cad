"""One user call as a Job on a runner: building its chunks, showing progress, handing out results.

Shared by WorkerPool and the decorator, in workers and in serial mode, so every call runs exactly the same path.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

from ._chunking import ChunkSizer, in_memory, is_numpy_array, iter_chunks, iter_numpy_chunks, known_length
from ._dispatch import PREFETCH
from ._errors import PoolClosedError
from ._frames import drop_library_frames, raises_job_errors
from ._insights import watch
from ._job import Job
from ._messages import CALL_APPLY, CALL_UNPACK
from ._progress import ProgressBar

if TYPE_CHECKING:
    from ._runner import Runner


def map_job(engine: Runner, func: Callable[..., Any], iterable: Any, *, n_jobs: int, ordered: bool,
            iterable_len: int | None = None, max_tasks_active: int | None = None,
            chunk_size: int | float | None = None, n_splits: int | None = None,
            task_timeout: float | None = None, worker_init_timeout: float | None = None,
            worker_exit_timeout: float | None = None, order_tasks: bool = False, on_error: str = "raise",
            retries: int = 0, retry_backoff: float = 0.0, call_mode: int = CALL_UNPACK,
            split_arrays: bool = False, owner: object | None = None) -> Job:
    """A job running *func* over *iterable*.

    With split_arrays (MPIRE's rule), a numpy array is cut along axis 0 and each slice is one task; otherwise an
    array is an iterable like any other: one task per row. *owner* (a decorated function's) is what
    ``f.insights()`` watches.
    """
    func_id = engine.function_id(func)
    n_tasks, sizer, chunks = cut(iterable, n_jobs, iterable_len, chunk_size, n_splits, split_arrays,
                                 max_tasks_active, engine.task_seconds(func_id))
    job = Job(
        engine.new_job_id(), func_id, call_mode, chunks, sizer, ordered=ordered,
        n_tasks=n_tasks, max_active=max_tasks_active, task_timeout=task_timeout,
        worker_init_timeout=worker_init_timeout, worker_exit_timeout=worker_exit_timeout,
        slot_of_chunk=(lambda chunk_id: chunk_id % n_jobs) if order_tasks else None,
        in_memory=in_memory(iterable), on_error=on_error, retries=retries, retry_backoff=retry_backoff,
    )
    watch(job, engine, func, owner)
    return job


def cut(iterable: Any, n_jobs: int, iterable_len: int | None, chunk_size: int | float | None,
        n_splits: int | None, split_arrays: bool, max_tasks_active: int | None = None,
        task_seconds: float | None = None) -> tuple[int | None, ChunkSizer, Iterator[list[Any]]]:
    """The number of tasks (if known), the sizer, and the chunks of one call (see map_job)."""
    n_tasks = known_length(iterable, iterable_len)
    # With a cap on tasks in flight, automatic chunks stay small enough for every worker to have its queue full.
    max_size = None if max_tasks_active is None else max_tasks_active // (n_jobs * PREFETCH)
    sizer = ChunkSizer(n_tasks, n_jobs, chunk_size, n_splits, max_size, task_seconds)
    # As MPIRE: iterable_len caps how many items are read.
    if split_arrays and is_numpy_array(iterable):
        return n_tasks, sizer, iter_numpy_chunks(iterable, sizer, iterable_len)
    return n_tasks, sizer, iter_chunks(iterable, sizer, iterable_len)


def apply_job(engine: Runner, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
              task_timeout: float | None, worker_init_timeout: float | None, worker_exit_timeout: float | None,
              retries: int = 0, retry_backoff: float = 0.0, owner: object | None = None) -> Job:
    """A job of one call ``func(*args, **kwargs)`` (*owner*: as for map_job)."""
    job = Job(engine.new_job_id(), engine.function_id(func), CALL_APPLY, iter([[(args, kwargs)]]), None,
              ordered=True, n_tasks=1, in_memory=True, task_timeout=task_timeout,
              worker_init_timeout=worker_init_timeout, worker_exit_timeout=worker_exit_timeout, retries=retries,
              retry_backoff=retry_backoff)
    watch(job, engine, func, owner)
    return job


class Call:
    """One call's life on its runner, shared by the sync face (run) and the async face (the decorator's aimap):
    counted on the runner from its start, its job submitted, results handed out as they are ready, its error
    tidied for the caller, and its cleanup run exactly once, in the process that started the runner."""

    def __init__(self, engine: Runner, job: Job, progress: ProgressBar | None,
                 on_end: Callable[[bool], None]) -> None:
        self.engine = engine
        self.job = job
        self.progress = progress
        self.on_end = on_end
        self.failed = True  # until the call reaches its end normally

    def begin(self, *, background: bool) -> None:
        self.engine.call_started()  # first: end() counts the call as ended, whatever fails below
        if self.progress is not None:
            self.progress.attach(self.job, self.engine)  # before the job is submitted: its chunks then count tasks
        self.engine.submit(self.job, background=background)

    def wait(self) -> None:
        """Drive the runner from this thread until results are ready or the job is over."""
        job = self.job
        # drive() returns False only once the engine is closed, and closing fails every unfinished job, so
        # this call cannot wait for ever.
        if not self.engine.drive(lambda: job.has_ready() or job.finished) and not job.finished:
            job.fail(PoolClosedError("the pool was closed before this call finished"))

    def batch(self) -> list[Any] | None:
        """The results to hand out now ([] if none yet), or None when the call has nothing more to give: then
        error() says how it ended."""
        job = self.job
        if isinstance(job.error, PoolClosedError):
            return None  # at once, as MPIRE: results already back are not handed out after a terminate
        if job.has_ready():
            return job.pop_ready()
        return None if job.finished else []

    def error(self) -> BaseException | None:
        """The call's error, to raise once batch() says it is over; None when it succeeded."""
        error = self.job.error
        if error is None:
            self.failed = False
            return None
        if isinstance(error, PoolClosedError):
            return error
        # Fresh from a worker or the engine, it has no traceback; an exception of the input iterable (or of a
        # task in serial mode) keeps its own frames, not those of the library that was reading it.
        return error.with_traceback(drop_library_frames(error.__traceback__))

    def end(self, *, interrupted: bool = False) -> None:
        """The cleanup. Skipped in a child made by os.fork() that closes (or collects) a generator it inherited:
        the job, its workers and its bar are the parent's, which goes on with them."""
        if self.engine.foreign:
            return
        if not self.job.finished:
            # Left early (break, close(), an error in the consumer, Ctrl-C): stop its chunks now.
            self.engine.cancel(self.job, settle=interrupted)
        if self.progress is not None:
            self.progress.close("done" if not self.failed else "failed" if self.job.error is not None else "stopped")
        self.engine.call_ended()
        self.on_end(self.failed)


_STARTED = object()


def started(engine: Runner, job: Job, progress: ProgressBar | None,
            on_end: Callable[[bool], None], *, batches: bool = False) -> Generator[Any, None, None]:
    """run(), already under way: the call counts as running on its engine, and its job is submitted, from now on
    rather than from the first next(). So an imap that is not read yet keeps its pool (the pool cache never stops
    or replaces it under the caller), and its cleanup runs however the generator ends, even unread."""
    generator = run(engine, job, progress, on_end, primed=True, batches=batches)
    next(generator)
    return generator


@raises_job_errors
def run(engine: Runner, job: Job, progress: ProgressBar | None,
        on_end: Callable[[bool], None], *, primed: bool = False,
        batches: bool = False) -> Generator[Any, None, None]:
    """The sync face of a Call: submit *job* and yield its results as they become available, driving the runner
    from this thread. ``on_end(failed)`` runs exactly once, however the generator ends (exhausted, error, closed
    early). With *batches*, each yield is a list of results (a map collecting them all: no step per result)."""
    call = Call(engine, job, progress, on_end)
    interrupted = False
    try:
        call.begin(background=False)
        if primed:
            yield _STARTED  # (taken by started())
        while True:
            call.wait()
            batch = call.batch()
            if batch is None:
                break
            if batches:
                yield batch
            else:
                yield from batch
        error = call.error()
        if error is not None:
            raise error
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        call.end(interrupted=interrupted)
