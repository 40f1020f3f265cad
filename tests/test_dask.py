"""The decorator on a Dask cluster (backend="dask"): the same calls, hooks, state and errors as on local processes.

One LocalCluster(n_workers=2, threads_per_worker=1) serves the module (started before the first test's leak check);
a test that kills one of its workers waits for the nanny's replacement. The command-line cluster test starts its
own scheduler and workers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests import dask_cluster
from tests.fault_tasks import UnreadableHere

import parallelize
from parallelize import ClusterError, ResultPicklingError, TaskTimeoutError, WorkerDiedError, parallel
from parallelize._errors import RemoteTraceback

pytestmark = pytest.mark.timeout(120)

DEADLINE = 30.0


@pytest.fixture(scope="module", autouse=True)
def client() -> Iterator[Any]:
    with dask_cluster.local_cluster() as made:
        yield made


@pytest.fixture
def workers(client: Any) -> dict[str, int]:
    """Address -> pid of each worker of the cluster, two of them (waiting for a replaced one if need be)."""
    client.wait_for_workers(2, timeout=DEADLINE)
    return dict(client.run(os.getpid))


@pytest.fixture
def on_dask(client: Any) -> Iterator[Any]:
    """parallel(...) with backend="dask" on the module's cluster; every function made is closed after the test."""
    with dask_cluster.decorating(client) as decorate:
        yield decorate


# --- task functions (module level: the workers import them) ---------------------------------------------------------

def square(x: int) -> int:
    return x * x


def where(x: int) -> int:
    return os.getpid()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"three is not allowed: {x}")
    return x


def count_calls(state: dict[str, int], x: int) -> tuple[int, int]:
    state["calls"] = state.get("calls", 0) + 1
    return x, state["calls"]


def with_id(worker_id: int, x: int) -> tuple[int, int]:
    return worker_id, x


def read_shared(shared: Any, x: int) -> int:
    return len(shared.data) + x


class Shared:
    """A shared object that records, in a file, each time it is unpickled (once per worker, not per chunk)."""

    def __init__(self, log: Path, size: int) -> None:
        self.log = log
        self.data = bytes(size)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        with open(self.log, "a") as log:
            log.write(f"{os.getpid()}\n")


def init_hook(state: dict[str, Any]) -> None:
    state["pid"] = os.getpid()
    state["done"] = 0


def tally(state: dict[str, Any], x: int) -> int:
    state["done"] += 1
    return x


def exit_hook(state: dict[str, Any]) -> tuple[int, int]:
    return state["pid"], state["done"]


def unreadable_at_one(x: int) -> Any:
    return UnreadableHere() if x == 1 else x


def wait_for_file(path: str) -> str:
    """Blocks until *path* exists (at most DEADLINE seconds), in Python code, as a stuck task would."""
    deadline = time.monotonic() + DEADLINE
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return path


def die_twice(directory: str, x: int) -> int:
    """Its first two runs write their pid to a new file in *directory* and wait to be killed; the third returns."""
    runs = len(os.listdir(directory))
    if runs < 2:
        with open(os.path.join(directory, f"{runs}.tmp"), "w") as out:
            out.write(str(os.getpid()))
        os.rename(os.path.join(directory, f"{runs}.tmp"), os.path.join(directory, f"run-{runs}"))
        time.sleep(DEADLINE)
    return x


def wait_for(path: Path, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not path.exists():
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE}s"
        time.sleep(0.01)


# --- calls ----------------------------------------------------------------------------------------------------------

def test_a_call_returns_every_result_in_order_computed_in_the_cluster_workers(on_dask: Any,
                                                                             workers: dict[str, int]) -> None:
    f = on_dask(square)
    assert f(range(2000)) == [x * x for x in range(2000)]
    pids = on_dask(where)(range(200))
    assert set(pids) <= set(workers.values()) and os.getpid() not in pids


def test_n_jobs_defaults_to_the_cluster_threads(on_dask: Any) -> None:
    f = on_dask(with_id, pass_worker_id=True)
    ids = {worker_id for worker_id, _ in f(range(50), chunk_size=1)}
    assert ids <= {0, 1}
    assert len(f.worker_pids()) == 2  # the pids the workers reported


def test_imap_streams_an_endless_generator_with_bounded_reading(on_dask: Any) -> None:
    read = itertools.count()
    consumed = []

    def endless() -> Iterator[int]:
        for x in read:
            consumed.append(x)
            yield x

    f = on_dask(square, n_jobs=2)
    results = f.imap(endless(), max_tasks_active=64)
    first = list(itertools.islice(results, 500))
    assert first == [x * x for x in range(500)]
    assert len(consumed) <= 500 + 64  # read no further ahead than max_tasks_active
    results.close()  # type: ignore[attr-defined]


def test_unordered_submit_and_async_calls(on_dask: Any) -> None:
    f = on_dask(square, n_jobs=2)
    assert sorted(f.imap_unordered(range(100))) == [x * x for x in range(100)]
    assert f.submit(7).result(timeout=DEADLINE) == 49
    assert asyncio.run(f.amap(range(10))) == [x * x for x in range(10)]


def test_lambdas_and_closures_run_on_the_cluster(on_dask: Any) -> None:
    offset = 5
    assert on_dask(lambda x: x + offset)(range(4)) == [5, 6, 7, 8]


# --- hooks, state, shared objects -------------------------------------------------------------------------------------

def test_worker_state_and_hooks_live_per_worker_with_exit_results(on_dask: Any, workers: dict[str, int]) -> None:
    f = on_dask(tally, n_jobs=2, worker_state=True, worker_init=init_hook, worker_exit=exit_hook)
    assert f(range(300)) == list(range(300))
    results = f.close()
    assert len(results) == 2
    assert {pid for pid, _ in results} <= set(workers.values())
    assert sum(done for _, done in results) == 300


def test_worker_state_persists_across_chunks(on_dask: Any) -> None:
    f = on_dask(count_calls, n_jobs=2, worker_state=True)
    counts = [calls for _, calls in f(range(100), chunk_size=5)]
    assert max(counts) > 5  # a worker's state outlives its chunks


def test_shared_objects_travel_once_per_worker_not_per_chunk(on_dask: Any, tmp_path: Path) -> None:
    log = tmp_path / "unpickled"
    shared = Shared(log, 1 << 20)
    f = on_dask(read_shared, n_jobs=2, shared_objects=shared)
    assert f(range(200), chunk_size=1) == [(1 << 20) + x for x in range(200)]
    assert len(log.read_text().split()) == 2  # one per worker, for 200 chunks


def test_pass_worker_id_is_stable_per_worker(on_dask: Any) -> None:
    f = on_dask(with_id, n_jobs=2, pass_worker_id=True)
    first = {worker_id for worker_id, _ in f(range(40), chunk_size=1)}
    second = {worker_id for worker_id, _ in f(range(40), chunk_size=1)}
    assert first | second <= {0, 1}


# --- errors -----------------------------------------------------------------------------------------------------------

def test_a_task_error_keeps_its_type_and_the_remote_traceback(on_dask: Any) -> None:
    f = on_dask(fail_on_three, n_jobs=2)
    with pytest.raises(ValueError, match="three is not allowed") as caught:
        f(range(10))
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback) and "fail_on_three" in cause.traceback_text
    returned = f(range(5), on_error="return")
    assert returned[:3] == [0, 1, 2] and isinstance(returned[3], ValueError) and returned[4] == 4
    assert f(range(5), on_error="skip") == [0, 1, 2, 4]


def test_a_result_this_process_cannot_unpickle_fails_its_task_and_the_pool_goes_on(on_dask: Any) -> None:
    f = on_dask(unreadable_at_one, n_jobs=2)
    results = f(range(4), on_error="return")
    assert isinstance(results[1], ResultPicklingError) and "cannot be unpickled here" in str(results[1])
    assert [results[0], *results[2:]] == [0, 2, 3]
    assert f([0, 2]) == [0, 2]


def test_a_task_past_its_timeout_fails_the_call_and_the_pool_goes_on(on_dask: Any, tmp_path: Path) -> None:
    release = tmp_path / "release"
    f = on_dask(wait_for_file, n_jobs=2)
    t0 = time.monotonic()
    try:
        with pytest.raises(TaskTimeoutError):
            f([str(release)], task_timeout=0.5)
        assert time.monotonic() - t0 < DEADLINE / 2  # reported when it timed out, not when the task returned
    finally:
        release.touch()  # the disowned task returns, and its Dask worker's thread is free again
    assert on_dask(square, n_jobs=2)(range(10)) == [x * x for x in range(10)]


def kill_runs(directory: Path, runs: int) -> None:
    """Kill the Dask worker process of each of the first *runs* runs of die_twice, as they start."""
    for run in range(runs):
        marker = directory / f"run-{run}"
        wait_for(marker, f"run {run} of the task")
        os.kill(int(marker.read_text()), signal.SIGKILL)


@pytest.mark.parametrize("retries", [0, 1])
def test_a_lost_worker_is_a_worker_died_error_or_retried(tmp_path: Path, retries: int) -> None:
    # As with local processes: a chunk whose worker is lost runs once more (tracked, to name the task); a second
    # loss fails the task with WorkerDiedError, or retries it per the call's policy. On a cluster of its own: the
    # nannies start new worker processes, which must be gone when the test ends.
    with dask_cluster.local_cluster() as own:
        f = parallel(backend="dask", cluster=own, n_jobs=2, retries=retries)(die_twice)
        try:
            future = f.submit(str(tmp_path), 7)
            kill_runs(tmp_path, 2)
            if retries:
                assert future.result(timeout=DEADLINE) == 7
            else:
                with pytest.raises(WorkerDiedError, match="connection to the Dask worker was lost"):
                    future.result(timeout=DEADLINE)
        finally:
            f.close()


def test_an_unreachable_scheduler_fails_within_seconds_naming_the_address() -> None:
    f = parallel(backend="dask", cluster="tcp://127.0.0.1:9")(square)
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=r"tcp://127\.0\.0\.1:9.*the cluster option"):
        f(range(3))
    assert time.monotonic() - t0 < 20


def test_the_scheduler_address_variable_is_named_when_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:9")
    f = parallel(backend="dask")(square)
    with pytest.raises(ClusterError, match="DASK_SCHEDULER_ADDRESS"):
        f(range(3))


def test_a_cluster_object_is_reached_through_its_scheduler_address(client: Any) -> None:
    from parallelize.backends import _dask_cluster

    f = parallel(backend="dask", cluster=client.cluster, n_jobs=2)(square)  # the LocalCluster itself
    try:
        assert f(range(10)) == [x * x for x in range(10)]
    finally:
        f.close()
        _dask_cluster.close_all()  # the client opened to its address, before the module's cluster stops


def test_a_bad_cluster_value_is_refused_naming_the_option() -> None:
    with pytest.raises(parallelize.ConfigError, match="cluster must be"):
        parallel(backend="dask", cluster=42)(square)


# --- progress and insights ----------------------------------------------------------------------------------------

def test_insights_cover_the_calls_on_the_cluster(on_dask: Any) -> None:
    f = on_dask(square, n_jobs=2)
    with parallelize.insights() as report:
        f(range(500))
    data = report.to_dict()
    assert data["calls"][0]["items"] == 500
    assert sum(worker["n_completed"] for worker in data["workers"]) == 500


def test_a_progress_bar_counts_every_task_on_the_cluster(on_dask: Any, capsys: pytest.CaptureFixture[str]) -> None:
    f = on_dask(square, n_jobs=2)
    assert len(f(range(300), progress_bar=True, progress_bar_style="log")) == 300
    assert "square: 300/300 tasks (100%)" in capsys.readouterr().err


def test_a_backend_dropped_without_close_lets_go_of_its_descriptors(client: Any) -> None:
    import gc

    from parallelize.backends.dask import DaskBackend

    backend = DaskBackend(client)
    fds = [backend._listener.fileno(), backend._selector.fileno(), backend._wake_r, backend._wake_w]

    def files() -> set[tuple[int, int, int]]:
        """(fd, device, inode) of those descriptors still open (Dask's threads may reuse a number meanwhile)."""
        found = set()
        for fd in fds:
            try:
                stat = os.fstat(fd)
            except OSError:
                continue
            found.add((fd, stat.st_dev, stat.st_ino))
        return found

    held = files()
    assert len(held) == 4
    del backend
    gc.collect()
    assert not held & files()


# --- a cluster started as commands, and one started for the script -------------------------------------------------

def test_a_cluster_started_by_hand_runs_the_tasks_and_outlives_close() -> None:
    distributed = dask_cluster.require_distributed()
    with dask_cluster.command_line_processes() as cluster:
        try:
            f = parallel(backend="dask", cluster=cluster.address)(where)
            pids = f(range(100), chunk_size=1)
            assert set(pids) == cluster.worker_pids()  # both workers ran tasks, and only they did
            f.close()
            with distributed.Client(cluster.address, set_as_default=False, timeout=DEADLINE) as client:
                assert len(client.nthreads()) == 2  # close() left the user's cluster up
            assert all(worker.poll() is None for worker in cluster.workers)
        finally:
            from parallelize.backends import _dask_cluster

            _dask_cluster.close_all()


SCRIPT = """
import os
from parallelize import parallel

def in_main(x):
    return x * 3

if __name__ == "__main__":
    scale = 10
    f = parallel(backend="dask", n_jobs=2)(in_main)
    g = parallel(backend="dask", n_jobs=2)(lambda x: x * scale)
    print(f(range(5)), g(range(3)))
    print("local" if all(p != os.getpid() for p in f.worker_pids()) else "?")
"""


def test_a_script_gets_a_local_cluster_for_its_main_functions_and_lambdas(tmp_path: Path) -> None:
    dask_cluster.require_distributed()
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARALLELIZE_", "DASK_"))}
    env["TMPDIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=DEADLINE * 2,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[0, 3, 6, 9, 12] [0, 10, 20]", "local"]
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("parallelize-dask-*")), "the local cluster's directory was left behind"
