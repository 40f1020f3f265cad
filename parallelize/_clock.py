"""The task clock: a few int64 slots in memory shared by a worker and the parent, read without any message.

The worker writes which chunk (TAG) and which item of it (INDEX) it is running, and when the running task or hook
started (START_NS: only for jobs with a task timeout, and for hooks). The parent writes the other two: CANCEL
(the mark of a job whose chunks must stop) and TIMEOUT_NS (the START_NS of a task or hook that ran past its
timeout). A signal then makes the worker look: it interrupts the running task only if the clock still says it is
the one meant, so a late signal never hits the next task.

This is how the parent names the exact task that was running when a worker died or timed out, at the cost of one
memory write per task.
"""

from __future__ import annotations

from typing import Protocol

START_NS = 0  # time.monotonic_ns() when the running task or hook started; 0 when none is timed
INDEX = 1  # position in its chunk of the running task, or of the result being pickled; SENDING after that
TAG = 2  # tag of the chunk being run; 0 between chunks
CANCEL = 3  # written by the parent: cancel_mark(job id) of a job whose chunks must stop
TIMEOUT_NS = 4  # written by the parent: START_NS of the task or hook to interrupt with a TaskTimeoutError
SIZE = 5

SENDING = -1  # INDEX while the chunk's results are being sent: every task ran, the results are not back yet
# INDEX while a chunk runs untracked: its tasks called by map() at C speed, with no write per task. A worker that
# dies then cannot name the task; the parent runs the chunk again tracked (RunChunk.separate_results), so a
# second death names it.
UNTRACKED = -2


class Clock(Protocol):
    """Int64 slots shared with the parent (a memoryview of shared memory, or a list for thread workers)."""

    def __getitem__(self, index: int, /) -> int: ...

    def __setitem__(self, index: int, value: int, /) -> None: ...


def cancel_mark(job_id: int) -> int:
    """What CANCEL holds to stop *job_id*'s chunks (job ids start at 0, and 0 means nothing is cancelled)."""
    return job_id + 1
