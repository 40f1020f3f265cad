"""What a pool's workers are made with: fixed for a worker's life, so a change means new workers.

The decorator builds these from its resolved options (``from_options``), a WorkerPool keeps one and replaces
fields of it, and the engine hands the per-worker part to each worker it starts (``WorkerSpec`` in the worker's
module), under the same names as the public options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import Options

_COMPARED_BY_VALUE = ("n_jobs", "start_method", "daemon", "cpu_ids", "pass_worker_id", "worker_state",
                      "worker_lifespan", "max_worker_memory", "enable_insights")
_COMPARED_BY_IDENTITY = ("shared_objects", "worker_init", "worker_exit")


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """What every worker of a pool runs with, under the public options' names; the worker gets these as they
    are (``WorkerSpec`` adds what is its own)."""

    shared_objects: Any = None
    pass_worker_id: bool = False
    worker_state: bool = False
    worker_init: Callable[..., Any] | None = None
    worker_exit: Callable[..., Any] | None = None
    worker_lifespan: int | None = None  # tasks after which a worker ends itself
    max_worker_memory: int | None = None  # bytes of memory after which a worker ends itself (between chunks)
    enable_insights: bool = False

    def worker_options(self) -> dict[str, Any]:
        """These fields alone, by name (to make a WorkerSpec from WorkerSettings)."""
        return {f.name: getattr(self, f.name) for f in fields(WorkerOptions)}


@dataclass(frozen=True, kw_only=True)
class WorkerSettings(WorkerOptions):
    """Everything fixed for a pool's workers; a change means new workers."""

    n_jobs: int
    start_method: str
    daemon: bool = True
    cpu_ids: tuple[tuple[int, ...] | None, ...] = ()

    @classmethod
    def from_options(cls, options: Options) -> WorkerSettings:
        """The worker part of one call's resolved options: the fields of the same names. (A WorkerPool keeps a
        WorkerSettings itself, its setters replace fields of it, and each call adds its hooks and lifespan.)"""
        return cls(**{f.name: getattr(options, f.name) for f in fields(cls)})

    def same_workers(self, other: WorkerSettings) -> bool:
        """Equal settings, comparing objects by identity (an ndarray has no usable ==)."""
        return all(getattr(self, f) is getattr(other, f) or getattr(self, f) == getattr(other, f)
                   for f in _COMPARED_BY_VALUE) and all(
            getattr(self, f) is getattr(other, f) for f in _COMPARED_BY_IDENTITY)
