"""Backends start workers and move messages; the engine decides what to send. See _base.Backend."""

from __future__ import annotations

from typing import Any

from ._base import Backend


def create_backend(start_method: str, *, daemon: bool, cluster: Any = None, n_workers: int | None = None) -> Backend:
    """The backend for a start method: a thread backend for "threading", a Dask cluster for "dask" (*cluster*: its
    address or Client, None for a local one of at least *n_workers* workers), forked/spawned processes
    otherwise."""
    if start_method == "dask":
        from .dask import DaskBackend  # (imports distributed: only when chosen)

        return DaskBackend(cluster, n_workers)
    if start_method == "threading":
        from .thread import ThreadBackend

        return ThreadBackend()
    from .process import ProcessBackend

    return ProcessBackend(start_method, daemon=daemon)


__all__ = ["Backend", "create_backend"]
