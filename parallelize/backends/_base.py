"""The interface between the engine and whatever runs workers (processes, threads, later a cluster).

The engine asks a backend for capabilities (``supports_kill``), never for its type. A backend starts workers
running ``_worker.run_worker``, carries messages to them without blocking the caller for long, and reports what
happened as events from ``wait()``.
"""

from __future__ import annotations

import abc
from collections.abc import MutableSequence
from typing import Any, NamedTuple

from .._worker import WorkerSpec

# The exit status of a worker that, while it was starting, found the main script starting a pool: the script
# lacks an `if __name__ == "__main__":` guard, and every worker would fail the same way.
EXIT_MAIN_REIMPORTED = 71


class Received(NamedTuple):
    """A worker sent a message. *key* is the backend's name for that worker (unique for the backend's life).

    *message* is a record of _messages, as the worker sent it, or, from a backend that serialises, an
    Undecodable when it could not be unpickled in the parent. *size* is what it took on its way, in bytes, in the
    pipe and in shared memory alike (0 from a backend that hands messages over as objects): the engine queues
    fewer chunks per worker when their results are large.
    """

    key: int
    message: Any
    size: int = 0


class Exited(NamedTuple):
    """A worker ended. exitcode is 0 when its loop returned, negative for a signal (as in multiprocessing),
    positive for another exit status, None if unknown (a disowned thread).

    *clock* is the worker's last clock (see _clock), the parent's own writes included: what it was running when
    it ended. *reason* is what the backend knows beyond the exit code (a remote worker lost, say), or "".
    """

    key: int
    exitcode: int | None
    clock: tuple[int, ...]
    reason: str = ""


Event = Received | Exited


class Backend(abc.ABC):
    """Runs workers and carries messages between them and the engine; decides nothing itself.

    The contract every backend keeps (tests/test_backend_contract.py checks it for each one):

    Lifecycle of a worker. ``start_worker(key, spec)`` starts a worker running ``_worker.run_worker``. From then
    on ``wait()`` reports, for that key, ``Received`` events in the order the worker sent the messages, then
    exactly one ``Exited``, after all of them, and nothing more. Once ``wait()`` has returned that ``Exited``
    the key is forgotten: ``send`` and ``clock`` must not be called with it any more, ``kill`` and ``interrupt``
    do nothing, ``pid`` returns None. Between the worker's end and that moment, ``send`` drops its message
    silently (the engine deals with what the worker had when its ``Exited`` comes), ``kill`` and ``interrupt``
    do nothing, and the clock can still be read. The backend does not interpret messages; what a worker answers
    to what is the worker loop's protocol (see _messages).

    Threads. ``wakeup()`` may be called from any thread at any time, even while or after ``close()`` runs, and
    from a signal handler. Every other method is called by whichever thread holds the engine's driver role:
    never two calls at once, but not always from the same thread.

    Capabilities, which the engine asks for instead of a backend's type: ``supports_kill`` (``kill()`` really
    ends a worker; otherwise it disowns it) and ``supports_interrupt`` (``interrupt()`` reaches running code).

    What a new backend provides: the worker side calls ``run_worker(spec, channel, clock)`` with a ``Channel``
    (``recv`` raises EOFError once no more messages will come; ``send`` raises
    ``_serialize.ResultUnpicklable`` for a message it cannot serialise, and sends nothing of it) and a clock of
    ``_clock.SIZE`` integers shared with the parent. A worker in a process of its own first calls
    ``_worker.mark_worker_process()``; where ``supports_interrupt`` is True, ``interrupt()`` makes the worker's
    main thread run the handler made by ``_worker.interrupt_signal_handler(clock)``.
    """

    supports_kill: bool = True  # kill() really ends a worker (a thread can only be disowned)
    supports_interrupt: bool = True  # interrupt() raises in the running task (TaskTimeoutError, ChunkCancelled)
    name: str = "abstract"

    @abc.abstractmethod
    def start_worker(self, key: int, spec: WorkerSpec) -> None:
        """Start a worker that runs ``run_worker(spec, ...)``; events about it carry *key*, which the caller
        never used before on this backend. If this raises, no worker was started and no event will name *key*.
        Messages may be sent to the worker at once: they wait for it."""

    @abc.abstractmethod
    def send(self, key: int, message: Any, *, hold: bool = False) -> int:
        """Queue a message for a worker, behind the ones sent before. Never blocks on a slow worker: what cannot
        be written now is written from ``wait()``, so the caller must go on calling it.

        A message that cannot be serialised raises here, in the caller (pickle's error: TypeError,
        PicklingError, ...), and nothing of it is sent: the worker sees the messages before and after it intact.
        A backend that hands messages over as objects (threads) never raises for that.

        With *hold*, the message is serialised now (and raises now) but may be written later, together with the
        other messages held for the worker: with the next send to it without *hold*, or by ``write_held()`` or
        ``wait()``, whichever comes first. (One write for many small chunks: a worker woken once, not per chunk.)

        Returns the message's size as sent, in bytes, in the pipe and in shared memory alike (0 for a backend that
        hands messages over as objects): the engine queues fewer large chunks per worker.
        """

    @abc.abstractmethod
    def write_held(self) -> None:
        """Write every message that ``send(..., hold=True)`` held back (a backend that writes each message at once
        has nothing to do)."""

    @abc.abstractmethod
    def wait(self, timeout: float | None) -> list[Event]:
        """The events since the last call, in the order described in the class docstring (events of different
        workers may interleave in any order).

        Blocks until there is at least one, *timeout* seconds (None: no limit; else at least 0) pass, or
        ``wakeup()`` is called. It may return an empty list earlier too (a wake-up, or the backend's own work such
        as writing queued messages): callers loop. A ``wakeup()`` while no ``wait()`` runs makes the next one
        return at once.
        """

    @abc.abstractmethod
    def wakeup(self) -> None:
        """Make a concurrent ``wait()`` return (or the next one, if none runs). Any thread, any time: after
        ``close()`` it does nothing."""

    @abc.abstractmethod
    def clock(self, key: int) -> MutableSequence[int]:
        """The worker's task clock (see _clock): ``_clock.SIZE`` integers, all 0 at the start, shared with the
        worker without any message. The worker writes START_NS, INDEX and TAG; the parent writes CANCEL and
        TIMEOUT_NS. Readable and writable from ``start_worker`` until the worker's ``Exited`` is returned, whose
        ``clock`` is its last state."""

    @abc.abstractmethod
    def interrupt(self, key: int) -> None:
        """Make a worker look at its clock now: it interrupts its running task or hook if the clock says so
        (a timeout: _clock.TIMEOUT_NS equal to START_NS raises TaskTimeoutError; a cancelled job:
        _clock.CANCEL equal to the running job's cancel_mark raises ChunkCancelled, and the chunk is answered
        with ``cancelled=True``). Chunks of a job whose mark is on the clock when they come up are not run.

        Call it only for a worker that runs its loop: one that has reported WorkerReady, or whose clock shows a
        hook's START_NS (a worker still starting may not handle it yet). Does nothing for a worker that has
        ended. Backends that cannot interrupt running code (supports_interrupt False) make this a no-op: the
        worker sees a cancellation before its next chunk, and the engine handles a timeout with kill().
        """

    @abc.abstractmethod
    def kill(self, key: int, grace: float) -> None:
        """Stop a worker now (processes: SIGTERM, and its own child processes SIGKILL; SIGKILL after *grace*
        seconds). May block for about *grace* seconds. Its ``Exited`` follows from ``wait()``, after whatever it
        had sent before it died.

        Where supports_kill is False the worker is disowned instead: its ``Exited`` (exitcode None, its clock at
        this moment) is reported at once, nothing it sends later is, and it ends by itself once its running task
        returns. A worker that has ended already (or was disowned) still gets only one ``Exited``.
        """

    @abc.abstractmethod
    def pid(self, key: int) -> int | None:
        """The OS process id of a worker, if it is a process of this machine; None after its ``Exited`` was
        returned."""

    @abc.abstractmethod
    def close(self, timeout: float) -> None:
        """Release everything. Every worker's input ends (it sees EOF: an idle worker ends at once, without its
        exit hook, a busy one after its running task); workers still running *timeout* seconds later (in all,
        not per worker) are killed, or disowned where supports_kill is False. No events are reported after it;
        send STOP first and wait for the ``Exited`` events for a clean end.

        Idempotent; afterwards only ``close()`` and ``wakeup()`` may be called. (A process backend inherited by
        a child made by os.fork() leaves the parent's workers alone: close() does nothing there.)
        """
