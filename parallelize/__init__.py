"""parallelize: fast multiprocessing with a decorator API and an MPIRE-compatible WorkerPool.

The public API lives here and only here; everything in underscore modules is private.
"""

from __future__ import annotations

from ._config import config as config
from ._config import show_config as show_config
from ._cpu import cpu_count as cpu_count
from ._decorator import BoundParallelFunction as BoundParallelFunction
from ._decorator import ParallelFunction as ParallelFunction
from ._decorator import parallel as parallel
from ._errors import ConfigError as ConfigError
from ._errors import ForkAfterThreadsWarning as ForkAfterThreadsWarning
from ._errors import ParallelError as ParallelError
from ._errors import PoolBusyError as PoolBusyError
from ._errors import RemoteError as RemoteError
from ._errors import RemoteTraceback as RemoteTraceback
from ._errors import ResultPicklingError as ResultPicklingError
from ._errors import TaskTimeoutError as TaskTimeoutError
from ._errors import WorkerDiedError as WorkerDiedError
from .workerpool import AsyncResult as AsyncResult
from .workerpool import WorkerPool as WorkerPool

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "BoundParallelFunction",
    "ConfigError",
    "ForkAfterThreadsWarning",
    "ParallelError",
    "ParallelFunction",
    "PoolBusyError",
    "RemoteError",
    "RemoteTraceback",
    "ResultPicklingError",
    "TaskTimeoutError",
    "WorkerDiedError",
    "WorkerPool",
    "__version__",
    "config",
    "cpu_count",
    "parallel",
    "show_config",
]
