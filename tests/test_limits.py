"""Values at the edges: "no limit" written as inf or a huge number, impossible values that must fail before any
process starts, worker counts beyond what the system allows, and memory that must stay bounded."""

from __future__ import annotations

import functools
import gc
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import helpers
from helpers import child_keys
from parallelize import ConfigError, WorkerPool, parallel, show_config
from parallelize._functions import IDLE_KEPT, FunctionRegistry

THIRTY_DAYS = 30 * 24 * 3600.0
NO_LIMITS = [THIRTY_DAYS, 1e10, 1e300, math.inf]
TIMEOUT_OPTIONS = ["task_timeout", "worker_init_timeout", "worker_exit_timeout"]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _no_environment(no_parallelize_env: None) -> None:
    """No PARALLELIZE_* variable from the outside changes what these tests see."""


def _check_message(error: BaseException, name: str, value: Any) -> None:
    assert name in str(error)
    assert repr(value) in str(error)


# --- "no limit" as inf or a huge number -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", NO_LIMITS)
@pytest.mark.parametrize("option", TIMEOUT_OPTIONS)
def test_decorator_timeout_of_any_size_or_inf_means_a_far_or_no_limit(option: str, value: float,
                                                                     fast_start_method: str) -> None:
    func = parallel(n_jobs=2, start_method=fast_start_method, **{option: value})(helpers.square)
    try:
        assert func(range(6)) == [0, 1, 4, 9, 16, 25]
        assert func(range(3), **{option: value}) == [0, 1, 4]
    finally:
        func.close()


def test_environment_timeout_inf_means_no_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_TASK_TIMEOUT", "inf")
    func = parallel(n_jobs=2, start_method="fork")(helpers.square)
    try:
        assert func(range(4)) == [0, 1, 4, 9]
    finally:
        func.close()
    assert re.search(r"task_timeout +None +\(PARALLELIZE_TASK_TIMEOUT\)", show_config())


@pytest.mark.parametrize("value", NO_LIMITS)
def test_workerpool_timeouts_of_any_size_or_inf(value: float, fast_start_method: str) -> None:
    timeouts = dict(task_timeout=value, worker_init_timeout=value, worker_exit_timeout=value)
    with WorkerPool(2, start_method=fast_start_method) as pool:
        assert pool.map(helpers.square, range(5), **timeouts) == [0, 1, 4, 9, 16]
        result = pool.apply_async(helpers.square, (7,), **timeouts)
        assert result.get(value) == 49
        assert pool.apply(helpers.square, (3,), **timeouts) == 9


@pytest.mark.parametrize("value", [THIRTY_DAYS, 1e10, math.inf])
def test_async_result_get_waits_with_a_timeout_of_any_size(value: float) -> None:
    with WorkerPool(1, start_method="fork") as pool:
        result = pool.apply_async(helpers.sleep_for, (0.2,))
        assert result.get(value) == 0.2  # waits for the task, through the loop's bounded waits


def test_async_result_get_with_nan_timeout_raises_naming_it() -> None:
    with WorkerPool(1, start_method="fork") as pool:
        result = pool.apply_async(helpers.square, (2,))
        with pytest.raises(ConfigError, match=r"timeout.*nan"):
            result.get(math.nan)
        assert result.get() == 4


def test_huge_retry_backoff_waits_without_breaking_the_loop() -> None:
    # The failed item's retry is due in 1e10 s: the loop must wait for it in bounded steps, serving the others.
    func = parallel(n_jobs=2, start_method="fork", retries=1, retry_backoff=1e10)(helpers.fail_on)
    try:
        results = func.imap_unordered([3, 1, 2])
        assert sorted([next(results), next(results)]) == [1, 2]
        results.close()  # type: ignore[attr-defined]
    finally:
        func.close()


def test_more_retries_than_a_float_power_of_two_can_count() -> None:
    # The backoff doubles per attempt: 2**1024 is past the largest float, which must not break the retry loop.
    func = parallel(n_jobs=1, backend="thread", retries=1100, on_error="return")(helpers.fail_on)
    try:
        [value] = func([3])
        assert isinstance(value, ValueError)
    finally:
        func.close()


@pytest.mark.parametrize("value", [math.nan, -1, -math.inf, 0])
@pytest.mark.parametrize("option", TIMEOUT_OPTIONS)
def test_nan_negative_or_zero_timeouts_raise_naming_them(option: str, value: float) -> None:
    with pytest.raises(ConfigError) as raised:
        parallel(**{option: value})
    _check_message(raised.value, option, value)
    with WorkerPool(1, start_method="fork") as pool:
        with pytest.raises(ConfigError) as raised:
            pool.map(helpers.square, range(3), **{option: value})
        _check_message(raised.value, option, value)
        with pytest.raises(ConfigError) as raised:
            pool.apply_async(helpers.square, (1,), **{option: value})
        _check_message(raised.value, option, value)


@pytest.mark.parametrize("value", [math.inf, math.nan, -1])
def test_retry_backoff_must_be_finite_and_not_negative(value: float, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as raised:
        parallel(retry_backoff=value)
    _check_message(raised.value, "retry_backoff", value)
    monkeypatch.setenv("PARALLELIZE_RETRY_BACKOFF", str(value))
    with pytest.raises(ConfigError, match="PARALLELIZE_RETRY_BACKOFF"):
        show_config()


# --- impossible values fail before any process starts ---------------------------------------------------------------


IMPOSSIBLE = [  # (option, value, what the message must show)
    ("chunk_size", math.inf, math.inf),
    ("chunk_size", 1e300, 1e300),
    ("chunk_size", 10**30, 10**30),
    ("max_worker_memory", "1e999GB", "1e999GB"),
    ("max_worker_memory", "1e300GB", "1e300GB"),
    ("max_worker_memory", 10**100, 10**100),
    ("max_worker_memory", "nanGB", "nanGB"),
    ("max_worker_memory", "0.1B", "0.1B"),
    ("cpu_ids", [99], 99),
    ("cpu_ids", [[0, 99]], 99),
]


@pytest.mark.parametrize(("option", "value", "shown"), IMPOSSIBLE)
def test_impossible_values_fail_at_decoration(option: str, value: Any, shown: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        parallel(**{option: value})
    _check_message(raised.value, option, shown)


@pytest.mark.parametrize(("option", "value", "shown"), IMPOSSIBLE)
def test_impossible_values_fail_at_the_call_before_any_process_starts(option: str, value: Any, shown: Any) -> None:
    func = parallel(n_jobs=2, start_method="fork")(helpers.get_pid)
    before = child_keys()
    with pytest.raises(ConfigError) as raised:
        func(range(4), **{option: value})
    _check_message(raised.value, option, shown)
    assert func.worker_pids() == []
    assert child_keys() == before


@pytest.mark.parametrize(("option", "value"), [("chunk_size", math.inf), ("chunk_size", 1e300),
                                               ("iterable_len", 10**30)])
def test_workerpool_impossible_map_values_fail_before_any_process_starts(option: str, value: Any) -> None:
    before = child_keys()
    with WorkerPool(2, start_method="fork") as pool:
        with pytest.raises(ConfigError) as raised:
            pool.map(helpers.square, range(4), **{option: value})
        _check_message(raised.value, option, value)
        assert child_keys() == before


def test_cpu_ids_outside_the_affinity_mask_fail_at_decoration_and_pool_construction(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A CPU that exists on the machine but that this process may not run on (taskset, a container's cpuset).
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    with pytest.raises(ConfigError, match=r"cpu_ids contains 1, .* may use CPUs 0\)"):
        parallel(cpu_ids=[1])
    with pytest.raises(ConfigError, match=r"cpu_ids contains 1"):
        WorkerPool(1, cpu_ids=[1])
    assert parallel(cpu_ids=[0]) is not None


def test_memory_sizes_still_accept_the_usual_spellings() -> None:
    func = parallel(max_worker_memory="1.5GiB")(helpers.square)
    assert func.decorator_options["max_worker_memory"] == 3 * 2**29
    assert parallel(max_worker_memory=2**40)(helpers.square).decorator_options["max_worker_memory"] == 2**40



# --- more workers than the system allows ----------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count descriptors and tasks")
def test_absurd_n_jobs_fails_at_once_naming_n_jobs_and_the_limit(fast_start_method: str) -> None:
    before = child_keys()
    func = parallel(n_jobs=10**6, start_method=fast_start_method)(helpers.square)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"n_jobs=1000000 .*(RLIMIT|kernel\.).*use at most n_jobs=\d+"):
        func(range(4))
    with WorkerPool(10**6, start_method=fast_start_method) as pool, \
            pytest.raises(ConfigError, match=r"n_jobs=1000000 .*use at most n_jobs=\d+"):
        pool.map(helpers.square, range(4))
    assert time.monotonic() - started < 10  # instead of forking until the descriptors run out
    assert child_keys() == before
    func.close()


FD_LIMIT_CHILD = """
import os, resource, sys
sys.path[:0] = [{tests!r}, {repo!r}]
import helpers
from parallelize import ConfigError, WorkerPool, parallel

if __name__ == "__main__":
    # Room for a few workers only, counted from what this process already has open.
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 60,
                                                resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    with WorkerPool(4, start_method="fork") as pool:
        print(pool.map(helpers.square, range(6)), flush=True)
    for attempt in ("WorkerPool", "decorator"):
        try:
            if attempt == "WorkerPool":
                with WorkerPool(40, start_method="fork") as pool:
                    pool.map(helpers.square, range(6))
            else:
                func = parallel(n_jobs=40, start_method="fork")(helpers.square)
                try:
                    func(range(6))
                finally:
                    func.close()
        except ConfigError as error:
            print(attempt, "ConfigError:", error, flush=True)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count descriptors")
def test_n_jobs_beyond_the_descriptor_limit_fails_before_forking(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(FD_LIMIT_CHILD.format(tests=str(TESTS), repo=str(TESTS.parent)))
    env = {name: value for name, value in os.environ.items() if not name.startswith("PARALLELIZE_")}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[0, 1, 4, 9, 16, 25]"
    for attempt, line in zip(("WorkerPool", "decorator"), lines[1:], strict=True):
        assert line.startswith(f"{attempt} ConfigError: n_jobs=40 needs about")
        assert "RLIMIT_NOFILE" in line


def test_many_more_workers_than_cpus_still_work() -> None:
    with WorkerPool(64, start_method="fork") as pool:
        assert pool.map(helpers.square, range(200), chunk_size=1) == [x * x for x in range(200)]


# --- max_tasks_active bounds how far the input is read ahead --------------------------------------------------------


class _CountingInput:
    """An input generator that counts the items taken from it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.pulled += 1
            yield i


def _largest_lead(results: Iterator[Any], source: _CountingInput) -> int:
    """The most items read from *source* and not yet consumed from *results*, seen at each result."""
    lead = 0
    for consumed, _ in enumerate(results):
        lead = max(lead, source.pulled - consumed)
    return lead


LIMIT = 20
N_JOBS = 2
CHUNK_CAP = LIMIT // (N_JOBS * 2)  # two chunks queued per worker fit in the limit


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("known_length", [False, True])
def test_max_tasks_active_bounds_the_items_read_ahead_of_a_workerpool_imap(ordered: bool,
                                                                           known_length: bool) -> None:
    # Automatic chunk sizes (guided with a length, adaptive without) grow far beyond the limit with quick tasks.
    source = _CountingInput(3000)
    with WorkerPool(N_JOBS, start_method="fork") as pool:
        imap = pool.imap if ordered else pool.imap_unordered
        results = imap(helpers.identity, source, max_tasks_active=LIMIT,
                       iterable_len=source.n if known_length else None)
        assert _largest_lead(results, source) <= LIMIT + CHUNK_CAP
    assert source.pulled == source.n


def test_max_tasks_active_bounds_the_items_read_ahead_of_a_decorated_imap() -> None:
    source = _CountingInput(3000)
    func = parallel(n_jobs=N_JOBS, start_method="fork", max_tasks_active=LIMIT)(helpers.identity)
    try:
        assert _largest_lead(iter(func.imap(source)), source) <= LIMIT + CHUNK_CAP
    finally:
        func.close()


def test_max_tasks_active_counts_results_waiting_for_an_earlier_one() -> None:
    # Ordered: while the first item is slow, later results wait in the parent; they count against the limit, or the
    # parent would read (and hold) the whole input meanwhile.
    source = _CountingInput(400)
    with WorkerPool(N_JOBS, start_method="fork") as pool:
        results = pool.imap(helpers.sleep_for, ((0.5 if i == 0 else 0.0) for i in source), max_tasks_active=LIMIT,
                            chunk_size=1)
        assert _largest_lead(results, source) <= LIMIT + 1


# --- a kept-alive pool forgets functions no call uses ---------------------------------------------------------------


class Ballast:
    """Bound into each partial below: counting the live ones shows how many of those functions a process holds."""

    def __init__(self) -> None:
        self.data = bytes(100_000)


def with_ballast(ballast: Ballast, x: int) -> int:
    return x


def live_ballasts(_: Any = None) -> int:
    gc.collect()
    return sum(type(obj) is Ballast for obj in gc.get_objects())


@pytest.mark.parametrize("calls", ["map", "apply_async"])
def test_kept_alive_pool_drops_functions_no_call_uses_in_parent_and_workers(calls: str) -> None:
    # A fresh functools.partial per call: each was kept for ever, in the parent and in every worker.
    with WorkerPool(2, start_method="fork", keep_alive=True) as pool:
        for i in range(40):
            func = functools.partial(with_ballast, Ballast())
            if calls == "map":
                assert pool.map(func, range(4)) == [0, 1, 2, 3]
            else:
                assert pool.apply_async(func, (i,)).get() == i
            del func
        held_by_workers = pool.map(live_ballasts, range(8), chunk_size=1)
        held_here = live_ballasts()
    # A few recent ones stay registered (IDLE_KEPT), so a function called again is not sent again; one more may be
    # a copy a forked worker inherited from the parent's stack.
    assert held_here <= IDLE_KEPT
    assert max(held_by_workers) <= IDLE_KEPT + 1


def test_a_function_called_again_is_not_sent_again_while_it_is_kept() -> None:
    with WorkerPool(2, start_method="fork", keep_alive=True) as pool:
        func = functools.partial(with_ballast, Ballast())
        for _ in range(5):
            assert pool.map(func, range(4)) == [0, 1, 2, 3]
        engine = pool._engine
        assert engine is not None
        assert len(engine._state.functions) == 1  # registered once, however many calls used it


def test_fresh_functions_never_run_a_dropped_one_whose_id_was_reused() -> None:
    # After a function is dropped its memory (and so its id()) is reused by new objects: each call must still run
    # its own function.
    with WorkerPool(2, start_method="fork", keep_alive=True) as pool:
        for i in range(60):
            assert pool.map(functools.partial(helpers.add, i), [1, 2]) == [i + 1, i + 2]


def test_a_registry_holds_what_running_calls_use_and_a_few_idle_ones() -> None:
    registry = FunctionRegistry()
    funcs = [functools.partial(helpers.add, i) for i in range(IDLE_KEPT + 5)]
    held = [registry.acquire(func) for func in funcs]
    assert registry.acquire(funcs[0]) == held[0]  # a second call using the same function
    registry.release(held[0])
    for func_id in held[1:]:
        registry.release(func_id)
    # funcs[0] is still held by one call; of the idle ones beyond the bound, the least recently used went.
    assert registry.take_dropped() == held[1:5]
    assert len(registry) == IDLE_KEPT + 1
    assert registry.acquire(funcs[1]) not in held  # dropped: registered anew, under a new func_id
    assert registry.take_dropped() == []
