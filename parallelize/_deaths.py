"""Where a worker's end is handled: its slot is freed, and the chunks it held are sent again or failed.

The backend notices the end (a process sentinel, a thread that returned) and reports it with the worker's last
task clock, which names the task that was running: that one task fails with a WorkerDiedError (or is retried, per
the call's policy), everything else the worker held is sent again.
"""

from __future__ import annotations

import signal

from . import _clock, _errors
from ._log import logger
from ._messages import RunChunk
from ._pool_state import PoolState
from ._serialize import describe_unpicklable
from ._workers import Life, WorkerSlot
from .backends._base import EXIT_MAIN_REIMPORTED


class Deaths:
    def __init__(self, state: PoolState) -> None:
        self._state = state

    def on_exit(self, key: int, exitcode: int | None, clock: tuple[int, ...], reason: str = "") -> None:
        """*reason*: what the backend knows beyond the exit code (see backends._base.Exited)."""
        slot = self._state.workers.gone(key)
        if slot is None:
            return
        unexpected = slot.life in (Life.STARTING, Life.SERVING, Life.EXITING)  # it did not say it was ending
        self._put_back_chunks(slot, exitcode, clock, unexpected, reason)
        if unexpected and slot.life is not Life.STARTING and not self._state.stopping:
            logger().warning("worker %d (pid %s) ended unexpectedly (%s); a new worker takes its place",
                             slot.worker_id, slot.pid, describe_exitcode(exitcode, reason))
        if slot.life is Life.STARTING:
            self._died_starting(slot, exitcode, reason)

    def _put_back_chunks(self, slot: WorkerSlot, exitcode: int | None, clock: tuple[int, ...],
                         unexpected: bool, reason: str) -> None:
        """The chunk the worker was running fails at the task it was on (named by its last clock); the rest it
        held are sent again."""
        orphans = list(slot.inflight)
        slot.inflight.clear()
        if orphans and unexpected:
            job, chunk = orphans.pop(0)
            position = clock[_clock.INDEX] if clock[_clock.TAG] == chunk.tag else None
            if position in (_clock.SENDING, _clock.UNTRACKED) and not chunk.separate_results:
                # The worker died sending the results (every task ran; out of memory pickling a large one, say),
                # or running a chunk untracked. Run it once more tracked, each result sent on its own, so a
                # second death names the task.
                job.resend(chunk)
            else:
                if position in (_clock.SENDING, _clock.UNTRACKED):  # (cannot happen twice: resent tracked)
                    position = 0
                job.lost(chunk, position, _death_error(slot, chunk, position, exitcode, reason))
        for job, chunk in orphans:
            job.requeue(chunk)

    def _died_starting(self, slot: WorkerSlot, exitcode: int | None, reason: str) -> None:
        """A worker died before its worker_init finished (counted towards failing the calls, see start_failed)."""
        state = self._state
        if exitcode == EXIT_MAIN_REIMPORTED:
            state.fail_all(_errors.WorkerDiedError(
                f"worker {slot.worker_id} (start method {state.settings.start_method!r}) imports the main script "
                "as it starts, and the script starts a pool when imported: put the code that starts pools (calls "
                "of @parallel functions, WorkerPool) under `if __name__ == '__main__':` in the main script"))
        if state.stopping or exitcode in (-signal.SIGKILL, -signal.SIGTERM):
            return  # killed from outside: perhaps transient, not counted
        if reason:
            state.start_failed(f"worker {slot.worker_id}, {describe_exitcode(exitcode, reason)}")
            return
        state.start_failed(
            f"worker {slot.worker_id}, pid {slot.pid}, {describe_exitcode(exitcode)}; its stderr says why. With "
            "start_method 'spawn' or 'forkserver', a script that starts pools must do so under "
            "`if __name__ == '__main__':`, and shared objects must unpickle in a new process")


def _death_error(slot: WorkerSlot, chunk: RunChunk, position: int | None,
                 exitcode: int | None, reason: str) -> _errors.WorkerDiedError:
    if position is None:
        what = "before starting its next chunk"
    else:
        what = f"while running task {chunk.start + position} ({describe_unpicklable(chunk.items[position])})"
    return _errors.WorkerDiedError(f"worker {slot.worker_id} (pid {slot.pid}) died with "
                                   f"{describe_exitcode(exitcode, reason)} {what}{_exit_hint(exitcode)}")


def describe_exitcode(exitcode: int | None, reason: str = "") -> str:
    if reason:
        return f"{_describe_status(exitcode)} ({reason})"
    return _describe_status(exitcode)


def _describe_status(exitcode: int | None) -> str:
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
