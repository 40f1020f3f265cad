"""Per-task progress of the calls that show a bar, read from the workers' clocks a few times a second.

Results come back per chunk, so a bar fed only by finished chunks would stand still over a large chunk. A job with
a bar has its chunks run tracked (RunChunk.count_tasks): the worker writes the position of its running task to its
clock (INDEX) before each task, so the tasks of the chunk done so far are read from shared memory, with no message.
Only while some job shows a bar does the loop wake every TICK seconds to read them; with none, this costs nothing.
"""

from __future__ import annotations

import time

from . import _clock
from ._job import Job
from ._pool_state import PoolState

TICK = 0.2  # seconds between two reads of the clocks while a bar is shown


class ProgressFeed:
    def __init__(self, state: PoolState) -> None:
        self._state = state
        self._next = 0.0

    def next_tick(self) -> float | None:
        """When the loop must wake up to feed the bars; None when no job shows one."""
        for job in self._state.jobs:
            if job.progress is not None:
                return self._next
        return None

    def feed(self) -> None:
        """Hand each bar its job's finished tasks plus those done in its running chunks, if a tick is due."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + TICK
        for job in self._state.jobs:
            if job.progress is not None and not job.finished:
                job.progress.advance(job, self._running(job))

    def _running(self, job: Job) -> int:
        """The tasks done so far in *job*'s chunks that have not finished (their results are not back yet)."""
        workers = self._state.workers
        done = 0
        for slot in workers:
            if not slot.running:
                continue
            for owner, chunk in slot.inflight:
                if owner is not job:
                    continue
                clock = workers.clock(slot)
                if clock[_clock.TAG] != chunk.tag:
                    continue  # not started yet (or finished: its results are on their way)
                # The running task's position: that many are done. SENDING (every task ran) counts none: a chunk
                # that has just started may still show the SENDING of the chunk before it, and a count read too
                # high would stay on the bar. Its results are about to arrive anyway; the bar never goes back.
                index = clock[_clock.INDEX]
                if clock[_clock.TAG] == chunk.tag:  # still this chunk's position, not already the next chunk's
                    done += min(max(index, 0), len(chunk.items))
        return done
