"""Workers on a Dask cluster (``backend="dask"``): each worker is one long-running Dask task that connects back.

A pool of n workers submits n tasks (``_dask_worker.serve``) for its whole life. Each connects to a TCP port this
backend listens on, authenticates with a one-time token, gets its WorkerSpec (shared objects included: sent once
per worker) and runs the ordinary worker loop. Chunks and results then travel over that connection in the process
backend's frames, never through the scheduler, so a chunk costs a network round trip, not a Dask task.

What differs from local processes, as capabilities the engine asks for:
- ``supports_interrupt`` is False: a task runs in a Dask worker's thread, which no signal reaches. A cancelled
  job's chunks stop before their next chunk; a task past its ``task_timeout`` is reported at once, and its worker
  disowned.
- ``supports_kill`` is False: a worker is disowned instead (its connection closed, its Dask task cancelled). The
  task's thread runs on until the running task returns, as with Dask's own cancel; the Dask worker process, which
  may run other people's work, is never killed.
- The clock is not shared memory: the worker reports it over the connection when it changes (at most every
  ``_dask_worker.CLOCK_INTERVAL`` seconds), its START_NS translated to this machine's monotonic clock. The
  parent's writes (a cancelled job's mark) are sent to the worker as they are made.

A worker's end is its connection's end: after its Goodbye (exit status 0, or 1 when its loop raised), or without
one (its Dask worker was lost: exit status None, with the reason). A task that ends without ever connecting (it
could not reach this machine, or failed to start) ends its worker likewise, with Dask's error as the reason.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import os
import secrets
import selectors
import socket
import threading
import time
import weakref
from collections.abc import Callable, MutableSequence
from typing import Any

from .. import _clock
from .._config import DASK_HOST_VARIABLE
from .._log import logger
from .._serialize import dumps_by_value
from .._worker import WorkerSpec
from . import _dask_cluster
from ._base import Backend, Event, Exited, Received
from ._dask_worker import EXIT_REFUSED, TOKEN_SIZE, ClockState, ClockWrite, Goodbye, Spec, serve
from ._pipes import FrameReader, ParentWriter, decode_answer, encode

_FORWARDED = (_clock.CANCEL, _clock.TIMEOUT_NS)  # the clock slots the parent writes
_task_names = itertools.count()
TASK_POLL = 0.1  # seconds between looks at the Dask tasks of workers that have not connected yet
TASK_POLL_CONNECTED = 1.0  # ... and of connected ones (a lost worker's connection may never say so)


class _RemoteClock(list[int]):
    """The parent's copy of a worker's clock: read as it was last reported, written through to the worker."""

    def __init__(self, forward: Callable[[int, int], None]) -> None:
        super().__init__([0] * _clock.SIZE)
        self._forward = forward
        self.at_worker: tuple[int, ...] = (0,) * _clock.SIZE  # the clock as the worker last reported it

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        if index in _FORWARDED:
            self._forward(index, value)

    def reported(self, state: ClockState) -> None:
        """The worker's report: what it runs, its START_NS moved onto this machine's clock."""
        self.at_worker = state.values
        start = state.values[_clock.START_NS]
        if start:
            start = time.monotonic_ns() - max(0, state.now_ns - start)
            if start == 0:
                start = 1  # (0 means "none")
        list.__setitem__(self, _clock.START_NS, start)
        list.__setitem__(self, _clock.INDEX, state.values[_clock.INDEX])
        list.__setitem__(self, _clock.TAG, state.values[_clock.TAG])


class _DaskWorker:
    def __init__(self, key: int, token: bytes, spec_frame: list[memoryview],
                 forward: Callable[[int, int], None]) -> None:
        self.key = key
        self.token = token
        self.future: Any = None
        self.sock: socket.socket | None = None
        self.reader: FrameReader | None = None
        self.writer: ParentWriter | None = None
        self.unsent: list[memoryview] = list(spec_frame)  # written once connected, the Spec first
        self.held: list[memoryview] = []
        self.clock = _RemoteClock(forward)
        self.status: int | None = None  # from its Goodbye
        self.reason = ""  # from its Goodbye: why it failed, where only the worker knows
        self.ended = False  # its Exited is reported or queued: nothing more about it is
        self.task_seen = False  # its Dask task's end was looked at (see _end_tasks)
        self.want_write = False


class DaskBackend(Backend):
    supports_kill = False
    supports_interrupt = False
    name = "dask"

    def __init__(self, cluster: Any = None, n_workers: int | None = None) -> None:
        self._client = _dask_cluster.client_for(cluster, n_workers)
        self._pid = os.getpid()
        self._workers: dict[int, _DaskWorker] = {}
        self._holding: set[int] = set()
        self._exited: list[Event] = []  # Exited events of disowned workers, for the next wait()
        self._selector = selectors.DefaultSelector()
        self._listener = socket.create_server((_listen_host(self._client), 0), backlog=socket.SOMAXCONN)
        self._listener.setblocking(False)
        self._address = self._listener.getsockname()[:2]
        self._selector.register(self._listener, selectors.EVENT_READ, ("listen", None))
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._wake_lock = threading.Lock()
        self._wake_open = True
        self._closed = False
        # A backend dropped without close() (its engine garbage-collected) still lets go of its sockets, pipe and
        # workers. Not at exit: the pool cache closes pools first, with their exit hooks (see _pool_cache).
        self._finalizer = weakref.finalize(self, _release, self._pid, self._workers, self._selector, self._listener,
                                           (self._wake_r, self._wake_w))
        self._finalizer.atexit = False

    # --- starting -------------------------------------------------------------------------------------------

    def start_worker(self, key: int, spec: WorkerSpec) -> None:
        token = secrets.token_bytes(TOKEN_SIZE)
        spec = spec._replace(settings=spec.settings._replace(cluster=None))  # (a Client stays here)
        worker = _DaskWorker(key, token, encode(Spec(dumps_by_value(spec))),
                             lambda index, value: self._forward(key, index, value))
        # No worker restrictions: Dask puts each task on a free thread, so a pool's workers, submitted together,
        # spread over the cluster (and seceded ones leave their thread free for the next pool's); an address chosen
        # here could be of a Dask worker that is gone, whose restricted tasks then wait for ever.
        worker.future = self._client.submit(serve, self._address, token, pure=False,
                                            key=f"parallelize-worker-{os.getpid()}-{next(_task_names)}")
        self._workers[key] = worker

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self._selector.register(sock, selectors.EVENT_READ, ("token", [sock, b""]))

    def _authenticate(self, pending: list[Any]) -> None:
        """Read a new connection's token; attach it to the worker it names, or close it."""
        sock: socket.socket = pending[0]
        try:
            data = sock.recv(TOKEN_SIZE - len(pending[1]))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        pending[1] += data
        if data and len(pending[1]) < TOKEN_SIZE:
            return
        self._selector.unregister(sock)
        worker = next((w for w in self._workers.values()
                       if hmac.compare_digest(w.token, pending[1]) and w.sock is None and not w.ended), None)
        if worker is None:  # a stranger, a worker already connected (Dask ran its task twice), or one disowned
            sock.close()
            return
        worker.sock = sock
        worker.reader = FrameReader(sock.fileno())
        worker.writer = ParentWriter(sock.fileno())
        self._selector.register(sock, selectors.EVENT_READ, ("conn", worker.key))
        parts, worker.unsent = worker.unsent, []
        self._write(worker, parts)

    # --- messages -------------------------------------------------------------------------------------------

    def send(self, key: int, message: Any, *, hold: bool = False) -> int:
        worker = self._workers[key]
        parts = encode(message)  # a serialisation error is the caller's to report
        size = sum(map(len, parts))
        if worker.ended:
            return size
        if hold:
            worker.held += parts
            self._holding.add(key)
            return size
        if worker.held:
            parts, worker.held = worker.held + parts, []
        self._write(worker, parts)
        return size

    def _forward(self, key: int, index: int, value: int) -> None:
        if key in self._workers:
            self.send(key, ClockWrite(index, value))  # (behind what is held for it, as any message)

    def write_held(self) -> None:
        for key in self._holding:
            worker = self._workers.get(key)
            if worker is not None and worker.held:
                parts, worker.held = worker.held, []
                self._write(worker, parts)
        self._holding.clear()

    def _write(self, worker: _DaskWorker, parts: list[memoryview]) -> None:
        if worker.ended:
            return
        if worker.writer is None:
            worker.unsent += parts
            return
        try:
            pending = worker.writer.send(parts)
        except OSError:  # the connection is gone: its end is read from it
            worker.writer.outbox.clear()
            return
        if pending and not worker.want_write:
            worker.want_write = True
            self._selector.modify(worker.writer.fd, selectors.EVENT_READ | selectors.EVENT_WRITE, ("conn", worker.key))

    def _flush(self, worker: _DaskWorker) -> None:
        assert worker.writer is not None
        try:
            pending = worker.writer.flush()
        except OSError:
            pending = False
            worker.writer.outbox.clear()
        if not pending and worker.want_write:
            worker.want_write = False
            self._selector.modify(worker.writer.fd, selectors.EVENT_READ, ("conn", worker.key))

    # --- events ---------------------------------------------------------------------------------------------

    def wait(self, timeout: float | None) -> list[Event]:
        if self._holding:
            self.write_held()
        events, self._exited = self._exited, []
        if events:
            timeout = 0
        else:
            # A task's end is seen by looking at it (a done-callback would run in Dask's threads, which refuse
            # work at interpreter exit): soon while a worker has not connected, now and then after that.
            poll = TASK_POLL if any(w.sock is None for w in self._workers.values()) else TASK_POLL_CONNECTED
            timeout = poll if timeout is None else min(timeout, poll)
        for selector_key, mask in self._selector.select(timeout):
            kind, data = selector_key.data
            if kind == "conn":
                worker = self._workers.get(data)
                if worker is None:
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._flush(worker)
                if mask & selectors.EVENT_READ:
                    self._read(worker, events)
            elif kind == "token":
                self._authenticate(data)
            elif kind == "listen":
                self._accept()
            else:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
        self._end_tasks(events)
        return events

    def _read(self, worker: _DaskWorker, events: list[Event]) -> None:
        assert worker.reader is not None
        try:
            frames, eof = worker.reader.read_available()
        except OSError:  # reset by the peer: its worker is gone
            frames, eof = [], True
        for frame in frames:
            message = decode_answer(frame)
            kind = type(message)
            if kind is ClockState:
                worker.clock.reported(message)
            elif kind is Goodbye:
                worker.status, worker.reason = message.status, message.reason
            elif not worker.ended:
                events.append(Received(worker.key, message, len(frame)))
        if eof:
            reason = worker.reason if worker.status is not None else "its connection to the Dask worker was lost"
            self._end(worker, worker.status, reason, events)

    def _end_tasks(self, events: list[Event]) -> None:
        """Workers whose Dask task ended: those that never connected end with Dask's reason. A connected one ends
        when its connection does, unless Dask ran its task again elsewhere (its worker was lost, and the second
        run found its token taken)."""
        for worker in [w for w in self._workers.values()
                       if not w.ended and not w.task_seen and w.future.status != "pending"]:
            worker.task_seen = True
            future = worker.future
            if worker.sock is not None:
                if future.status == "finished" and future.result() == EXIT_REFUSED:
                    self._end(worker, None, "its Dask worker was lost", events)
                continue
            if future.status == "error":
                error = future.exception()
                reason = f"its Dask task failed: {type(error).__name__}: {error}"
                logger().warning("a parallelize worker task failed on the Dask cluster: %s: %s",
                                 type(error).__name__, error)
                self._end(worker, 1, reason, events)
            elif future.status == "finished":
                self._end(worker, future.result(), f"its Dask task could not connect back to "
                          f"{self._address[0]}:{self._address[1]} (set {DASK_HOST_VARIABLE} to an address of this "
                          "machine the workers can reach)", events)
            else:
                self._end(worker, None, f"its Dask task was {future.status}", events)

    def _end(self, worker: _DaskWorker, status: int | None, reason: str, events: list[Event]) -> None:
        """Report the worker's end once, and let go of its connection."""
        if not worker.ended:
            worker.ended = True
            events.append(Exited(worker.key, status, tuple(worker.clock), reason))
        self._workers.pop(worker.key, None)
        self._holding.discard(worker.key)
        self._disconnect(worker)

    def _disconnect(self, worker: _DaskWorker) -> None:
        _disconnect(worker, self._selector)

    def wakeup(self) -> None:
        with self._wake_lock:
            if self._wake_open:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"\0")

    # --- the rest of the contract ---------------------------------------------------------------------------

    def clock(self, key: int) -> MutableSequence[int]:
        return self._workers[key].clock

    def pid(self, key: int) -> int | None:
        return None  # a process of the cluster, perhaps on another machine, and never ours to signal

    def interrupt(self, key: int) -> None:
        pass  # no signal reaches a Dask task's thread: the worker sees a cancellation before its next chunk

    def kill(self, key: int, grace: float) -> None:
        """Disown the worker: its Exited now, its connection closed (its loop ends once its task returns)."""
        worker = self._workers.get(key)
        if worker is not None and not worker.ended and worker.future.status == "pending":
            # (a worker whose task has returned ended on its own: its connection says how)
            worker.ended = True
            self._exited.append(Exited(key, None, tuple(worker.clock), "it was stopped"))
            self._disconnect(worker)
            self.wakeup()

    def close(self, timeout: float) -> None:
        if self._closed or os.getpid() != self._pid:
            return  # (in a child made by os.fork(), the connections are the parent's)
        self._closed = True
        deadline = time.monotonic() + timeout
        live = [w for w in self._workers.values() if not w.ended and w.sock is not None]
        for worker in live:
            with contextlib.suppress(OSError):
                assert worker.sock is not None
                worker.sock.shutdown(socket.SHUT_WR)  # no more messages: an idle worker ends now
        with selectors.DefaultSelector() as closing:
            for worker in live:
                closing.register(worker.sock, selectors.EVENT_READ, worker)  # type: ignore[arg-type]
            while live and (remaining := deadline - time.monotonic()) > 0:
                for selector_key, _ in closing.select(remaining):
                    worker = selector_key.data
                    if self._drained(worker):
                        closing.unregister(selector_key.fileobj)
                        live.remove(worker)
        with self._wake_lock:
            self._wake_open = False
            self._finalizer()

    def _drained(self, worker: _DaskWorker) -> bool:
        """Read and drop what a closing worker still sends; True once its connection has ended."""
        assert worker.reader is not None
        try:
            _, eof = worker.reader.read_available()
        except OSError:
            return True
        return eof


def _disconnect(worker: _DaskWorker, selector: selectors.BaseSelector) -> None:
    """Close a worker's connection and cancel its task (a running one runs on until it returns; a queued one never
    runs)."""
    if worker.sock is not None:
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(worker.sock)
        worker.sock.close()
        worker.sock = None
    if worker.future is not None:
        with contextlib.suppress(Exception):
            worker.future.cancel()
        worker.future = None


def _release(pid: int, workers: dict[int, _DaskWorker], selector: selectors.BaseSelector,
             listener: socket.socket, wake_fds: tuple[int, int]) -> None:
    """Let go of everything a backend holds: at the end of close(), or for a backend dropped without it."""
    if os.getpid() != pid:
        return  # (a forked child's copy: the sockets are the parent's)
    for worker in list(workers.values()):
        worker.ended = True
        _disconnect(worker, selector)
    workers.clear()
    for selector_key in list(selector.get_map().values()):
        if selector_key.data[0] == "token":  # connections that never sent a whole token
            selector_key.fileobj.close()  # type: ignore[union-attr]
    for fd in wake_fds:
        os.close(fd)
    selector.close()
    listener.close()


def _listen_host(client: Any) -> str:
    """An address of this machine the cluster's workers can reach: PARALLELIZE_DASK_HOST, else the one this
    machine uses to reach the scheduler."""
    configured = os.environ.get(DASK_HOST_VARIABLE)
    if configured:
        return configured
    from distributed.comm.addressing import get_address_host

    try:
        scheduler_host = get_address_host(client.scheduler.address)
    except ValueError:
        return _dask_cluster.LOCAL_HOST  # an in-process cluster (inproc://): its workers are threads here
    if scheduler_host in ("127.0.0.1", "localhost", "::1"):
        return _dask_cluster.LOCAL_HOST
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((scheduler_host, 9))  # no packet is sent: this only picks the route's local address
            return str(probe.getsockname()[0])
    except OSError:
        return socket.gethostbyname(socket.gethostname())
