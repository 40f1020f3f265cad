"""The running pool: a fixed number of worker slots on a backend, and the event loop that serves jobs.

Any thread that waits for a job drives the loop itself (one driver at a time), so a plain map needs no helper
thread: dispatch, wait, collect, all in the caller's thread. A background driver is started only for work
nobody waits on (apply_async).

One step of the loop: take new jobs, fill each worker up to PREFETCH chunks, block in backend.wait() until the
nearest deadline (task/init/exit timeouts read from the workers' task clocks), then handle what happened.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from . import _clock
from . import _validation as check
from ._errors import ConfigError, PoolClosedError, ResultPicklingError, TaskTimeoutError, WorkerDiedError
from ._functions import FunctionRegistry
from ._insights import InsightsCollector
from ._job import Job
from ._messages import (
    STOP,
    ChunkDone,
    RegisterFunc,
    RunChunk,
    SetHooks,
    Undecodable,
    UnregisterFunc,
    WorkerExited,
    WorkerReady,
)
from ._serialize import TaskFailure, describe_unpicklable, loads, pack_exception, unpack_exception
from ._settings import WorkerSettings
from ._sigint import SigintHold
from ._worker import WorkerSpec
from .backends import Backend, create_backend
from .backends._base import EXIT_MAIN_REIMPORTED, Exited, Received

logger = logging.getLogger("parallelize")

MAX_START_FAILURES = 3  # workers in a row dying before they are ready fail the calls instead of being replaced
PREFETCH = 2  # chunks queued per worker: it never idles waiting for the parent
KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL when stopping a worker
# Seconds an interrupted task or hook (timeout, cancelled job) gets to unwind before its worker is killed: enough
# for Python code to run its finally blocks, short enough that a task stuck in C code does not hold the pool.
INTERRUPT_GRACE = 1.0
# The longest the loop blocks in one go. A far deadline (a timeout of years) is reached by waking up again:
# epoll takes at most ~24.8 days and a lock at most threading.TIMEOUT_MAX, anything longer raises OverflowError.
MAX_WAIT = 86400.0


class Due(enum.Enum):
    """What a deadline is for."""

    TASK = "task_timeout"  # the running task of a worker's head chunk
    RECHECK = "recheck"  # a timed chunk whose task has not started: its deadline is at least this far away
    INIT = "worker_init_timeout"
    EXIT = "worker_exit_timeout"
    UNWIND = "unwind"  # an interrupted task or hook must have returned by now, or its worker is killed


@dataclass
class _Interrupted:
    """A worker was asked to interrupt what it runs; *kill_at* is when the engine stops waiting for it."""

    due: Due  # what timed out (TASK, INIT, EXIT), or UNWIND for a cancelled job's chunk
    start_ns: int  # the clock's START_NS of the interrupted task or hook (0 for a cancellation)
    tag: int  # the chunk that was running (0 for a hook)
    kill_at: float
    error: BaseException | None  # what the call gets if the worker has to be killed


@dataclass
class _Slot:
    """One worker position (its worker_id); the process or thread in it is replaced over time."""

    worker_id: int
    key: int | None = None
    pid: int | None = None
    ready: bool = False
    inflight: deque[tuple[Job, RunChunk]] = field(default_factory=deque)
    n_assigned: int = 0
    known_funcs: set[int] = field(default_factory=set)
    init_hook: Callable[..., Any] | None = None  # the worker_init this worker runs or ran (it runs at most one)
    stop_sent: bool = False
    init_failed: bool = False
    exited_cleanly: bool = False
    killed: bool = False
    exiting: bool = False  # asked to stop, or at its lifespan, with nothing left to run: its exit hook may run
    answered: bool = False  # has returned a chunk
    exit_timeout: float | None = None  # from the calls running when its exit began (or the latest call)
    interrupted: _Interrupted | None = None


class Engine:
    def __init__(self, settings: WorkerSettings) -> None:
        check.worker_limits(settings.n_jobs, settings.start_method)  # before anything is made for the workers
        self.settings = settings
        self.backend: Backend = create_backend(settings.start_method, daemon=settings.daemon)
        self._slots = [_Slot(i) for i in range(settings.n_jobs)]
        self._by_key: dict[int, _Slot] = {}
        self._keys = itertools.count()
        self._job_ids = itertools.count()
        self._jobs: list[Job] = []
        self._incoming: list[Job] = []
        self._functions = FunctionRegistry()
        self._cv = threading.Condition()
        self._driving = False
        self._async_jobs: set[Job] = set()
        self._calls = 0  # calls driving jobs on this engine right now (see _calls.run)
        self._handover = False  # someone needs the driver's role exclusively (terminate, close)
        self._tags = itertools.count(1)
        self._to_cancel: list[Job] = []  # failed or cancelled jobs whose chunks may still run in workers
        self._cancel_requests: list[Job] = []  # Engine.cancel() from any thread; handled in the driver's role
        self._background: threading.Thread | None = None
        self._hook_ids: tuple[int | None, int | None] = (None, None)  # registered by update_hooks
        self._strictest_exit_timeout: float | None = None  # of every call so far, for exits when none runs
        self._next_deadline: float | None = None  # computed before each wait; nothing is due before it
        self.exit_results: list[Any] = []
        self.exit_errors: list[BaseException] = []
        self.insights = InsightsCollector(settings.n_jobs) if settings.enable_insights else None
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
        """The id of *func* in this engine, held for the job about to be made with it until that job ends (see
        submit); workers learn it at start (fork) or on first use."""
        return self._functions.acquire(func)

    def update_hooks(self, worker_init: Callable[..., Any] | None, worker_exit: Callable[..., Any] | None,
                     worker_lifespan: int | None) -> int:
        """Give the live workers, and those started from now on, new hooks and a new lifespan, keeping the workers
        and their state (MPIRE's keep_alive). A live worker runs the new worker_init only if it has run none, and
        the new worker_exit when it ends; its lifespan counts every task it has run. Returns how many live
        workers were told."""
        n_live = 0
        with self._exclusive():
            self.settings = replace(self.settings, worker_init=worker_init, worker_exit=worker_exit,
                                    worker_lifespan=worker_lifespan)
            init_id = None if worker_init is None else self.function_id(worker_init)
            exit_id = None if worker_exit is None else self.function_id(worker_exit)
            for replaced in self._hook_ids:  # held while they were the pool's hooks; the registry may drop them now
                if replaced is not None:
                    self._functions.release(replaced)
            self._hook_ids = (init_id, exit_id)
            message = SetHooks(init_id, exit_id, worker_lifespan)
            for slot in self._slots:
                if slot.key is None or slot.stop_sent or slot.killed or slot.init_failed:
                    continue  # no worker, or one that is ending
                for func_id in (init_id, exit_id):
                    if func_id is not None:
                        self._teach(slot, func_id)
                self.backend.send(slot.key, message)
                n_live += 1
                if worker_init is not None and slot.init_hook is None:
                    slot.init_hook = worker_init
                    if not slot.inflight:
                        # It runs the hook now: a worker starting again, with worker_init_timeout counted from the
                        # hook's start. (Behind chunks already queued, it starts at an unknown time: no deadline.)
                        slot.ready = False
        self.backend.wakeup()
        return n_live

    def submit(self, job: Job, *, background: bool = False) -> None:
        """Add a job. With background=True a helper thread drives it (nobody is going to wait on it)."""
        job.finish_listeners.append(self._job_finished)
        with self._cv:  # (closing sets `closed` under it too: no job slips in after the open calls were failed)
            if self.closed or self._stopping:
                raise PoolClosedError("the pool has been stopped; start a new one")
            if job.worker_exit_timeout is not None:
                self._strictest_exit_timeout = min(job.worker_exit_timeout,
                                                   self._strictest_exit_timeout or job.worker_exit_timeout)
            self._incoming.append(job)
            if background:
                self._async_jobs.add(job)
                job.finish_listeners.append(self._async_job_finished)
                self._ensure_background_driver()
        self.backend.wakeup()

    def drive(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run the loop in this thread (or let the current driver do it) until done(); False on timeout.

        In the main thread, a Ctrl-C is held until the step under way ends (see _sigint), so it interrupts this
        caller only: the bookkeeping is whole and other threads' calls go on.
        """
        hold = SigintHold.install(self.backend.wakeup)
        if hold is None:
            return self._drive(done, timeout, None)
        try:
            finished = self._drive(done, timeout, hold)
        finally:
            hold.remove()
        hold.raise_pending()  # arrived during the last step
        return finished

    def _drive(self, done: Callable[[], bool], timeout: float | None, hold: SigintHold | None) -> bool:
        if self.foreign:
            return done()  # a forked child reading an inherited call: the workers are the parent's, not ours
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cv:
                while True:
                    if hold is not None:
                        hold.raise_pending()
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
                    self._cv.wait(None if remaining is None else min(remaining, MAX_WAIT))
            try:
                self._step(remaining)
            except BaseException as exc:
                # Interrupted mid-step (an exception raised by a program's own signal handler, such as a test
                # runner's timeout, a Ctrl-C in a thread that cannot hold it, an internal error): the bookkeeping
                # may be half-updated, with a chunk sent but not recorded, say. The workers go now; the next call
                # starts fresh ones instead of trusting this state.
                self._release_driver(handle_cancellations=False)  # the bookkeeping may be half-updated
                self.abort(exc)
                raise
            self._release_driver()

    def _release_driver(self, *, handle_cancellations: bool = True) -> None:
        """Give up the driver's role, after handling the cancellations asked for meanwhile (they are quick)."""
        if handle_cancellations:
            self._handle_cancellations()
        with self._cv:
            self._driving = False
            self._cv.notify_all()

    def _handle_cancellations(self) -> None:
        with self._cv:
            requests, self._cancel_requests = self._cancel_requests, []
        for job in requests:
            job.cancel()
        self._interrupt_cancelled()

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

    def terminate(self, reason: str = "Pool was terminated") -> None:
        """End every worker now: no exit hooks, in-flight work is lost, unfinished calls fail with PoolClosedError
        saying *reason*. Safe to call again after an interruption: it finishes what an interrupted call left
        (abort() relies on that)."""
        if self.foreign:
            return
        self._stopping = True
        with self._exclusive():
            self._end_calls(PoolClosedError(f"{reason}: the call's remaining tasks were dropped"))
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

    def cancel(self, job: Job, *, settle: bool = False) -> None:
        """Stop *job* (any thread): nothing more is sent, running chunks of it are interrupted.

        Without *settle* this never waits: it sends the interruptions itself when nobody drives the loop, else
        leaves them to the driver. (It often runs in a generator's finally block during garbage collection, where
        a Ctrl-C arriving while it waited would be lost.) With *settle* (the caller was interrupted, by Ctrl-C,
        say, and may be about to exit) it waits until no worker runs a chunk of the job any more: answered, or its
        worker killed after INTERRUPT_GRACE, so nothing of this call is left running and no kill is left for
        interpreter exit.
        """
        if self.foreign:
            return
        with self._cv:
            if self.closed:
                return  # every call on it has ended already
            # The job's state changes only in the driver's role: whoever holds it ends the job and sends the
            # interruptions before giving the role up (_release_driver).
            self._cancel_requests.append(job)
            busy = self._driving or self._handover
            if not busy:
                self._driving = True
        if busy:
            self.backend.wakeup()
        else:
            self._release_driver()
        if not settle:
            return

        def settled() -> bool:
            if job in self._cancel_requests or job in self._to_cancel:
                return False  # the interruption has not reached the workers yet
            return not any(j is job for slot in self._slots for j, _ in slot.inflight)

        # A second Ctrl-C meanwhile does not stop this short cleanup: the caller is ending with the first already.
        deadline = time.monotonic() + INTERRUPT_GRACE + 2 * KILL_GRACE
        while True:
            with contextlib.suppress(KeyboardInterrupt):
                self.drive(settled, timeout=max(0.0, deadline - time.monotonic()))
                return  # settled, out of time, or the engine closed

    def abort(self, cause: BaseException) -> None:
        """After an interruption: end every worker at once. A second Ctrl-C does not stop the cleanup."""
        reason = f"Pool was terminated because {type(cause).__name__} interrupted the thread driving it"
        while True:
            try:
                self.terminate(reason)
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
        self._next_deadline = self._nearest_deadline()
        wait = None if self._next_deadline is None else max(0.0, self._next_deadline - time.monotonic())
        if any(job.finished for job in self._jobs):
            wait = 0.0  # one ended while dispatching (its input ran out): its caller must not wait for an event
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        for event in self.backend.wait(None if wait is None else min(wait, MAX_WAIT)):
            if type(event) is Received:
                self._on_message(event.key, event.message)
            else:
                assert type(event) is Exited
                self._on_exit(event.key, event.exitcode, event.clock)
        # Whatever the events changed can only move deadlines later (a new task's deadline is a full timeout
        # away), so nothing is due before the nearest one computed above.
        if self._next_deadline is not None and time.monotonic() >= self._next_deadline:
            self._enforce_deadlines()
        self._interrupt_cancelled()
        if self._jobs:
            self._jobs = [job for job in self._jobs if not job.finished]
        self._dispatch()

    def _job_finished(self, job: Job) -> None:
        self._functions.release(job.func_id)  # held since function_id() made it for this job
        if job.error is not None or job.cancelled:
            self._to_cancel.append(job)

    def _interrupt_cancelled(self) -> None:
        """Interrupt the workers still running chunks of failed or cancelled jobs (they answer `cancelled`).

        A worker whose running chunk does not return within INTERRUPT_GRACE (a task stuck in C code) is killed.
        """
        while self._to_cancel:
            job = self._to_cancel.pop()
            for slot in self._slots:
                if slot.key is not None and not slot.killed and any(j is job for j, _ in slot.inflight):
                    self._stop_unwanted_chunk(slot, job)

    def _stop_unwanted_chunk(self, slot: _Slot, job: Job) -> None:
        """Mark on *slot*'s clock the job whose chunks it must not run, and interrupt the one running.

        The clock holds one mark: the job of the worker's head chunk (the one running, or about to) goes first;
        the chunks queued behind it are marked in turn as each reaches the head (see _on_message). Called between
        events, never while handling one.
        """
        assert slot.key is not None
        head_job = slot.inflight[0][0]
        if head_job.finished:
            job = head_job
        clock = self.backend.clock(slot.key)
        clock[_clock.CANCEL] = _clock.cancel_mark(job.id)
        if not slot.ready:
            return  # runs nothing yet, and may not handle the signal yet (a forkserver child): the mark on its
            # clock makes it skip the job's chunks
        self.backend.interrupt(slot.key)
        running = clock[_clock.TAG]
        if (self.backend.supports_interrupt and slot.interrupted is None and clock[_clock.INDEX] != _clock.SENDING
                and any(j is job and c.tag == running for j, c in slot.inflight)):
            slot.interrupted = _Interrupted(Due.UNWIND, 0, running, time.monotonic() + INTERRUPT_GRACE, None)

    def _dispatch(self) -> None:
        self._forget_functions()
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

    def _forget_functions(self) -> None:
        """Tell the workers to drop the functions the registry dropped (no call uses them any more)."""
        for func_id in self._functions.take_dropped():
            for slot in self._slots:
                if func_id in slot.known_funcs:
                    slot.known_funcs.discard(func_id)
                    if slot.key is not None and not slot.stop_sent and not slot.killed:
                        self.backend.send(slot.key, UnregisterFunc(func_id))

    def _teach(self, slot: _Slot, func_id: int) -> None:
        """Send the worker in *slot* a function it does not know yet."""
        assert slot.key is not None
        if func_id not in slot.known_funcs:
            self.backend.send(slot.key, RegisterFunc(func_id, self._functions.payload(func_id)))
            slot.known_funcs.add(func_id)

    def _send_chunk(self, slot: _Slot, job: Job, chunk: RunChunk) -> None:
        assert slot.key is not None
        self._teach(slot, chunk.func_id)
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

    def _hook_timeout(self, due: Due) -> float | None:
        """The worker_init or worker_exit timeout that applies now: the strictest among the running calls (a
        worker serves them all), or, for an exit with no call running, the strictest of every call so far."""
        values = [t for job in self._jobs if not job.finished
                  and (t := job.worker_init_timeout if due is Due.INIT else job.worker_exit_timeout) is not None]
        if values:
            return min(values)
        return self._strictest_exit_timeout if due is Due.EXIT else None

    def _exit_began(self, slot: _Slot) -> None:
        slot.exiting = True
        slot.exit_timeout = self._hook_timeout(Due.EXIT)

    def _start(self, slot: _Slot) -> None:
        settings = self.settings
        key = next(self._keys)
        functions = self._functions.snapshot()
        spec = WorkerSpec(
            worker_id=slot.worker_id,
            functions=functions,
            shared_objects=settings.shared_objects,
            pass_worker_id=settings.pass_worker_id,
            worker_state=settings.worker_state,
            worker_init=settings.worker_init,
            worker_exit=settings.worker_exit,
            worker_lifespan=settings.worker_lifespan,
            max_worker_memory=settings.max_worker_memory,
            enable_insights=settings.enable_insights,
            cpu_ids=settings.cpu_ids[slot.worker_id] if settings.cpu_ids else None,
            created_at=time.time(),
        )
        self.backend.start_worker(key, spec)
        fresh = _Slot(slot.worker_id, key=key, pid=self.backend.pid(key), known_funcs=set(functions),
                      init_hook=settings.worker_init)
        self._slots[slot.worker_id] = fresh
        self._by_key[key] = fresh

    def _send_stops(self) -> None:
        for slot in self._slots:
            if slot.key is not None and not slot.stop_sent and not slot.killed:
                self.backend.send(slot.key, STOP)
                slot.stop_sent = True
                if not slot.inflight:
                    self._exit_began(slot)

    # --- events --------------------------------------------------------------------------------------------------

    def _on_message(self, key: int, message: Any) -> None:
        slot = self._by_key.get(key)
        if slot is None:
            return  # from a worker already given up on (a disowned thread)
        kind = type(message)
        if kind is Undecodable:
            if not slot.killed:  # (a killed worker's late answers are ignored, as below)
                self._on_undecodable(slot, message.error)
        elif kind is ChunkDone:
            if slot.killed:
                # From a worker being stopped (a timeout): what it still had is sent again when it has exited.
                return
            job, chunk = slot.inflight.popleft()
            slot.answered = True
            if slot.interrupted is not None and slot.interrupted.tag == chunk.tag:
                slot.interrupted = None  # the interrupted task returned (or raised) in time
            if chunk.tag != message.tag:  # workers answer in order: anything else is a bug to report, not hide
                raise RuntimeError(f"parallelize internal error: worker {slot.worker_id} answered chunk tag "
                                   f"{message.tag}, expected {chunk.tag}")
            if message.cancelled and not job.finished:
                job.requeue(chunk)  # interrupted by a cancellation meant for another job
            elif chunk.separate_results:
                job.complete(chunk, *_unpickle_each(chunk, message.values, message.failures), message.duration)
            else:
                job.complete(chunk, message.values, message.failures, message.duration)
            if self.insights is not None and message.stats is not None:
                self.insights.update(slot.worker_id, key, message.stats)
            if slot.inflight and slot.inflight[0][0].finished:
                # Next in line, of an ended job: marked after this step's events (the worker may have ended in
                # the same batch, and its backend forgotten it).
                self._to_cancel.append(slot.inflight[0][0])
            if not slot.inflight and (slot.stop_sent or self._lifespan_reached(slot)):
                self._exit_began(slot)
        elif kind is WorkerReady:
            slot.ready = True
            self._start_failures = 0
            interrupted, slot.interrupted = slot.interrupted, None
            if self.insights is not None:
                self.insights.started(slot.worker_id, message.start_up_time, message.init_time)
            if message.failure is not None:
                slot.init_failed = True
                # An init interrupted for its timeout: the engine's message names the worker and the limit.
                error = (interrupted.error if interrupted is not None else None) or unpack_exception(message.failure)
                if slot.init_hook is self.settings.worker_init:
                    self._init_failed(error)
                else:
                    # A hook that a later call has replaced (the call that gave it has failed already, or has
                    # finished on other workers): it is no reason to fail the calls running now.
                    logger.warning("worker %d (pid %s): an earlier worker_init raised %r; a new worker takes its "
                                   "place", slot.worker_id, slot.pid, error)
        elif kind is WorkerExited:
            slot.exited_cleanly = True
            interrupted, slot.interrupted = slot.interrupted, None
            if message.reason == "memory" and not slot.answered:
                # Over the limit before its first chunk: every replacement would be too, and nothing would run.
                self._fail_all(ConfigError(
                    f"max_worker_memory={self.settings.max_worker_memory!r} bytes is below what a worker uses "
                    f"before running any task ({message.rss} bytes); raise the limit"))
            elif message.reason == "memory":
                logger.warning("worker %d (pid %s) uses %.0f MiB, above max_worker_memory=%.0f MiB; it was "
                               "restarted", slot.worker_id, slot.pid, message.rss / 2**20,
                               (self.settings.max_worker_memory or 0) / 2**20)
            if message.ran_exit:
                self.exit_results.append(message.exit_result)
            if self.insights is not None:
                self.insights.exited(slot.worker_id, key, message.exit_time, message.stats)
            if message.failure is not None:
                error = (interrupted.error if interrupted is not None else None) or unpack_exception(message.failure)
                self.exit_errors.append(error)
                self._fail_all(error)

    def _on_undecodable(self, slot: _Slot, error: BaseException) -> None:
        """A message from *slot*'s worker failed to unpickle here. Workers answer in order: before WorkerReady
        nothing else comes, then one ChunkDone per chunk in flight, then WorkerExited."""
        if not slot.ready:  # our own record, with failures pickled inside it: a bug, not the user's data
            raise RuntimeError("parallelize internal error: a worker's ready message could not be read") from error
        if slot.inflight:
            job, chunk = slot.inflight.popleft()
            slot.answered = True
            if not chunk.separate_results:
                job.resend(chunk)  # again, each result pickled on its own: only the bad one fails then
            else:
                job.fail(_unreadable_results_error(chunk, error))
            return
        slot.exited_cleanly = True  # what worker_exit returned cannot be read here
        exit_error = ResultPicklingError(f"the value worker_exit returned in worker {slot.worker_id} cannot be "
                                         f"unpickled here: {type(error).__name__}: {error}")
        exit_error.__cause__ = error
        self.exit_errors.append(exit_error)
        self._fail_all(exit_error)

    def _on_exit(self, key: int, exitcode: int | None, clock: tuple[int, ...]) -> None:
        slot = self._by_key.pop(key, None)
        if slot is None:
            return
        orphans = list(slot.inflight)
        slot.inflight.clear()
        if orphans and not slot.killed and not slot.exited_cleanly:
            job, chunk = orphans.pop(0)
            position = clock[_clock.INDEX] if clock[_clock.TAG] == chunk.tag else None
            if position == _clock.SENDING and not chunk.separate_results:
                # Every task ran; the worker died sending the results (out of memory pickling a large one,
                # say). Run it once more with each result sent on its own, so a second death names the task.
                job.resend(chunk)
            else:
                if position == _clock.SENDING:  # died again sending results that each pickled fine
                    position = 0
                job.lost(chunk, position, self._death_error(slot, chunk, position, exitcode))
        for job, chunk in orphans:
            job.requeue(chunk)
        if slot.ready and not (slot.exited_cleanly or slot.killed or slot.init_failed or self._stopping):
            logger.warning("worker %d (pid %s) ended unexpectedly (%s); a new worker takes its place",
                           slot.worker_id, slot.pid, _describe_exitcode(exitcode))
        if exitcode == EXIT_MAIN_REIMPORTED and not slot.ready:
            self._fail_all(WorkerDiedError(
                f"worker {slot.worker_id} (start method {self.settings.start_method!r}) imports the main script "
                "as it starts, and the script starts a pool when imported: put the code that starts pools (calls "
                "of @parallel functions, WorkerPool) under `if __name__ == '__main__':` in the main script"))
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

    def _end_calls(self, error: PoolClosedError) -> None:
        """The pool ends: calls still open (an imap being read, a pending submit) fail with *error*, at once,
        never ending with a silent part of their results. Calls that already have every result keep them."""
        for job in self._jobs + self._incoming:
            if not job.finished:
                job.fail(error)
                job.withdraw_results()

    def _init_failed(self, error: BaseException) -> None:
        """A worker_init failed or timed out: the calls fail, and so do the other workers still in their init
        (they would most likely fail the same way, and nobody may be left driving to enforce their timeouts)."""
        self._fail_all(error)
        for slot in self._slots:
            if slot.key is not None and not slot.ready and not slot.killed:
                self._kill(slot)

    def _lifespan_reached(self, slot: _Slot) -> bool:
        lifespan = self.settings.worker_lifespan
        return lifespan is not None and slot.n_assigned >= lifespan

    # --- deadlines -----------------------------------------------------------------------------------------------

    def _deadlines(self) -> Iterator[tuple[float, _Slot, Due]]:
        """Each worker's next deadline, if it has one."""
        for slot in self._slots:
            if slot.key is None or slot.killed:
                continue
            if slot.interrupted is not None:
                yield slot.interrupted.kill_at, slot, Due.UNWIND
            elif not slot.ready:
                init_timeout = self._hook_timeout(Due.INIT)
                if init_timeout is not None:
                    yield self._hook_deadline(slot, init_timeout, Due.INIT)
            elif slot.inflight:
                chunk = slot.inflight[0][1]
                if chunk.task_timeout is not None:
                    clock = self.backend.clock(slot.key)
                    started = clock[_clock.START_NS]
                    if started and clock[_clock.TAG] == chunk.tag:
                        yield started / 1e9 + chunk.task_timeout, slot, Due.TASK
                    else:
                        # Not started yet (or between two tasks): its deadline is at least a timeout away.
                        # Wake up then to read the clock again; never late, and no busy polling.
                        yield time.monotonic() + chunk.task_timeout, slot, Due.RECHECK
            elif slot.exiting and slot.exit_timeout is not None:
                yield self._hook_deadline(slot, slot.exit_timeout, Due.EXIT)

    def _hook_deadline(self, slot: _Slot, timeout: float, due: Due) -> tuple[float, _Slot, Due]:
        """Counted from the hook's start, as MPIRE does: a slow process start (spawn on a busy machine) is not the
        hook's fault. Until the hook starts, look again a timeout later."""
        assert slot.key is not None
        started = self.backend.clock(slot.key)[_clock.START_NS]
        if started:
            return started / 1e9 + timeout, slot, due
        return time.monotonic() + timeout, slot, Due.RECHECK

    def _nearest_deadline(self) -> float | None:
        times = [deadline for deadline, _, _ in self._deadlines()]
        times.extend(t for job in self._jobs if (t := job.next_retry_at()) is not None)
        return min(times, default=None)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for deadline, slot, due in list(self._deadlines()):
            if deadline > now or due is Due.RECHECK:
                continue
            if due is Due.UNWIND:
                self._unwind_overdue(slot)
            elif due is Due.TASK:
                self._task_timed_out(slot)
            else:
                self._hook_timed_out(slot, due)

    def _task_timed_out(self, slot: _Slot) -> None:
        """Raise TaskTimeoutError inside the task, so its finally blocks run and the worker lives on; kill the
        worker only if the task does not return within INTERRUPT_GRACE, or cannot be interrupted at all."""
        assert slot.key is not None
        job, chunk = slot.inflight[0]
        clock = self.backend.clock(slot.key)
        start_ns, position = clock[_clock.START_NS], clock[_clock.INDEX]
        if not start_ns or clock[_clock.TAG] != chunk.tag or not 0 <= position < len(chunk.items):
            return  # it returned a moment ago (the deadline was read before); its answer is on its way
        what = (f"task {chunk.start + position} ({describe_unpicklable(chunk.items[position])}) ran longer than "
                f"task_timeout={chunk.task_timeout}s")
        if self.backend.supports_interrupt:
            error = TaskTimeoutError(f"{what} and did not stop within {INTERRUPT_GRACE}s of being interrupted; "
                                     f"worker {slot.worker_id} (pid {slot.pid}) was stopped")
            self._interrupt(slot, Due.TASK, start_ns, chunk.tag, error)
            return
        slot.inflight.popleft()
        self._kill(slot)
        job.lost(chunk, position, TaskTimeoutError(
            f"{what}; worker {slot.worker_id} was abandoned (a thread cannot be interrupted: it runs on, disowned)"))

    def _hook_timed_out(self, slot: _Slot, due: Due) -> None:
        """A worker_init or worker_exit ran past its timeout: interrupt it (the worker reports the failure and
        ends), or kill the worker if it cannot be interrupted."""
        assert slot.key is not None
        hook = "worker_init" if due is Due.INIT else "worker_exit"
        limit = self._hook_timeout(Due.INIT) if due is Due.INIT else slot.exit_timeout
        error = TaskTimeoutError(f"{hook} of worker {slot.worker_id} ran longer than {due.value}={limit}s; the "
                                 "worker was stopped")
        start_ns = self.backend.clock(slot.key)[_clock.START_NS]
        if not start_ns:
            return  # it returned a moment ago; its report is on the way
        if self.backend.supports_interrupt:
            self._interrupt(slot, due, start_ns, 0, error)
        else:
            self._hook_failed(slot, due, error)

    def _hook_failed(self, slot: _Slot, due: Due, error: BaseException) -> None:
        self._kill(slot)
        if due is Due.INIT:
            self._init_failed(error)
        else:
            self.exit_errors.append(error)
            self._fail_all(error)

    def _interrupt(self, slot: _Slot, due: Due, start_ns: int, tag: int, error: BaseException) -> None:
        assert slot.key is not None
        self.backend.clock(slot.key)[_clock.TIMEOUT_NS] = start_ns
        self.backend.interrupt(slot.key)
        slot.interrupted = _Interrupted(due, start_ns, tag, time.monotonic() + INTERRUPT_GRACE, error)

    def _unwind_overdue(self, slot: _Slot) -> None:
        """An interrupted task or hook had INTERRUPT_GRACE to return. Still running the same thing: kill."""
        assert slot.key is not None and slot.interrupted is not None
        interrupted, slot.interrupted = slot.interrupted, None
        clock = self.backend.clock(slot.key)
        if interrupted.due is Due.UNWIND:
            if clock[_clock.TAG] == interrupted.tag and clock[_clock.INDEX] != _clock.SENDING:
                self._kill(slot)  # a cancelled job's chunk; the live jobs' chunks it held are sent again
            return
        if clock[_clock.START_NS] != interrupted.start_ns:
            return  # it returned; its answer is on its way
        assert interrupted.error is not None
        if interrupted.due is Due.TASK:
            job, chunk = slot.inflight.popleft()
            self._kill(slot)
            job.lost(chunk, clock[_clock.INDEX], interrupted.error)
        else:
            self._hook_failed(slot, interrupted.due, interrupted.error)

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
        with self._cv:
            self.closed = True
        self._end_calls(PoolClosedError("the pool was closed before this call finished; its remaining tasks were "
                                        "dropped"))
        self.backend.close(timeout)  # idempotent, and resumes a close interrupted by a second Ctrl-C


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


def _unpickle_each(chunk: RunChunk, blobs: list[Any],
                   failures: list[TaskFailure] | None) -> tuple[list[Any], list[TaskFailure] | None]:
    """The values of a chunk sent with separate_results, each unpickled on its own: one that cannot be read here
    fails its own task (a ResultPicklingError naming it) instead of the whole chunk."""
    values: list[Any] = []
    failed = list(failures or ())
    failed_positions = {f.position for f in failed}
    for position, blob in enumerate(blobs):
        if position in failed_positions:
            values.append(None)
            continue
        try:
            values.append(loads(blob))
        except Exception as exc:
            error = ResultPicklingError(
                f"the result of task {chunk.start + position} was pickled in the worker but cannot be unpickled "
                f"here: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            failed.append(pack_exception(error, position))
            values.append(None)
            if not chunk.keep_going:
                break
    failed.sort(key=lambda f: f.position)
    return values, failed or None


def _unreadable_results_error(chunk: RunChunk, error: BaseException) -> BaseException:
    wrapped = ResultPicklingError(f"the results of tasks {chunk.start} to {chunk.start + len(chunk.items) - 1} "
                                  f"cannot be unpickled here: {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped
