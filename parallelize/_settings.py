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


@dataclass(frozen=True)
class WorkerSettings:
    """Everything fixed for a worker's life; a change means new workers."""

    n_jobs: int
    start_method: str
    daemon: bool = True
    cpu_ids: tuple[tuple[int, ...] | None, ...] = ()
    shared_objects: Any = None
    pass_worker_id: bool = False
    worker_state: bool = False
    worker_init: Callable[..., Any] | None = None
    worker_exit: Callable[..., Any] | None = None
    worker_lifespan: int | None = None
    max_worker_memory: int | None = None
    enable_insights: bool = False

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
