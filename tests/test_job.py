"""The Job on its own, with no process: ordering, the error policy, retries, lost and re-sent chunks, and what an
ended pool does to a call. The engine is played by hand: take() chunks, then report what became of them."""

from __future__ import annotations

from typing import Any

import pytest

from parallelize._chunking import ChunkSizer, iter_chunks
from parallelize._errors import PoolClosedError, WorkerDiedError
from parallelize._job import Job
from parallelize._messages import CALL_UNPACK, RunChunk
from parallelize._serialize import pack_exception


def make_job(items: list[Any], chunk_size: int, *, ordered: bool = True, on_error: str = "raise",
             retries: int = 0) -> Job:
    sizer = ChunkSizer(len(items), 1, chunk_size, None)
    return Job(0, 0, CALL_UNPACK, iter_chunks(items, sizer, None), sizer, ordered=ordered, n_tasks=len(items),
               on_error=on_error, retries=retries)


def take_all(job: Job) -> list[RunChunk]:
    chunks = []
    while (chunk := job.take()) is not None:
        chunks.append(chunk)
    return chunks


def squares(chunk: RunChunk) -> list[Any]:
    return [x * x for x in chunk.items]


def test_ordered_results_come_out_in_input_order_when_chunks_finish_out_of_order() -> None:
    job = make_job(list(range(6)), 2)
    first, second, third = take_all(job)
    job.complete(third, squares(third), None, 0.0)
    job.complete(second, squares(second), None, 0.0)
    assert not job.has_ready()  # the first chunk is not back: nothing may be handed out yet
    job.complete(first, squares(first), None, 0.0)
    assert job.pop_ready() == [0, 1, 4, 9, 16, 25]
    assert job.finished and job.error is None


def test_unordered_results_come_out_as_chunks_finish() -> None:
    job = make_job(list(range(4)), 2, ordered=False)
    first, second = take_all(job)
    job.complete(second, squares(second), None, 0.0)
    assert job.pop_ready() == [4, 9]
    job.complete(first, squares(first), None, 0.0)
    assert job.pop_ready() == [0, 1]


def failure_at(position: int, message: str = "bad") -> list[Any]:
    return [pack_exception(ValueError(message), position)]


def test_on_error_raise_fails_the_job_with_the_tasks_exception() -> None:
    job = make_job(list(range(4)), 2)
    first, _ = take_all(job)
    job.complete(first, [0], failure_at(1), 0.0)
    assert job.finished
    assert isinstance(job.error, ValueError) and str(job.error) == "bad"


def test_on_error_return_puts_the_exception_in_place_of_the_result() -> None:
    job = make_job(list(range(4)), 2, on_error="return")
    first, second = take_all(job)
    job.complete(first, [0, None], failure_at(1), 0.0)
    job.complete(second, squares(second), None, 0.0)
    results = job.pop_ready()
    assert results[0] == 0 and isinstance(results[1], ValueError) and results[2:] == [4, 9]


def test_on_error_skip_drops_the_failed_item() -> None:
    job = make_job(list(range(4)), 2, on_error="skip")
    first, second = take_all(job)
    job.complete(first, [0, None], failure_at(1), 0.0)
    job.complete(second, squares(second), None, 0.0)
    assert job.pop_ready() == [0, 4, 9]


def test_a_retried_item_goes_out_alone_and_fills_its_place() -> None:
    job = make_job(list(range(4)), 2, retries=1)
    first, second = take_all(job)
    job.complete(first, [0, None], failure_at(1), 0.0)
    retry = job.take()
    assert retry is not None and retry.items == [1] and retry.start == 1 and retry.chunk_id == first.chunk_id
    job.complete(second, squares(second), None, 0.0)
    job.complete(retry, [1], None, 0.0)
    assert job.pop_ready() == [0, 1, 4, 9]


def test_a_lost_chunk_fails_the_running_item_and_sends_the_others_again() -> None:
    job = make_job(list(range(3)), 3, on_error="return")
    [chunk] = take_all(job)
    job.lost(chunk, 1, WorkerDiedError("died"))
    again = take_all(job)
    assert [c.items for c in again] == [[0], [2]]  # the one before (its result died too) and the one after
    for piece in again:
        job.complete(piece, squares(piece), None, 0.0)
    results = job.pop_ready()
    assert results[0] == 0 and isinstance(results[1], WorkerDiedError) and results[2] == 4


def test_a_chunk_whose_results_were_lost_is_sent_once_more_with_separate_results() -> None:
    job = make_job(list(range(2)), 2)
    [chunk] = take_all(job)
    assert not chunk.separate_results
    job.resend(chunk)
    [again] = take_all(job)
    assert again.separate_results and again.items == chunk.items


def test_an_ended_pool_withdraws_the_batch_being_read() -> None:
    job = make_job(list(range(4)), 2)
    first, _ = take_all(job)
    job.complete(first, squares(first), None, 0.0)
    batch = job.pop_ready()
    reader = iter(batch)
    assert next(reader) == 0
    job.fail(PoolClosedError("Pool was terminated"))
    job.withdraw_results()
    assert list(reader) == []  # the caller's loop stops; it raises at its next step
    assert isinstance(job.error, PoolClosedError)


def test_an_input_that_raises_fails_the_job_with_that_exception() -> None:
    def broken() -> Any:
        yield 1
        raise KeyError("input broke")

    sizer = ChunkSizer(None, 1, 1, None)
    job = Job(0, 0, CALL_UNPACK, iter_chunks(broken(), sizer, None), sizer, ordered=True, n_tasks=None)
    take_all(job)
    assert isinstance(job.error, KeyError)


@pytest.mark.parametrize(("n", "n_splits", "sizes"), [(100, 3, [34, 33, 33]), (10, None, None)])
def test_chunk_sizes(n: int, n_splits: int | None, sizes: list[int] | None) -> None:
    sizer = ChunkSizer(n, 2, None if n_splits else 2.5, n_splits)
    got = [len(c) for c in iter_chunks(range(n), sizer, None)]
    assert got == (sizes if sizes is not None else [3, 2, 3, 2])  # MPIRE's: chunk k ends at ceil(k * size)
    assert sum(got) == n


def test_guided_chunks_shrink_and_cover_the_input() -> None:
    sizer = ChunkSizer(10_000, 2, None, None)
    got = [len(c) for c in iter_chunks(range(10_000), sizer, None)]
    assert sum(got) == 10_000
    assert got[0] > got[-1] and got == sorted(got, reverse=True)


def test_automatic_chunks_stay_under_the_cap() -> None:
    sizer = ChunkSizer(10_000, 2, None, None, max_size=7)
    assert max(len(c) for c in iter_chunks(range(10_000), sizer, None)) <= 7


def test_a_measured_time_per_task_keeps_guided_chunks_worth_their_round_trip() -> None:
    # 10 tasks of a microsecond: 9 chunks by the guided schedule alone, one per worker once the time is known.
    unknown = [len(c) for c in iter_chunks(range(10), ChunkSizer(10, 2, None, None), None)]
    assert len(unknown) > 4
    known = [len(c) for c in iter_chunks(range(10), ChunkSizer(10, 2, None, None, task_seconds=1e-6), None)]
    assert known == [5, 5]
    # Tasks slow enough that any chunk is worth sending: the schedule is unchanged.
    slow = [len(c) for c in iter_chunks(range(1000), ChunkSizer(1000, 2, None, None, task_seconds=0.1), None)]
    assert slow == [len(c) for c in iter_chunks(range(1000), ChunkSizer(1000, 2, None, None), None)]
    # Chunks worth their round trip are evened out over the workers: 4 of 25k, not 3 of 33k (two for one worker).
    even = [len(c) for c in iter_chunks(range(100_000), ChunkSizer(100_000, 2, None, None, task_seconds=6e-8),
                                        None)]
    assert even == [25_000] * 4
    # A size the caller chose, or a cap on tasks in flight, wins over the measure.
    fixed = ChunkSizer(100, 2, 3, None, task_seconds=1e-9)
    assert {len(c) for c in iter_chunks(range(99), fixed, None)} == {3}
    capped = ChunkSizer(10_000, 2, None, None, max_size=7, task_seconds=1e-9)
    assert max(len(c) for c in iter_chunks(range(10_000), capped, None)) <= 7


def test_a_frame_round_trips_with_out_of_band_buffers() -> None:
    np = pytest.importorskip("numpy")
    from parallelize.backends._pipes import HEADER, decode, encode

    message = RunChunk(1, 2, 3, CALL_UNPACK, [np.arange(100_000), "x"], 5, None, False, False, 9)
    parts = encode(message)
    body = b"".join(bytes(p) for p in parts)[HEADER.size:]  # after the frame length
    got = decode(body)
    assert got._replace(items=None) == message._replace(items=None)
    assert (got.items[0] == message.items[0]).all() and got.items[1] == "x"
