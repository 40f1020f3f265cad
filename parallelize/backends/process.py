"""Worker processes (fork, forkserver, spawn): one task pipe and one result pipe per worker.

The parent waits on every result pipe, every worker's exit descriptor (a pidfd) and a wake-up pipe with one epoll
selector, so a dead worker is seen the moment it dies, and nothing polls.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import functools
import multiprocessing
import multiprocessing.process
import os
import pickle
import queue
import selectors
import signal
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, MutableSequence
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from typing import Any

from .. import _clock, _worker
from .._errors import ForkAfterThreadsWarning
from .._frames import UserSite, user_stacklevel
from .._serialize import dumps_by_value, loads
from .._worker import WorkerSpec, run_worker
from ._base import EXIT_MAIN_REIMPORTED, Backend, Event, Exited, Received
from ._pipes import ChildChannel, FrameReader, ParentWriter, decode_answer, encode, enlarge_pipe
from ._shm import InheritedFd, ResultRing, TaskArena, create_segment_fds

# Descriptors of the parent side of this process's live pools: task and result pipe ends, exit pidfds, task arenas,
# selectors, wake-up pipes, lifeline write ends. A forked child, worker or not, must not keep them: a worker holding
# another worker's task pipe or the lifeline's write end would hide the parent's death from it. Only their owners
# change this set: a descriptor is added once it is open and removed *before* it is closed (_close_fd), and a
# backend dropped without close() is closed by its finalizer. So every number in here is open and belongs to a live
# pool; a number that was closed (and may since have been reused, by a new worker's own pipes, say) never is.
_parent_fds: set[int] = set()


def _close_fd(fd: int) -> None:
    _parent_fds.discard(fd)
    with contextlib.suppress(OSError):
        os.close(fd)


def _close_conn(conn: Connection) -> None:
    with contextlib.suppress(OSError):
        _parent_fds.discard(conn.fileno())
    conn.close()

_WAKE = -1
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


INTERRUPT_SIGNAL = signal.SIGUSR1  # a task timeout or a cancellation: see _worker.interrupt_signal_handler
# Blocked while a worker starts, and inherited blocked: a Ctrl-C or a cancellation arriving before the worker
# has installed its handlers waits for them instead of killing it (or printing a traceback).
_STARTUP_BLOCKED = {signal.SIGINT, INTERRUPT_SIGNAL}


class _SpawnSpec:
    """A WorkerSpec for spawn/forkserver: code travels by cloudpickle (lambdas, __main__ functions), while shared
    objects go through multiprocessing's own pickler at process start, the only moment locks, events and shared
    ctypes may be passed."""

    def __init__(self, spec: WorkerSpec) -> None:
        settings = spec.settings
        self.code = dumps_by_value((spec.functions, settings.worker_init, settings.worker_exit))
        self.rest = spec._replace(functions={}, settings=settings._replace(worker_init=None, worker_exit=None))

    def build(self) -> WorkerSpec:
        functions, worker_init, worker_exit = loads(self.code)
        settings = self.rest.settings._replace(worker_init=worker_init, worker_exit=worker_exit)
        return self.rest._replace(functions=functions, settings=settings)


def _child_entry(spec_payload: WorkerSpec | _SpawnSpec | bytes, task_conn: Connection, result_conn: Connection,
                 lifeline: Connection, clock: Any, shared: tuple[InheritedFd, InheritedFd] | None,
                 parent_pid: int) -> None:
    # (Under fork, the parent's pool descriptors were already replaced by /dev/null: see _after_fork_in_child.)
    _die_with_parent(parent_pid)
    # The parent handles Ctrl-C and stops workers itself; a worker traceback per Ctrl-C would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):  # sys.stderr may be a StringIO or closed: use fd 2 itself
        faulthandler.enable(file=2)  # a segfault in a task prints the Python stack of the worker
    _watch_parent(lifeline)
    slots = memoryview(clock).cast("B").cast("q")  # int64 slots; a memoryview write is the cheapest per task
    signal.signal(INTERRUPT_SIGNAL, _worker.interrupt_signal_handler(slots))
    # Both were blocked by the parent around the start (see start_worker); from here on they are handled.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STARTUP_BLOCKED)
    _worker.mark_worker_process()
    if isinstance(spec_payload, bytes):
        spec = loads(spec_payload)
    elif isinstance(spec_payload, _SpawnSpec):
        spec = spec_payload.build()
    else:
        spec = spec_payload
    if spec.cpu_ids:
        os.sched_setaffinity(0, spec.cpu_ids)
    channel = ChildChannel(task_conn.fileno(), result_conn.fileno(), shared)
    # Pools started inside this worker must not leak this worker's own pipes into their workers. (They stay open
    # for the worker's whole life, so these numbers cannot go stale.)
    _parent_fds.update((task_conn.fileno(), result_conn.fileno(), *channel.fds()))
    run_worker(spec, channel, slots)


def _worker_importing_main() -> bool:
    """True in one of our spawn/forkserver workers while it imports the main script, before it runs any task:
    the script is starting a pool at import time, which multiprocessing forbids in a process still starting."""
    process = multiprocessing.current_process()
    # _inheriting is multiprocessing's own flag for that phase (its "bootstrapping phase" error checks it).
    return bool(getattr(process, "_inheriting", False)) and process.name.startswith("parallelize-worker-")
def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies.

    Unlike the lifeline thread this needs no Python in the worker, so it also ends a worker whose task holds the
    GIL in C code. The kernel's "parent" is the *thread* that forked the worker, hence _Forker. A parent that died
    before this call can no longer signal: the worker has been reparented then, and ends here. *parent_pid* is 0
    for forkserver workers, whose parent is the server (which ends with the pool's process).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return  # no prctl here: the lifeline alone watches the parent
    prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
          ctypes.c_ulong(0))
    if not parent_pid:
        _leave_forkserver()
    elif os.getppid() != parent_pid:
        os._exit(70)


def _leave_forkserver() -> None:
    """In a forkserver worker: drop the write end of the server's "alive" pipe, which multiprocessing hands to
    every process the server forks and which keeps the server running. Held here, it would keep the server alive
    after the pool's process died, and the server would keep this worker alive. Without it, the server ends with
    the pool's process, and PR_SET_PDEATHSIG then ends this worker."""
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        server._forkserver_alive_fd = None  # a pool started in this worker launches a server of its own
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored process-wide meanwhile, when this is the main thread (the only one that may change that).

    The forkserver launched meanwhile inherits the ignored disposition through exec, so a Ctrl-C cannot end it
    with a traceback while it starts up (it ignores SIGINT itself from then on). A Ctrl-C for this process
    arriving meanwhile is lost: keep it short and rare.
    """
    previous = (signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread()
                else None)
    # Not the main thread, a handler installed outside Python, or a Ctrl-C already pending (ignoring SIGINT would
    # discard it): left alone.
    if previous is None or signal.SIGINT in signal.sigpending():
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _start(process: Any) -> None:
    """Start *process* from this thread, which has SIGINT and the cancel signal blocked: a forked child inherits
    them blocked until it has installed its own handlers (see _STARTUP_BLOCKED), and so does a spawned one
    (the mask survives exec), so a Ctrl-C cannot end it with a traceback while it imports. (Not SIGINT ignored
    process-wide meanwhile: a Ctrl-C for the parent arriving then would be lost.)"""
    process.start()


class _Forker:
    """Starts worker processes from threads that live as long as this process.

    A worker is killed when the thread that forked it ends (see _die_with_parent), and pools are also driven from
    short-lived threads: a program's own, or the background driver, which ends when idle. So the main thread
    starts its workers itself, and every other thread hands the start to one daemon thread, started on first use
    (a forked child, which does not inherit it, starts its own).
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[Callable[[], None], threading.Event, list[BaseException]]] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, start: Callable[[], None]) -> None:
        if threading.current_thread() is threading.main_thread():
            start()
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="parallelize-forker", daemon=True)
                self._thread.start()
        done = threading.Event()
        error: list[BaseException] = []
        self._requests.put((start, done, error))
        done.wait()
        if error:
            raise error[0]

    def _serve(self) -> None:
        while True:
            start, done, error = self._requests.get()
            # For the children it forks (see _start). Again before each: launching multiprocessing's resource
            # tracker unblocks SIGINT in the thread that launched it.
            signal.pthread_sigmask(signal.SIG_BLOCK, _STARTUP_BLOCKED)
            try:
                start()
            except BaseException as exc:  # the caller's to handle, in its own thread
                error.append(exc)
            finally:
                done.set()


_forker = _Forker()


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
        self.held: list[memoryview] = []  # frames sent with hold=True, not written yet
        self.shared = shared

    def decode(self, frame: Any) -> Any:
        """The message in *frame*, or Undecodable (see decode_answer)."""
        if self.shared is None:
            return decode_answer(frame)
        arena, ring = self.shared
        return decode_answer(frame, ring.take, arena.release)

    def received(self, key: int, frame: Any) -> Received:
        """The event for *frame*, with its size: the frame and the results it took out of the ring."""
        if self.shared is None:
            return Received(key, self.decode(frame), len(frame))
        ring = self.shared[1]
        taken = ring.consumed
        message = self.decode(frame)
        return Received(key, message, len(frame) + ring.consumed - taken)

    def close_shared(self) -> None:
        if self.shared is not None:
            arena, ring = self.shared
            _parent_fds.discard(arena.fd)
            arena.close()
            ring.close()
            self.shared = None

    def release(self) -> None:
        """Close the parent's descriptors of this worker."""
        _close_conn(self.task_conn)
        _close_conn(self.result_conn)
        self.close_shared()
        if self.owns_sentinel:
            _close_fd(self.sentinel)
        with contextlib.suppress(ValueError):  # still running: only a dropped backend's finalizer leaves it so
            self.process.close()


def _release_all(owner_pid: int, workers: dict[int, _ProcWorker], selector: selectors.DefaultSelector,
                 lifeline_w: Connection, fds: tuple[int, ...]) -> None:
    """Close the parent side of a backend: by close(), or by its finalizer when it was dropped without one. Its
    workers, if any still run, then see EOF on their lifeline and task pipe, and end."""
    if os.getpid() != owner_pid:
        return  # in a child made by os.fork(): these are the parent's (see _after_fork_in_child)
    for worker in workers.values():
        worker.release()
    workers.clear()
    _parent_fds.discard(selector.fileno())
    selector.close()
    _close_conn(lifeline_w)
    for fd in fds:
        _close_fd(fd)


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
        self._holding: list[int] = []  # workers with held messages (see send)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", _WAKE))
        self._lifeline_r, self._lifeline_w = self._ctx.Pipe(duplex=False)
        _parent_fds.update((self._wake_r, self._wake_w, self._selector.fileno(), self._lifeline_w.fileno()))
        self._pid = os.getpid()
        # A backend dropped without close() (its engine garbage-collected: a decorated function defined inside a
        # function, say) still closes its descriptors through _release_all, so they leave _parent_fds as they close.
        self._finalizer = weakref.finalize(self, _release_all, self._pid, self._workers, self._selector,
                                           self._lifeline_w, (self._wake_r, self._wake_w))
        self._finalizer.atexit = False  # at exit the pool cache stops its pools first, with their exit hooks
        self._closed = False
        # wakeup() comes from any thread, also while close() runs: the wake-up pipe must not be closed (and its
        # number taken by another file) between wakeup()'s check and its write. Reentrant: the Ctrl-C handler
        # calls wakeup() in whatever thread it interrupts.
        self._wake_lock = threading.RLock()
        self._wake_open = True
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
        if self.name == "fork" and not self._fork_warned:
            self._fork_warned = _warn_if_threads(self._site)
        if self.name == "forkserver":
            # Started before signals are blocked below, or it would keep them blocked for every process it ever
            # forks, the program's own included; with SIGINT ignored while it is launched, so that a Ctrl-C cannot
            # kill it while it starts (the next pool could not reach it then). Only then: a Ctrl-C that arrives
            # while SIGINT is ignored is lost, and ensure_running() runs before every worker start.
            from multiprocessing import forkserver

            launched = getattr(forkserver._forkserver, "_forkserver_pid", None) is not None
            with contextlib.nullcontext() if launched else _sigint_ignored():
                forkserver.ensure_running()
        elif self.name == "spawn":
            # Launched now if need be, not inside the block below: launching it unblocks SIGINT in this thread
            # afterwards, and the worker started next would inherit SIGINT unblocked (see _start).
            from multiprocessing import resource_tracker

            resource_tracker.ensure_running()
        # Blocked until the worker is registered: a Ctrl-C in between would leave a started worker unknown to us.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STARTUP_BLOCKED)
        try:
            self._launch(key, spec)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _launch(self, key: int, spec: WorkerSpec) -> None:
        task_r, task_w = self._ctx.Pipe(duplex=False)
        result_r, result_w = self._ctx.Pipe(duplex=False)
        for conn in (task_w, result_r):
            enlarge_pipe(conn.fileno())
        clock = self._ctx.RawArray("q", _clock.SIZE)
        # Under fork the spec (shared objects included) is inherited as it is: copy-on-write, nothing pickled.
        payloads: list[Callable[[], WorkerSpec | _SpawnSpec | bytes]] = (
            [lambda: spec] if self.name == "fork" else [lambda: _SpawnSpec(spec), lambda: dumps_by_value(spec)])
        # Registered before the start: the new worker itself must not keep the parent's ends of its own pipes.
        _parent_fds.update((task_w.fileno(), result_r.fileno()))
        segment_fds = create_segment_fds()
        # Mapped before the child starts (MADV_DONTFORK keeps the child out of them), so that nothing can fail
        # between starting a process and registering it.
        shared = _map_segments(segment_fds)
        if shared is None:
            segment_fds = None
        shared_fds = None if segment_fds is None else (InheritedFd(segment_fds[0]), InheritedFd(segment_fds[1]))
        # The process whose death must end the worker (_die_with_parent); forkserver workers are the server's.
        parent_pid = 0 if self.name == "forkserver" else os.getpid()
        try:
            for attempt, payload in enumerate(payloads):
                process = self._ctx.Process(
                    target=_child_entry,
                    args=(payload(), task_r, result_w, self._lifeline_r, clock, shared_fds, parent_pid),
                    name=f"parallelize-worker-{spec.worker_id}",
                    daemon=self._daemon,
                )
                _our_processes.add(process)
                try:
                    _forker.run(functools.partial(_start, process))
                    break
                except (pickle.PicklingError, TypeError, AttributeError):
                    # Shared objects multiprocessing cannot pickle (a lambda inside): all by cloudpickle instead.
                    if attempt == len(payloads) - 1:
                        raise
        except BaseException:
            for conn in (task_r, task_w, result_r, result_w):
                _close_conn(conn)
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
            _parent_fds.add(shared[0].fd)  # the arena's, kept for writes: later children must not hold it
        worker = _ProcWorker(process, self.name, task_w, result_r, clock, shared)
        if worker.owns_sentinel:
            _parent_fds.add(worker.sentinel)
        self._workers[key] = worker
        self._selector.register(result_r.fileno(), selectors.EVENT_READ, ("read", key))
        self._selector.register(worker.sentinel, selectors.EVENT_READ, ("exit", key))

    def send(self, key: int, message: Any, *, hold: bool = False) -> int:
        worker = self._workers[key]
        arena = None if worker.shared is None else worker.shared[0]
        placed = 0 if arena is None else arena.in_use
        # A serialisation error is the caller's to report.
        parts = encode(message, None if arena is None else arena.place)
        size = sum(map(len, parts)) + (0 if arena is None else arena.in_use - placed)
        if hold:
            if not worker.held:
                self._holding.append(key)
            worker.held += parts
            return size
        if worker.held:
            parts = worker.held + parts
            worker.held = []
        self._write(key, worker, parts)
        return size

    def write_held(self) -> None:
        for key in self._holding:
            worker = self._workers.get(key)
            if worker is not None and worker.held:
                parts, worker.held = worker.held, []
                self._write(key, worker, parts)
        self._holding.clear()

    def _write(self, key: int, worker: _ProcWorker, parts: list[memoryview]) -> None:
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
        if self._holding:
            self.write_held()
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
        events.extend(worker.received(key, f) for f in frames)
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
                events.extend(worker.received(key, f) for f in frames)
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
        worker.release()

    def wakeup(self) -> None:
        with self._wake_lock:
            if self._wake_open:
                with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
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
        if self._closed or os.getpid() != self._pid:
            return  # (in a child made by os.fork(), the workers are the parent's)
        deadline = time.monotonic() + timeout
        for worker in self._workers.values():
            # No more messages: idle workers see EOF and end now, busy ones once their task returns.
            if worker.want_write:
                worker.want_write = False
                self._selector.unregister(worker.writer.fd)
            _close_conn(worker.task_conn)
        for worker in list(self._workers.values()):
            _join(worker.process, worker.sentinel, max(0.0, deadline - time.monotonic()))
        for key in list(self._workers):
            self.kill(key, grace=0.5)
            self._reap(key)
        self._closed = True
        with self._wake_lock:
            self._wake_open = False
        self._finalizer()
        self._lifeline_r.close()


# Every worker process this process started (added before its start), for _after_fork_in_child.
_our_processes: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """In any forked child, a worker or a child made by os.fork(): the parent's pools are not ours to touch.

    Their descriptors are replaced by /dev/null rather than closed: each number stays taken until the object that
    owns it (a Connection, a selector) is garbage-collected and closes it, so it cannot be reused by a new pipe and
    then closed by mistake. Their worker processes leave multiprocessing's list of children, whose exit hook would
    otherwise terminate them (they are the parent's) when this child exits.
    """
    if _parent_fds:
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for fd in _parent_fds:
                with contextlib.suppress(OSError):
                    os.dup2(devnull, fd)
        finally:
            os.close(devnull)
        _parent_fds.clear()
    multiprocessing.process._children.difference_update(_our_processes)  # type: ignore[attr-defined]
    _our_processes.clear()
    global _forker
    _forker = _Forker()  # the parent's forker thread does not exist here


os.register_at_fork(after_in_child=_after_fork_in_child)


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
