"""Dispatch: which chunk goes to which worker, and stopping the chunks nobody wants any more.

Each worker gets up to PREFETCH chunks, so it never idles waiting for the parent, and more when the chunks are
short (see queue_depth); the least busy worker gets the next chunk (or the one a job pins it to, see
Job.slot_of_chunk). A worker learns a function the first time it gets a chunk of it, and forgets it when no call
uses it.
"""

from __future__ import annotations

import itertools
import time

from . import _clock
from ._deadlines import INTERRUPT_GRACE, Due, Interrupted
from ._job import Job
from ._messages import STOP, RegisterFunc, RunChunk, UnregisterFunc
from ._pool_state import PoolState
from ._serialize import describe_unpicklable, dumps
from ._workers import Life, WorkerSlot

PREFETCH = 2  # chunks queued per worker at least: it never idles waiting for the parent
# Short chunks queue deeper: up to QUEUED_SECONDS of work per worker (at the function's measured time per task), at
# most MAX_QUEUED chunks. A worker whose queue runs dry sleeps, and the parent's next write has to wake it, which
# costs more than a chunk of microseconds. Bounded in seconds, a queue never holds enough to leave the other
# workers idle for long at the end of a map.
QUEUED_SECONDS = 0.002
MAX_QUEUED = 64
# ...and beyond PREFETCH, no more than about what a pipe holds, in arguments and results: large chunks gain nothing
# from a deep queue (their own copying dwarfs a wake-up), and would fill the parent's memory and shared memory.
QUEUED_BYTES = 1 << 20


class Dispatcher:
    def __init__(self, state: PoolState) -> None:
        self._state = state
        self._workers = state.workers
        self._tags = itertools.count(1)

    def dispatch(self) -> None:
        """Send the chunks the workers have room for (starting workers in vacant slots), or, once the pool is
        stopping, tell every worker to stop."""
        self._forget_functions()
        if self._state.stopping:
            self._send_stops()
            return
        if not self._state.jobs:
            return
        for slot in self._workers:
            if slot.life is Life.VACANT:
                self._workers.start(slot, self._state.functions.snapshot())
        lifespan = self._state.settings.worker_lifespan
        backend = self._workers.backend
        for job in self._state.jobs:
            if not job.in_memory:
                backend.write_held()  # its input may block (even on a task of a chunk held here): send them first
            depth = self.queue_depth(job)
            while not job.finished:
                target = self._slot_for(job, depth, lifespan)
                if target is None:
                    break
                chunk = job.take(next(self._tags))
                if chunk is None:
                    break
                # Behind work the worker has, a chunk of an input in memory waits for the others of this dispatch,
                # to be written with them; an idle worker gets its chunk at once.
                self._send_chunk(target, job, chunk, hold=job.in_memory and bool(target.inflight))
        backend.write_held()
        for slot in self._workers.slots:
            slot.flowing = False

    def queue_depth(self, job: Job) -> int:
        """How many chunks a flowing worker may hold of *job*'s (see QUEUED_SECONDS): PREFETCH until its function's
        time per task and the size of its chunks are known."""
        per_task = self._state.task_seconds.get(job.func_id)
        if not per_task or not job.last_size:
            return PREFETCH
        chunk_seconds = per_task * job.last_size
        depth = MAX_QUEUED if chunk_seconds * MAX_QUEUED <= QUEUED_SECONDS else int(QUEUED_SECONDS / chunk_seconds)
        moved = job.chunk_bytes + job.result_bytes
        if moved:
            depth = min(depth, QUEUED_BYTES // moved)
        return max(PREFETCH, depth)

    def teach(self, slot: WorkerSlot, func_id: int) -> None:
        """Send the worker in *slot* a function it does not know yet."""
        assert slot.key is not None
        if func_id not in slot.known_funcs:
            self._workers.backend.send(slot.key, RegisterFunc(func_id, self._state.functions.payload(func_id)))
            slot.known_funcs.add(func_id)

    def interrupt_cancelled(self) -> None:
        """Interrupt the workers still running chunks of failed or cancelled jobs (they answer `cancelled`).

        A worker whose running chunk does not return within INTERRUPT_GRACE (a task stuck in C code, or any task
        where the backend cannot interrupt it) is killed, or disowned (see _deadlines).
        """
        to_cancel = self._state.to_cancel
        while to_cancel:
            job = to_cancel.pop()
            for slot in self._workers:
                if slot.running and any(j is job for j, _ in slot.inflight):
                    self._stop_unwanted_chunk(slot, job)

    def _stop_unwanted_chunk(self, slot: WorkerSlot, job: Job) -> None:
        """Mark on *slot*'s clock the job whose chunks it must not run, and interrupt the one running.

        The clock holds one mark: the job of the worker's head chunk (the one running, or about to) goes first;
        the chunks queued behind it are marked in turn as each reaches the head (see _answers). Called between
        events, never while handling one.
        """
        assert slot.key is not None
        head_job = slot.inflight[0][0]
        if head_job.finished:
            job = head_job
        clock = self._workers.clock(slot)
        clock[_clock.CANCEL] = _clock.cancel_mark(job.id)
        if slot.life is Life.STARTING:
            return  # runs nothing yet, and may not handle the signal yet (a forkserver child): the mark on its
            # clock makes it skip the job's chunks
        backend = self._workers.backend
        backend.interrupt(slot.key)
        running = clock[_clock.TAG]
        # Where the chunk cannot be interrupted (threads, Dask tasks) it gets the same grace too, and its worker is
        # then disowned: otherwise the workers stay busy with a failed or Ctrl-C'd call, and the next call waits.
        if (slot.interrupted is None and clock[_clock.INDEX] != _clock.SENDING
                and any(j is job and c.tag == running for j, c in slot.inflight)):
            slot.interrupted = Interrupted(Due.UNWIND, 0, running, time.monotonic() + INTERRUPT_GRACE, None)

    def _slot_for(self, job: Job, depth: int, lifespan: int | None) -> WorkerSlot | None:
        """The least busy worker with room for a chunk of *job*: *depth* chunks for one that answered since the last
        dispatch, PREFETCH for the others (one may be on a long task: a deep queue behind it would wait)."""
        if job.slot_of_chunk is not None:
            slot = self._workers.slots[job.slot_of_chunk(job.peek_chunk_id())]
            return slot if slot.takes_chunks(lifespan, depth if slot.flowing else PREFETCH) else None
        best: WorkerSlot | None = None
        least = depth
        for slot in self._workers.slots:
            queued = len(slot.inflight)
            if queued < least and slot.takes_chunks(lifespan, depth if slot.flowing else PREFETCH):
                if not queued and slot.life is Life.SERVING:
                    return slot
                best, least = slot, queued
            elif not queued and slot.life is Life.SERVING and slot.takes_chunks(lifespan, PREFETCH):
                # An idle worker still starting (seen first) comes after an idle one that is ready: its start may
                # take seconds (a spawned process, a task on a cluster), and the chunk would wait for it.
                return slot
        return best

    def _send_chunk(self, slot: WorkerSlot, job: Job, chunk: RunChunk, hold: bool) -> None:
        assert slot.key is not None
        if chunk.func_id not in slot.known_funcs:
            self.teach(slot, chunk.func_id)
        try:
            job.chunk_bytes = self._workers.backend.send(slot.key, chunk, hold=hold)
        except Exception as exc:
            job.requeue(chunk)  # balance the bookkeeping; the job fails just below
            job.fail(_unpicklable_arguments(chunk, exc))
            return
        slot.inflight.append((job, chunk))
        slot.n_assigned += len(chunk.items)

    def _forget_functions(self) -> None:
        """Tell the workers to drop the functions the registry dropped (no call uses them any more)."""
        for func_id in self._state.functions.take_dropped():
            self._state.task_seconds.pop(func_id, None)
            for slot in self._workers:
                if func_id in slot.known_funcs:
                    slot.known_funcs.discard(func_id)
                    if slot.reachable:
                        assert slot.key is not None
                        self._workers.backend.send(slot.key, UnregisterFunc(func_id))

    def _send_stops(self) -> None:
        for slot in self._workers:
            if slot.reachable:
                assert slot.key is not None
                self._workers.backend.send(slot.key, STOP)
                slot.stop_sent = True
                if not slot.inflight:
                    self._state.exit_began(slot)


def _unpicklable_arguments(chunk: RunChunk, exc: BaseException) -> BaseException:
    """The error for a chunk that could not be sent: names the first task whose arguments do not pickle."""
    for offset, item in enumerate(chunk.items):
        try:
            dumps(item)
        except Exception as item_exc:
            error = TypeError(f"the arguments of task {chunk.start + offset} cannot be pickled to send them to a "
                              f"worker: {describe_unpicklable(item)} ({type(item_exc).__name__}: {item_exc})")
            error.__cause__ = item_exc
            return error
    return exc
