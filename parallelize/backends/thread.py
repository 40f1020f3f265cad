"""Worker threads (start method "threading"): the worker loop runs in daemon threads, messages pass as objects.

Threads cannot be killed: a timed-out task keeps running in its thread until it returns; the engine abandons
that thread and starts another.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import MutableSequence
from typing import Any

from .. import _clock
from .._worker import WorkerSpec, run_worker
from ._base import Backend, Event, Exited, Received


class _ThreadWorker:
    """One worker thread, and its Channel: messages pass as objects through queues."""

    def __init__(self, key: int, spec: WorkerSpec, events: queue.SimpleQueue[Any]) -> None:
        self.key = key
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()  # None: no more messages (EOF)
        self.events = events
        self.clock: list[int] = [0] * _clock.SIZE
        # Set once its Exited event is queued (it ended, or kill() disowned it). A disowned thread runs on until
        # its task returns; nothing it says after that may be reported.
        self.ended = False
        self.lock = threading.Lock()  # orders the worker's messages against its Exited event
        self.thread = threading.Thread(target=self._main, args=(spec,), name=f"parallelize-worker-{spec.worker_id}",
                                       daemon=True)

    def _main(self, spec: WorkerSpec) -> None:
        exitcode = 1  # as a process whose loop raised (the exception goes on to threading.excepthook)
        try:
            run_worker(spec, self, self.clock)
            exitcode = 0
        finally:
            self.end(exitcode)

    def recv(self) -> Any:
        message = self.inbox.get()
        if message is None:
            raise EOFError
        return message

    def send(self, message: Any) -> None:
        with self.lock:
            if not self.ended:
                self.events.put(Received(self.key, message))

    def end(self, exitcode: int | None) -> None:
        with self.lock:
            if not self.ended:
                self.ended = True
                self.events.put(Exited(self.key, exitcode, tuple(self.clock)))


class ThreadBackend(Backend):
    supports_kill = False
    supports_interrupt = False
    name = "threading"

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._workers: dict[int, _ThreadWorker] = {}

    def start_worker(self, key: int, spec: WorkerSpec) -> None:
        worker = _ThreadWorker(key, spec, self._events)
        worker.thread.start()
        self._workers[key] = worker  # (only now: a thread that could not start is no worker)

    def send(self, key: int, message: Any, *, hold: bool = False) -> int:
        self._workers[key].inbox.put(message)  # (a queue's put is cheap: nothing to hold)
        return 0  # handed over as it is: no copy

    def write_held(self) -> None:
        pass  # nothing is held

    def wait(self, timeout: float | None) -> list[Event]:
        try:
            first = self._events.get(timeout=timeout)
        except queue.Empty:
            return []
        events: list[Event] = []
        item = first
        while True:
            if item is not None:
                events.append(item)
                if type(item) is Exited:
                    self._workers.pop(item.key, None)
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return events

    def wakeup(self) -> None:
        self._events.put(None)

    def clock(self, key: int) -> MutableSequence[int]:
        return self._workers[key].clock

    def pid(self, key: int) -> int | None:
        return None

    def interrupt(self, key: int) -> None:
        pass  # a thread cannot be interrupted; it sees the cancellation before its next chunk

    def kill(self, key: int, grace: float) -> None:
        # A thread cannot be stopped from outside: disown it. It ends on its own when its task returns.
        worker = self._workers.get(key)  # forgotten when its Exited event is read, as for processes
        if worker is not None:
            worker.inbox.put(None)
            worker.end(None)

    def close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for worker in self._workers.values():
            worker.inbox.put(None)  # no more messages: idle workers end now, busy ones after their task
        for worker in self._workers.values():
            worker.thread.join(max(0.0, deadline - time.monotonic()))  # the rest are disowned
        self._workers.clear()
