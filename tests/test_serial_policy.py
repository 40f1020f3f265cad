"""Serial mode runs a call's Job in the calling thread, fed exactly as a worker's answers are: on_error, retries
and their backoff give the same results, and the same errors, serially as in worker processes and threads."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import helpers
from fault_tasks import chaos
from parallelize import WorkerPool, parallel

pytestmark = pytest.mark.usefixtures("no_parallelize_env")

# (backend, start_method): worker processes, worker threads, and serial mode in this thread.
MODES = [("process", "fork"), ("thread", "threading"), ("serial", "fork")]
MODE_IDS = ["process", "thread", "serial"]


def _options(mode: tuple[str, str]) -> dict[str, Any]:
    backend, start_method = mode
    return {"backend": backend, "start_method": start_method}


@pytest.fixture(autouse=True)
def _close_chaos() -> Any:
    yield
    chaos.close()


def _described(results: list[Any]) -> list[Any]:
    """Results with exceptions as (type, message, notes): comparable across modes."""
    return [(type(r).__name__, str(r), getattr(r, "__notes__", None)) if isinstance(r, BaseException) else r
            for r in results]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("on_error", ["return", "skip"])
def test_on_error_gives_the_same_results_in_every_mode(mode: tuple[str, str], on_error: str,
                                                       closing: Callable[[Any], Any]) -> None:
    func = closing(parallel(n_jobs=2, chunk_size=3, on_error=on_error)(helpers.fail_on))
    results = _described(func(range(7), **_options(mode)))
    error = ("ValueError", "bad item 3", ["(raised by the task at input index 3, called with 3)"])
    assert results == ([0, 1, 2, error, 4, 5, 6] if on_error == "return" else [0, 1, 2, 4, 5, 6])


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_on_error_raise_raises_the_same_error_in_every_mode(mode: tuple[str, str],
                                                            closing: Callable[[Any], Any]) -> None:
    func = closing(parallel(n_jobs=2, chunk_size=3)(helpers.fail_on))
    with pytest.raises(ValueError, match="bad item 3") as raised:
        func(range(7), **_options(mode))
    assert raised.value.__notes__ == ["(raised by the task at input index 3, called with 3)"]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_retries_recover_the_same_way_in_every_mode(mode: tuple[str, str], tmp_path: Path) -> None:
    items = [(i, "flaky", (str(tmp_path), 2 if i % 3 == 0 else 0, "raise")) for i in range(6)]
    assert chaos(items, retries=2, **_options(mode)) == [i * i for i in range(6)]
    attempts = [int((tmp_path / f"{i}.attempts").read_text()) for i in range(6)]
    assert attempts == [3, 1, 1, 3, 1, 1]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_exhausted_retries_follow_on_error_the_same_way_in_every_mode(mode: tuple[str, str],
                                                                      tmp_path: Path) -> None:
    items = [(i, "flaky", (str(tmp_path), 9 if i == 1 else 0, "raise")) for i in range(4)]
    results = _described(chaos(items, retries=2, on_error="return", **_options(mode)))
    assert results[0] == 0 and results[2:] == [4, 9]
    assert results[1][:2] == ("ConnectionError", "transient failure of item 1")
    assert (tmp_path / "1.attempts").read_text() == "3"


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_retry_backoff_waits_the_same_in_every_mode(mode: tuple[str, str], tmp_path: Path) -> None:
    items = [(0, "flaky", (str(tmp_path), 2, "raise"))]
    assert chaos(items, retries=2, retry_backoff=0.2, **_options(mode)) == [0]
    times = [float(t) for t in (tmp_path / "0.times").read_text().split()]
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.4


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_submit_retries_and_passes_the_worker_arguments_in_every_mode(mode: tuple[str, str], tmp_path: Path,
                                                                      closing: Callable[[Any], Any]) -> None:
    # Serial submit used to call the bare function once: no retries, no worker_id, no worker_init.
    func = closing(parallel(n_jobs=1, retries=2, pass_worker_id=True, **_options(mode))(helpers.flaky_with_id))
    assert func.submit(str(tmp_path), 2).result(timeout=60) == (0, 3)


def test_serial_task_error_is_the_object_the_task_raised(closing: Callable[[Any], Any]) -> None:
    func = closing(parallel(on_error="return", backend="serial")(helpers.fail_on))
    (error,) = func([3])
    assert error.__cause__ is None  # not a copy from another process: pdb can walk into the task
    assert traceback.extract_tb(error.__traceback__)[-1].name == "fail_on"


@pytest.mark.parametrize("disabled", ["0", "1"])
def test_workerpool_task_error_says_which_item_failed_in_both_modes(monkeypatch: pytest.MonkeyPatch,
                                                                    disabled: str) -> None:
    # In serial mode (PARALLELIZE_DISABLE=1) the note used to be missing.
    monkeypatch.setenv("PARALLELIZE_DISABLE", disabled)
    with WorkerPool(2, start_method="fork") as pool, pytest.raises(ValueError, match="bad item 3") as raised:
        pool.map(helpers.fail_on, range(5), chunk_size=2)
    assert raised.value.__notes__ == ["(raised by the task at input index 3, called with 3)"]
    assert (raised.value.__cause__ is None) == (disabled == "1")
