"""Worker processes (fork, forkserver, spawn): one task pipe and one result pipe per worker.

The parent waits on every result pipe, every worker's exit descriptor (a pidfd) and a wake-up pipe with one epoll
selector, so a dead worker is seen the moment it dies, and nothing polls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import multiprocessing
import os
import pickle
import selectors
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, MutableSequence
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from typing import Any

from .. import _clock, _worker
from .._errors import ForkAfterThreadsWarning
from .._frames import UserSite, user_stacklevel
from .._messages import Undecodable
from .._serialize import dumps_by_value, loads
from .._worker import WorkerSpec, run_worker
from ._base import EXIT_MAIN_REIMPORTED, Backend, Event, Exited, Received
from ._pipes import ChildChannel, FrameReader, ParentWriter, decode, encode, enlarge_pipe
from ._shm import InheritedFd, ResultRing, TaskArena, create_segment_fds

# File descriptors that belong to the parent side of some pool. A forked child inherits them all; it closes them
# at once so that, e.g., a worker never keeps another worker's task pipe open (which would hide the parent's death
# from that worker).
_PARENT_ONLY_FDS: set[int] = set()

_WAKE = -1


INTERRUPT_SIGNAL = signal.SIGUSR1  # a task timeout or a cancellation: see _worker.interrupt_signal_handler
# Blocked while a worker starts, and inherited blocked: a Ctrl-C or a cancellation arriving before the worker
# has installed its handlers waits for them instead of killing it (or printing a traceback).
_STARTUP_BLOCKED = {signal.SIGINT, INTERRUPT_SIGNAL}


class _SpawnSpec:
    """A WorkerSpec for spawn/forkserver: code travels by cloudpickle (lambdas, __main__ functions), while shared
    objects go through multiprocessing's own pickler at process start, the only moment locks, events and shared
    ctypes may be passed."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.code = dumps_by_value((spec.functions, spec.worker_init, spec.worker_exit))
        self.rest = dataclasses.replace(spec, functions={}, worker_init=None, worker_exit=None)

    def build(self) -> WorkerSpec:
        functions, worker_init, worker_exit = loads(self.code)
        return dataclasses.replace(self.rest, functions=functions, worker_init=worker_init, worker_exit=worker_exit)


def _child_entry(spec_payload: WorkerSpec | _SpawnSpec | bytes, task_conn: Connection, result_conn: Connection,
                 lifeline: Connection, clock: Any, shared: tuple[InheritedFd, InheritedFd] | None) -> None:
    for fd in list(_PARENT_ONLY_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _PARENT_ONLY_FDS.clear()
    # The parent handles Ctrl-C and stops workers itself; a worker traceback per Ctrl-C would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):  # sys.stderr may be a StringIO or closed: use fd 2 itself
        faulthandler.enable(file=2)  # a segfault in a task prints the Python stack of the worker
    _watch_parent(lifeline)
    slots = memoryview(clock).cast("B").cast("q")  # int64 slots; a memoryview write is the cheapest per task
    signal.signal(INTERRUPT_SIGNAL, _worker.interrupt_signal_handler(slots))
    # Both were blocked by the parent around the start (see start_worker); from here on they are handled.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STARTUP_BLOCKED)
    _worker.in_worker_process = True
    if isinstance(spec_payload, bytes):
        spec = loads(spec_payload)
    elif isinstance(spec_payload, _SpawnSpec):
        spec = spec_payload.build()
    else:
        spec = spec_payload
    if spec.cpu_ids:
        os.sched_setaffinity(0, spec.cpu_ids)
    channel = ChildChannel(task_conn.fileno(), result_conn.fileno(), shared)
    # Pools started inside this worker must not leak this worker's own pipes into their workers.
    _PARENT_ONLY_FDS.update((task_conn.fileno(), result_conn.fileno(), *channel.fds()))
    run_worker(spec, channel, slots)


def _worker_importing_main() -> bool:
    """True in one of our spawn/forkserver workers while it imports the main script, before it runs any task:
    the script is starting a pool at import time, which multiprocessing forbids in a process still starting."""
    process = multiprocessing.current_process()
    # _inheriting is multiprocessing's own flag for that phase (its "bootstrapping phase" error checks it).
    return bool(getattr(process, "_inheriting", False)) and process.name.startswith("parallelize-worker-")


def _map_segments(fds: tuple[int, int] | None) -> tuple[TaskArena, ResultRing] | None:
    """The parent's mappings of a new worker's segments; None (and the descriptors closed) when they cannot be
    made: the pipes then carry everything."""
    if fds is None:
        return None
    arena: TaskArena | None = None
    try:
        arena = TaskArena(fds[0])
        return arena, ResultRing(fds[1], writer=False)
    except OSError:
        if arena is not None:
            arena.close()
        else:
            os.close(fds[0])
        os.close(fds[1])
        return None


def _watch_parent(lifeline: Connection) -> None:
    """End this worker when the parent dies, even in the middle of a long task.

    The parent holds the only write end of the lifeline pipe; its death closes it, and the read here returns.
    (PR_SET_PDEATHSIG would fire when the parent *thread* that forked us ends, which is too early.)
    """
    fd = lifeline.fileno()

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 1):
                pass
        os._exit(70)

    threading.Thread(target=watch, name="parallelize-lifeline", daemon=True).start()


def _exit_watch(process: Any, start_method: str) -> tuple[int, bool]:
    """A descriptor that becomes readable when *process* ends, and whether it is ours to close.

    A pidfd where Linux has one: multiprocessing's sentinel is a pipe whose write end the worker holds, so it
    stays silent while any process the worker forked (a task's background child, say) still holds a copy. The
    forkserver's sentinel is written by the server itself and is always right.
    """
    if start_method != "forkserver" and hasattr(os, "pidfd_open"):
        with contextlib.suppress(OSError):
            return os.pidfd_open(process.pid), True
    return process.sentinel, False


def _join(process: Any, exit_fd: int, timeout: float) -> None:
    """Wait up to *timeout* seconds for *process* to end, and reap it (Process.join would wait on the sentinel)."""
    if process.exitcode is None:  # polls, and reaps the process if it has ended
        wait_ready([exit_fd], timeout)
        process.exitcode  # noqa: B018 (reaps)


class _ProcWorker:
    def __init__(self, process: Any, start_method: str, task_conn: Connection, result_conn: Connection,
                 clock: MutableSequence[int], shared: tuple[TaskArena, ResultRing] | None) -> None:
        self.process = process
        self.task_conn = task_conn
        self.result_conn = result_conn
        self.writer = ParentWriter(task_conn.fileno())
        self.reader = FrameReader(result_conn.fileno())
        self.clock = clock
        self.sentinel, self.owns_sentinel = _exit_watch(process, start_method)
        self.result_open = True
        self.want_write = False
        self.shared = shared

    def decode(self, frame: Any) -> Any:
        """The message in *frame*, or Undecodable: a result that cannot be unpickled here is the engine's to
        report as that task's failure, not an error that stops the loop serving every call."""
        try:
            if self.shared is None:
                return decode(frame)
            arena, ring = self.shared
            return decode(frame, ring.take, arena.release)
        except Exception as exc:
            return Undecodable(exc)

    def close_shared(self) -> None:
        if self.shared is not None:
            arena, ring = self.shared
            _PARENT_ONLY_FDS.discard(arena.fd)
            arena.close()
            ring.close()
            self.shared = None


class ProcessBackend(Backend):
    supports_kill = True

    def __init__(self, start_method: str, *, daemon: bool) -> None:
        if start_method != "fork" and _worker_importing_main():
            # multiprocessing would raise here, and every worker would print the same long traceback; the
            # parent explains it once instead (see Engine._on_exit).
            os._exit(EXIT_MAIN_REIMPORTED)
        self.name = start_method
        self._ctx: Any = multiprocessing.get_context(start_method)
        self._daemon = daemon
        self._workers: dict[int, _ProcWorker] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", _WAKE))
        self._lifeline_r, self._lifeline_w = self._ctx.Pipe(duplex=False)
        self._own_fds = (self._wake_r, self._wake_w, self._selector.fileno(), self._lifeline_w.fileno())
        _PARENT_ONLY_FDS.update(self._own_fds)
        self._closed = False
        self._fork_warned = False  # ForkAfterThreadsWarning: once per pool
        # The user's call that made this pool, for that warning when the driver thread forks (its stack has no
        # user frame to point at).
        self._site = UserSite() if start_method == "fork" else None
        if start_method != "fork":
            # Spawned workers import the main script as __mp_main__; exceptions and results whose classes are
            # defined there must unpickle here too.
            main = sys.modules.get("__main__")
            if main is not None:
                sys.modules.setdefault("__mp_main__", main)

    def start_worker(self, key: int, spec: WorkerSpec) -> None:
        task_r, task_w = self._ctx.Pipe(duplex=False)
        result_r, result_w = self._ctx.Pipe(duplex=False)
        for conn in (task_w, result_r):
            enlarge_pipe(conn.fileno())
        clock = self._ctx.RawArray("q", _clock.SIZE)
        if self.name == "fork" and not self._fork_warned:
            self._fork_warned = _warn_if_threads(self._site)
        if self.name == "forkserver":
            # Start the server before blocking signals below, or it would keep them blocked for every process
            # it ever forks, the program's own included.
            from multiprocessing import forkserver

            forkserver.ensure_running()
        # Under fork the spec (shared objects included) is inherited as it is: copy-on-write, nothing pickled.
        payloads: list[Callable[[], WorkerSpec | _SpawnSpec | bytes]] = (
            [lambda: spec] if self.name == "fork" else [lambda: _SpawnSpec(spec), lambda: dumps_by_value(spec)])
        _PARENT_ONLY_FDS.update((task_w.fileno(), result_r.fileno()))
        segment_fds = create_segment_fds()
        # Mapped before the child starts (MADV_DONTFORK keeps the child out of them), so that nothing can fail
        # between starting a process and registering it.
        shared = _map_segments(segment_fds)
        if shared is None:
            segment_fds = None
        shared_fds = None if segment_fds is None else (InheritedFd(segment_fds[0]), InheritedFd(segment_fds[1]))
        try:
            for attempt, payload in enumerate(payloads):
                process = self._ctx.Process(
                    target=_child_entry,
                    args=(payload(), task_r, result_w, self._lifeline_r, clock, shared_fds),
                    name=f"parallelize-worker-{spec.worker_id}",
                    daemon=self._daemon,
                )
                blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STARTUP_BLOCKED)
                try:
                    process.start()
                    break
                except (pickle.PicklingError, TypeError, AttributeError):
                    # Shared objects multiprocessing cannot pickle (a lambda inside): all by cloudpickle instead.
                    if attempt == len(payloads) - 1:
                        raise
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        except BaseException:
            for conn in (task_r, task_w, result_r, result_w):
                self._forget_fd(conn)
            if shared is not None:
                shared[0].close()
                shared[1].close()
            raise
        finally:
            task_r.close()  # the child's ends: the parent must not keep them, or EOF is never seen
            result_w.close()
            if segment_fds is not None:
                os.close(segment_fds[1])  # the ring's: the parent reads through its mapping only
        os.set_blocking(task_w.fileno(), False)
        os.set_blocking(result_r.fileno(), False)
        if shared is not None:
            _PARENT_ONLY_FDS.add(shared[0].fd)  # the arena's, kept for writes: later children must not hold it
        worker = _ProcWorker(process, self.name, task_w, result_r, clock, shared)
        if worker.owns_sentinel:
            _PARENT_ONLY_FDS.add(worker.sentinel)
        self._workers[key] = worker
        self._selector.register(result_r.fileno(), selectors.EVENT_READ, ("read", key))
        self._selector.register(worker.sentinel, selectors.EVENT_READ, ("exit", key))

    def send(self, key: int, message: Any) -> None:
        worker = self._workers[key]
        # A serialisation error is the caller's to report.
        parts = encode(message, None if worker.shared is None else worker.shared[0].place)
        try:
            pending = worker.writer.send(parts)
        except (BrokenPipeError, ConnectionResetError):
            # The worker has ended and the parent has not seen it yet: its sentinel will say so, and whatever
            # was sent to it is dealt with then (sent again, or failed with WorkerDiedError).
            worker.writer.outbox.clear()
            return
        if pending and not worker.want_write:
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
        worker = self._workers.get(key)
        if worker is None:
            return
        frames, eof = worker.reader.read_available()
        events.extend(Received(key, worker.decode(f)) for f in frames)
        if eof and worker.result_open:
            worker.result_open = False
            self._selector.unregister(worker.reader.fd)

    def _flush(self, key: int) -> None:
        worker = self._workers.get(key)
        if worker is None:
            return
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
                events.extend(Received(key, worker.decode(f)) for f in frames)
                if eof or not frames:
                    break
        _join(worker.process, worker.sentinel, 5)
        exitcode = worker.process.exitcode
        last_clock = tuple(worker.clock)
        self._release(worker)
        events.append(Exited(key, exitcode, last_clock))
        return events

    def _release(self, worker: _ProcWorker) -> None:
        for fd in (worker.reader.fd, worker.writer.fd, worker.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
        self._forget_fd(worker.task_conn)
        self._forget_fd(worker.result_conn)
        worker.close_shared()
        if worker.owns_sentinel:
            _PARENT_ONLY_FDS.discard(worker.sentinel)
            os.close(worker.sentinel)
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

    def clock(self, key: int) -> MutableSequence[int]:
        return self._workers[key].clock

    def pid(self, key: int) -> int | None:
        worker = self._workers.get(key)
        return None if worker is None else worker.process.pid

    def interrupt(self, key: int) -> None:
        worker = self._workers.get(key)
        if worker is not None and worker.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, INTERRUPT_SIGNAL)

    def kill(self, key: int, grace: float) -> None:
        worker = self._workers.get(key)
        if worker is None:
            return
        process = worker.process
        if process.exitcode is None:
            # Listed first (they are reparented once the worker dies), killed after it is signalled: killed first,
            # they would let the worker's task return and the worker run on for a moment.
            descendants = _descendants(process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            _kill_all(descendants)
            _join(process, worker.sentinel, grace)
            if process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                _join(process, worker.sentinel, 5)

    def close(self, timeout: float) -> None:
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        for worker in list(self._workers.values()):
            _join(worker.process, worker.sentinel, max(0.0, deadline - time.monotonic()))
        for key in list(self._workers):
            self.kill(key, grace=0.5)
            self._reap(key)
        self._closed = True
        _PARENT_ONLY_FDS.difference_update(self._own_fds)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._lifeline_r.close()
        self._lifeline_w.close()


def _neutralise_inherited_fds() -> None:
    """In a child made by os.fork(): the parent's pool pipes are not ours.

    Each is replaced by /dev/null rather than closed: the number stays taken until the objects that own it are
    garbage-collected and close it, so it cannot be reused by a new pipe and then closed by mistake.
    """
    if not _PARENT_ONLY_FDS:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in _PARENT_ONLY_FDS:
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    _PARENT_ONLY_FDS.clear()


os.register_at_fork(after_in_child=_neutralise_inherited_fds)


def _descendants(pid: int) -> list[Any]:
    """Processes a worker started (a subprocess in a task): they must not outlive a worker being stopped."""
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _kill_all(processes: list[Any]) -> None:
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _harmless(thread: threading.Thread) -> bool:
    """Threads known to hold no lock a child could inherit: tqdm's monitor sleeps on an Event."""
    return type(thread).__module__.startswith("tqdm.")


def _warn_if_threads(site: UserSite | None) -> bool:
    """Forking while another thread holds a lock (logging, I/O, allocator) can leave a worker deadlocked.

    True if it warned. The warning points at the user's line: the call on this thread's stack, or *site* (where
    the pool was made) when the driver thread forks.
    """
    current = threading.current_thread()
    ours = current.name.startswith("parallelize-")
    # Our driver thread forks replacement workers while the main thread runs on, as multiprocessing.Pool's
    # worker handler does; the warning is about threads the program started.
    others = [t for t in threading.enumerate()
              if t is not current and t.is_alive() and not t.name.startswith("parallelize-")
              and not (ours and t is threading.main_thread()) and not _harmless(t)]
    if not others:
        return False
    message = (f"starting fork workers while {len(others)} other thread(s) run in this process "
               f"({', '.join(t.name for t in others[:3])}); a worker can deadlock if one of them held a lock at the "
               "moment of fork. Use start_method='forkserver' or 'spawn' in threaded programs.")
    if ours and site is not None:
        site.warn(message, ForkAfterThreadsWarning)
    else:
        warnings.warn(message, ForkAfterThreadsWarning, stacklevel=user_stacklevel())
    return True
