"""What a call tells the dashboard: a renderer of its progress (like a progress bar's) that publishes a record.

The renderer runs in the parent only, in the thread that advances the call's bar (the engine's driver) and the one
that closes it (the caller's). It publishes to a sink: the registry of a dashboard in this process, or the sender
of a connection to a dashboard in another one. Records are plain JSON values: names, counts, texts.
"""

from __future__ import annotations

import itertools
import linecache
import logging
import os
import socket
import time
import traceback
from typing import TYPE_CHECKING, Any, Protocol

from .._errors import RemoteTraceback
from .._frames import UserSite
from .._pool_insights import PHASES

if TYPE_CHECKING:
    from .._job import Job
    from .._progress import Renderer
    from .._runner import Runner

UPDATE_INTERVAL = 0.1  # seconds: a call's counts are published at most this often while it runs
INSIGHTS_INTERVAL = 1.0  # seconds between two reads of the workers' insights while the call runs
_OUTCOMES = {"done": "done", "failed": "failed", "stopped": "cancelled"}

logger = logging.getLogger("parallelize")


class Sink(Protocol):
    def publish(self, call_id: str, fields: dict[str, Any]) -> None: ...


class Feed:
    """A dashboard's side of parallelize._progress.DashboardFeed: one CallRecorder per call, ids unique here."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._ids = itertools.count(1)
        self._process = f"pid {os.getpid()} on {socket.gethostname()}"

    def open(self, name: str, job: Job, runner: Runner | None) -> Renderer:
        return CallRecorder(self._sink, str(next(self._ids)), name, self._process, job, runner)


class CallRecorder:
    """One call's record: who, where from, how far; at the end how it ended and why it failed."""

    def __init__(self, sink: Sink, call_id: str, name: str, process: str, job: Job, runner: Runner | None) -> None:
        self._sink = sink
        self._id = call_id
        self._job = job
        self._runner = runner
        self._t0 = time.monotonic()
        self._sent = self._t0
        self._insights_read = self._t0
        self._broken = False
        site = UserSite()  # opened in the caller's thread: the user's line that made the call is on its stack
        self._publish({
            "name": name, "process": process, "started": time.time(), "elapsed": 0.0,
            "site": f"{site.filename}:{site.lineno}", "code": linecache.getline(site.filename, site.lineno).strip(),
            "state": "running", "done": 0, "total": job.n_tasks, "failed": 0, "insights": self._insights(),
        })

    def update(self, done: int, total: int | None, failed: int) -> None:
        now = time.monotonic()
        if now - self._sent < UPDATE_INTERVAL and done != total:
            return  # the next tick (or the end) brings the count
        self._sent = now
        fields: dict[str, Any] = {"done": done, "total": total, "failed": failed, "elapsed": now - self._t0}
        if now - self._insights_read >= INSIGHTS_INTERVAL:
            self._insights_read = now
            fields["insights"] = self._insights()
        self._publish(fields)

    def close(self, done: int, total: int | None, failed: int, outcome: str) -> None:
        error = self._job.error if outcome == "failed" else None
        self._publish({
            "done": done, "total": total, "failed": failed, "elapsed": time.monotonic() - self._t0,
            "state": _OUTCOMES[outcome], "error": None if error is None else describe(error),
            "insights": self._insights(),
        })

    def _publish(self, fields: dict[str, Any]) -> None:
        """Publish, never failing the call: a dashboard that cannot take the record loses this call, with a log."""
        if self._broken:
            return
        try:
            self._sink.publish(self._id, fields)
        except Exception:
            self._broken = True
            logger.warning("parallelize: the dashboard stops showing %s: its record could not be published",
                           fields.get("name", f"call {self._id}"), exc_info=True)

    def _insights(self) -> dict[str, Any] | None:
        """The workers' insights (enable_insights=True), for the whole pool the call runs on: read in the thread
        that drives the pool, or once the call is over."""
        collector = None if self._runner is None else self._runner.insights
        if collector is None:
            return None
        try:
            workers = [{"tasks": tasks, **{phase: collector.seconds[phase][i] for phase in PHASES}}
                       for i, tasks in enumerate(collector.n_completed)]
            slowest = [[float(seconds), str(args)] for seconds, args in sorted(collector.slowest, reverse=True)]
        except (RuntimeError, IndexError):  # changed under us by a driver in another thread: the next read gets them
            return None
        return {"workers": workers, "slowest": slowest}


def describe(error: BaseException) -> dict[str, Any]:
    """A call's error for the page: its type and message, its notes (which task, called with which argument), and
    the worker's traceback when it came from a worker (else the parent's)."""
    cause = error.__cause__
    if isinstance(cause, RemoteTraceback):
        trace = cause.traceback_text
    else:
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return {"type": getattr(error, "type_name", None) or type(error).__qualname__, "message": str(error),
            "notes": [str(note) for note in getattr(error, "__notes__", ())], "traceback": trace}

