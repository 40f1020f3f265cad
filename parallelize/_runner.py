"""What runs a front end's calls: an Engine (worker processes or threads) or a SerialWorker (the calling thread).

Both front ends reach them only through this surface, so serial mode takes exactly the path a pool takes: the
same holder (_pool_cache), the same call lifecycle (_calls) and the same Job with its error policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._insights import InsightsCollector
    from ._job import Job
    from ._settings import WorkerSettings


class Runner(Protocol):
    settings: WorkerSettings
    exit_errors: list[BaseException]
    insights: InsightsCollector | None

    @property
    def usable(self) -> bool: ...

    @property
    def foreign(self) -> bool: ...

    def new_job_id(self) -> int: ...

    def function_id(self, func: Callable[..., Any]) -> int: ...

    def submit(self, job: Job, *, background: bool = False) -> None: ...

    def drive(self, done: Callable[[], bool], timeout: float | None = None) -> bool: ...

    def cancel(self, job: Job, *, settle: bool = False) -> None: ...

    def call_started(self) -> None: ...

    def call_ended(self) -> None: ...

    def in_use(self) -> bool: ...

    def has_async_jobs(self) -> bool: ...

    def wait_async_jobs(self, timeout: float | None = None) -> bool: ...

    def update_hooks(self, worker_init: Callable[..., Any] | None, worker_exit: Callable[..., Any] | None,
                     worker_lifespan: int | None) -> int: ...

    def stop(self, timeout: float | None = None) -> list[Any]: ...

    def terminate(self, reason: str = ...) -> None: ...

    def abort(self, cause: BaseException) -> None: ...

    def worker_pids(self) -> list[int]: ...
