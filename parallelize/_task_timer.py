"""The worker's side of insights: timing the tasks of a chunk sent with RunChunk.collect.

Chunks of calls nobody watches never get here. The untracked chunk loop's map() is drained with the tasks timed
(run_mapped); the tracked loop of _worker reports each task itself (note). What goes back is one ChunkStats per
chunk."""

from __future__ import annotations

import functools
import heapq
import itertools
import os
import reprlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ._chunking import is_numpy_array
from ._messages import CALL_APPLY, CALL_MPIRE, ChunkStats, RunChunk

N_SLOWEST = 5
PROBE = 32  # tasks timed one by one before deciding whether they are fast enough to time in groups
FAST_TASK = 10e-6  # seconds: below this mean, a clock read per task would cost over 1 %: tasks are timed in groups
PEAK_RSS_INTERVAL = 0.01  # seconds between two readings of the peak resident memory
GROUP_SECONDS = 100e-6  # of work per group of fast tasks (timing a group costs about 1 us)
ARGS_TEXT_LIMIT = 200  # characters of one task's arguments as text
_SIZE_SAMPLES = 8  # items of a chunk whose size is measured (evenly spread) to estimate the arguments' size
_SCALARS = frozenset((int, float, bool, complex, type(None)))
_SCALAR_BYTES = 32  # about what one of those takes (as an estimate, the size of a small int is close enough)



class TaskTimes:
    """The tasks of one chunk: how many completed, their total time, and the slowest.

    A task taking microseconds would be slowed down by a clock read of its own (about 0.1 us), so fast tasks are
    timed in groups of about GROUP_SECONDS, and a group among the slowest is reported as such. *per_task* times
    every task on its own (MPIRE's insights, whose slowest tasks are single tasks).
    """

    __slots__ = ("_floor", "_per_task", "_slowest", "n_completed", "started", "working_time")

    def __init__(self, per_task: bool = False) -> None:
        self.started = time.monotonic()
        self.working_time = 0.0
        self.n_completed = 0
        self._per_task = per_task
        self._slowest: list[tuple[float, int, int]] = []  # min-heap of (seconds, position in the chunk, tasks)
        self._floor = 0.0  # a task must take longer than this to be among the slowest

    def note(self, seconds: float, position: int) -> None:
        """One task completed (the tracked loop)."""
        self.working_time += seconds
        self.n_completed += 1
        if seconds > self._floor:
            self._keep(seconds, position, 1)

    def run_mapped(self, mapped: Iterator[Any], values: list[Any]) -> BaseException | None:
        """The untracked loop: *mapped* drained into *values*, the tasks timed: one by one (a clock read each, the
        bookkeeping of one counted in the next one's time) until PROBE tasks show whether they are fast, then in
        groups if they are. Returns what a task raised (values then holds the results before it), if anything."""
        perf = time.perf_counter
        start = last = perf()
        error: BaseException | None = None
        try:
            last = self._one_by_one(mapped if self._per_task else itertools.islice(mapped, PROBE), values, last)
            if len(values) == PROBE and not self._per_task:
                mean = (last - start) / PROBE
                if mean < FAST_TASK:
                    self._in_groups(mapped, values, last, max(2, int(GROUP_SECONDS / max(mean, 1e-9))))
                else:
                    self._one_by_one(mapped, values, last)
        except BaseException as exc:  # (ChunkCancelled included: the caller tells them apart)
            error = exc
        self.working_time += perf() - start
        self.n_completed += len(values)
        return error

    def _one_by_one(self, mapped: Iterable[Any], values: list[Any], last: float) -> float:
        perf = time.perf_counter
        append = values.append
        floor = self._floor
        for value in mapped:
            now = perf()
            append(value)
            if now - last > floor:
                floor = self._keep(now - last, len(values) - 1, 1)
            last = now
        return last

    def _in_groups(self, mapped: Iterator[Any], values: list[Any], last: float, size: int) -> float:
        """Groups of *size* tasks, resized after each to take about GROUP_SECONDS."""
        perf = time.perf_counter
        extend = values.extend
        islice = itertools.islice
        floor = self._floor
        while True:
            first = len(values)
            extend(islice(mapped, size))  # (on an exception, values keeps the results before it)
            now = perf()
            done = len(values) - first
            if done < size:
                if done and now - last > floor:
                    self._keep(now - last, first, done)
                return now
            if now - last > floor:
                floor = self._keep(now - last, first, done)
            size = max(2, min(4 * size, int(size * GROUP_SECONDS / max(now - last, 1e-9))))
            last = now

    def _keep(self, seconds: float, position: int, n_tasks: int) -> float:
        if len(self._slowest) < N_SLOWEST:
            heapq.heappush(self._slowest, (seconds, position, n_tasks))
        else:
            heapq.heapreplace(self._slowest, (seconds, position, n_tasks))
        self._floor = self._slowest[0][0] if len(self._slowest) == N_SLOWEST else 0.0
        return self._floor

    def stats(self, chunk: RunChunk, waiting_time: float, nested: list[Any], in_process: bool) -> ChunkStats:
        """What goes back with the chunk. Of its slowest tasks, only those that can still be among the call's
        slowest are described and sent: not those shorter than the 5 this worker has sent for the call already."""
        sent = _sent_for(chunk.job_id)
        slowest: list[tuple[float, str]] = []
        for seconds, position, n_tasks in sorted(self._slowest, reverse=True):
            if len(sent) == N_SLOWEST and seconds <= sent[0]:
                break
            if len(sent) < N_SLOWEST:
                heapq.heappush(sent, seconds)
            else:
                heapq.heapreplace(sent, seconds)
            text = describe_args(chunk.items[position], chunk.call_mode)
            slowest.append((seconds, text + (f" (+{n_tasks - 1} more tasks timed together)" if n_tasks > 1 else "")))
        return ChunkStats(self.started, time.monotonic(), self.working_time, self.n_completed, slowest, waiting_time,
                          peak_rss() if in_process else 0, estimate_bytes(chunk.items), nested)


_sent = threading.local()  # per worker: job_id -> min-heap of the task durations it has sent for that call
_SENT_JOBS = 8  # calls remembered per worker (the oldest is forgotten: at worst it sends a few entries too many)


def _sent_for(job_id: int) -> list[float]:
    jobs: dict[int, list[float]] | None = getattr(_sent, "jobs", None)
    if jobs is None:
        jobs = _sent.jobs = {}
    sent = jobs.get(job_id)
    if sent is None:
        if len(jobs) >= _SENT_JOBS:
            del jobs[next(iter(jobs))]
        sent = jobs[job_id] = []
    return sent


def describe_args(item: Any, call_mode: int) -> str:
    """A task's arguments as MPIRE shows them ("Arg 0: 13 | Arg y: 2"), each repr shortened, capped in all."""
    args: Iterable[Any]
    kwargs: dict[Any, Any] = {}
    if call_mode == CALL_APPLY:
        args, kwargs = item
    elif isinstance(item, dict):
        args, kwargs = (), item
    elif call_mode == CALL_MPIRE:
        whole = isinstance(item, str | bytes) or is_numpy_array(item) or not isinstance(item, Iterable)
        args = (item,) if whole else item
    else:
        args = item if isinstance(item, tuple) else (item,)
    try:
        parts = [f"Arg {number}: {_short(arg)}" for number, arg in enumerate(args)]
    except Exception:  # an item that cannot be iterated a second time, or whose iteration raises
        parts = [f"Arg 0: {_short(item)}"]
    parts += [f"Arg {key}: {_short(value)}" for key, value in kwargs.items()]
    text = " | ".join(parts)
    return text if len(text) <= ARGS_TEXT_LIMIT else text[: ARGS_TEXT_LIMIT - 3] + "..."


@functools.cache
def _repr() -> reprlib.Repr:
    """A repr that shortens long strings, numbers and containers (and takes a bounded time on the builtin ones)."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = 80
    short.maxlong = 40
    return short


def _short(obj: Any) -> str:
    try:
        return _repr().repr(obj)
    except Exception:  # a broken __repr__ must not break the report
        return f"<{type(obj).__qualname__} object>"


def estimate_bytes(items: list[Any]) -> int:
    """About how many bytes of data the tasks' arguments hold: a few items measured, scaled to the chunk."""
    n = len(items)
    sample = items if n <= _SIZE_SAMPLES else items[:: n // _SIZE_SAMPLES][:_SIZE_SAMPLES]
    total = 0
    for item in sample:
        total += _SCALAR_BYTES if type(item) in _SCALARS else _size(item, 0)
    return total * n // len(sample) if sample else 0


def _size(obj: Any, depth: int) -> int:
    """The data an object holds: buffers and strings by their length, containers (two levels) by a sample of
    their elements, anything else by sys.getsizeof."""
    nbytes = getattr(obj, "nbytes", None)  # numpy arrays, memoryviews
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(obj, bytes | bytearray | str):
        return len(obj)
    if depth < 2 and isinstance(obj, tuple | list | dict):
        elements = list(obj.values())[:16] if isinstance(obj, dict) else obj[:16]
        if elements:
            return int(sum(_size(e, depth + 1) for e in elements) * len(obj) / len(elements))
    try:
        return sys.getsizeof(obj)
    except Exception:  # (a __sizeof__ that raises)
        return 0


_peak = (0, 0.0, 0)  # this process's last peak_rss(), when (time.monotonic()) to read it again, and its pid


def peak_rss() -> int:
    """This process's peak resident memory in bytes (read at most every PEAK_RSS_INTERVAL): the kernel's
    high-water mark, which also sees a peak inside a task (psutil reads only the current size), or psutil's
    current size where there is none."""
    global _peak
    now = time.monotonic()
    if now < _peak[1] and _peak[2] == os.getpid():  # (a forked child has a peak of its own)
        return _peak[0]
    try:
        import resource
    except ImportError:  # (Windows)
        import psutil

        peak = int(psutil.Process().memory_info().rss)
    else:
        kib_or_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = int(kib_or_bytes if sys.platform == "darwin" else kib_or_bytes * 1024)  # KiB on Linux
    _peak = (peak, now + PEAK_RSS_INTERVAL, os.getpid())
    return peak
