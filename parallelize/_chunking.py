"""Cutting the input into chunks. Pure functions and one small adaptive sizer; no processes here.

Sizes, when the user does not set them:
- length known: "guided" chunks, large first and shrinking as the input runs out (remaining / (4 * n_jobs), never
  below length / (64 * n_jobs)), so there are few chunks yet the last ones are small enough to keep every worker
  busy to the end;
- length unknown: adaptive, starting at one item and doubling while a chunk takes less than ~25 ms.
When an earlier call on the same pool measured the function's time per task, no guided chunk is cut so small that
it takes under MIN_CHUNK_SECONDS (the parent's cost per chunk would dominate), as long as every worker still gets
a chunk.
All stay at or below max_size when the caller bounds the tasks in flight (max_tasks_active).
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from ._errors import ConfigError

ADAPTIVE_TARGET_SECONDS = 0.025
ADAPTIVE_MAX_SIZE = 1 << 16
# A chunk's round trip costs the parent some tens of microseconds: a chunk of trivial tasks should take at least
# this long in its worker, so that the parent never becomes the bottleneck.
MIN_CHUNK_SECONDS = 0.002


def is_numpy_array(obj: object) -> bool:
    """True for numpy ndarrays, without importing numpy when the caller has not."""
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, numpy.ndarray)


def in_memory(iterable: Iterable[Any]) -> bool:
    """True for inputs whose items are all in memory already (list, tuple, range, numpy array): reading them
    never blocks."""
    return type(iterable) in (list, tuple, range) or is_numpy_array(iterable)


def known_length(iterable: Iterable[Any], iterable_len: int | None) -> int | None:
    if iterable_len is not None:
        return iterable_len
    if is_numpy_array(iterable):
        return int(iterable.shape[0])  # type: ignore[attr-defined]
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


class ChunkSizer:
    """Decides the size of each next chunk."""

    def __init__(self, n_tasks: int | None, n_jobs: int, chunk_size: int | float | None, n_splits: int | None,
                 max_size: int | None = None, task_seconds: float | None = None):
        self._fixed: float | None = None  # may be fractional: chunk k ends at ceil(k * size), as in MPIRE
        self.whole_size: int | None = None  # the fixed size when it is a whole number: no rounding per chunk
        self._chunks_cut = 0
        self._guided_floor = 1
        self._remaining = n_tasks
        self._n_jobs = max(1, n_jobs)
        self._cap = None if max_size is None else max(1, max_size)  # of automatic sizes only: a given size is kept
        self.adaptive = False
        if chunk_size is not None:
            self._fixed = max(1.0, float(chunk_size))
        elif n_splits is not None:
            if n_tasks is None:
                raise ConfigError("n_splits needs the number of tasks: pass iterable_len or an iterable with len()")
            self._fixed = max(1.0, n_tasks / n_splits)
        elif n_tasks is not None:
            # Never so large that a worker is left without a chunk: the measure may come from other inputs. And
            # evened out so that every worker gets as many: 3 chunks of a third on 2 workers would leave one
            # worker with two thirds of the work.
            worth = max(1, min(_worth_sending(task_seconds), math.ceil(n_tasks / self._n_jobs)))
            per_worker = max(1, math.ceil(n_tasks / (self._n_jobs * worth)))
            worth = math.ceil(n_tasks / (self._n_jobs * per_worker))
            self._guided_floor = max(1, math.ceil(n_tasks / (64 * self._n_jobs)), worth)
        else:
            self.adaptive = True
            self._size = 1
        if self._fixed is not None and self._fixed.is_integer():
            self.whole_size = int(self._fixed)

    def next_size(self) -> int:
        if self.whole_size is not None:
            return self.whole_size
        if self._fixed is not None:
            k = self._chunks_cut
            return math.ceil(round((k + 1) * self._fixed, 9)) - math.ceil(round(k * self._fixed, 9))
        if self.adaptive:
            return self._size
        assert self._remaining is not None
        size = max(self._guided_floor, math.ceil(self._remaining / (4 * self._n_jobs)))
        return size if self._cap is None else min(size, self._cap)

    def taken(self, n: int) -> None:
        self._chunks_cut += 1
        if self._remaining is not None:
            self._remaining = max(0, self._remaining - n)

    def observe(self, n_items: int, duration: float) -> None:
        """Feed back how long a chunk took in the worker; grows adaptive chunks toward the target duration."""
        if not self.adaptive or n_items < self._size:
            return
        if duration < ADAPTIVE_TARGET_SECONDS / 2:
            self._size = min(self._size * 2, ADAPTIVE_MAX_SIZE if self._cap is None else self._cap)


def _worth_sending(task_seconds: float | None) -> int:
    """The fewest tasks a chunk should hold for its round trip to be worth it (1 when nothing is known)."""
    if task_seconds is None or task_seconds <= 0:
        return 1
    return max(1, min(ADAPTIVE_MAX_SIZE, math.ceil(MIN_CHUNK_SECONDS / task_seconds)))


def iter_chunks(iterable: Iterable[Any], sizer: ChunkSizer, limit: int | None) -> Iterator[list[Any]]:
    """Lists of consecutive items; at most *limit* items in all (iterable_len caps the input as in MPIRE)."""
    iterator = iter(iterable)
    if limit is not None:
        iterator = itertools.islice(iterator, limit)
    size = sizer.whole_size
    if size is not None:  # a fixed size, the same for every chunk: nothing to ask the sizer per chunk
        while chunk := list(itertools.islice(iterator, size)):
            yield chunk
        return
    while True:
        size = sizer.next_size()
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        sizer.taken(len(chunk))
        yield chunk


def iter_numpy_chunks(array: Any, sizer: ChunkSizer, limit: int | None) -> Iterator[list[Any]]:
    """Slices along axis 0 (views, no copies); each slice is one task, passed to the function whole."""
    n = int(array.shape[0]) if limit is None else min(limit, int(array.shape[0]))
    start = 0
    while start < n:
        size = min(sizer.next_size(), n - start)
        sizer.taken(size)
        yield [array[start : start + size]]
        start += size
