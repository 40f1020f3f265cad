"""The engine's parts on their own, with no process: a worker's life states, deadlines, deaths and answers,
driven through a fake backend that records what the engine asked of it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, MutableSequence
from typing import Any

import pytest

from parallelize import _clock
from parallelize._answers import Answers
from parallelize._chunking import ChunkSizer, in_memory, iter_chunks
from parallelize._deadlines import INTERRUPT_GRACE, Deadlines, Due
from parallelize._deaths import Deaths
from parallelize._dispatch import MAX_QUEUED, PREFETCH, QUEUED_BYTES, QUEUED_SECONDS, Dispatcher
from parallelize._driving import DriverRole
from parallelize._errors import ConfigError, TaskTimeoutError, WorkerDiedError
from parallelize._job import Job
from parallelize._messages import CALL_UNPACK, ChunkDone, WorkerExited, WorkerReady
from parallelize._pool_state import PoolState
from parallelize._serialize import pack_exception
from parallelize._settings import WorkerSettings
from parallelize._worker import WorkerSpec
from parallelize._workers import Life, WorkerSlot
from parallelize.backends import Backend
from parallelize.backends._base import Event


class FakeBackend(Backend):
    """Runs nothing: records what was sent (in the order it would be written), held back, interrupted and killed;
    clocks are plain lists."""

    name = "fake"

    def __init__(self, *, supports_interrupt: bool = True) -> None:
        self.supports_interrupt = supports_interrupt
        self.started: dict[int, WorkerSpec] = {}
        self.sent: list[tuple[int, Any]] = []
        self.held: list[tuple[int, Any]] = []  # sent with hold=True, not written yet
        self.message_bytes = 0  # what send() says each message takes
        self.interrupted: list[int] = []
        self.killed: list[int] = []
        self.clocks: dict[int, list[int]] = {}

    def start_worker(self, key: int, spec: WorkerSpec) -> None:
        self.started[key] = spec
        self.clocks[key] = [0] * _clock.SIZE

    def send(self, key: int, message: Any, *, hold: bool = False) -> int:
        if hold:
            self.held.append((key, message))
            return self.message_bytes
        self.sent += [(k, m) for k, m in self.held if k == key]  # written first, in order
        self.held = [(k, m) for k, m in self.held if k != key]
        self.sent.append((key, message))
        return self.message_bytes

    def write_held(self) -> None:
        self.sent += self.held
        self.held.clear()

    def wait(self, timeout: float | None) -> list[Event]:
        return []

    def wakeup(self) -> None:
        pass

    def clock(self, key: int) -> MutableSequence[int]:
        return self.clocks[key]

    def interrupt(self, key: int) -> None:
        self.interrupted.append(key)

    def kill(self, key: int, grace: float) -> None:
        self.killed.append(key)

    def pid(self, key: int) -> int | None:
        return 1000 + key

    def close(self, timeout: float) -> None:
        pass


def make_job(state: PoolState, items: Iterable[Any], chunk_size: int, *, task_timeout: float | None = None,
             retries: int = 0, worker_init_timeout: float | None = None, job_id: int = 0) -> Job:
    n_tasks = len(items) if isinstance(items, list) else None
    sizer = ChunkSizer(n_tasks, 1, chunk_size, None)
    return Job(job_id, state.functions.acquire(abs), CALL_UNPACK, iter_chunks(items, sizer, None), sizer,
               ordered=True, n_tasks=n_tasks, in_memory=in_memory(items), task_timeout=task_timeout, retries=retries,
               worker_init_timeout=worker_init_timeout)


def pool(n_jobs: int = 1, *, supports_interrupt: bool = True) -> tuple[PoolState, FakeBackend, Dispatcher]:
    backend = FakeBackend(supports_interrupt=supports_interrupt)
    state = PoolState(WorkerSettings(n_jobs=n_jobs, start_method="fork"), backend)
    return state, backend, Dispatcher(state)


def starting(state: PoolState, dispatcher: Dispatcher, job: Job) -> WorkerSlot:
    """Submit *job* and start the worker; returns its slot, still starting, with chunks queued for it."""
    state.jobs.append(job)
    dispatcher.dispatch()
    slot = state.workers.slots[0]
    assert slot.key is not None and slot.life is Life.STARTING
    return slot


def serving(state: PoolState, dispatcher: Dispatcher, job: Job) -> WorkerSlot:
    """As starting(), then let the worker report ready; returns its slot with chunks in flight."""
    slot = starting(state, dispatcher, job)
    assert slot.key is not None
    Answers(state).on_message(slot.key, WorkerReady(0, 1000, 0.0, 0.0, None))
    return slot


# --- a worker's life ---

def test_a_worker_life_goes_through_its_states_by_named_transitions() -> None:
    slot = WorkerSlot(0, key=1, life=Life.STARTING)
    assert slot.takes_chunks(None, PREFETCH)  # chunks may queue behind its worker_init
    slot.became_ready()
    assert slot.life is Life.SERVING
    slot.init_runs_again()
    assert slot.life is Life.STARTING
    slot.became_ready()
    slot.exit_began(2.5)
    assert (slot.life, slot.exit_timeout) == (Life.EXITING, 2.5)
    assert not slot.takes_chunks(None, PREFETCH)
    slot.reported_end()
    assert slot.life is Life.ENDED and not slot.reachable and slot.running


def test_a_worker_whose_init_failed_takes_no_chunks_and_a_killed_one_stays_killed() -> None:
    slot = WorkerSlot(0, key=1, life=Life.STARTING)
    slot.init_failed()
    assert slot.life is Life.ENDED and not slot.takes_chunks(None, PREFETCH)
    slot.was_killed()
    slot.became_ready()  # a late report from a worker being killed changes nothing
    slot.reported_end()
    assert slot.life is Life.KILLED and not slot.running


def test_a_worker_told_to_stop_during_its_init_exits_once_ready_with_the_exit_timeout_then() -> None:
    state, _backend, dispatcher = pool()
    job = make_job(state, [1], 1)
    state.jobs.append(job)
    dispatcher.dispatch()
    slot = state.workers.slots[0]
    slot.inflight.clear()  # as if its only chunk were answered
    state.jobs.clear()
    state.stopping = True
    state.strictest_exit_timeout = 3.0
    dispatcher.dispatch()
    assert slot.stop_sent and slot.life is Life.STARTING  # its worker_init still runs: the init deadline applies
    assert slot.key is not None
    Answers(state).on_message(slot.key, WorkerReady(0, 1000, 0.0, 0.0, None))
    assert (slot.life, slot.exit_timeout) == (Life.EXITING, 3.0)


def test_a_worker_at_its_lifespan_takes_no_more_chunks_and_begins_its_exit_when_answered() -> None:
    backend = FakeBackend()
    state = PoolState(WorkerSettings(n_jobs=1, start_method="fork", worker_lifespan=2), backend)
    dispatcher = Dispatcher(state)
    job = make_job(state, list(range(6)), 1)
    slot = serving(state, dispatcher, job)
    assert [c.items for _, c in slot.inflight] == [[0], [1]]
    dispatcher.dispatch()
    assert len(slot.inflight) == 2  # at its lifespan: nothing more for it
    answers = Answers(state)
    assert slot.key is not None
    for _, chunk in list(slot.inflight):
        answers.on_message(slot.key, ChunkDone(chunk.tag, [chunk.items[0]], None, False, 0.0, None))
    assert slot.life is Life.EXITING


# --- deadlines ---

def test_a_task_past_its_timeout_is_interrupted_then_its_worker_killed_after_the_grace() -> None:
    state, backend, dispatcher = pool()
    job = make_job(state, [1, 2], 2, task_timeout=0.5)
    slot = serving(state, dispatcher, job)
    _, chunk = slot.inflight[0]
    assert slot.key is not None
    clock = backend.clocks[slot.key]
    clock[_clock.START_NS] = time.monotonic_ns() - 10**9  # the task started a second ago
    clock[_clock.TAG], clock[_clock.INDEX] = chunk.tag, 1
    deadlines = Deadlines(state)
    nearest = deadlines.nearest()
    assert nearest is not None and nearest <= time.monotonic()
    deadlines.enforce()
    assert backend.interrupted == [slot.key] and clock[_clock.TIMEOUT_NS] == clock[_clock.START_NS]
    assert slot.interrupted is not None and slot.interrupted.due is Due.TASK and not backend.killed
    slot.interrupted = slot.interrupted._replace(kill_at=time.monotonic() - 1)  # the grace is over, the task runs
    deadlines.enforce()
    assert backend.killed == [slot.key] and slot.life is Life.KILLED
    assert isinstance(job.error, TaskTimeoutError) and "task 1 (2)" in str(job.error)
    assert f"within {INTERRUPT_GRACE}s" in str(job.error)


def test_a_timed_task_that_has_not_started_is_looked_at_again_a_timeout_later_not_failed() -> None:
    state, backend, dispatcher = pool()
    job = make_job(state, [1], 1, task_timeout=60.0)
    serving(state, dispatcher, job)
    deadlines = Deadlines(state)
    nearest = deadlines.nearest()
    assert nearest is not None and nearest > time.monotonic() + 50
    deadlines.enforce()
    assert not backend.interrupted and job.error is None


def test_without_interrupts_a_timed_out_task_abandons_its_worker_at_once() -> None:
    state, backend, dispatcher = pool(supports_interrupt=False)
    job = make_job(state, [7], 1, task_timeout=0.1)
    slot = serving(state, dispatcher, job)
    assert slot.key is not None
    clock = backend.clocks[slot.key]
    clock[_clock.START_NS], clock[_clock.TAG], clock[_clock.INDEX] = 1, slot.inflight[0][1].tag, 0
    Deadlines(state).enforce()
    assert backend.killed == [slot.key] and not backend.interrupted
    assert isinstance(job.error, TaskTimeoutError) and "abandoned" in str(job.error)


def test_an_init_past_its_timeout_is_interrupted_with_the_strictest_timeout_of_the_running_calls() -> None:
    state, backend, dispatcher = pool()
    job = make_job(state, [1], 1, worker_init_timeout=5.0)
    strict = make_job(state, [1], 1, worker_init_timeout=0.5)
    state.jobs.extend([job, strict])
    dispatcher.dispatch()
    slot = state.workers.slots[0]
    assert slot.key is not None
    backend.clocks[slot.key][_clock.START_NS] = time.monotonic_ns() - 10**9  # its init started a second ago
    Deadlines(state).enforce()
    assert slot.interrupted is not None and slot.interrupted.due is Due.INIT
    assert "worker_init_timeout=0.5s" in str(slot.interrupted.error)


def test_a_worker_that_hangs_starting_is_killed_and_replaced_and_three_in_a_row_fail_the_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_WORKER_START_TIMEOUT", "30")
    state, backend, dispatcher = pool()
    job = make_job(state, [1, 2], 1)
    state.jobs.append(job)
    for attempt in range(3):
        dispatcher.dispatch()
        slot = state.workers.slots[0]
        assert slot.key is not None and slot.life is Life.STARTING and slot.inflight  # chunks queue behind it
        deadlines = Deadlines(state)
        assert slot.start_by is not None and deadlines.nearest() == slot.start_by
        deadlines.enforce()
        assert slot.key not in backend.killed  # not due yet
        slot.start_by = time.monotonic() - 1  # as if its 30 s had passed
        deadlines.enforce()
        assert backend.killed[-1] == slot.key and slot.life is Life.KILLED
        Deaths(state).on_exit(slot.key, -9, (0,) * _clock.SIZE)
        assert job.error is None if attempt < 2 else isinstance(job.error, WorkerDiedError)
    assert "3 workers in a row failed to start" in str(job.error)
    assert "did not finish starting within 30.0s" in str(job.error)
    assert "PARALLELIZE_WORKER_START_TIMEOUT" in str(job.error)


def test_the_start_limit_stops_at_worker_init_which_has_its_own_timeout_and_none_lifts_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    state, backend, dispatcher = pool()
    slot = starting(state, dispatcher, make_job(state, [1], 1))
    assert slot.key is not None and slot.start_by is not None
    backend.clocks[slot.key][_clock.START_NS] = time.monotonic_ns()  # its worker_init began: the start is over
    slot.start_by = time.monotonic() - 1
    Deadlines(state).enforce()
    assert not backend.killed
    Answers(state).on_message(slot.key, WorkerReady(0, 1000, 0.0, 0.0, None))
    assert slot.start_by is None  # a worker_init handed over later (init_runs_again) is not a start

    monkeypatch.setenv("PARALLELIZE_WORKER_START_TIMEOUT", "none")
    unlimited, _, unlimited_dispatcher = pool()
    unlimited.jobs.append(make_job(unlimited, [1], 1))
    unlimited_dispatcher.dispatch()
    assert unlimited.workers.slots[0].start_by is None


@pytest.mark.parametrize("text", ["0", "-1", "inf", "nan", "soon"])
def test_a_bad_start_limit_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("PARALLELIZE_WORKER_START_TIMEOUT", text)
    with pytest.raises(ConfigError, match=f"PARALLELIZE_WORKER_START_TIMEOUT={text!r}"):
        pool()


# --- deaths ---

@pytest.mark.parametrize("retries", [0, 1])
def test_a_dead_worker_fails_the_task_its_clock_names_and_sends_the_rest_again(retries: int) -> None:
    state, _backend, dispatcher = pool()
    job = make_job(state, [10, 11, 12, 13], 2, retries=retries)
    slot = serving(state, dispatcher, job)
    (_, running), (_, queued) = slot.inflight
    assert slot.key is not None
    Deaths(state).on_exit(slot.key, -9, (0, 1, running.tag, 0, 0))
    assert state.workers.slots[0].life is Life.VACANT
    if retries:
        assert job.error is None
        resent = [job.take() for _ in range(3)]
        assert sorted(c.items[0] for c in resent if c is not None) == [10, 11, 12]  # 13 comes with 12's chunk
    else:
        assert isinstance(job.error, WorkerDiedError)
        assert "task 1 (11)" in str(job.error) and "SIGKILL" in str(job.error)
    assert queued.items == [12, 13]


def test_a_worker_that_said_it_ends_is_not_reported_as_dead() -> None:
    state, _backend, dispatcher = pool()
    job = make_job(state, [1], 1)
    slot = serving(state, dispatcher, job)
    assert slot.key is not None
    Answers(state).on_message(slot.key, WorkerExited(0, "bye", 0.0, None, None, "stop", 0, True))
    Deaths(state).on_exit(slot.key, 0, (0, 0, 0, 0, 0))
    assert state.exit_results == ["bye"]
    assert job.take() is not None and job.error is None  # its chunk is sent again, nothing failed


def test_a_worker_init_handed_over_while_starting_that_fails_ends_the_worker_quietly(
        caplog: pytest.LogCaptureFixture) -> None:
    # update_hooks reached a worker still starting with no worker_init: it reports ready, then runs the new hook,
    # which fails. The worker ends on its own: no "ended unexpectedly" warning, no more chunks for it.
    state, _backend, dispatcher = pool()
    slot = starting(state, dispatcher, make_job(state, [1], 1))
    assert slot.key is not None
    state.workers.settings = state.settings._replace(worker_init=abs)
    slot.init_hook = abs
    slot.init_runs_again()  # still starting: nothing to change
    answers = Answers(state)
    answers.on_message(slot.key, WorkerReady(0, 1000, 0.0, 0.0, None))
    answers.on_message(slot.key, WorkerReady(0, 1000, 0.0, 0.0, pack_exception(ValueError("bad init"))))
    assert slot.life is Life.ENDED and not slot.takes_chunks(None, PREFETCH)
    with caplog.at_level(logging.WARNING, logger="parallelize"):
        Deaths(state).on_exit(slot.key, 0, (0, 0, 0, 0, 0))
    assert "ended unexpectedly" not in caplog.text


def test_the_driver_handles_work_left_while_it_was_giving_up_its_role() -> None:
    # A cancellation asked for while the driver handles the earlier ones sees the role taken and leaves it to
    # this driver: the driver must not give the role up with it pending.
    pending: list[str] = ["first"]
    handled: list[str] = []

    def released() -> None:
        while pending:
            handled.append(pending.pop())
            if handled == ["first"]:
                pending_later.append("second")  # arrives meanwhile

    pending_later: list[str] = []

    def still_pending() -> bool:
        pending.extend(pending_later)
        pending_later.clear()
        return bool(pending)

    role = DriverRole(lambda timeout: None, lambda: None, lambda: False, released, still_pending,
                      lambda exc: None)
    assert role.take_if_free()
    role.release()
    assert handled == ["first", "second"]
    assert role.take_if_free()  # and the role was given up


def test_the_time_per_task_of_a_function_is_learned_from_its_answered_chunks() -> None:
    state, _, dispatcher = pool()
    job = make_job(state, [1, 2, 3, 4], 2)
    slot = serving(state, dispatcher, job)
    assert slot.key is not None
    _, chunk = slot.inflight[0]
    Answers(state).on_message(slot.key, ChunkDone(chunk.tag, [1, 4], None, False, 0.002, None))
    assert state.task_seconds[job.func_id] == pytest.approx(0.001)
    _, failing = slot.inflight[0]
    Answers(state).on_message(slot.key, ChunkDone(failing.tag, [9], [pack_exception(ValueError(), 1)], False,
                                                  5.0, None))
    assert state.task_seconds[job.func_id] == pytest.approx(0.001)  # a failed chunk's time says little


# --- dispatch ---

def test_short_chunks_queue_deeper_up_to_about_queued_seconds_of_work_per_worker() -> None:
    state, _, dispatcher = pool(2)
    job = make_job(state, list(range(1000)), 10)
    state.jobs.append(job)
    dispatcher.dispatch()
    assert [len(slot.inflight) for slot in state.workers.slots] == [PREFETCH, PREFETCH]  # nothing measured yet
    state.task_seconds[job.func_id] = QUEUED_SECONDS / 10 / 5  # five chunks' worth
    assert dispatcher.queue_depth(job) == 5
    state.task_seconds[job.func_id] = 1e-12
    assert dispatcher.queue_depth(job) == MAX_QUEUED
    state.task_seconds[job.func_id] = 10.0
    assert dispatcher.queue_depth(job) == PREFETCH
    answer_head(state, state.workers.slots[1])
    state.task_seconds[job.func_id] = QUEUED_SECONDS / 10 / 5  # (as measured)
    dispatcher.dispatch()
    # The second worker answered: its queue moves, and fills up. The first has answered nothing since the last
    # dispatch (it may be on a long task): no more than PREFETCH chunks wait behind it.
    assert [len(slot.inflight) for slot in state.workers.slots] == [PREFETCH, 5]
    answer_head(state, state.workers.slots[0])
    state.task_seconds[job.func_id] = QUEUED_SECONDS / 10 / 5
    dispatcher.dispatch()
    assert [len(slot.inflight) for slot in state.workers.slots] == [5, 5]
    dispatcher.dispatch()
    assert not any(slot.flowing for slot in state.workers.slots)  # until they answer again


def test_large_chunks_or_results_queue_no_deeper_than_about_a_pipe_full() -> None:
    state, backend, dispatcher = pool(2)
    job = make_job(state, list(range(1000)), 10)
    state.jobs.append(job)
    backend.message_bytes = QUEUED_BYTES // 4  # a quarter of what a deep queue may hold, per chunk
    dispatcher.dispatch()
    state.task_seconds[job.func_id] = 1e-12  # short: deep queues, as far as time goes
    assert job.chunk_bytes == QUEUED_BYTES // 4  # learned as its chunks are sent
    assert dispatcher.queue_depth(job) == 4
    job.chunk_bytes = QUEUED_BYTES * 2
    assert dispatcher.queue_depth(job) == PREFETCH
    job.chunk_bytes = 100
    assert dispatcher.queue_depth(job) == MAX_QUEUED
    slot = state.workers.slots[0]
    assert slot.key is not None
    _, chunk = slot.inflight[0]
    Answers(state).on_message(slot.key, ChunkDone(chunk.tag, [b""], None, False, 0.0, None), QUEUED_BYTES // 2)
    state.task_seconds[job.func_id] = 1e-12
    assert job.result_bytes == QUEUED_BYTES // 2 and dispatcher.queue_depth(job) == PREFETCH  # large results too


def answer_head(state: PoolState, slot: WorkerSlot) -> None:
    """The worker in *slot* returns its first chunk in flight."""
    assert slot.key is not None
    _, chunk = slot.inflight[0]
    Answers(state).on_message(slot.key, ChunkDone(chunk.tag, list(chunk.items), None, False, 0.0, None))


def test_chunks_behind_work_wait_for_the_end_of_the_dispatch_and_an_idle_worker_gets_its_chunk_at_once() -> None:
    state, backend, dispatcher = pool(2)
    job = make_job(state, list(range(2 * PREFETCH)), 1)
    state.jobs.append(job)
    written_at_once: list[int] = []
    send = backend.send

    def spy(key: int, message: Any, *, hold: bool = False) -> None:
        if not hold:
            written_at_once.append(message.items[0])
        send(key, message, hold=hold)

    backend.send = spy  # type: ignore[method-assign]
    dispatcher.dispatch()
    assert written_at_once == [0, 1]  # the first chunk of each idle worker
    assert not backend.held and sorted(m.items[0] for _, m in backend.sent) == list(range(2 * PREFETCH))


def test_an_input_that_may_block_is_read_only_when_no_chunk_is_held_back() -> None:
    """A generator may wait for one of its earlier items to have run (on what a task does): no chunk may wait in
    the parent while it is read, whether its own or another call's."""
    state, backend, dispatcher = pool(2)
    held_at_reads: list[int] = []

    def items() -> Iterator[int]:
        for x in range(6):
            held_at_reads.append(len(backend.held))
            yield x

    # The list's third chunk waits behind the first worker's; its input ends, and the generator's chunk goes to
    # the second worker, which has room left.
    state.jobs += [make_job(state, list(range(3)), 1), make_job(state, items(), 1, job_id=1)]
    dispatcher.dispatch()
    assert held_at_reads == [0]
    assert not backend.held and len(backend.sent) == 4
