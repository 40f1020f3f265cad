"""Ctrl-C while the main thread drives the engine's loop: held until a point where it is safe to raise.

A KeyboardInterrupt raised at an arbitrary instruction of the loop could leave the bookkeeping half-updated (a
chunk sent but not recorded, the driver's role taken and never given back), and the only safe answer to that is
to end every worker, failing every call on the pool, other threads' calls included. Held to the next safe point
(between two steps, or while waiting for another driver), the interrupt reaches the caller where cancelling just
its own call is enough, and the calls of other threads go on.

Only the main thread receives SIGINT, and only Python's own handler is replaced (a program's own handler is left
alone), for the duration of one drive() call.
"""

from __future__ import annotations

import importlib
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

# The C core of `signal`: the same calls without converting handlers to enums, which costs ~2 us each. A map of
# small chunks installs and removes the hold once per wait, so this is on the hot path.
_signal_core = importlib.import_module("_signal")
_getsignal: Callable[[int], Any] = _signal_core.getsignal
_setsignal: Callable[[int, Any], Any] = _signal_core.signal
_SIGINT = int(signal.SIGINT)


class SigintHold:
    """Holds Ctrl-C while installed; ``raise_pending()`` at safe points raises the one that arrived."""

    def __init__(self, wakeup: Callable[[], None]) -> None:
        self.pending = False
        self._wakeup = wakeup

    @classmethod
    def install(cls, wakeup: Callable[[], None]) -> SigintHold | None:
        """A hold with its handler in place, or None where none is needed or possible (not the main thread, or
        SIGINT is not Python's default handler). *wakeup* ends a wait for workers, so the hold is short."""
        if threading.current_thread() is not threading.main_thread():
            return None
        if _getsignal(_SIGINT) is not signal.default_int_handler:
            return None
        hold = cls(wakeup)
        _setsignal(_SIGINT, hold._handle)
        return hold

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.pending = True
        self._wakeup()

    def raise_pending(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def remove(self) -> None:
        """Python's handler again (a Ctrl-C still pending is the caller's to raise or drop)."""
        if _getsignal(_SIGINT) == self._handle:
            _setsignal(_SIGINT, signal.default_int_handler)
