"""The decorator API: @parallel, its call forms, methods, hooks, the cached pool and its lifecycle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import io
import logging
import multiprocessing
import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import decorated_helpers as dh
import parallelize
from decorated_helpers import Scaler, SubScaler
from helpers import child_keys
from parallelize import ParallelFunction, parallel

REPO_ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 10.0
FORK = multiprocessing.get_context("fork")


# --- fixtures and helpers -------------------------------------------------------------------------------------------


def _all_decorated() -> list[Any]:
    found = [obj for obj in vars(dh).values() if isinstance(obj, ParallelFunction)]
    return found + [getattr(Scaler, name) for name in [*dh.METHOD_NAMES, "scale_sum"]]


@pytest.fixture(autouse=True)
def _clean_environment_and_pools(no_parallelize_env: None) -> Iterator[None]:
    """No PARALLELIZE_* variable from the outside leaks in; every decorated helper is closed after the test."""
    yield
    for func in _all_decorated():
        func.close()


def is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until_gone(pids: list[int], deadline_s: float = DEADLINE_S) -> list[int]:
    """The pids still running after waiting up to *deadline_s* for all of them to end."""
    deadline = time.monotonic() + deadline_s
    while (alive := [pid for pid in pids if is_running(pid)]) and time.monotonic() < deadline:
        multiprocessing.active_children()  # reap what we can
        time.sleep(0.02)
    return alive


def run_in_fork(body: Callable[[], str]) -> str:
    """Run *body* in a forked child; return what it returned (or its exception's repr). The child ends with _exit."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() with threads alive (pytest's faulthandler watchdog is one).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        try:
            message = body()
        except BaseException as exc:
            message = f"child raised {exc!r}"
        try:
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], deadline - time.monotonic())
            if not ready:
                break
            data = os.read(read_end, 65536)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(read_end)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return b"".join(chunks).decode()


# --- decorating and calling -----------------------------------------------------------------------------------------


def test_bare_decorator_makes_a_parallel_function() -> None:
    assert isinstance(dh.square, ParallelFunction)
    assert dh.square(range(10)) == [x * x for x in range(10)]


def test_decorator_with_arguments_keeps_its_options() -> None:
    assert isinstance(dh.cube, ParallelFunction)
    assert dh.cube.decorator_options == {"n_jobs": 2, "start_method": "fork"}
    assert dh.cube([1, 2, 3]) == [1, 8, 27]


def test_decorating_starts_no_process() -> None:
    before = child_keys()
    func = parallel(n_jobs=2)(dh.cube.__wrapped__)
    assert func.worker_pids() == []
    assert child_keys() == before


def test_call_returns_a_list_in_input_order_when_later_items_finish_first() -> None:
    event = FORK.Event()
    result = dh.wait_for_later([0, 1], shared_objects=event)
    assert type(result) is list
    assert result == [0, 1]


def test_call_accepts_a_generator() -> None:
    assert dh.cube(x for x in range(5)) == [0, 1, 8, 27, 64]


def test_tuple_items_unpack_as_arguments_and_dict_items_as_keywords() -> None:
    assert dh.add([(1, 2), {"a": 3, "b": 4}, (5,)]) == [3, 7, 5]


def test_several_iterables_are_zipped_like_builtin_map_shortest_first() -> None:
    xs, ys = [1, 2, 3, 4], [10, 20, 30]
    assert dh.add(xs, ys) == list(map(dh.add.serial, xs, ys)) == [11, 22, 33]
    assert dh.add(iter(xs), (y for y in ys), chunk_size=2) == [11, 22, 33]
    assert list(dh.add.imap(xs, ys)) == [11, 22, 33]
    assert sorted(dh.add.imap_unordered(xs, ys)) == [11, 22, 33]
    assert sorted(dh.add.map_unordered(xs, ys, chunk_size=1)) == [11, 22, 33]
    assert asyncio.run(dh.add.amap(xs, ys)) == [11, 22, 33]

    async def collect() -> list[int]:
        return [value async for value in dh.add.aimap(xs, ys)]

    assert asyncio.run(collect()) == [11, 22, 33]


def test_several_iterables_unpack_each_item_as_one_positional_argument() -> None:
    # Items of one input are not unpacked when several are given: map(f, xs, ys) calls f(x, y).
    assert dh.tagged([(1, 2), (3, 4)], [5, 6]) == [((1, 2), 25), ((3, 4), 36)]


def test_several_iterables_keep_the_length_when_every_input_has_one() -> None:
    # n_splits needs the number of tasks: known when each input has a len, unknown with a generator.
    assert dh.add([1, 2, 3, 4], [1, 1, 1], n_splits=2) == [2, 3, 4]
    with pytest.raises(parallelize.ConfigError, match="n_splits needs the number of tasks"):
        dh.add([1, 2, 3, 4], (y for y in [1, 1, 1]), n_splits=2)


def test_several_iterables_in_serial_mode() -> None:
    assert dh.add([1, 2], [3, 4, 5], backend="serial") == [4, 6]
    assert dh.add.worker_pids() == []


def test_several_iterables_through_a_method() -> None:
    assert Scaler(3).scale_sum([1, 2, 3], [10, 20]) == [33, 66]


def test_a_non_iterable_second_argument_raises_type_error_suggesting_repeat() -> None:
    before = child_keys()
    with pytest.raises(TypeError, match=r"argument 2 is a non-iterable int.*itertools\.repeat"):
        dh.add([1, 2], 3)  # type: ignore[arg-type]
    assert child_keys() == before


def test_imap_yields_results_lazily_in_input_order() -> None:
    event = FORK.Event()
    results = dh.wait_for_later.imap([0, 1], shared_objects=event)
    assert not isinstance(results, list)
    assert list(results) == [0, 1]


def test_imap_unordered_yields_a_result_while_an_earlier_item_still_runs() -> None:
    event = FORK.Event()
    results = dh.gated.imap_unordered([0, 1], shared_objects=event)
    first = next(results)  # item 0 cannot finish before the event is set
    event.set()
    assert [first, *results] == [1, 0]


def test_map_unordered_returns_a_list_of_every_result() -> None:
    result = dh.cube.map_unordered(range(20), chunk_size=1)
    assert type(result) is list
    assert sorted(result) == [x**3 for x in range(20)]


def test_call_keyword_overrides_the_decorator_for_that_call_only() -> None:
    assert len(set(dh.pid_of(range(8), n_jobs=1))) == 1
    assert len(dh.pid_of.worker_pids()) == 1
    dh.pid_of(range(8))
    assert len(dh.pid_of.worker_pids()) == 2
    assert dh.pid_of.decorator_options["n_jobs"] == 2


def test_submit_returns_a_concurrent_future_with_the_result() -> None:
    future = dh.add.submit(2, b=3)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=60) == 5


def test_submit_runs_in_a_worker() -> None:
    assert dh.pid_of.submit().result(timeout=60) in dh.pid_of.worker_pids()


def _tick_until_set(event: Any, ticks: list[int]) -> Callable[[], Any]:
    async def ticker() -> None:
        # Runs only if the event loop is free while the tasks block; the tasks are released from here.
        for _ in range(5):
            ticks.append(1)
            await asyncio.sleep(0)
        event.set()

    return ticker


def test_amap_does_not_block_the_event_loop() -> None:
    event = FORK.Event()
    ticks: list[int] = []

    async def main() -> list[int]:
        ticker = asyncio.create_task(_tick_until_set(event, ticks)())
        results = await dh.wait_on.amap([0, 1, 2, 3], shared_objects=event)
        await ticker
        return results

    assert asyncio.run(main()) == [0, 1, 2, 3]
    assert len(ticks) == 5


def test_aimap_does_not_block_the_event_loop() -> None:
    event = FORK.Event()
    ticks: list[int] = []

    async def main() -> list[int]:
        ticker = asyncio.create_task(_tick_until_set(event, ticks)())
        results = [value async for value in dh.wait_on.aimap([0, 1, 2, 3], shared_objects=event)]
        await ticker
        return results

    assert asyncio.run(main()) == [0, 1, 2, 3]
    assert len(ticks) == 5


def test_aimap_left_early_marks_its_progress_bar_stopped_as_imap_does(closing: Callable[[Any], Any]) -> None:
    # The async face used to close the bar as a success when the caller left early; the sync face said failed.
    # (A file that is not a terminal gets the log style: its last line says how the call ended.)
    func = closing(dh.cube.options(backend="thread", n_jobs=1, chunk_size=1, progress_bar=True))
    bars = {"imap": io.StringIO(), "aimap": io.StringIO()}
    lazy = func.imap(range(50), progress_bar_options={"file": bars["imap"]})
    next(lazy)
    lazy.close()

    async def first() -> None:
        results = func.aimap(range(50), progress_bar_options={"file": bars["aimap"]})
        async for _ in results:
            break
        await results.aclose()

    asyncio.run(first())
    assert [bar.getvalue().splitlines()[-1].endswith(", stopped") for bar in bars.values()] == [True, True]


def test_closing_after_an_aimap_left_early_from_an_ended_event_loop_does_not_hang() -> None:
    # The driver thread used to wake the aimap's event loop after asyncio.run() had closed it: the RuntimeError
    # failed the driver and left the job counted as pending, and close() waited for it for ever (about two runs
    # in five). In a subprocess, so that a hang ends with the timeout.
    code = textwrap.dedent("""
        import asyncio
        import decorated_helpers as dh

        async def first(func):
            results = func.aimap(range(50))
            async for _ in results:
                break
            await results.aclose()

        for _ in range(10):
            func = dh.cube.options(backend="thread", n_jobs=1, chunk_size=1)
            asyncio.run(first(func))
            func.close()
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              check=False, env=env)
    except subprocess.TimeoutExpired as hung:
        raise AssertionError(f"close() hung: {hung.stderr!r}") from None
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok", "")


def test_serial_calls_the_plain_function_in_this_process() -> None:
    before = child_keys()
    assert dh.pid_of.serial() == os.getpid()
    assert dh.add.serial(1, b=2) == 3
    assert dh.pid_of.worker_pids() == []
    assert child_keys() == before


def test_options_returns_a_reconfigured_copy_with_its_own_pool(closing: Callable[[Any], Any]) -> None:
    one = closing(dh.pid_of.options(n_jobs=1))
    assert isinstance(one, ParallelFunction)
    assert one.__name__ == "pid_of"
    assert one.decorator_options["n_jobs"] == 1
    assert dh.pid_of.decorator_options["n_jobs"] == 2
    one_pids = set(one(range(4)))
    both_pids = set(dh.pid_of(range(8)))
    assert len(one.worker_pids()) == 1
    assert len(dh.pid_of.worker_pids()) == 2
    assert one_pids <= set(one.worker_pids())
    assert not set(one.worker_pids()) & set(dh.pid_of.worker_pids())
    assert both_pids <= set(dh.pid_of.worker_pids())


def test_close_stops_the_workers() -> None:
    dh.pid_of(range(4))
    pids = dh.pid_of.worker_pids()
    assert len(pids) == 2
    dh.pid_of.close()
    assert dh.pid_of.worker_pids() == []
    assert wait_until_gone(pids) == []


def test_call_after_close_starts_new_workers() -> None:
    old = set(dh.pid_of(range(4)))
    dh.pid_of.close()
    new = set(dh.pid_of(range(4)))
    assert new <= set(dh.pid_of.worker_pids())
    assert not new & old


def test_non_iterable_argument_raises_type_error_suggesting_serial() -> None:
    before = child_keys()
    with pytest.raises(TypeError, match=r"cube\.serial\("):
        dh.cube(3)  # type: ignore[arg-type]
    assert child_keys() == before


def test_error_in_a_task_is_raised_in_the_caller_with_its_type() -> None:
    with pytest.raises(TypeError):
        dh.add([(1, 0), ("a", 1)])


def test_submit_future_carries_the_task_exception() -> None:
    future = dh.add.submit("a", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        future.result(timeout=60)


# --- names, signature, pickling -------------------------------------------------------------------------------------


METHODS = {"imap", "imap_unordered", "map_unordered", "submit", "amap", "aimap", "serial", "close", "exit_results",
           "decorator_options", "worker_pids"}


def test_dir_lists_the_methods_and_the_functions_own_attributes() -> None:
    names = dir(dh.cube)
    assert METHODS | {"options", "worker_init", "worker_exit"} <= set(names)
    assert {"__name__", "__doc__", "__code__"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", dh.METHOD_NAMES)
def test_dir_of_a_bound_method_lists_the_methods(name: str) -> None:
    names = set(dir(getattr(Scaler(1), name)))
    assert names >= METHODS
    assert "__self__" in names or name.startswith("static")


def test_repr_and_str_name_the_parallel_function() -> None:
    assert repr(dh.cube) == str(dh.cube) == "<parallel function decorated_helpers.cube>"


def test_repr_of_methods_names_what_they_are_bound_to() -> None:
    instance = Scaler(1)
    assert repr(instance.scale) == f"<bound parallel method Scaler.scale of {instance!r}>"
    assert repr(Scaler.scale) == "<parallel function decorated_helpers.Scaler.scale>"
    assert repr(instance.class_outer) == f"<bound parallel method Scaler.class_outer of {Scaler!r}>"
    assert repr(SubScaler.class_inner) == f"<bound parallel method Scaler.class_inner of {SubScaler!r}>"
    assert repr(instance.static_outer) == "<parallel staticmethod decorated_helpers.Scaler.static_outer>"



def test_function_keeps_its_name_qualname_doc_and_module() -> None:
    plain = dh.cube.__wrapped__
    assert (dh.cube.__name__, dh.cube.__qualname__, dh.cube.__doc__, dh.cube.__module__) == (
        "cube", "cube", "Return x cubed.", "decorated_helpers")
    assert (plain.__name__, plain.__doc__) == ("cube", "Return x cubed.")


def test_function_keeps_its_signature() -> None:
    assert str(inspect.signature(dh.add)) == "(a: 'int', b: 'int' = 0) -> 'int'"


def test_wrapped_is_the_plain_function() -> None:
    plain = dh.add.__wrapped__
    assert inspect.isfunction(plain)
    assert not isinstance(plain, ParallelFunction)
    assert plain(1, 2) == 3


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_decorated_function_pickles_by_reference(protocol: int) -> None:
    assert pickle.loads(pickle.dumps(dh.cube, protocol=protocol)) is dh.cube


def test_decorated_function_pickles_by_reference_in_another_process() -> None:
    payload = pickle.dumps(dh.cube)
    code = "import pickle, sys; f = pickle.loads(sys.stdin.buffer.read()); print(f.__module__, f.__qualname__)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    done = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, env=env, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["decorated_helpers", "cube"]


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_decorated_function_runs_under(start_method: str) -> None:
    results = dh.pid_of(range(4), start_method=start_method)
    assert os.getpid() not in results
    assert set(results) <= set(dh.pid_of.worker_pids())
    assert dh.cube(range(4), start_method=start_method, n_jobs=1) == [0, 1, 8, 27]


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_hooks_run_once_per_worker_under(start_method: str) -> None:
    results = dh.hooked(range(6), start_method=start_method)
    assert all(init_calls == 1 for _, init_calls, _ in results)
    exits = dh.hooked.close()
    assert sum(n for _, n in exits) == 6


def test_function_decorated_in_main_works_with_fork(tmp_path: Path) -> None:
    script = tmp_path / "main_script.py"
    script.write_text(textwrap.dedent("""
        import os
        from parallelize import parallel

        @parallel(n_jobs=2)
        def double(x):
            return 2 * x, os.getpid()

        if __name__ == "__main__":
            results = double(range(6))
            assert [value for value, _ in results] == [0, 2, 4, 6, 8, 10]
            assert os.getpid() not in {pid for _, pid in results}
            double.close()
            print("ok")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert done.stderr == ""


# --- methods, both decorator orders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", dh.METHOD_NAMES)
def test_method_runs_through_an_instance(name: str) -> None:
    scaler = Scaler(3)
    results = getattr(scaler, name)([1, 2, 3])
    assert [r[:2] for r in results] == [dh.expected_method_result(name, Scaler, 3, x) for x in (1, 2, 3)]
    assert os.getpid() not in {r[2] for r in results}


@pytest.mark.parametrize("name", ["class_outer", "class_inner", "static_outer", "static_inner"])
def test_class_and_static_method_runs_through_the_class(name: str) -> None:
    results = getattr(Scaler, name)([1, 2])
    assert [r[:2] for r in results] == [dh.expected_method_result(name, Scaler, 0, x) for x in (1, 2)]


@pytest.mark.parametrize("name", ["class_outer", "class_inner"])
def test_classmethod_binds_to_the_subclass_it_is_reached_through(name: str) -> None:
    assert [r[:2] for r in getattr(SubScaler, name)([1])] == [("SubScaler", 2)]
    assert [r[:2] for r in getattr(SubScaler(1), name)([1])] == [("SubScaler", 2)]


def test_instance_method_uses_its_own_instance() -> None:
    assert [r[1] for r in Scaler(2).scale([1, 2])] == [2, 4]
    assert [r[1] for r in Scaler(10).scale([1, 2])] == [10, 20]


@pytest.mark.parametrize("name", dh.METHOD_NAMES)
def test_method_serial_runs_in_this_process(name: str) -> None:
    result = getattr(Scaler(4), name).serial(5)
    assert result == (*dh.expected_method_result(name, Scaler, 4, 5), os.getpid())


@pytest.mark.parametrize("name", dh.METHOD_NAMES)
def test_method_submit_returns_a_future(name: str) -> None:
    result = getattr(Scaler(4), name).submit(5).result(timeout=60)
    assert result[:2] == dh.expected_method_result(name, Scaler, 4, 5)


@pytest.mark.parametrize("name", dh.METHOD_NAMES)
def test_method_keeps_its_name_qualname_doc_and_module(name: str) -> None:
    method = getattr(Scaler(1), name)
    plain = dh.Scaler.__dict__[name]
    plain = getattr(plain, "__func__", plain)
    assert method.__name__ == name
    assert method.__qualname__ == f"Scaler.{name}"
    assert method.__doc__ == plain.__doc__
    assert method.__doc__
    assert method.__module__ == "decorated_helpers"


@pytest.mark.parametrize("name", dh.METHOD_NAMES)
def test_method_signature_drops_the_bound_argument(name: str) -> None:
    assert str(inspect.signature(getattr(Scaler(1), name))) == "(x: 'int') -> 'tuple[str, int, int]'"


def test_instance_method_through_the_class_shows_self() -> None:
    assert list(inspect.signature(Scaler.scale).parameters) == ["self", "x"]


@pytest.mark.parametrize("name", dh.METHOD_NAMES)
def test_method_wrapped_is_the_plain_function(name: str) -> None:
    wrapped = getattr(Scaler(1), name).__wrapped__
    assert not isinstance(wrapped, ParallelFunction)
    assert wrapped(5)[:2] == dh.expected_method_result(name, Scaler, 1, 5)


@pytest.mark.parametrize("name", dh.METHOD_NAMES)
def test_decorated_object_in_the_class_pickles_by_reference(name: str) -> None:
    stored = Scaler.__dict__[name]
    decorated = stored if isinstance(stored, ParallelFunction) else stored.__func__
    assert isinstance(decorated, ParallelFunction)
    assert pickle.loads(pickle.dumps(decorated)) is decorated


@pytest.mark.parametrize("name", ["scale", "class_outer", "static_outer"])
def test_bound_decorated_method_pickles_like_a_plain_bound_method(name: str) -> None:
    restored = pickle.loads(pickle.dumps(getattr(Scaler(3), name)))
    assert restored.serial(1)[:2] == dh.expected_method_result(name, Scaler, 3, 1)


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
@pytest.mark.parametrize("name", dh.METHOD_NAMES)
def test_method_runs_under(name: str, start_method: str) -> None:
    results = getattr(Scaler(3), name)([1, 2], start_method=start_method, n_jobs=1)
    assert [r[:2] for r in results] == [dh.expected_method_result(name, Scaler, 3, x) for x in (1, 2)]
    assert os.getpid() not in {r[2] for r in results}


# --- hooks ----------------------------------------------------------------------------------------------------------


def test_hook_decorators_return_the_hook_unchanged(closing: Callable[[Any], Any]) -> None:
    func = closing(parallel(n_jobs=1)(dh.cube.__wrapped__))

    def init() -> None:
        pass

    def stop() -> None:
        pass

    assert func.worker_init(init) is init
    assert func.worker_exit(stop) is stop
    assert inspect.isfunction(dh.hooked_init)
    assert inspect.isfunction(dh.hooked_exit)


def test_worker_init_runs_once_per_worker_across_calls() -> None:
    first = dh.hooked(range(8))
    second = dh.hooked(range(8))
    assert {init_calls for _, init_calls, _ in first + second} == {1}
    assert {pid for pid, _, _ in first + second} <= set(dh.hooked.worker_pids())


def test_worker_state_persists_across_calls_of_the_cached_pool() -> None:
    dh.hooked(range(5))
    dh.hooked(range(7))
    assert sum(n for _, n in dh.hooked.close()) == 12


def test_close_returns_exit_hook_results_of_every_worker() -> None:
    dh.hooked(range(6))
    pids = dh.hooked.worker_pids()
    exits = dh.hooked.close()
    assert sorted(pid for pid, _ in exits) == sorted(pids)
    assert sum(n for _, n in exits) == 6
    assert dh.hooked.exit_results == exits


def test_exit_results_are_empty_without_an_exit_hook() -> None:
    dh.cube(range(4))
    assert dh.cube.close() == []
    assert dh.cube.exit_results == []


def test_rebuild_runs_exit_hooks_of_the_old_workers() -> None:
    dh.hooked(range(4))
    old = dh.hooked.worker_pids()
    dh.hooked(range(4), n_jobs=1)
    assert sorted(pid for pid, _ in dh.hooked.exit_results) == sorted(old)


def test_exit_results_of_a_replaced_pool_stopped_after_its_open_imap_are_kept() -> None:
    # Its stop used to run twice (when the imap ended and again for the retired pools), and the second, on a
    # stopped pool, replaced the exit results with [].
    lazy = dh.hooked.imap(range(4), keep_alive=False)  # pool A, in use until the imap ends
    next(lazy)
    old = dh.hooked.worker_pids()
    dh.hooked(range(4), n_jobs=1, keep_alive=False)  # a new pool B; A is retired while the imap reads from it
    assert len(list(lazy)) == 3
    assert sorted(pid for pid, _ in dh.hooked.exit_results) == sorted(old)


def test_keep_alive_false_runs_init_and_exit_per_call() -> None:
    first = dh.hooked(range(4), keep_alive=False)
    first_exits = dh.hooked.exit_results
    assert dh.hooked.worker_pids() == []
    second = dh.hooked(range(4), keep_alive=False)
    second_exits = dh.hooked.exit_results
    assert {init_calls for _, init_calls, _ in first + second} == {1}
    assert len(first_exits) == len(second_exits) == 2
    assert {pid for pid, _, _ in first} <= {pid for pid, _ in first_exits}
    assert {pid for pid, _, _ in second} <= {pid for pid, _ in second_exits}
    assert not {pid for pid, _ in first_exits} & {pid for pid, _ in second_exits}
    assert sum(n for _, n in first_exits) == sum(n for _, n in second_exits) == 4
    assert wait_until_gone([pid for pid, _ in first_exits + second_exits]) == []


def test_hooks_given_as_decorator_arguments_get_worker_id_and_state() -> None:
    results = dh.hooks_as_arguments(range(6))
    assert all(worker_id == init_id for worker_id, init_id in results)
    assert sorted(dh.hooks_as_arguments.close()) == [(0, 0), (1, 1)]


# --- the cached pool ------------------------------------------------------------------------------------------------


def test_second_call_reuses_the_pool() -> None:
    first = dh.pid_of(range(8))
    pids = dh.pid_of.worker_pids()
    children = child_keys()
    second = dh.pid_of(range(8))
    assert dh.pid_of.worker_pids() == pids
    assert child_keys() == children
    assert set(first) | set(second) <= set(pids)


def test_changing_n_jobs_by_call_keyword_rebuilds_the_pool() -> None:
    dh.pid_of(range(4))
    old = dh.pid_of.worker_pids()
    results = dh.pid_of(range(4), n_jobs=1)
    new = dh.pid_of.worker_pids()
    assert len(new) == 1
    assert set(results) == set(new)
    assert not set(new) & set(old)
    assert wait_until_gone(old) == []


def test_rebuild_is_logged_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    dh.pid_of(range(2))
    with caplog.at_level(logging.DEBUG, logger="parallelize"):
        dh.pid_of(range(2), n_jobs=1)
    assert any(record.levelno == logging.DEBUG and "pid_of" in record.getMessage() for record in caplog.records)


def test_reuse_is_not_logged_as_a_rebuild(caplog: pytest.LogCaptureFixture) -> None:
    dh.pid_of(range(2))
    with caplog.at_level(logging.DEBUG, logger="parallelize"):
        dh.pid_of(range(2))
    assert not [record for record in caplog.records if "pid_of" in record.getMessage()]


def test_forked_child_forgets_the_parent_pool_and_the_parent_keeps_it() -> None:
    dh.pid_of(range(4))
    parent_pids = dh.pid_of.worker_pids()

    def child() -> str:
        return repr(dh.pid_of.worker_pids())

    assert run_in_fork(child) == "[]"
    assert dh.pid_of.worker_pids() == parent_pids
    assert set(dh.pid_of(range(6))) <= set(parent_pids)


def test_forked_child_can_call_the_function_on_a_new_pool() -> None:
    dh.pid_of(range(4))
    parent_pids = dh.pid_of.worker_pids()

    def child() -> str:
        results = dh.pid_of(range(4))
        mine = dh.pid_of.worker_pids()
        dh.pid_of.close()
        checks = {
            "ran in its own workers": set(results) <= set(mine) and len(mine) == 2,
            "not the parent's workers": not set(mine) & set(parent_pids),
        }
        failed = [name for name, ok in checks.items() if not ok]
        return "ok" if not failed else f"failed: {failed}"

    assert run_in_fork(child) == "ok"


def test_parent_pool_keeps_working_after_a_forked_child_used_the_function() -> None:
    dh.pid_of(range(4))
    parent_pids = dh.pid_of.worker_pids()

    def child() -> str:
        try:
            dh.pid_of(range(4))
        finally:
            dh.pid_of.close()
        return "ok"

    run_in_fork(child)  # whatever the child's outcome, it must not disturb the parent's pool
    assert dh.pid_of.worker_pids() == parent_pids
    assert set(dh.pid_of(range(6))) <= set(parent_pids)


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_interpreter_exit_with_a_live_cached_pool_is_clean(start_method: str) -> None:
    code = textwrap.dedent(f"""
        import decorated_helpers as dh
        results = dh.pid_of(range(8), start_method={start_method!r})
        print(*dh.pid_of.worker_pids(), flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2
    assert wait_until_gone(pids) == []


def test_exit_hooks_run_at_interpreter_exit(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import os
        from parallelize import parallel

        @parallel(n_jobs=2, start_method="fork")
        def task(x):
            return x

        @task.worker_exit
        def write_pid():
            with open(os.path.join({str(tmp_path)!r}, str(os.getpid())), "w") as file:
                file.write("bye")

        task(range(4))
        print(*task.worker_pids(), flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert sorted(int(pid) for pid in done.stdout.split()) == sorted(int(p.name) for p in tmp_path.iterdir())


# --- nesting and threads --------------------------------------------------------------------------------------------


def test_calling_itself_inside_its_worker_runs_serially_there() -> None:
    results = dh.recursive([0, 1])
    workers = dh.recursive.worker_pids()
    for outer, *inner in results:
        assert outer in workers
        assert inner == [outer, outer]
    assert all(psutil.Process(pid).children() == [] for pid in workers)


def test_calling_another_decorated_function_inside_a_worker_runs_serially_there() -> None:
    for outer, inner in dh.nested_call([0, 1, 2]):
        assert inner == [outer, outer]
    assert dh.nested_inner.worker_pids() == []


@pytest.mark.filterwarnings("ignore::parallelize.ForkAfterThreadsWarning")  # expected here; see test_faults
def test_two_threads_calling_the_same_function_both_get_their_results() -> None:
    barrier = threading.Barrier(2)
    outcome: dict[int, Any] = {}

    def call(caller: int) -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(5):
                got = dh.tagged([(caller, x) for x in range(100)], chunk_size=1)
                assert got == [(caller, x * x) for x in range(100)]
            outcome[caller] = "ok"
        except BaseException as exc:
            outcome[caller] = exc

    threads = [threading.Thread(target=call, args=(caller,)) for caller in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcome == {0: "ok", 1: "ok"}


def test_rebuild_by_another_call_does_not_break_an_open_imap() -> None:
    # The single-threaded form of two threads calling with different n_jobs: deterministic, and it cannot hang.
    open_imap = iter(dh.tagged.imap([(0, x) for x in range(100)], chunk_size=1))
    try:
        first = next(open_imap)
        assert dh.tagged([(1, x) for x in range(5)], n_jobs=1) == [(1, x * x) for x in range(5)]
        assert [first, *open_imap] == [(0, x * x) for x in range(100)]
    finally:
        with contextlib.suppress(Exception):
            open_imap.close()  # type: ignore[attr-defined]


def test_public_names_are_exported() -> None:
    assert parallelize.parallel is parallel
    assert parallelize.ParallelFunction is ParallelFunction
