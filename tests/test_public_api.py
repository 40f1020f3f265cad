"""The public face: everything in __all__ resolves, nothing private leaks, and importing stays light."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest

import parallelize

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", parallelize.__all__)
def test_every_name_in_all_resolves(name: str) -> None:
    assert getattr(parallelize, name) is not None


def test_dir_lists_exactly_the_public_names() -> None:
    assert dir(parallelize) == sorted(parallelize.__all__)


def test_unknown_attribute_raises_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = parallelize.no_such_thing  # type: ignore[attr-defined]


def test_errors_subclass_the_builtins_they_resemble() -> None:
    from concurrent.futures.process import BrokenProcessPool

    assert issubclass(parallelize.ConfigError, ValueError)
    assert issubclass(parallelize.TaskTimeoutError, TimeoutError)
    assert issubclass(parallelize.WorkerDiedError, BrokenProcessPool)
    assert issubclass(parallelize.ForkAfterThreadsWarning, RuntimeWarning)
    assert issubclass(parallelize.PoolClosedError, RuntimeError)
    assert issubclass(parallelize.ResultTimeoutError, TimeoutError)
    assert issubclass(parallelize.ResultTimeoutError, multiprocessing.TimeoutError)
    for name in ("ConfigError", "PoolBusyError", "PoolClosedError", "TaskTimeoutError", "WorkerDiedError",
                 "ResultPicklingError", "ResultTimeoutError", "RemoteError"):
        assert issubclass(getattr(parallelize, name), parallelize.ParallelError)


def test_every_exported_exception_derives_from_parallel_error() -> None:
    # Warnings are left out on purpose: they are not errors, and ``except ParallelError`` must not catch one that
    # a warnings filter turned into an exception.
    exported = [getattr(parallelize, name) for name in parallelize.__all__]
    errors = [obj for obj in exported if isinstance(obj, type) and issubclass(obj, BaseException)
              and not issubclass(obj, Warning)]
    assert len(errors) >= 10
    assert [e.__name__ for e in errors if not issubclass(e, parallelize.ParallelError)] == []


def _slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_the_errors_a_worker_pool_raises_itself_derive_from_parallel_error() -> None:
    caught: list[BaseException] = []
    with pytest.raises(parallelize.ParallelError) as bad_option:
        parallelize.WorkerPool(n_jobs=1.5)
    caught.append(bad_option.value)
    with parallelize.WorkerPool(1, start_method="threading") as pool:
        pending = pool.apply_async(_slow, (0.5,))
        with pytest.raises(parallelize.ParallelError) as not_ready:
            pending.get(timeout=0)
        caught.append(not_ready.value)
        # Chunks of one, the second still running at terminate(): an imap whose results have all arrived keeps
        # them, and would not raise.
        lazy = pool.imap(_slow, [0.0, 0.5], chunk_size=1)
        next(lazy)
        with pytest.raises(parallelize.ParallelError) as busy:
            pool.map(_slow, [0.0])
        caught.append(busy.value)
        pool.terminate()
        with pytest.raises(parallelize.ParallelError) as closed:
            next(lazy)
        caught.append(closed.value)
    assert [type(e).__name__ for e in caught] == ["ConfigError", "ResultTimeoutError", "PoolBusyError",
                                                 "PoolClosedError"]


@pytest.mark.timeout(60)
def test_importing_the_package_loads_neither_wrapt_nor_multiprocessing_nor_the_engine() -> None:
    code = ("import sys, parallelize; "
            "print(sorted(m for m in ('wrapt', 'multiprocessing', 'parallelize._engine', 'tqdm', 'cloudpickle', "
            "'psutil', 'numpy', 'http.server', 'parallelize.dashboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"
    assert out.stderr == ""


# What a plain first map (a decorated function, a WorkerPool) does not need, and so does not import: each costs
# start-up time, and is imported only where some call needs it (a progress bar, a memory limit or a worker killed,
# asyncio, numpy input, a function sent by value, a worker's death, a logged warning, n_jobs left to the CPU count,
# a task's traceback, an insights text). wrapt's Python half and inspect: only wrapt's extension is loaded (see
# _decorator).
LAZY_MODULES = ("tqdm", "psutil", "cloudpickle", "numpy", "asyncio", "concurrent.futures", "logging",
                "importlib.metadata", "dataclasses", "inspect", "pathlib", "difflib", "traceback", "wrapt.decorators",
                "datetime", "parallelize._cpu")
FIRST_MAPS = f"""
import sys
before = set(sys.modules)
from parallelize import WorkerPool, parallel

def square(x):
    return x * x

assert parallel(n_jobs=2)(square)(range(10)) == [x * x for x in range(10)]
with WorkerPool(2) as pool:
    assert pool.map(square, range(10)) == [x * x for x in range(10)]
print(sorted(m for m in {LAZY_MODULES!r} if m in sys.modules and m not in before))
"""


@pytest.mark.timeout(60)
def test_a_first_map_imports_none_of_the_modules_only_some_calls_need() -> None:
    # (Modules the interpreter had loaded before, by a site hook say, do not count.)
    out = subprocess.run([sys.executable, "-c", FIRST_MAPS], capture_output=True, text=True, cwd=REPO, timeout=50,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert (out.returncode, out.stdout.strip(), out.stderr) == (0, "[]", "")


WRAPT_PROGRAM = """
import sys
if sys.argv[1] == "wrapt first":
    import wrapt
from parallelize import ParallelFunction, parallel
import wrapt

@parallel(backend="serial")
def double(x):
    return 2 * x

assert isinstance(double, wrapt.FunctionWrapper) and issubclass(ParallelFunction, wrapt.FunctionWrapper)
assert double([1, 2]) == [2, 4] and double.__name__ == "double"
print("ok")
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("order", "extensions"), [("wrapt first", "on"), ("wrapt after", "on"),
                                                   ("wrapt after", "disabled")])
def test_the_decorator_is_a_wrapt_function_wrapper_however_wrapt_is_loaded(order: str, extensions: str) -> None:
    # The decorator loads wrapt's compiled extension alone (see _decorator); a program that imports wrapt, before
    # or after, must see the same classes, and WRAPT_DISABLE_EXTENSIONS (wrapt's Python classes) must still work.
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    if extensions == "disabled":
        env["WRAPT_DISABLE_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, "-c", WRAPT_PROGRAM, order], capture_output=True, text=True, cwd=REPO,
                         timeout=50, env=env)
    assert (out.returncode, out.stdout.strip(), out.stderr) == (0, "ok", "")
