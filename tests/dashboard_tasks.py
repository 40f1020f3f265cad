"""Decorated functions the dashboard tests run, importable by worker processes: one that waits for the test to
let each task through (so the page's count advances when the test says), one whose task 7 raises, one that just
works."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from parallelize import parallel

GATE_TIMEOUT = 30.0  # a task gives up waiting after this long, so a failing test never hangs its workers

gates = [threading.Event() for _ in range(6)]


def open_gates(n: int) -> None:
    for gate in gates[:n]:
        gate.set()


def close_gates() -> None:
    for gate in gates:
        gate.clear()


def in_background(func: Callable[..., Any], *args: Any) -> Future[Any]:
    """func(*args) called in a thread of its own: a call that runs while the test looks at the dashboard."""
    future: Future[Any] = Future()

    def call() -> None:
        try:
            future.set_result(func(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=call, name="dashboard-test-caller", daemon=True).start()
    return future


@parallel(n_jobs=2, backend="thread", chunk_size=1, enable_insights=True)
def render_tile(i: int) -> int:
    """Waits (in a thread worker, which shares the test's module) until the test opens gate i."""
    if not gates[i].wait(GATE_TIMEOUT):
        raise TimeoutError(f"gate {i} was never opened")
    return i


@parallel(n_jobs=2, start_method="fork", chunk_size=2)
def parse_record(i: int) -> int:
    if i == 7:
        raise ValueError(f"malformed record {i}: expected 3 fields, got 2")
    return i


@parallel(n_jobs=2, backend="thread")
def checksum(i: int) -> int:
    return (i * 2654435761) % 2**32


def triple(i: int) -> int:
    """A plain function, for WorkerPool calls."""
    return 3 * i
