"""What workers say: a worker is ready (or its worker_init failed), a chunk's results, its own end.

Workers answer in order: WorkerReady first, then one ChunkDone per chunk in the order they were sent, then
WorkerExited. Results go to their Job, which puts them back in input order (Job.complete, then Job.pop_ready).
"""

from __future__ import annotations

import os
from typing import Any

from ._errors import ConfigError, ResultPicklingError
from ._job import Job
from ._log import logger
from ._messages import ChunkDone, ChunkStats, RunChunk, Undecodable, WorkerExited, WorkerReady
from ._pool_state import PoolState
from ._serialize import TaskFailure, convert_each, loads, unpack_exception
from ._workers import Life, WorkerSlot


class Answers:
    def __init__(self, state: PoolState) -> None:
        self._state = state

    def on_message(self, key: int, message: Any, size: int = 0) -> None:
        """*message* from the worker *key*, which took *size* bytes on its way (0 if unknown)."""
        slot = self._state.workers.by_key(key)
        if slot is None:
            return  # from a worker already given up on (a disowned thread)
        kind = type(message)
        if kind is ChunkDone:
            if slot.life is not Life.KILLED:
                # (A worker being killed, for a timeout, say: what it still had is sent again when it has exited.)
                self._chunk_done(slot, message, size)
        elif kind is Undecodable:
            if slot.life is not Life.KILLED:
                self._undecodable(slot, message.error)
        elif kind is WorkerReady:
            self._ready(slot, message)
        else:
            assert kind is WorkerExited
            self._exited(slot, message)

    def _chunk_done(self, slot: WorkerSlot, message: ChunkDone, size: int) -> None:
        state = self._state
        job, chunk = slot.inflight.popleft()
        job.result_bytes = size
        slot.answered = slot.flowing = True
        if slot.interrupted is not None and slot.interrupted.tag == chunk.tag:
            slot.interrupted = None  # the interrupted task returned (or raised) in time
        if chunk.tag != message.tag:  # workers answer in order: anything else is a bug to report, not hide
            raise RuntimeError(f"parallelize internal error: worker {slot.worker_id} answered chunk tag "
                               f"{message.tag}, expected {chunk.tag}")
        if message.stats is not None:  # a watched call's chunk: before complete(), which may end the call
            self._measured(slot, job, message.stats)
        if message.cancelled and not job.finished:
            job.requeue(chunk)  # interrupted by a cancellation meant for another job
        elif chunk.separate_results:
            job.complete(chunk, *_unpickle_each(chunk, message.values, message.failures), message.duration)
        else:
            job.complete(chunk, message.values, message.failures, message.duration)
        if not message.cancelled and message.failures is None and chunk.items:
            state.observe(chunk.func_id, len(chunk.items), message.duration)
        if slot.inflight and slot.inflight[0][0].finished:
            # Next in line, of an ended job: marked after this step's events (the worker may have ended in the
            # same batch, and its backend forgotten it).
            state.to_cancel.append(slot.inflight[0][0])
        if not slot.inflight and (slot.stop_sent or slot.lifespan_reached(state.settings.worker_lifespan)):
            state.exit_began(slot)

    def _ready(self, slot: WorkerSlot, message: WorkerReady) -> None:
        state = self._state
        state.start_failures = 0
        if slot.pid is None and message.pid != os.getpid():
            slot.pid = message.pid  # a worker in a process that is not ours (a cluster's): its own word
        interrupted, slot.interrupted = slot.interrupted, None
        if state.insights is not None:
            state.insights.started(slot.worker_id, message.start_up_time, message.init_time)
        for job in state.jobs:
            if job.record is not None and not job.finished:
                job.record.worker_started(slot.worker_id, message.start_up_time, message.init_time)
        if message.failure is None:
            slot.became_ready()
            if slot.stop_sent and not slot.inflight:
                state.exit_began(slot)
            return
        slot.init_failed()
        # An init interrupted for its timeout: the engine's message names the worker and the limit.
        error = (interrupted.error if interrupted is not None else None) or unpack_exception(message.failure)
        if slot.init_hook is state.settings.worker_init:
            state.init_failed(error)
        else:
            # A hook that a later call has replaced (the call that gave it has failed already, or has finished
            # on other workers): it is no reason to fail the calls running now.
            logger().warning("worker %d (pid %s): an earlier worker_init raised %r; a new worker takes its place",
                             slot.worker_id, slot.pid, error)

    def _exited(self, slot: WorkerSlot, message: WorkerExited) -> None:
        state = self._state
        slot.reported_end()
        interrupted, slot.interrupted = slot.interrupted, None
        limit = state.settings.max_worker_memory
        if message.reason == "memory" and not slot.answered:
            # Over the limit before its first chunk: every replacement would be too, and nothing would run.
            state.fail_all(ConfigError(
                f"max_worker_memory={limit!r} bytes is below what a worker uses before running any task "
                f"({message.rss} bytes); raise the limit"))
        elif message.reason == "memory":
            logger().warning("worker %d (pid %s) uses %.0f MiB, above max_worker_memory=%.0f MiB; it was "
                             "restarted", slot.worker_id, slot.pid, message.rss / 2**20, (limit or 0) / 2**20)
        if message.ran_exit:
            state.exit_results.append(message.exit_result)
        if state.insights is not None:
            state.insights.exited(slot.worker_id, message.exit_time, message.waiting_time)
        for job in state.jobs:
            if job.record is not None and not job.finished:
                job.record.worker_exited(slot.worker_id, message.exit_time)
        if message.failure is not None:
            state.exit_failed((interrupted.error if interrupted is not None else None)
                              or unpack_exception(message.failure))

    def _measured(self, slot: WorkerSlot, job: Job, stats: ChunkStats) -> None:
        """What a worker measured running a chunk of a watched call (or of a pool with enable_insights)."""
        if job.record is not None:
            job.record.chunk(slot.worker_id, stats)
        if self._state.insights is not None:
            self._state.insights.chunk(slot.worker_id, stats)

    def _undecodable(self, slot: WorkerSlot, error: BaseException) -> None:
        """A message from *slot*'s worker failed to unpickle here."""
        if slot.life is Life.STARTING:  # our own record, with failures pickled inside it: a bug, not user data
            raise RuntimeError("parallelize internal error: a worker's ready message could not be read") from error
        if slot.inflight:
            job, chunk = slot.inflight.popleft()
            slot.answered = True
            if not chunk.separate_results:
                job.resend(chunk)  # again, each result pickled on its own: only the bad one fails then
            else:
                job.fail(_unreadable_results_error(chunk, error))
            return
        slot.reported_end()  # what worker_exit returned cannot be read here
        exit_error = ResultPicklingError(f"the value worker_exit returned in worker {slot.worker_id} cannot be "
                                         f"unpickled here: {type(error).__name__}: {error}")
        exit_error.__cause__ = error
        self._state.exit_failed(exit_error)


def _unpickle_each(chunk: RunChunk, blobs: list[Any],
                   failures: list[TaskFailure] | None) -> tuple[list[Any], list[TaskFailure] | None]:
    """The values of a chunk sent with separate_results, each unpickled on its own: one that cannot be read here
    fails its own task (a ResultPicklingError naming it) instead of the whole chunk."""
    def error_for(position: int, blob: Any, exc: Exception) -> BaseException:
        return ResultPicklingError(f"the result of task {chunk.start + position} was pickled in the worker but "
                                   f"cannot be unpickled here: {type(exc).__name__}: {exc}")

    return convert_each(blobs, failures, lambda position, blob: loads(blob), error_for, chunk.keep_going)


def _unreadable_results_error(chunk: RunChunk, error: BaseException) -> BaseException:
    wrapped = ResultPicklingError(f"the results of tasks {chunk.start} to {chunk.start + len(chunk.items) - 1} "
                                  f"cannot be unpickled here: {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped
