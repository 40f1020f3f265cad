"""MPIRE's documented helpers for preparing task arguments: ``make_single_arguments`` and ``chunk_tasks``.

Same signatures and results as ``mpire.utils`` 2.10, so code that imports them switches with the import line.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Generator, Iterable, Iterator
from typing import Any

from ._chunking import is_numpy_array

__all__ = ["chunk_tasks", "make_single_arguments"]


def make_single_arguments(iterable_of_args: Iterable[Any],
                          generator: bool = True) -> list[tuple[Any]] | Generator[tuple[Any], None, None]:
    """Wrap each item in a one-element tuple, so that a tuple item reaches the function as one argument.

    Args:
        iterable_of_args: the items.
        generator: return a generator; ``False``: a list.

    Returns:
        The items, each wrapped in a tuple.

    Raises:
        TypeError: the input is not iterable (at once, even for a generator).

    Example:
        ```python
        pool.map(f, make_single_arguments([(1, 2), (3, 4)]))  # f((1, 2)), f((3, 4))
        ```
    """
    iterator = _iterate(iterable_of_args)
    wrapped = ((item,) for item in iterator)
    return wrapped if generator else list(wrapped)


def chunk_tasks(iterable_of_args: Iterable[Any], iterable_len: int | None = None,
                chunk_size: int | float | None = None,
                n_splits: int | None = None) -> Generator[Collection[Any], None, None]:
    """Cut the input into consecutive chunks: tuples of items, or slices along axis 0 for a numpy array.

    ``chunk_size`` may be fractional: chunk k then ends at item ``ceil(k * chunk_size)`` (a size below 1 gives
    chunks of one item). Without it, ``n_splits`` chunks are made, which needs the length: ``iterable_len`` or
    ``len()``. ``iterable_len`` also caps how many items are read. Like MPIRE's, this is a generator: bad
    arguments raise at the first ``next()``.

    Args:
        iterable_of_args: the items, or a numpy array.
        iterable_len: the number of items to read.
        chunk_size: items per chunk.
        n_splits: the number of chunks, when *chunk_size* is not given.

    Returns:
        A generator of the chunks.

    Raises:
        ValueError: neither *chunk_size* nor *n_splits* is given, or *n_splits* is 0.

    Example:
        ```python
        list(chunk_tasks(range(5), chunk_size=2))  # [(0, 1), (2, 3), (4,)]
        ```
    """
    if chunk_size is None and n_splits is None:
        raise ValueError("chunk_tasks needs chunk_size or n_splits; both are None")
    if chunk_size is None:
        n_tasks = _length(iterable_of_args, iterable_len)
        try:
            chunk_size = n_tasks / n_splits  # type: ignore[operator]
        except ZeroDivisionError:
            raise ValueError("n_splits must not be 0") from None
        except TypeError:
            raise TypeError(f"n_splits must be a number, got {n_splits!r}") from None
    try:
        math.ceil(chunk_size)
    except (TypeError, ValueError, OverflowError) as exc:  # the types MPIRE raises here, with a clearer message
        raise type(exc)(f"chunk_size must be a finite number, got {chunk_size!r}") from None
    step = chunk_size
    # The size still owed to the chunks cut so far. Carrying the fraction over is what makes chunk k end at
    # ceil(k * chunk_size); the arithmetic is done in this order so that float rounding gives MPIRE's chunks.
    owed: float = step
    is_array = is_numpy_array(iterable_of_args)
    items = _iterate(iterable_of_args)
    n_done = 0
    while True:
        size = max(1, math.ceil(owed))
        if is_array:
            chunk: Any = iterable_of_args[n_done:n_done + size]  # type: ignore[index]
        else:
            chunk = tuple(itertools.islice(items, size))
        if len(chunk) == 0:
            return
        if iterable_len is not None and n_done + len(chunk) > iterable_len:
            chunk = chunk[:iterable_len - n_done]
            if len(chunk):
                yield chunk
            return
        yield chunk
        owed = owed + step - math.ceil(owed)
        n_done += len(chunk)


def _length(iterable_of_args: Iterable[Any], iterable_len: int | None) -> int:
    if iterable_len is not None:
        return iterable_len
    try:
        return len(iterable_of_args)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError("chunk_tasks with n_splits needs the number of items: pass iterable_len, or an input that "
                         "has len()") from None


def _iterate(iterable_of_args: Iterable[Any]) -> Iterator[Any]:
    try:
        return iter(iterable_of_args)
    except TypeError:
        raise TypeError(f"iterable_of_args must be iterable, got {type(iterable_of_args).__name__}") from None
