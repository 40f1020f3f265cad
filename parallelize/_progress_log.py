"""The "log" progress style: plain lines that read well in a CI log or a file (``python job.py > out.log 2>&1``).

One line when the call starts, one every PARALLELIZE_PROGRESS_INTERVAL seconds (30 by default) while it runs, one
when it ends; each stands alone, with no carriage return and no ANSI code: the function, done/total, percentage,
rate, elapsed time, ETA, and the failed items when on_error is "return" or "skip". Lines go to the
``parallelize.progress`` logger (INFO) when the application's logging would show them, and straight to stderr
otherwise, so they are never lost to an unconfigured logging module. A ``file`` in progress_bar_options takes them
instead.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from typing import Any

from . import _env
from ._errors import ConfigError
from ._progress import INTERVAL_VARIABLE

DEFAULT_INTERVAL = 30.0

logger = logging.getLogger("parallelize.progress")
_stderr_lock = threading.Lock()  # lines of bars in several threads never interleave


def interval() -> float:
    """Seconds between two lines: PARALLELIZE_PROGRESS_INTERVAL, or 30 (inf: only the first and last lines)."""
    _, value = _env.read(INTERVAL_VARIABLE, _env.parse_float)
    if value is None:
        return DEFAULT_INTERVAL
    if not value > 0:  # (also NaN)
        raise ConfigError(f"{INTERVAL_VARIABLE}={os.environ[INTERVAL_VARIABLE]!r} must be a positive number of "
                          "seconds (inf: only a first and a last line)")
    return float(value)


class LogBar:
    def __init__(self, name: str, total: int | None, options: dict[str, Any], show_failed: bool) -> None:
        self._name = options.get("desc") or name
        self._unit = options.get("unit") or "tasks"
        self._file = options.get("file")
        self._disabled = options.get("disable") is True
        self._show_failed = show_failed
        self._interval = interval()
        self._start = time.monotonic()
        self._next = self._start + self._interval
        self._write(self._line(0, total, 0, self._start, "started"))

    def update(self, done: int, total: int | None, failed: int) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            self._write(self._line(done, total, failed, now, None))

    def close(self, done: int, total: int | None, failed: int, outcome: str) -> None:
        self._write(self._line(done, total, failed, time.monotonic(), outcome))

    def _line(self, done: int, total: int | None, failed: int, now: float, status: str | None) -> str:
        elapsed = now - self._start
        unit = self._unit
        if total is None:
            parts = [f"{self._name}: {done} {unit}"]
        else:
            percent = 100 if total == 0 else done * 100 // total
            parts = [f"{self._name}: {done}/{total} {unit} ({percent}%)"]
        rate = done / elapsed if elapsed > 0 else 0.0
        if done and rate > 0:
            parts.append(f"{_rate(rate)} {unit}/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if status is None and total is not None and rate > 0 and done < total:
            parts.append(f"ETA {_duration((total - done) / rate)}")
        if self._show_failed:
            parts.append(f"{failed} failed")
        if status is not None:
            parts.append(status)
        return ", ".join(parts)

    def _write(self, text: str) -> None:
        if self._disabled:
            return
        if self._file is None and logger.hasHandlers() and logger.isEnabledFor(logging.INFO):
            logger.info(text)
            return
        stream = self._file if self._file is not None else sys.stderr
        if stream is None:
            return  # no stderr at all (pythonw): nowhere to write
        with _stderr_lock:
            stream.write(f"[parallelize] {text}\n")
            flush = getattr(stream, "flush", None)
            if flush is not None:
                flush()


def _rate(rate: float) -> str:
    if rate >= 100:
        return f"{rate:.0f}"
    return f"{rate:.1f}" if rate >= 10 else f"{rate:.2f}"


def _duration(seconds: float) -> str:
    """H:MM:SS, or M:SS under an hour."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
