"""What a user sees when something is wrong: warnings point at the user's line, task errors say which item
failed, tracebacks end with the user's call, a missing ``__main__`` guard gives one clear message."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import decorated_helpers as dh
import helpers
import parallelize
from parallelize import WorkerPool, _env

pytestmark = pytest.mark.usefixtures("no_parallelize_env")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _close_decorated_helpers() -> Iterator[None]:
    yield
    for func in (dh.add, dh.cube, dh.pid_of):
        func.close()


# --- warnings point at the user's line -------------------------------------------------------------------------------


def _decorator_call(func: Any) -> None:
    func(range(4))


def _imap(func: Any) -> None:
    list(func.imap(range(4)))


def _submit(func: Any) -> None:
    func.submit(1).result(timeout=60)


CALL_PATHS = [_decorator_call, _imap, _submit]


def _caught(category: type[Warning], action: Callable[[], None]) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [w for w in caught if issubclass(w.category, category)]


@pytest.mark.parametrize("call", CALL_PATHS, ids=lambda c: c.__name__)
def test_unknown_environment_variable_warning_points_at_the_users_call(
        monkeypatch: pytest.MonkeyPatch, closing: Callable[[Any], Any], call: Callable[[Any], None]) -> None:
    monkeypatch.setattr(_env, "_warned", set())
    monkeypatch.setenv("PARALLELIZE_CHUNK_SIZ", "3")
    func = closing(dh.pid_of.options(n_jobs=1))
    caught = _caught(UserWarning, lambda: call(func))
    assert [w.filename for w in caught] == [__file__], [str(w.message) for w in caught]
    assert "PARALLELIZE_CHUNK_SIZE" in str(caught[0].message)


@pytest.fixture
def user_thread() -> Iterator[None]:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, args=(30,), name="user-thread")
    thread.start()
    yield
    release.set()
    thread.join(30)


@pytest.mark.usefixtures("user_thread")
@pytest.mark.parametrize("call", CALL_PATHS, ids=lambda c: c.__name__)
def test_fork_after_threads_warning_points_at_the_users_call(
        closing: Callable[[Any], Any], call: Callable[[Any], None]) -> None:
    func = closing(dh.pid_of.options(n_jobs=1))  # a new pool: its first call starts (forks) a worker
    caught = _caught(parallelize.ForkAfterThreadsWarning, lambda: call(func))
    assert [w.filename for w in caught] == [__file__], [(w.filename, w.lineno) for w in caught]
    assert "user-thread" in str(caught[0].message)


@pytest.mark.usefixtures("user_thread")
def test_fork_after_threads_warning_points_at_the_users_workerpool_map() -> None:
    def map_on_a_pool() -> None:
        with WorkerPool(n_jobs=1, start_method="fork") as pool:
            pool.map(helpers.square, range(4))

    caught = _caught(parallelize.ForkAfterThreadsWarning, map_on_a_pool)
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, map_on_a_pool.__code__.co_firstlineno + 2)]


def test_fork_after_threads_warning_from_the_driver_thread_points_at_the_users_submit(
        closing: Callable[[Any], Any], user_thread: None) -> None:
    func = closing(dh.pid_of.options(n_jobs=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        future = func.submit(1)  # the background driver thread starts the worker
        future.result(timeout=60)
    found = [(w.filename, w.lineno) for w in caught if issubclass(w.category, parallelize.ForkAfterThreadsWarning)]
    assert found == [(__file__, line)]


# --- command lines ---------------------------------------------------------------------------------------------------


def test_demo_help_prints_usage_and_exits_without_running_the_demo() -> None:
    done = subprocess.run([sys.executable, "-m", "parallelize.demo", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m parallelize.demo")
    assert "serial loop" not in done.stdout


# --- task errors: which item, and a readable traceback -------------------------------------------------------------

needs_notes = pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are new in Python 3.11")


def library_frames(exc: BaseException) -> list[str]:
    """The package's frames in *exc*'s traceback, as 'file:function'."""
    return [f"{Path(f.filename).name}:{f.name}" for f in traceback.extract_tb(exc.__traceback__)
            if f.filename.startswith(str(Path(parallelize.__file__).parent))]


RAISERS = ("_calls.py:run", "_decorator.py:aimap")  # where a job's error is raised in the caller


def hidden_frames_left(exc: BaseException) -> list[str]:
    """The library frames a tidied traceback should not show: all but the line that re-raises a job error, and
    on Python 3.10 the public entry point's own frame (3.10 re-raises the traceback with the current frame)."""
    left = [frame for frame in library_frames(exc) if frame not in RAISERS]
    return left[1:] if sys.version_info < (3, 11) else left


def test_task_error_of_a_decorated_function_says_which_item_failed() -> None:
    with pytest.raises(TypeError) as raised:
        dh.add([(1, 2), (3, 4), ("a", 5)], chunk_size=2)
    if sys.version_info >= (3, 11):
        assert raised.value.__notes__ == ["(raised by the task at input index 2, called with ('a', 5))"]
    assert str(raised.value) == 'can only concatenate str (not "int") to str'  # the task's own message


@needs_notes
def test_task_error_of_a_workerpool_says_which_item_failed() -> None:
    with WorkerPool(n_jobs=2, start_method="fork") as pool, pytest.raises(ValueError, match="bad item 3") as raised:
        pool.map(helpers.fail_on, range(6))
    assert raised.value.__notes__ == ["(raised by the task at input index 3, called with 3)"]


@needs_notes
def test_task_error_note_caps_the_arguments() -> None:
    with pytest.raises(TypeError) as raised:
        dh.add([(1, 2), ("x" * 10_000, 1)])
    (note,) = raised.value.__notes__
    assert note.startswith("(raised by the task at input index 1, called with ('xxx")
    assert len(note) < 300


@needs_notes
def test_task_error_in_serial_mode_says_which_item_failed() -> None:
    with pytest.raises(TypeError) as raised:
        dh.add([(1, 2), ("a", 5)], backend="serial")
    assert raised.value.__notes__ == ["(raised by the task at input index 1, called with ('a', 5))"]


@needs_notes
def test_returned_task_error_says_which_item_failed() -> None:
    results = dh.add([(1, 2), ("a", 5)], on_error="return")
    assert results[1].__notes__ == ["(raised by the task at input index 1, called with ('a', 5))"]


def test_submit_error_has_no_note() -> None:
    with pytest.raises(TypeError) as raised:
        dh.add.submit("a", 5).result(timeout=60)
    assert not getattr(raised.value, "__notes__", None)


def _decorated_imap() -> None:
    list(dh.add.imap([(1, 2), ("a", 5)]))


def _workerpool_map() -> None:
    with WorkerPool(n_jobs=2, start_method="fork") as pool:
        pool.map(helpers.add, [(1, 2), ("a", 5)])


def _workerpool_imap() -> None:
    with WorkerPool(n_jobs=2, start_method="fork") as pool:
        list(pool.imap(helpers.add, [(1, 2), ("a", 5)]))


@pytest.mark.parametrize("call", [lambda: dh.add([(1, 2), ("a", 5)]), lambda: dh.add.map_unordered([("a", 5)]),
                                  lambda: asyncio.run(dh.add.amap([("a", 5)])), _decorated_imap, _workerpool_map,
                                  _workerpool_imap],
                         ids=["call", "map_unordered", "amap", "imap", "WorkerPool.map", "WorkerPool.imap"])
def test_task_error_traceback_ends_with_the_users_call_and_the_worker_traceback(call: Callable[[], Any]) -> None:
    with pytest.raises(TypeError) as raised:
        call()
    assert len([f for f in library_frames(raised.value) if f in RAISERS]) == 1  # the line that re-raises it
    assert hidden_frames_left(raised.value) == []
    worker_traceback = str(raised.value.__cause__)
    assert "helpers.py" in worker_traceback
    assert "_worker.py" not in worker_traceback


def test_task_error_in_serial_mode_has_no_library_frames() -> None:
    with pytest.raises(TypeError) as raised:
        dh.add([(1, 2), ("a", 5)], backend="serial")
    assert not set(library_frames(raised.value)) & set(RAISERS)
    assert hidden_frames_left(raised.value) == []
    assert traceback.extract_tb(raised.value.__traceback__)[-1].name == "add"


def test_error_of_the_input_iterable_keeps_its_own_frames_only() -> None:
    def inputs() -> Iterator[int]:
        yield 1
        raise KeyError("from the input")

    with pytest.raises(KeyError, match="from the input") as raised:
        dh.cube(inputs())
    assert traceback.extract_tb(raised.value.__traceback__)[-1].name == "inputs"
    assert hidden_frames_left(raised.value) == []


def test_an_error_of_the_library_itself_keeps_every_frame() -> None:
    with pytest.raises(parallelize.ConfigError) as raised:
        dh.cube([1], chunk_size=0)
    assert "_validation.py:chunk_size" in library_frames(raised.value)


# --- a script without `if __name__ == "__main__":` under spawn / forkserver ------------------------------------------

UNGUARDED = {
    "decorator": """
        from parallelize import parallel

        @parallel(n_jobs=2, start_method={start_method!r})
        def square(x):
            return x * x

        print(square(range(4)))
    """,
    "WorkerPool": """
        from parallelize import WorkerPool

        def square(x):
            return x * x

        with WorkerPool(n_jobs=2, start_method={start_method!r}) as pool:
            print(pool.map(square, range(4)))
    """,
}


@pytest.mark.parametrize(("api", "start_method"), [("decorator", "spawn"), ("WorkerPool", "spawn"),
                                                   ("decorator", "forkserver")])
def test_script_without_main_guard_fails_with_one_short_message(tmp_path: Path, api: str, start_method: str) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(UNGUARDED[api].format(start_method=start_method)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode != 0
    assert "WorkerDiedError" in done.stderr and "under `if __name__ == '__main__':`" in done.stderr
    assert "bootstrapping phase" not in done.stderr  # no worker printed multiprocessing's traceback
    assert len(done.stderr.splitlines()) < 20, done.stderr
