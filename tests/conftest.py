"""Shared test fixtures: an autouse leak check for child processes and threads.

Every test must leave behind no new child process (at any depth) and no new non-daemon thread.
A pool kept alive after a test is a leak: close it in the test (``predict.close()``, ``with
WorkerPool(...)``). A test that deliberately keeps workers alive can opt out with
``@pytest.mark.no_leak_check``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

# pytest's own faulthandler plugin normally does this; keep the dumps even under -p no:faulthandler.
if not faulthandler.is_enabled():
    faulthandler.enable(file=sys.__stderr__ or sys.stderr, all_threads=True)



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on a Dask cluster run last: the distributed package starts threads that live until the process exits
    (its offload executor), and every fork pool started after them would rightly warn ForkAfterThreadsWarning,
    failing the tests that check when that warning comes."""
    items.sort(key=lambda item: "dask" in item.nodeid)  # (a stable sort: the order is kept within each group)


LEAK_DEADLINE_S = 5.0
_POLL_INTERVAL_S = 0.02

# Long-lived multiprocessing helpers that outlive any one pool by design.
_RESOURCE_TRACKER = "multiprocessing.resource_tracker"
_FORKSERVER = "multiprocessing.forkserver"

_ProcessKey = tuple[int, float]  # (pid, create_time): a pid alone can be reused


def _key(proc: psutil.Process) -> _ProcessKey | None:
    try:
        return (proc.pid, proc.create_time())
    except psutil.Error:
        return None


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _descendants() -> dict[_ProcessKey, psutil.Process]:
    found: dict[_ProcessKey, psutil.Process] = {}
    for proc in psutil.Process().children(recursive=True):
        key = _key(proc)
        if key is not None:
            found[key] = proc
    return found


def _is_helper(proc: psutil.Process) -> bool:
    """The resource tracker, or the forkserver *server* (its forked workers share its cmdline)."""
    cmdline = _cmdline(proc)
    if _RESOURCE_TRACKER in cmdline:
        return True
    if _FORKSERVER in cmdline:
        try:
            parent = proc.parent()
        except psutil.Error:
            return False
        return parent is None or _FORKSERVER not in _cmdline(parent)
    return False


def _is_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True  # gone already
    except psutil.Error:
        return False


def _reap_own_zombies(procs: list[psutil.Process]) -> None:
    # Reap politely first: multiprocessing joins the finished Process objects it still tracks.
    multiprocessing.active_children()
    me = os.getpid()
    for proc in procs:
        # ChildProcessError: its owner reaped it in the meantime.
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if proc.ppid() == me and _is_zombie(proc):
                os.waitpid(proc.pid, os.WNOHANG)


def _new_live_children(baseline: set[_ProcessKey]) -> list[psutil.Process]:
    """New descendants that are still running. A zombie has exited: it is reaped, not reported."""
    new = [proc for key, proc in _descendants().items() if key not in baseline]
    new = [proc for proc in new if not _is_helper(proc)]
    zombies = [proc for proc in new if _is_zombie(proc)]
    if zombies:
        _reap_own_zombies(zombies)
    return [proc for proc in new if not _is_zombie(proc)]


def _describe_process(proc: psutil.Process) -> str:
    try:
        name, status, ppid = proc.name(), proc.status(), proc.ppid()
    except psutil.Error as exc:
        return f"pid={proc.pid} ({type(exc).__name__})"
    return f"pid={proc.pid} ppid={ppid} name={name!r} status={status} cmdline={_cmdline(proc)!r}"


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    # wait_procs also reaps those that are our own children.
    psutil.wait_procs(procs, timeout=LEAK_DEADLINE_S)
    multiprocessing.active_children()


def _new_live_threads(baseline: set[threading.Thread]) -> list[threading.Thread]:
    return [
        thread for thread in threading.enumerate() if thread not in baseline and thread.is_alive() and not thread.daemon
    ]


def _describe_thread(thread: threading.Thread) -> str:
    frame = sys._current_frames().get(thread.ident or -1)
    stack = "".join(traceback.format_stack(frame)) if frame is not None else "  (no frame)\n"
    return f"{thread!r}\n{stack}"


@pytest.fixture(autouse=True)
def _no_leaked_children_or_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("no_leak_check") is not None:
        yield
        return

    process_baseline = set(_descendants())
    thread_baseline = set(threading.enumerate())
    yield

    deadline = time.monotonic() + LEAK_DEADLINE_S
    while (procs := _new_live_children(process_baseline)) and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL_S)
    while (threads := _new_live_threads(thread_baseline)) and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL_S)
    procs = _new_live_children(process_baseline)  # the thread wait may have let some finish

    problems = []
    if procs:
        listing = "\n".join(f"  {_describe_process(proc)}" for proc in procs)
        # Kill them so one leaking test does not poison the ones after it.
        _kill(procs)
        problems.append(
            f"{len(procs)} child process(es) still running {LEAK_DEADLINE_S:g}s after the test (now killed):\n{listing}"
        )
    if threads:
        listing = "\n".join(_describe_thread(thread) for thread in threads)
        problems.append(
            f"{len(threads)} non-daemon thread(s) still alive {LEAK_DEADLINE_S:g}s after the test:\n{listing}"
        )
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


START_METHODS = ["fork", "forkserver", "spawn", "threading"]


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Every start method a pool supports; tests using it run once per method."""
    return str(request.param)


@pytest.fixture(params=["fork", "threading"])
def fast_start_method(request: pytest.FixtureRequest) -> str:
    """The two cheap start methods, for tests whose behaviour does not depend on how workers start."""
    return str(request.param)


@pytest.fixture
def closing() -> Iterator[Callable[[Any], Any]]:
    """Register decorated functions made inside a test; they are closed when it ends."""
    made: list[Any] = []

    def register(func: Any) -> Any:
        made.append(func)
        return func

    yield register
    for func in made:
        func.close()


@pytest.fixture
def no_parallelize_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PARALLELIZE_* variable from the outside leaks into the test."""
    for name in list(os.environ):
        if name.startswith("PARALLELIZE_"):
            monkeypatch.delenv(name)
