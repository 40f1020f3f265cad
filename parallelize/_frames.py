"""Telling the user's stack frames from the library's: warnings that point at the user's line, and tracebacks
that end with the user's call instead of deep inside the library."""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Any

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
