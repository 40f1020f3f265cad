"""Timeouts interrupt the task or hook inside the worker first (so finally/with blocks release what they hold and
the worker lives on), and kill the worker only when it does not return within a short grace. Hook timeouts are
settings of each call, carried by the call itself."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest
from tests import fault_tasks
from tests.helpers import announced_marking_hook, get_pid, marking_hook, second, sleep_holding, sleep_then_mark, wait_on

from parallelize import TaskTimeoutError, WorkerPool, _clock, parallel

pytestmark = pytest.mark.timeout(60)

PROCESS_METHODS = ["fork", "spawn"]


def _marks(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_a_timed_out_task_releases_the_lock_it_held_and_its_worker_lives_on(start_method: str) -> None:
    lock = multiprocessing.get_context(start_method).Lock()
    with WorkerPool(1, shared_objects=lock, start_method=start_method, keep_alive=True) as pool:
        pid_before = pool.apply(_pid_with_shared, (None,))
        with pytest.raises(TaskTimeoutError, match=r"ran longer than task_timeout=0\.5s and was interrupted"):
            pool.map(sleep_holding, [20], task_timeout=0.5)
        assert lock.acquire(timeout=5), "the task's `with lock:` never released the lock"
        lock.release()
        assert pool.apply(_pid_with_shared, (None,)) == pid_before, "the worker was killed, not interrupted"


def _pid_with_shared(_: object, __: object = None) -> int:
    return get_pid()


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_an_event_a_timed_out_task_waited_on_still_works(start_method: str) -> None:
    event = multiprocessing.get_context(start_method).Event()
    with WorkerPool(1, shared_objects=event, start_method=start_method) as pool, pytest.raises(TaskTimeoutError):
        pool.map(wait_on, [None], task_timeout=0.5)
    setter = threading.Thread(target=event.set, daemon=True)
    setter.start()
    setter.join(10)
    assert not setter.is_alive(), "event.set() blocks: the waiter was killed inside the Event's condition"


@pytest.mark.parametrize("start_method", [*PROCESS_METHODS, "forkserver"])
def test_a_timed_out_decorated_task_runs_its_finally_block(start_method: str, tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    func = parallel(sleep_then_mark, n_jobs=1, start_method=start_method, on_error="return")  # type: ignore[call-overload]
    try:
        [result] = func([(str(mark), 20)], task_timeout=0.5)
        assert isinstance(result, TaskTimeoutError)
        assert _marks(mark) == func.worker_pids(), "the finally block did not run in the (surviving) worker"
    finally:
        func.close()


def test_a_task_that_swallows_the_timeout_is_killed_after_the_grace(tmp_path: Path) -> None:
    # "ignore_term" blocks the interrupt signal, like a call into C code, and ignores SIGTERM.
    t0 = time.monotonic()
    with pytest.raises(TaskTimeoutError, match=r"did not stop within .* of being interrupted"):
        fault_tasks.chaos([(0, "ignore_term", str(tmp_path))], start_method="fork", task_timeout=0.3)
    assert time.monotonic() - t0 < 10
    fault_tasks.chaos.close()


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_worker_init_timeout_interrupts_the_hook(start_method: str, tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    with WorkerPool(1, shared_objects=(str(mark), 20.0), start_method=start_method) as pool, \
            pytest.raises(TaskTimeoutError, match=r"worker_init of worker 0 ran longer than worker_init_timeout=0.5s"):
        pool.map(second, [1], worker_init=marking_hook, worker_init_timeout=0.5)
    assert len(_marks(mark)) == 1, "the init hook's finally block did not run"


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_worker_exit_timeout_interrupts_the_hook(start_method: str, tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    with WorkerPool(1, shared_objects=(str(mark), 20.0), start_method=start_method) as pool, \
            pytest.raises(TaskTimeoutError, match=r"worker_exit of worker 0 ran longer than worker_exit_timeout=0.5s"):
        pool.map(second, [1], worker_exit=marking_hook, worker_exit_timeout=0.5)
    assert len(_marks(mark)) == 1, "the exit hook's finally block did not run"


def test_submit_honours_worker_init_timeout(tmp_path: Path) -> None:
    func = parallel(second, n_jobs=1, shared_objects=(str(tmp_path / "mark"), 5.0),  # type: ignore[call-overload]
                    worker_init=marking_hook, worker_init_timeout=0.5)
    try:
        t0 = time.monotonic()
        with pytest.raises(TaskTimeoutError, match=r"worker_init_timeout=0\.5s"):
            func.submit(1).result(timeout=30)
        assert time.monotonic() - t0 < 4, "submit waited for the whole init hook"
    finally:
        func.close()


def test_a_submit_without_timeouts_keeps_the_exit_timeout_of_a_running_imap(tmp_path: Path) -> None:
    func = parallel(second, n_jobs=1, shared_objects=(str(tmp_path / "mark"), 20.0),  # type: ignore[call-overload]
                    worker_exit=marking_hook)
    try:
        results = func.imap(range(3), worker_exit_timeout=0.5)
        assert next(results) == 0
        assert func.submit(7).result(timeout=20) == 7  # no timeouts of its own
        assert list(results) == [1, 2]
        t0 = time.monotonic()
        with pytest.raises(TaskTimeoutError, match=r"worker_exit_timeout=0\.5s"):
            func.close()
        assert time.monotonic() - t0 < 5
    finally:
        func.close()


def test_a_worker_init_timeout_given_with_the_call_applies(tmp_path: Path) -> None:
    func = parallel(second, n_jobs=1, shared_objects=(str(tmp_path / "mark"), 20.0),  # type: ignore[call-overload]
                    worker_init=marking_hook)
    try:
        t0 = time.monotonic()
        with pytest.raises(TaskTimeoutError, match=r"worker_init_timeout=0\.5s"):
            func([1, 2], worker_init_timeout=0.5)
        assert time.monotonic() - t0 < 5
    finally:
        func.close()


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_a_failed_init_stops_every_worker_still_in_its_init(start_method: str, tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    func = parallel(second, n_jobs=2, start_method=start_method,  # type: ignore[call-overload]
                    shared_objects=(str(mark), 20.0), worker_init=announced_marking_hook, worker_init_timeout=0.5)
    try:
        with pytest.raises(TaskTimeoutError):
            func([1, 2])
        started = _marks(Path(str(mark) + ".started"))
        assert started
        # Nobody drives the pool after the call: no worker may be left in its 20 s init.
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_alive(pid) for pid in started), "a worker stayed in its hung worker_init"
    finally:
        func.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_failed_call_kills_a_worker_stuck_in_an_uninterruptible_task() -> None:
    items = [(0, "sleep", 0.3), (1, "uninterruptible", 20)]
    items.insert(1, (2, "raise"))
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="bad item 2"):
        fault_tasks.chaos(items, start_method="fork", chunk_size=1)
    assert fault_tasks.chaos(range(4)) == [0, 1, 4, 9]
    assert time.monotonic() - t0 < 10, "the pool waited for the uninterruptible task of a failed call"
    fault_tasks.chaos.close()


def spin(seconds: float) -> float:
    """Busy Python code: interruptible at once."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds


@pytest.mark.parametrize("order", ["running first", "queued first"])
def test_two_calls_cancelled_together_on_one_worker_both_stop(order: str) -> None:
    # One worker runs a chunk of call A and holds a chunk of call B behind it; both calls are abandoned at once.
    # The worker's clock holds one cancel mark: neither chunk may run on unwatched, and the worker is not killed.
    from parallelize._calls import map_job
    from parallelize._engine import Engine
    from parallelize._settings import WorkerSettings
    from parallelize._workers import Life

    engine = Engine(WorkerSettings(n_jobs=1, start_method="fork"))
    try:
        a = map_job(engine, spin, [20.0], n_jobs=1, ordered=True, chunk_size=1)
        b = map_job(engine, spin, [20.0], n_jobs=1, ordered=True, chunk_size=1)
        engine.submit(a)
        engine.submit(b)
        def running_with_one_queued() -> bool:
            return all(s.life is Life.SERVING and len(s.inflight) == 2 and s.key is not None
                       and engine.backend.clock(s.key)[_clock.TAG] for s in engine._workers)

        # The clock changes without any event to end a wait: drive in short turns until it shows the task.
        deadline = time.monotonic() + 20
        while not engine.drive(running_with_one_queued, 0.05):
            assert time.monotonic() < deadline, "the worker never started the first chunk"
        pids = engine.worker_pids()
        t0 = time.monotonic()
        for job in ((a, b) if order == "running first" else (b, a)):
            engine.cancel(job)
        assert engine.drive(lambda: not any(s.inflight for s in engine._workers), 10)
        assert time.monotonic() - t0 < 0.9, "a cancelled chunk ran on until its worker was killed"
        assert engine.worker_pids() == pids
    finally:
        engine.terminate()
