"""Worker processes (fork, forkserver, spawn): one task pipe and one result pipe per worker.

The parent waits on every result pipe, every process sentinel and a wake-up pipe with one epoll selector, so a
dead worker is seen the moment it dies, and nothing polls.
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import selectors
import signal
import time
from collections.abc import MutableSequence
from multiprocessing.connection import Connection
from typing import Any

from .. import _worker
from .._serialize import dumps, dumps_by_value, loads
from .._worker import CLOCK_SIZE, WorkerSpec, run_worker
from ._base import Backend, Event, Exited, Received
from ._pipes import ChildChannel, FrameReader, ParentWriter, enlarge_pipe

# File descriptors that belong to the parent side of some pool. A forked child inherits them all; it closes them
# at once so that, e.g., a worker never keeps another worker's task pipe open (which would hide the parent's death
# from that worker).
_PARENT_ONLY_FDS: set[int] = set()

_WAKE = -1


def _child_entry(spec_payload: WorkerSpec | bytes, task_conn: Connection, result_conn: Connection,
                 clock: MutableSequence[float]) -> None:
    for fd in list(_PARENT_ONLY_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _PARENT_ONLY_FDS.clear()
    # The parent handles Ctrl-C and stops workers itself; a worker traceback per Ctrl-C would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable()
    _worker.in_worker_process = True
    spec = loads(spec_payload) if isinstance(spec_payload, bytes) else spec_payload
    if spec.cpu_ids:
        os.sched_setaffinity(0, spec.cpu_ids)
    # Pools started inside this worker must not leak this worker's own pipes into their workers.
    _PARENT_ONLY_FDS.update((task_conn.fileno(), result_conn.fileno()))
    run_worker(spec, ChildChannel(task_conn.fileno(), result_conn.fileno()), clock)


class _ProcWorker:
    def __init__(self, process: Any, task_conn: Connection, result_conn: Connection,
                 clock: MutableSequence[float]) -> None:
        self.process = process
        self.task_conn = task_conn
        self.result_conn = result_conn
        self.writer = ParentWriter(task_conn.fileno())
        self.reader = FrameReader(result_conn.fileno())
        self.clock = clock
        self.sentinel: int = process.sentinel
        self.result_open = True
        self.want_write = False


class ProcessBackend(Backend):
    supports_kill = True

    def __init__(self, start_method: str, *, daemon: bool) -> None:
        self.name = start_method
        self._ctx: Any = multiprocessing.get_context(start_method)
        self._daemon = daemon
        self._workers: dict[int, _ProcWorker] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", _WAKE))
        self._own_fds = (self._wake_r, self._wake_w, self._selector.fileno())
        _PARENT_ONLY_FDS.update(self._own_fds)
        self._closed = False

    @property
    def context(self) -> Any:
        return self._ctx

    def start_worker(self, key: int, spec: WorkerSpec) -> None:
        task_r, task_w = self._ctx.Pipe(duplex=False)
        result_r, result_w = self._ctx.Pipe(duplex=False)
        for conn in (task_w, result_r):
            enlarge_pipe(conn.fileno())
        clock = self._ctx.RawArray("d", CLOCK_SIZE)
        # Under fork the spec (shared objects included) is inherited as it is: copy-on-write, nothing pickled.
        payload: WorkerSpec | bytes = spec if self.name == "fork" else dumps_by_value(spec)
        process = self._ctx.Process(
            target=_child_entry,
            args=(payload, task_r, result_w, clock),
            name=f"parallelize-worker-{spec.worker_id}",
            daemon=self._daemon,
        )
        _PARENT_ONLY_FDS.update((task_w.fileno(), result_r.fileno()))
        try:
            process.start()
        except BaseException:
            for conn in (task_r, task_w, result_r, result_w):
                self._forget_fd(conn)
            raise
        finally:
            task_r.close()  # the child's ends: the parent must not keep them, or EOF is never seen
            result_w.close()
        os.set_blocking(task_w.fileno(), False)
        os.set_blocking(result_r.fileno(), False)
        worker = _ProcWorker(process, task_w, result_r, clock)
        self._workers[key] = worker
        self._selector.register(result_r.fileno(), selectors.EVENT_READ, ("read", key))
        self._selector.register(worker.sentinel, selectors.EVENT_READ, ("exit", key))

    def send(self, key: int, message: Any) -> None:
        worker = self._workers[key]
        payload = dumps(message)
        if worker.writer.send(payload) and not worker.want_write:
            worker.want_write = True
            self._selector.register(worker.writer.fd, selectors.EVENT_WRITE, ("write", key))

    def wait(self, timeout: float | None) -> list[Event]:
        events: list[Event] = []
        exited: list[int] = []
        for selector_key, _ in self._selector.select(timeout):
            kind, key = selector_key.data
            if kind == "read":
                self._read(key, events)
            elif kind == "write":
                self._flush(key)
            elif kind == "exit":
                exited.append(key)
            else:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
        for key in exited:  # after the reads: what a worker said before dying comes first
            events.extend(self._reap(key))
        return events

    def _read(self, key: int, events: list[Event]) -> None:
        worker = self._workers[key]
        frames, eof = worker.reader.read_available()
        events.extend(Received(key, loads(f)) for f in frames)
        if eof and worker.result_open:
            worker.result_open = False
            self._selector.unregister(worker.reader.fd)

    def _flush(self, key: int) -> None:
        worker = self._workers[key]
        try:
            pending = worker.writer.flush()
        except (BrokenPipeError, ConnectionResetError):
            pending = False
            worker.writer.outbox.clear()  # the worker is gone; its sentinel reports that
        if not pending:
            worker.want_write = False
            self._selector.unregister(worker.writer.fd)

    def _reap(self, key: int) -> list[Event]:
        worker = self._workers.pop(key, None)
        if worker is None:
            return []
        events: list[Event] = []
        if worker.result_open:
            # Drain what the worker wrote before it ended. EAGAIN instead of EOF means a grandchild still holds
            # the pipe; whatever it has not written by now is not coming.
            while True:
                frames, eof = worker.reader.read_available()
                events.extend(Received(key, loads(f)) for f in frames)
                if eof or not frames:
                    break
        worker.process.join(timeout=5)
        exitcode = worker.process.exitcode
        self._release(worker)
        events.append(Exited(key, exitcode))
        return events

    def _release(self, worker: _ProcWorker) -> None:
        for fd in (worker.reader.fd, worker.writer.fd, worker.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
        self._forget_fd(worker.task_conn)
        self._forget_fd(worker.result_conn)
        with contextlib.suppress(ValueError):
            worker.process.close()

    @staticmethod
    def _forget_fd(conn: Connection) -> None:
        with contextlib.suppress(OSError):
            _PARENT_ONLY_FDS.discard(conn.fileno())
            conn.close()

    def wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def clock(self, key: int) -> MutableSequence[float]:
        return self._workers[key].clock

    def pid(self, key: int) -> int | None:
        worker = self._workers.get(key)
        return None if worker is None else worker.process.pid

    def kill(self, key: int, grace: float) -> None:
        worker = self._workers.get(key)
        if worker is None:
            return
        process = worker.process
        if process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            process.join(grace)
            if process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.join(5)

    def close(self, timeout: float) -> None:
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        for worker in list(self._workers.values()):
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for key in list(self._workers):
            self.kill(key, grace=0.5)
            self._reap(key)
        self._closed = True
        _PARENT_ONLY_FDS.difference_update(self._own_fds)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
