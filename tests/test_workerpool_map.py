"""WorkerPool's map family and apply: the MPIRE 2.10 contract (order, argument passing, chunking, numpy, laziness,
keep_alive, apply/AsyncResult) under every start method where it matters.

Synchronisation is by events and barriers given to the workers as shared objects, or by bounded polling; nothing
here asserts on wall-clock time.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import multiprocessing.dummy
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import parallelize
from helpers import add, big_bytes, fail_on, sleep_for, square, worker_id_of, worker_token
from parallelize import ConfigError, PoolBusyError, PoolClosedError, WorkerPool

WAIT_S = 30.0  # bound on every blocking wait in a task or the test: a backstop, never expected to run out
N_JOBS = 2
BIG = 4 * 1024 * 1024  # several times any pipe buffer


# --- task functions (module level: importable under spawn and forkserver) ------------------------------------------

def worker_token_too(*args: Any) -> str:
    """A different function with the same behaviour as worker_token."""
    return worker_token(*args)


def noop_hook(*_: Any) -> None:
    return None


def out_of_order_probe(event: Any, x: int, last: int) -> int:
    """Item 0 finishes only after the last item has run, so completion order differs from input order."""
    if x == 0 and not event.wait(WAIT_S):
        raise RuntimeError("the last item never ran")
    if x == last:
        event.set()
    return x


def first_waits_for_gate(event: Any, x: int) -> int:
    """Item 0 waits for the test to open the gate; every other item returns at once."""
    if x == 0 and not event.wait(WAIT_S):
        raise RuntimeError("the gate was never opened")
    return x


def gated_square(event: Any, x: int, n_free: int) -> int:
    """Items below n_free return at once; every other item waits for the test to open the gate."""
    if x >= n_free and not event.wait(WAIT_S):
        raise RuntimeError("the gate was never opened")
    return x * x


def set_at(event: Any, x: int, trigger: int) -> int:
    """Sets the event when it runs item *trigger*."""
    if x == trigger:
        event.set()
    return x


def wait_then_return(event: Any, x: Any) -> Any:
    if not event.wait(WAIT_S):
        raise RuntimeError("the event was never set")
    return x


def meet_at_barrier(barrier: Any, x: int) -> int:
    barrier.wait(WAIT_S)
    return x


def is_set(event: Any, _: Any) -> bool:
    return bool(event.is_set())


def describe_args(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def random_bytes(seed: int, n_bytes: int) -> bytes:
    return random.Random(seed).randbytes(n_bytes)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def np_square(a: np.ndarray) -> Any:
    return a * a


def np_double(a: np.ndarray) -> Any:
    return a * 2


def chunk_shape(a: Any) -> tuple[str, tuple[int, ...]]:
    return type(a).__name__, tuple(a.shape)


class InputBrokeError(Exception):
    """Raised by an input generator in the parent."""


def broken_input(n_good: int) -> Iterator[int]:
    yield from range(n_good)
    raise InputBrokeError("the input failed midway")


# --- helpers ----------------------------------------------------------------------------------------------------


def context(start_method: str) -> Any:
    """The multiprocessing context matching a start method (multiprocessing.dummy for threads)."""
    return multiprocessing.dummy if start_method == "threading" else multiprocessing.get_context(start_method)


@pytest.fixture
def shared_event(start_method: str) -> Iterator[Any]:
    """An event the workers of *start_method* can be given as a shared object.

    Under spawn and forkserver a ctx.Event cannot be a shared object (see
    test_shared_event_as_shared_object_reaches_workers), so those get a manager's event.
    """
    if start_method in ("spawn", "forkserver"):
        with context(start_method).Manager() as manager:
            yield manager.Event()
    else:
        yield context(start_method).Event()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def tokens_per_worker(pool: WorkerPool, func: Callable[..., str] = worker_token, **map_kwargs: Any) -> list[str]:
    """One token per worker, in worker order (the pool must have order_tasks=True)."""
    return list(pool.map(func, range(N_JOBS), chunk_size=1, **map_kwargs))


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = target()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=runner, name="test-runner")
    thread.start()
    return thread, box


def join(thread: threading.Thread, box: dict[str, Any]) -> Any:
    thread.join(WAIT_S)
    assert not thread.is_alive(), "the thread did not finish"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- order -------------------------------------------------------------------------------------------------------

N_PROBE = 12
PROBE_ITEMS = [(x, N_PROBE - 1) for x in range(N_PROBE)]


def test_map_returns_results_in_input_order_when_completion_order_differs(start_method: str, shared_event: Any) -> None:
    with WorkerPool(N_JOBS, start_method=start_method, shared_objects=shared_event) as pool:
        assert pool.map(out_of_order_probe, PROBE_ITEMS, chunk_size=1) == list(range(N_PROBE))


def test_map_unordered_returns_every_result_once(start_method: str, shared_event: Any) -> None:
    with WorkerPool(N_JOBS, start_method=start_method, shared_objects=shared_event) as pool:
        results = pool.map_unordered(out_of_order_probe, PROBE_ITEMS, chunk_size=1)
    assert Counter(results) == Counter(range(N_PROBE))


def test_imap_yields_results_in_input_order_when_completion_order_differs(start_method: str,
                                                                          shared_event: Any) -> None:
    with WorkerPool(N_JOBS, start_method=start_method, shared_objects=shared_event) as pool:
        assert list(pool.imap(out_of_order_probe, PROBE_ITEMS, chunk_size=1)) == list(range(N_PROBE))


def test_imap_unordered_yields_every_result_once(start_method: str, shared_event: Any) -> None:
    with WorkerPool(N_JOBS, start_method=start_method, shared_objects=shared_event) as pool:
        results = list(pool.imap_unordered(out_of_order_probe, PROBE_ITEMS, chunk_size=1))
    assert Counter(results) == Counter(range(N_PROBE))


def test_imap_unordered_yields_a_finished_result_before_an_earlier_unfinished_one(start_method: str,
                                                                                   shared_event: Any) -> None:
    with WorkerPool(N_JOBS, start_method=start_method, shared_objects=shared_event) as pool:
        results = pool.imap_unordered(first_waits_for_gate, range(N_PROBE), chunk_size=1)
        first = next(results)  # item 0 cannot finish before the gate opens
        shared_event.set()
        rest = list(results)
    assert first != 0
    assert Counter([first, *rest]) == Counter(range(N_PROBE))


def test_map_with_default_chunking_returns_every_result_in_order(start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=start_method) as pool:
        assert pool.map(square, range(1000)) == [x * x for x in range(1000)]


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_imap_does_not_read_the_whole_generator_before_the_first_result(fast_start_method: str,
                                                                       chunk_size: int | None) -> None:
    total = 1000
    reads = 0

    def items() -> Iterator[tuple[int, int]]:
        nonlocal reads
        for x in range(total):
            reads += 1
            yield x, chunk_size or 1  # the first chunk is never blocked

    gate = context(fast_start_method).Event()
    with WorkerPool(N_JOBS, start_method=fast_start_method, shared_objects=gate) as pool:
        results = pool.imap(gated_square, items(), chunk_size=chunk_size)
        first = next(results)
        reads_at_first = reads
        gate.set()
        rest = list(results)
    assert first == 0
    assert reads_at_first < total
    assert [first, *rest] == [x * x for x in range(total)]
    assert reads == total


# --- argument passing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        pytest.param((1, 2), ((1, 2), {}), id="tuple-unpacked-as-args"),
        pytest.param(((1, 2),), (((1, 2),), {}), id="tuple-in-tuple-passed-as-one-tuple"),
        pytest.param({"a": 1, "b": 2}, ((), {"a": 1, "b": 2}), id="dict-unpacked-as-kwargs"),
        pytest.param("abc", (("abc",), {}), id="str-passed-whole"),
        pytest.param(b"xyz", ((b"xyz",), {}), id="bytes-passed-whole"),
        pytest.param([1, 2, 3], ((1, 2, 3), {}), id="list-unpacked-as-args-like-mpire"),
        pytest.param(7, ((7,), {}), id="scalar-passed-whole"),
    ],
)
def test_map_passes_each_item_to_the_function_as_mpire_does(fast_start_method: str, item: Any,
                                                             expected: Any) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        assert pool.map(describe_args, [item, item]) == [expected, expected]


def test_map_calls_a_two_argument_function_with_tuples_and_dicts(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        assert pool.map(add, [(1, 2), {"a": 3, "b": 4}, (5, 6)]) == [3, 7, 11]


# --- numpy -----------------------------------------------------------------------------------------------------


def test_an_input_waiting_for_a_task_of_an_earlier_item_sees_it_run(fast_start_method: str) -> None:
    """Chunks may wait in the parent to be written together, but never while a generator is read: this one stops
    after its tenth item until that item has run in a worker. The pool has measured the function first, so its
    chunks queue deep, and the tenth waits behind earlier ones on its worker."""
    gate = context(fast_start_method).Event()

    def items() -> Iterator[tuple[int, int]]:
        yield from ((x, 9) for x in range(10))
        if not gate.wait(10):
            raise AssertionError("item 9 was not sent to a worker before the input was read further")
        yield from ((x, 9) for x in range(10, 40))

    with WorkerPool(N_JOBS, start_method=fast_start_method, shared_objects=gate, keep_alive=True) as pool:
        assert pool.map(set_at, [(x, -1) for x in range(200)], chunk_size=1) == list(range(200))
        assert pool.map(set_at, items(), chunk_size=1) == list(range(40))


def test_numpy_input_is_passed_as_sub_arrays_along_axis_0(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        shapes = pool.map(chunk_shape, np.arange(10), chunk_size=3, concatenate_numpy_output=False)
    assert shapes == [("ndarray", (3,)), ("ndarray", (3,)), ("ndarray", (3,)), ("ndarray", (1,))]


def test_numpy_2d_input_is_chunked_by_rows(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        shapes = pool.map(chunk_shape, np.zeros((8, 3)), chunk_size=3, concatenate_numpy_output=False)
    assert shapes == [("ndarray", (3, 3)), ("ndarray", (3, 3)), ("ndarray", (2, 3))]


def test_numpy_map_concatenates_chunk_results_into_one_array(fast_start_method: str) -> None:
    data = np.arange(100)
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        result = pool.map(np_square, data)
    assert isinstance(result, np.ndarray)
    np.testing.assert_array_equal(result, data * data)


def test_numpy_map_without_concatenation_returns_one_array_per_chunk(fast_start_method: str) -> None:
    data = np.arange(100)
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        result = pool.map(np_square, data, chunk_size=30, concatenate_numpy_output=False)
    assert isinstance(result, list)
    assert [len(part) for part in result] == [30, 30, 30, 10]
    assert all(isinstance(part, np.ndarray) for part in result)
    np.testing.assert_array_equal(np.concatenate(result), data * data)


def test_numpy_2d_map_concatenates_2d_chunk_results(fast_start_method: str) -> None:
    data = np.arange(24.0).reshape(8, 3)
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        result = pool.map(np_double, data, chunk_size=3)
    assert result.shape == (8, 3)
    np.testing.assert_array_equal(result, data * 2)


def test_numpy_n_splits_sets_the_number_of_chunks(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        shapes = pool.map(chunk_shape, np.arange(10), n_splits=2, concatenate_numpy_output=False)
    assert shapes == [("ndarray", (5,)), ("ndarray", (5,))]


def test_numpy_n_splits_gives_that_many_chunks_when_the_length_does_not_divide(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        shapes = pool.map(chunk_shape, np.arange(10), n_splits=6, concatenate_numpy_output=False)
    sizes = [shape[0] for _, shape in shapes]
    assert len(sizes) == 6
    assert sum(sizes) == 10
    assert max(sizes) - min(sizes) <= 1


def test_numpy_iterable_len_smaller_than_the_array_processes_only_that_many_rows(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        shapes = pool.map(chunk_shape, np.arange(10), iterable_len=4, chunk_size=3, concatenate_numpy_output=False)
        result = pool.map(np_square, np.arange(10), iterable_len=4, chunk_size=3)
    assert shapes == [("ndarray", (3,)), ("ndarray", (1,))]
    np.testing.assert_array_equal(result, np.arange(4) ** 2)


# --- generators, iterable_len, empty input --------------------------------------------------------------------


@pytest.mark.parametrize("iterable_len", [None, 50], ids=["without-iterable_len", "with-exact-iterable_len"])
def test_map_over_a_generator_returns_every_result(fast_start_method: str, iterable_len: int | None) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        assert pool.map(square, (x for x in range(50)), iterable_len=iterable_len) == [x * x for x in range(50)]


def test_iterable_len_larger_than_the_input_returns_every_result(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        assert pool.map(square, (x for x in range(5)), iterable_len=10) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("make_input", [lambda: list(range(10)), lambda: (x for x in range(10))],
                         ids=["list", "generator"])
def test_iterable_len_smaller_than_the_input_processes_only_that_many_items(
        fast_start_method: str, make_input: Callable[[], Any]) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        assert pool.map(square, make_input(), iterable_len=4) == [0, 1, 4, 9]


@pytest.mark.parametrize("method", ["map", "map_unordered", "imap", "imap_unordered"])
@pytest.mark.parametrize("make_input", [list, lambda: iter(())], ids=["empty-list", "empty-generator"])
def test_empty_input_returns_no_results(fast_start_method: str, method: str, make_input: Callable[[], Any]) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        assert list(getattr(pool, method)(square, make_input())) == []


def test_input_generator_raising_midway_raises_its_exception_in_the_caller(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool, \
            pytest.raises(InputBrokeError, match="the input failed midway"):
        pool.map(square, broken_input(5), chunk_size=1)


def test_pool_works_again_after_the_input_generator_raised(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        with pytest.raises(InputBrokeError):
            pool.map(square, broken_input(5), chunk_size=1)
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


# --- chunk_size, n_splits and their validation ------------------------------------------------------------------


def test_chunk_size_sets_how_many_consecutive_items_go_to_one_worker(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, pass_worker_id=True, order_tasks=True) as pool:
        worker_ids = pool.map(worker_id_of, range(12), chunk_size=3)
    assert worker_ids == [(x // 3) % N_JOBS for x in range(12)]


def test_n_splits_cuts_the_input_into_that_many_chunks(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, pass_worker_id=True, order_tasks=True) as pool:
        worker_ids = pool.map(worker_id_of, range(12), n_splits=3)
    assert worker_ids == [(x // 4) % N_JOBS for x in range(12)]


def test_n_splits_gives_that_many_chunks_when_the_length_does_not_divide(fast_start_method: str) -> None:
    with WorkerPool(3, start_method=fast_start_method, pass_worker_id=True, order_tasks=True) as pool:
        worker_ids = pool.map(worker_id_of, range(10), n_splits=6)
    # With order_tasks consecutive chunks go to different workers, so each run of equal ids is one chunk.
    n_chunks = 1 + sum(a != b for a, b in itertools.pairwise(worker_ids))
    assert n_chunks == 6


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("chunk_size", 0),
        ("chunk_size", -1),
        ("chunk_size", "2"),
        ("n_splits", 0),
        ("n_splits", -3),
        ("n_splits", 2.5),
        ("iterable_len", -1),
        ("iterable_len", 1.5),
        ("iterable_len", "3"),
        ("max_tasks_active", 0),
        ("max_tasks_active", -2),
        ("max_tasks_active", 1.5),
    ],
)
@pytest.mark.parametrize("method", ["map", "imap"])
def test_invalid_map_option_raises_config_error_naming_it(name: str, value: Any, method: str) -> None:
    with WorkerPool(N_JOBS, start_method="threading") as pool:
        with pytest.raises(ConfigError, match=name) as info:
            list(getattr(pool, method)(square, range(10), **{name: value}))
        assert isinstance(info.value, ValueError)
        assert pool.map(square, range(3)) == [0, 1, 4]




# --- max_tasks_active -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tasks_active", [1, 3])
def test_max_tasks_active_bounds_how_far_the_input_is_read_ahead(fast_start_method: str,
                                                                 max_tasks_active: int) -> None:
    total = 20
    gate = context(fast_start_method).Event()
    reads = 0
    early_reads: list[int] = []  # items read beyond the bound while every task was still blocked

    def items() -> Iterator[int]:
        nonlocal reads
        for x in range(total):
            if x >= max_tasks_active and not gate.is_set():
                early_reads.append(x)
            reads += 1
            yield x

    with WorkerPool(N_JOBS, start_method=fast_start_method, shared_objects=gate) as pool:
        thread, box = run_in_thread(lambda: pool.map(wait_then_return, items(), chunk_size=1,
                                                     max_tasks_active=max_tasks_active))
        try:
            wait_until(lambda: reads >= max_tasks_active, "the first tasks to be read")
        finally:
            gate.set()
            results = join(thread, box)
    assert early_reads == []
    assert results == list(range(total))


# --- large payloads ---------------------------------------------------------------------------------------------


def test_results_larger_than_a_pipe_buffer_arrive_intact(start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=start_method) as pool:
        results = pool.map(random_bytes, [(seed, BIG) for seed in range(3)], chunk_size=1)
    assert [sha256_hex(r) for r in results] == [sha256_hex(random_bytes(seed, BIG)) for seed in range(3)]


def test_arguments_larger_than_a_pipe_buffer_arrive_intact(start_method: str) -> None:
    payloads = [random_bytes(seed, BIG) for seed in range(3)]
    with WorkerPool(N_JOBS, start_method=start_method) as pool:
        assert pool.map(sha256_hex, payloads, chunk_size=1) == [sha256_hex(p) for p in payloads]


def test_many_large_results_in_one_chunk_arrive_intact(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        results = pool.map(big_bytes, [BIG] * 4, chunk_size=4)
    assert [len(r) for r in results] == [BIG] * 4
    assert all(r == r[:16] * (BIG // 16) for r in results)


# --- order_tasks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_jobs", [2, 3])
def test_order_tasks_sends_chunk_i_to_worker_i_mod_n_jobs(fast_start_method: str, n_jobs: int) -> None:
    with WorkerPool(n_jobs, start_method=fast_start_method, pass_worker_id=True, order_tasks=True) as pool:
        assert pool.map(worker_id_of, range(10), chunk_size=1) == [x % n_jobs for x in range(10)]


# --- apply and apply_async --------------------------------------------------------------------------------------


def test_apply_returns_the_value(start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=start_method) as pool:
        assert pool.apply(add, (2, 3)) == 5
        assert pool.apply(add, kwargs={"a": 4, "b": 5}) == 9
        assert pool.apply(square, 6) == 36  # a single argument need not be wrapped in a tuple


def test_apply_raises_the_task_exception_with_its_type(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool, pytest.raises(ValueError, match="bad item 3"):
        pool.apply(fail_on, (3,))


def test_apply_async_calls_the_callback_with_the_value(fast_start_method: str) -> None:
    values: list[Any] = []
    errors: list[BaseException] = []
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        result = pool.apply_async(square, (7,), callback=values.append, error_callback=errors.append)
        assert result.get(timeout=WAIT_S) == 49
        wait_until(lambda: bool(values), "the callback")
        assert result.successful()
    assert values == [49]
    assert errors == []


def test_apply_async_runs_without_anyone_calling_get(fast_start_method: str) -> None:
    done = threading.Event()
    values: list[Any] = []

    def callback(value: Any) -> None:
        values.append(value)
        done.set()

    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        result = pool.apply_async(square, (8,), callback=callback)
        assert done.wait(WAIT_S), "the callback was never called: nobody ran the task"
        wait_until(result.ready, "the result to be ready")
    assert values == [64]


def test_apply_async_calls_the_error_callback_with_the_exception(fast_start_method: str) -> None:
    values: list[Any] = []
    errors: list[BaseException] = []
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        result = pool.apply_async(fail_on, (3,), callback=values.append, error_callback=errors.append)
        with pytest.raises(ValueError, match="bad item 3"):
            result.get(timeout=WAIT_S)
        assert result.ready()
        assert not result.successful()
        wait_until(lambda: bool(errors), "the error callback")
    assert values == []
    assert len(errors) == 1
    assert isinstance(errors[0], ValueError)
    assert "bad item 3" in str(errors[0])


def test_async_result_reports_pending_until_the_task_finishes(fast_start_method: str) -> None:
    event = context(fast_start_method).Event()
    with WorkerPool(N_JOBS, start_method=fast_start_method, shared_objects=event) as pool:
        result = pool.apply_async(wait_then_return, ("done",))
        assert not result.ready()
        with pytest.raises(ValueError):
            result.successful()
        with pytest.raises(multiprocessing.TimeoutError):
            result.get(timeout=0.05)
        result.wait(0.01)  # returns on its timeout
        assert not result.ready()
        event.set()
        assert result.get(timeout=WAIT_S) == "done"
        assert result.ready()
        assert result.successful()


def test_async_result_wait_returns_once_the_task_finished(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        result = pool.apply_async(square, (5,))
        result.wait(WAIT_S)
        assert result.ready()
        assert result.get(timeout=0.01) == 25


def test_several_apply_async_run_concurrently(fast_start_method: str) -> None:
    barrier = context(fast_start_method).Barrier(N_JOBS)
    with WorkerPool(N_JOBS, start_method=fast_start_method, shared_objects=barrier) as pool:
        results = [pool.apply_async(meet_at_barrier, (x,)) for x in range(N_JOBS)]
        assert [r.get(timeout=WAIT_S) for r in results] == list(range(N_JOBS))


def test_many_outstanding_apply_async_each_get_their_own_value(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        results = [pool.apply_async(square, (x,)) for x in range(20)]
        assert [r.get(timeout=WAIT_S) for r in reversed(results)] == [x * x for x in reversed(range(20))]


@pytest.mark.parametrize("pending", [1, 4])
def test_leaving_the_with_block_with_pending_apply_async_ends_the_pool_and_fails_those_tasks(pending: int) -> None:
    # MPIRE's get() then waits for ever. (No multiprocessing Event here: setting one after its waiter was killed
    # blocks in Condition.notify for ever, a multiprocessing limitation.)
    with WorkerPool(N_JOBS, start_method="fork") as pool:
        results = [pool.apply_async(sleep_for, (WAIT_S,)) for _ in range(pending)]
    for result in results:
        with pytest.raises(PoolClosedError, match="Pool was terminated"):
            result.get(timeout=WAIT_S)


def test_stop_and_join_waits_for_outstanding_apply_async(fast_start_method: str) -> None:
    event = context(fast_start_method).Event()
    values: list[Any] = []
    with WorkerPool(N_JOBS, start_method=fast_start_method, shared_objects=event) as pool:
        results = [pool.apply_async(wait_then_return, (x,), callback=values.append) for x in range(4)]
        thread, box = run_in_thread(pool.stop_and_join)
        assert not any(r.ready() for r in results)
        event.set()
        join(thread, box)
        assert all(r.ready() for r in results)
        assert sorted(values) == [0, 1, 2, 3]
        assert [r.get(timeout=0.01) for r in results] == [0, 1, 2, 3]


# --- keep_alive and worker restarts -------------------------------------------------------------------------------


def test_keep_alive_reuses_the_same_workers_for_the_next_map(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, keep_alive=True, order_tasks=True) as pool:
        first = tokens_per_worker(pool)
        second = tokens_per_worker(pool)
    assert len(set(first)) == N_JOBS
    assert second == first


def test_keep_alive_reuses_the_workers_when_only_the_function_changes(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, keep_alive=True, order_tasks=True) as pool:
        first = tokens_per_worker(pool, worker_token)
        second = tokens_per_worker(pool, worker_token_too)
    assert second == first


def _change_shared_objects(pool: WorkerPool) -> None:
    pool.set_shared_objects({"some": "object"})


def _change_use_worker_state(pool: WorkerPool) -> None:
    pool.set_use_worker_state(True)


def _change_pass_worker_id(pool: WorkerPool) -> None:
    pool.pass_on_worker_id(True)


@pytest.mark.parametrize(
    "change", [_change_shared_objects, _change_use_worker_state, _change_pass_worker_id],
    ids=["set_shared_objects", "set_use_worker_state", "pass_on_worker_id"],
)
def test_keep_alive_restarts_the_workers_with_a_warning_when_a_setter_changed_what_tasks_receive(
        fast_start_method: str, change: Callable[[WorkerPool], None], caplog: pytest.LogCaptureFixture) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, keep_alive=True, order_tasks=True) as pool:
        first = tokens_per_worker(pool)
        change(pool)
        second = tokens_per_worker(pool)
    assert len(set(second)) == N_JOBS
    assert set(first).isdisjoint(second)
    assert "starting new workers" in caplog.text  # MPIRE logs a warning here too


def _same_shared_objects(pool: WorkerPool) -> None:
    pool.set_shared_objects({"some": "object"})  # a new dict, equal to the one the pool has


def _same_flags(pool: WorkerPool) -> None:
    pool.set_use_worker_state(False)
    pool.pass_on_worker_id(False)


@pytest.mark.parametrize("change", [_same_shared_objects, _same_flags], ids=["equal shared objects", "same flags"])
def test_keep_alive_keeps_the_workers_when_a_setter_repeats_the_current_value(
        fast_start_method: str, change: Callable[[WorkerPool], None]) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, keep_alive=True, order_tasks=True,
                    shared_objects={"some": "object"}) as pool:
        first = tokens_per_worker(pool)
        change(pool)
        second = tokens_per_worker(pool)
    assert second == first


def test_without_keep_alive_each_map_starts_fresh_workers(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, keep_alive=False, order_tasks=True) as pool:
        first = tokens_per_worker(pool)
        second = tokens_per_worker(pool)
    assert set(first).isdisjoint(second)


def test_worker_pids_are_child_processes_except_under_threading(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, order_tasks=True) as pool:
        pids = {int(token.split("-")[0]) for token in tokens_per_worker(pool)}
    if fast_start_method == "threading":
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids
        assert len(pids) == N_JOBS


# --- a map while an imap is running ---------------------------------------------------------------------------


@pytest.mark.parametrize("lazy_method", ["imap", "imap_unordered"])
def test_map_during_a_half_consumed_imap_raises_pool_busy_and_the_imap_still_completes(
        fast_start_method: str, lazy_method: str) -> None:
    gate = context(fast_start_method).Event()
    with WorkerPool(N_JOBS, start_method=fast_start_method, shared_objects=gate) as pool:
        # Items 3.. wait for the gate, so the imap is certainly still running when map is called.
        results = getattr(pool, lazy_method)(gated_square, [(x, 3) for x in range(20)], chunk_size=1)
        head = [next(results) for _ in range(3)]
        try:
            with pytest.raises(PoolBusyError):
                pool.map(gated_square, [(0, 1)])
        finally:
            gate.set()
        rest = list(results)
        assert Counter(head) == Counter([0, 1, 4])
        assert Counter(head + rest) == Counter(x * x for x in range(20))
        if lazy_method == "imap":
            assert head + rest == [x * x for x in range(20)]
        assert pool.map(gated_square, [(x, 5) for x in range(5)]) == [0, 1, 4, 9, 16]


def test_map_during_a_half_consumed_imap_raises_pool_busy_even_when_its_tasks_are_done(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        results = pool.imap(square, range(5), chunk_size=5)  # one chunk: every result arrives with the first
        assert next(results) == 0
        with pytest.raises(PoolBusyError):
            pool.map(square, range(3))
        assert list(results) == [1, 4, 9, 16]


def test_pool_busy_error_is_a_runtime_error() -> None:
    assert issubclass(PoolBusyError, RuntimeError)


def test_map_works_after_a_half_consumed_imap_is_closed(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method) as pool:
        results = pool.imap(square, range(100), chunk_size=1)
        assert next(results) == 0
        results.close()
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_map_works_after_a_half_consumed_imap_is_closed_with_keep_alive(fast_start_method: str) -> None:
    with WorkerPool(N_JOBS, start_method=fast_start_method, keep_alive=True) as pool:
        results = pool.imap(square, range(100), chunk_size=1)
        assert next(results) == 0
        results.close()
        assert pool.map(square, range(50)) == [x * x for x in range(50)]


# --- threads, cpu_count, shared objects -----------------------------------------------------------------------------


def test_pool_works_from_a_non_main_thread(start_method: str) -> None:
    def run() -> list[int]:
        with WorkerPool(N_JOBS, start_method=start_method) as pool:
            return list(pool.map(square, range(50)))

    thread, box = run_in_thread(run)
    assert join(thread, box) == [x * x for x in range(50)]


def test_cpu_count_is_a_positive_int() -> None:
    count = parallelize.cpu_count()
    assert isinstance(count, int)
    assert count >= 1


def test_default_n_jobs_is_cpu_count() -> None:
    n_cpus = parallelize.cpu_count()
    with WorkerPool(start_method="threading", pass_worker_id=True, order_tasks=True) as pool:
        worker_ids = pool.map(worker_id_of, range(2 * n_cpus), chunk_size=1)
    assert sorted(set(worker_ids)) == list(range(n_cpus))


def test_shared_event_as_shared_object_reaches_workers(request: pytest.FixtureRequest, start_method: str) -> None:
    event = context(start_method).Event()
    event.set()
    with WorkerPool(N_JOBS, start_method=start_method, shared_objects=event) as pool:
        assert pool.map(is_set, range(4)) == [True] * 4
