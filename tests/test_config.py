"""Configuration: config() blocks, PARALLELIZE_* variables, precedence, show_config(), bad values, CPU counts."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import decorated_helpers as dh
import parallelize
from helpers import child_keys
from parallelize import ConfigError, ParallelFunction, TaskTimeoutError, config, parallel, show_config

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_environment_and_pools(no_parallelize_env: None) -> Iterator[None]:
    """No PARALLELIZE_* variable from the outside leaks in; every decorated helper is closed after the test."""
    yield
    for func in vars(dh).values():
        if isinstance(func, ParallelFunction):
            func.close()


def shown(func: Any = None) -> dict[str, tuple[str, str]]:
    """show_config()'s table as {option: (value repr, source)}."""
    table = {}
    for line in show_config(func).splitlines():
        match = re.fullmatch(r"(\w+)\s+(.*?)\s+\((.+)\)", line)
        assert match, line
        table[match[1]] = (match[2], match[3])
    return table


def n_workers(func: Any, **call_options: Any) -> int:
    """How many workers a call starts (n_jobs as it took effect)."""
    func(range(8), **call_options)
    return len(func.worker_pids())


def chunk_length(func: Any, **call_options: Any) -> int:
    """The chunk size a call used: items of the first chunk all run in the first worker, the second chunk in the
    second (with two workers the least busy worker takes the next chunk)."""
    pids = func(range(8), **call_options)
    return next((i for i, pid in enumerate(pids) if pid != pids[0]), len(pids))


# --- config() -------------------------------------------------------------------------------------------------------


def test_config_block_sets_n_jobs_for_calls_inside_it() -> None:
    with config(n_jobs=1):
        pids = dh.pid_of(range(8))
        assert len(dh.pid_of.worker_pids()) == 1
    assert len(set(pids)) == 1


def test_config_block_no_longer_applies_after_it_ends() -> None:
    with config(n_jobs=1):
        pass
    assert n_workers(dh.pid_of) == 2
    assert shown(dh.pid_of)["n_jobs"] == ("2", "decorator")


def test_nested_config_blocks_merge_and_restore() -> None:
    with config(n_jobs=1, chunk_size=4):
        with config(n_jobs=3):
            inner = shown()
        after_inner = shown()
    after_outer = shown()
    assert (inner["n_jobs"], inner["chunk_size"]) == (("3", "config()"), ("4", "config()"))
    assert (after_inner["n_jobs"], after_inner["chunk_size"]) == (("1", "config()"), ("4", "config()"))
    assert (after_outer["n_jobs"][1], after_outer["chunk_size"][1]) == ("default", "default")


def test_config_is_isolated_between_threads() -> None:
    barrier = threading.Barrier(2)
    seen: dict[int, Any] = {}

    def worker(n_jobs: int) -> None:
        try:
            with config(n_jobs=n_jobs):
                barrier.wait(timeout=30)  # both blocks are open now
                seen[n_jobs] = shown()["n_jobs"]
                barrier.wait(timeout=30)
        except BaseException as exc:
            seen[n_jobs] = exc

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert seen == {1: ("1", "config()"), 3: ("3", "config()")}


def test_config_block_in_one_thread_does_not_reach_a_thread_it_did_not_start_in() -> None:
    entered, checked = threading.Event(), threading.Event()
    seen: list[tuple[str, str]] = []

    def other() -> None:
        entered.wait(timeout=30)
        seen.append(shown()["n_jobs"])
        checked.set()

    thread = threading.Thread(target=other)
    thread.start()
    with config(n_jobs=1):
        entered.set()
        checked.wait(timeout=30)
    thread.join(timeout=30)
    assert seen == [(str(parallelize.cpu_count()), "default")]


def test_config_is_isolated_between_asyncio_tasks() -> None:
    async def task(n_jobs: int, mine: asyncio.Event, other: asyncio.Event) -> tuple[str, str]:
        with config(n_jobs=n_jobs):
            mine.set()
            await other.wait()  # the other task's block is open now too
            return shown()["n_jobs"]

    async def main() -> list[tuple[str, str]]:
        first, second = asyncio.Event(), asyncio.Event()
        return list(await asyncio.gather(task(1, first, second), task(3, second, first)))

    assert asyncio.run(main()) == [("1", "config()"), ("3", "config()")]


def test_config_rejects_a_bad_value_when_the_block_opens() -> None:
    with pytest.raises(ConfigError, match="n_jobs"), config(n_jobs=0):
        pytest.fail("the block must not run")


def test_config_rejects_an_unknown_option_suggesting_the_closest() -> None:
    with pytest.raises(TypeError, match="'n_jobs'"), config(n_job=2):
        pytest.fail("the block must not run")


# --- precedence -----------------------------------------------------------------------------------------------------


def test_call_keyword_beats_config_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_N_JOBS", "2")
    with config(n_jobs=2):
        assert n_workers(dh.pid_of, n_jobs=1) == 1


def test_config_block_beats_decorator_argument() -> None:
    with config(n_jobs=1):
        assert n_workers(dh.pid_of) == 1


def test_decorator_argument_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_N_JOBS", "1")
    assert n_workers(dh.pid_of) == 2


def test_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_N_JOBS", "1")
    assert n_workers(dh.pid_default) == 1


def test_default_n_jobs_is_cpu_count() -> None:
    assert n_workers(dh.pid_default) == parallelize.cpu_count()


def test_chunk_size_from_call_beats_config_block() -> None:
    with config(chunk_size=1):
        assert chunk_length(dh.pid_chunk4, chunk_size=3) == 3


def test_chunk_size_from_config_block_beats_decorator() -> None:
    with config(chunk_size=1):
        assert chunk_length(dh.pid_chunk4) == 1


def test_chunk_size_from_decorator_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_CHUNK_SIZE", "1")
    assert chunk_length(dh.pid_chunk4) == 4


def test_chunk_size_from_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_CHUNK_SIZE", "3")
    assert chunk_length(dh.pid_of) == 3


def worker_parents(func: Any, **call_options: Any) -> set[int]:
    """Parent pids of the workers a call ran on: this process under fork, the fork server under forkserver."""
    func(range(4), **call_options)
    return {psutil.Process(pid).ppid() for pid in func.worker_pids()}


def test_start_method_from_call_beats_config_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_START_METHOD", "threading")
    with config(start_method="forkserver"):
        assert worker_parents(dh.pid_default, start_method="fork", n_jobs=1) == {os.getpid()}


def test_start_method_from_config_block_beats_decorator() -> None:
    with config(start_method="forkserver"):
        parents = worker_parents(dh.pid_of, n_jobs=1)
    assert os.getpid() not in parents


def test_start_method_from_decorator_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_START_METHOD", "threading")
    assert worker_parents(dh.pid_of) == {os.getpid()}


def test_start_method_from_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_START_METHOD", "threading")
    assert set(dh.pid_default(range(4))) == {os.getpid()}


# --- environment variables ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "text", "option", "value"),
    [
        ("PARALLELIZE_N_JOBS", "1", "n_jobs", "1"),
        ("PARALLELIZE_START_METHOD", "spawn", "start_method", "'spawn'"),
        ("PARALLELIZE_BACKEND", "thread", "backend", "'thread'"),
        ("PARALLELIZE_CHUNK_SIZE", "5", "chunk_size", "5.0"),
        ("PARALLELIZE_MAX_TASKS_ACTIVE", "7", "max_tasks_active", "7"),
        ("PARALLELIZE_WORKER_LIFESPAN", "9", "worker_lifespan", "9"),
        ("PARALLELIZE_TASK_TIMEOUT", "2.5", "task_timeout", "2.5"),
        ("PARALLELIZE_PROGRESS_BAR", "yes", "progress_bar", "True"),
        ("PARALLELIZE_ON_ERROR", "raise", "on_error", "'raise'"),
    ],
)
def test_environment_variable_sets_its_option_at_call_time(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                           text: str, option: str, value: str) -> None:
    monkeypatch.setenv(variable, text)
    assert shown(dh.pid_default)[option] == (value, variable)


def test_environment_is_read_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    assert n_workers(dh.pid_default) == parallelize.cpu_count()
    monkeypatch.setenv("PARALLELIZE_N_JOBS", "1")
    assert n_workers(dh.pid_default) == 1


def test_environment_backend_thread_runs_tasks_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_BACKEND", "thread")
    assert set(dh.pid_default(range(4))) == {os.getpid()}


def test_environment_backend_serial_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_BACKEND", "serial")
    before = child_keys()
    assert dh.pid_default(range(4)) == [os.getpid()] * 4
    assert dh.pid_default.worker_pids() == []
    assert child_keys() == before


def test_environment_worker_lifespan_restarts_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_WORKER_LIFESPAN", "1")
    monkeypatch.setenv("PARALLELIZE_CHUNK_SIZE", "1")
    assert len(set(dh.pid_default(range(4), n_jobs=1))) == 4


def test_environment_task_timeout_fails_a_task_that_runs_too_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_TASK_TIMEOUT", "1")
    # The short item's result wakes the caller while the long one is known to be running (see the test below for
    # why the timeout is not tested on a lone task).
    with pytest.raises(TaskTimeoutError):
        dh.long_after_signal([60, 0], shared_objects=multiprocessing.get_context("fork").Event())


def test_task_timeout_fails_a_lone_task_that_runs_too_long() -> None:
    # The race is lost about half the time on two cores; 20 tries make a pass by luck negligible.
    for _ in range(20):
        with pytest.raises(TaskTimeoutError):
            dh.sleeper([1.0], task_timeout=0.1)


def test_environment_progress_bar_shows_a_bar(monkeypatch: pytest.MonkeyPatch,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PARALLELIZE_PROGRESS_BAR", "1")
    dh.pid_of(range(5))
    assert "5/5" in capfd.readouterr().err


@pytest.mark.parametrize(("text", "expected"), [("1", "True"), ("true", "True"), ("On", "True"), ("0", "False"),
                                                ("no", "False"), ("off", "False")])
def test_environment_booleans_accept_the_usual_spellings(monkeypatch: pytest.MonkeyPatch, text: str,
                                                         expected: str) -> None:
    monkeypatch.setenv("PARALLELIZE_PROGRESS_BAR", text)
    assert shown()["progress_bar"] == (expected, "PARALLELIZE_PROGRESS_BAR")


def test_max_cpu_caps_decorator_n_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_MAX_CPU", "1")
    assert n_workers(dh.pid_of) == 1
    assert shown(dh.pid_of)["n_jobs"] == ("1", "PARALLELIZE_MAX_CPU")


def test_max_cpu_caps_call_keyword_n_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_MAX_CPU", "1")
    with config(n_jobs=2):
        assert n_workers(dh.pid_of, n_jobs=2) == 1


def test_max_cpu_above_n_jobs_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_MAX_CPU", "64")
    assert shown(dh.pid_of)["n_jobs"] == ("2", "decorator")


def test_disable_runs_calls_serially_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_DISABLE", "1")
    before = child_keys()
    assert dh.pid_of(range(4)) == [os.getpid()] * 4
    assert dh.pid_of.worker_pids() == []
    assert child_keys() == before


def test_disable_beats_a_call_keyword(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_DISABLE", "1")
    assert dh.pid_of(range(4), n_jobs=2, start_method="spawn") == [os.getpid()] * 4


def test_disable_runs_every_call_form_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_DISABLE", "1")
    before = child_keys()
    me = os.getpid()
    assert list(dh.pid_of.imap(range(3))) == [me] * 3
    assert list(dh.pid_of.imap_unordered(range(3))) == [me] * 3
    assert dh.pid_of.map_unordered(range(3)) == [me] * 3
    assert dh.pid_of.submit(0).result(timeout=30) == me
    assert asyncio.run(dh.pid_of.amap(range(3))) == [me] * 3
    assert child_keys() == before


def test_disable_runs_hooks_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_DISABLE", "1")
    results = dh.hooked(range(3))
    assert [pid for pid, _, _ in results] == [os.getpid()] * 3
    assert dh.hooked.exit_results == [(os.getpid(), 3)]


def test_disable_0_runs_in_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_DISABLE", "0")
    assert os.getpid() not in dh.pid_of(range(4))


# --- show_config ----------------------------------------------------------------------------------------------------


def test_show_config_prints_every_option_with_value_and_source(capsys: pytest.CaptureFixture[str]) -> None:
    text = show_config()
    printed = capsys.readouterr().out
    assert printed.strip() == text.strip()
    table = shown()
    for option in ("n_jobs", "backend", "start_method", "chunk_size", "max_tasks_active", "worker_lifespan",
                   "task_timeout", "progress_bar", "on_error", "disabled"):
        assert option in table
    assert table["on_error"] == ("'raise'", "default")


def test_show_config_names_every_kind_of_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_TASK_TIMEOUT", "3")
    with config(chunk_size=2):
        table = shown(dh.pid_of)
    assert table["n_jobs"] == ("2", "decorator")
    assert table["chunk_size"] == ("2", "config()")
    assert table["task_timeout"] == ("3.0", "PARALLELIZE_TASK_TIMEOUT")
    assert table["worker_lifespan"] == ("None", "default")


def test_show_config_of_a_disabled_setup_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_DISABLE", "1")
    assert shown()["disabled"] == ("True", "PARALLELIZE_DISABLE")


# --- bad values -----------------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("n_jobs", 0),
    ("n_jobs", "abc"),
    ("n_jobs", 1.5),
    ("n_jobs", True),
    ("task_timeout", -1),
    ("task_timeout", math.nan),
    ("worker_init_timeout", -0.5),
    ("chunk_size", 0),
    ("max_tasks_active", 0),
    ("worker_lifespan", -3),
    ("start_method", "telepathy"),
    ("backend", "gpu"),
    ("progress_bar", "maybe"),
    ("keep_alive", 1),
    ("on_error", "explode"),
]


def _check_message(error: ConfigError, name: str, value: Any) -> None:
    message = str(error)
    assert name in message
    assert repr(value) in message


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_bad_decorator_value_raises_config_error_naming_it(option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        parallel(**{option: value})
    _check_message(raised.value, option, value)


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_bad_config_value_raises_config_error_naming_it(option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as raised, config(**{option: value}):
        pytest.fail("the block must not run")
    _check_message(raised.value, option, value)


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_bad_call_value_raises_config_error_before_any_process_starts(option: str, value: Any) -> None:
    before = child_keys()
    with pytest.raises(ConfigError) as raised:
        dh.pid_of(range(4), **{option: value})
    _check_message(raised.value, option, value)
    assert dh.pid_of.worker_pids() == []
    assert child_keys() == before


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        parallel(n_jobs=0)


def test_unknown_start_method_error_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"'fork'.*'spawn'"):
        parallel(start_method="telepathy")


def test_unknown_decorator_option_raises_type_error_suggesting_the_closest() -> None:
    with pytest.raises(TypeError, match="'chunk_size'"):
        parallel(chunk_sise=3)


BAD_ENVIRONMENT = [
    ("PARALLELIZE_N_JOBS", "0"),
    ("PARALLELIZE_N_JOBS", "abc"),
    ("PARALLELIZE_START_METHOD", "telepathy"),
    ("PARALLELIZE_BACKEND", "gpu"),
    ("PARALLELIZE_CHUNK_SIZE", "-2"),
    ("PARALLELIZE_CHUNK_SIZE", "nan"),
    ("PARALLELIZE_MAX_TASKS_ACTIVE", "0"),
    ("PARALLELIZE_WORKER_LIFESPAN", "many"),
    ("PARALLELIZE_TASK_TIMEOUT", "-1"),
    ("PARALLELIZE_TASK_TIMEOUT", "nan"),
    ("PARALLELIZE_PROGRESS_BAR", "maybe"),
    ("PARALLELIZE_ON_ERROR", "explode"),
    ("PARALLELIZE_MAX_CPU", "0"),
    ("PARALLELIZE_MAX_CPU", "lots"),
    ("PARALLELIZE_DISABLE", "maybe"),
]


@pytest.mark.parametrize(("variable", "text"), BAD_ENVIRONMENT)
def test_bad_environment_value_raises_config_error_at_call_before_any_process_starts(
        monkeypatch: pytest.MonkeyPatch, variable: str, text: str) -> None:
    monkeypatch.setenv(variable, text)
    before = child_keys()
    with pytest.raises(ConfigError) as raised:
        dh.pid_default(range(4))
    assert variable in str(raised.value)
    assert text in str(raised.value)
    assert dh.pid_default.worker_pids() == []
    assert child_keys() == before


def test_bad_environment_boolean_error_says_what_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_PROGRESS_BAR", "maybe")
    with pytest.raises(ConfigError, match="true/false"):
        show_config()


@pytest.mark.parametrize("text", ["abc", "2 items"])
def test_bad_environment_chunk_size_error_describes_a_chunk_size(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("PARALLELIZE_CHUNK_SIZE", text)
    with pytest.raises(ConfigError, match=r"PARALLELIZE_CHUNK_SIZE=.* is not a chunk size") as raised:
        show_config()
    assert "seconds" not in str(raised.value)


def test_unknown_environment_variable_warns_once_with_the_closest_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_N_JOSB", "2")
    with pytest.warns(UserWarning) as caught:
        dh.pid_of(range(2))
        dh.pid_of(range(2))
    assert len(caught) == 1
    assert "PARALLELIZE_N_JOSB" in str(caught[0].message)
    assert "PARALLELIZE_N_JOBS" in str(caught[0].message)


# --- CPU counts and n_jobs ------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) not installed")
def test_taskset_to_one_cpu_gives_one_cpu_and_one_default_worker() -> None:
    code = textwrap.dedent("""
        import os
        import parallelize

        @parallelize.parallel
        def pid(_):
            return os.getpid()

        pid(range(4))
        print(parallelize.cpu_count(), len(pid.worker_pids()))
        pid.close()
    """)
    cpu = min(os.sched_getaffinity(0))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env = {name: value for name, value in env.items() if not name.startswith("PARALLELIZE_")}
    done = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]


@pytest.mark.parametrize("n_jobs", [-1, -2, -3, -100])
def test_negative_n_jobs_counts_back_from_all_cpus(n_jobs: int) -> None:
    expected = max(1, parallelize.cpu_count() + 1 + n_jobs)
    with config(n_jobs=n_jobs):
        assert shown()["n_jobs"] == (str(expected), "config()")


@pytest.mark.parametrize(("n_jobs", "expected"), [(-1, 8), (-2, 7), (-8, 1), (-9, 1), (None, 8)])
def test_negative_n_jobs_with_eight_cpus(monkeypatch: pytest.MonkeyPatch, n_jobs: int | None,
                                         expected: int) -> None:
    import parallelize._cpu

    monkeypatch.setattr(parallelize._cpu, "cpu_count", lambda: 8)
    with config(n_jobs=n_jobs):
        assert shown()["n_jobs"][0] == str(expected)


def test_n_jobs_minus_one_starts_a_worker_per_cpu() -> None:
    assert n_workers(dh.pid_of, n_jobs=-1) == parallelize.cpu_count()


def test_public_cpu_count_is_positive() -> None:
    count = parallelize.cpu_count()
    assert isinstance(count, int)
    assert 1 <= count <= (os.cpu_count() or 1)


def test_the_environment_is_read_again_whenever_it_changed_between_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    # It is read once per change of it, not once per call (see _env.variables): every change must still be seen.
    from parallelize import _config

    monkeypatch.setenv("PARALLELIZE_RETRIES", "2")
    assert _config.resolve({}, {})[0].retries == 2
    assert _config.resolve({}, {})[0].retries == 2  # unchanged: the copy read before
    monkeypatch.setenv("PARALLELIZE_RETRIES", "3")
    assert _config.resolve({}, {})[0].retries == 3
    monkeypatch.delenv("PARALLELIZE_RETRIES")
    assert _config.resolve({}, {})[0].retries == 0
    monkeypatch.setenv("PARALLELIZE_RETRIESS", "1")
    with pytest.warns(UserWarning, match="unknown environment variable PARALLELIZE_RETRIESS"):
        _config.resolve({}, {})
