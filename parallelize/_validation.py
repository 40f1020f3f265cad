"""Checks for option values. Each names the option, shows the value, and says what is allowed."""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Sequence
from typing import Any

from ._errors import ConfigError

START_METHODS = ("fork", "forkserver", "spawn", "threading")


def positive_int(name: str, value: Any, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a positive integer" + (" or None" if allow_none else "")
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")
    return value


def timeout(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds or None, got {value!r}")
    return float(value)


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


def n_jobs(value: Any, available: int) -> int:
    """None means every available CPU; -k means all but k-1 (at least 1)."""
    checked = n_jobs_value("n_jobs", value)
    if checked is None:
        return available
    return checked if checked > 0 else max(1, available + 1 + checked)


def cpu_ids(value: Any, n_workers: int) -> tuple[tuple[int, ...] | None, ...]:
    """Per-worker CPU sets. One entry pins every worker to it; otherwise one entry per worker."""
    if value is None:
        return ()
    if not isinstance(value, Sequence) or isinstance(value, str | bytes) or not value:
        raise ConfigError(f"cpu_ids must be a non-empty list of CPU ids or of lists of CPU ids, got {value!r}")
    if len(value) not in (1, n_workers):
        raise ConfigError(f"cpu_ids must have 1 entry (for every worker) or n_jobs={n_workers} entries, "
                          f"got {len(value)}: {value!r}")
    n_cpus = os.cpu_count() or 1
    sets: list[tuple[int, ...]] = []
    for entry in value:
        ids = (entry,) if isinstance(entry, int) and not isinstance(entry, bool) else entry
        if not isinstance(ids, Sequence) or isinstance(ids, str | bytes) or not ids:
            raise ConfigError(f"cpu_ids entries must be a CPU id or a non-empty list of CPU ids, got {entry!r}")
        for cpu in ids:
            if isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu < n_cpus:
                raise ConfigError(f"cpu_ids contains {cpu!r}; CPU ids must be integers from 0 to {n_cpus - 1}")
        sets.append(tuple(ids))
    if len(sets) == 1:
        return (sets[0],) * n_workers
    return tuple(sets)
