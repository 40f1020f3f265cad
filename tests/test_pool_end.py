"""Every way a pool ends leaves every open call in a defined state: it raises PoolClosedError, never hands out a
silent part of its results, and never spins."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.helpers import square

from parallelize import PoolClosedError, WorkerPool, parallel

pytestmark = pytest.mark.timeout(60)

N_ITEMS = 200


def slow_square(x: int) -> int:
    time.sleep(0.002)
    return x * x


@parallel(n_jobs=2, chunk_size=1)
def decorated_slow_square(x: int) -> int:
    time.sleep(0.002)
    return x * x


def _consume_with_cpu_watch(iterator: Iterator[Any]) -> tuple[list[Any], BaseException | None, float]:
    """(results read, the exception that ended the loop, CPU seconds spent): a spinning iterator would burn CPU
    until the test's timeout; a correct one raises at once."""
    got: list[Any] = []
    cpu = time.process_time()
    error: BaseException | None = None
    try:
        for value in iterator:
            got.append(value)
    except BaseException as exc:
        error = exc
    return got, error, time.process_time() - cpu


def _ended_pool_cases() -> list[tuple[str, Callable[[WorkerPool], None]]]:
    return [("terminate", WorkerPool.terminate), ("stop_and_join", WorkerPool.stop_and_join)]


@pytest.mark.parametrize(("how", "end"), _ended_pool_cases())
def test_workerpool_imap_raises_at_once_after_the_pool_ends(how: str, end: Callable[[WorkerPool], None]) -> None:
    pool = WorkerPool(2, start_method="fork")
    iterator = pool.imap(slow_square, range(N_ITEMS))
    assert next(iterator) == 0
    end(pool)
    got, error, cpu = _consume_with_cpu_watch(iterator)
    assert isinstance(error, PoolClosedError) and isinstance(error, RuntimeError), (how, error)
    assert got == [], f"{how}: {len(got)} results handed out after the pool ended"
    assert cpu < 2.0
    pool.terminate()


def test_workerpool_imap_raises_after_leaving_the_with_block() -> None:
    with WorkerPool(2, start_method="fork") as pool:
        iterator = pool.imap_unordered(slow_square, range(N_ITEMS))
        next(iterator)
    got, error, _ = _consume_with_cpu_watch(iterator)
    assert isinstance(error, PoolClosedError)
    assert "Pool was terminated" in str(error)
    assert got == []


def test_workerpool_is_usable_again_after_terminate_ended_an_open_imap() -> None:
    with WorkerPool(2, start_method="fork") as pool:
        iterator = pool.imap(slow_square, range(N_ITEMS))
        next(iterator)
        pool.terminate()
        with pytest.raises(PoolClosedError):
            next(iterator)
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_decorated_imap_raises_at_once_after_close(method: str) -> None:
    iterator = getattr(decorated_slow_square, method)(range(N_ITEMS))
    next(iterator)
    decorated_slow_square.close()
    got, error, cpu = _consume_with_cpu_watch(iterator)
    assert isinstance(error, PoolClosedError), error
    assert got == []
    assert cpu < 2.0
    assert decorated_slow_square(range(4)) == [0, 1, 4, 9]  # a new pool for the next call
    decorated_slow_square.close()


@parallel(n_jobs=2)
def plain_identity(x: int) -> int:
    return x


def test_an_unread_imap_keeps_its_pool_when_another_call_changes_the_settings() -> None:
    # The imap counts as running from the call on, not from its first next(): the pool cache must not stop its
    # engine when the next call needs other workers.
    try:
        pending = plain_identity.imap(range(20))
        assert plain_identity(range(5), n_jobs=1) == list(range(5))
        assert list(pending) == list(range(20))
        first = plain_identity.imap(range(5), keep_alive=False)
        second = plain_identity.imap(range(6), keep_alive=False)
        assert list(second) == list(range(6))
        assert list(first) == list(range(5))
    finally:
        plain_identity.close()
