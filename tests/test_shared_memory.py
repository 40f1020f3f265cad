"""Large numpy buffers between parent and process workers through shared memory (backends/_shm.py).

Arguments are read in place from the worker's task arena, results cross through its result ring; what does not
fit falls back to the pipe. These tests check what a user relies on: every value intact, arguments a task keeps
never overwritten, arguments usable by pools forked inside a task, nothing left behind; and that the fast path is
really taken (arguments live in shared memory, regions are reused once released).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import child_keys
from parallelize import WorkerPool, parallel
from parallelize.backends._shm import ARENA_BYTES, ResultRing, TaskArena, create_segment_fds

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20
N_JOBS = 2
PROCESS_METHODS = ["fork", "forkserver", "spawn"]


# --- tasks (module level: importable under spawn and forkserver) --------------------------------------------------


def in_shared_memory(array: np.ndarray) -> bool:
    """The array is a view of a task-arena region (a pipe frame would be a bytearray)."""
    base: Any = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, ctypes.Array)


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.data).hexdigest()


def where_and_digest(array: np.ndarray) -> tuple[bool, str]:
    return in_shared_memory(array), digest(array)


def seeded_array(seed: int, n_bytes: int = MIB) -> np.ndarray:
    return np.random.default_rng(seed).random(n_bytes // 8)


def add_one_in_place(array: np.ndarray) -> float:
    array += 1.0
    return float(array.sum())


def keep_every_third_and_check_the_kept(worker_state: dict[str, Any], array: np.ndarray) -> bool:
    kept: list[tuple[np.ndarray, np.ndarray]] = worker_state.setdefault("kept", [])
    if int(array[0]) % 3 == 0:
        kept.append((array, array.copy()))
    return all(np.array_equal(a, original) for a, original in kept)


def _slice_sum(shared: np.ndarray, part: int) -> float:
    return float(shared[part::4].sum())


def sum_with_a_forked_inner_pool(array: np.ndarray) -> float:
    with WorkerPool(2, start_method="fork", shared_objects=array) as inner:
        return float(sum(inner.map(_slice_sum, range(4), chunk_size=1)))


def _overwrite_slice(shared: np.ndarray, part: int) -> None:
    shared[part::4] = -1.0


def digest_after_a_forked_inner_pool_writes(array: np.ndarray) -> str:
    with WorkerPool(2, start_method="fork", shared_objects=array) as inner:
        inner.map(_overwrite_slice, range(4), chunk_size=1)
    return digest(array)


def fork_a_reader_that_outlives_the_task(gate: int, report: str, array: np.ndarray) -> int:
    """Fork a child that waits for a byte on the pipe *gate*, then writes the digest of *array* to *report*."""
    pid = os.fork()
    if pid == 0:
        try:
            os.read(gate, 1)
            Path(report + ".tmp").write_text(digest(array))
            os.replace(report + ".tmp", report)
        finally:
            os._exit(0)
    return pid


def reap(pid: int) -> bool:
    os.waitpid(pid, 0)
    return True


def own_memfds(_: Any = None) -> list[str]:
    return memfd_links(os.getpid())


def memfd_links(pid: int) -> list[str]:
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("/memfd:parallelize"):
                links.append(target.split(" ")[0])
    return sorted(links)


def round_trip(array: np.ndarray) -> np.ndarray:
    return array + 1.0


# --- the fast path is taken, and everything arrives intact ------------------------------------------------------


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_array_arguments_are_read_in_place_and_their_regions_reused(start_method: str) -> None:
    # 80 MiB of arguments through two 32 MiB arenas: every one in shared memory means regions come back.
    arrays = [seeded_array(seed) for seed in range(80)]
    with WorkerPool(N_JOBS, start_method=start_method) as pool:
        results = pool.map(where_and_digest, [(a,) for a in arrays], chunk_size=1)
    assert [placed for placed, _ in results] == [True] * len(arrays)
    assert [found for _, found in results] == [digest(a) for a in arrays]


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_array_results_arrive_intact_and_writable(start_method: str) -> None:
    seeds = list(range(70))  # more than one ring's worth of results per worker
    with WorkerPool(N_JOBS, start_method=start_method) as pool:
        results = pool.map(seeded_array, seeds, chunk_size=2, concatenate_numpy_output=False)
    for seed, result in zip(seeds, results, strict=True):
        np.testing.assert_array_equal(result, seeded_array(seed))
        assert result.flags.writeable


def test_arguments_are_writable_in_the_worker_and_the_parents_arrays_unchanged() -> None:
    arrays = [np.full(MIB // 8, float(i)) for i in range(6)]
    with WorkerPool(N_JOBS, start_method="fork") as pool:
        sums = pool.map(add_one_in_place, [(a,) for a in arrays], chunk_size=1)
    assert sums == [float((i + 1) * (MIB // 8)) for i in range(6)]
    assert all(float(a[0]) == i for i, a in enumerate(arrays))


def test_an_argument_kept_in_worker_state_is_never_overwritten_by_later_arguments() -> None:
    arrays = [np.full(MIB // 8, float(i)) for i in range(90)]  # more than the arena: kept regions must stay put
    with WorkerPool(N_JOBS, start_method="fork", use_worker_state=True) as pool:
        intact = pool.map(keep_every_third_and_check_the_kept, [(a,) for a in arrays], chunk_size=1)
    assert intact == [True] * len(arrays)


def test_a_pool_forked_inside_a_task_reads_the_tasks_array_argument() -> None:
    arrays = [seeded_array(seed) for seed in range(3)]
    with WorkerPool(N_JOBS, start_method="fork", daemon=False) as pool:
        sums = pool.map(sum_with_a_forked_inner_pool, [(a,) for a in arrays], chunk_size=1)
    assert sums == pytest.approx([float(a.sum()) for a in arrays])


def test_writes_by_a_pool_forked_inside_a_task_do_not_reach_the_tasks_argument() -> None:
    # As with any other memory a child inherits: copy on write, not shared.
    arrays = [seeded_array(seed) for seed in range(2)]
    with WorkerPool(N_JOBS, start_method="fork", daemon=False) as pool:
        digests = pool.map(digest_after_a_forked_inner_pool_writes, [(a,) for a in arrays], chunk_size=1)
    assert digests == [digest(a) for a in arrays]


def test_a_child_forked_in_a_task_keeps_its_argument_after_the_region_is_reused(tmp_path: Path) -> None:
    report = str(tmp_path / "report")
    gate_r, gate_w = os.pipe()  # inherited by the worker and its child
    original = np.full(MIB // 8, 1.0)
    try:
        with WorkerPool(1, start_method="fork", keep_alive=True) as pool:
            [child] = pool.map(fork_a_reader_that_outlives_the_task, [(gate_r, report, original)])
            # Later arguments reuse the region the child's array lay in (first fit: the lowest free region).
            assert pool.map(where_and_digest, [(np.full(MIB // 8, 7.0),) for _ in range(4)], chunk_size=1)[0][0]
            os.write(gate_w, b"x")
            deadline = time.monotonic() + 30
            while not os.path.exists(report) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert pool.apply(reap, (child,))  # its own parent reaps it: no zombie left behind
    finally:
        os.close(gate_r)
        os.close(gate_w)
    assert Path(report).read_text() == digest(original)


def test_each_worker_holds_only_its_own_segment_descriptors() -> None:
    # A forked sibling holding another worker's descriptors would keep that worker's memory after it dies.
    with WorkerPool(3, start_method="fork", keep_alive=True) as pool:
        pool.map(round_trip, [(seeded_array(s),) for s in range(6)], chunk_size=1, concatenate_numpy_output=False)
        per_worker = pool.map(own_memfds, range(30), chunk_size=1)
        in_parent = memfd_links(os.getpid())
    assert {len(links) for links in per_worker} == {1}  # its result ring (the arena is mapped, its fd closed)
    assert in_parent == ["/memfd:parallelize-tasks"] * 3  # one arena descriptor per worker, kept for writes


@parallel(n_jobs=1, start_method="spawn")  # no memory shared with this process through fork: see below
def round_trip_decorated(array: np.ndarray) -> np.ndarray:
    return array + 1.0


def private_memory(_: Any = None) -> int:
    import psutil

    return int(psutil.Process().memory_full_info().uss)


def test_the_shared_segments_do_not_count_against_max_worker_memory(caplog: pytest.LogCaptureFixture) -> None:
    # Spawned workers: a forked one's own memory grows whenever this process writes to pages they still share.
    with WorkerPool(1, start_method="spawn") as pool:
        fresh_worker = pool.apply(private_memory)
    limit = fresh_worker + 24 * MIB  # less than the result ring's 32 MiB, which the calls below fill
    try:
        with caplog.at_level(logging.WARNING, logger="parallelize"):
            pids = set()
            # Long enough for several memory checks (at most every 0.25 s, between chunks).
            arrays = [seeded_array(s) for s in range(40)]
            ends = time.monotonic() + 1.0
            while time.monotonic() < ends:
                round_trip_decorated(arrays, chunk_size=1, max_worker_memory=limit)
                pids.update(round_trip_decorated.worker_pids())
    finally:
        round_trip_decorated.close()
    assert "max_worker_memory" not in caplog.text
    assert len(pids) == 1


def test_buffers_larger_than_the_shared_segments_travel_through_the_pipe() -> None:
    big = seeded_array(7, ARENA_BYTES + MIB)
    with WorkerPool(N_JOBS, start_method="fork") as pool:
        [(placed, found)] = pool.map(where_and_digest, [(big,)])
        [result] = pool.map(seeded_array, [(8, ARENA_BYTES + MIB)], concatenate_numpy_output=False)
    assert not placed
    assert found == digest(big)
    np.testing.assert_array_equal(result, seeded_array(8, ARENA_BYTES + MIB))


def test_closing_the_pool_releases_every_descriptor_and_creates_nothing_in_dev_shm() -> None:
    fds_before, shm_before = set(os.listdir("/proc/self/fd")), set(os.listdir("/dev/shm"))
    children_before = child_keys()
    with WorkerPool(N_JOBS, start_method="fork") as pool:
        assert len(pool.map(seeded_array, range(8), chunk_size=1, concatenate_numpy_output=False)) == 8
    assert set(os.listdir("/proc/self/fd")) == fds_before
    assert set(os.listdir("/dev/shm")) - shm_before == set()
    assert child_keys() <= children_before


# --- the allocators, in one process ------------------------------------------------------------------------------


def _fds() -> tuple[int, int]:
    fds = create_segment_fds()
    assert fds is not None, "memfd_create is available on Linux"
    return fds


def test_task_arena_refuses_a_buffer_when_full_and_reuses_the_lowest_released_region() -> None:
    task_fd, ring_fd = _fds()
    os.close(ring_fd)
    arena = TaskArena(task_fd)
    try:
        block = memoryview(bytearray(8 * MIB))
        offsets = [arena.place(block) for _ in range(ARENA_BYTES // (8 * MIB))]
        assert offsets == [i * 8 * MIB for i in range(len(offsets))]
        assert arena.place(block) == -1
        arena.release([offsets[2], offsets[1]])
        assert arena.place(memoryview(bytearray(16 * MIB))) == offsets[1]  # neighbours merged into one region
        arena.release([offsets[0]])
        assert arena.place(block) == 0
    finally:
        arena.close()


def test_result_ring_waits_for_the_parent_to_take_before_overwriting_and_wraps_around() -> None:
    task_fd, ring_fd = _fds()
    os.close(task_fd)
    worker_side = ResultRing(os.dup(ring_fd), writer=True)
    parent_side = ResultRing(ring_fd, writer=False)
    try:
        chunk = 10 * MIB  # three fit, a fourth would need the space of the first
        payloads = [bytes([i]) * chunk for i in range(5)]
        first, second, third = (worker_side.place(memoryview(p)) for p in payloads[:3])
        assert worker_side.place(memoryview(payloads[3])) == -1  # full until the parent takes
        assert parent_side.take(first, chunk) == payloads[0]
        fourth = worker_side.place(memoryview(payloads[3]))
        assert fourth >= 0 and fourth % ARENA_BYTES == 0  # did not fit at the end: started again at the front
        assert [parent_side.take(p, chunk) for p in (second, third, fourth)] == payloads[1:4]
        assert worker_side.place(memoryview(payloads[4])) >= 0
    finally:
        worker_side.close()
        parent_side.close()
