"""The public face: everything in __all__ resolves, nothing private leaks, and importing stays light."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
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


@pytest.mark.timeout(60)
def test_importing_the_package_loads_neither_wrapt_nor_multiprocessing_nor_the_engine() -> None:
    code = ("import sys, parallelize; "
            "print(sorted(m for m in ('wrapt', 'multiprocessing', 'parallelize._engine', 'tqdm', 'cloudpickle', "
            "'psutil', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"
    assert out.stderr == ""
