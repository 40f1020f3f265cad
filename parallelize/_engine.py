"""The running pool: a fixed number of worker slots on a backend, serving jobs from any number of calls.

The engine is the front ends' one door to the workers (submit, drive, cancel, stop, terminate) and runs the loop
that serves jobs. Each part of that loop is its own component, named for what it answers:

- _driving: which thread runs the loop now (callers take turns; a background thread for unattended work);
- _dispatch: which chunk goes to which worker, and interrupting chunks nobody wants any more;
- _answers: what the workers say (ready, results, their own end); results go back in order in _job;
- _deaths: a worker gone (noticed by the backend): its chunks are sent again or failed;
- _deadlines: task, worker_init and worker_exit timeouts;
- _workers: each worker's life in its slot, as a state with named transitions.

One step of the loop: take new jobs, dispatch, block in backend.wait() until the nearest deadline, handle what
happened, enforce the deadlines that passed, dispatch again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

from . import _validation as check
from ._answers import Answers
from ._deadlines import INTERRUPT_GRACE, Deadlines
from ._deaths import Deaths
from ._dispatch import Dispatcher
from ._driving import MAX_WAIT, BackgroundDriver, DriverRole
from ._errors import PoolClosedError
from ._job import Job
from ._messages import SetHooks
from ._pool_insights import PoolInsights
from ._pool_state import PoolState
from ._progress_feed import ProgressFeed
from ._settings import WorkerSettings
from ._workers import KILL_GRACE
from .backends import Backend, create_backend
from .backends._base import Exited, Received


class Engine:
    """One pool of workers and the jobs it serves; safe to use from any number of threads.

    Settings for one call (its timeouts, error policy, chunking) travel on its Job; what the workers are made with
    is the WorkerSettings given here (and changed only by update_hooks).
    """

    serial = False

    def __init__(self, settings: WorkerSettings) -> None:
        check.worker_limits(settings.n_jobs, settings.start_method)  # before anything is made for the workers
        self.backend: Backend = create_backend(settings.start_method, daemon=settings.daemon, cluster=settings.cluster,
                                               n_workers=settings.n_jobs)
        self._state = PoolState(settings, self.backend)
        self._workers = self._state.workers
        self._dispatcher = Dispatcher(self._state)
        self._answers = Answers(self._state)
        self._deaths = Deaths(self._state)
        self._deadlines = Deadlines(self._state)
        self._progress = ProgressFeed(self._state)
        self._role = DriverRole(self._step, self.backend.wakeup, lambda: self.closed, self._handle_cancellations,
                                lambda: bool(self._cancel_requests), self.abort)
        self._cv = self._role.lock
        self._background = BackgroundDriver(self._role, lambda: self.closed)
        self._job_ids = itertools.count()
        self._calls = 0  # calls driving jobs on this engine right now (see _calls.run)
        self._cancel_requests: list[Job] = []  # Engine.cancel() from any thread; handled in the driver's role
        self._hook_ids: tuple[int | None, int | None] = (None, None)  # registered by update_hooks
        self.closed = False
        self._pid = os.getpid()

    # --- what the front ends read ---

    @property
    def settings(self) -> WorkerSettings:
        return self._state.settings

    @property
    def usable(self) -> bool:
        """Not closed, and in the process that started it (after os.fork() the child must start its own)."""
        return not self.closed and not self.foreign

    @property
    def foreign(self) -> bool:
        """In a process that did not start this engine (a child made by os.fork()): its workers, jobs and shared
        clocks are the parent's, which goes on using them; nothing here may touch them."""
        return self._pid != os.getpid()

    @property
    def exit_results(self) -> list[Any]:
        return self._state.exit_results

    @property
    def exit_errors(self) -> list[BaseException]:
        return self._state.exit_errors

    @property
    def insights(self) -> PoolInsights | None:
        return self._state.insights

    def worker_pids(self) -> list[int]:
        return self._workers.pids()

    def in_use(self) -> bool:
        """A call is running on this engine (a map, an open imap) or background work is pending."""
        with self._cv:
            return self._calls > 0 or bool(self._background.jobs) or bool(self._state.incoming)

    def call_started(self) -> None:
        with self._cv:
            self._calls += 1

    def call_ended(self) -> None:
        with self._cv:
            self._calls -= 1

    # --- jobs ---

    def new_job_id(self) -> int:
        return next(self._job_ids)

    def function_id(self, func: Callable[..., Any]) -> int:
        """The id of *func* in this engine, held for the job about to be made with it until that job ends (see
        submit); workers learn it at start (fork) or on first use."""
        return self._state.functions.acquire(func)

    def task_seconds(self, func_id: int) -> float | None:
        """The time per task of *func_id* measured by earlier chunks on this pool, if any (it sizes chunks)."""
        return self._state.task_seconds.get(func_id)

    def submit(self, job: Job, *, background: bool = False) -> None:
        """Add a job. With background=True a helper thread drives it (nobody is going to wait on it)."""
        job.finish_listeners.append(self._job_finished)
        with self._cv:  # (closing sets `closed` under it too: no job slips in after the open calls were failed)
            if self.closed or self._state.stopping:
                raise PoolClosedError("the pool has been stopped; start a new one")
            self._state.note_call_timeouts(job)
            self._state.incoming.append(job)
            if background:
                self._background.add(job)
        self.backend.wakeup()

    def drive(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run the loop in this thread (or let the current driver do it) until done(); False on timeout."""
        if self.foreign:
            return done()  # a forked child reading an inherited call: the workers are the parent's, not ours
        return self._role.drive(done, timeout)

    def has_async_jobs(self) -> bool:
        return bool(self._background.jobs)

    def wait_async_jobs(self, timeout: float | None = None) -> bool:
        if self.foreign:
            return True  # the parent's jobs
        return self._background.wait(timeout)

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
            # interruptions before giving the role up.
            self._cancel_requests.append(job)
        if self._role.take_if_free():
            self._role.release()
        else:
            self.backend.wakeup()
        if settle:
            self._settle(job)

    def _settle(self, job: Job) -> None:
        def settled() -> bool:
            if job in self._cancel_requests or job in self._state.to_cancel:
                return False  # the interruption has not reached the workers yet
            return not any(j is job for slot in self._workers for j, _ in slot.inflight)

        # A second Ctrl-C meanwhile does not stop this short cleanup: the caller is ending with the first already.
        deadline = time.monotonic() + INTERRUPT_GRACE + 2 * KILL_GRACE
        while True:
            with contextlib.suppress(KeyboardInterrupt):
                self.drive(settled, timeout=max(0.0, deadline - time.monotonic()))
                return  # settled, out of time, or the engine closed

    # --- the workers ---

    def update_hooks(self, worker_init: Callable[..., Any] | None, worker_exit: Callable[..., Any] | None,
                     worker_lifespan: int | None) -> int:
        """Give the live workers, and those started from now on, new hooks and a new lifespan, keeping the workers
        and their state (MPIRE's keep_alive). A live worker runs the new worker_init only if it has run none, and
        the new worker_exit when it ends; its lifespan counts every task it has run. Returns how many live
        workers were told."""
        n_live = 0
        with self._role.exclusive():
            self._workers.settings = self.settings._replace(worker_init=worker_init, worker_exit=worker_exit,
                                                            worker_lifespan=worker_lifespan)
            init_id = None if worker_init is None else self.function_id(worker_init)
            exit_id = None if worker_exit is None else self.function_id(worker_exit)
            for replaced in self._hook_ids:  # held while they were the pool's hooks; the registry may drop them now
                if replaced is not None:
                    self._state.functions.release(replaced)
            self._hook_ids = (init_id, exit_id)
            message = SetHooks(init_id, exit_id, worker_lifespan)
            for slot in self._workers:
                if not slot.reachable:
                    continue  # no worker, or one that is ending
                for func_id in (init_id, exit_id):
                    if func_id is not None:
                        self._dispatcher.teach(slot, func_id)
                assert slot.key is not None
                self.backend.send(slot.key, message)
                n_live += 1
                if worker_init is not None and slot.init_hook is None:
                    slot.init_hook = worker_init
                    if not slot.inflight:
                        # It runs the hook now, with worker_init_timeout counted from the hook's start. (Behind
                        # chunks already queued, it starts at an unknown time: no deadline.)
                        slot.init_runs_again()
        self.backend.wakeup()
        return n_live

    def stop(self, timeout: float | None = None) -> list[Any]:
        """Let in-flight work finish, run every worker's exit hook, and end the workers.

        Workers still running after *timeout* seconds are killed.
        """
        if self.closed or self.foreign:
            return []
        self._state.stopping = True
        self.backend.wakeup()
        try:
            self.drive(self._workers.all_gone, timeout)
        finally:
            with self._role.exclusive():
                self._close_backend(timeout=1.0)
        return self._state.exit_results

    def terminate(self, reason: str = "Pool was terminated") -> None:
        """End every worker now: no exit hooks, in-flight work is lost, unfinished calls fail with PoolClosedError
        saying *reason*. Safe to call again after an interruption: it finishes what an interrupted call left
        (abort() relies on that)."""
        if self.foreign:
            return
        self._state.stopping = True
        with self._role.exclusive():
            self._state.end_calls(PoolClosedError(f"{reason}: the call's remaining tasks were dropped"))
            for slot in self._workers:
                if slot.key is not None:
                    slot.was_killed()
            self._close_backend(timeout=0.0)

    def abort(self, cause: BaseException) -> None:
        """After an interruption: end every worker at once. A second Ctrl-C does not stop the cleanup."""
        reason = f"Pool was terminated because {type(cause).__name__} interrupted the thread driving it"
        while True:
            try:
                self.terminate(reason)
                return
            except KeyboardInterrupt:
                continue

    def _close_backend(self, timeout: float) -> None:
        with self._cv:
            self.closed = True
        self._state.end_calls(PoolClosedError("the pool was closed before this call finished; its remaining "
                                              "tasks were dropped"))
        self.backend.close(timeout)  # idempotent, and resumes a close interrupted by a second Ctrl-C

    # --- the loop (run in the driver's role) ---

    def _step(self, timeout: float | None) -> None:
        state = self._state
        with self._cv:
            if state.incoming:
                state.jobs.extend(state.incoming)
                state.incoming.clear()
        self._dispatcher.interrupt_cancelled()
        self._dispatcher.dispatch()
        next_deadline = self._deadlines.nearest()  # nothing is due before it
        next_tick = self._progress.next_tick()  # None unless a call shows a progress bar
        wake = next_deadline
        if next_tick is not None and (wake is None or next_tick < wake):
            wake = next_tick
        wait = None if wake is None else max(0.0, wake - time.monotonic())
        if any(job.finished for job in state.jobs):
            wait = 0.0  # one ended while dispatching (its input ran out): its caller must not wait for an event
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        for event in self.backend.wait(None if wait is None else min(wait, MAX_WAIT)):
            if type(event) is Received:
                self._answers.on_message(event.key, event.message, event.size)
            else:
                assert type(event) is Exited
                self._deaths.on_exit(event.key, event.exitcode, event.clock, event.reason)
        # Whatever the events changed can only move deadlines later (a new task's deadline is a full timeout
        # away), so nothing is due before the nearest one computed above.
        if next_deadline is not None and time.monotonic() >= next_deadline:
            self._deadlines.enforce()
        if next_tick is not None:
            self._progress.feed()
        self._dispatcher.interrupt_cancelled()
        if state.jobs:
            state.jobs = [job for job in state.jobs if not job.finished]
        self._dispatcher.dispatch()

    def _job_finished(self, job: Job) -> None:
        self._state.functions.release(job.func_id)  # held since function_id() made it for this job
        if job.error is not None or job.cancelled:
            self._state.to_cancel.append(job)

    def _handle_cancellations(self) -> None:
        """In the driver's role, as it is given up: end the jobs cancelled meanwhile and interrupt their chunks."""
        with self._cv:
            requests, self._cancel_requests = self._cancel_requests, []
        for job in requests:
            job.cancel()
        self._dispatcher.interrupt_cancelled()
