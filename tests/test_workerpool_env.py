"""WorkerPool and the two overriding variables: PARALLELIZE_MAX_CPU caps the default n_jobs, and
PARALLELIZE_DISABLE=1 runs everything serially in the calling thread (worker 0, same hooks, state and results)."""

from __future__ import annotations

import os
import threading
import traceback
from typing import Any

import numpy as np
import pytest

from parallelize import ConfigError, WorkerPool, cpu_count

pytestmark = pytest.mark.usefixtures("no_parallelize_env")


def n_workers(pool: WorkerPool) -> int:
    """The pool's n_jobs, as MPIRE shows it: a numpy input is cut into 4 * n_jobs slices by default."""
    return len(pool.map(len, np.zeros((1000, 1)))) // 4


# --- PARALLELIZE_MAX_CPU ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_jobs", [None, 0])
def test_max_cpu_caps_the_default_n_jobs(monkeypatch: pytest.MonkeyPatch, n_jobs: int | None) -> None:
    monkeypatch.setenv("PARALLELIZE_MAX_CPU", "1")
    with WorkerPool(n_jobs, start_method="threading") as pool:
        assert n_workers(pool) == 1


def test_an_explicit_n_jobs_wins_over_max_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_MAX_CPU", "1")
    with WorkerPool(3, start_method="threading") as pool:
        assert n_workers(pool) == 3


def test_max_cpu_above_the_cpu_count_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_MAX_CPU", str(cpu_count() + 5))
    with WorkerPool(start_method="threading") as pool:
        assert n_workers(pool) == cpu_count()


@pytest.mark.parametrize(("value", "shown"), [("0", "0"), ("two", "'two'")])
def test_a_bad_max_cpu_raises_config_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str,
                                                               shown: str) -> None:
    monkeypatch.setenv("PARALLELIZE_MAX_CPU", value)
    with pytest.raises(ConfigError, match=f"PARALLELIZE_MAX_CPU={shown}"):
        WorkerPool()


# --- PARALLELIZE_DISABLE ---------------------------------------------------------------------------------------------


def where(worker_id: int, shared: str, state: dict[str, Any], x: int) -> tuple[Any, ...]:
    state["n"] = state.get("n", 0) + 1
    return worker_id, shared, x, os.getpid(), threading.get_ident()


def init(worker_id: int, shared: str, state: dict[str, Any]) -> None:
    state["init"] = worker_id


def report(worker_id: int, shared: str, state: dict[str, Any]) -> tuple[Any, ...]:
    return "exit", state["init"], state["n"]


def fail(worker_id: int, shared: str, state: dict[str, Any], x: int) -> None:
    raise ValueError(f"task {x} failed")


@pytest.fixture
def serial_pool(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("PARALLELIZE_DISABLE", "1")
    with WorkerPool(4, pass_worker_id=True, shared_objects="shared", use_worker_state=True) as pool:
        yield pool


def test_disable_runs_the_map_in_the_calling_thread_as_worker_0(serial_pool: WorkerPool) -> None:
    results = serial_pool.map(where, range(6), worker_init=init, worker_exit=report)
    here = (os.getpid(), threading.get_ident())
    assert results == [(0, "shared", x, *here) for x in range(6)]
    assert serial_pool.get_exit_results() == [("exit", 0, 6)]


def test_disable_lazy_imap_and_unordered_maps(serial_pool: WorkerPool) -> None:
    lazy = serial_pool.imap(where, range(3))
    assert next(lazy)[2] == 0
    assert [r[2] for r in lazy] == [1, 2]
    assert sorted(r[2] for r in serial_pool.map_unordered(where, range(3))) == [0, 1, 2]
    assert sorted(r[2] for r in serial_pool.imap_unordered(where, range(3))) == [0, 1, 2]


def test_disable_keep_alive_keeps_the_worker_state_until_stop_and_join(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_DISABLE", "1")
    with WorkerPool(2, use_worker_state=True, pass_worker_id=True, shared_objects="shared",
                    keep_alive=True) as pool:
        pool.map(where, range(4), worker_init=init, worker_exit=report)
        pool.map(where, range(5), worker_init=init, worker_exit=report)
        assert pool.get_exit_results() == []
        pool.stop_and_join()
        assert pool.get_exit_results() == [("exit", 0, 9)]


def test_disable_apply_and_apply_async_run_at_once_with_callbacks(serial_pool: WorkerPool) -> None:
    seen: list[Any] = []
    assert serial_pool.apply(where, (1,), worker_init=init)[:3] == (0, "shared", 1)
    result = serial_pool.apply_async(where, (2,), callback=seen.append)
    assert result.ready() and result.successful()
    assert result.get()[:3] == (0, "shared", 2)
    failed = serial_pool.apply_async(fail, (3,), error_callback=seen.append)
    assert not failed.successful()
    with pytest.raises(ValueError, match="task 3 failed"):
        failed.get()
    assert seen[0][:3] == (0, "shared", 2)
    assert isinstance(seen[1], ValueError)


def test_disable_raises_the_task_error_itself_with_the_task_in_the_traceback(serial_pool: WorkerPool) -> None:
    with pytest.raises(ValueError, match="task 0 failed") as info:
        serial_pool.map(fail, range(3), worker_exit=report)
    assert info.value.__cause__ is None  # not a copy from another process: pdb can walk into the task
    assert any(frame.name == "fail" for frame in traceback.extract_tb(info.value.__traceback__))
    assert serial_pool.get_exit_results() == []  # after a failure the worker ends without its exit hook


def test_disable_gives_the_same_numpy_results_as_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.arange(40.0).reshape(20, 2)
    with WorkerPool(2, start_method="threading") as pool:
        expected = pool.map(np.cumsum, data)
    monkeypatch.setenv("PARALLELIZE_DISABLE", "1")
    with WorkerPool(2, start_method="threading") as pool:
        np.testing.assert_array_equal(pool.map(np.cumsum, data), expected)


def test_disable_terminate_skips_the_exit_hook(serial_pool: WorkerPool) -> None:
    serial_pool.apply(where, (1,), worker_init=init, worker_exit=report)
    serial_pool.terminate()
    serial_pool.stop_and_join()
    assert serial_pool.get_exit_results() == []
