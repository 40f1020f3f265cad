"""Module-level task functions for tests: importable by reference, so they work under spawn and forkserver."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import psutil

_local = threading.local()


def worker_token(*_: Any) -> str:
    """A token unique to the worker (process or thread) running the call; the same for its whole life (a pid alone
    does not tell threads apart, nor a worker from its replacement with a reused pid)."""
    token = getattr(_local, "token", None)
    if token is None:
        token = _local.token = f"{os.getpid()}-{uuid.uuid4().hex}"
    return str(token)


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def identity(x: Any) -> Any:
    return x


def get_pid(_: Any = None) -> int:
    return os.getpid()


def get_thread_or_pid(_: Any = None) -> tuple[int, int]:
    return (os.getpid(), threading.get_ident())


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def flaky_with_id(worker_id: int, directory: str, times: int) -> tuple[int, int]:
    """Fails its first *times* calls (counted in a file in *directory*); then (worker_id, calls so far)."""
    counter = os.path.join(directory, "calls")
    calls = 1
    if os.path.exists(counter):
        with open(counter) as f:
            calls += int(f.read())
    with open(counter, "w") as f:
        f.write(str(calls))
    if calls <= times:
        raise ConnectionError(f"call {calls} fails")
    return worker_id, calls


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def big_bytes(n_bytes: int) -> bytes:
    return os.urandom(16) * (n_bytes // 16)


def worker_id_of(worker_id: int, _: Any) -> int:
    return worker_id


def count_in_state(worker_state: dict[str, Any], _: Any) -> int:
    worker_state["n"] = worker_state.get("n", 0) + 1
    return int(worker_state["n"])


def init_state(worker_state: dict[str, Any]) -> None:
    worker_state["n"] = 0
    worker_state["pid"] = os.getpid()


def exit_state(worker_state: dict[str, Any]) -> int:
    return int(worker_state.get("n", 0))


def child_keys() -> set[tuple[int, float]]:
    """Live (pid, create_time) of this process's descendants."""
    keys = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                keys.add((proc.pid, proc.create_time()))
        except psutil.Error:
            pass
    return keys


def sleep_holding(lock: Any, seconds: float) -> str:
    """Hold *lock* (a shared object) for *seconds*: a task that times out must let it go on its way out."""
    with lock:
        time.sleep(seconds)
    return "slept"


def wait_on(event: Any, _: Any = None) -> bool:
    """Wait on *event* (a shared object) for up to 30 s."""
    return bool(event.wait(30))


def sleep_then_mark(path: str, seconds: float) -> str:
    """Sleep, and write *path* in a finally block: shows whether an interrupted task unwound."""
    try:
        time.sleep(seconds)
    finally:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
    return "slept"


def marking_hook(shared: tuple[str, float]) -> str:
    """A worker_init/worker_exit hook: sleeps for shared[1] seconds and writes its pid to shared[0] on the way out."""
    return sleep_then_mark(*shared)


def second(_: Any, x: Any) -> Any:
    """A task with one leading argument (shared objects, say) that returns its item."""
    return x


def announced_marking_hook(shared: tuple[str, float]) -> str:
    """marking_hook that first appends its pid to shared[0] + ".started"."""
    with open(shared[0] + ".started", "a") as f:
        f.write(f"{os.getpid()}\n")
    return marking_hook(shared)
