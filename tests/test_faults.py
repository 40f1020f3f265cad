"""Fault handling (issue 4): a failing task fails alone, says why, and the pool keeps working.

Every case runs under fork and spawn (and threading where no process has to die), and checks, besides its own
assertions, that nothing is left behind: the autouse fixture below closes the pool and compares open file
descriptors and /dev/shm entries with what existed before the test (conftest checks child processes and
threads). The pool each case uses is the decorated ``fault_tasks.chaos``; after the fault, the same function
must return correct results. Waits are bounded; pytest-timeout is only the backstop.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import psutil
import pytest

import fault_tasks
import parallelize
from fault_tasks import InputBrokeError, chaos, gone, open_fds, our_new_shm, shm_entries, wait_until
from parallelize import (
    ConfigError,
    ParallelError,
    RemoteError,
    RemoteTraceback,
    ResultPicklingError,
    TaskTimeoutError,
    WorkerDiedError,
    WorkerPool,
)

pytestmark = pytest.mark.timeout(60)

PROCESS_METHODS = ["fork", "spawn"]
ALL_METHODS = ["fork", "spawn", "threading"]
EXPECTED = [i * i for i in range(10)]
MB = 2**20


# --- leak checks -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _warm_multiprocessing() -> None:
    """Long-lived multiprocessing state that is created once per session, not per pool: the resource tracker
    (spawn starts it) and the shared-memory heap arena that backs RawArrays (the workers' clocks)."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    multiprocessing.get_context("spawn").RawArray("q", 4)


def close_pools() -> None:
    for func in (chaos, fault_tasks.slow_start):
        func._self_core.holder.close(timeout=10)  # func.close() with a bound: a broken pool cannot hang teardown


@pytest.fixture(autouse=True)
def no_leaked_fds_or_shm() -> Iterator[None]:
    """Close the pool, then: exactly the fds that were open before, and no new /dev/shm entry."""
    close_pools()
    fds, shm = open_fds(), shm_entries()
    yield
    close_pools()
    gc.collect()
    leaked_fds = open_fds() - fds
    assert not leaked_fds, {fd: _fd_target(fd) for fd in leaked_fds}
    assert wait_until(lambda: not our_new_shm(shm), 2.0), our_new_shm(shm)


def _fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return str(exc)


# --- helpers -------------------------------------------------------------------------------------------------------


def assert_usable(start_method: str, **options: Any) -> None:
    """The same decorated function gives correct results after the fault."""
    assert chaos(range(10), start_method=start_method, **options) == EXPECTED


def read_pid(path: Path) -> int:
    assert fault_tasks.wait_for(path, 20.0), f"{path.name} never appeared"
    return int(path.read_text())


KILLER = """
import os, signal, sys, time
path, done = sys.argv[1], sys.argv[2]
killed = set()
deadline = time.monotonic() + 20
while not os.path.exists(done) and time.monotonic() < deadline:
    try:
        pid = int(open(path).read())
    except (OSError, ValueError):
        pid = None
    if pid is not None and pid not in killed:
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    time.sleep(0.01)
sys.exit(0 if killed else "no pid to kill")
"""


@contextlib.contextmanager
def killer(pid_file: Path) -> Iterator[None]:
    """A separate process that SIGKILLs every pid written to *pid_file*, as soon as it appears, until the block
    ends. (A chunk run untracked is run again tracked after its worker dies: the task is killed twice then.)"""
    done = pid_file.with_suffix(".done")
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(pid_file), str(done)])
    try:
        yield
    finally:
        done.write_text("")
        try:
            proc.wait(25)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, "the killer found no pid to kill"


def is_died(value: Any) -> bool:
    return isinstance(value, WorkerDiedError)


# --- worker death --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_os_exit_fails_only_that_task_and_reruns_its_chunk(start_method: str) -> None:
    items = [(i,) for i in range(8)]
    items[5] = (5, "exit", 7)
    results = chaos(items, start_method=start_method, chunk_size=4, on_error="return")
    error = results[5]
    assert isinstance(error, WorkerDiedError)
    assert isinstance(error, BrokenProcessPool) and isinstance(error, ParallelError)
    message = str(error)
    assert "exit code 7" in message and "task 5" in message and "(5, 'exit', 7)" in message
    assert "worker 1 (pid " in message or "worker 0 (pid " in message
    # the rest of the dead worker's chunk (4, 6, 7, whose results died with it) was run again
    assert results[:5] + results[6:] == [i * i for i in range(8) if i != 5]
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_os_exit_raises_worker_died_error_naming_worker_and_pid(start_method: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    chaos(range(2), start_method=start_method)
    with pytest.raises(WorkerDiedError) as info:
        chaos([(0,), (1, "exit", 3), (2,)], start_method=start_method)
    message = str(info.value)
    died_pid = int(message.split("(pid ")[1].split(")")[0])
    # The task ran twice (untracked, then tracked to name it), the second time perhaps in the first one's
    # replacement: the pid named is one of the workers that died running it.
    dead = {int(record.getMessage().split("(pid ")[1].split(")")[0]) for record in caplog.records
            if "ended unexpectedly" in record.getMessage()}
    assert died_pid in dead
    assert "died with exit code 3 while running task 1 ((1, 'exit', 3))" in message
    assert_usable(start_method)
    assert died_pid not in chaos.worker_pids()
    assert len(chaos.worker_pids()) == 2


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_segfault_names_signal_hints_and_dumps_python_stack(start_method: str,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(WorkerDiedError) as info:
        chaos([(0,), (1, "segfault"), (2,)], start_method=start_method)
    message = str(info.value)
    assert "SIGSEGV(-11)" in message and "task 1" in message and "segmentation fault" in message
    assert_usable(start_method)
    err = capfd.readouterr().err
    assert "Fatal Python error: Segmentation fault" in err
    assert "in behave" in err  # faulthandler printed the worker's Python stack


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_sigkill_from_outside_while_task_blocks(start_method: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "3.pid"
    with killer(pid_file), pytest.raises(WorkerDiedError) as info:
        chaos([(0,), (1,), (2,), (3, "block", str(tmp_path)), (4,)], start_method=start_method)
    killed = int(pid_file.read_text())
    message = str(info.value)
    assert f"(pid {killed}) died with SIGKILL(-9) while running task 3" in message
    assert "out-of-memory" in message
    assert_usable(start_method)
    assert killed not in chaos.worker_pids()


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_sigkill_with_on_error_return_keeps_every_other_result(start_method: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "6.pid"
    items = [(i,) for i in range(10)]
    items[6] = (6, "block", str(tmp_path))
    with killer(pid_file):
        results = chaos(items, start_method=start_method, on_error="return", chunk_size=3)
    assert is_died(results[6]) and "SIGKILL(-9)" in str(results[6]) and "task 6" in str(results[6])
    assert [r for i, r in enumerate(results) if i != 6] == [i * i for i in range(10) if i != 6]
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_sys_exit_is_a_propagated_system_exit_not_a_death(start_method: str) -> None:
    chaos(range(2), start_method=start_method)
    pids = chaos.worker_pids()
    with pytest.raises(SystemExit) as info:
        chaos([(0,), (1, "sys_exit", 4), (2,)], start_method=start_method)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "sys.exit" in info.value.__cause__.traceback_text
    assert_usable(start_method)
    assert chaos.worker_pids() == pids  # nobody died


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_sys_exit_keeps_its_exit_code(start_method: str) -> None:
    with pytest.raises(SystemExit) as info:
        chaos([(0,), (1, "sys_exit", 4)], start_method=start_method)
    assert info.value.code == 4


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_worker_dying_while_idle_is_replaced_before_the_next_call(start_method: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    chaos(range(4), start_method=start_method)
    victim = chaos.worker_pids()[1]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: gone(victim))  # dead (a zombie until the pool reaps it)
    with caplog.at_level(logging.WARNING, logger="parallelize"):
        assert_usable(start_method)
    assert victim not in chaos.worker_pids() and len(chaos.worker_pids()) == 2
    assert f"pid {victim}) ended unexpectedly (SIGKILL(-9))" in caplog.text


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_replacement_worker_runs_worker_init_again(start_method: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fault_tasks.INIT_DIR_VARIABLE, str(tmp_path))
    init = fault_tasks.record_init
    assert chaos(range(4), start_method=start_method, worker_init=init) == EXPECTED[:4]
    first = set(chaos.worker_pids())
    with pytest.raises(WorkerDiedError):
        chaos([(0, "exit", 1)], start_method=start_method, worker_init=init)
    assert chaos(range(10), start_method=start_method, worker_init=init) == EXPECTED
    now = set(chaos.worker_pids())
    assert now != first
    initialised = {int(p.name) for p in tmp_path.iterdir()}
    assert now <= initialised and first <= initialised


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_submit_future_gets_worker_died_error(start_method: str) -> None:
    copy = chaos.options(start_method=start_method)  # submit takes no options: a copy with its own pool
    try:
        future = copy.submit(0, "exit", 5)
        with pytest.raises(WorkerDiedError, match="exit code 5"):
            future.result(timeout=20)
        assert copy.submit(6).result(timeout=20) == 36
    finally:
        copy.close()
    assert_usable(start_method)


# --- error policy ------------------------------------------------------------------------------------------------


def _with_failures(n: int = 10, bad: tuple[int, ...] = (3, 7)) -> list[tuple[Any, ...]]:
    return [(i, "raise") if i in bad else (i,) for i in range(n)]


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_on_error_raise_reraises_original_type_with_worker_traceback(start_method: str) -> None:
    with pytest.raises(ValueError, match=r"bad item [37]") as info:
        chaos(_with_failures(), start_method=start_method)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert 'raise ValueError(f"bad item {i}")' in cause.traceback_text and "in behave" in cause.traceback_text
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_on_error_return_puts_exceptions_in_place(start_method: str) -> None:
    results = chaos(_with_failures(), start_method=start_method, on_error="return")
    for i, value in enumerate(results):
        if i in (3, 7):
            assert type(value) is ValueError and str(value) == f"bad item {i}"
            assert isinstance(value.__cause__, RemoteTraceback)
        else:
            assert value == i * i
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_on_error_skip_drops_failed_items_and_imap_yields_the_rest(start_method: str) -> None:
    expected = [i * i for i in range(10) if i not in (3, 7)]
    assert chaos(_with_failures(), start_method=start_method, on_error="skip") == expected
    assert list(chaos.imap(_with_failures(), start_method=start_method, on_error="skip")) == expected
    assert sorted(chaos.imap_unordered(_with_failures(), start_method=start_method, on_error="skip")) == expected
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_on_error_skip_with_a_death(start_method: str) -> None:
    items = [(i,) for i in range(6)]
    items[2] = (2, "exit", 1)
    assert chaos(items, start_method=start_method, on_error="skip", chunk_size=2) == [0, 1, 9, 16, 25]
    assert_usable(start_method)


def _timeout_items(start_method: str, slow: tuple[Any, ...], n: int = 4) -> list[tuple[Any, ...]]:
    """*slow* as item 1 on a warm pool, next to a short task on the other worker. (A lone long task is covered
    by test_task_timeout_fires_without_any_other_event.)"""
    chaos(range(2), start_method=start_method)
    items: list[tuple[Any, ...]] = [(i,) for i in range(n)]
    items[0] = (0, "sleep", 0.15)
    items[1] = slow
    return items


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_on_error_return_with_a_timeout(start_method: str) -> None:
    results = chaos(_timeout_items(start_method, (1, "sleep", 20)), start_method=start_method, task_timeout=0.3,
                    on_error="return")
    assert isinstance(results[1], TaskTimeoutError) and "task 1" in str(results[1])
    assert [results[0], *results[2:]] == [0, 4, 9]
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_on_error_skip_with_a_timeout(start_method: str) -> None:
    t0 = time.monotonic()
    assert chaos(_timeout_items(start_method, (1, "sleep", 20)), start_method=start_method, task_timeout=0.3,
                 on_error="skip") == [0, 4, 9]
    assert time.monotonic() - t0 < 10
    assert_usable(start_method)


# --- retries ------------------------------------------------------------------------------------------------------


def _attempts(directory: Path, i: int) -> int:
    path = directory / f"{i}.attempts"
    return int(path.read_text()) if path.exists() else 0


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_retries_recover_from_transient_exceptions(start_method: str, tmp_path: Path) -> None:
    items = [(i, "flaky", (str(tmp_path), 2 if i % 3 == 0 else 0, "raise")) for i in range(9)]
    assert chaos(items, start_method=start_method, retries=2) == [i * i for i in range(9)]
    assert [_attempts(tmp_path, i) for i in range(9)] == [3 if i % 3 == 0 else 1 for i in range(9)]
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_retries_recover_from_worker_deaths(start_method: str, tmp_path: Path) -> None:
    items = [(i, "flaky", (str(tmp_path), 1 if i in (2, 5) else 0, "exit")) for i in range(8)]
    assert chaos(items, start_method=start_method, retries=1, chunk_size=3) == [i * i for i in range(8)]
    assert _attempts(tmp_path, 2) == 2 and _attempts(tmp_path, 5) == 2
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_a_chunk_run_untracked_runs_again_tracked_when_its_worker_dies(start_method: str, tmp_path: Path) -> None:
    # Chunks of plain items run at C speed, with no note of which task runs: a worker dying then cannot be blamed
    # on a task. The chunk runs once more, tracked: a one-off death costs nothing but the re-run...
    items = [(i, "flaky", (str(tmp_path), 1 if i == 4 else 0, "exit")) for i in range(6)]
    assert chaos(items, start_method=start_method, chunk_size=3) == [i * i for i in range(6)]
    assert _attempts(tmp_path, 4) == 2
    # ... and a task that kills its worker every time is named, without retries.
    items = [(i, "flaky", (str(tmp_path / "again"), 9 if i == 4 else 0, "exit")) for i in range(6)]
    (tmp_path / "again").mkdir()
    with pytest.raises(WorkerDiedError, match=r"exit code 9 while running task 4 \(\(4, 'flaky'"):
        chaos(items, start_method=start_method, chunk_size=3)
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_retries_recover_from_timeouts(start_method: str, tmp_path: Path) -> None:
    items = _timeout_items(start_method, (1, "flaky", (str(tmp_path), 1, "hang")))
    assert chaos(items, start_method=start_method, retries=1, task_timeout=0.5) == [0, 1, 4, 9]
    assert _attempts(tmp_path, 1) == 2
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_retry_backoff_doubles_the_wait(start_method: str, tmp_path: Path) -> None:
    items = [(0, "flaky", (str(tmp_path), 2, "raise"))]
    assert chaos(items, start_method=start_method, retries=2, retry_backoff=0.2) == [0]
    times = [float(t) for t in (tmp_path / "0.times").read_text().split()]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.4
    assert times[2] - times[0] < 5
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_retries_exhausted_raise_the_last_error(start_method: str, tmp_path: Path) -> None:
    items = [(i, "flaky", (str(tmp_path), 5 if i == 1 else 0, "raise")) for i in range(4)]
    with pytest.raises(ConnectionError, match="transient failure of item 1"):
        chaos(items, start_method=start_method, retries=2)
    assert _attempts(tmp_path, 1) == 3
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_retries_exhausted_by_deaths_return_worker_died_error(start_method: str, tmp_path: Path) -> None:
    items = [(i, "flaky", (str(tmp_path), 5 if i == 1 else 0, "exit")) for i in range(4)]
    results = chaos(items, start_method=start_method, retries=1, on_error="return")
    assert is_died(results[1]) and "exit code 9" in str(results[1]) and "task 1" in str(results[1])
    assert [results[0], *results[2:]] == [0, 4, 9]
    assert _attempts(tmp_path, 1) == 2
    assert_usable(start_method)


# --- timeouts ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_task_timeout_raises_task_timeout_error_that_is_a_timeout_error(start_method: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        chaos(_timeout_items(start_method, (1, "sleep", 20)), start_method=start_method, task_timeout=0.3)
    assert time.monotonic() - t0 < 10
    error = info.value
    assert isinstance(error, TaskTimeoutError) and isinstance(error, ParallelError)
    message = str(error)
    assert "task 1 ((1, 'sleep', 20)) ran longer than task_timeout=0.3s" in message
    assert "was interrupted in worker " in message and "(pid " in message
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_task_timeout_stops_a_task_that_ignores_sigterm(start_method: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(TaskTimeoutError, match="task 1 "):
        chaos(_timeout_items(start_method, (1, "ignore_term", str(tmp_path))), start_method=start_method,
              task_timeout=0.3)
    assert time.monotonic() - t0 < 10
    stubborn = read_pid(tmp_path / "1.pid")
    assert wait_until(lambda: gone(stubborn), 5.0)
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_task_timeout_also_kills_the_tasks_grandchild(start_method: str, tmp_path: Path) -> None:
    with pytest.raises(TaskTimeoutError, match="task 1 "):
        chaos(_timeout_items(start_method, (1, "grandchild", str(tmp_path))), start_method=start_method,
              task_timeout=0.5)
    grandchild = read_pid(tmp_path / "1.grandchild")
    assert wait_until(lambda: gone(grandchild), 5.0), "the task's `sleep` subprocess outlived the timeout"
    assert_usable(start_method)


def test_task_timeout_fires_without_any_other_event() -> None:
    """One long task and nothing else going on: the parent must still wake up for its deadline."""
    for start_method in ALL_METHODS:
        chaos(range(2), start_method=start_method, n_jobs=1)
        for _ in range(3):
            t0 = time.monotonic()
            results = chaos([(0, "sleep", 3)], start_method=start_method, n_jobs=1, task_timeout=0.3,
                            on_error="return")
            assert time.monotonic() - t0 < 2.5
            assert isinstance(results[0], TaskTimeoutError), start_method
        assert_usable(start_method, n_jobs=1)


def test_task_timeout_with_threads_says_the_thread_runs_on() -> None:
    results = chaos(_timeout_items("threading", (1, "sleep", 2.0)), start_method="threading", task_timeout=0.3,
                    on_error="return")
    assert isinstance(results[1], TaskTimeoutError)
    assert "a thread cannot be interrupted: it runs on, disowned" in str(results[1])
    assert [results[0], *results[2:]] == [0, 4, 9]
    assert_usable("threading")


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_worker_init_timeout(start_method: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(TaskTimeoutError, match=r"worker_init of worker \d ran longer than worker_init_timeout=0.5s"):
        chaos(range(4), start_method=start_method, worker_init=fault_tasks.slow_hook, worker_init_timeout=0.5)
    assert time.monotonic() - t0 < 8
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_worker_exit_timeout(start_method: str) -> None:
    assert chaos(range(4), start_method=start_method, worker_exit=fault_tasks.slow_hook,
                 worker_exit_timeout=0.5) == EXPECTED[:4]
    t0 = time.monotonic()
    with pytest.raises(TaskTimeoutError, match=r"worker_exit of worker \d ran longer than worker_exit_timeout=0.5s"):
        chaos.close()  # runs the exit hooks
    assert time.monotonic() - t0 < 8
    assert_usable(start_method)


def test_keep_alive_false_always_stops_the_workers_after_the_call() -> None:
    holder = chaos._self_core.holder
    left_running = 0
    for _ in range(200):  # a race that loses a few times in a hundred calls: cheap threads, many tries
        assert chaos(range(10), start_method="threading", keep_alive=False) == EXPECTED
        left_running += bool(holder.retiring)
        close_pools()
    assert left_running == 0, f"{left_running} of 200 calls left their workers running"


# --- exceptions ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_exception_with_custom_init_signature_keeps_its_type_and_state(start_method: str) -> None:
    with pytest.raises(fault_tasks.CustomInitError) as info:
        chaos([(0,), (1, "custom", "disk full")], start_method=start_method)
    assert type(info.value) is fault_tasks.CustomInitError
    assert (info.value.code, info.value.detail, str(info.value)) == (1, "disk full", "code 1: disk full")
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_unpicklable_exception_becomes_remote_error(start_method: str) -> None:
    with pytest.raises(RemoteError) as info:
        chaos([(0,), (1, "unpicklable_exc")], start_method=start_method)
    error = info.value
    assert error.type_name == "UnpicklableError"
    assert "cannot travel 1" in error.exc_repr and "UnpicklableError" in str(error)
    assert 'raise UnpicklableError(f"cannot travel {i}")' in error.traceback_text
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_keyboard_interrupt_raised_in_a_task_propagates(start_method: str) -> None:
    with pytest.raises(KeyboardInterrupt, match="interrupted in task 2"):
        chaos([(0,), (1,), (2, "kbint"), (3,)], start_method=start_method)
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_a_worker_is_seen_to_end_while_a_child_it_forked_lives_on(start_method: str, tmp_path: Path) -> None:
    # The child inherits the worker's copy of multiprocessing's sentinel pipe, which then never reports the
    # worker's exit: the pool must not wait for the child (it would here: the child waits for this test).
    done = tmp_path / "child-done"
    child = None
    try:
        with parallelize.WorkerPool(1, start_method=start_method) as pool:  # no keep_alive: ends after the map
            [child] = pool.map(fault_tasks.fork_a_child_waiting_for_sigusr2, [(20.0, str(done))])
        assert not done.exists(), "the map returned only once the worker's child had stopped waiting"
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGUSR2)
    assert fault_tasks.wait_for(done)
    assert wait_until(lambda: gone(child))


def test_workers_that_keep_dying_while_starting_fail_the_call_instead_of_being_replaced_for_ever() -> None:
    # The classic case is a script without `if __name__ == "__main__":` under spawn; here the shared objects
    # cannot be rebuilt in the worker. Either way no worker ever becomes ready.
    with parallelize.WorkerPool(2, start_method="spawn", shared_objects=fault_tasks.FailsToUnpickle()) as pool, \
            pytest.raises(WorkerDiedError, match="3 workers in a row failed to start") as info:
        pool.map(fault_tasks.square, range(10))
    assert "if __name__ == '__main__':" in str(info.value)


def test_a_worker_that_hangs_while_starting_is_killed_and_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Long enough for a spawned worker to reach the shared objects on a loaded machine.
    monkeypatch.setenv("PARALLELIZE_WORKER_START_TIMEOUT", "3")
    with parallelize.WorkerPool(1, start_method="spawn",
                                shared_objects=fault_tasks.HangsUnpickling(str(tmp_path), 1)) as pool:
        assert pool.map(fault_tasks.square_beside, range(5)) == [0, 1, 4, 9, 16]
    hung = int((tmp_path / "0.pid").read_text())
    assert wait_until(lambda: gone(hung))
    assert "did not finish starting within 3.0s; a new worker takes its place" in caplog.text


def test_workers_that_keep_hanging_while_starting_fail_the_call(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_WORKER_START_TIMEOUT", "1")
    with parallelize.WorkerPool(1, start_method="spawn",
                                shared_objects=fault_tasks.HangsUnpickling(str(tmp_path), 99)) as pool, \
            pytest.raises(WorkerDiedError, match="3 workers in a row failed to start") as info:
        pool.map(fault_tasks.square_beside, range(5))
    assert "did not finish starting within 1.0s and was killed; PARALLELIZE_WORKER_START_TIMEOUT" in str(info.value)
    # (A worker killed before it got as far as the shared objects under load leaves no pid behind.)
    pids = [int(path.read_text()) for path in tmp_path.glob("*.pid")]
    assert len(pids) <= 3 and wait_until(lambda: all(map(gone, pids)))


class _Interrupted(BaseException):
    """What a program's own signal handler may raise in the middle of a map (a test runner's timeout, say)."""


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_an_exception_from_a_signal_handler_mid_map_replaces_the_workers(start_method: str, tmp_path: Path) -> None:
    # It can strike between two updates of the parent's bookkeeping: the workers must not be trusted afterwards.
    assert_usable(start_method)
    before = set(chaos.worker_pids())

    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted

    def interrupt_once_a_task_runs() -> None:
        if fault_tasks.wait_for(tmp_path / "0.pid"):
            os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, interrupt)
    timer = threading.Thread(target=interrupt_once_a_task_runs)
    try:
        timer.start()
        with pytest.raises(_Interrupted):
            chaos([(0, "block", str(tmp_path))] + [(i, "sleep", 0.01) for i in range(1, 1000)],
                  start_method=start_method)
    finally:
        timer.join()
        signal.signal(signal.SIGUSR2, previous)
    assert wait_until(lambda: all(gone(pid) for pid in before))
    assert_usable(start_method)
    assert set(chaos.worker_pids()).isdisjoint(before)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_huge_argument_repr_is_capped_in_a_death_message(start_method: str) -> None:
    huge = "x" * 1_000_000
    with pytest.raises(WorkerDiedError) as info:
        chaos([(0,), (1, "exit", 3, huge)], start_method=start_method)
    message = str(info.value)
    assert "task 1 ((1, 'exit', 3, 'xxx" in message and "..." in message
    assert len(message) < 1000
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_huge_argument_repr_is_capped_in_a_timeout_message(start_method: str) -> None:
    huge = "y" * 1_000_000
    with pytest.raises(TaskTimeoutError) as info:
        chaos(_timeout_items(start_method, (1, "sleep", 20, huge)), start_method=start_method, task_timeout=0.3)
    message = str(info.value)
    assert "task 1 ((1, 'sleep', 20, 'yyy" in message and len(message) < 1000
    assert_usable(start_method)


# --- data that cannot travel ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_unpicklable_argument_raises_in_the_caller(start_method: str) -> None:
    chaos(range(2), start_method=start_method)
    pids = chaos.worker_pids()
    items: list[Any] = [(i,) for i in range(6)]
    items[4] = (4, "ok", threading.Lock())
    with pytest.raises(TypeError, match=r"the arguments of task 4 cannot be pickled") as info:
        chaos(items, start_method=start_method)
    assert "lock" in str(info.value)
    assert_usable(start_method)
    assert chaos.worker_pids() == pids


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_unpicklable_result_fails_that_task_and_the_worker_survives(start_method: str) -> None:
    chaos(range(2), start_method=start_method)
    pids = chaos.worker_pids()
    with pytest.raises(ResultPicklingError, match=r"the result of task 1 cannot be pickled") as info:
        chaos([(0,), (1, "unpicklable_result"), (2,)], start_method=start_method)
    assert "lock" in str(info.value)
    assert_usable(start_method)
    assert chaos.worker_pids() == pids  # same workers: nobody died


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_unpicklable_result_with_on_error_return(start_method: str) -> None:
    items = [(i,) for i in range(6)]
    items[3] = (3, "unpicklable_result")
    results = chaos(items, start_method=start_method, on_error="return", chunk_size=3)
    assert isinstance(results[3], ResultPicklingError)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 4, 16, 25]
    assert_usable(start_method)


def _attempts(directory: Path, i: int) -> int:
    counter = directory / f"{i}.attempts"
    return int(counter.read_text()) if counter.exists() else 0


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_a_result_that_cannot_be_unpickled_here_fails_only_its_task(start_method: str, tmp_path: Path) -> None:
    chaos(range(2), start_method=start_method)
    pids = chaos.worker_pids()
    items: list[Any] = [(i,) for i in range(6)]
    items[3] = (3, "unreadable_result", str(tmp_path))
    with parallelize.config(start_method=start_method):
        neighbour = chaos.submit(5)  # a concurrent call on the same pool is not touched
    results = chaos(items, start_method=start_method, on_error="return", chunk_size=3)
    assert isinstance(results[3], ResultPicklingError)
    assert "the result of task 3 was pickled in the worker but cannot be unpickled here" in str(results[3])
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 4, 16, 25]
    assert neighbour.result(timeout=20) == 25
    assert _attempts(tmp_path, 3) == 2  # its chunk ran once more, with each result sent on its own
    assert chaos.worker_pids() == pids  # no worker was harmed
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_a_result_that_cannot_be_unpickled_here_raises_naming_the_task(start_method: str, tmp_path: Path) -> None:
    with pytest.raises(ResultPicklingError, match=r"the result of task 1 was pickled in the worker"):
        chaos([(0,), (1, "unreadable_result", str(tmp_path)), (2,)], start_method=start_method)
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_a_worker_dying_while_sending_results_fails_that_task_without_endless_reruns(start_method: str,
                                                                                       tmp_path: Path) -> None:
    items: list[Any] = [(i,) for i in range(6)]
    items[4] = (4, "dies_pickling_result", str(tmp_path))
    t0 = time.monotonic()
    results = chaos(items, start_method=start_method, on_error="return", chunk_size=3)
    assert time.monotonic() - t0 < 20
    assert is_died(results[4]) and "task 4" in str(results[4])
    assert [r for i, r in enumerate(results) if i != 4] == [0, 1, 4, 9, 25]
    assert _attempts(tmp_path, 4) == 2  # once in its chunk, once more with its result sent on its own
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_a_task_closing_its_workers_pipes_fails_alone_after_two_attempts(start_method: str, tmp_path: Path) -> None:
    # The worker dies sending the result (its pipe is gone): bounded re-runs, not hundreds of restarts.
    items: list[Any] = [(i,) for i in range(6)]
    items[2] = (2, "close_fds", str(tmp_path))
    results = chaos(items, start_method=start_method, on_error="return", chunk_size=2)
    assert is_died(results[2]) and "task 2" in str(results[2])
    assert [r for i, r in enumerate(results) if i != 2] == [0, 1, 9, 16, 25]
    assert _attempts(tmp_path, 2) == 2
    assert_usable(start_method)


# --- the input fails -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_input_generator_raising_midway_reaches_the_caller_unchanged(start_method: str) -> None:
    chaos(range(2), start_method=start_method)
    pids = chaos.worker_pids()

    def items() -> Iterator[tuple[Any, ...]]:
        for i in range(3):
            yield (i, "sleep", 0.5)
        raise InputBrokeError("the input broke at item 3")

    t0 = time.monotonic()
    with pytest.raises(InputBrokeError, match="the input broke at item 3") as info:
        chaos(items(), start_method=start_method)
    assert not isinstance(info.value.__cause__, RemoteTraceback)  # ours, not a worker's
    assert_usable(start_method)
    assert time.monotonic() - t0 < 2.0  # the dispatched sleeps were cancelled, not waited for
    assert chaos.worker_pids() == pids


# --- leaving an imap early --------------------------------------------------------------------------------------------

SLOW_ITEMS = [(i, "sleep", 0.2) for i in range(60)]


def _check_idle_and_reusable(start_method: str, pids: list[int]) -> None:
    t0 = time.monotonic()
    assert_usable(start_method)
    # 58 abandoned tasks of 0.2 s on 2 workers would take 6 s: they were cancelled, not run
    assert time.monotonic() - t0 < 1.0, "the abandoned imap's chunks were not cancelled"
    assert chaos.worker_pids() == pids  # interrupted, not killed


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_leaving_an_imap_with_keep_alive_false_stops_its_workers(start_method: str) -> None:
    items = [(i, "uninterruptible", 0.3) for i in range(20)]  # the running chunks answer only after 0.3 s
    results = chaos.imap(items, start_method=start_method, keep_alive=False)
    assert next(results) == 0
    engine = chaos._self_core.holder.engine
    assert engine is not None
    pids = engine.worker_pids()
    results.close()  # type: ignore[attr-defined]
    assert wait_until(lambda: engine.closed and all(gone(p) for p in pids), 2.0), "the workers live on"


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_break_out_of_imap_cancels_the_rest(start_method: str) -> None:
    chaos(range(2), start_method=start_method)
    pids = chaos.worker_pids()
    for n, value in enumerate(chaos.imap(SLOW_ITEMS, start_method=start_method)):
        assert value == n * n
        if n == 1:
            break
    _check_idle_and_reusable(start_method, pids)


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_closing_an_imap_cancels_the_rest(start_method: str) -> None:
    chaos(range(2), start_method=start_method)
    pids = chaos.worker_pids()
    results = chaos.imap_unordered(SLOW_ITEMS, start_method=start_method)
    assert next(iter(results)) in {i * i for i in range(60)}
    results.close()  # type: ignore[attr-defined]
    _check_idle_and_reusable(start_method, pids)


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_dropping_an_imap_cancels_the_rest(start_method: str) -> None:
    chaos(range(2), start_method=start_method)
    pids = chaos.worker_pids()
    results = iter(chaos.imap(SLOW_ITEMS, start_method=start_method))
    assert next(results) == 0
    del results
    gc.collect()
    _check_idle_and_reusable(start_method, pids)


# --- memory -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_max_worker_memory_below_a_fresh_worker_fails_the_call_instead_of_restarting_for_ever(
        start_method: str) -> None:
    with pytest.raises(ConfigError, match=r"max_worker_memory=4096 bytes is below what a worker uses"):
        chaos(range(10), start_method=start_method, max_worker_memory=4096)
    assert_usable(start_method)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_max_worker_memory_restarts_a_worker_with_a_warning(start_method: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    limit = psutil.Process().memory_info().rss + 150 * MB
    items = [(i,) for i in range(10)]
    items[2] = (2, "alloc", 300 * MB)
    with caplog.at_level(logging.WARNING, logger="parallelize"):
        assert chaos(items, start_method=start_method, max_worker_memory=limit) == EXPECTED
        assert_usable(start_method, max_worker_memory=limit)
    assert "above max_worker_memory" in caplog.text and "it was restarted" in caplog.text
    assert len(chaos.worker_pids()) == 2
    assert all(psutil.Process(p).memory_info().rss < limit for p in chaos.worker_pids())


# --- fork after threads ----------------------------------------------------------------------------------------------


def test_fork_pool_started_while_a_user_thread_runs_warns() -> None:
    chaos.close()  # the warning comes when a pool starts workers: make sure this call starts a new one
    release = threading.Event()
    thread = threading.Thread(target=release.wait, args=(10,), name="user-thread")
    thread.start()
    try:
        with pytest.warns(parallelize.ForkAfterThreadsWarning, match="user-thread"):
            assert chaos(range(10), start_method="fork") == EXPECTED
    finally:
        release.set()
        thread.join(10)
    assert_usable("fork")


# --- WorkerPool (MPIRE API) -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_workerpool_worker_death_raises_and_the_pool_stays_usable(start_method: str) -> None:
    with WorkerPool(n_jobs=2, start_method=start_method, keep_alive=True) as pool:
        with pytest.raises(WorkerDiedError, match=r"died with exit code 3 while running task 1 "):
            pool.map(fault_tasks.behave, [(0,), (1, "exit", 3), (2,)])
        assert pool.map(fault_tasks.square, range(10)) == EXPECTED
        with pytest.raises(WorkerDiedError, match="SIGSEGV"):
            pool.map(fault_tasks.behave, [(0,), (1, "segfault")])
        assert pool.map(fault_tasks.square, range(10)) == EXPECTED


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_workerpool_timeout_raises_and_the_pool_stays_usable(start_method: str) -> None:
    with WorkerPool(n_jobs=2, start_method=start_method, keep_alive=True) as pool:
        with pytest.raises(TaskTimeoutError, match="task 1 "):
            pool.map(fault_tasks.square, range(2))  # warm, as _timeout_items does for chaos
            pool.map(fault_tasks.behave, [(0, "sleep", 0.15), (1, "sleep", 20), (2,), (3,)], task_timeout=0.3)
        assert pool.map(fault_tasks.square, range(10)) == EXPECTED


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_workerpool_keeps_mpire_raise_semantics(start_method: str) -> None:
    with WorkerPool(n_jobs=2, start_method=start_method) as pool:  # keep_alive=False, as MPIRE's default
        with pytest.raises(ValueError, match=r"bad item [37]") as info:
            pool.map(fault_tasks.behave, _with_failures())
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert pool.map(fault_tasks.square, range(10)) == EXPECTED
        with pytest.raises(fault_tasks.CustomInitError):
            list(pool.imap(fault_tasks.behave, [(0,), (1, "custom", "x")]))
        assert list(pool.imap(fault_tasks.square, range(10))) == EXPECTED


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_workerpool_apply_async_death(start_method: str) -> None:
    with WorkerPool(n_jobs=2, start_method=start_method, keep_alive=True) as pool:
        result = pool.apply_async(fault_tasks.behave, (0, "exit", 2))
        with pytest.raises(WorkerDiedError, match="exit code 2"):
            result.get(timeout=20)
        assert pool.apply(fault_tasks.square, (7,)) == 49


# --- cancellation racing worker start-up ----------------------------------------------------------------------------


def test_failing_job_does_not_kill_a_worker_that_is_still_starting() -> None:
    slow_start = fault_tasks.slow_start  # its spawn workers spend 0.6 s in start-up (unpickling shared_objects)
    assert slow_start(range(4), start_method="spawn") == [0, 1, 4, 9]
    killed_in_start_up = 0
    for _ in range(5):  # each try hits the start-up window about 2 times in 3: five tries make the outcome certain
        victim = slow_start.worker_pids()[1]
        os.kill(victim, signal.SIGKILL)  # its replacement is started by the next call
        assert wait_until(lambda victim=victim: gone(victim))
        with pytest.raises(ValueError, match="bad item"):
            slow_start(["raise", 1, 2, 3], start_method="spawn")  # fails after 0.3 s, on worker 0
        starting = slow_start.worker_pids()  # worker 0, and maybe the replacement of worker 1, starting up
        assert victim not in starting
        assert slow_start(range(10), start_method="spawn") == EXPECTED
        killed_in_start_up += len(starting) == 2 and slow_start.worker_pids() != starting
    assert killed_in_start_up == 0, "a replacement worker was killed by the cancel signal during its start-up"
    assert_usable("spawn")
