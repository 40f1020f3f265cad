"""One call (a map, an imap, an apply): feeds chunks, puts results in order, applies the error policy.

A Job never touches workers or pipes; the engine asks it for the next chunk and hands it each ChunkDone.
Bookkeeping is per chunk: nothing here runs once per task.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ._chunking import ChunkSizer
from ._messages import RunChunk
from ._serialize import TaskFailure, unpack_exception


class Job:
    def __init__(
        self,
        job_id: int,
        func_id: int,
        call_mode: int,
        chunks: Iterator[list[Any]],
        sizer: ChunkSizer | None,
        *,
        ordered: bool,
        n_tasks: int | None,
        max_active: int | None = None,
        slot_of_chunk: Callable[[int], int] | None = None,
        task_timeout: float | None = None,
    ) -> None:
        self.id = job_id
        self.func_id = func_id
        self.call_mode = call_mode
        self.ordered = ordered
        self.n_tasks = n_tasks
        self.max_active = max_active
        self.slot_of_chunk = slot_of_chunk  # order_tasks: chunk i may only go to worker slot_of_chunk(i)
        self.task_timeout = task_timeout
        self._chunks = chunks
        self._next_start = 0
        self._sizer = sizer
        self._requeued: deque[RunChunk] = deque()
        self._next_chunk_id = 0
        self._emit_next = 0
        self._completed: dict[int, list[Any]] = {}
        self._ready: deque[list[Any]] = deque()
        self.exhausted = False
        self.n_active_chunks = 0
        self.n_active_tasks = 0
        self.n_completed_tasks = 0
        self.error: BaseException | None = None
        self.cancelled = False
        self.progress_listeners: list[Callable[[int], None]] = []
        self.finish_listeners: list[Callable[[Job], None]] = []
        self.done_event = threading.Event()

    # --- asked by the engine ------------------------------------------------------------------------------------

    def peek_chunk_id(self) -> int:
        """The id of the chunk take() would return next (order_tasks routes by it)."""
        return self._requeued[0].chunk_id if self._requeued else self._next_chunk_id

    def take(self) -> RunChunk | None:
        """The next chunk to dispatch, or None when there is nothing to send right now."""
        if self.error is not None or self.cancelled:
            return None
        if self._requeued:
            chunk = self._requeued.popleft()
        else:
            if self.exhausted:
                return None
            if self.max_active is not None and self.n_active_chunks and self.n_active_tasks >= self.max_active:
                return None
            try:
                items = next(self._chunks)
            except StopIteration:
                self.exhausted = True
                self._check_finished()
                return None
            except BaseException as exc:  # the input iterable raised: the caller gets that exception as it is
                self.exhausted = True
                self.fail(exc)
                return None
            chunk = RunChunk(
                self.id, self._next_chunk_id, self.func_id, self.call_mode, items, self._next_start,
                self.task_timeout is not None,
            )
            self._next_chunk_id += 1
            self._next_start += len(items)
        self.n_active_chunks += 1
        self.n_active_tasks += len(chunk.items)
        return chunk

    def requeue(self, chunk: RunChunk) -> None:
        """A dispatched chunk must be sent again (its worker was stopped before it started on it)."""
        self._release(chunk)
        if not self.finished:
            self._requeued.append(chunk)

    def complete(self, chunk: RunChunk, values: list[Any], failure: TaskFailure | None, duration: float) -> None:
        self._release(chunk)
        if self.finished:
            return  # a chunk of a failed or cancelled job: its results are not wanted
        if failure is not None:
            self.fail(unpack_exception(failure))
            return
        if self._sizer is not None:
            self._sizer.observe(len(chunk.items), duration)
        if self.ordered:
            self._completed[chunk.chunk_id] = values
            while self._emit_next in self._completed:
                self._ready.append(self._completed.pop(self._emit_next))
                self._emit_next += 1
        else:
            self._ready.append(values)
        self.n_completed_tasks += len(values)
        for listener in self.progress_listeners:
            listener(len(values))
        self._check_finished()

    def fail(self, error: BaseException) -> None:
        """Record the first error; the job stops dispatching and ends as soon as possible."""
        if self.error is None and not self.finished:
            self.error = error
            self._requeued.clear()
            self._notify_finished()

    def cancel(self) -> None:
        """The caller lost interest (imap closed early): send nothing more, drop what comes back."""
        if not self.finished:
            self.cancelled = True
            self._requeued.clear()
            self._notify_finished()

    # --- asked by the caller -------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.done_event.is_set()

    def has_ready(self) -> bool:
        return bool(self._ready)

    def pop_ready(self) -> list[Any]:
        """Every result that may be handed out now (in input order when ordered)."""
        if len(self._ready) == 1:
            return self._ready.popleft()
        out: list[Any] = []
        while self._ready:
            out.extend(self._ready.popleft())
        return out

    # --- internals -------------------------------------------------------------------------------------------------

    def _release(self, chunk: RunChunk) -> None:
        self.n_active_chunks -= 1
        self.n_active_tasks -= len(chunk.items)

    def _check_finished(self) -> None:
        if self.exhausted and not self._requeued and self.n_active_chunks == 0 and not self.finished:
            self._notify_finished()

    def _notify_finished(self) -> None:
        self.done_event.set()
        for listener in self.finish_listeners:
            listener(self)
