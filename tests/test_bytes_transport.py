"""Large bytes, bytearray and memoryview objects between parent and workers, out of band (_serialize) and through
shared memory (backends/_shm.py) as numpy buffers go.

What a user relies on: every value arrives intact and of its own type (bytes stays immutable bytes, bytearray and
memoryview stay writable or read-only as they were), at any depth of an argument or result, on every backend; a
result stays intact while later maps reuse the shared memory it came through. Pickling itself is tested without
processes: which objects leave the pickle, and that pieces of the pickle that merely look like opcodes never do.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pickle
import random
import struct
import threading
from typing import Any

import numpy as np
import pytest

from parallelize import WorkerPool, parallel
from parallelize._serialize import OUT_OF_BAND_MIN, dumps_out_of_band

pytestmark = pytest.mark.timeout(120)

K = OUT_OF_BAND_MIN
N_JOBS = 2
ALL_METHODS = ["fork", "forkserver", "spawn", "threading"]
PROCESS_METHODS = ["fork", "forkserver", "spawn"]
SIZES = [0, 100, K - 1, K, K + 1, 5 * K + 3, 700_000]  # around the threshold, and past the shared-memory one


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


def round_trip(obj: Any) -> tuple[Any, int]:
    """(obj pickled and unpickled as a frame would carry it, the number of out-of-band buffers)."""
    data, buffers = dumps_out_of_band(obj)
    return pickle.loads(data, buffers=[bytearray(b) for b in buffers]), len(buffers)


# --- tasks (module level: importable under spawn and forkserver) --------------------------------------------------


def describe(obj: Any) -> Any:
    """Type and digest at every depth (memoryviews: also format, shape, writability): equal descriptions mean
    equal values of the same types. Tasks return it for what they received."""
    if isinstance(obj, (list, tuple)):
        return type(obj).__name__, [describe(x) for x in obj]
    if isinstance(obj, dict):
        return "dict", {k: describe(v) for k, v in obj.items()}
    if isinstance(obj, memoryview):
        return "memoryview", obj.format, obj.shape, obj.readonly, sha(obj.tobytes())
    if isinstance(obj, (bytes, bytearray)):
        return type(obj).__name__, sha(obj)
    return type(obj).__name__, obj


def describe_args(*args: Any, **kwargs: Any) -> Any:
    return describe(list(args)), describe(kwargs)


def make_result(kind: str, seed: int, size: int) -> Any:
    data = payload(seed, size)
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(bytearray(data))
    if kind == "readonly memoryview":
        return memoryview(data)
    if kind == "nested":
        return {"name": f"item {seed}", "parts": [data, (bytearray(data[:K]), seed)], "small": data[:10]}
    raise ValueError(kind)


def mutate_and_describe(data: bytearray) -> tuple[str, str]:
    """A bytearray argument is the worker's own: it can grow."""
    data += b"!"
    return type(data).__name__, sha(data)


def where_and_digest(view: memoryview) -> tuple[bool, str]:
    """A large memoryview argument is read in place from shared memory (a frame would give a bytearray)."""
    return isinstance(view.obj, ctypes.Array), sha(view)


def keep_and_check(worker_state: dict[str, Any], view: memoryview) -> bool:
    kept: list[tuple[memoryview, str]] = worker_state.setdefault("kept", [])
    if view[0] % 3 == 0:
        kept.append((view, sha(view)))
    return all(sha(v) == digest for v, digest in kept)


def spread(seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (3 * K // 32)


# --- pickling, without processes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_bytes_and_bytearrays_leave_the_pickle_at_any_depth_and_come_back_as_they_were(
        kind: type, size: int) -> None:
    data = kind(payload(size, size))
    part = data[: K + 5]  # the object itself when bytes are sliced whole
    message = ("name", [data, {"key": (1, part)}])
    out, n_buffers = round_trip(message)
    assert describe(out) == describe(message)
    assert n_buffers == len({id(x) for x in (data, part) if len(x) >= K})


def test_the_same_object_twice_travels_once_and_arrives_as_one_object() -> None:
    data = payload(1, 2 * K)
    out, n_buffers = round_trip([data, data, bytearray(data)])
    assert n_buffers == 2 and out[0] is out[1] and out[0] == data and out[2] == data


def test_a_large_str_stays_in_the_pickle() -> None:
    text = "é" * K
    out, n_buffers = round_trip([text, payload(2, K)])
    assert out[0] == text and n_buffers == 1


def test_pieces_that_look_like_the_opcode_of_a_large_object_stay_in_the_pickle() -> None:
    # The pickle is written in pieces; a large object follows the piece ending with its opcode and size. Data
    # ending with such bytes (at any size that could match the next piece) must not be taken for one.
    rng = random.Random(7)
    for _ in range(300):
        items: list[Any] = []
        for _ in range(rng.randint(1, 6)):
            size = rng.choice([9, 300, K - 1, K, K + 1, 3 * K + 7])
            data = rng.randbytes(size)
            fake = rng.choice([b"B", b"\x8e", b"\x96", b"X", b"\x95"]) + struct.pack("<Q", rng.choice([K, K + 9]))
            data = data[: -len(fake)] + fake if size > len(fake) else data
            items.append(rng.choice([bytes, bytearray, lambda d: d.decode("latin-1")])(data))
            if rng.random() < 0.3:
                items.append(list(range(rng.randint(0, 30_000))))
        out, _ = round_trip(items)
        assert describe(out) == describe(items)


class Unpicklable:
    def __reduce__(self) -> Any:
        raise ValueError("refuses to be pickled")


def test_a_failed_pickling_leaves_nothing_behind_for_the_next_message() -> None:
    # Each thread reuses one Pickler: a message that fails halfway must not leak pieces or memo into the next.
    with pytest.raises(ValueError, match="refuses"):
        dumps_out_of_band([payload(1, 2 * K), Unpicklable()])
    message = [payload(2, 2 * K), "small"]
    assert round_trip(message) == (message, 1)


def test_threads_pickling_at_once_each_get_their_own_messages() -> None:
    errors: list[str] = []

    def pickle_many(seed: int) -> None:
        for round_ in range(50):
            message = (seed, round_, [payload(seed * 100 + round_, K + round_), bytearray(payload(seed, 300))])
            out, _ = round_trip(message)
            if describe(out) != describe(message):
                errors.append(f"thread {seed}, round {round_}")

    threads = [threading.Thread(target=pickle_many, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.parametrize("view", [
    memoryview(payload(3, 2 * K)),
    memoryview(bytearray(payload(3, 2 * K))),
    memoryview(bytearray(64)),
    memoryview(np.arange(3 * K, dtype=np.float64)).cast("B").cast("d", (3, K)),
    memoryview(np.arange(24, dtype=np.int32).reshape(4, 6))[::2],
    memoryview(b""),
], ids=["readonly", "writable", "small", "2d", "strided", "empty"])
def test_memoryviews_keep_their_format_shape_and_writability(view: memoryview) -> None:
    out, _ = round_trip([view])
    assert isinstance(out[0], memoryview)
    assert describe(out[0]) == describe(view)


def test_a_memoryview_of_a_format_that_cannot_be_rebuilt_is_refused_naming_the_format() -> None:
    view = memoryview((ctypes.c_int32 * 4)())  # ctypes exports '<i', which memoryview.cast does not accept
    with pytest.raises(TypeError, match="'<i'"):
        dumps_out_of_band([view])


# --- through workers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", ALL_METHODS)
def test_arguments_of_every_size_and_kind_arrive_intact_and_of_their_type(start_method: str) -> None:
    items = []
    for seed, size in enumerate(SIZES):
        data = payload(seed, size)
        items.append((f"item {seed}", data))  # the (name, data) call
        items.append((bytearray(data), {"nested": [memoryview(data), memoryview(bytearray(data))]}))
    with WorkerPool(N_JOBS, start_method=start_method) as pool:
        received = pool.map(describe_args, items, chunk_size=3)
    assert received == [describe_args(*item) for item in items]


@pytest.mark.parametrize("start_method", ALL_METHODS)
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "readonly memoryview", "nested"])
def test_results_arrive_intact_and_of_their_type(start_method: str, kind: str) -> None:
    calls = [(kind, seed, size) for seed, size in enumerate(SIZES * 2)]
    with WorkerPool(N_JOBS, start_method=start_method) as pool:
        results = pool.map(make_result, calls, chunk_size=2)
    assert [describe(r) for r in results] == [describe(make_result(*call)) for call in calls]


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_decorated_calls_send_name_and_data_tuples_and_get_lists_of_bytes(start_method: str) -> None:
    items = [(f"item {seed}", payload(seed, 3 * K)) for seed in range(40)]
    func = parallel(n_jobs=N_JOBS, start_method=start_method)(describe_args)
    try:
        assert func(items) == [describe_args(*item) for item in items]
        results = parallel(n_jobs=N_JOBS, start_method=start_method)(make_result)
        try:
            assert results([("nested", seed, 3 * K) for seed in range(10)]) == [
                make_result("nested", seed, 3 * K) for seed in range(10)]
        finally:
            results.close()
    finally:
        func.close()


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_a_bytearray_argument_belongs_to_the_task_and_the_parents_is_unchanged(start_method: str) -> None:
    arguments = [bytearray(payload(seed, 2 * K)) for seed in range(8)]
    originals = [bytes(a) for a in arguments]
    with WorkerPool(N_JOBS, start_method=start_method) as pool:
        results = pool.map(mutate_and_describe, [(a,) for a in arguments], chunk_size=2)
    assert results == [("bytearray", sha(o + b"!")) for o in originals]
    assert [bytes(a) for a in arguments] == originals


def test_large_memoryview_arguments_are_read_in_place_from_shared_memory() -> None:
    views = [memoryview(bytearray(payload(seed, 300_000))) for seed in range(6)]
    with WorkerPool(N_JOBS, start_method="fork") as pool:
        assert pool.map(where_and_digest, [(v,) for v in views], chunk_size=1) == [(True, sha(v)) for v in views]


def test_a_memoryview_kept_in_worker_state_is_never_overwritten_by_later_arguments() -> None:
    # 90 x 1 MiB through two 32 MiB arenas: regions are reused, except those a kept view lies in.
    views = [memoryview(bytearray(bytes([i % 256]) * (1 << 20))) for i in range(90)]
    with WorkerPool(N_JOBS, start_method="fork", use_worker_state=True) as pool:
        assert pool.map(keep_and_check, [(v,) for v in views], chunk_size=1) == [True] * len(views)


@pytest.mark.parametrize("start_method", PROCESS_METHODS)
def test_results_stay_intact_while_later_maps_reuse_the_shared_memory(start_method: str) -> None:
    # Each map sends more than a result ring holds (75 MiB, 32 MiB per worker): later maps overwrite it all.
    with WorkerPool(N_JOBS, start_method=start_method, keep_alive=True) as pool:
        earlier = pool.map(spread, range(400), chunk_size=4)
        earlier_digests = [sha(r) for r in earlier]
        for round_ in range(1, 4):
            seeds = range(400 * round_, 400 * (round_ + 1))
            assert [sha(r) for r in pool.map(spread, seeds, chunk_size=4)] == [sha(spread(s)) for s in seeds]
    assert [sha(r) for r in earlier] == earlier_digests == [sha(spread(s)) for s in range(400)]
    assert all(type(r) is bytes for r in earlier)


def test_nothing_is_left_in_dev_shm_or_open_after_the_pool_closes() -> None:
    before_shm = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    before_fds = set(os.listdir("/proc/self/fd"))
    with WorkerPool(N_JOBS, start_method="fork") as pool:
        pool.map(make_result, [("nested", seed, 5 * K) for seed in range(20)], chunk_size=2)
    after_shm = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert after_shm == before_shm
    leftover = set(os.listdir("/proc/self/fd")) - before_fds
    links = [os.readlink(f"/proc/self/fd/{fd}") for fd in leftover if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [link for link in links if "parallelize" in link]
