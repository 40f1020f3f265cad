"""The running pool: a fixed number of worker slots on a backend, and the event loop that serves jobs.

Any thread that waits for a job drives the loop itself (one driver at a time), so a plain map needs no helper
thread: dispatch, wait, collect, all in the caller's thread. A background driver is started only for work
nobody waits on (apply_async).

One step of the loop: take new jobs, fill each worker up to PREFETCH chunks, block in backend.wait() until the
nearest deadline (task/init/exit timeouts read from the workers' task clocks), then handle what happened.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigError, TaskTimeoutError, WorkerDiedError
from ._insights import InsightsCollector
from ._job import Job
from ._messages import STOP, ChunkDone, RegisterFunc, RunChunk, WorkerExited, WorkerReady
from ._serialize import describe_unpicklable, dumps_by_value, unpack_exception
from ._worker import CLOCK_CANCEL, CLOCK_INDEX, CLOCK_START_NS, CLOCK_TAG, WorkerSpec
from .backends import Backend, create_backend
from .backends._base import Exited, Received

logger = logging.getLogger("parallelize")

MAX_START_FAILURES = 3  # workers in a row dying before they are ready fail the calls instead of being replaced
PREFETCH = 2  # chunks queued per worker: it never idles waiting for the parent
KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL when stopping a worker


@dataclass(frozen=True)
class WorkerSettings:
    """Everything fixed for a worker's life; a change means new workers."""

    n_jobs: int
    start_method: str
    daemon: bool = True
    cpu_ids: tuple[tuple[int, ...] | None, ...] = ()
    shared_objects: Any = None
    pass_worker_id: bool = False
    use_worker_state: bool = False
    worker_init: Callable[..., Any] | None = None
    worker_exit: Callable[..., Any] | None = None
    worker_lifespan: int | None = None
    max_worker_memory: int | None = None
    insights: bool = False

    def same_workers(self, other: WorkerSettings) -> bool:
        """Equal settings, comparing objects by identity (an ndarray has no usable ==)."""
        return all(getattr(self, f) is getattr(other, f) or getattr(self, f) == getattr(other, f)
                   for f in ("n_jobs", "start_method", "daemon", "cpu_ids", "pass_worker_id", "use_worker_state",
                             "worker_lifespan", "max_worker_memory", "insights")) and all(
            getattr(self, f) is getattr(other, f) for f in ("shared_objects", "worker_init", "worker_exit"))


@dataclass
class _Slot:
    """One worker position (its worker_id); the process or thread in it is replaced over time."""

    worker_id: int
    key: int | None = None
    pid: int | None = None
    ready: bool = False
    started_at: float = 0.0
    inflight: deque[tuple[Job, RunChunk]] = field(default_factory=deque)
    n_assigned: int = 0
    known_funcs: set[int] = field(default_factory=set)
    stop_sent: bool = False
    init_failed: bool = False
    exited_cleanly: bool = False
    killed: bool = False
    exit_started_at: float | None = None
    answered: bool = False  # has returned a chunk


class Engine:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.backend: Backend = create_backend(settings.start_method, daemon=settings.daemon)
        self._slots = [_Slot(i) for i in range(settings.n_jobs)]
        self._by_key: dict[int, _Slot] = {}
        self._keys = itertools.count()
        self._job_ids = itertools.count()
        self._jobs: list[Job] = []
        self._incoming: list[Job] = []
        self._functions: dict[int, Callable[..., Any]] = {}
        self._func_ids: dict[int, int] = {}  # id(function) -> func_id; _functions keeps the function alive
        self._func_payloads: dict[int, bytes] = {}
        self._cv = threading.Condition()
        self._driving = False
        self._async_jobs: set[Job] = set()
        self._calls = 0  # calls driving jobs on this engine right now (see _calls.run)
        self._handover = False  # someone needs the driver's role exclusively (terminate, close)
        self._tags = itertools.count(1)
        self._to_cancel: list[Job] = []  # failed or cancelled jobs whose chunks may still run in workers
        self._background: threading.Thread | None = None
        self.worker_init_timeout: float | None = None
        self.worker_exit_timeout: float | None = None
        self.exit_results: list[Any] = []
        self.exit_errors: list[BaseException] = []
        self.insights = InsightsCollector(settings.n_jobs) if settings.insights else None
        self._stopping = False
        self._start_failures = 0  # workers in a row that died before they were ready (see _on_exit)
        self.closed = False
        self._pid = os.getpid()

    @property
    def usable(self) -> bool:
        """Not closed, and in the process that started it (after os.fork() the child must start its own)."""
        return not self.closed and not self.foreign

    @property
    def foreign(self) -> bool:
        """In a process that did not start this engine (a child made by os.fork()): its workers, jobs and shared
        clocks are the parent's, which goes on using them; nothing here may touch them."""
        return self._pid != os.getpid()

    # --- public operations ---------------------------------------------------------------------------------------

    def new_job_id(self) -> int:
        return next(self._job_ids)

    def function_id(self, func: Callable[..., Any]) -> int:
        """A stable id for *func* in this engine; workers learn it at start (fork) or on first use."""
        func_id = self._func_ids.get(id(func))
        if func_id is None:
            func_id = len(self._functions)
            self._functions[func_id] = func
            self._func_ids[id(func)] = func_id
        return func_id

    def submit(self, job: Job, *, background: bool = False) -> None:
        """Add a job. With background=True a helper thread drives it (nobody is going to wait on it)."""
        if self.closed or self._stopping:
            raise RuntimeError("the pool has been stopped; start a new one")
        job.finish_listeners.append(self._job_finished)
        with self._cv:
            self._incoming.append(job)
            if background:
                self._async_jobs.add(job)
                job.finish_listeners.append(self._async_job_finished)
                self._ensure_background_driver()
        self.backend.wakeup()

    def drive(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run the loop in this thread (or let the current driver do it) until done(); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cv:
                while True:
                    if done():
                        return True
                    if self.closed:
                        return False  # nothing will ever happen again
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    if not self._driving and not self._handover:
                        self._driving = True
                        break
                    self._cv.wait(remaining)
            try:
                self._step(remaining)
            except BaseException:
                # Interrupted mid-step (Ctrl-C, an exception raised by a signal handler, an internal error): the
                # bookkeeping may be half-updated, with a chunk sent but not recorded, say. The workers go now;
                # the next call starts fresh ones instead of trusting this state.
                self._release_driver()
                self.abort()
                raise
            self._release_driver()

    def _release_driver(self) -> None:
        with self._cv:
            self._driving = False
            self._cv.notify_all()

    def stop(self, timeout: float | None = None) -> list[Any]:
        """Let in-flight work finish, run every worker's exit hook, and end the workers.

        Workers still running after *timeout* seconds are killed.
        """
        if self.closed or self.foreign:
            return []
        self._stopping = True
        self.backend.wakeup()
        try:
            self.drive(lambda: all(slot.key is None for slot in self._slots), timeout)
        finally:
            with self._exclusive():
                self._close_backend(timeout=1.0)
        return self.exit_results

    def terminate(self) -> None:
        """End every worker now: no exit hooks, in-flight work is lost. Safe to call again after an interruption:
        it finishes what an interrupted call left (abort() relies on that)."""
        if self.foreign:
            return
        self._stopping = True
        with self._exclusive():
            for job in self._jobs + self._incoming:
                job.cancel()
            for slot in self._slots:
                if slot.key is not None:
                    slot.killed = True
            self._close_backend(timeout=0.0)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the driver's role (waking the current driver up to hand it over): nobody else touches the
        backend meanwhile."""
        with self._cv:
            self._handover = True  # drivers waiting for their turn must let us go first
            while self._driving:
                self.backend.wakeup()
                self._cv.wait(0.05)
            self._driving = True
            self._handover = False
        try:
            yield
        finally:
            with self._cv:
                self._driving = False
                self._cv.notify_all()

    def cancel(self, job: Job) -> None:
        """Stop *job* (any thread): nothing more is sent, running chunks of it are interrupted."""
        if self.foreign:
            return
        job.cancel()
        self.backend.wakeup()
        if not self.closed:
            # Become the driver for a moment if nobody is, so the interruption reaches the workers now.
            self.drive(lambda: job not in self._to_cancel, timeout=1.0)

    def abort(self) -> None:
        """After an interruption: end every worker at once. A second Ctrl-C does not stop the cleanup."""
        while True:
            try:
                self.terminate()
                return
            except KeyboardInterrupt:
                continue

    def call_started(self) -> None:
        with self._cv:
            self._calls += 1

    def call_ended(self) -> None:
        with self._cv:
            self._calls -= 1

    def in_use(self) -> bool:
        """A call is running on this engine (a map, an open imap) or background work is pending."""
        with self._cv:
            return self._calls > 0 or bool(self._async_jobs) or bool(self._incoming)

    def worker_pids(self) -> list[int]:
        return [slot.pid for slot in self._slots if slot.key is not None and slot.pid is not None]

    # --- the loop ------------------------------------------------------------------------------------------------

    def _step(self, timeout: float | None) -> None:
        with self._cv:
            if self._incoming:
                self._jobs.extend(self._incoming)
                self._incoming.clear()
        self._interrupt_cancelled()
        self._dispatch()
        wait = self._time_to_deadline()
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        for event in self.backend.wait(wait):
            if type(event) is Received:
                self._on_message(event.key, event.message)
            else:
                assert type(event) is Exited
                self._on_exit(event.key, event.exitcode, event.clock)
        self._enforce_deadlines()
        self._interrupt_cancelled()
        if self._jobs:
            self._jobs = [job for job in self._jobs if not job.finished]
        self._dispatch()

    def _job_finished(self, job: Job) -> None:
        if job.error is not None or job.cancelled:
            self._to_cancel.append(job)

    def _interrupt_cancelled(self) -> None:
        """Interrupt the workers still running chunks of failed or cancelled jobs (they answer `cancelled`)."""
        while self._to_cancel:
            job = self._to_cancel.pop()
            for slot in self._slots:
                if slot.key is not None and not slot.killed and any(j is job for j, _ in slot.inflight):
                    # (a worker still starting has the signal blocked until its handler is installed)
                    self.backend.clock(slot.key)[CLOCK_CANCEL] = job.id + 1
                    self.backend.interrupt(slot.key)

    def _dispatch(self) -> None:
        if self._stopping:
            self._send_stops()
            return
        if not self._jobs:
            return
        self._ensure_workers()
        for job in self._jobs:
            while not job.finished:
                slot = self._slot_for(job)
                if slot is None:
                    break
                chunk = job.take()
                if chunk is None:
                    break
                self._send_chunk(slot, job, chunk)

    def _slot_for(self, job: Job) -> _Slot | None:
        if job.slot_of_chunk is not None:
            slot = self._slots[job.slot_of_chunk(job.peek_chunk_id())]
            return slot if self._accepts(slot) else None
        best: _Slot | None = None
        for slot in self._slots:
            if self._accepts(slot) and (best is None or len(slot.inflight) < len(best.inflight)):
                best = slot
                if not slot.inflight:
                    break
        return best

    def _accepts(self, slot: _Slot) -> bool:
        if slot.key is None or slot.stop_sent or slot.killed or len(slot.inflight) >= PREFETCH:
            return False
        lifespan = self.settings.worker_lifespan
        return lifespan is None or slot.n_assigned < lifespan

    def _send_chunk(self, slot: _Slot, job: Job, chunk: RunChunk) -> None:
        assert slot.key is not None
        if chunk.func_id not in slot.known_funcs:
            payload = self._func_payloads.get(chunk.func_id)
            if payload is None:
                payload = dumps_by_value(self._functions[chunk.func_id])
                self._func_payloads[chunk.func_id] = payload
            self.backend.send(slot.key, RegisterFunc(chunk.func_id, payload))
            slot.known_funcs.add(chunk.func_id)
        chunk = chunk._replace(tag=next(self._tags))
        try:
            self.backend.send(slot.key, chunk)
        except Exception as exc:
            job.requeue(chunk)  # balance the bookkeeping; the job fails just below
            job.fail(_unpicklable_arguments(chunk, exc))
            return
        slot.inflight.append((job, chunk))
        slot.n_assigned += len(chunk.items)

    def _ensure_workers(self) -> None:
        for slot in self._slots:
            if slot.key is None:
                self._start(slot)

    def _start(self, slot: _Slot) -> None:
        settings = self.settings
        key = next(self._keys)
        spec = WorkerSpec(
            worker_id=slot.worker_id,
            functions=dict(self._functions),
            shared_objects=settings.shared_objects,
            pass_worker_id=settings.pass_worker_id,
            use_worker_state=settings.use_worker_state,
            worker_init=settings.worker_init,
            worker_exit=settings.worker_exit,
            lifespan=settings.worker_lifespan,
            max_memory=settings.max_worker_memory,
            insights=settings.insights,
            cpu_ids=settings.cpu_ids[slot.worker_id] if settings.cpu_ids else None,
            created_at=time.time(),
        )
        self.backend.start_worker(key, spec)
        fresh = _Slot(slot.worker_id, key=key, pid=self.backend.pid(key), started_at=time.monotonic(),
                      known_funcs=set(self._functions))
        self._slots[slot.worker_id] = fresh
        self._by_key[key] = fresh

    def _send_stops(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.key is not None and not slot.stop_sent and not slot.killed:
                self.backend.send(slot.key, STOP)
                slot.stop_sent = True
                if not slot.inflight:
                    slot.exit_started_at = now

    # --- events --------------------------------------------------------------------------------------------------

    def _on_message(self, key: int, message: Any) -> None:
        slot = self._by_key.get(key)
        if slot is None:
            return  # from a worker already given up on (a disowned thread)
        kind = type(message)
        if kind is ChunkDone:
            if slot.killed:
                # From a worker being stopped (a timeout): what it still had is sent again when it has exited.
                return
            job, chunk = slot.inflight.popleft()
            slot.answered = True
            if chunk.tag != message.tag:  # workers answer in order: anything else is a bug to report, not hide
                raise RuntimeError(f"parallelize internal error: worker {slot.worker_id} answered chunk tag "
                                   f"{message.tag}, expected {chunk.tag}")
            if message.cancelled and not job.finished:
                job.requeue(chunk)  # interrupted by a cancellation meant for another job
            else:
                job.complete(chunk, message.values, message.failures, message.duration)
            if self.insights is not None and message.stats is not None:
                self.insights.update(slot.worker_id, key, message.stats)
            if not slot.inflight and (slot.stop_sent or self._lifespan_reached(slot)):
                slot.exit_started_at = time.monotonic()
        elif kind is WorkerReady:
            slot.ready = True
            self._start_failures = 0
            if self.insights is not None:
                self.insights.started(slot.worker_id, message.start_up_time, message.init_time)
            if message.failure is not None:
                slot.init_failed = True
                self._fail_all(unpack_exception(message.failure))
        elif kind is WorkerExited:
            slot.exited_cleanly = True
            if message.reason == "memory" and not slot.answered:
                # Over the limit before its first chunk: every replacement would be too, and nothing would run.
                self._fail_all(ConfigError(
                    f"max_worker_memory={self.settings.max_worker_memory!r} bytes is below what a worker uses "
                    f"before running any task ({message.rss} bytes); raise the limit"))
            elif message.reason == "memory":
                logger.warning("worker %d (pid %s) uses %.0f MiB, above max_worker_memory=%.0f MiB; it was "
                               "restarted", slot.worker_id, slot.pid, message.rss / 2**20,
                               (self.settings.max_worker_memory or 0) / 2**20)
            if self.settings.worker_exit is not None:
                self.exit_results.append(message.exit_result)
            if self.insights is not None:
                self.insights.exited(slot.worker_id, key, message.exit_time, message.stats)
            if message.failure is not None:
                error = unpack_exception(message.failure)
                self.exit_errors.append(error)
                self._fail_all(error)

    def _on_exit(self, key: int, exitcode: int | None, clock: tuple[int, ...]) -> None:
        slot = self._by_key.pop(key, None)
        if slot is None:
            return
        orphans = list(slot.inflight)
        slot.inflight.clear()
        if orphans and not slot.killed and not slot.exited_cleanly:
            job, chunk = orphans.pop(0)
            position = clock[CLOCK_INDEX] if clock[CLOCK_TAG] == chunk.tag else None
            job.lost(chunk, position, self._death_error(slot, chunk, position, exitcode))
        for job, chunk in orphans:
            job.requeue(chunk)
        if slot.ready and not (slot.exited_cleanly or slot.killed or slot.init_failed or self._stopping):
            logger.warning("worker %d (pid %s) ended unexpectedly (%s); a new worker takes its place",
                           slot.worker_id, slot.pid, _describe_exitcode(exitcode))
        killed_from_outside = exitcode in (-signal.SIGKILL, -signal.SIGTERM)  # perhaps transient: not counted
        if not (slot.ready or slot.exited_cleanly or slot.killed or slot.init_failed or self._stopping
                or killed_from_outside):
            # Crashed while starting, before its init hook finished: the next worker would most likely die the
            # same way (an unimportable main module, shared objects that cannot be unpickled): no endless retries.
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                self._fail_all(WorkerDiedError(
                    f"{self._start_failures} workers in a row died while starting, before running any task (the "
                    f"last: worker {slot.worker_id}, pid {slot.pid}, {_describe_exitcode(exitcode)}); its stderr "
                    "says why. With start_method 'spawn' or 'forkserver', a script that starts pools must do so "
                    "under `if __name__ == '__main__':`, and shared objects must unpickle in a new process"))
        self._slots[slot.worker_id] = _Slot(slot.worker_id)

    def _death_error(self, slot: _Slot, chunk: RunChunk, position: int | None,
                     exitcode: int | None) -> WorkerDiedError:
        if position is None:
            what = "before starting its next chunk"
        else:
            what = f"while running task {chunk.start + position} ({describe_unpicklable(chunk.items[position])})"
        return WorkerDiedError(
            f"worker {slot.worker_id} (pid {slot.pid}) died with {_describe_exitcode(exitcode)} {what}"
            f"{_exit_hint(exitcode)}"
        )

    def _fail_all(self, error: BaseException) -> None:
        for job in self._jobs + self._incoming:
            job.fail(error)

    def _lifespan_reached(self, slot: _Slot) -> bool:
        lifespan = self.settings.worker_lifespan
        return lifespan is not None and slot.n_assigned >= lifespan

    # --- deadlines -----------------------------------------------------------------------------------------------

    def _deadlines(self) -> list[tuple[float, _Slot, str]]:
        out: list[tuple[float, _Slot, str]] = []
        for slot in self._slots:
            if slot.key is None or slot.killed:
                continue
            if not slot.ready:
                if self.worker_init_timeout is not None:
                    out.append((slot.started_at + self.worker_init_timeout, slot, "init"))
            elif slot.inflight:
                job, chunk = slot.inflight[0]
                if job.task_timeout is not None:
                    clock = self.backend.clock(slot.key)
                    started = clock[CLOCK_START_NS]
                    if started and clock[CLOCK_TAG] == chunk.tag:
                        out.append((started / 1e9 + job.task_timeout, slot, "task"))
                    else:
                        # Not started yet (or between two tasks): its deadline is at least a timeout away.
                        # Wake up then to read the clock again; never late, and no busy polling.
                        out.append((time.monotonic() + job.task_timeout, slot, "recheck"))
            elif slot.exit_started_at is not None and self.worker_exit_timeout is not None:
                out.append((slot.exit_started_at + self.worker_exit_timeout, slot, "exit"))
        return out

    def _time_to_deadline(self) -> float | None:
        times = [d for d, _, _ in self._deadlines()]
        times.extend(t for job in self._jobs if (t := job.next_retry_at()) is not None)
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for deadline, slot, what in self._deadlines():
            if deadline > now:
                continue
            if what == "recheck":
                continue
            if what == "task":
                self._task_timed_out(slot)
            elif what == "init":
                error = TaskTimeoutError(
                    f"worker_init of worker {slot.worker_id} ran longer than worker_init_timeout="
                    f"{self.worker_init_timeout}s; the worker was stopped")
                self._kill(slot)
                self._fail_all(error)
            else:
                error = TaskTimeoutError(
                    f"worker_exit of worker {slot.worker_id} ran longer than worker_exit_timeout="
                    f"{self.worker_exit_timeout}s; the worker was stopped")
                self._kill(slot)
                self.exit_errors.append(error)
                self._fail_all(error)

    def _task_timed_out(self, slot: _Slot) -> None:
        assert slot.key is not None
        job, chunk = slot.inflight.popleft()
        position = self.backend.clock(slot.key)[CLOCK_INDEX]
        note = "" if self.backend.supports_kill else " (a thread cannot be interrupted: it runs on, disowned)"
        error = TaskTimeoutError(
            f"task {chunk.start + position} ({describe_unpicklable(chunk.items[position])}) ran longer than "
            f"task_timeout={job.task_timeout}s; worker {slot.worker_id} (pid {slot.pid}) was stopped{note}")
        self._kill(slot)
        job.lost(chunk, position, error)

    def _kill(self, slot: _Slot) -> None:
        assert slot.key is not None
        slot.killed = True
        self.backend.kill(slot.key, KILL_GRACE)

    # --- background driving and shutdown ----------------------------------------------------------------------------

    def _ensure_background_driver(self) -> None:
        # Called with self._cv held; the driver clears self._background under the same lock when it quits, so a
        # job added at that moment always gets a new driver.
        if self._background is not None:
            return
        self._background = threading.Thread(target=self._drive_async_jobs, name="parallelize-driver", daemon=True)
        self._background.start()

    def _drive_async_jobs(self) -> None:
        def nothing_left() -> bool:  # evaluated with self._cv held
            if self._async_jobs and not self.closed:
                return False
            self._background = None
            return True

        try:
            self.drive(nothing_left)
        except BaseException as exc:
            # Nobody waits in this thread to see the error: hand it to every job it was serving instead of
            # leaving them unfinished for ever.
            logger.exception("parallelize: the background driver failed")
            with self._cv:
                self._background = None
                jobs = list(self._async_jobs)
            for job in jobs:
                job.fail(exc)

    def _async_job_finished(self, job: Job) -> None:
        self._async_jobs.discard(job)  # runs inside a step, i.e. with the driver's role held

    def has_async_jobs(self) -> bool:
        return bool(self._async_jobs)

    def wait_async_jobs(self, timeout: float | None = None) -> bool:
        if self.foreign:
            return True  # the parent's jobs
        return self.drive(lambda: not self._async_jobs, timeout)

    def _close_backend(self, timeout: float) -> None:
        self.closed = True
        self.backend.close(timeout)  # idempotent, and resumes a close interrupted by a second Ctrl-C
        background = self._background
        if background is not None and background is not threading.current_thread():
            with self._cv:
                self._cv.notify_all()


def _describe_exitcode(exitcode: int | None) -> str:
    if exitcode is None:
        return "an unknown status"
    if exitcode < 0:
        try:
            return f"{signal.Signals(-exitcode).name}({exitcode})"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _exit_hint(exitcode: int | None) -> str:
    if exitcode == -signal.SIGKILL:
        return " (SIGKILL: often the out-of-memory killer; check memory use or `dmesg`)"
    if exitcode == -signal.SIGSEGV:
        return " (a segmentation fault, usually a crash in C extension code)"
    return ""


def _unpicklable_arguments(chunk: RunChunk, exc: BaseException) -> BaseException:
    from ._serialize import dumps

    for offset, item in enumerate(chunk.items):
        try:
            dumps(item)
        except Exception as item_exc:
            error = TypeError(f"the arguments of task {chunk.start + offset} cannot be pickled to send them to a "
                              f"worker: {describe_unpicklable(item)} ({type(item_exc).__name__}: {item_exc})")
            error.__cause__ = item_exc
            return error
    return exc
