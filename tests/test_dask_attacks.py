"""The Dask backend under hostile use: concurrent callers, os.fork(), Ctrl-C, cancelled calls, absurd options,
objects the workers cannot unpickle, closing under a call, two clusters in one process.

One LocalCluster(n_workers=2, threads_per_worker=1) serves the module (started before the first test's leak check);
the two-cluster test starts a second one, the Ctrl-C test a script with a local cluster of its own.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests import dask_cluster

from parallelize import ClusterError, ConfigError, PoolClosedError, WorkerDiedError, parallel

pytestmark = pytest.mark.timeout(120)

DEADLINE = 30.0
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def client() -> Iterator[Any]:
    with dask_cluster.local_cluster() as made:
        yield made


@pytest.fixture
def on_dask(client: Any) -> Iterator[Any]:
    """parallel(...) with backend="dask" on the module's cluster; every function made is closed after the test."""
    with dask_cluster.decorating(client) as decorate:
        yield decorate


# --- task functions (module level: the workers import them) ---------------------------------------------------------

def square(x: int) -> int:
    return x * x


def negate(x: int) -> int:
    return -x


def fail_on_50(x: int) -> int:
    if x == 50:
        raise ValueError("fifty")
    return x


def pid_of(x: int) -> int:
    return os.getpid()


def slow(x: int) -> int:
    time.sleep(0.01)
    return x


def block_or_fail(path: str) -> str:
    """"fail" raises at once; any other value is a file to wait for (at most DEADLINE seconds), as a stuck task."""
    if path == "fail":
        raise ValueError("the other task failed")
    deadline = time.monotonic() + DEADLINE
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return path


def with_shared(shared: Any, x: int) -> int:
    return x


class Unpicklable:
    """Pickles fine here; unpickling it (in a worker) raises."""

    def __reduce__(self) -> Any:
        return (_refuse, ())


def _refuse() -> None:
    raise RuntimeError("this object refuses to be unpickled")


def outcome(call: Any) -> Any:
    """What *call* returned, or the exception it raised."""
    try:
        return call()
    except Exception as exc:
        return exc


def run_in_threads(targets: dict[str, Any]) -> dict[str, Any]:
    """Run each callable in a thread of its own, all at once; name -> its result or the exception it raised."""
    results: dict[str, Any] = {}
    barrier = threading.Barrier(len(targets))

    def run(name: str, target: Any) -> None:
        barrier.wait(DEADLINE)
        results[name] = outcome(target)

    threads = [threading.Thread(target=run, args=item) for item in targets.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(thread.is_alive() for thread in threads), "a caller hung"
    return results


# --- several callers at once ----------------------------------------------------------------------------------------

def test_concurrent_callers_of_one_and_of_several_functions_each_get_their_own_results(on_dask: Any) -> None:
    f, g, h = on_dask(square), on_dask(negate), on_dask(fail_on_50)
    calls = {f"f{i}": (lambda i=i: f(range(300 + i), chunk_size=1 + i)) for i in range(4)}
    calls |= {f"g{i}": (lambda: g(range(200))) for i in range(2)}
    calls |= {"h-fails": lambda: h(range(100), chunk_size=1), "h-passes": lambda: h(range(51, 200), chunk_size=1)}
    results = run_in_threads(calls)
    for i in range(4):
        assert results[f"f{i}"] == [x * x for x in range(300 + i)]
    assert results["g0"] == results["g1"] == [-x for x in range(200)]
    assert isinstance(results["h-fails"], ValueError)
    assert results["h-passes"] == list(range(51, 200))  # the other caller's failure did not touch it
    assert h(range(10)) == list(range(10))


# --- os.fork() --------------------------------------------------------------------------------------------------------

def test_a_forked_child_gets_a_cluster_error_instead_of_hanging_and_the_parent_pool_goes_on(on_dask: Any,
                                                                                             client: Any) -> None:
    # Dask's client waits for its event loop thread, which a forked child does not have: any use of Dask there
    # would hang for ever. The child must be told, and must not touch the parent's workers.
    f = on_dask(square, n_jobs=2)
    assert f(range(5)) == [0, 1, 4, 9, 16]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what each use of Dask did, then leave without any exit handler
        told = []
        for attempt in (lambda: f(range(3)), lambda: parallel(backend="dask", cluster=client)(square)(range(3)),
                        lambda: parallel(backend="dask")(square)(range(3))):
            try:
                told.append(repr(attempt()))
            except BaseException as exc:
                told.append(f"{type(exc).__name__}: {exc}")
        os.write(write, "\n".join(told).encode())
        os._exit(0)
    os.close(write)
    try:
        deadline = time.monotonic() + DEADLINE
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            assert time.monotonic() < deadline, "the forked child hung"
            time.sleep(0.02)
        pid = 0
        told = os.read(read, 1 << 16).decode().split("\n")
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(read)
    assert len(told) == 3
    for line in told:
        assert line.startswith("ClusterError") and "os.fork()" in line, told
    assert f(range(5)) == [0, 1, 4, 9, 16]  # the parent's pool is untouched


# --- cancelled calls and Ctrl-C -------------------------------------------------------------------------------------

def test_a_worker_stuck_in_a_failed_calls_task_is_disowned_so_the_next_call_does_not_wait(on_dask: Any,
                                                                                       tmp_path: Path) -> None:
    # A Dask task cannot be interrupted: a chunk of a failed (or Ctrl-C'd) call runs on. Its worker must be disowned
    # after the grace a process worker gets, as a process worker would be killed, or the next call waits for it.
    release = tmp_path / "release"
    f = on_dask(block_or_fail, n_jobs=2)
    try:
        with pytest.raises(ValueError, match="the other task failed"):
            f([str(release), "fail"], chunk_size=1)
        t0 = time.monotonic()
        assert f([str(tmp_path)] * 4, chunk_size=1) == [str(tmp_path)] * 4  # (it exists: no waiting)
        assert time.monotonic() - t0 < DEADLINE / 3, "the next call waited for the failed call's stuck task"
    finally:
        release.touch()


CTRL_C_SCRIPT = """
import os, sys, time
sys.path[:0] = [{repo!r}]
from parallelize import parallel

def block(path):
    open(path + ".started", "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return path

def square(x):
    return x * x

if __name__ == "__main__":
    f = parallel(backend="dask", n_jobs=2)(block)
    g = parallel(backend="dask", n_jobs=2)(square)
    print(g(range(3)), flush=True)
    try:
        f([sys.argv[1]] * 2, chunk_size=1)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    t0 = time.monotonic()
    print(f([os.getcwd()] * 2, chunk_size=1) == [os.getcwd()] * 2, g(range(4)), flush=True)
    print("next call within", "10s" if time.monotonic() - t0 < 10 else "too long", flush=True)
"""


def test_ctrl_c_during_a_call_then_the_next_call_works_and_the_script_exits_promptly(tmp_path: Path) -> None:
    dask_cluster.require_distributed()
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(CTRL_C_SCRIPT.format(repo=str(REPO))))
    release = tmp_path / "release"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARALLELIZE_", "DASK_"))}
    child = subprocess.Popen([sys.executable, str(script), str(release)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + DEADLINE * 2
        while not (tmp_path / "release.started").exists():
            assert child.poll() is None and time.monotonic() < deadline, "the task never started"
            time.sleep(0.02)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=DEADLINE)
    finally:
        release.touch()
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert out.split("\n")[:4] == ["[0, 1, 4]", "interrupted", "True [0, 1, 4, 9]", "next call within 10s"], err


# --- absurd options -------------------------------------------------------------------------------------------------

def test_an_n_jobs_beyond_the_sockets_this_process_may_open_is_refused_at_once(on_dask: Any, client: Any) -> None:
    # Each Dask worker is a socket here: a million of them fails at once naming n_jobs, before any Dask task is
    # submitted (without the check, a million tasks were queued on the cluster and the call hung).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        f = on_dask(square, n_jobs=10**6)
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match=r"n_jobs=1000000 .*file descriptors"):
            f(range(3))
        assert time.monotonic() - t0 < DEADLINE / 3
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not any(client.processing().values()), "Dask tasks were submitted for the refused pool"


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"n_jobs": 0}, ConfigError, "n_jobs must be"),
    ({"cluster": float("inf")}, ConfigError, "cluster must be"),
    ({"cluster": b"tcp://127.0.0.1:1"}, ConfigError, "cluster must be"),
    ({"cluster": "not-an-address"}, ClusterError, "'not-an-address'"),
    ({"chunk_size": float("inf")}, ConfigError, "chunk_size must be"),
    ({"task_timeout": 0}, ConfigError, "task_timeout must be"),
])
def test_absurd_options_get_a_clear_error_naming_them(options: dict[str, Any], error: type[Exception],
                                                      match: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(error, match=match):  # when decorating, or at the call
        f = parallel(backend="dask", **options)(square)
        try:
            f(range(3))
        finally:
            f.close()
    assert time.monotonic() - t0 < DEADLINE / 3


def test_n_jobs_minus_one_and_an_infinite_task_timeout_just_work(on_dask: Any) -> None:
    assert on_dask(square, n_jobs=-1, task_timeout=float("inf"))(range(5)) == [0, 1, 4, 9, 16]


# --- objects the workers cannot unpickle, hooks that fail -------------------------------------------------------------

def test_a_shared_object_the_workers_cannot_unpickle_fails_the_call_with_its_error(on_dask: Any) -> None:
    f = on_dask(with_shared, n_jobs=2, shared_objects=Unpicklable())
    with pytest.raises(WorkerDiedError, match="this object refuses to be unpickled"):
        f.submit(1).result(timeout=DEADLINE)
    assert on_dask(square, n_jobs=2)(range(3)) == [0, 1, 4]


@pytest.mark.parametrize("backend", ["dask", "process"])
def test_an_argument_the_workers_cannot_unpickle_fails_the_call_instead_of_being_sent_again_for_ever(
        on_dask: Any, backend: str) -> None:
    # The worker ends before the chunk is known to have started: it was sent again to a new worker, without end.
    f = on_dask(square, n_jobs=2) if backend == "dask" else parallel(square, n_jobs=2)
    try:
        with pytest.raises(WorkerDiedError, match="before starting its next chunk") as caught:
            # (async: a timeout would cancel the call, so that close() need not wait for it)
            asyncio.run(asyncio.wait_for(f.amap([Unpicklable()]), DEADLINE))
        if backend == "dask":
            assert "this object refuses to be unpickled" in str(caught.value)  # (a process prints it on stderr)
        assert f(range(3)) == [0, 1, 4]
    finally:
        f.close()


def fail_init() -> None:
    raise RuntimeError("worker_init fails")


def fail_exit() -> None:
    raise RuntimeError("worker_exit fails")


def test_failing_hooks_fail_the_call_or_the_close_once_without_endless_restarts(on_dask: Any) -> None:
    f = on_dask(square, n_jobs=2, worker_init=fail_init)
    with pytest.raises(RuntimeError, match="worker_init fails"):
        f.submit(1).result(timeout=DEADLINE)
    h = on_dask(square, n_jobs=2, worker_exit=fail_exit)
    assert h(range(4)) == [0, 1, 4, 9]
    with pytest.raises(RuntimeError, match="worker_exit fails"):
        h.close()


# --- closing under a call, two clusters -------------------------------------------------------------------------------

def test_close_from_another_thread_ends_the_running_call_with_pool_closed_error(on_dask: Any) -> None:
    f = on_dask(slow, n_jobs=2)
    running = threading.Event()

    def call() -> Any:
        it = f.imap(range(1000), chunk_size=1)
        first = next(it)
        running.set()
        return [first, *it]

    results: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: results.setdefault("call", outcome(call)))
    caller.start()
    assert running.wait(DEADLINE)
    f.close()
    caller.join(DEADLINE)
    assert not caller.is_alive(), "the call hung after close()"
    assert isinstance(results["call"], PoolClosedError)
    assert f(range(3)) == [0, 1, 2]  # a new pool: the cluster's threads are free again


def test_two_clusters_in_one_process_each_run_their_own_functions(on_dask: Any, client: Any) -> None:
    with dask_cluster.local_cluster() as other:
        g = parallel(backend="dask", cluster=other)(pid_of)
        try:
            f = on_dask(pid_of)
            ours, theirs = set(client.run(os.getpid).values()), set(other.run(os.getpid).values())
            results = run_in_threads({"f": lambda: f(range(40), chunk_size=1),
                                      "g": lambda: g(range(40), chunk_size=1)})
            assert set(results["f"]) <= ours and set(results["g"]) <= theirs
        finally:
            g.close()
