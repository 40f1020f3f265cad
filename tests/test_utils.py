"""parallelize.utils: MPIRE's make_single_arguments and chunk_tasks, with the same results and errors."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest

import parallelize
from parallelize.utils import chunk_tasks, make_single_arguments

# --- make_single_arguments -------------------------------------------------------------------------------------------


def test_utils_is_reachable_from_the_package() -> None:
    assert parallelize.utils.chunk_tasks is chunk_tasks
    assert "utils" in parallelize.__all__


def test_make_single_arguments_wraps_each_item_in_a_tuple_lazily() -> None:
    result = make_single_arguments(iter([(1, 2), "ab", 3]))
    assert not isinstance(result, list)
    assert list(result) == [((1, 2),), ("ab",), (3,)]


def test_make_single_arguments_returns_a_list_with_generator_false() -> None:
    assert make_single_arguments(range(3), generator=False) == [(0,), (1,), (2,)]


def test_make_single_arguments_of_a_non_iterable_raises_type_error_at_once() -> None:
    with pytest.raises(TypeError, match="iterable_of_args must be iterable, got int"):
        make_single_arguments(5)  # type: ignore[arg-type]


# --- chunk_tasks -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "sizes"), [
    ({"chunk_size": 3}, [3, 3, 3, 1]),
    ({"chunk_size": 2.5}, [3, 2, 3, 2]),  # chunk k ends at ceil(k * 2.5)
    ({"chunk_size": 0.5}, [1] * 10),
    ({"n_splits": 3}, [4, 3, 3]),
    ({"n_splits": 3, "chunk_size": 5}, [5, 5]),  # chunk_size wins
    ({"chunk_size": 4, "iterable_len": 6}, [4, 2]),  # iterable_len caps the input
    ({"n_splits": 2, "iterable_len": 4}, [2, 2]),
])
def test_chunk_tasks_cuts_consecutive_tuples(kwargs: dict[str, Any], sizes: list[int]) -> None:
    chunks = list(chunk_tasks(range(10), **kwargs))
    assert [len(c) for c in chunks] == sizes
    assert all(isinstance(c, tuple) for c in chunks)
    assert list(itertools.chain.from_iterable(chunks)) == list(range(sum(sizes)))


def test_chunk_tasks_of_a_generator_with_iterable_len_and_n_splits() -> None:
    assert list(chunk_tasks(iter(range(7)), iterable_len=7, n_splits=2)) == [(0, 1, 2, 3), (4, 5, 6)]


def test_chunk_tasks_slices_numpy_arrays_along_axis_0() -> None:
    array = np.arange(20).reshape(10, 2)
    chunks = list(chunk_tasks(array, chunk_size=4))
    assert all(isinstance(c, np.ndarray) for c in chunks)
    assert [c.shape for c in chunks] == [(4, 2), (4, 2), (2, 2)]
    assert np.shares_memory(chunks[0], array)  # views, not copies


def test_chunk_tasks_keeps_a_truncated_numpy_chunk_whose_values_are_falsy() -> None:
    # MPIRE tests the truth of the truncated slice here: it drops [[0]] (and raises for longer slices).
    chunks = list(chunk_tasks(np.array([0, 1, 2]), iterable_len=1, chunk_size=2))
    assert [c.tolist() for c in chunks] == [[0]]


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    ((range(5),), {}, ValueError, "chunk_size or n_splits"),
    ((iter(range(5)),), {"n_splits": 2}, ValueError, "iterable_len"),
    ((range(5),), {"chunk_size": "x"}, TypeError, "chunk_size must be a finite number, got 'x'"),
    ((range(5),), {"chunk_size": float("nan")}, ValueError, "chunk_size must be a finite number, got nan"),
    ((range(5),), {"n_splits": "x"}, TypeError, "n_splits must be a number, got 'x'"),
    ((range(5),), {"n_splits": 0}, ValueError, "n_splits must not be 0"),
    ((5,), {"chunk_size": 2}, TypeError, "iterable_of_args must be iterable, got int"),
])
def test_chunk_tasks_bad_arguments_raise_at_the_first_next(args: tuple[Any, ...], kwargs: dict[str, Any],
                                                           error: type[Exception], match: str) -> None:
    chunks = chunk_tasks(*args, **kwargs)  # a generator, as MPIRE's: nothing is checked yet
    with pytest.raises(error, match=match):
        next(chunks)


# --- against MPIRE itself, where it is installed (the bench extra) ----------------------------------------------------


def _outcome(func: Callable[..., Iterable[Any]], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        return "ok", [c.tolist() if isinstance(c, np.ndarray) else c for c in func(*args, **kwargs)]
    except Exception as exc:
        return "error", type(exc)


_SIZES = [None, 0, -2, 0.1, 0.5, 1, 1.5, 2, 2.5, 7 / 3, 3, 3.3, 100 / 3, 10**6]
_SPLITS = [None, -1, 1, 2, 3, 7, 64]


@pytest.mark.parametrize("n", [0, 1, 2, 5, 17, 100, 101])
def test_chunk_tasks_gives_mpires_chunks_and_errors(n: int) -> None:
    mpire_utils = pytest.importorskip("mpire.utils")
    for chunk_size, n_splits, iterable_len, kind in itertools.product(
            _SIZES, _SPLITS, [None, 0, 1, n, n + 5, max(0, n - 3)], ["list", "generator", "array"]):
        if kind == "array" and iterable_len is not None:
            continue  # MPIRE's truncated-slice bug, see the test above
        make = {"list": lambda: list(range(n)), "generator": lambda: iter(range(n)),
                "array": lambda: np.arange(n)}[kind]
        expected = _outcome(mpire_utils.chunk_tasks, make(), iterable_len, chunk_size, n_splits)
        got = _outcome(chunk_tasks, make(), iterable_len, chunk_size, n_splits)
        assert got == expected, (chunk_size, n_splits, iterable_len, kind)


@pytest.mark.parametrize("items", [range(4), "abc", [(1, 2), {"a": 1}], np.arange(6).reshape(3, 2)])
@pytest.mark.parametrize("generator", [True, False])
def test_make_single_arguments_gives_mpires_result(items: Any, generator: bool) -> None:
    mpire_utils = pytest.importorskip("mpire.utils")
    expected = mpire_utils.make_single_arguments(items, generator=generator)
    got = make_single_arguments(items, generator=generator)
    assert type(got) is type(expected)
    assert repr(list(got)) == repr(list(expected))
