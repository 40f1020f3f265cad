"""Checks for option values. Each names the option, shows the value, and says what is allowed."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import ConfigError

START_METHODS = ("fork", "forkserver", "spawn", "threading")


def positive_int(name: str, value: Any, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a positive integer" + (" or None" if allow_none else "")
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")
    if value > sys.maxsize:  # counts of items: no sequence, slice or iterator can go past sys.maxsize
        raise ConfigError(f"{name} must be at most sys.maxsize ({sys.maxsize}), got {value!r}")
    return value


def iterable_len(value: Any) -> int | None:
    """How many items of the input to read (None: all); it is also the total of the progress bar."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0  # as MPIRE: an empty map
    return positive_int("iterable_len", value)


def chunk_size(name: str, value: Any) -> int | float | None:
    """Items per chunk; may be fractional (chunk k ends at item ceil(k * size)), but at most sys.maxsize."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number or None, got {value!r}")
    if value > sys.maxsize:
        raise ConfigError(f"{name} must be at most sys.maxsize ({sys.maxsize}) items, got {value!r}")
    return value


def timeout(name: str, value: Any) -> float | None:
    """Seconds, or None for no limit. ``inf`` also means no limit. A finite value of any size is kept as it is:
    the engine never blocks longer than a bounded time in one go, so a huge timeout cannot overflow a system call.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, inf or None (no limit), got {value!r}")
    return None if math.isinf(value) else float(value)


def backoff(name: str, value: Any) -> float:
    """Seconds to wait before a retry: finite, or the retry would never happen and the call would never end."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ConfigError(f"{name} must be a finite number of seconds >= 0 (with inf a failed task would wait for "
                          f"ever for its retry), got {value!r}")
    return float(value)


def wait_timeout(name: str, value: Any) -> float | None:
    """How long a caller waits for a result: None or inf wait for ever, 0 or less does not wait (as
    multiprocessing's AsyncResult.get)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{name} must be a number of seconds or None, got {value!r}")
    return None if value == math.inf else float(value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


def start_method(value: Any) -> str:
    if value not in START_METHODS:
        raise ConfigError(f"start_method must be one of {', '.join(map(repr, START_METHODS))}, got {value!r}")
    if value != "threading" and value not in multiprocessing.get_all_start_methods():
        raise ConfigError(f"start_method {value!r} is not available on this platform")
    return str(value)


def n_jobs_value(name: str, value: Any) -> int | None:
    """Check an n_jobs value without resolving it: a non-zero integer or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value == 0):
        raise ConfigError(f"{name} must be a positive integer, a negative count from the CPU total (-1 = all, -k = "
                          f"all but k-1) or None, got {value!r}")
    return value


def n_jobs(value: Any, available: Callable[[], int]) -> int:
    """None means every available CPU; -k means all but k-1 (at least 1). *available* counts them, called only
    then (cpu_count reads the cgroup files)."""
    checked = n_jobs_value("n_jobs", value)
    if checked is None:
        return available()
    return checked if checked > 0 else max(1, available() + 1 + checked)


def cpu_sets(name: str, value: Any) -> tuple[tuple[int, ...], ...]:
    """The CPU set of each entry of *value*; every CPU must be one this process may run on (its affinity)."""
    if not isinstance(value, Sequence) or isinstance(value, str | bytes) or not value:
        raise ConfigError(f"{name} must be a non-empty list of CPU ids or of lists of CPU ids, got {value!r}")
    usable = _usable_cpus()
    sets: list[tuple[int, ...]] = []
    for entry in value:
        ids = (entry,) if isinstance(entry, int) and not isinstance(entry, bool) else entry
        if not isinstance(ids, Sequence) or isinstance(ids, str | bytes) or not ids:
            raise ConfigError(f"{name} entries must be a CPU id or a non-empty list of CPU ids, got {entry!r}")
        for cpu in ids:
            if isinstance(cpu, bool) or not isinstance(cpu, int) or cpu not in usable:
                raise ConfigError(f"{name} contains {cpu!r}, which is not a CPU this process may run on (it may "
                                  f"use CPUs {_describe_cpus(usable)})")
        sets.append(tuple(ids))
    return tuple(sets)


def cpu_ids(value: Any, n_workers: int) -> tuple[tuple[int, ...] | None, ...]:
    """Per-worker CPU sets. One entry pins every worker to it; otherwise one entry per worker."""
    if value is None:
        return ()
    sets = cpu_sets("cpu_ids", value)
    if len(sets) not in (1, n_workers):
        raise ConfigError(f"cpu_ids must have 1 entry (for every worker) or n_jobs={n_workers} entries, "
                          f"got {len(sets)}: {value!r}")
    if len(sets) == 1:
        return sets * n_workers
    return sets


def _usable_cpus() -> set[int]:
    """The CPUs this process may run on: its affinity mask, read fresh (it can change), or all of them."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # AttributeError: no sched_getaffinity (macOS, Windows)
        return set(range(os.cpu_count() or 1))


def _describe_cpus(cpus: set[int]) -> str:
    """"0-3, 8, 10-11": runs of consecutive ids, so a 128-CPU mask stays readable."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# What a pool costs the parent, for worker_limits(). Per process worker: its task and result pipes, its exit
# descriptor (a pidfd), its task arena (a memfd), and the two pipe ends multiprocessing keeps for its Process.
FDS_PER_PROCESS_WORKER = 6
# Per pool: the wake-up pipe, the selector and the lifeline pipe, plus what a worker being started holds only in
# passing (the child's pipe ends, the result ring's memfd, multiprocessing's start-up pipes).
FDS_PER_PROCESS_POOL = 12
TASKS_PER_PROCESS_WORKER = 2  # the process and its lifeline thread: both count against RLIMIT_NPROC
# A Dask worker is one socket here; a Dask pool adds its listening socket, selector and wake-up pipe.
FDS_PER_DASK_WORKER = 1
FDS_PER_DASK_POOL = 4


def worker_limits(n_jobs: int, start_method: str) -> None:
    """Fail at once, naming n_jobs and the limit, if the system cannot give this pool its workers.

    Checked when a pool is about to start (limits and open descriptors change), not when the option is set.
    Without it an absurd n_jobs forks until the descriptors run out and fails halfway, after many seconds.
    """
    # Descriptors: none for threads; a Dask worker is one socket here (without the check, a million workers were
    # a million Dask tasks queued before the first socket failed).
    fds = {"threading": None, "dask": (FDS_PER_DASK_WORKER, FDS_PER_DASK_POOL, "Dask worker's connection")}.get(
        start_method, (FDS_PER_PROCESS_WORKER, FDS_PER_PROCESS_POOL, "worker process"))
    room = _free_fds() if fds is not None else None
    if fds is not None and room is not None and n_jobs * fds[0] + fds[1] > room[0]:
        per_worker, per_pool, what = fds
        most = max(0, (room[0] - per_pool) // per_worker)
        raise ConfigError(
            f"n_jobs={n_jobs} needs about {n_jobs * per_worker + per_pool} file descriptors ({per_worker} per "
            f"{what}), but this process may open only {room[0]} more (RLIMIT_NOFILE {room[1]}, "
            f"{room[1] - room[0]} open): use at most n_jobs={most}, or raise the limit (ulimit -n, "
            "resource.setrlimit)")
    if start_method == "dask":
        return  # its workers are tasks on the cluster, not processes or threads of this machine
    processes = start_method != "threading"
    per_worker = TASKS_PER_PROCESS_WORKER if processes else 1
    limits = _task_limits()
    if limits and n_jobs * per_worker > min(limits)[0]:
        limit, name = min(limits)
        what = "worker processes (each with a helper thread)" if processes else "worker threads"
        raise ConfigError(f"n_jobs={n_jobs} {what} need {n_jobs * per_worker} processes or threads, more than "
                          f"{name} allows ({limit}): use at most n_jobs={limit // per_worker}")


def _free_fds() -> tuple[int, int] | None:
    """(descriptors this process may still open, its RLIMIT_NOFILE), or None where that cannot be read."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        for listing in ("/proc/self/fd", "/dev/fd"):
            with contextlib.suppress(OSError):
                return soft - (len(os.listdir(listing)) - 1), soft  # - 1: listdir's own descriptor
    except ImportError:  # no resource module (Windows)
        pass
    return None


def _task_limits() -> list[tuple[int, str]]:
    """Caps on how many processes and threads may exist: this user's RLIMIT_NPROC (root is exempt from it) and
    the system's kernel.threads-max and kernel.pid_max (every process and thread takes a pid)."""
    limits: list[tuple[int, str]] = []
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
        if soft != resource.RLIM_INFINITY and os.getuid() != 0:
            limits.append((soft, "this user's RLIMIT_NPROC (ulimit -u)"))
    except (ImportError, AttributeError):  # no resource module, or no RLIMIT_NPROC on this platform
        pass
    for name in ("threads-max", "pid_max"):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/sys/kernel/{name}") as file:
            limits.append((int(file.read()), f"the system's kernel.{name}"))
    return limits
