"""Insights of calls: which calls are watched, and who gets their reports.

``with parallelize.insights() as report:`` watches every parallel call made in the block, in this thread or asyncio
task (a ContextVar holds the active collectors, so another thread's calls are not seen); ``with f.insights()``
watches the calls of one decorated function. A watched call's job carries ``collect``: its workers time each task
(_task_timer) and answer ChunkStats, which the engine feeds to the call's CallRecord (_call_record). When the job
ends, the record becomes a CallReport and goes to the collectors that were active when the call started.

A task of a watched call runs with a collector of its own (NestedCalls), so the calls it makes itself (in a
worker process, a worker thread, or serial mode) come back with its chunk, as that call's ``nested`` reports.

Nothing here runs for a call nobody watches but one ContextVar read per call, and this module imports nothing
that the package has not imported already.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._log import debugging

if TYPE_CHECKING:
    from types import TracebackType

    from ._call_record import CallReport
    from ._insights_report import InsightsReport
    from ._job import Job
    from ._runner import Runner


class Collector:
    """Receives the reports of the calls it watches (all of them, or one decorated function's: *owner*)."""

    def __init__(self, owner: object | None = None) -> None:
        self.owner = owner
        self.calls: list[CallReport] = []
        self._lock = threading.Lock()  # reports arrive from whichever thread ends a job

    def wants(self, owner: object | None) -> bool:
        return self.owner is None or self.owner is owner

    def add(self, report: CallReport) -> None:
        with self._lock:
            self.calls.append(report)

    def reports(self) -> list[CallReport]:
        with self._lock:
            return list(self.calls)


_active: contextvars.ContextVar[tuple[Collector, ...]] = contextvars.ContextVar("parallelize_insights", default=())


class Insights:
    """The context manager of ``parallelize.insights()`` and ``f.insights()``: entering it starts collecting
    and gives the InsightsReport, which fills as the calls made in the block end."""

    def __init__(self, owner: object | None = None) -> None:
        self._collector = Collector(owner)
        self._token: contextvars.Token[tuple[Collector, ...]] | None = None

    def __enter__(self) -> InsightsReport:
        from ._insights_report import InsightsReport

        if self._token is not None:
            raise RuntimeError("this insights() block is active already: call insights() again for another one")
        self._token = _active.set((*_active.get(), self._collector))
        return InsightsReport(self._collector.reports)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._token is not None:
            _active.reset(self._token)
            self._token = None


def insights() -> Insights:
    """Collect the insights of every parallel call made in a ``with`` block: where each worker's time went, the
    slowest tasks, and advice when the workers waited.

    Calls made in this thread (or asyncio task) are watched, and so are the calls their tasks make; other threads'
    calls are not. A call that ends after the block (an imap read later) is added when it ends.

    Returns:
        A context manager whose ``__enter__`` returns the ``InsightsReport``.

    Example:
        ```python
        with parallelize.insights() as report:
            f(items)
        print(report)
        ```
    """
    return Insights()


class NestedCalls:
    """Around the tasks of a watched chunk: gathers the reports of the calls they make, in place of any collector
    (entered once per chunk: a plain class, cheaper than a generator-based context manager)."""

    __slots__ = ("_token",)

    def __enter__(self) -> list[CallReport]:
        collector = Collector()
        self._token = _active.set((collector,))
        return collector.calls

    def __exit__(self, *exc_info: object) -> None:
        _active.reset(self._token)


def watch(job: Job, runner: Runner, func: Callable[..., Any], owner: object | None = None) -> None:
    """Make *job* a watched call if a collector active here wants it (*owner*: the decorated function's, or None),
    or if its pool has enable_insights (the pool's own insights, and a debug log line of each call's report)."""
    collectors = _active.get()
    if collectors:
        collectors = tuple(c for c in collectors if c.wants(owner))
    pool_wide = runner.settings.enable_insights
    if not collectors and not pool_wide:
        return
    job.collect = True
    log = pool_wide and debugging()
    if collectors or log:
        from ._call_record import CallRecord

        record = job.record = CallRecord(func, runner, collectors, log)
        job.finish_listeners.append(record.finish)
