"""The in-run floor: a minimal hand-made dispatcher (os.fork + one pipe pair per worker, big pickled chunks).

It does only what any pool must do: fork the workers, send each one a chunk (function by reference + items),
collect the pickled results, reassemble them in order. No bookkeeping per task, no threads, no queues. Whatever a
real pool costs above this, in the same run, is its overhead.

A worker gets a new chunk only when it has returned the previous one (or, for small chunks that fit in the pipe
buffer, one more is queued ahead so it never waits on the parent), so the parent never blocks on a full pipe.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any

SMALL_MESSAGE = 16 * 1024  # bytes: two such chunks fit in a 64 KiB pipe buffer, so a second one may be queued
TIMEOUT = 120.0  # seconds without any result before the floor gives up (a worker died or hung)


class ForkFloor:
    """``n_workers`` forked workers. ``prefix`` arguments, ``init`` and ``exit`` hooks as in mpire/parallelize."""

    def __init__(self, n_workers: int, shared: Any = None, state: bool = False,
                 init: Callable[..., Any] | None = None, exit: Callable[..., Any] | None = None) -> None:
        self.pids: list[int] = []
        self.tasks: list[Connection] = []  # parent writes chunks here
        self.results: list[Connection] = []  # parent reads results here
        for _ in range(n_workers):
            task_r, task_w = Pipe(duplex=False)
            result_r, result_w = Pipe(duplex=False)
            pid = os.fork()
            if pid == 0:  # the worker
                code = 1
                try:
                    for conn in (*self.tasks, *self.results, task_w, result_r):
                        conn.close()
                    _serve(task_r, result_w, shared, state, init, exit)
                    code = 0
                finally:
                    os._exit(code)
            task_r.close()
            result_w.close()
            self.pids.append(pid)
            self.tasks.append(task_w)
            self.results.append(result_r)

    def map(self, func: Callable[..., Any], items: Sequence[Any], chunk_size: int | None = None) -> list[Any]:
        n_workers = len(self.pids)
        size = chunk_size or max(1, -(-len(items) // (4 * n_workers)))
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        done: list[list[Any] | None] = [None] * len(chunks)
        inflight = [0] * n_workers
        by_conn = {id(conn): index for index, conn in enumerate(self.results)}

        payloads = (pickle.dumps((i, func, chunk), protocol=pickle.HIGHEST_PROTOCOL) for i, chunk in enumerate(chunks))
        pending: bytes | None = next(payloads, None)
        # Small chunks: keep two per worker in flight (both fit in the pipe buffer, so sending never blocks).
        depth = 2 if pending is not None and len(pending) <= SMALL_MESSAGE else 1

        def fill(worker: int) -> None:
            nonlocal pending
            while pending is not None and inflight[worker] < depth:
                self.tasks[worker].send_bytes(pending)
                inflight[worker] += 1
                pending = next(payloads, None)

        for worker in range(n_workers):
            fill(worker)
        received = 0
        while received < len(chunks):
            ready = wait(self.results, timeout=TIMEOUT)
            if not ready:
                raise TimeoutError(f"floor: no result within {TIMEOUT}s")
            for conn in ready:
                assert isinstance(conn, Connection)
                chunk_id, values = pickle.loads(conn.recv_bytes())
                done[chunk_id] = values
                received += 1
                worker = by_conn[id(conn)]
                inflight[worker] -= 1
                fill(worker)
        return [value for chunk in done for value in chunk]  # type: ignore[union-attr]

    def close(self) -> list[Any]:
        """Stop the workers; returns what each exit hook returned."""
        exit_results: list[Any] = []
        try:
            for conn in self.tasks:
                conn.send_bytes(pickle.dumps(None))
            for conn in self.results:
                if not conn.poll(TIMEOUT):
                    raise TimeoutError("floor: a worker did not stop")
                exit_results.append(pickle.loads(conn.recv_bytes()))
            for pid in self.pids:
                os.waitpid(pid, 0)
            self.pids = []
        finally:
            self.terminate()
        return [value for value in exit_results if value is not None]

    def terminate(self) -> None:
        """Kill whatever is still running (after an error) and close the pipes."""
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        for conn in (*self.tasks, *self.results):
            conn.close()
        self.pids, self.tasks, self.results = [], [], []


def _serve(tasks: Connection, results: Connection, shared: Any, state: bool,
           init: Callable[..., Any] | None, exit: Callable[..., Any] | None) -> None:
    prefix: list[Any] = []
    if shared is not None:
        prefix.append(shared)
    if state:
        prefix.append({})
    if init is not None:
        init(*prefix)
    while True:
        message = pickle.loads(tasks.recv_bytes())
        if message is None:
            results.send_bytes(pickle.dumps(exit(*prefix) if exit is not None else None))
            return
        chunk_id, func, items = message
        values = [func(*prefix, item) for item in items] if prefix else [func(item) for item in items]
        results.send_bytes(pickle.dumps((chunk_id, values), protocol=pickle.HIGHEST_PROTOCOL))
