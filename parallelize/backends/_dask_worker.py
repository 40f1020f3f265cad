"""The worker side of the Dask backend: one long-running Dask task per worker slot.

The task (``serve``) connects back to the parent over TCP, proves it is the worker the parent started with a
one-time token, receives its WorkerSpec as the first frame, and runs the ordinary worker loop
(``_worker.run_worker``) in the Dask worker's task thread. Frames are the process backend's (see _pipes), without
shared memory. So a pool on a cluster costs one Dask task per worker for its whole life, not one per chunk or
item, and chunks and results never pass through the scheduler.

Two small threads beside the loop stand in for what shared memory gives a local worker:
- a reader, which reads ahead of the loop, so that the parent's writes to the clock (a cancelled job's mark)
  take effect while a chunk runs, not only when the loop reads its next message;
- a clock reporter, which sends the clock (which chunk and task run, since when) whenever it changed, at most
  every CLOCK_INTERVAL seconds: the parent's progress bars and its account of a lost worker's running task.

This module is imported by Dask workers, and by the parent for the record types: it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .. import _clock, _worker
from .._serialize import loads
from ._pipes import ChildChannel

TOKEN_SIZE = 16
CONNECT_TIMEOUT = 10.0  # seconds to reach the parent: it listens before it submits the task
CLOCK_INTERVAL = 0.05  # seconds between clock reports while the clock changes

# serve()'s return value: the worker's exit status, as a process worker's exit code.
EXIT_OK = 0
EXIT_LOOP_FAILED = 1  # the worker loop raised (a programming error: the traceback is logged on the Dask worker)
EXIT_REFUSED = 2  # the parent did not take the connection: the pool is gone, or Dask ran the task a second time


class Spec(NamedTuple):
    """Parent to worker, the first frame: the WorkerSpec, pickled by value (functions of __main__ included)."""

    payload: bytes


class ClockWrite(NamedTuple):
    """Parent to worker: the parent wrote one slot of the clock (CANCEL or TIMEOUT_NS)."""

    slot: int
    value: int


class ClockState(NamedTuple):
    """Worker to parent: the clock as it is, and the worker's time.monotonic_ns() then (to translate START_NS)."""

    values: tuple[int, ...]
    now_ns: int


class Goodbye(NamedTuple):
    """Worker to parent, the last frame: the worker's exit status, and why it failed when the parent cannot know
    (its WorkerSpec could not be unpickled here)."""

    status: int
    reason: str = ""


class _ReportingClock(list[int]):
    """The worker's clock: a chunk's start (a TAG written, after the chunk passed its cancel check) is reported at
    once (see _Connection.report_start); every other write waits for the clock reporter."""

    def __init__(self) -> None:
        super().__init__([0] * _clock.SIZE)
        self.report_start: Callable[[], None] = lambda: None

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        if index == _clock.TAG and value:
            self.report_start()


class _Connection:
    """The worker's Channel over one TCP socket: sends under a lock (the loop and the clock reporter share the
    socket), receives what the reader thread queued."""

    def __init__(self, sock: socket.socket, clock: list[int]) -> None:
        self._sock = sock
        self._frames = ChildChannel(sock.fileno(), sock.fileno())
        self._send_lock = threading.Lock()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._clock = clock
        self.failure = ""  # why the reader stopped, if not at the connection's end

    def handshake(self, token: bytes) -> Spec:
        self._sock.sendall(token)
        first = self._frames.recv()  # EOFError: the parent refused the token
        if type(first) is not Spec:
            raise TypeError(f"the parent's first frame is a {type(first).__name__}, not a Spec")
        return first

    def recv(self) -> Any:
        message = self._inbox.get()
        if message is None:
            raise EOFError
        return message

    def report_start(self) -> None:
        """A chunk starts (its TAG was just written): reported now, not up to CLOCK_INTERVAL later, so that a
        worker lost while running it does not have the chunk sent again whole, without end, as one never started.
        Its task is not known yet: UNTRACKED (a first loss runs the chunk again tracked, see _deaths)."""
        with self._send_lock:
            state = list(self._clock)
            state[_clock.INDEX] = _clock.UNTRACKED
            self._frames.send(ClockState(tuple(state), time.monotonic_ns()))

    def send(self, message: Any) -> None:
        with self._send_lock:
            self._frames.send(message)

    def read_ahead(self) -> None:
        """The reader thread: clock writes applied at once, other messages queued for the loop, None at the end."""
        try:
            while True:
                message = self._frames.recv()
                if type(message) is ClockWrite:
                    self._clock[message.slot] = message.value
                else:
                    self._inbox.put(message)
        except (EOFError, OSError):
            pass
        except Exception as exc:  # a message that cannot be unpickled here: an argument this worker cannot rebuild
            self.failure = f"it could not unpickle a message from the parent: {type(exc).__name__}: {exc}"
        finally:
            self._inbox.put(None)

    def report_clock(self, done: threading.Event) -> None:
        """The clock reporter: the clock whenever it changed, until *done*."""
        last: tuple[int, ...] = ()
        while not done.wait(CLOCK_INTERVAL):
            with self._send_lock:  # (read under the lock: never sent after a newer report from recv())
                now = tuple(self._clock)
                if now != last:
                    last = now
                    try:
                        self._frames.send(ClockState(now, time.monotonic_ns()))
                    except OSError:
                        return


def serve(address: tuple[str, int], token: bytes) -> int:
    """The Dask task that is one worker: connect to the parent at *address*, run the worker loop until it ends.

    Returns the worker's exit status (EXIT_*). The parent learns the end from the connection itself.
    """
    # Out of the Dask worker's thread count: a pool's workers live as long as the pool, idle ones too, and must
    # not keep other pools' workers (or other people's tasks) from starting, as local worker processes do not.
    from distributed import secede

    with contextlib.suppress(ValueError):  # (not in a Dask worker's task thread)
        secede()  # type: ignore[no-untyped-call]
    try:
        sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
    except OSError:
        return EXIT_REFUSED  # the parent is gone (or unreachable: it sees this task end without connecting)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock = _ReportingClock()
    connection = _Connection(sock, clock)
    clock.report_start = connection.report_start
    done = threading.Event()
    status = EXIT_LOOP_FAILED
    reader = threading.Thread(target=connection.read_ahead, name="parallelize-dask-reader", daemon=True)
    try:
        try:
            payload = connection.handshake(token).payload
        except (EOFError, OSError):
            return EXIT_REFUSED
        try:
            spec = loads(payload)
        except Exception as exc:  # (a shared object or hook this worker cannot import or rebuild)
            # Said to the parent, which otherwise sees only a lost connection, as often as it starts a worker.
            with contextlib.suppress(OSError):
                connection.send(Goodbye(EXIT_LOOP_FAILED, f"its WorkerSpec (the function, hooks and shared "
                                                          f"objects) could not be unpickled on the Dask worker: "
                                                          f"{type(exc).__name__}: {exc}"))
            return EXIT_LOOP_FAILED
        reporter = threading.Thread(target=connection.report_clock, args=(done,), name="parallelize-dask-clock",
                                    daemon=True)
        reader.start()
        reporter.start()
        try:
            _worker.run_worker(spec, connection, clock)
            status = EXIT_LOOP_FAILED if connection.failure else EXIT_OK
        finally:
            # The Dask worker's thread runs other tasks after this one: it is no pool worker any more.
            _worker.leave_worker_thread()
            done.set()
            reporter.join()
            with contextlib.suppress(OSError):
                connection.send(ClockState(tuple(clock), time.monotonic_ns()))
                connection.send(Goodbye(status, connection.failure))
        return status
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # ends the reader thread's read
        if reader.is_alive():
            reader.join(CONNECT_TIMEOUT)  # before close(): its descriptor's number must not be reused under it
        sock.close()
