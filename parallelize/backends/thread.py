"""Worker threads (start method "threading"): the worker loop runs in daemon threads, messages pass as objects.

Threads cannot be killed: a timed-out task keeps running in its thread until it returns; the engine abandons
that thread and starts another.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import MutableSequence
from typing import Any

from .. import _clock
from .._worker import WorkerSpec, run_worker
from ._base import Backend, Event, Exited, Received


class _QueueChannel:
    def __init__(self, key: int, inbox: queue.SimpleQueue[Any], events: queue.SimpleQueue[Any]) -> None:
        self._key = key
        self._inbox = inbox
        self._events = events

    def recv(self) -> Any:
        message = self._inbox.get()
        if message is None:
            raise EOFError
        return message

    def send(self, message: Any) -> None:
        self._events.put(Received(self._key, message))


class _ThreadWorker:
    def __init__(self, thread: threading.Thread, inbox: queue.SimpleQueue[Any]) -> None:
        self.thread = thread
        self.inbox = inbox
        self.clock: list[int] = [0] * _clock.SIZE


class ThreadBackend(Backend):
    supports_kill = False
    supports_interrupt = False
    name = "threading"

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._workers: dict[int, _ThreadWorker] = {}

    def start_worker(self, key: int, spec: WorkerSpec) -> None:
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        channel = _QueueChannel(key, inbox, self._events)
        worker = _ThreadWorker(threading.Thread(), inbox)

        def main() -> None:
            try:
                run_worker(spec, channel, worker.clock)
            finally:
                self._events.put(Exited(key, 0, tuple(worker.clock)))

        worker.thread = threading.Thread(target=main, name=f"parallelize-worker-{spec.worker_id}", daemon=True)
        self._workers[key] = worker
        worker.thread.start()

    def send(self, key: int, message: Any) -> None:
        self._workers[key].inbox.put(message)

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
            self._events.put(Exited(key, None, tuple(worker.clock)))

    def close(self, timeout: float) -> None:
        for worker in list(self._workers.values()):
            worker.inbox.put(None)
            worker.thread.join(timeout)
        self._workers.clear()
