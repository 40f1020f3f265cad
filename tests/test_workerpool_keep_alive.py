"""keep_alive as in MPIRE 2.10: live workers, and their state, are reused whatever the next call's function, hooks
or lifespan. A map hands its hooks and lifespan to the live workers (warning when worker_init or worker_exit
change); an apply keeps the workers' own.

Workers are told apart by helpers.worker_token (a pid alone does not separate threads).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from helpers import worker_token as token
from parallelize import WorkerPool

N_JOBS = 2

# --- task functions and hooks (module level: importable under spawn and forkserver) ----------------------------------


def load_model(state: dict[str, Any]) -> None:
    state["model"] = f"model of {token()}"
    state["n"] = 0


def load_other_model(state: dict[str, Any]) -> None:
    state["other"] = "loaded"
    state.setdefault("n", 0)


def predict(state: dict[str, Any], x: int) -> tuple[str, int]:
    state["n"] = state.get("n", 0) + 1
    return state["model"], x


def count(state: dict[str, Any], x: int) -> str:
    state["n"] = state.get("n", 0) + 1
    return token()


def report(state: dict[str, Any]) -> tuple[str, int]:
    return "report", state.get("n", 0)


def report_other(state: dict[str, Any]) -> tuple[str, int, Any]:
    return "report_other", state.get("n", 0), state.get("other")


def change_warning() -> Any:
    return pytest.warns(RuntimeWarning, match="worker_init/worker_exit changed while the workers are alive")


# --- maps ------------------------------------------------------------------------------------------------------------


def test_mpires_worker_state_example_keeps_the_model_loaded_by_the_first_maps_worker_init(start_method: str) -> None:
    # MPIRE's documented idiom: load once with the first map's worker_init, then map again without it.
    with WorkerPool(N_JOBS, start_method=start_method, use_worker_state=True, keep_alive=True) as pool:
        first = pool.map(predict, range(10), worker_init=load_model)
        with change_warning():
            second = pool.map(predict, range(10, 20))
    assert [x for _, x in first + second] == list(range(20))
    assert {model for model, _ in second} <= {model for model, _ in first}


def test_the_latest_maps_worker_exit_runs_at_stop_and_sees_the_state_of_both_maps(start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=start_method, use_worker_state=True, keep_alive=True) as pool:
        pool.map(count, range(10), worker_init=load_model, worker_exit=report)
        with change_warning():
            pool.map(count, range(10, 30), worker_init=load_model, worker_exit=report_other)
        pool.stop_and_join()
        exit_results = pool.get_exit_results()
    # load_model ran once per worker, so n counts both maps; load_other_model never ran, the worker had an init.
    assert [name for name, _, _ in exit_results] == ["report_other"] * N_JOBS
    assert sum(n for _, n, _ in exit_results) == 30
    assert {other for _, _, other in exit_results} == {None}


def test_a_map_without_worker_exit_leaves_no_exit_results(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, use_worker_state=True, keep_alive=True) as pool:
        pool.map(count, range(10), worker_exit=report)
        with change_warning():
            pool.map(count, range(10))
        pool.stop_and_join()
        assert pool.get_exit_results() == []


def test_a_worker_init_given_later_runs_in_live_workers_that_had_none(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, use_worker_state=True, keep_alive=True,
                    order_tasks=True) as pool:
        first = pool.map(count, range(N_JOBS), chunk_size=1)
        with change_warning():
            second = pool.map(count, range(N_JOBS), chunk_size=1, worker_init=load_other_model,
                              worker_exit=report_other)
        pool.stop_and_join()
        exit_results = pool.get_exit_results()
    assert second == first  # the same workers
    assert sorted(exit_results) == [("report_other", 2, "loaded")] * N_JOBS


def test_a_late_worker_init_that_raises_fails_the_map(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, use_worker_state=True, keep_alive=True) as pool:
        pool.map(count, range(4))
        with change_warning(), pytest.raises(KeyError, match="missing"):
            pool.map(count, range(4), worker_init=_raise_key_error)
        with warnings.catch_warnings():
            # It warns again if a worker whose init failed has not been seen to end yet: timing, not tested here.
            warnings.simplefilter("ignore", RuntimeWarning)
            assert len(pool.map(count, range(4), worker_init=load_model)) == 4  # the pool still works


def _raise_key_error(state: dict[str, Any]) -> None:
    raise KeyError("missing")


def test_a_shorter_worker_lifespan_counts_the_tasks_run_before_it(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, use_worker_state=True, keep_alive=True,
                    order_tasks=True) as pool:
        first = pool.map(count, range(10), chunk_size=1, worker_exit=report)  # 5 tasks per worker
        second = pool.map(count, range(10), chunk_size=1, worker_exit=report, worker_lifespan=3)
        pool.stop_and_join()
        exit_results = pool.get_exit_results()
    # Past the new lifespan already, the first workers end (running worker_exit) before any task of the second
    # map; their replacements run at most 3 tasks each.
    assert set(first).isdisjoint(second)
    counts = sorted((n for _, n in exit_results), reverse=True)
    assert counts[:2] == [5, 5]
    assert all(n <= 3 for n in counts[2:])
    assert sum(counts) == 20


def test_a_map_without_worker_lifespan_keeps_the_workers_of_a_map_with_one(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, keep_alive=True, order_tasks=True) as pool:
        first = pool.map(token, range(10), chunk_size=1, worker_lifespan=3)
        second = pool.map(token, range(20), chunk_size=1)
    assert len(set(first)) > N_JOBS  # workers were replaced during the first map
    assert len(set(second)) == N_JOBS
    assert set(second) <= set(first)  # the last workers of the first map ran all of the second


# --- apply -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_alive", [True, False])
def test_mpires_apply_idiom_keeps_the_state_and_the_first_applys_worker_exit(fast_start_method: str,
                                                                              keep_alive: bool) -> None:
    # Hooks given to the first apply only; plain apply_async after it. Workers live until stop_and_join.
    with WorkerPool(N_JOBS, start_method=fast_start_method, use_worker_state=True, keep_alive=keep_alive) as pool:
        model, _ = pool.apply(predict, (0,), worker_init=load_model, worker_exit=report)
        results = [pool.apply_async(predict, (x,)) for x in range(1, 9)]
        values = [r.get(timeout=30) for r in results]
        pool.stop_and_join()
        exit_results = pool.get_exit_results()
    assert [x for _, x in values] == list(range(1, 9))
    assert model.startswith("model of")
    assert [name for name, _ in exit_results] == ["report"] * N_JOBS
    assert sum(n for _, n in exit_results) == 9


def test_hooks_given_to_a_later_apply_warn_and_are_not_used(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, use_worker_state=True, keep_alive=True) as pool:
        pool.apply(count, (0,), worker_exit=report)
        with pytest.warns(RuntimeWarning, match="the workers are running already"):
            pool.apply(count, (1,), worker_exit=report_other)
        pool.stop_and_join()
        assert [name for name, _ in pool.get_exit_results()] == ["report"] * N_JOBS
