"""Dask clusters for the tests: a LocalCluster, and a scheduler and workers started as commands.

Both have two single-thread workers. Each is a context manager that stops everything it started; tests that use
one are skipped where the distributed package is missing (it is an optional extra), but not in CI.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT = 60.0  # seconds for a cluster to come up on a loaded machine


def require_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        if os.environ.get("CI") == "true":
            raise  # CI installs the dask extra: a missing package there is a failure, not a skip
        pytest.skip("the distributed package is not installed (pip install 'parallelize[dask]')")
    return distributed


@contextlib.contextmanager
def local_cluster() -> Iterator[Any]:
    """A Client of a LocalCluster(n_workers=2, threads_per_worker=1) on 127.0.0.1."""
    distributed = require_distributed()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  scheduler_port=0, dashboard_address=None,
                                  scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=START_TIMEOUT)
        yield client


class CommandLineCluster:
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1, as one would start them by hand."""

    def __init__(self, address: str, scheduler: subprocess.Popen[bytes], workers: list[subprocess.Popen[bytes]]):
        self.address = address
        self.scheduler = scheduler
        self.workers = workers

    def worker_pids(self) -> set[int]:
        return {worker.pid for worker in self.workers}


@contextlib.contextmanager
def command_line_cluster() -> Iterator[str]:
    """The scheduler's TCP address (what DaskBackend connects to); see command_line_processes."""
    with command_line_processes() as cluster:
        try:
            yield cluster.address
        finally:
            from parallelize.backends import _dask_cluster

            _dask_cluster.close_all()  # the client the backend opened to it, before the cluster stops


@contextlib.contextmanager
def command_line_processes() -> Iterator[CommandLineCluster]:
    distributed = require_distributed()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}  # workers import tests' functions
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(_temporary_directory()))
        scheduler_file = directory / "scheduler.json"
        started: list[subprocess.Popen[bytes]] = []
        stack.callback(_stop, started)

        def run(*args: str) -> subprocess.Popen[bytes]:
            with open(directory / f"log-{len(started)}", "wb") as log:  # (the child keeps its own descriptor)
                process = subprocess.Popen([sys.executable, "-m", "dask", *args], env=env, cwd=directory,
                                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
            started.append(process)
            return process

        scheduler = run("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                        "--scheduler-file", str(scheduler_file))
        deadline = time.monotonic() + START_TIMEOUT
        while not scheduler_file.exists():
            assert scheduler.poll() is None, f"dask scheduler exited: {(directory / 'log-0').read_text()}"
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.05)
        workers = [run("worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--no-nanny",
                       "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(directory))
                   for _ in range(2)]
        with distributed.Client(scheduler_file=str(scheduler_file), set_as_default=False) as client:
            client.wait_for_workers(2, timeout=START_TIMEOUT)
            address = client.scheduler.address
        yield CommandLineCluster(address, scheduler, workers)


@contextlib.contextmanager
def _temporary_directory() -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="parallelize-dask-test-") as directory:
        yield directory


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Workers first, then the scheduler; killed if they do not end on SIGTERM."""
    for process in reversed(processes):
        process.terminate()
    for process in reversed(processes):
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def decorating(client: Any) -> Iterator[Callable[..., Any]]:
    """``decorate(func, **options)``: parallel(backend="dask") on *client*'s cluster; every function made is closed
    when the block ends."""
    from parallelize import parallel

    made: list[Any] = []

    def decorate(func: Any, **options: Any) -> Any:
        decorated = parallel(backend="dask", cluster=client, **options)(func)
        made.append(decorated)
        return decorated

    try:
        yield decorate
    finally:
        for decorated in made:
            decorated.close()
