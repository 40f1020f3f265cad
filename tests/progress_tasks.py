"""Tasks and sinks for the progress bar tests: importable by reference, so they work under every start method."""

from __future__ import annotations

import io
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parallelize import parallel

LIMIT = 30.0  # seconds any task waits for the test at most
# One log line: "[parallelize] name: done/total tasks (pct%), then comma-separated fields" (or "done tasks" with no
# total yet).
LOG_LINE = re.compile(r"^\[parallelize\] (?P<name>[\w.]+): (?P<done>\d+)(?:/(?P<total>\d+))? tasks"
                      r"(?: \(\d+%\))?(?:, [^,\r\x1b]+)+$")


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + LIMIT
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


@parallel(n_jobs=1, chunk_size=10)
def held(i: int, directory: str, die_once: bool = False) -> int:
    """Task 5 waits for the test's "go" file. With die_once, its worker then dies the first time, and task 2, run
    again, waits for "go again"."""
    died = Path(directory, "died")
    if i == 5:
        wait_for(Path(directory, "go"))
        if die_once and not died.exists():
            died.touch()
            os._exit(1)
    if i == 2 and die_once and died.exists():
        wait_for(Path(directory, "go again"))
    return i


@parallel(n_jobs=1, backend="thread")
def gated(event: threading.Event, x: int) -> int:
    """Waits until the test lets every concurrent call go on."""
    if not event.wait(LIMIT):
        raise TimeoutError("the other call never started")
    return x


@parallel(n_jobs=1, backend="thread")
def plain(x: int) -> int:
    return x


def bar_threads(_: Any = None) -> list[str]:
    """Threads started by a progress bar's library (tqdm's monitor, rich's refresh thread)."""
    return [t.name for t in threading.enumerate() if type(t).__module__.split(".")[0] in ("tqdm", "rich")]


class Sink(io.StringIO):
    """A progress bar's file that can act on what the bar writes: *on_write* is called with the sink after each
    write, in the thread that draws the bar, so a test needs no thread of its own to react."""

    def __init__(self, on_write: Callable[[Sink], None] | None = None) -> None:
        super().__init__()
        self.on_write = on_write

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.on_write is not None:
            self.on_write(self)
        return written

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


def touch_when(trigger: str, path: Path) -> Callable[[Sink], None]:
    """An on_write that creates *path* once the sink shows *trigger*."""

    def check(sink: Sink) -> None:
        if trigger in sink.getvalue():
            path.touch()

    return check


class Terminal(io.StringIO):
    """Output that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def counts(lines: list[str]) -> list[tuple[int, int | None]]:
    """(done, total) of each log line, checking that every line is one."""
    found = []
    for line in lines:
        match = LOG_LINE.match(line)
        assert match is not None, line
        total = match["total"]
        found.append((int(match["done"]), None if total is None else int(total)))
    return found
