"""What a pool's workers are made with: fixed for a worker's life, so a change means new workers.

The decorator builds these from its resolved options (``from_options``), a WorkerPool keeps one and replaces
fields of it, and the engine hands them, with each worker's own part, to each worker it starts (``WorkerSpec`` in
the worker's module), under the same names as the public options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ._config import Options

# (cluster: an address compares by value, a distributed.Client by identity)
_COMPARED_BY_VALUE = ("n_jobs", "start_method", "daemon", "cpu_ids", "pass_worker_id", "worker_state",
                      "worker_lifespan", "max_worker_memory", "enable_insights", "cluster")
_COMPARED_BY_IDENTITY = ("shared_objects", "worker_init", "worker_exit")


# A NamedTuple rather than a frozen dataclass: dataclasses take ~1 ms per class to build at import, and bring
# inspect with them (~4 ms), which a program's start-up would pay for nothing else.
class WorkerSettings(NamedTuple):
    """Everything fixed for a pool's workers; a change means new workers. Compare with ``same_workers``."""

    n_jobs: int
    start_method: str
    daemon: bool = True
    cpu_ids: tuple[tuple[int, ...] | None, ...] = ()
    shared_objects: Any = None
    pass_worker_id: bool = False
    worker_state: bool = False
    worker_init: Callable[..., Any] | None = None
    worker_exit: Callable[..., Any] | None = None
    worker_lifespan: int | None = None  # tasks after which a worker ends itself
    max_worker_memory: int | None = None  # bytes of memory after which a worker ends itself (between chunks)
    enable_insights: bool = False
    cluster: Any = None  # start_method "dask": the scheduler's address or a distributed.Client; None: local

    @classmethod
    def from_options(cls, options: Options) -> WorkerSettings:
        """The worker part of one call's resolved options: the fields of the same names. (A WorkerPool keeps a
        WorkerSettings itself, its setters replace fields of it, and each call adds its hooks and lifespan.)"""
        return cls(**{name: getattr(options, name) for name in cls._fields})

    def same_workers(self, other: WorkerSettings) -> bool:
        """Equal settings, comparing objects by identity (an ndarray has no usable ==)."""
        return all(getattr(self, f) is getattr(other, f) or getattr(self, f) == getattr(other, f)
                   for f in _COMPARED_BY_VALUE) and all(
            getattr(self, f) is getattr(other, f) for f in _COMPARED_BY_IDENTITY)
