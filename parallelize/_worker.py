"""Worker loop: run the init hook, execute chunks, run the exit hook, report. Knows nothing about pools.

The same loop runs in a worker process and in a worker thread; a Channel hides which. The parent tells the
worker what to do with RunChunk / RegisterFunc / STOP messages and hears back ChunkDone / WorkerReady /
WorkerExited (see _messages).
"""

from __future__ import annotations

import functools
import heapq
import threading
import time
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._messages import (
    CALL_APPLY,
    ChunkDone,
    RegisterFunc,
    RunChunk,
    Stop,
    WorkerExited,
    WorkerReady,
    WorkerStats,
)
from ._serialize import TaskFailure, describe_unpicklable, loads, pack_exception

# Slots of the per-worker task clock (shared memory for processes): the parent reads it to enforce task
# timeouts without any per-task message. A start time of 0.0 means "not running a task".
CLOCK_TASK_START = 0
CLOCK_TASK_INDEX = 1
CLOCK_SIZE = 2


_thread_state = threading.local()
in_worker_process = False  # set in worker processes (and inherited by their forked children)


def in_worker() -> bool:
    """True inside a worker process or worker thread: calls from here must not start pools of their own."""
    return in_worker_process or getattr(_thread_state, "active", False)


class Channel(Protocol):
    def recv(self) -> Any: ...

    def send(self, message: Any) -> None: ...


class ResultUnpicklable(Exception):
    """Raised by a Channel whose send() could not serialise a message."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs for its whole life. Changing any of it means starting new workers."""

    worker_id: int
    functions: dict[int, Callable[..., Any]] = field(default_factory=dict)
    shared_objects: Any = None
    pass_worker_id: bool = False
    use_worker_state: bool = False
    worker_init: Callable[..., Any] | None = None
    worker_exit: Callable[..., Any] | None = None
    lifespan: int | None = None  # tasks after which the worker ends itself
    insights: bool = False
    cpu_ids: tuple[int, ...] | None = None
    created_at: float = 0.0  # time.time() when the parent started the worker


class _Insights:
    """Timings of one worker, kept only when insights are enabled."""

    def __init__(self) -> None:
        self.n_completed = 0
        self.waiting_time = 0.0
        self.working_time = 0.0
        self._slowest: list[tuple[float, int, str]] = []  # min-heap of the 5 longest tasks
        self._seq = 0

    def record(self, duration: float, item: Any) -> None:
        self.n_completed += 1
        self.working_time += duration
        if len(self._slowest) < 5 or duration > self._slowest[0][0]:
            self._seq += 1
            entry = (duration, self._seq, describe_unpicklable(item, 200))
            if len(self._slowest) < 5:
                heapq.heappush(self._slowest, entry)
            else:
                heapq.heapreplace(self._slowest, entry)

    def snapshot(self) -> WorkerStats:
        slowest = [(d, text) for d, _, text in sorted(self._slowest, reverse=True)]
        return WorkerStats(self.n_completed, self.waiting_time, self.working_time, slowest)


def call_item(func: Callable[..., Any], item: Any, call_mode: int) -> Any:
    """Call *func* on one item the way MPIRE does (or as an apply call)."""
    if call_mode == CALL_APPLY:
        args, kwargs = item
        return func(*args, **kwargs)
    if isinstance(item, tuple):
        return func(*item)
    if isinstance(item, dict):
        return func(**item)
    return func(item)


def run_worker(spec: WorkerSpec, channel: Channel, clock: MutableSequence[float]) -> None:
    """The worker's whole life. Returns when told to stop, after its lifespan, or when the parent is gone."""
    started = time.time()
    _thread_state.active = True
    prefix: list[Any] = []
    if spec.pass_worker_id:
        prefix.append(spec.worker_id)
    if spec.shared_objects is not None:
        prefix.append(spec.shared_objects)
    if spec.use_worker_state:
        prefix.append({})
    insights = _Insights() if spec.insights else None

    init_failure: TaskFailure | None = None
    init_time = 0.0
    if spec.worker_init is not None:
        t0 = time.perf_counter()
        try:
            spec.worker_init(*prefix)
        except BaseException as exc:  # reported to the parent, which decides; the worker cannot go on
            init_failure = pack_exception(exc)
        init_time = time.perf_counter() - t0
    start_up = max(0.0, started - spec.created_at) if spec.created_at else 0.0
    channel.send(WorkerReady(spec.worker_id, _pid(), start_up, init_time, init_failure))
    if init_failure is not None:
        return

    functions: dict[int, Callable[..., Any]] = {}
    bound: dict[int, Callable[..., Any]] = {}

    def lookup(func_id: int) -> Callable[..., Any]:
        func = bound.get(func_id)
        if func is None:
            plain = functions.get(func_id) or spec.functions[func_id]
            # A registered object may name the callable to run instead of itself (a bound decorated method).
            plain = getattr(plain, "parallelize_callable", plain)
            func = functools.partial(plain, *prefix) if prefix else plain
            bound[func_id] = func
        return func

    n_done = 0
    while spec.lifespan is None or n_done < spec.lifespan:
        t_wait = time.perf_counter()
        try:
            message = channel.recv()
        except EOFError:  # the parent is gone: nobody to report to
            return
        if insights is not None:
            insights.waiting_time += time.perf_counter() - t_wait
        if type(message) is RunChunk:
            func = lookup(message.func_id)
            t_chunk = time.perf_counter()
            if message.tracked or insights is not None:
                values, failure = _run_chunk_tracked(func, message, clock, insights)
            else:
                values, failure = _run_chunk_fast(func, message)
            n_done += len(values) + (failure is not None)
            _send_result(channel, message, values, failure, time.perf_counter() - t_chunk, insights)
        elif type(message) is RegisterFunc:
            functions[message.func_id] = loads(message.payload)
            bound.pop(message.func_id, None)
        elif type(message) is Stop:
            break
        else:  # a programming error in the parent; fail loudly rather than guess
            raise TypeError(f"worker received an unknown message {type(message).__name__}")

    exit_result: Any = None
    exit_failure: TaskFailure | None = None
    exit_time = 0.0
    if spec.worker_exit is not None:
        t0 = time.perf_counter()
        try:
            exit_result = spec.worker_exit(*prefix)
        except BaseException as exc:
            exit_failure = pack_exception(exc)
        exit_time = time.perf_counter() - t0
    stats = insights.snapshot() if insights is not None else None
    try:
        channel.send(WorkerExited(spec.worker_id, exit_result, exit_time, exit_failure, stats))
    except ResultUnpicklable as exc:
        failure = pack_exception(exc)
        channel.send(WorkerExited(spec.worker_id, None, exit_time, failure, stats))


def _run_chunk_fast(func: Callable[..., Any], chunk: RunChunk) -> tuple[list[Any], TaskFailure | None]:
    """The hot loop: no clock, no timing. The failing index is the number of results so far."""
    values: list[Any] = []
    append = values.append
    try:
        if chunk.call_mode == CALL_APPLY:
            for args, kwargs in chunk.items:
                append(func(*args, **kwargs))
        else:
            for item in chunk.items:
                if isinstance(item, tuple):
                    append(func(*item))
                elif isinstance(item, dict):
                    append(func(**item))
                else:
                    append(func(item))
    except BaseException as exc:
        return values, pack_exception(exc, len(values))
    return values, None


def _run_chunk_tracked(
    func: Callable[..., Any],
    chunk: RunChunk,
    clock: MutableSequence[float],
    insights: _Insights | None,
) -> tuple[list[Any], TaskFailure | None]:
    """Like the fast loop, but publishes each task's start on the clock and times it when asked."""
    values: list[Any] = []
    call_mode = chunk.call_mode
    perf = time.perf_counter
    for index, item in enumerate(chunk.items):
        clock[CLOCK_TASK_INDEX] = float(index)
        clock[CLOCK_TASK_START] = time.monotonic()
        t0 = perf()
        try:
            values.append(call_item(func, item, call_mode))
        except BaseException as exc:
            clock[CLOCK_TASK_START] = 0.0
            return values, pack_exception(exc, index)
        if insights is not None:
            insights.record(perf() - t0, item)
    clock[CLOCK_TASK_START] = 0.0
    return values, None


def _send_result(
    channel: Channel,
    chunk: RunChunk,
    values: list[Any],
    failure: TaskFailure | None,
    duration: float,
    insights: _Insights | None,
) -> None:
    stats = insights.snapshot() if insights is not None else None
    try:
        channel.send(ChunkDone(chunk.job_id, chunk.chunk_id, values, failure, duration, stats))
        return
    except ResultUnpicklable:
        pass
    # Slow path, only after a failure: find the first value that cannot travel and fail that task.
    from ._errors import ResultPicklingError
    from ._serialize import dumps

    for index, value in enumerate(values):
        try:
            dumps(value)
        except Exception as exc:
            error = ResultPicklingError(
                f"the result of task {index} of chunk {chunk.chunk_id} cannot be pickled: "
                f"{describe_unpicklable(value)} ({type(exc).__name__}: {exc})"
            )
            failure = pack_exception(error, index)
            channel.send(ChunkDone(chunk.job_id, chunk.chunk_id, values[:index], failure, duration, stats))
            return
    raise RuntimeError("a chunk result failed to pickle but every value pickles on its own")


def _pid() -> int:
    import os

    return os.getpid()
