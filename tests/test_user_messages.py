"""What a user sees when something is wrong: warnings point at the user's line, task errors say which item
failed, tracebacks end with the user's call, a missing ``__main__`` guard gives one clear message."""

from __future__ import annotations

import subprocess
import sys
import threading
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


@pytest.fixture
def closing() -> Iterator[Callable[[Any], Any]]:
    made: list[Any] = []

    def register(func: Any) -> Any:
        made.append(func)
        return func

    yield register
    for func in made:
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
