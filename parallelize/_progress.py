"""Progress bars: which renderer a call gets, its options checked up front, and the counts it is shown.

A bar consumes its job's progress and never touches workers. Counts come from two places, both in the parent:
each finished chunk (Job), and a few times a second the tasks done so far inside the chunks running now, which
the engine reads from the workers' clocks (_progress_feed). The bar keeps the highest count it has shown, capped
at the total, so a chunk sent again after a worker died is never counted twice and the bar never goes back.

Styles: "std" (tqdm text bar), "notebook" (tqdm's Jupyter widget), "rich", "log" (plain lines, _progress_log),
"dashboard" (the browser dashboard only, nothing in the terminal) and "auto", the default: a tqdm bar on a terminal,
the widget inside a Jupyter kernel, log lines anywhere else (a CI log, a file). The renderers live in modules of
their own, imported only when a bar is drawn.

While a dashboard is on in this process (parallelize.dashboard, started here or connected to), every call also
feeds it, whatever its bar: the dashboard is one more renderer of the same counts.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from . import _env
from ._errors import ConfigError

if TYPE_CHECKING:
    from ._job import Job
    from ._runner import Runner

STYLES = (None, "auto", "std", "notebook", "rich", "log", "dashboard")
INTERVAL_VARIABLE = "PARALLELIZE_PROGRESS_INTERVAL"  # seconds between two lines of the log style
DASHBOARD_VARIABLE = "PARALLELIZE_DASHBOARD"  # 1: start a dashboard on the first call that has none
_EXTRAS = {"rich": ("rich", "rich"), "notebook": ("ipywidgets", "notebook")}  # style -> (module, extra)


# --- checks -----------------------------------------------------------------------------------------------------


def check_enabled(name: str, value: Any) -> bool | str:
    if value is not True and value is not False and not (isinstance(value, str) and value == "auto"):
        raise ConfigError(f"{name} must be True, False or 'auto' (a bar only where someone watches: a terminal or a "
                          f"Jupyter notebook), got {value!r}")
    return value


def check_style(name: str, value: Any) -> str | None:
    if not isinstance(value, str | None) or value not in STYLES:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, STYLES))}, got {value!r}")
    return value


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _writable(value: Any) -> bool:
    return callable(getattr(value, "write", None))


def _text_or_flag(value: Any) -> bool:
    return isinstance(value, str | bool)


def _number_or_flag(value: Any) -> bool:
    return isinstance(value, int | float)


def _postfix(value: Any) -> bool:
    return isinstance(value, str | dict)


def _lock_args(value: Any) -> bool:
    return isinstance(value, tuple)


# tqdm's keyword arguments (every style takes the same ones, so options that suit a terminal never fail in a CI log,
# where "auto" draws log lines): (check, what it must be, whether None is allowed).
_OPTIONS: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "desc": (_text, "a string", True),
    "leave": (_flag, "True or False", True),
    "file": (_writable, "a file-like object with a write() method", True),
    "ncols": (_integer, "an integer", True),
    "mininterval": (_number, "a number of seconds", False),
    "maxinterval": (_number, "a number of seconds", False),
    "miniters": (_number, "a number", True),
    "ascii": (_text_or_flag, "True, False or a string of characters", True),
    "disable": (_flag, "True or False", True),
    "unit": (_text, "a string", False),
    "unit_scale": (_number_or_flag, "True, False or a number", False),
    "dynamic_ncols": (_flag, "True or False", False),
    "smoothing": (_number, "a number from 0 to 1", False),
    "bar_format": (_text, "a string", True),
    "initial": (_number, "a number", False),
    "position": (_integer, "an integer", True),
    "postfix": (_postfix, "a dict or a string", True),
    "unit_divisor": (_number, "a number", False),
    "write_bytes": (_flag, "True or False", False),
    "lock_args": (_lock_args, "a tuple", True),
    "nrows": (_integer, "an integer", True),
    "colour": (_text, "a colour name or hex code", True),
    "delay": (_number, "a number of seconds", False),
}
_RESERVED = ("total", "iterable")


def check_options(name: str, options: Any) -> dict[str, Any] | None:
    """progress_bar_options: a dict of tqdm keyword arguments, each known and of the right type."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise ConfigError(f"{name} must be a dict of tqdm keyword arguments or None, got {options!r}")
    for key, value in options.items():
        if key in _RESERVED:
            raise ConfigError(f"{name} may not set {key!r}: parallelize sets it from the input (give iterable_len "
                              "for an input without a length)")
        known = _OPTIONS.get(key)
        if known is None:
            import difflib

            close = difflib.get_close_matches(str(key), _OPTIONS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(_OPTIONS))}"
            raise ConfigError(f"{name} has an unknown key {key!r}; {hint}")
        accepts, what, none_allowed = known
        if not (accepts(value) or (none_allowed and value is None)):
            raise ConfigError(f"{name}[{key!r}] must be {what}{' or None' if none_allowed else ''}, got {value!r}")
    return options


def check_progress(enabled: Any, style: Any, options: Any) -> None:
    """Everything about a call's bar that can be wrong, checked before any work starts: the values, and when a bar
    is on, the package its style needs and PARALLELIZE_PROGRESS_INTERVAL."""
    check_enabled("progress_bar", enabled)
    check_style("progress_bar_style", style)
    check_options("progress_bar_options", options)
    if enabled:
        _ready(style)


def _ready(style: str | None) -> None:
    from ._progress_log import interval

    interval()  # checked wherever the bar is drawn: a bad value found on a terminal does not wait for a CI log
    if style in _EXTRAS:
        module, extra = _EXTRAS[style]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"progress_bar_style={style!r} needs the {module} package, which is not installed: "
                              f"pip install 'parallelize[{extra}]'")


def callable_name(func: Any) -> str:
    """What a bar calls the function it shows (a WorkerPool's: a function, a partial, a callable object)."""
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__


# --- the choice of renderer -------------------------------------------------------------------------------------


def make_bar(enabled: bool | str, style: str | None, options: dict[str, Any] | None,
             name: str) -> ProgressBar | None:
    """The bar of one call named *name* (the function), not drawn yet; None when no bar is to be shown.

    *enabled* "auto" shows one only where someone watches it as it moves: a terminal or a Jupyter notebook. A
    dashboard on in this process watches every call: then the bar feeds it too, or is made for it alone.
    """
    dashboard = _dashboard_for(bool(enabled) and style == "dashboard")
    if not enabled:
        return _dashboard_only(name, dashboard)
    _ready(style)
    if style == "dashboard":
        return _dashboard_only(name, dashboard)
    options = options or {}
    watched = _watched_style(options)
    if enabled == "auto" and watched is None:
        return _dashboard_only(name, dashboard)
    if style is None or style == "auto":
        style = watched or "log"
    return ProgressBar(style, name, options, dashboard)


def _dashboard_only(name: str, dashboard: DashboardFeed | None) -> ProgressBar | None:
    return None if dashboard is None else ProgressBar("dashboard", name, {}, dashboard)


def _watched_style(options: dict[str, Any]) -> str | None:
    """The style "auto" draws where someone watches the bar move; None where nobody does (a pipe, a file)."""
    if "file" in options and options["file"] is not None:
        return "std" if _is_terminal(options["file"]) else None
    if _in_jupyter_kernel():
        # A kernel shows carriage returns as a line redrawn in place: without ipywidgets, tqdm's text bar works.
        return "notebook" if importlib.util.find_spec("ipywidgets") is not None else "std"
    return "std" if _is_terminal(sys.stderr) else None


def _is_terminal(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, a closed file
        return False


def _in_jupyter_kernel() -> bool:
    """Inside a Jupyter kernel (IPython's ZMQ shell, or a shell built on it), without importing IPython."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    shell = get_ipython()
    return shell is not None and any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__)


# --- the dashboard ------------------------------------------------------------------------------------------------


class DashboardFeed(Protocol):
    """A dashboard this process shows its calls on (parallelize.dashboard): one renderer per call."""

    def open(self, name: str, job: Job, runner: Runner | None) -> Renderer: ...


# Set by parallelize.dashboard while a dashboard is started in this process or connected to, with the pid that set
# it: a child made by os.fork() inherits the setting but neither the server thread nor the connection.
_dashboard: tuple[int, DashboardFeed] | None = None


def set_dashboard(feed: DashboardFeed | None) -> None:
    global _dashboard
    _dashboard = None if feed is None else (os.getpid(), feed)


def _dashboard_for(wanted: bool) -> DashboardFeed | None:
    """The dashboard a call feeds: the one on in this process, or one started now when the call asks for the
    dashboard style (*wanted*) or PARALLELIZE_DASHBOARD=1 asks for one; None in a worker, which never talks to it."""
    _, started_by_variable = _env.read(DASHBOARD_VARIABLE, _env.parse_bool)  # a bad value fails every call
    from ._worker import in_worker

    if in_worker():
        return None
    if _dashboard is not None and _dashboard[0] == os.getpid():
        return _dashboard[1]
    if not (wanted or started_by_variable):
        return None
    from .dashboard import _control

    return _control.start_for_calls()


# --- the bar of one call ------------------------------------------------------------------------------------------


class Renderer(Protocol):
    """What draws a bar: counts that only grow, a total once it is known, failed items (on_error return/skip)."""

    def update(self, done: int, total: int | None, failed: int) -> None: ...

    def close(self, done: int, total: int | None, failed: int, outcome: str) -> None: ...


class ProgressBar:
    """One call's bar: attached to its job before the job is submitted, closed once when the call ends. It draws
    through its renderers: the style's (none for "dashboard"), and the dashboard's while one is on."""

    def __init__(self, style: str, name: str, options: dict[str, Any],
                 dashboard: DashboardFeed | None = None) -> None:
        self.style = style  # "std", "notebook", "rich", "log" or "dashboard"
        self._name = name
        self._options = options
        self._dashboard = dashboard
        self._renderers: list[Renderer] = []
        self._job: Job | None = None
        self._shown = 0
        # The driver thread advances the bar, the caller's thread closes it; the two may differ.
        self._lock = threading.Lock()

    def attach(self, job: Job, runner: Runner | None = None) -> None:
        """Draw the bar for *job* (run by *runner*), which from now on reports to it: per finished chunk, and
        (job.progress) per task from the engine's clock reads."""
        self._job = job
        if self.style != "dashboard":
            self._renderers.append(_open(self.style, self._name, job.n_tasks, self._options, job.on_error != "raise"))
        if self._dashboard is not None:
            self._renderers.append(self._dashboard.open(self._name, job, runner))
        job.progress = self
        job.progress_listeners.append(self._chunk_done)

    def _chunk_done(self, size: int) -> None:
        if self._job is not None:
            self.advance(self._job, 0)

    def advance(self, job: Job, running: int) -> None:
        """*job*'s finished tasks plus *running*: those done so far in chunks not finished yet."""
        with self._lock:
            if not self._renderers:
                return  # closed
            total = _total(job)
            done = max(self._shown, job.n_completed_tasks + running)
            self._shown = done if total is None else min(done, total)
            for renderer in list(self._renderers):
                try:
                    renderer.update(self._shown, total, job.n_failed)
                except Exception:
                    # A bar that cannot draw (its file closed, say) must not fail the call it watches.
                    import logging

                    self._renderers.remove(renderer)
                    logging.getLogger("parallelize").warning(
                        "parallelize: the progress bar of %s failed and is turned off", self._name, exc_info=True)

    def close(self, outcome: str) -> None:
        """The call ended: *outcome* is "done", "failed" or "stopped" (the caller left early)."""
        with self._lock:
            renderers, self._renderers = self._renderers, []
            job = self._job
            if job is None:
                return
            total = _total(job)
            done = job.n_completed_tasks if outcome == "done" else max(self._shown, job.n_completed_tasks)
            for renderer in renderers:
                renderer.close(done, total, job.n_failed, outcome)


def _total(job: Job) -> int | None:
    """The number of tasks: once the input has run out, how many it gave (a generator's total, or fewer than
    iterable_len said); before, its length or iterable_len if known."""
    return job.tasks_read if job.exhausted else job.n_tasks


def _open(style: str, name: str, total: int | None, options: dict[str, Any], show_failed: bool) -> Renderer:
    if style == "log":
        from ._progress_log import LogBar

        return LogBar(name, total, options, show_failed)
    if style == "rich":
        from ._progress_rich import RichBar

        return RichBar(name, total, options, show_failed)
    from ._progress_tqdm import TqdmBar

    return TqdmBar(name, total, options, show_failed, notebook=style == "notebook")
