"""One call (a map, an imap, an apply): feeds chunks, puts results in order, applies the error policy.

A Job never touches workers or pipes; the engine asks it for the next chunk and reports what became of each
dispatched chunk: done (with per-item failures), lost with its worker (died, timed out), or to be sent again.
Bookkeeping is per chunk; only failures cost per-item work.

Error policy (on_error): "raise" fails the whole job at the first error; "return" puts the exception object in
place of the result; "skip" drops the item. With retries=N a failing item (exception, worker death, timeout)
is sent again up to N times first, waiting backoff * 2**attempt seconds before each new attempt.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ._chunking import ChunkSizer
from ._messages import CALL_APPLY, RunChunk
from ._serialize import LocalFailure, TaskFailure, note_task, unpack_exception

if TYPE_CHECKING:
    from ._call_record import CallRecord

_PENDING = object()  # a slot of a partly done chunk still waiting for its result
_SKIPPED = object()  # a failed item dropped by on_error="skip"
# Workers that may end before starting the same chunk before its first task fails: a chunk whose arguments cannot
# be unpickled in a worker ends every worker it is sent to, before it starts, and would be sent again without end.
UNSTARTED_LOSSES = 3


class ProgressWatch(Protocol):
    """A progress bar watching a job (see _progress): told the tasks done so far in its running chunks."""

    def advance(self, job: Job, running: int) -> None: ...


class _Partial:
    """A chunk whose items come back in pieces (after a failure, a retry, or its worker's death)."""

    __slots__ = ("remaining", "start", "values")

    def __init__(self, start: int, size: int) -> None:
        self.start = start
        self.values: list[Any] = [_PENDING] * size
        self.remaining = size


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
        in_memory: bool = False,
        task_timeout: float | None = None,
        worker_init_timeout: float | None = None,
        worker_exit_timeout: float | None = None,
        on_error: str = "raise",
        retries: int = 0,
        retry_backoff: float = 0.0,
    ) -> None:
        self.id = job_id
        self.func_id = func_id
        self.call_mode = call_mode
        self.ordered = ordered
        self.n_tasks = n_tasks
        self.max_active = max_active
        self.slot_of_chunk = slot_of_chunk  # order_tasks: chunk i may only go to worker slot_of_chunk(i)
        # The input is held in memory (a list, an array...): reading the next chunk never blocks, so chunks may wait
        # in the parent while more are read (see _dispatch). Any other input may block, on what a task does even.
        self.in_memory = in_memory
        self.task_timeout = task_timeout
        # The hook timeouts of this call, for the workers serving it (the engine takes the strictest of its calls).
        self.worker_init_timeout = worker_init_timeout
        self.worker_exit_timeout = worker_exit_timeout
        self.on_error = on_error
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.keep_going = on_error != "raise" or retries > 0
        # Watched for insights (set by _insights.watch before the first take()): the workers time its tasks, and
        # what they measured is fed to its record.
        self.collect = False
        self.record: CallRecord | None = None
        self._chunks = chunks
        self._sizer = sizer
        self._next_start = 0
        self._requeued: deque[RunChunk] = deque()
        self._delayed: list[tuple[float, int, RunChunk]] = []  # retries waiting for their backoff
        self._delay_seq = itertools.count()
        self._attempts: dict[int, int] = {}  # input index -> failed attempts so far
        self._unstarted_losses: dict[int, int] = {}  # a chunk's start -> workers that ended before starting it
        self._partials: dict[int, _Partial] = {}
        self._sizes: dict[int, tuple[int, int]] = {}  # chunk_id -> (start, size) of chunks in flight
        self._next_chunk_id = 0
        self._emit_next = 0
        self._completed: dict[int, list[Any]] = {}
        self._ready: deque[list[Any]] = deque()
        self._handed_out: list[Any] | None = None  # the batch the caller is reading now (see withdraw_results)
        self.exhausted = False
        self.last_size = 0  # items in the last chunk read from the input, 0 before the first (sizes queues)
        # Bytes its last chunk took to send, and its last results to come back (0: passed as objects): sizes queues.
        self.chunk_bytes = 0
        self.result_bytes = 0
        self.n_active_chunks = 0
        self.n_active_tasks = 0
        self.n_completed_tasks = 0
        self.n_failed = 0  # items that failed for good under on_error "return" or "skip"
        # Items read from the input, minus those whose results the caller took or that were skipped, bound the
        # read-ahead (max_active). One writer each (the driver reads and skips, the caller takes), so no update
        # can be lost between the two threads.
        self._n_read = 0
        self._n_skipped = 0
        self._n_taken = 0
        self.error: BaseException | None = None
        self.cancelled = False
        self.progress_listeners: list[Callable[[int], None]] = []
        # A progress bar: set before the job is submitted, its chunks then publish each task on the worker's clock.
        self.progress: ProgressWatch | None = None
        self.finish_listeners: list[Callable[[Job], None]] = []
        self.done_event = threading.Event()
        self._ending = False  # set as soon as the job ends, before its listeners run

    # --- asked by the engine ------------------------------------------------------------------------------------

    def peek_chunk_id(self) -> int:
        """The id of the chunk take() would return next (order_tasks routes by it)."""
        return self._requeued[0].chunk_id if self._requeued else self._next_chunk_id

    def next_retry_at(self) -> float | None:
        """When the earliest delayed retry may be sent (time.monotonic()), if any."""
        return self._delayed[0][0] if self._delayed and not self.finished else None

    def take(self, tag: int = 0) -> RunChunk | None:
        """The next chunk to dispatch, marked with *tag*, or None when there is nothing to send right now."""
        if self._ending:
            return None
        if self._delayed:
            now = time.monotonic()
            while self._delayed and self._delayed[0][0] <= now:
                self._requeued.append(heapq.heappop(self._delayed)[2])
        if self._requeued:
            chunk = self._requeued.popleft()
            if chunk.tag != tag:
                chunk = chunk._replace(tag=tag)
        else:
            if self.exhausted:
                return None
            if self.max_active is not None and self._n_read - self._n_taken - self._n_skipped >= self.max_active:
                # Results waiting to be taken count too: in flight, reordering or ready, they are all held here.
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
            size = len(items)
            chunk = RunChunk(self.id, self._next_chunk_id, self.func_id, self.call_mode, items, self._next_start,
                             self.task_timeout, self.keep_going, False, tag, self.progress is not None,
                             self.collect)
            self._sizes[chunk.chunk_id] = (chunk.start, size)
            self._next_chunk_id += 1
            self._next_start += size
            self._n_read += size
            self.last_size = size
        self.n_active_chunks += 1
        self.n_active_tasks += len(chunk.items)
        return chunk

    def requeue(self, chunk: RunChunk) -> None:
        """A dispatched chunk must be sent again as it is (its worker ended before starting it)."""
        self._release(chunk)
        if not self.finished:
            self._requeued.append(chunk)

    def resend(self, chunk: RunChunk) -> None:
        """*chunk*'s results were lost on their way back (a worker that died sending them, a message the parent
        could not unpickle): run it again, once, with each result pickled on its own, so that what goes wrong
        then belongs to one task."""
        self._release(chunk)
        if not self.finished:
            self._requeued.append(chunk._replace(separate_results=True))

    def complete(self, chunk: RunChunk, values: list[Any], failures: Sequence[TaskFailure | LocalFailure] | None,
                 duration: float) -> None:
        """A worker (or serial mode's worker 0) finished *chunk*. Without keep_going, *values* stop at the first
        failure."""
        self._release(chunk)
        if self.finished:
            return  # a chunk of a failed or cancelled job: its results are not wanted
        if failures is None and chunk.chunk_id not in self._partials and len(values) == len(chunk.items):
            if self._sizer is not None:
                self._sizer.observe(len(chunk.items), duration)
            self._chunk_done(chunk.chunk_id, values)
            return
        failed = {f.position: f for f in failures or ()}
        for position in range(len(chunk.items)):
            if position in failed:
                error = unpack_exception(failed[position])
                if self.call_mode != CALL_APPLY:  # one call made by the user: its arguments need no reminder
                    note_task(error, chunk.start + position, chunk.items[position])
                self._item_failed(chunk, position, error)
            elif position < len(values):
                self._fill(chunk, position, values[position])
            else:
                break  # never ran (no keep_going): the job has failed above
            if self._ending:  # the policy ended the job
                return

    def lost(self, chunk: RunChunk, position: int | None, error: BaseException) -> None:
        """*chunk*'s worker ended while running item *position* (None: before starting the chunk).

        That item fails with *error*; the items before it (whose results died with the worker) and after it are
        sent again. A chunk not started is sent again whole, until UNSTARTED_LOSSES workers ended before starting
        it: then its first task fails.
        """
        self._release(chunk)
        if self.finished:
            return
        if position is None:
            losses = self._unstarted_losses[chunk.start] = self._unstarted_losses.get(chunk.start, 0) + 1
            if losses < UNSTARTED_LOSSES:
                self._requeued.append(chunk)
                return
            position = 0  # (the error says the worker died before starting the chunk)
        self._item_failed(chunk, position, error)
        if self._ending:
            return
        for part in (slice(0, position), slice(position + 1, len(chunk.items))):
            items = chunk.items[part]
            if items:
                self._requeued.append(chunk._replace(items=items, start=chunk.start + (part.start or 0)))

    def fail(self, error: BaseException) -> None:
        """Record the first error; the job stops dispatching and ends as soon as possible."""
        if not self.finished:
            self.error = error
            self._requeued.clear()
            self._delayed.clear()
            self._notify_finished()

    def cancel(self) -> None:
        """The caller lost interest (imap closed early): send nothing more, drop what comes back."""
        if not self.finished:
            self.cancelled = True
            self._requeued.clear()
            self._delayed.clear()
            self._notify_finished()

    # --- asked by the caller -------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._ending

    @property
    def tasks_read(self) -> int:
        """Items read from the input so far (all of them once it is exhausted)."""
        return self._next_start

    def has_ready(self) -> bool:
        return bool(self._ready)

    def pop_ready(self) -> list[Any]:
        """Every result that may be handed out now (in input order when ordered)."""
        if len(self._ready) == 1:
            out = self._ready.popleft()
        else:
            out = []
            while self._ready:
                out.extend(self._ready.popleft())
        self._n_taken += len(out)
        self._handed_out = out
        return out

    def withdraw_results(self) -> None:
        """The pool ended under this call: results not handed out yet are dropped, the batch being read included
        (emptying the list stops an iteration over it), so the caller raises at its next step instead of reading
        on. Costs nothing per result."""
        self._ready.clear()
        if self._handed_out is not None:
            self._handed_out.clear()

    # --- internals -------------------------------------------------------------------------------------------------

    def _item_failed(self, chunk: RunChunk, position: int, error: BaseException) -> None:
        index = chunk.start + position
        attempts = self._attempts.get(index, 0)
        if attempts < self.retries:
            self._attempts[index] = attempts + 1
            retry = chunk._replace(items=chunk.items[position:position + 1], start=index)
            self._partial(chunk)  # the retry's result fills its place
            delay = self.retry_backoff * 2.0 ** min(attempts, 1023)  # 2.0**1024 overflows; inf is a fine delay
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._delay_seq), retry))
            return
        if self.on_error == "raise":
            self.fail(error)
            return
        self.n_failed += 1
        self._fill(chunk, position, error if self.on_error == "return" else _SKIPPED)

    def _partial(self, chunk: RunChunk) -> _Partial:
        partial = self._partials.get(chunk.chunk_id)
        if partial is None:
            start, size = self._sizes[chunk.chunk_id]
            partial = self._partials[chunk.chunk_id] = _Partial(start, size)
        return partial

    def _fill(self, chunk: RunChunk, position: int, value: Any) -> None:
        partial = self._partial(chunk)
        slot = chunk.start + position - partial.start
        if partial.values[slot] is _PENDING:
            partial.remaining -= 1
        partial.values[slot] = value
        if partial.remaining == 0:
            del self._partials[chunk.chunk_id]
            self._chunk_done(chunk.chunk_id, [v for v in partial.values if v is not _SKIPPED])

    def _chunk_done(self, chunk_id: int, values: list[Any]) -> None:
        _, size = self._sizes.pop(chunk_id)
        self._n_skipped += size - len(values)  # skipped items: nothing to take
        if self.ordered:
            self._completed[chunk_id] = values
            while self._emit_next in self._completed:
                self._ready.append(self._completed.pop(self._emit_next))
                self._emit_next += 1
        else:
            self._ready.append(values)
        self.n_completed_tasks += size
        for listener in self.progress_listeners:
            listener(size)
        self._check_finished()

    def _release(self, chunk: RunChunk) -> None:
        self.n_active_chunks -= 1
        self.n_active_tasks -= len(chunk.items)

    def _check_finished(self) -> None:
        if (self.exhausted and not self._requeued and not self._delayed and self.n_active_chunks == 0
                and not self._partials and not self.finished):
            self._notify_finished()

    def _notify_finished(self) -> None:
        self._ending = True
        # Listeners first (AsyncResult stores its value, callbacks run), then the job counts as finished: whoever
        # sees it finished sees everything the listeners did.
        for listener in self.finish_listeners:
            listener(self)
        self.done_event.set()
