"""Module-level task functions for the fault suite: importable by reference, so they work under spawn.

``behave(i, action, arg, payload)`` does one misbehaviour per item, chosen by the item itself, so one decorated
function (``chaos``) and one pool serve every case. Every wait in here is bounded (WAIT_LIMIT): a test that goes
wrong fails with a wrong result instead of hanging.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parallelize import parallel

WAIT_LIMIT = 30.0  # seconds any task waits for something at most
INIT_DIR_VARIABLE = "FAULTS_INIT_DIR"  # worker_init records its pid here (inherited by every worker)

_hog: list[bytes] = []  # memory kept alive by "alloc" tasks


class CustomInitError(Exception):
    """An exception whose __init__ does not take its message: plain pickle cannot rebuild it."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code
        self.detail = detail


class UnpicklableError(Exception):
    """Carries a lock, so it cannot be pickled at all."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class UnreadableHere:
    """Pickles fine; unpickling it fails."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_unpickle, ())


def _refuse_to_unpickle() -> None:
    raise ValueError("this object cannot be unpickled in the parent")


class DiesWhenPickled:
    """Pickling it ends the process at once, as the out-of-memory killer would."""

    def __reduce__(self) -> tuple[Any, ...]:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


class InputBrokeError(Exception):
    """Raised by an input generator midway."""


def wait_for(path: Path, limit: float = WAIT_LIMIT) -> bool:
    deadline = time.monotonic() + limit
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: a reader never sees a half-written file


def _attempt(directory: str, i: int) -> int:
    """Count this attempt at item *i* in a file (survives worker deaths); returns the attempt number (1-based)."""
    counter = Path(directory) / f"{i}.attempts"
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    _write(counter, str(n))
    with open(Path(directory) / f"{i}.times", "a") as f:
        f.write(f"{time.monotonic()}\n")
    return n


def behave(i: int, action: str = "ok", arg: Any = None, payload: Any = None) -> Any:
    if action == "ok":
        return i * i
    if action == "exit":
        os._exit(arg)
    if action == "segfault":
        ctypes.string_at(0)
    if action == "sys_exit":
        sys.exit(arg)
    if action == "raise":
        raise ValueError(f"bad item {i}")
    if action == "custom":
        raise CustomInitError(i, arg)
    if action == "unpicklable_exc":
        raise UnpicklableError(f"cannot travel {i}")
    if action == "kbint":
        raise KeyboardInterrupt(f"interrupted in task {i}")
    if action == "sleep":
        time.sleep(arg)
        return i * i
    if action == "uninterruptible":  # like a long call into C code: the cancel signal waits until it returns
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            time.sleep(arg)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        return i * i
    if action == "block":  # publish the pid, then wait for a release file (or to be killed)
        directory = Path(arg)
        _write(directory / f"{i}.pid", str(os.getpid()))
        return "released" if wait_for(directory / "release") else "never released"
    if action == "ignore_term":  # will not be interrupted (like C code) and will not die of SIGTERM
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        directory = Path(arg)
        _write(directory / f"{i}.pid", str(os.getpid()))
        time.sleep(WAIT_LIMIT)
        return "outlived its timeout"
    if action == "grandchild":  # start a `sleep` subprocess and wait on it, not to be interrupted (like C code)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        child = subprocess.Popen(["sleep", str(int(WAIT_LIMIT))])
        _write(Path(arg) / f"{i}.grandchild", str(child.pid))
        child.wait()
        return "grandchild ended"
    if action == "flaky":  # fail (raise / die / hang) for the first `times` attempts, then succeed
        directory, times, how = arg
        if _attempt(directory, i) <= times:
            if how == "raise":
                raise ConnectionError(f"transient failure of item {i}")
            if how == "exit":
                os._exit(9)
            if how == "hang":
                time.sleep(WAIT_LIMIT)
        return i * i
    if action == "unpicklable_result":
        return threading.Lock()
    if action == "unreadable_result":  # pickles in the worker, cannot be unpickled in the parent
        _attempt(arg, i)
        return UnreadableHere()
    if action == "close_fds":  # closes every descriptor from 3 to 99, its worker's pipes included
        _attempt(arg, i)
        os.closerange(3, 100)
        return i * i
    if action == "dies_pickling_result":  # the worker dies while its result is being pickled (like an OOM kill)
        _attempt(arg, i)
        return DiesWhenPickled()
    if action == "alloc":  # grow this worker's RSS by *arg* bytes and keep it
        _hog.append(b"\x01" * arg)
        time.sleep(0.3)  # let the worker's between-chunks memory check (every 0.25 s) come round
        return i * i
    raise AssertionError(f"unknown action {action!r}")


@parallel(n_jobs=2, chunk_size=1)
def chaos(i: int, action: str = "ok", arg: Any = None, payload: Any = None) -> Any:
    """``behave`` on a pool: the decorated function every fault case uses (and checks afterwards)."""
    return behave(i, action, arg, payload)


class SlowToUnpickle:
    """A shared object that takes a while to unpickle: it holds a spawn worker in its start-up, before the worker
    has set up its signal handlers."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_slow_rebuild, ())


def _slow_rebuild() -> SlowToUnpickle:
    time.sleep(0.6)
    return SlowToUnpickle()


class FailsToUnpickle:
    """A shared object that pickles in the parent and cannot be rebuilt in a spawned worker: every worker dies
    while starting."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_rebuild, ())


def _refuse_to_rebuild() -> FailsToUnpickle:
    raise RuntimeError("this shared object cannot be rebuilt in a worker")


class HangsUnpickling:
    """A shared object whose rebuilding in a spawned worker hangs (as a start stuck on a stalled network file system
    would) for the first *hangs* workers, counted by files in *directory*; later workers start normally."""

    def __init__(self, directory: str, hangs: int) -> None:
        self.directory, self.hangs = directory, hangs

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_or_hang, (self.directory, self.hangs))


def _rebuild_or_hang(directory: str, hangs: int) -> HangsUnpickling:
    started = len(os.listdir(directory))
    _write(Path(directory) / f"{started}.pid", str(os.getpid()))
    if started < hangs:
        time.sleep(3600)
    return HangsUnpickling(directory, hangs)


@parallel(n_jobs=2, chunk_size=1, shared_objects=SlowToUnpickle())
def slow_start(shared: SlowToUnpickle, x: Any) -> Any:
    if x == "raise":
        time.sleep(0.3)  # long enough for a replacement worker to be started meanwhile
        raise ValueError("bad item")
    return x * x


def square(x: int) -> int:
    return x * x


def square_beside(_shared: Any, x: int) -> int:
    """square() for a pool with shared objects (they come first)."""
    return x * x


def pid_of(_: Any = None) -> int:
    return os.getpid()


def record_init() -> None:
    """worker_init: note this worker's pid (proves the hook runs again in a replacement worker)."""
    directory = os.environ.get(INIT_DIR_VARIABLE)
    if directory:
        (Path(directory) / str(os.getpid())).touch()


def slow_hook() -> None:
    """worker_init / worker_exit that runs past any short timeout (bounded, so a disowned thread ends too)."""
    time.sleep(5.0)


# --- helpers for the fault tests themselves (not run in workers) --------------------------------------------------


def wait_until(condition: Callable[[], bool], limit: float = 10.0) -> bool:
    """Poll *condition* until it holds or *limit* seconds pass; True if it held."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def gone(pid: int) -> bool:
    """The process has exited: no such process, or a zombie."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def open_fds() -> set[int]:
    return set(map(int, os.listdir("/proc/self/fd")))


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


def our_new_shm(before: set[str]) -> set[str]:
    """/dev/shm entries created since *before*, less those mapped by processes outside this test run (other
    sessions on the same machine create and remove their own)."""
    import psutil

    # Less multiprocessing's named semaphores too: the library makes none (its segments are memfds, never in
    # /dev/shm), while other test runs on the machine make and, a moment after their process ends, remove them.
    new = {name for name in shm_entries() - before if not name.startswith("sem.mp-")}
    if not new:
        return new
    ours = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    foreign: set[str] = set()
    for pid in psutil.pids():
        if pid in ours:
            continue
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        foreign.update(name for name in new if f"/dev/shm/{name}" in maps)
    return new - foreign


def fork_a_child_waiting_for_sigusr2(limit: float, done: str) -> int:
    """Fork a child that waits for SIGUSR2 (at most *limit* seconds), then creates the file *done* and ends."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})  # the child inherits the mask: nothing is missed
    pid = os.fork()
    if pid == 0:
        try:
            signal.sigtimedwait({signal.SIGUSR2}, limit)
            _write(Path(done), "done")
        finally:
            os._exit(0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
    return pid
