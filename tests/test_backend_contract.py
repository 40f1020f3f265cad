"""The Backend contract (see parallelize/backends/_base.py), checked against every backend.

The tests drive a backend directly, the way the engine does: start a worker with a WorkerSpec, send it
RegisterFunc / RunChunk / STOP, read its events from wait(), write its clock, interrupt and kill it.

A new backend joins by adding a BackendCase to BACKENDS. Cases with ``thorough=False`` (slow to start workers)
run only the basic tests. A case whose workers live on a cluster names a module-wide ``setup`` (the cluster,
started once for all its tests, before each test's leak check looks). Nothing here sleeps to let something happen:
every wait is on an event or a deadline.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests import dask_cluster

from parallelize import _clock
from parallelize._errors import ResultPicklingError, TaskTimeoutError
from parallelize._messages import (
    CALL_UNPACK,
    STOP,
    ChunkDone,
    ChunkStats,
    RegisterFunc,
    RunChunk,
    WorkerExited,
    WorkerReady,
)
from parallelize._serialize import dumps, unpack_exception
from parallelize._settings import WorkerSettings
from parallelize._worker import WorkerSpec
from parallelize.backends import Backend, create_backend
from parallelize.backends._base import Event, Exited, Received

pytestmark = pytest.mark.timeout(60)

DEADLINE = 20.0  # seconds any expected event may take on a loaded machine; never reached when all is well


@dataclass(frozen=True)
class BackendCase:
    """One backend under test: how to make it, and what it can be asked for."""

    name: str
    make: Callable[[Any], Backend]  # given what *setup* gave (None without one)
    serialises: bool  # messages are pickled (True), or handed over as objects (threads)
    thorough: bool = True  # False: only the basic tests (a backend whose workers are slow to start)
    # Started once for all the case's tests (a cluster): what it yields is given to make().
    setup: Callable[[], AbstractContextManager[Any]] | None = None
    remote: bool = False  # workers are processes this test did not start: released through a file
    environment: Any = None  # what setup gave, in the case the tests get


def local(start_method: str) -> Callable[[Any], Backend]:
    return lambda _: create_backend(start_method, daemon=True)


def dask_backend(cluster: Any) -> Backend:
    from parallelize.backends.dask import DaskBackend

    return DaskBackend(cluster)


BACKENDS = [
    BackendCase("fork", local("fork"), serialises=True),
    BackendCase("forkserver", local("forkserver"), serialises=True),
    BackendCase("spawn", local("spawn"), serialises=True, thorough=False),
    BackendCase("threading", local("threading"), serialises=False),
    # A LocalCluster of two single-thread worker processes, reached through its Client.
    BackendCase("dask-local", dask_backend, serialises=True, setup=dask_cluster.local_cluster, remote=True),
    # A scheduler and two workers started as commands, as on a real cluster, reached by their TCP address.
    BackendCase("dask-cli", dask_backend, serialises=True, setup=dask_cluster.command_line_cluster, remote=True),
]


def _parametrize(cases: list[BackendCase]) -> pytest.MarkDecorator:
    # Indirect and module-scoped: a case's setup runs once, before the tests' leak checks take their baseline.
    return pytest.mark.parametrize("case", cases, ids=[case.name for case in cases], indirect=True, scope="module")


every_backend = _parametrize(BACKENDS)
thorough_backends = _parametrize([case for case in BACKENDS if case.thorough])


@pytest.fixture(scope="module")
def case(request: pytest.FixtureRequest) -> Iterator[BackendCase]:
    spec: BackendCase = request.param
    if spec.setup is None:
        yield spec
        return
    with spec.setup() as environment:
        yield dataclasses.replace(spec, environment=environment)


# --- task functions (module level: importable by spawn workers). Each gets the spec's shared object first: a
# semaphore the test releases to let blocked tasks return (a semaphore, not an Event: killing a process waiting on
# a multiprocessing Event leaves the Event's set() waiting for it for ever). ------------------------------------

def echo(release: Any, x: Any) -> Any:
    return x


def block(release: Any, x: Any) -> Any:
    """Returns once the test releases *release* (process workers never see that: the test kills them)."""
    if release.acquire(timeout=DEADLINE * 2):
        release.release()  # for the next blocked task
    return x


def sleep_long(release: Any, x: Any) -> Any:
    time.sleep(DEADLINE * 2)  # interrupted by a signal in the tests that use it
    return x


def unpicklable_result(release: Any, x: Any) -> Any:
    return threading.Lock()


ECHO, BLOCK, SLEEP, UNPICKLABLE = 1, 2, 3, 4
FUNCTIONS: dict[int, Callable[..., Any]] = {ECHO: echo, BLOCK: block, SLEEP: sleep_long,
                                            UNPICKLABLE: unpicklable_result}


def run_chunk(tag: int, items: list[Any], func_id: int = ECHO, *, job_id: int = 0,
              task_timeout: float | None = None) -> RunChunk:
    return RunChunk(job_id=job_id, chunk_id=tag, func_id=func_id, call_mode=CALL_UNPACK, items=items, start=0,
                    task_timeout=task_timeout, keep_going=False, separate_results=False, tag=tag)


# --- fixtures and helpers -------------------------------------------------------------------------------------------

class FileRelease:
    """The release for workers in processes the test did not start (a cluster's): a file that appears."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def release(self) -> None:
        self.path.touch()

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.path.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


@pytest.fixture
def release(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    callspec = getattr(request.node, "callspec", None)
    case = None if callspec is None else callspec.params.get("case")
    if case is not None and case.remote:
        return FileRelease(tmp_path / "release")
    return multiprocessing.get_context("spawn").Semaphore(0)  # usable by workers of every start method, and threads


@pytest.fixture
def backend(case: BackendCase, release: Any) -> Iterator[Backend]:
    made = case.make(case.environment)
    try:
        yield made
    finally:
        release.release()  # thread workers blocked in a task return and end
        made.close(timeout=5.0)


def worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("parallelize-worker-") and t.is_alive()}


class Recorder:
    """Every event a backend reported, in order; waits for more with a deadline."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.events: list[Event] = []

    def until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {DEADLINE}s; events so far: {self.events}")
            self.events.extend(self.backend.wait(remaining))

    def messages(self, key: int, kind: type | None = None) -> list[Any]:
        return [e.message for e in self.events
                if type(e) is Received and e.key == key and (kind is None or type(e.message) is kind)]

    def exits(self, key: int) -> list[Exited]:
        return [e for e in self.events if type(e) is Exited and e.key == key]

    def wait_message(self, key: int, kind: type, count: int = 1) -> list[Any]:
        self.until(lambda: len(self.messages(key, kind)) >= count, f"{count} {kind.__name__} from worker {key}")
        return self.messages(key, kind)

    def wait_exit(self, key: int) -> Exited:
        self.until(lambda: bool(self.exits(key)), f"Exited for worker {key}")
        return self.exits(key)[0]

    def assert_ended_once(self, key: int) -> None:
        """Exactly one Exited for *key*, and nothing about it after that."""
        about = [e for e in self.events if e.key == key]
        assert [type(e) for e in about].count(Exited) == 1, about
        assert type(about[-1]) is Exited, about


def start(backend: Backend, key: int, release: Any, worker_id: int = 0) -> None:
    settings = WorkerSettings(n_jobs=1, start_method=backend.name, shared_objects=release)
    spec = WorkerSpec(worker_id, settings, dict(FUNCTIONS), created_at=time.time())
    backend.start_worker(key, spec)


def start_ready(backend: Backend, events: Recorder, key: int, release: Any, worker_id: int = 0) -> WorkerReady:
    start(backend, key, release, worker_id)
    (ready,) = events.wait_message(key, WorkerReady)
    assert ready.worker_id == worker_id and ready.failure is None
    return ready


def wait_clock(events: Recorder, key: int, done: Callable[[Any], bool], what: str) -> None:
    """Bounded polling of a worker's clock (the parent has no other way to see what a task does), through wait()
    as the engine does: a remote worker's clock is what it last reported."""
    backend = events.backend
    deadline = time.monotonic() + DEADLINE
    while not done(backend.clock(key)):
        if time.monotonic() > deadline:
            raise AssertionError(f"the clock never showed {what}: {list(backend.clock(key))}")
        events.events.extend(backend.wait(0.005))


def running(tag: int, index: int = 0, timed: bool = False) -> Callable[[Any], bool]:
    """The clock says: task *index* of chunk *tag* runs (and, if *timed*, its start time is published)."""
    # (A chunk of plain items may run untracked, through map(): its clock then says UNTRACKED, not the index.)
    return lambda c: (c[_clock.TAG] == tag and c[_clock.INDEX] in (index, _clock.UNTRACKED)
                      and (c[_clock.START_NS] != 0 or not timed))


def await_end(pid: int | None, threads_before: set[threading.Thread]) -> None:
    """Until the worker has ended: the process *pid*, else the worker threads started since *threads_before*."""
    if pid is None:
        for thread in worker_threads() - threads_before:
            thread.join(DEADLINE)
        return
    deadline = time.monotonic() + DEADLINE
    while not process_gone(pid):
        assert time.monotonic() < deadline, f"worker process {pid} did not end"
        time.sleep(0.005)


def await_task_end(backend: Backend, key: int) -> None:
    """Until a cluster worker's task has returned (seen by the client, not through the backend's events)."""
    future = backend._workers[key].future  # type: ignore[attr-defined]
    deadline = time.monotonic() + DEADLINE
    while future.status == "pending":
        assert time.monotonic() < deadline, f"the task of worker {key} did not end"
        time.sleep(0.005)


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- the contract ---------------------------------------------------------------------------------------------------

@every_backend
def test_a_worker_reports_ready_and_ends_after_stop(case: BackendCase, backend: Backend, release: Any) -> None:
    events = Recorder(backend)
    ready = start_ready(backend, events, 7, release, worker_id=3)
    pid = backend.pid(7)
    if pid is not None:
        assert pid == ready.pid
    assert list(backend.clock(7)) == [0] * _clock.SIZE
    backend.send(7, STOP)
    exited = events.wait_exit(7)
    (goodbye,) = events.messages(7, WorkerExited)
    assert goodbye.worker_id == 3 and goodbye.reason == "stop"
    assert exited.exitcode == 0
    events.assert_ended_once(7)
    assert backend.pid(7) is None


@every_backend
def test_chunks_are_answered_in_order_with_their_tags_before_exited(case: BackendCase, backend: Backend,
                                                                    release: Any) -> None:
    events = Recorder(backend)
    start(backend, 1, release)  # sent to at once, as the engine does: the backend keeps what the worker cannot read yet
    backend.send(1, RegisterFunc(9, dumps(echo)))
    for tag in range(10, 16):
        backend.send(1, run_chunk(tag, [tag, tag + 1], func_id=9 if tag % 2 else ECHO))
    backend.send(1, STOP)
    events.wait_exit(1)
    answers = events.messages(1)
    assert [type(m) for m in answers] == [WorkerReady] + [ChunkDone] * 6 + [WorkerExited]
    assert [(m.tag, m.values, m.failures, m.cancelled) for m in answers[1:-1]] == [
        (tag, [tag, tag + 1], None, False) for tag in range(10, 16)]
    events.assert_ended_once(1)


@every_backend
def test_a_chunk_sent_with_collect_is_answered_with_its_task_timings(case: BackendCase, backend: Backend,
                                                                     release: Any) -> None:
    events = Recorder(backend)
    start_ready(backend, events, 1, release)
    backend.send(1, run_chunk(5, [1, 2, 3])._replace(collect=True))
    backend.send(1, run_chunk(6, [4]))
    timed, plain = events.wait_message(1, ChunkDone, 2)
    assert plain.stats is None and timed.values == [1, 2, 3]
    stats = timed.stats
    assert isinstance(stats, ChunkStats)
    assert stats.n_completed == 3 and stats.working_time >= 0 and stats.started <= stats.ended
    assert sorted(args for _, args in stats.slowest) == ["Arg 0: 1", "Arg 0: 2", "Arg 0: 3"]
    assert stats.nested == [] and stats.arg_bytes > 0


@thorough_backends
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_whose_loop_raises_exits_with_a_positive_status(case: BackendCase, backend: Backend,
                                                                 release: Any) -> None:
    events = Recorder(backend)
    start_ready(backend, events, 1, release)
    backend.send(1, "not a message")  # the worker loop raises TypeError
    exited = events.wait_exit(1)
    assert exited.exitcode is not None and exited.exitcode > 0
    events.assert_ended_once(1)


@every_backend
def test_send_and_received_say_how_many_bytes_a_message_took(case: BackendCase, backend: Backend,
                                                             release: Any) -> None:
    events = Recorder(backend)
    start_ready(backend, events, 1, release)
    small = backend.send(1, run_chunk(1, [1]))
    large = backend.send(1, run_chunk(2, [bytes(1 << 20)]))  # out of band: shared memory or the pipe
    over = backend.send(1, run_chunk(3, [bytes(40 << 20)]))  # more than the shared memory holds
    events.wait_message(1, ChunkDone, 3)
    answers = [e.size for e in events.events if type(e) is Received and type(e.message) is ChunkDone]
    if case.serialises:
        assert 0 < small < 1000 and (1 << 20) <= large < (1 << 20) + 1000 and over >= (40 << 20)
        assert 0 < answers[0] < 1000 and (1 << 20) <= answers[1] < (1 << 20) + 1000 and answers[2] >= (40 << 20)
    else:
        assert small == large == over == 0  # handed over as objects
        assert answers == [0, 0, 0]


@every_backend
def test_a_message_that_cannot_be_pickled_raises_in_send_and_nothing_is_sent(case: BackendCase, backend: Backend,
                                                                             release: Any) -> None:
    events = Recorder(backend)
    start_ready(backend, events, 1, release)
    bad = run_chunk(1, [threading.Lock()])
    if case.serialises:
        with pytest.raises(TypeError, match="pickle"):
            backend.send(1, bad)
    else:
        backend.send(1, bad)  # handed over as it is
    backend.send(1, run_chunk(2, ["fine"]))
    backend.send(1, STOP)
    events.wait_exit(1)
    done = events.messages(1, ChunkDone)
    if case.serialises:  # the worker never saw the bad chunk, nor part of it
        assert [(m.tag, m.values) for m in done] == [(2, ["fine"])]
    else:
        assert [m.tag for m in done] == [1, 2]


@every_backend
def test_held_messages_are_written_in_order_by_the_next_send_write_held_or_wait(case: BackendCase, backend: Backend,
                                                                                release: Any) -> None:
    events = Recorder(backend)
    start_ready(backend, events, 1, release)
    backend.send(1, run_chunk(1, [1]), hold=True)
    backend.send(1, run_chunk(2, [2]), hold=True)
    backend.send(1, run_chunk(3, [3]))  # after the two held before it
    backend.send(1, run_chunk(4, [4]), hold=True)
    backend.write_held()
    if case.serialises:  # checked at once, even held: nothing of it is held
        with pytest.raises(TypeError, match="pickle"):
            backend.send(1, run_chunk(5, [threading.Lock()]), hold=True)
    backend.send(1, run_chunk(6, [6]), hold=True)  # written by wait() at the latest
    events.wait_message(1, ChunkDone, 5)
    assert [m.tag for m in events.messages(1, ChunkDone)] == [1, 2, 3, 4, 6]


@every_backend
def test_a_result_that_cannot_be_pickled_fails_its_task_in_the_worker(case: BackendCase, backend: Backend,
                                                                      release: Any) -> None:
    events = Recorder(backend)
    start_ready(backend, events, 1, release)
    backend.send(1, run_chunk(1, [0], func_id=UNPICKLABLE))
    backend.send(1, run_chunk(2, [5]))
    (first, second) = events.wait_message(1, ChunkDone, 2)
    if case.serialises:
        assert first.values == [] and first.failures is not None
        (failure,) = first.failures
        assert failure.position == 0
        error = unpack_exception(failure)
        assert isinstance(error, ResultPicklingError) and "task 0" in str(error)
    else:  # objects are handed over as they are: nothing to pickle
        assert first.failures is None and type(first.values[0]) is type(threading.Lock())
    assert (second.tag, second.values) == (2, [5])  # the worker goes on


@thorough_backends
def test_kill_ends_the_worker_with_one_exited_that_carries_its_last_clock(case: BackendCase, backend: Backend,
                                                                          release: Any) -> None:
    events = Recorder(backend)
    threads_before = worker_threads()
    start_ready(backend, events, 1, release)
    pid = backend.pid(1)
    backend.send(1, run_chunk(5, ["a", "b"], func_id=BLOCK, job_id=2))
    wait_clock(events, 1, running(5), "task 0 of chunk 5")
    backend.clock(1)[_clock.CANCEL] = _clock.cancel_mark(2)  # the parent's writes are part of the last clock too
    backend.kill(1, grace=0.5)
    exited = events.wait_exit(1)
    assert exited.clock[_clock.TAG] == 5 and exited.clock[_clock.INDEX] in (0, _clock.UNTRACKED)
    assert exited.clock[_clock.CANCEL] == _clock.cancel_mark(2)
    if backend.supports_kill:
        assert exited.exitcode == -signal.SIGTERM
        if pid is not None:
            assert process_gone(pid)
    else:
        # Disowned: the worker runs on until its task returns, and nothing more is heard of it.
        release.release()
        await_end(pid, threads_before)
        events.events.extend(backend.wait(0))
    events.assert_ended_once(1)
    assert not events.messages(1, ChunkDone)


@thorough_backends
def test_a_worker_that_ended_takes_send_and_kill_until_its_exited_is_read(case: BackendCase, backend: Backend,
                                                                          release: Any) -> None:
    events = Recorder(backend)
    threads_before = worker_threads()
    start_ready(backend, events, 1, release)
    pid = backend.pid(1)
    backend.send(1, STOP)
    # Seen ending without reading its events (which would deliver its Exited and forget it).
    if case.remote:
        await_task_end(backend, 1)
    else:
        await_end(pid, threads_before)
    backend.send(1, run_chunk(1, [1]))  # dropped without an error
    backend.kill(1, grace=0.5)
    backend.interrupt(1)
    assert backend.clock(1)[_clock.TAG] == 0
    exited = events.wait_exit(1)
    assert exited.exitcode == 0  # it had ended on its own
    events.events.extend(backend.wait(0))
    events.assert_ended_once(1)
    assert [type(m) for m in events.messages(1)] == [WorkerReady, WorkerExited]


@thorough_backends
def test_interrupt_with_a_timeout_mark_fails_the_running_task(case: BackendCase, backend: Backend,
                                                               release: Any) -> None:
    events = Recorder(backend)
    start_ready(backend, events, 1, release)
    func = SLEEP if backend.supports_interrupt else BLOCK
    backend.send(1, run_chunk(3, [0], func_id=func, task_timeout=0.1))
    wait_clock(events, 1, running(3, timed=True), "a timed task of chunk 3")
    clock = backend.clock(1)
    clock[_clock.TIMEOUT_NS] = clock[_clock.START_NS]
    backend.interrupt(1)
    if not backend.supports_interrupt:
        release.release()  # a no-op: the task runs on until it returns
    (done,) = events.wait_message(1, ChunkDone)
    if backend.supports_interrupt:
        assert done.failures is not None
        assert isinstance(unpack_exception(done.failures[0]), TaskTimeoutError)
    else:
        assert (done.values, done.failures) == ([0], None)
    backend.send(1, run_chunk(4, ["next"]))  # the worker lives on
    assert events.wait_message(1, ChunkDone, 2)[1].values == ["next"]


@thorough_backends
def test_a_cancel_mark_stops_the_running_chunk_on_interrupt_and_skips_the_next(case: BackendCase,
                                                                               backend: Backend,
                                                                               release: Any) -> None:
    events = Recorder(backend)
    start_ready(backend, events, 1, release)
    backend.send(1, run_chunk(3, [0, 1], func_id=SLEEP if backend.supports_interrupt else BLOCK, job_id=4))
    backend.send(1, run_chunk(4, [2], job_id=4))
    wait_clock(events, 1, running(3), "task 0 of chunk 3")
    backend.clock(1)[_clock.CANCEL] = _clock.cancel_mark(4)
    backend.interrupt(1)
    if case.remote:  # the mark travels as a message: on the worker's clock before chunk 4 comes up
        wait_clock(events, 1, lambda c: c.at_worker[_clock.CANCEL] == _clock.cancel_mark(4), "the mark applied")
    if not backend.supports_interrupt:
        release.release()  # a no-op: the running chunk goes on until it ends
    first, second = events.wait_message(1, ChunkDone, 2)
    if backend.supports_interrupt:
        assert (first.tag, first.values, first.cancelled) == (3, [], True)
    else:
        assert (first.tag, first.values, first.cancelled) == (3, [0, 1], False)
    assert (second.tag, second.values, second.cancelled) == (4, [], True)  # never started


@every_backend
def test_wakeup_from_another_thread_makes_wait_return(case: BackendCase, backend: Backend) -> None:
    assert backend.wait(0) == []
    assert backend.wait(0.01) == []  # timed out, nothing to report
    waiting = threading.Barrier(2, timeout=DEADLINE)

    def wake() -> None:
        waiting.wait()
        backend.wakeup()

    waker = threading.Thread(target=wake)
    waker.start()
    try:
        waiting.wait()
        t0 = time.monotonic()
        assert backend.wait(DEADLINE * 2) == []  # (whether wakeup() came before or during the wait)
        assert time.monotonic() - t0 < DEADLINE
    finally:
        waker.join(DEADLINE)


@every_backend
def test_close_is_idempotent_and_leaves_no_worker(case: BackendCase, backend: Backend, release: Any) -> None:
    events = Recorder(backend)
    threads_before = worker_threads()
    for key in (1, 2):
        start_ready(backend, events, key, release, worker_id=key)
    pids = [pid for key in (1, 2) if (pid := backend.pid(key)) is not None]
    backend.send(1, STOP)  # one told to stop, one left waiting for work
    backend.close(timeout=5.0)
    backend.close(timeout=5.0)
    assert all(process_gone(pid) for pid in pids)
    assert not worker_threads() - threads_before
    backend.wakeup()  # harmless after close


@every_backend
def test_close_ends_idle_workers_without_waiting_for_the_timeout(case: BackendCase, backend: Backend,
                                                                 release: Any) -> None:
    events = Recorder(backend)
    start_ready(backend, events, 1, release)
    t0 = time.monotonic()
    backend.close(timeout=DEADLINE)  # the worker waits for messages: close() tells it none will come
    assert time.monotonic() - t0 < DEADLINE / 2, "close() waited for an idle worker until it killed it"


def test_closing_the_thread_backend_waits_timeout_in_all_not_per_worker(release: Any) -> None:
    backend = create_backend("threading", daemon=True)
    events = Recorder(backend)
    threads_before = worker_threads()
    try:
        for key in range(3):
            start_ready(backend, events, key, release, worker_id=key)
            backend.send(key, run_chunk(1, [0], func_id=BLOCK))
        t0 = time.monotonic()
        backend.close(timeout=2.0)  # each thread blocks in its task: disowned after 2 s in all
        assert time.monotonic() - t0 < 5.0, "close() waited the timeout once per worker"
    finally:
        release.release()
        await_end(None, threads_before)


def test_wakeup_after_close_writes_nowhere() -> None:
    """The wake-up pipe is closed by close(); a late wakeup() from another thread (a call submitted while the pool
    closes) must not write to whatever file now has that descriptor number."""
    from parallelize.backends.process import ProcessBackend

    backend = ProcessBackend("fork", daemon=True)
    wake_w = backend._wake_w
    backend.close(timeout=1.0)
    with pytest.raises(OSError):
        os.fstat(wake_w)  # closed, so the number is free to take over below
    read_end, write_end = os.pipe()
    try:
        os.dup2(write_end, wake_w)  # a new file on the old number, as a later open() may get
        os.set_blocking(read_end, False)
        backend.wakeup()
        with pytest.raises(BlockingIOError):
            os.read(read_end, 1)
    finally:
        for fd in {read_end, write_end, wake_w}:
            os.close(fd)
