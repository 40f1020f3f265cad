"""parallelize: fast multiprocessing with a decorator API and an MPIRE-compatible WorkerPool.

The public API lives here and only here; everything in underscore modules is private. Names are imported on
first use (PEP 562), so ``import parallelize`` stays cheap: the decorator pulls in wrapt, the pool pulls in
multiprocessing, and a program pays only for what it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "AsyncResult": ".workerpool",
    "BoundParallelFunction": "._decorator",
    "ClusterError": "._errors",
    "ConfigError": "._errors",
    "ForkAfterThreadsWarning": "._errors",
    "InsightsReport": "._insights_report",
    "ParallelError": "._errors",
    "ParallelFunction": "._decorator",
    "PoolBusyError": "._errors",
    "PoolClosedError": "._errors",
    "RemoteError": "._errors",
    "RemoteTraceback": "._errors",
    "ResultPicklingError": "._errors",
    "ResultTimeoutError": "._errors",
    "TaskTimeoutError": "._errors",
    "WorkerDiedError": "._errors",
    "WorkerPool": ".workerpool",
    "config": "._config",
    "cpu_count": "._cpu",
    "insights": "._insights",
    "parallel": "._decorator",
    "show_config": "._config",
}

_SUBMODULES = ("dashboard", "utils")  # public modules, also imported on first use

__all__ = ["__version__", *sorted([*_WHERE, *_SUBMODULES])]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # importing sets the attribute: no second call
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'parallelize' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from . import dashboard as dashboard
    from . import utils as utils
    from ._config import config as config
    from ._config import show_config as show_config
    from ._cpu import cpu_count as cpu_count
    from ._decorator import BoundParallelFunction as BoundParallelFunction
    from ._decorator import ParallelFunction as ParallelFunction
    from ._decorator import parallel as parallel
    from ._errors import ClusterError as ClusterError
    from ._errors import ConfigError as ConfigError
    from ._errors import ForkAfterThreadsWarning as ForkAfterThreadsWarning
    from ._errors import ParallelError as ParallelError
    from ._errors import PoolBusyError as PoolBusyError
    from ._errors import PoolClosedError as PoolClosedError
    from ._errors import RemoteError as RemoteError
    from ._errors import RemoteTraceback as RemoteTraceback
    from ._errors import ResultPicklingError as ResultPicklingError
    from ._errors import ResultTimeoutError as ResultTimeoutError
    from ._errors import TaskTimeoutError as TaskTimeoutError
    from ._errors import WorkerDiedError as WorkerDiedError
    from ._insights import insights as insights
    from ._insights_report import InsightsReport as InsightsReport
    from .workerpool import AsyncResult as AsyncResult
    from .workerpool import WorkerPool as WorkerPool
