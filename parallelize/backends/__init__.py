"""Backends start workers and move messages; the engine decides what to send. See _base.Backend."""

from __future__ import annotations

from ._base import Backend


def create_backend(start_method: str, *, daemon: bool) -> Backend:
    """The backend for a start method: a thread backend for "threading", forked/spawned processes otherwise."""
    if start_method == "threading":
        from .thread import ThreadBackend

        return ThreadBackend()
    from .process import ProcessBackend

    return ProcessBackend(start_method, daemon=daemon)


__all__ = ["Backend", "create_backend"]
