"""The records that travel between the parent and its workers. Small, frozen, cheap to pickle.

Parent → worker: RegisterFunc, UnregisterFunc, SetHooks, RunChunk, STOP.
Worker → parent: WorkerReady, ChunkDone, WorkerExited.
A chunk is the unit of dispatch: the parent does its bookkeeping per chunk, never per task.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._serialize import TaskFailure

# How a worker turns one item into a call of the task function.
CALL_UNPACK = 0  # decorator rule: tuple -> f(*item), dict -> f(**item), anything else -> f(item)
CALL_APPLY = 1  # item is (args, kwargs) -> f(*args, **kwargs)
CALL_MPIRE = 2  # MPIRE's rule: dict -> f(**item); str, bytes, ndarray -> f(item); other iterables -> f(*item)


class RegisterFunc(NamedTuple):
    """Teach a worker a function it did not inherit; later chunks name it by func_id."""

    func_id: int
    payload: bytes


class UnregisterFunc(NamedTuple):
    """Forget a function no call uses any more; its func_id is never used again."""

    func_id: int
class SetHooks(NamedTuple):
    """New hooks and lifespan for a live worker (a kept-alive WorkerPool's next call changed them, as MPIRE
    allows). The functions were taught by RegisterFunc first. The worker runs init_id's function at once if it has
    run no worker_init yet (and answers WorkerReady again), and exit_id's function when it ends; the lifespan
    counts every task the worker has run."""

    init_id: int | None
    exit_id: int | None
    lifespan: int | None


class RunChunk(NamedTuple):
    job_id: int
    chunk_id: int
    func_id: int
    call_mode: int
    items: list[Any]
    start: int  # input index of items[0]
    task_timeout: float | None  # seconds; each task's start time is then published on the worker's clock
    keep_going: bool  # after a failing item, go on with the rest of the chunk (on_error return/skip, retries)
    separate_results: bool  # pickle each result on its own (ChunkDone.values are then bytes): see Job.resend
    tag: int  # unique per dispatch: tells the parent which chunk the worker's clock is about
    count_tasks: bool = False  # a progress bar watches: run tracked, so the clock's INDEX counts the tasks done
    collect: bool = False  # time each task and answer ChunkStats: the call is watched for insights (_insights)


class Undecodable(NamedTuple):
    """Parent side only: a worker's message that could not be unpickled here (a result whose class is missing in
    the parent, a __reduce__ that fails outside the worker). Workers answer in order, so the engine knows what
    it was."""

    error: BaseException


class Stop(NamedTuple):
    """Ask a worker to run its exit hook, report, and end."""


STOP = Stop()


class ChunkStats(NamedTuple):
    """How a chunk sent with RunChunk.collect ran in its worker (see _task_timer), for insights."""

    started: float  # time.monotonic() when its first task started (one clock for every process on the machine)
    ended: float  # time.monotonic() when its last task ended
    working_time: float  # seconds in its tasks that completed
    n_completed: int
    slowest: list[tuple[float, str]]  # (seconds, the task's arguments as text), longest first, at most 5
    waiting_time: float  # seconds the worker waited for messages since its last report (enable_insights), else 0
    peak_rss: int  # the worker process's peak resident memory so far, in bytes (0: a thread worker, or unknown)
    arg_bytes: int  # estimated size of the chunk's task arguments, in bytes
    nested: list[Any]  # the CallReports of the parallel calls its tasks made (see _insights.NestedCalls)


class WorkerReady(NamedTuple):
    worker_id: int
    pid: int
    start_up_time: float  # from process start to the worker loop
    init_time: float
    failure: TaskFailure | None  # worker_init raised


class ChunkDone(NamedTuple):
    tag: int
    values: list[Any]  # one per item (None where an item failed), or, without keep_going, up to the failure
    failures: list[TaskFailure] | None
    cancelled: bool  # the parent cancelled the job while this chunk ran; values are incomplete
    duration: float  # seconds the worker spent on the chunk (drives adaptive chunk sizes)
    stats: ChunkStats | None  # with RunChunk.collect only


class WorkerExited(NamedTuple):
    worker_id: int
    exit_result: Any
    exit_time: float
    failure: TaskFailure | None  # worker_exit raised
    waiting_time: float | None  # seconds waited for messages since its last ChunkStats (enable_insights), else None
    reason: str  # "stop" (asked), "lifespan" (worker_lifespan reached), "memory" (max_worker_memory exceeded)
    rss: int  # memory only the worker used (USS), in bytes, when it decided to end (0 if not measured)
    ran_exit: bool  # a worker_exit ran (exit_result is its value): the hook may have changed during its life
