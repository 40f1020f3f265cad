"""The tqdm progress styles: the text bar ("std") and the Jupyter widget ("notebook").

The bars are drawn from the thread that drives the pool, on each update it hands them; they start no thread of
their own: tqdm's monitor thread (tqdm.monitor_interval) is off for them, so a fork worker started while a bar is
shown never inherits a thread that might hold a lock. Several bars at once (calls in two threads, a call inside
another call's loop) take tqdm's free positions, as nested tqdm loops do, under tqdm's lock.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _bar_class(notebook: bool) -> Any:
    if notebook:
        from tqdm.notebook import tqdm as base
    else:
        from tqdm import tqdm as base
    base.get_lock()  # made on the base class first, so that our bars and the program's own share one lock
    return type(f"Parallelize{base.__name__}", (base,), {"monitor_interval": 0})


class TqdmBar:
    def __init__(self, name: str, total: int | None, options: dict[str, Any], show_failed: bool, *,
                 notebook: bool) -> None:
        self._bar = _bar_class(notebook)(total=total, **{"desc": name, **options})
        self._show_failed = show_failed
        self._failed = -1
        if show_failed:
            self._show(0)

    def update(self, done: int, total: int | None, failed: int) -> None:
        bar = self._bar
        if total != bar.total:
            self._set_total(total)
        if self._show_failed and failed != self._failed:
            self._show(failed)
        if done > bar.n:
            bar.update(done - bar.n)

    def close(self, done: int, total: int | None, failed: int, outcome: str) -> None:
        self.update(done, total, failed)
        bar = self._bar
        if outcome != "done":
            bar.set_description_str(f"{bar.desc or ''} ({outcome})", refresh=False)
        bar.close()

    def _show(self, failed: int) -> None:
        self._failed = failed
        self._bar.set_postfix_str(f"{failed} failed", refresh=False)

    def _set_total(self, total: int | None) -> None:
        """The input ran out: a bar without a total gains one (or its iterable_len gives way to the real count)."""
        bar = self._bar
        container = getattr(bar, "container", None)  # the notebook widget: its bar needs the new maximum
        if container is not None and total is not None:
            widget = container.children[1]
            widget.bar_style = ""
            widget.max = total
            if not bar.total and bar.ncols is None:
                widget.layout.width = None  # it was drawn narrow, as a bar without a total
        bar.total = total
        bar.refresh()
