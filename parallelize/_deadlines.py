"""Timeouts: where task_timeout, worker_init_timeout and worker_exit_timeout are enforced.

Each worker's deadlines are read from its task clock (see _clock): its running task's start plus task_timeout, its
hook's start plus the hook's timeout, or the end of the grace an interrupted task or hook has to return; and,
while a new worker has not reached its worker_init, the end of the time it may take to start. When a task or hook
deadline passes, the worker is first interrupted (a TaskTimeoutError raised inside the task, so its finally blocks
run and the worker lives on); only a task still running INTERRUPT_GRACE later, or one on a backend that cannot
interrupt, has its worker killed. A worker that hangs starting is killed and replaced.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from typing import NamedTuple

from . import _clock
from ._config import START_TIMEOUT_VARIABLE
from ._errors import TaskTimeoutError
from ._log import logger
from ._pool_state import PoolState
from ._serialize import describe_unpicklable
from ._workers import Life, WorkerSlot

# Seconds an interrupted task or hook (timeout, cancelled job) gets to unwind before its worker is killed: enough
# for Python code to run its finally blocks, short enough that a task stuck in C code does not hold the pool.
INTERRUPT_GRACE = 1.0



class Due(enum.Enum):
    """What a deadline is for."""

    TASK = "task_timeout"  # the running task of a worker's head chunk
    RECHECK = "recheck"  # a timed chunk or hook that has not started: its deadline is at least this far away
    INIT = "worker_init_timeout"
    EXIT = "worker_exit_timeout"
    UNWIND = "unwind"  # an interrupted task or hook must have returned by now, or its worker is killed
    START = "start"  # a new worker must have reached its worker_init (or ready) by now, or it is replaced


class Interrupted(NamedTuple):
    """A worker was asked to interrupt what it runs; *kill_at* is when the engine stops waiting for it."""

    due: Due  # what timed out (TASK, INIT, EXIT), or UNWIND for a cancelled job's chunk
    start_ns: int  # the clock's START_NS of the interrupted task or hook (0 for a cancellation)
    tag: int  # the chunk that was running (0 for a hook)
    kill_at: float
    error: BaseException | None  # what the call gets if the worker has to be killed


class Deadlines:
    def __init__(self, state: PoolState) -> None:
        self._state = state
        self._workers = state.workers

    def nearest(self) -> float | None:
        """When the loop must look again at the latest: the nearest deadline of any worker or delayed retry."""
        times = [deadline for deadline, _, _ in self._each()]
        times.extend(t for job in self._state.jobs if (t := job.next_retry_at()) is not None)
        return min(times, default=None)

    def enforce(self) -> None:
        """Act on every deadline that has passed."""
        now = time.monotonic()
        for deadline, slot, due in list(self._each()):
            if deadline > now or due is Due.RECHECK:
                continue
            if due is Due.UNWIND:
                self._unwind_overdue(slot)
            elif due is Due.START:
                self._start_overdue(slot)
            elif due is Due.TASK:
                self._task_timed_out(slot)
            else:
                self._hook_timed_out(slot, due)

    def _each(self) -> Iterator[tuple[float, WorkerSlot, Due]]:
        """Each worker's next deadline, if it has one."""
        for slot in self._workers:
            if not slot.running:
                continue
            if slot.interrupted is not None:
                yield slot.interrupted.kill_at, slot, Due.UNWIND
            elif slot.life is Life.STARTING:
                if slot.start_by is not None and not self._workers.clock(slot)[_clock.START_NS]:
                    yield slot.start_by, slot, Due.START
                init_timeout = self._state.init_timeout()
                if init_timeout is not None:
                    yield self._hook_deadline(slot, init_timeout, Due.INIT)
            elif slot.inflight and slot.life is Life.SERVING:
                chunk = slot.inflight[0][1]
                if chunk.task_timeout is not None:
                    clock = self._workers.clock(slot)
                    started = clock[_clock.START_NS]
                    if started and clock[_clock.TAG] == chunk.tag:
                        yield started / 1e9 + chunk.task_timeout, slot, Due.TASK
                    else:
                        # Not started yet (or between two tasks): its deadline is at least a timeout away.
                        # Wake up then to read the clock again; never late, and no busy polling.
                        yield time.monotonic() + chunk.task_timeout, slot, Due.RECHECK
            elif slot.life is Life.EXITING and slot.exit_timeout is not None:
                yield self._hook_deadline(slot, slot.exit_timeout, Due.EXIT)

    def _hook_deadline(self, slot: WorkerSlot, timeout: float, due: Due) -> tuple[float, WorkerSlot, Due]:
        """Counted from the hook's start, as MPIRE does: a slow process start (spawn on a busy machine) is not the
        hook's fault. Until the hook starts, look again a timeout later."""
        started = self._workers.clock(slot)[_clock.START_NS]
        if started:
            return started / 1e9 + timeout, slot, due
        return time.monotonic() + timeout, slot, Due.RECHECK

    def _task_timed_out(self, slot: WorkerSlot) -> None:
        """Raise TaskTimeoutError inside the task, so its finally blocks run and the worker lives on; kill the
        worker only if the task does not return within INTERRUPT_GRACE, or cannot be interrupted at all."""
        job, chunk = slot.inflight[0]
        clock = self._workers.clock(slot)
        start_ns, position = clock[_clock.START_NS], clock[_clock.INDEX]
        if not start_ns or clock[_clock.TAG] != chunk.tag or not 0 <= position < len(chunk.items):
            return  # it returned a moment ago (the deadline was read before); its answer is on its way
        what = (f"task {chunk.start + position} ({describe_unpicklable(chunk.items[position])}) ran longer than "
                f"task_timeout={chunk.task_timeout}s")
        if self._workers.backend.supports_interrupt:
            error = TaskTimeoutError(f"{what} and did not stop within {INTERRUPT_GRACE}s of being interrupted; "
                                     f"worker {slot.worker_id} (pid {slot.pid}) was stopped")
            self._interrupt(slot, Due.TASK, start_ns, chunk.tag, error)
            return
        slot.inflight.popleft()
        self._workers.kill(slot)
        job.lost(chunk, position, TaskTimeoutError(
            f"{what}; worker {slot.worker_id} was abandoned (a thread cannot be interrupted: it runs on, disowned)"))

    def _hook_timed_out(self, slot: WorkerSlot, due: Due) -> None:
        """A worker_init or worker_exit ran past its timeout: interrupt it (the worker reports the failure and
        ends), or kill the worker if it cannot be interrupted."""
        hook = "worker_init" if due is Due.INIT else "worker_exit"
        limit = self._state.init_timeout() if due is Due.INIT else slot.exit_timeout
        error = TaskTimeoutError(f"{hook} of worker {slot.worker_id} ran longer than {due.value}={limit}s; the "
                                 "worker was stopped")
        start_ns = self._workers.clock(slot)[_clock.START_NS]
        if not start_ns:
            return  # it returned a moment ago; its report is on the way
        if self._workers.backend.supports_interrupt:
            self._interrupt(slot, due, start_ns, 0, error)
        else:
            self._hook_failed(slot, due, error)

    def _start_overdue(self, slot: WorkerSlot) -> None:
        """A new worker has not reached its worker_init (or said it is ready) in the time a start may take: it
        hangs (an import from a stalled network file system, say). Kill it; the chunks queued for it go to the next."""
        slot.start_by = None
        self._workers.kill(slot)
        limit = self._workers.start_timeout
        logger().warning("worker %d (pid %s) did not finish starting within %ss; a new worker takes its place",
                         slot.worker_id, slot.pid, limit)
        self._state.start_failed(
            f"worker {slot.worker_id}, pid {slot.pid}, did not finish starting within {limit}s and was killed; "
            f"{START_TIMEOUT_VARIABLE} sets that limit")

    def _hook_failed(self, slot: WorkerSlot, due: Due, error: BaseException) -> None:
        self._workers.kill(slot)
        if due is Due.INIT:
            self._state.init_failed(error)
        else:
            self._state.exit_failed(error)

    def _interrupt(self, slot: WorkerSlot, due: Due, start_ns: int, tag: int, error: BaseException) -> None:
        """Raise a TaskTimeoutError in what *slot*'s worker runs (the clock names it), and give it INTERRUPT_GRACE."""
        assert slot.key is not None
        self._workers.clock(slot)[_clock.TIMEOUT_NS] = start_ns
        self._workers.backend.interrupt(slot.key)
        slot.interrupted = Interrupted(due, start_ns, tag, time.monotonic() + INTERRUPT_GRACE, error)

    def _unwind_overdue(self, slot: WorkerSlot) -> None:
        """An interrupted task or hook had INTERRUPT_GRACE to return. Still running the same thing: kill."""
        assert slot.interrupted is not None
        interrupted, slot.interrupted = slot.interrupted, None
        clock = self._workers.clock(slot)
        if interrupted.due is Due.UNWIND:
            if clock[_clock.TAG] == interrupted.tag and clock[_clock.INDEX] != _clock.SENDING:
                self._workers.kill(slot)  # a cancelled job's chunk; the live jobs' chunks it held are sent again
            return
        if clock[_clock.START_NS] != interrupted.start_ns:
            return  # it returned; its answer is on its way
        assert interrupted.error is not None
        if interrupted.due is Due.TASK:
            job, chunk = slot.inflight.popleft()
            self._workers.kill(slot)
            job.lost(chunk, clock[_clock.INDEX], interrupted.error)
        else:
            self._hook_failed(slot, interrupted.due, interrupted.error)
