"""The "rich" progress style, drawn with rich directly (not tqdm's experimental rich bar, which warns).

rich allows one live display per console, so the bars shown at the same time on one output (calls in two threads,
a call inside another call's loop) are rows of one shared display, made with the first of them and ended with the
last. It refreshes only when a bar is updated, from the thread that drives the pool: no refresh thread, so a fork
worker started while a bar is shown never inherits a thread that might hold a lock; and it leaves sys.stdout and
sys.stderr as they are, so workers forked meanwhile inherit the real ones.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

REFRESH_INTERVAL = 0.1  # seconds: at most this often a row's update redraws the display

_lock = threading.Lock()
_boards: dict[int, _Board] = {}  # id(output file) -> the display of the bars drawn on it


class _Board:
    def __init__(self, file: Any) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.file = file  # kept: its id() is this board's key
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
            console=Console(file=file), auto_refresh=False, redirect_stdout=False, redirect_stderr=False,
        )
        self.rows = 0
        self.refreshed = 0.0

    def refresh(self, force: bool) -> None:
        now = time.monotonic()
        if force or now - self.refreshed >= REFRESH_INTERVAL:
            self.refreshed = now
            self.progress.refresh()


class RichBar:
    def __init__(self, name: str, total: int | None, options: dict[str, Any], show_failed: bool) -> None:
        self._name = options.get("desc") or name
        self._show_failed = show_failed
        self._disabled = options.get("disable") is True
        self._leave = options.get("leave") is not False
        if self._disabled:
            return
        file = options.get("file") or sys.stderr
        with _lock:
            board = _boards.get(id(file))
            if board is None:
                board = _boards[id(file)] = _Board(file)
                board.progress.start()
            board.rows += 1
            self._board = board
            self._row = board.progress.add_task(self._name, total=total, note=self._note(0))
            board.refresh(force=True)

    def update(self, done: int, total: int | None, failed: int) -> None:
        if self._disabled:
            return
        with _lock:
            self._board.progress.update(self._row, completed=done, total=total, note=self._note(failed))
            self._board.refresh(force=False)

    def close(self, done: int, total: int | None, failed: int, outcome: str) -> None:
        if self._disabled:
            return
        description = self._name if outcome == "done" else f"{self._name} ({outcome})"
        with _lock:
            board = self._board
            board.progress.update(self._row, completed=done, total=total, note=self._note(failed),
                                  description=description)
            progress = board.progress
            progress.stop_task(self._row)
            board.rows -= 1
            if board.rows == 0:
                if not self._leave:
                    progress.remove_task(self._row)
                progress.stop()  # draws the final state of the rows left
                del _boards[id(board.file)]
                return
            # Others go on: this row leaves the live display (printed above it, unless leave=False), so a loop of
            # many calls inside another call's loop does not pile up finished rows.
            final = progress.make_tasks_table([task for task in progress.tasks if task.id == self._row])
            progress.remove_task(self._row)
            if self._leave:
                progress.console.print(final)
            board.refresh(force=True)

    def _note(self, failed: int) -> str:
        return f"{failed} failed" if self._show_failed else ""
