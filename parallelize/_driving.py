"""Who runs the engine's loop: the driver's role, taken in turn by the threads that wait on a job.

Any thread that waits for a job runs the loop itself while it waits, one at a time, so a plain map needs no helper
thread: dispatch, wait, collect, all in the caller's thread. A thread that must change the pool (terminate,
close, new hooks) takes the role exclusively, waking the current driver up to hand it over. Work nobody waits on
(apply_async, submit) gets a background driver thread, which quits when that work is done.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from ._job import Job
from ._log import logger
from ._sigint import SigintHold

# The longest the loop blocks in one go. A far deadline (a timeout of years) is reached by waking up again:
# epoll takes at most ~24.8 days and a lock at most threading.TIMEOUT_MAX, anything longer raises OverflowError.
MAX_WAIT = 86400.0


class DriverRole:
    def __init__(self, step: Callable[[float | None], None], wakeup: Callable[[], None],
                 closed: Callable[[], bool], released: Callable[[], None], pending: Callable[[], bool],
                 aborted: Callable[[BaseException], None]) -> None:
        self.lock = threading.Condition()  # guards the role, and what other threads hand to the driver
        self._step = step  # one turn of the loop, blocking at most the given seconds
        self._wakeup = wakeup  # makes a blocked step return at once
        self._closed = closed
        self._released = released  # runs in the role just before it is given up (quick work left for the driver)
        self._pending = pending  # more of that work was left meanwhile (read under the lock)
        self._aborted = aborted  # a step was interrupted half-way: the pool cannot be trusted any more
        self._driving = False
        self._handover = False  # someone needs the role exclusively (terminate, close)

    def drive(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run the loop in this thread (or let the current driver do it) until done(); False on timeout, or when
        the pool closed first.

        In the main thread, a Ctrl-C is held until the step under way ends (see _sigint), so it interrupts this
        caller only: the bookkeeping is whole and other threads' calls go on.
        """
        hold = SigintHold.install(self._wakeup)
        if hold is None:
            return self._drive(done, timeout, None)
        try:
            finished = self._drive(done, timeout, hold)
        finally:
            hold.remove()
        hold.raise_pending()  # arrived during the last step
        return finished

    def _drive(self, done: Callable[[], bool], timeout: float | None, hold: SigintHold | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.lock:
                while True:
                    if hold is not None:
                        hold.raise_pending()
                    if done():
                        return True
                    if self._closed():
                        return False  # nothing will ever happen again
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    if not self._driving and not self._handover:
                        self._driving = True
                        break
                    self.lock.wait(None if remaining is None else min(remaining, MAX_WAIT))
            try:
                self._step(remaining)
            except BaseException as exc:
                # Interrupted mid-step (an exception raised by a program's own signal handler, such as a test
                # runner's timeout, a Ctrl-C in a thread that cannot hold it, an internal error): the bookkeeping
                # may be half-updated, with a chunk sent but not recorded, say. The workers go now; the next call
                # starts fresh ones instead of trusting this state.
                self._give_up()
                self._aborted(exc)
                raise
            self.release()

    def take_if_free(self) -> bool:
        """Take the role if nobody holds or awaits it (the caller then calls release()); False if busy."""
        with self.lock:
            if self._driving or self._handover:
                return False
            self._driving = True
            return True

    def release(self) -> None:
        """Give up the role, after the quick work left for the driver meanwhile (cancellations), including work
        left while it was being done: whoever left it saw the role taken and counts on this driver."""
        try:
            while True:
                self._released()
                with self.lock:
                    if not self._pending():
                        self._driving = False
                        self.lock.notify_all()
                        return
        except BaseException:
            self._give_up()
            raise

    def _give_up(self) -> None:
        with self.lock:
            self._driving = False
            self.lock.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the role, waking the current driver up to hand it over: nobody else touches the backend
        meanwhile."""
        with self.lock:
            self._handover = True  # drivers waiting for their turn must let us go first
            while self._driving:
                self._wakeup()
                self.lock.wait(0.05)
            self._driving = True
            self._handover = False
        try:
            yield
        finally:
            self._give_up()


class BackgroundDriver:
    """Drives the jobs nobody waits on (apply_async, submit) in a helper thread, which quits when they are done."""

    def __init__(self, role: DriverRole, closed: Callable[[], bool]) -> None:
        self._role = role
        self._closed = closed
        self.jobs: set[Job] = set()  # changed under role.lock, or in the driver's role
        self._thread: threading.Thread | None = None

    def add(self, job: Job) -> None:
        """Serve *job* in the background. Called with role.lock held."""
        self.jobs.add(job)
        job.finish_listeners.append(self.jobs.discard)  # runs inside a step, i.e. in the driver's role
        # The thread clears _thread under the same lock when it quits, so a job added at that moment always gets
        # a new thread.
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="parallelize-driver", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Drive until no background job is left; False on timeout."""
        return self._role.drive(lambda: not self.jobs, timeout)

    def _run(self) -> None:
        def nothing_left() -> bool:  # evaluated with role.lock held
            if self.jobs and not self._closed():
                return False
            self._thread = None
            return True

        try:
            self._role.drive(nothing_left)
        except BaseException as exc:
            # Nobody waits in this thread to see the error: hand it to every job it was serving instead of
            # leaving them unfinished for ever.
            logger().exception("parallelize: the background driver failed")
            with self._role.lock:
                self._thread = None
                jobs = list(self.jobs)
            for job in jobs:
                job.fail(exc)
