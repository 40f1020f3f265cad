"""Which Dask cluster a pool runs on, and the clients this process opened to reach them.

- A ``distributed.Client`` given as the ``cluster`` option is used as it is: the user's to close.
- An address (the ``cluster`` option, else ``DASK_SCHEDULER_ADDRESS`` or Dask's ``scheduler-address`` setting) is
  connected to once per process; at exit the client is closed, the cluster never.
- With neither, a local cluster is started on first use: on 127.0.0.1 only, without a dashboard, one thread per
  worker process, scratch space in a temporary directory; grown when a pool wants more workers than it has, and
  closed (its directory removed) at exit.

A scheduler that cannot be reached within CONNECT_TIMEOUT seconds raises ClusterError naming the address and where
it came from, instead of Dask's own retries for minutes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from typing import Any, NamedTuple

from .._errors import ClusterError

ADDRESS_VARIABLE = "DASK_SCHEDULER_ADDRESS"
LOCAL_HOST = "127.0.0.1"
CONNECT_TIMEOUT = 5.0  # seconds for a scheduler to answer
WORKERS_TIMEOUT = 60.0  # seconds for a local cluster's new worker processes to join
THREADS_TTL = 1.0  # seconds a cluster's thread count is reused (asking costs a round trip to the scheduler)


class _Local(NamedTuple):
    cluster: Any
    client: Any
    directory: str


_lock = threading.Lock()
_connected: dict[str, Any] = {}  # address -> the Client this process opened to it
_local: _Local | None = None
_threads: dict[int, tuple[float, int]] = {}  # id(client) -> (when counted, total threads)
_exit_registered = False
_used = False  # a client was handed out in this process: Dask's threads run here
_forked_from: int | None = None  # made by os.fork() from a process where they ran: the parent's pid


def import_distributed() -> Any:
    """The distributed package, or ClusterError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ClusterError("backend='dask' needs the distributed package: pip install 'parallelize[dask]'") from exc
    return distributed


def configured_address(cluster: Any) -> tuple[str | None, str]:
    """(address, where it was set) for the ``cluster`` option's value; (None, "") for a local cluster."""
    if cluster is not None:
        return cluster, "the cluster option"
    address = os.environ.get(ADDRESS_VARIABLE)
    if address:
        return address, ADDRESS_VARIABLE
    import dask

    address = dask.config.get("scheduler-address", None)
    return (address, "Dask's scheduler-address setting") if address else (None, "")


def client_for(cluster: Any, n_workers: int | None) -> Any:
    """The Client a pool with option ``cluster=cluster`` works through (see the module docstring). *n_workers*:
    how many single-thread workers a local cluster should have at least (None: one per CPU)."""
    global _used
    distributed = import_distributed()
    if _forked_from is not None:
        # Dask's event loop and offload threads are not copied by os.fork(): any client here (the parent's, or a
        # new one, which shares Dask's global state) would wait for them for ever.
        raise ClusterError(f"backend='dask' cannot be used in a process made by os.fork() from one that used Dask "
                           f"(pid {_forked_from}): Dask's threads do not survive a fork; start this process with "
                           "the 'spawn' or 'forkserver' start method, or use another backend here")
    _used = True
    if isinstance(cluster, distributed.Client):
        return cluster
    if isinstance(getattr(cluster, "scheduler_address", None), str):  # LocalCluster, a cluster manager's object
        cluster = cluster.scheduler_address
    if cluster is not None and not isinstance(cluster, str):
        raise ClusterError(f"cluster must be a scheduler address such as 'tcp://10.0.0.5:8786', a "
                           f"distributed.Client or a Dask cluster object, got {cluster!r}")
    address, source = configured_address(cluster)
    with _lock:
        _register_exit()
        if address is not None:
            return _connect(distributed, address, source)
        return _local_client(distributed, n_workers)


def total_threads(client: Any) -> int:
    """Threads of every worker of the client's cluster (counted again after THREADS_TTL seconds)."""
    now = time.monotonic()
    counted = _threads.get(id(client))
    if counted is not None and now - counted[0] < THREADS_TTL:
        return counted[1]
    total: int = sum(client.nthreads().values())
    if total < 1:
        raise ClusterError(f"the Dask cluster at {client.scheduler.address} has no workers")
    _threads[id(client)] = (now, total)
    return total


def _connect(distributed: Any, address: str, source: str) -> Any:
    client = _connected.get(address)
    if client is not None and client.status == "running":
        return client
    _reachable(address, source)
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise _unreachable(address, source, exc) from exc
    _connected[address] = client
    return client


def _reachable(address: str, source: str) -> None:
    """A TCP scheduler's port answers, or ClusterError: checked before a Client is made, because a Client that
    fails to connect leaves its event loop thread running."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme != "tcp":
            return  # (tls://, ucx://, inproc://: left to the Client)
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"{address!r} (set by {source}) is not a Dask scheduler address such as "
                           f"'tcp://10.0.0.5:8786': {exc}") from exc
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise _unreachable(address, source, exc) from exc


def _unreachable(address: str, source: str, exc: BaseException) -> ClusterError:
    return ClusterError(f"cannot reach the Dask scheduler at {address!r} (set by {source}) within "
                        f"{CONNECT_TIMEOUT:g} s: {exc}")


def _local_client(distributed: Any, n_workers: int | None) -> Any:
    global _local
    wanted = n_workers if n_workers is not None else _cpu_count()
    if _local is not None and _local.client.status == "running":
        have = len(_local.client.nthreads())
        if wanted > have:
            _local.cluster.scale(wanted)
            _local.client.wait_for_workers(wanted, timeout=WORKERS_TIMEOUT)
        return _local.client
    directory = tempfile.mkdtemp(prefix="parallelize-dask-")
    try:
        cluster = distributed.LocalCluster(
            n_workers=wanted, threads_per_worker=1, processes=True, host=LOCAL_HOST, scheduler_port=0,
            dashboard_address=None, local_directory=directory,
            # (the scheduler serves health checks over HTTP even without a dashboard: on a free port, not 8787)
            scheduler_kwargs={"dashboard_address": f"{LOCAL_HOST}:0"})
        client = distributed.Client(cluster, set_as_default=False)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    _local = _Local(cluster, client, directory)
    return client


def _cpu_count() -> int:
    from .._cpu import cpu_count

    return cpu_count()


def _register_exit() -> None:
    """At exit, after the pools (whose exit hooks run on the cluster): see _pool_cache._close_at_exit_first."""
    global _exit_registered
    if not _exit_registered:
        _exit_registered = True
        atexit.register(close_all)


def close_all() -> None:
    """Close the clients this process opened, and the local cluster (never a cluster it connected to)."""
    global _local
    with _lock:
        local, _local = _local, None
        connected = list(_connected.values())
        _connected.clear()
        _threads.clear()
    for client in connected:
        with contextlib.suppress(Exception):
            client.close(timeout=CONNECT_TIMEOUT)
    if local is not None:
        with contextlib.suppress(Exception):
            local.client.close(timeout=CONNECT_TIMEOUT)
        with contextlib.suppress(Exception):
            local.cluster.close(timeout=WORKERS_TIMEOUT)
        shutil.rmtree(local.directory, ignore_errors=True)


def _forget_in_child() -> None:
    """A child made by os.fork() shares the parent's sockets: it drops the clients without closing them (and uses
    none: see client_for)."""
    global _local, _lock, _forked_from
    if _used:
        _forked_from = os.getppid()
    _lock = threading.Lock()
    _local = None
    _connected.clear()
    _threads.clear()


os.register_at_fork(after_in_child=_forget_in_child)
