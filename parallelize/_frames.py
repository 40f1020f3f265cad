"""Telling the user's stack frames from the library's: warnings that point at the user's line, and tracebacks
that end with the user's call instead of deep inside the library."""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections.abc import Callable
from types import CodeType, FrameType, TracebackType
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def is_library_file(filename: str) -> bool:
    return filename.startswith(_PACKAGE_DIR)


def _first_user_frame(frame: FrameType | None) -> tuple[FrameType | None, int]:
    """The first frame outside the package, from *frame* outwards, and how many frames up it is (1: *frame*)."""
    level = 1
    while frame is not None and is_library_file(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return frame, level


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the caller point at the first frame outside the
    package, whatever the call path (decorator call, imap, WorkerPool.map); 1 if the stack has no such frame."""
    frame, level = _first_user_frame(sys._getframe(1))
    return level if frame is not None else 1


class UserSite:
    """Where the user's code called into the package, kept (without the frame) for a warning issued later from
    another thread, which has no user frame on its stack: ``warn`` attributes it to that line as
    ``warnings.warn`` would."""

    def __init__(self) -> None:
        frame, _ = _first_user_frame(sys._getframe(1))
        self.filename = frame.f_code.co_filename if frame is not None else "<unknown>"
        self.lineno = frame.f_lineno if frame is not None else 0
        self.module_globals: dict[str, Any] | None = frame.f_globals if frame is not None else None

    def warn(self, message: str, category: type[Warning]) -> None:
        import warnings

        module_globals = self.module_globals
        if module_globals is None:
            warnings.warn_explicit(message, category, self.filename, self.lineno)
            return
        warnings.warn_explicit(message, category, self.filename, self.lineno,
                               module=module_globals.get("__name__", "<unknown>"),
                               registry=module_globals.setdefault("__warningregistry__", {}),
                               module_globals=module_globals)


# --- tracebacks ---------------------------------------------------------------------------------------------------

# The functions that raise a job's error (a task's exception, a dead worker, a timeout) in the caller: their frame
# is kept in a tidied traceback, as the one line of the library the user sees.
_JOB_ERROR_RAISERS: set[CodeType] = set()


def raises_job_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Mark *func* as one that raises job errors (see hide_library_frames)."""
    _JOB_ERROR_RAISERS.add(func.__code__)
    return func


def skip_leading_library_frames(tb: TracebackType | None) -> TracebackType | None:
    """*tb* from its first frame outside the package (a worker's chunk loop is noise in a task's traceback); its
    last frame if every frame is the library's, since that frame then says where the error came from."""
    while tb is not None and tb.tb_next is not None and is_library_file(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


def _entries(tb: TracebackType | None) -> list[TracebackType]:
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    return entries


def drop_library_frames(tb: TracebackType | None) -> TracebackType | None:
    """*tb* without the library's frames, except the line of a function that raises job errors where the error
    has no frames of its own below it (it came from a worker): an error raised in this process (a task in serial
    mode, the input iterable) shows where it was raised instead."""
    entries = _entries(tb)
    kept = [entry for entry in entries if not is_library_file(entry.tb_frame.f_code.co_filename)
            or (entry is entries[-1] and entry.tb_frame.f_code in _JOB_ERROR_RAISERS)]
    for outer, inner in itertools.pairwise(kept):
        outer.tb_next = inner
    if kept:
        kept[-1].tb_next = None
    return kept[0] if kept else None


def hide_library_frames(exc: BaseException) -> None:
    """Drop the library's frames from *exc*'s traceback, in an except clause of a public entry point before a
    bare ``raise``, so that the user sees their own call, then (for a job error) the one line that raised it.

    Only for exceptions that are the user's business: raised by user code run in this process (serial mode, the
    input iterable), or a job error. An exception raised by the library's own code keeps every frame: it is a bug
    to report, and its frames say where.
    """
    entries = _entries(exc.__traceback__)
    if not entries:
        return
    origin = entries[-1].tb_frame.f_code
    if is_library_file(origin.co_filename) and origin not in _JOB_ERROR_RAISERS:
        return
    tidied = drop_library_frames(entries[0])
    # Python 3.11+ re-raises exc.__traceback__ without adding the current frame again; 3.10 re-raises the
    # traceback it caught, whose first entry is the current frame: relinked, it shows that frame, then the rest.
    if entries[0] is not tidied:
        entries[0].tb_next = tidied
    exc.__traceback__ = tidied


def hides_library_frames(func: Callable[P, R]) -> Callable[P, R]:
    """Decorator for public entry points that run a job to the end: errors leave without the library's frames."""

    @functools.wraps(func)
    def entry(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except BaseException as exc:
            hide_library_frames(exc)
            raise

    return entry
