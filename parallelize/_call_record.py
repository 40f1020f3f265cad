"""What a watched call measured: a CallRecord while it runs, fed by the engine (or the serial worker) with what its
workers report, then a CallReport for the collectors (see _insights).

Each worker's part of the call's wall time is split into phases that add up to it: start-up and init (of a worker
started during the call; counted from the call's start when the call had no worker in that slot), working (its
tasks), exit (a worker_exit during the call), and waiting (the rest: idle, or moving data).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from ._frames import is_library_file
from ._progress import callable_name

if TYPE_CHECKING:
    from ._insights import Collector
    from ._job import Job
    from ._messages import ChunkStats
    from ._runner import Runner

logger = logging.getLogger("parallelize")

N_SLOWEST = 5
MAX_SPANS = 4000  # per worker and call: beyond that, neighbouring spans are merged (the timeline keeps its shape)
SPAN_DETAIL = 2000  # gaps under 1/SPAN_DETAIL of a timeline's width are not shown: the spans around them merge


@dataclass(frozen=True)
class WorkerReport:
    """One worker's part in one call (or, in InsightsReport.workers, in every call on its pool)."""

    pool: str  # the function it ran
    worker_id: int
    n_completed: int
    start_up: float  # seconds: its process started during the call
    init: float  # seconds in worker_init during the call
    waiting: float  # seconds of the call's wall time in none of the other phases: idle, or moving data
    working: float  # seconds in the call's tasks
    exit: float  # seconds in worker_exit during the call
    peak_rss: int | None  # bytes: its process's peak resident memory; None for threads and serial mode
    spans: tuple[tuple[str, float, float], ...] = ()  # (phase, start, end) on time.monotonic(), for the timeline

    def phase(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass(frozen=True)
class CallReport:
    """One watched call: what ran, where it was called, and how its workers spent its wall time."""

    function: str
    call_site: str  # "file:line" of the call
    pool: str  # "processes (fork)", "threads" or "serial"
    n_jobs: int
    items: int  # tasks read from the input
    started: float  # time.monotonic()
    wall: float  # seconds from the call to its last result
    status: str  # "done", "failed (ErrorType)" or "cancelled"
    workers: tuple[WorkerReport, ...]
    slowest: tuple[tuple[float, str], ...]  # (seconds, arguments), longest first
    n_chunks: int
    arg_bytes: int  # estimated size of all the tasks' arguments
    nested: tuple[CallReport, ...] = field(default=())  # calls made by its tasks

    @property
    def working(self) -> float:
        return sum(w.working for w in self.workers)

    @property
    def n_completed(self) -> int:
        return sum(w.n_completed for w in self.workers)

    @property
    def efficiency(self) -> float:
        """Working time over what the workers could have worked: n_jobs * wall time."""
        return self.working / (self.n_jobs * self.wall) if self.wall > 0 else 0.0


class _Tally:
    """A worker's numbers while a call runs."""

    __slots__ = ("exit", "init", "n_completed", "peak_rss", "spans", "start_up", "working")

    def __init__(self) -> None:
        self.start_up = self.init = self.working = self.exit = 0.0
        self.n_completed = 0
        self.peak_rss = 0
        self.spans: list[tuple[str, float, float]] = []


class CallRecord:
    """One watched call while it runs: fed by the engine (or the serial worker) in the thread driving it."""

    def __init__(self, func: Callable[..., Any], runner: Runner, collectors: tuple[Collector, ...],
                 log: bool) -> None:
        self.started = time.monotonic()
        self.function = _function_name(func)
        self.call_site = _call_site()
        settings = runner.settings
        self.serial = runner.serial
        self.pool = "serial" if runner.serial else "threads" if settings.start_method == "threading" \
            else f"processes ({settings.start_method})"
        self.n_jobs = 1 if runner.serial else settings.n_jobs
        self._collectors = collectors
        self._log = log
        self._workers = [_Tally() for _ in range(self.n_jobs)]
        self._slowest: list[tuple[float, str]] = []
        self._n_chunks = 0
        self._arg_bytes = 0
        self._nested: list[CallReport] = []

    def chunk(self, worker_id: int, stats: ChunkStats) -> None:
        tally = self._workers[worker_id]
        tally.working += stats.working_time
        tally.n_completed += stats.n_completed
        tally.peak_rss = max(tally.peak_rss, stats.peak_rss)
        _add_span(tally.spans, "working", stats.started, stats.ended)
        if stats.slowest:
            self._slowest = sorted(self._slowest + stats.slowest, reverse=True)[:N_SLOWEST]
        self._n_chunks += 1
        self._arg_bytes += stats.arg_bytes
        self._nested += stats.nested

    def worker_started(self, worker_id: int, start_up_time: float, init_time: float) -> None:
        """A worker became ready (just now): it started (and ran its init) during the call. Its start-up counts from
        the call's start if the call had it from nothing: the pool was starting meanwhile (forking the workers
        before it, say)."""
        now = time.monotonic()
        tally = self._workers[worker_id]
        ready = now - init_time
        began = min(ready, self.started if not tally.spans else ready - start_up_time)
        tally.start_up += ready - began
        tally.init += init_time
        tally.spans += [("start_up", began, ready), ("init", ready, now)]

    def worker_exited(self, worker_id: int, exit_time: float) -> None:
        now = time.monotonic()
        self._workers[worker_id].exit += exit_time
        self._workers[worker_id].spans.append(("exit", now - exit_time, now))

    def finish(self, job: Job) -> None:
        """The job ended: its report goes to the collectors (and the debug log). Runs in the loop that serves
        every call of the pool: an error here is logged, never raised into that loop."""
        try:
            report = self.report(job)
            for collector in self._collectors:
                collector.add(report)
            if self._log:
                from ._insights_report import InsightsReport

                logger.debug("insights of a call of %s:\n%s", self.function, InsightsReport(lambda: [report]))
        except Exception:
            logger.exception("parallelize: the insights of a call of %s could not be made", self.function)

    def report(self, job: Job) -> CallReport:
        wall = time.monotonic() - self.started
        status = "cancelled" if job.cancelled else "done" if job.error is None \
            else f"failed ({type(job.error).__name__})"
        workers = tuple(
            WorkerReport(self.function, worker_id, t.n_completed, t.start_up, t.init,
                         max(0.0, wall - t.start_up - t.init - t.working - t.exit), t.working, t.exit,
                         None if self.serial or self.pool == "threads" else t.peak_rss or None,
                         tuple(_coarse(t.spans, wall)))
            for worker_id, t in enumerate(self._workers))
        return CallReport(self.function, self.call_site, self.pool, self.n_jobs, job.tasks_read, self.started, wall,
                          status, workers, tuple(self._slowest), self._n_chunks, self._arg_bytes,
                          tuple(self._nested))


def _add_span(spans: list[tuple[str, float, float]], phase: str, start: float, end: float) -> None:
    spans.append((phase, start, end))
    if len(spans) > MAX_SPANS:  # (at most SPAN_DETAIL gaps can be wider than 1/SPAN_DETAIL of the whole)
        spans[:] = _coarse(spans, max(e for _, _, e in spans) - min(s for _, s, _ in spans))


def _coarse(spans: list[tuple[str, float, float]], scale: float) -> list[tuple[str, float, float]]:
    """*spans* with neighbours of the same phase merged where the gap between them is under 1/SPAN_DETAIL of
    *scale* (what a timeline that wide cannot show)."""
    gap = scale / SPAN_DETAIL
    out: list[tuple[str, float, float]] = []
    for phase, start, end in sorted(spans, key=lambda span: span[1]):
        if out and out[-1][0] == phase and start - out[-1][2] <= gap:
            out[-1] = (phase, out[-1][1], max(end, out[-1][2]))
        else:
            out.append((phase, start, end))
    return out


def _function_name(func: Callable[..., Any]) -> str:
    if hasattr(func, "parallelize_callable"):  # a decorated function's TaskTarget: the user's function
        func = getattr(func, "plain", func)
    return callable_name(func)


def _call_site() -> str:
    """Where the user's code made the call: "file:line" of its first frame outside this package."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and is_library_file(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    path = frame.f_code.co_filename
    with contextlib.suppress(ValueError):  # (another drive, on Windows)
        relative = os.path.relpath(path)
        if not relative.startswith(".."):
            path = relative
    return f"{path}:{frame.f_lineno}"
