"""Module-level decorated functions for the decorator tests.

They live in an importable module (not in a test function) so that they pickle by reference and work under
spawn and forkserver. Nothing here starts a process: pools are created on first call, and every test closes
what it used.
"""

from __future__ import annotations

import os
import time
from typing import Any

from parallelize import parallel

# --- plain functions ------------------------------------------------------------------------------------------------


@parallel
def square(x: int) -> int:
    """Return x squared."""
    return x * x


@parallel(n_jobs=2, start_method="fork")
def cube(x: int) -> int:
    """Return x cubed."""
    return x * x * x


@parallel(n_jobs=2, start_method="fork")
def pid_of(_: Any = None) -> int:
    """The pid of the process that ran the task."""
    return os.getpid()


@parallel
def pid_default(_: Any = None) -> int:
    """No options: every setting comes from config(), the environment or the defaults."""
    return os.getpid()


@parallel(n_jobs=2, start_method="fork", chunk_size=4)
def pid_chunk4(_: Any = None) -> int:
    return os.getpid()


@parallel(n_jobs=1, start_method="fork")
def sleeper(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@parallel(n_jobs=2, start_method="fork", chunk_size=1)
def long_after_signal(shared: Any, seconds: float) -> float:
    """A long item (seconds > 0) sets the event in *shared* once running, then sleeps; a short one (0) waits for
    that signal and returns, so its result reaches the caller while the long item is known to be running."""
    if seconds:
        shared.set()
        time.sleep(seconds)
    elif not shared.wait(timeout=30):
        raise TimeoutError("the long item never started")
    return seconds


@parallel(n_jobs=2, start_method="fork")
def add(a: int, b: int = 0) -> int:
    return a + b


@parallel(n_jobs=2, start_method="fork", chunk_size=1)
def wait_for_later(shared: Any, x: int) -> int:
    """Item 0 waits until item 1 has run: results complete out of input order, deterministically.

    *shared* is a multiprocessing.Event (inherited through fork) or a threading.Event.
    """
    if x == 0:
        if not shared.wait(timeout=30):
            raise TimeoutError("item 1 never ran")
    else:
        shared.set()
    return x


@parallel(n_jobs=2, start_method="fork", chunk_size=1)
def gated(shared: Any, x: int) -> int:
    """Item 0 waits until the event in *shared* is set (by the caller); other items return at once."""
    if x == 0 and not shared.wait(timeout=30):
        raise TimeoutError("the event was never set")
    return x


@parallel(n_jobs=2, start_method="fork", chunk_size=1)
def wait_on(shared: Any, x: int) -> int:
    """Block until the event in *shared* is set (used to hold tasks while the event loop keeps running)."""
    if not shared.wait(timeout=30):
        raise TimeoutError("the event was never set")
    return x


@parallel(n_jobs=2, start_method="fork")
def settings_seen(x: int) -> int:
    """Anything; tests look at which settings the call resolved to."""
    return x


@parallel(n_jobs=2, start_method="fork")
def nested_call(x: int) -> tuple[int, list[int]]:
    """Call nested_call itself from inside a worker: it must run serially in that worker."""
    inner = nested_inner([x, x + 1])
    return os.getpid(), inner


@parallel(n_jobs=2, start_method="fork")
def nested_inner(x: int) -> int:
    return os.getpid()


@parallel(n_jobs=2, start_method="fork")
def recursive(x: int) -> list[int]:
    """Calls itself from inside its own worker: returns the pids that ran the inner items."""
    if x < 0:
        return [os.getpid()]
    inner = recursive([-1, -2])
    return [os.getpid(), *(pid for pids in inner for pid in pids)]


# --- hooks: init counted per process --------------------------------------------------------------------------------

# pid -> number of times hooked_init ran in that process. Keyed by pid, so a forked child does not count its
# parent's calls.
INIT_CALLS: dict[int, int] = {}


@parallel(n_jobs=2, start_method="fork", worker_state=True)
def hooked(worker_state: dict[str, Any], x: int) -> tuple[int, int, int]:
    """(pid, init calls in this process, tasks this worker ran so far)."""
    worker_state["n"] += 1
    return os.getpid(), INIT_CALLS.get(os.getpid(), 0), worker_state["n"]


@hooked.worker_init
def hooked_init(worker_state: dict[str, Any]) -> None:
    pid = os.getpid()
    INIT_CALLS[pid] = INIT_CALLS.get(pid, 0) + 1
    worker_state["n"] = 0


@hooked.worker_exit
def hooked_exit(worker_state: dict[str, Any]) -> tuple[int, int]:
    """(pid, tasks this worker ran)."""
    return os.getpid(), worker_state["n"]


def plain_init(worker_id: int, worker_state: dict[str, Any]) -> None:
    worker_state["init_worker_id"] = worker_id


def plain_exit(worker_id: int, worker_state: dict[str, Any]) -> tuple[int, int]:
    return worker_id, worker_state["init_worker_id"]


@parallel(n_jobs=2, start_method="fork", pass_worker_id=True, worker_state=True, worker_init=plain_init,
          worker_exit=plain_exit)
def hooks_as_arguments(worker_id: int, worker_state: dict[str, Any], x: int) -> tuple[int, int]:
    """Hooks given as decorator arguments; they receive worker_id and worker_state like the task."""
    return worker_id, worker_state["init_worker_id"]


# --- methods, in both decorator orders ------------------------------------------------------------------------------


class Scaler:
    """Decorated methods of every kind. Pickles by value (its factor), so spawn workers can rebuild it."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    @parallel(n_jobs=2, start_method="fork")
    def scale(self, x: int) -> tuple[str, int, int]:
        """Multiply by this instance's factor."""
        return type(self).__name__, x * self.factor, os.getpid()

    @parallel(n_jobs=2, start_method="fork")
    def scale_sum(self, x: int, y: int) -> int:
        """Multiply x + y by this instance's factor."""
        return (x + y) * self.factor

    @parallel(n_jobs=2, start_method="fork")
    @classmethod
    def class_outer(cls, x: int) -> tuple[str, int, int]:
        """A classmethod with @parallel outermost."""
        return cls.__name__, x + 1, os.getpid()

    @classmethod
    @parallel(n_jobs=2, start_method="fork")
    def class_inner(cls, x: int) -> tuple[str, int, int]:
        """A classmethod with @parallel innermost."""
        return cls.__name__, x + 1, os.getpid()

    @parallel(n_jobs=2, start_method="fork")
    @staticmethod
    def static_outer(x: int) -> tuple[str, int, int]:
        """A staticmethod with @parallel outermost."""
        return "static", x - 1, os.getpid()

    @staticmethod
    @parallel(n_jobs=2, start_method="fork")
    def static_inner(x: int) -> tuple[str, int, int]:
        """A staticmethod with @parallel innermost."""
        return "static", x - 1, os.getpid()


class SubScaler(Scaler):
    """Classmethods reached through a subclass bind to the subclass."""


METHOD_NAMES = ["scale", "class_outer", "class_inner", "static_outer", "static_inner"]


def expected_method_result(name: str, owner: type, factor: int, x: int) -> tuple[str, int]:
    """What Scaler-like method *name* returns for *x* (without the pid)."""
    if name == "scale":
        return owner.__name__, x * factor
    if name.startswith("class"):
        return owner.__name__, x + 1
    return "static", x - 1


def close_all_methods() -> None:
    for name in METHOD_NAMES:
        getattr(Scaler, name).close()


# --- threads --------------------------------------------------------------------------------------------------------


@parallel(n_jobs=2, start_method="fork")
def tagged(caller: int, x: int) -> tuple[int, int]:
    """Echo the caller with x squared (items are (caller, x) tuples), so cross-talk between callers would show."""
    return caller, x * x
