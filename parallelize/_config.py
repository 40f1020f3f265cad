"""Configuration: one table of options, resolved in layers into one frozen record.

Precedence, highest first: call keyword > ``with config(...)`` > decorator argument > PARALLELIZE_* variable >
built-in default. Two variables override everything: PARALLELIZE_MAX_CPU caps n_jobs and PARALLELIZE_DISABLE=1
runs every call serially in-process. Variables are read at call time. Every value is checked where it enters,
so a bad one fails before any process starts, with a ConfigError naming the option, the value and what is allowed.
"""

from __future__ import annotations

import contextlib
import contextvars
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from . import _env
from . import _validation as check
from ._errors import ConfigError
from ._progress import DASHBOARD_VARIABLE, INTERVAL_VARIABLE, check_enabled, check_options, check_style

BACKENDS = ("process", "thread", "serial", "dask")
ON_ERROR = ("raise", "return", "skip")
_MEMORY_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
                 "g": 2**30, "gb": 10**9, "gib": 2**30}
_MAX_MEMORY = 2**63 - 1


def _default_start_method() -> str:
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _positive_int(name: str, value: Any) -> Any:
    return check.positive_int(name, value)


def _timeout(name: str, value: Any) -> Any:
    return check.timeout(name, value)


def _flag(name: str, value: Any) -> Any:
    return check.flag(name, value)


def _choice(choices: tuple[Any, ...]) -> Callable[[str, Any], Any]:
    def validate(name: str, value: Any) -> Any:
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    return validate


def _start_method(name: str, value: Any) -> Any:
    if value not in check.START_METHODS:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, check.START_METHODS))}, got {value!r}")
    return check.start_method(value)


def _callable_or_none(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise ConfigError(f"{name} must be callable or None, got {value!r}")
    return value


def _non_negative_int(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _memory(name: str, value: Any) -> Any:
    """Bytes as an int, or a string with a unit: "512MiB", "2GB", "1.5g"."""
    if value is None:
        return None
    size = value
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):]
        try:
            size = float(number) * _MEMORY_UNITS[unit]
        except (ValueError, KeyError):
            raise ConfigError(f"{name} must be a number of bytes or a size like '512MiB' or '2GB', "
                              f"got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a positive number of bytes or a size like '512MiB', got {value!r}")
    if not 1 <= size <= _MAX_MEMORY:  # also catches nan and inf ("1e999GB")
        raise ConfigError(f"{name} must be from 1 byte to 8 EiB (2**63 - 1 bytes, the most a process can "
                          f"address), got {value!r}")
    return int(size)


def _cpu_ids(name: str, value: Any) -> Any:
    """Checked now for what does not depend on n_jobs (at decoration time); the count per worker at the call."""
    if value is not None:
        check.cpu_sets(name, value)
    return value


def _anything(name: str, value: Any) -> Any:
    return value


def _cluster(name: str, value: Any) -> Any:
    """A scheduler address, a distributed.Client or a Dask cluster object (checked by its module or its
    scheduler_address: distributed is imported only when a pool uses it)."""
    if value is None or (isinstance(value, str) and value.strip()) or type(value).__module__.startswith(
            "distributed.") or isinstance(getattr(value, "scheduler_address", None), str):
        return value
    raise ConfigError(f"{name} must be a Dask scheduler address such as 'tcp://10.0.0.5:8786', a "
                      f"distributed.Client, a Dask cluster object or None (a local cluster), got {value!r}")


class _Option(NamedTuple):
    default: Any
    validate: Callable[[str, Any], Any]
    env: _env.Parser | None = None  # None: not settable from the environment (code objects, signatures)


OPTIONS: dict[str, _Option] = {
    "n_jobs": _Option(None, check.n_jobs_value, _env.parse_int),
    "backend": _Option("process", _choice(BACKENDS), _env.parse_str),
    "start_method": _Option(None, _start_method, _env.parse_str),
    "chunk_size": _Option(None, check.chunk_size, _env.parse_chunk_size),
    "n_splits": _Option(None, _positive_int, _env.parse_int),
    "max_tasks_active": _Option(None, _positive_int, _env.parse_int),
    "worker_lifespan": _Option(None, _positive_int, _env.parse_int),
    "task_timeout": _Option(None, _timeout, _env.parse_float),
    "worker_init_timeout": _Option(None, _timeout, _env.parse_float),
    "worker_exit_timeout": _Option(None, _timeout, _env.parse_float),
    "progress_bar": _Option(False, check_enabled, _env.parse_bool_or_auto),
    "progress_bar_options": _Option(None, check_options),
    "progress_bar_style": _Option(None, check_style, _env.parse_str),
    "on_error": _Option("raise", _choice(ON_ERROR), _env.parse_str),
    "retries": _Option(0, _non_negative_int, _env.parse_int),
    "retry_backoff": _Option(0.0, check.backoff, _env.parse_float),
    "max_worker_memory": _Option(None, _memory, _env.parse_str),
    "enable_insights": _Option(False, _flag, _env.parse_bool),
    "daemon": _Option(True, _flag, _env.parse_bool),
    "keep_alive": _Option(True, _flag, _env.parse_bool),
    "nested": _Option(False, _flag, _env.parse_bool),
    "pass_worker_id": _Option(False, _flag),
    "worker_state": _Option(False, _flag),
    "shared_objects": _Option(None, _anything),
    "cpu_ids": _Option(None, _cpu_ids),
    "worker_init": _Option(None, _callable_or_none),
    "worker_exit": _Option(None, _callable_or_none),
    "cluster": _Option(None, _cluster, _env.parse_str),
}

MAX_CPU_VARIABLE = "PARALLELIZE_MAX_CPU"
DISABLE_VARIABLE = "PARALLELIZE_DISABLE"
START_TIMEOUT_VARIABLE = "PARALLELIZE_WORKER_START_TIMEOUT"
# Seconds a new worker may take to reach its worker_init (or its first ready report, without one): generous for a
# spawned worker importing a heavy main module on a busy machine, but finite, so a start that hangs (an import
# from a stalled network file system, say) is killed and replaced instead of holding every call for ever.
DEFAULT_START_TIMEOUT = 120.0
DASK_HOST_VARIABLE = "PARALLELIZE_DASK_HOST"  # backend="dask": the address its workers connect back to
DASHBOARD_KEY_VARIABLE = "PARALLELIZE_DASHBOARD_KEY"  # the key connect_to_dashboard() sends, when none is given
ENV_VARIABLES = {f"{_env.PREFIX}{name.upper()}": name for name, opt in OPTIONS.items() if opt.env is not None}


# A NamedTuple rather than a frozen dataclass: a dataclass of 28 fields takes about 1 ms to build at import.
class Options(NamedTuple):
    """The effective configuration of one call. Built only by ``resolve``, by keyword."""

    n_jobs: int
    backend: str
    start_method: str
    chunk_size: int | float | None
    n_splits: int | None
    max_tasks_active: int | None
    worker_lifespan: int | None
    task_timeout: float | None
    worker_init_timeout: float | None
    worker_exit_timeout: float | None
    progress_bar: bool | str  # True, False or "auto"
    progress_bar_options: dict[str, Any] | None
    progress_bar_style: str | None
    on_error: str
    retries: int
    retry_backoff: float
    max_worker_memory: int | None
    enable_insights: bool
    daemon: bool
    keep_alive: bool
    nested: bool
    pass_worker_id: bool
    worker_state: bool
    shared_objects: Any
    cpu_ids: tuple[tuple[int, ...] | None, ...]
    worker_init: Callable[..., Any] | None
    worker_exit: Callable[..., Any] | None
    cluster: Any  # backend "dask": the scheduler's address or a distributed.Client; None: a local cluster
    disabled: bool  # PARALLELIZE_DISABLE: run serially in-process


def validate(overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check option names and values given in code (decorator, config(), call keywords)."""
    checked: dict[str, Any] = {}
    for name, value in overrides.items():
        option = OPTIONS.get(name)
        if option is None:
            import difflib

            close = difflib.get_close_matches(name, OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{where} got an unknown option {name!r}{hint}")
        checked[name] = option.validate(name, value)
    return checked


_scoped: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("parallelize_config", default={})  # noqa: B039 (never mutated)


@contextlib.contextmanager
def config(**options: Any) -> Iterator[None]:
    """Set options for the parallel calls made inside a ``with`` block.

    The options apply in this thread or asyncio task only (a ``ContextVar``), and blocks nest. They beat the
    decorator's arguments and the ``PARALLELIZE_*`` variables; a call's own keywords beat them. ``WorkerPool``
    takes ``progress_bar_style`` from here.

    Args:
        **options: any option of ``parallel``.

    Raises:
        TypeError: an unknown option (with the closest known one suggested).
        ConfigError: an option has a value that is not allowed.

    Example:
        ```python
        with config(n_jobs=2, progress_bar=True):
            results = f(items)
        ```
    """
    checked = validate(options, "config()")
    token = _scoped.set({**_scoped.get(), **checked})
    try:
        yield
    finally:
        _scoped.reset(token)


def resolve(decorator: Mapping[str, Any], call: Mapping[str, Any]) -> tuple[Options, dict[str, str]]:
    """The effective options and where each came from. Validates the environment; call/decorator are pre-checked."""
    check_environment()
    environment = _env.variables()  # (most options are set by no variable: looked up here, parsed when set)
    scoped = _scoped.get()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, option in OPTIONS.items():
        variable = f"{_env.PREFIX}{name.upper()}"
        if name in call:
            values[name], sources[name] = call[name], "call"
        elif name in scoped:
            values[name], sources[name] = scoped[name], "config()"
        elif name in decorator:
            values[name], sources[name] = decorator[name], "decorator"
        elif option.env is not None and variable in environment and (found := _env.read(variable, option.env))[0]:
            values[name], sources[name] = _validate_env(variable, name, option, found[1]), variable
        else:
            values[name], sources[name] = option.default, "default"
    if values["backend"] == "dask":
        # Every thread of the cluster by default (connecting to it now: an unreachable one fails this call).
        values["n_jobs"] = check.n_jobs(values["n_jobs"], lambda: _cluster_threads(values["cluster"]))
        values["start_method"] = "dask"
    else:
        values["n_jobs"] = check.n_jobs(values["n_jobs"], cpu_count)
        cap = max_cpu()
        if cap is not None and values["n_jobs"] > cap:
            values["n_jobs"], sources["n_jobs"] = cap, MAX_CPU_VARIABLE
    if values["start_method"] is None:
        values["start_method"] = _default_start_method()
    if values["backend"] == "thread":
        values["start_method"] = "threading"
    values["cpu_ids"] = check.cpu_ids(values["cpu_ids"], values["n_jobs"])
    values["disabled"] = disabled() or values["backend"] == "serial"
    sources["disabled"] = DISABLE_VARIABLE if _env.read(DISABLE_VARIABLE, _env.parse_str)[0] else "default"
    return Options(**values), sources


def _cluster_threads(cluster: Any) -> int:
    from .backends import _dask_cluster

    return _dask_cluster.total_threads(_dask_cluster.client_for(cluster, None))


def cpu_count() -> int:
    """``parallelize.cpu_count()``, its module imported on first use: with pathlib and its cgroup parsing it is
    needed only where n_jobs is left to the number of CPUs."""
    from ._cpu import cpu_count

    return cpu_count()


def configured(name: str) -> Any:
    """Option *name* as config() or its PARALLELIZE_* variable sets it, else its default: what a WorkerPool
    takes for an argument left at None (progress_bar_style, as MPIRE's PROGRESS_BAR_DEFAULT_STYLE)."""
    scoped = _scoped.get()
    if name in scoped:
        return scoped[name]
    option = OPTIONS[name]
    variable = f"{_env.PREFIX}{name.upper()}"
    if option.env is not None and (found := _env.read(variable, option.env))[0]:
        return _validate_env(variable, name, option, found[1])
    return option.default


def check_environment() -> None:
    """Warn once about each PARALLELIZE_* variable that nothing reads (a typo)."""
    _env.warn_unknown([*ENV_VARIABLES, MAX_CPU_VARIABLE, DISABLE_VARIABLE, START_TIMEOUT_VARIABLE, INTERVAL_VARIABLE,
                       DASHBOARD_VARIABLE, DASHBOARD_KEY_VARIABLE, DASK_HOST_VARIABLE])


def max_cpu() -> int | None:
    """PARALLELIZE_MAX_CPU: the cap on n_jobs, or None when it is not set."""
    _, cap = _env.read(MAX_CPU_VARIABLE, _env.parse_int)
    if cap is not None and cap < 1:
        raise ConfigError(f"{MAX_CPU_VARIABLE}={cap!r} must be a positive integer")
    return cap  # type: ignore[no-any-return]


def worker_start_timeout() -> float | None:
    """PARALLELIZE_WORKER_START_TIMEOUT: seconds a worker may take to start (None: no limit)."""
    found, value = _env.read(START_TIMEOUT_VARIABLE, _env.parse_float)
    if not found:
        return DEFAULT_START_TIMEOUT
    if value is not None and not 0 < value < float("inf"):
        text = os.environ[START_TIMEOUT_VARIABLE]
        raise ConfigError(f"{START_TIMEOUT_VARIABLE}={text!r} must be a positive number of seconds, or none")
    return value  # type: ignore[no-any-return]


def disabled() -> bool:
    """PARALLELIZE_DISABLE: run everything serially in the calling process."""
    _, value = _env.read(DISABLE_VARIABLE, _env.parse_bool)
    return bool(value)


def _validate_env(variable: str, name: str, option: _Option, value: Any) -> Any:
    try:
        return option.validate(name, value)
    except ConfigError as exc:
        raise ConfigError(f"{variable}: {exc}") from None


def show_config(func: Any = None) -> str:
    """Print each effective option and where its value comes from: a call keyword aside, what a call would use.

    Args:
        func: a decorated function, whose decorator options count; ``None`` for the defaults.

    Returns:
        The text printed: one line per option, its value, and its source (``default``, ``decorator``,
            ``config()``, or the ``PARALLELIZE_*`` variable that set it).

    Raises:
        ConfigError: a ``PARALLELIZE_*`` variable has a value that is not allowed.
    """
    decorator = getattr(func, "decorator_options", {}) if func is not None else {}
    options, sources = resolve(decorator, {})
    width = max(map(len, sources))
    lines = [f"{name:<{width}}  {getattr(options, name)!r:<24}  ({sources[name]})"
             for name in Options._fields]
    text = "\n".join(lines)
    print(text)
    return text
