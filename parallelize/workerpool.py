"""WorkerPool: MPIRE 2.10's public API on top of the parallelize engine, so MPIRE code switches by one import.

A thin layer: it validates arguments, turns each call into a Job, and decides when workers must be (re)started
(keep_alive and changed settings). Differences from MPIRE are listed in docs/mpire-differences.md.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import queue
import threading
import warnings
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from . import _config
from . import _validation as check
from ._calls import apply_job, map_job, run
from ._chunking import is_numpy_array
from ._engine import Engine
from ._errors import PoolBusyError, ResultTimeoutError
from ._frames import hide_library_frames, hides_library_frames, user_stacklevel
from ._job import Job
from ._log import logger
from ._messages import CALL_MPIRE
from ._pool_cache import PoolHolder
from ._pool_insights import NO_STATS, PoolInsights
from ._progress import callable_name, check_progress, make_bar
from ._serial import SerialWorker
from ._settings import WorkerSettings

if TYPE_CHECKING:
    from ._runner import Runner


class AsyncResult:
    """The pending result of ``apply_async``: like ``multiprocessing.pool.AsyncResult``.

    Backed by a job on a runner (in serial mode, it runs when it is submitted).
    """

    def __init__(self, engine: Runner, job: Job, callback: Callable[[Any], Any] | None,
                 error_callback: Callable[[BaseException], Any] | None) -> None:
        self._engine = engine
        self._done = job.done_event
        self._callback = callback
        self._error_callback = error_callback
        self._value: Any = None
        self._error: BaseException | None = None
        job.finish_listeners.append(self._on_finish)

    def _on_finish(self, job: Job) -> None:
        values = job.pop_ready() if job.error is None else []
        self._finish(values[0] if values else None, job.error)

    def _finish(self, value: Any, error: BaseException | None) -> None:
        self._value, self._error = value, error
        try:
            if error is not None and self._error_callback is not None:
                self._error_callback(error)
            elif error is None and self._callback is not None:
                self._callback(value)
        except Exception:  # a failing callback must not break the loop that serves every job
            logger().exception("an apply_async callback raised")

    def ready(self) -> bool:
        return self._done.is_set()

    def successful(self) -> bool:
        if not self._done.is_set():
            raise ValueError("the result is not ready yet")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        self._engine.drive(self._done.is_set, check.wait_timeout("timeout", timeout))

    def get(self, timeout: float | None = None) -> Any:
        self.wait(timeout)
        if not self._done.is_set():
            raise ResultTimeoutError(f"the result was not ready within {timeout}s")
        if self._error is not None:  # PoolClosedError if the pool was terminated first
            raise self._error
        return self._value


class WorkerPool:
    """A pool of workers with the API of ``mpire.WorkerPool`` (2.10)."""

    def __init__(
        self,
        n_jobs: int | None = None,
        daemon: bool = True,
        cpu_ids: Any = None,
        shared_objects: Any = None,
        pass_worker_id: bool = False,
        use_worker_state: bool = False,
        start_method: str = "fork",
        keep_alive: bool = False,
        use_dill: bool = False,
        enable_insights: bool = False,
        order_tasks: bool = False,
    ) -> None:
        _config.check_environment()
        if n_jobs is None or (n_jobs == 0 and not isinstance(n_jobs, bool)):  # MPIRE: 0 means all CPUs too
            # The default, and only the default, is capped by PARALLELIZE_MAX_CPU: an explicit n_jobs wins.
            cap = _config.max_cpu()
            n_jobs = _config.cpu_count() if cap is None else min(_config.cpu_count(), cap)
        else:
            n_jobs = check.n_jobs(n_jobs, _config.cpu_count)
        # What every call's workers are made with; a call adds its hooks and lifespan (_settings).
        self._workers = WorkerSettings(
            n_jobs=n_jobs, daemon=check.flag("daemon", daemon), cpu_ids=check.cpu_ids(cpu_ids, n_jobs),
            shared_objects=shared_objects, pass_worker_id=check.flag("pass_worker_id", pass_worker_id),
            worker_state=check.flag("use_worker_state", use_worker_state),
            start_method=check.start_method(start_method), enable_insights=check.flag("enable_insights",
                                                                                      enable_insights))
        self._keep_alive = check.flag("keep_alive", keep_alive)
        # Functions always travel with cloudpickle, which covers what dill was needed for in MPIRE.
        self._use_dill = check.flag("use_dill", use_dill)
        self._order_tasks = check.flag("order_tasks", order_tasks)
        self.ctx: Any = _context(self._workers.start_method)
        # PARALLELIZE_DISABLE=1: no workers; worker 0 lives in the calling thread (see _serial).
        self._pool = PoolHolder("WorkerPool", start=SerialWorker if _config.disabled() else Engine,
                                fits=_same_processes, on_replace=_log_restart, wait_for_busy=True, cached=False)
        self._lock = threading.RLock()
        self._lazy_job: Job | None = None  # the job of an imap still open
        self._active_calls = 0

    # --- setters (MPIRE names) ------------------------------------------------------------------------------------

    @property
    def _engine(self) -> Runner | None:
        """The live workers (or serial worker), if any."""
        return self._pool.engine

    def pass_on_worker_id(self, pass_on: bool = True) -> None:
        self._workers = self._workers._replace(pass_worker_id=check.flag("pass_on", pass_on))

    def set_shared_objects(self, shared_objects: Any = None) -> None:
        # As MPIRE: an equal object changes nothing, so live workers are kept. Objects without a plain boolean ==
        # (numpy arrays) count as changed unless they are the same object.
        current = self._workers.shared_objects
        if shared_objects is not current and not _equal(shared_objects, current):
            self._workers = self._workers._replace(shared_objects=shared_objects)

    def set_use_worker_state(self, use_worker_state: bool = True) -> None:
        self._workers = self._workers._replace(worker_state=check.flag("use_worker_state", use_worker_state))

    def set_keep_alive(self, keep_alive: bool = True) -> None:
        self._keep_alive = check.flag("keep_alive", keep_alive)

    def set_order_tasks(self, order_tasks: bool = True) -> None:
        self._order_tasks = check.flag("order_tasks", order_tasks)

    # --- map family -----------------------------------------------------------------------------------------------

    @hides_library_frames
    def map(self, func: Callable[..., Any], iterable_of_args: Iterable[Any] | Any, iterable_len: int | None = None,
            max_tasks_active: int | None = None, chunk_size: int | None = None, n_splits: int | None = None,
            worker_lifespan: int | None = None, progress_bar: bool | str = False, concatenate_numpy_output: bool = True,
            worker_init: Callable[..., Any] | None = None, worker_exit: Callable[..., Any] | None = None,
            task_timeout: float | None = None, worker_init_timeout: float | None = None,
            worker_exit_timeout: float | None = None, progress_bar_options: dict[str, Any] | None = None,
            progress_bar_style: str | None = None) -> Any:
        """Run *func* on every item; results in input order (a list, or one array for numpy input)."""
        results = list(itertools.chain.from_iterable(self._run(
            func, iterable_of_args, True, iterable_len, max_tasks_active, chunk_size, n_splits, worker_lifespan,
            progress_bar, worker_init, worker_exit, task_timeout, worker_init_timeout, worker_exit_timeout,
            progress_bar_options, progress_bar_style, lazy=False)))
        # As MPIRE: array results are joined whenever the first one is an array, whatever the input was.
        if concatenate_numpy_output and results and is_numpy_array(results[0]):
            import numpy

            return numpy.concatenate(results)
        return results

    @hides_library_frames
    def map_unordered(self, func: Callable[..., Any], iterable_of_args: Iterable[Any] | Any,
                      iterable_len: int | None = None, max_tasks_active: int | None = None,
                      chunk_size: int | None = None, n_splits: int | None = None,
                      worker_lifespan: int | None = None, progress_bar: bool | str = False,
                      worker_init: Callable[..., Any] | None = None, worker_exit: Callable[..., Any] | None = None,
                      task_timeout: float | None = None, worker_init_timeout: float | None = None,
                      worker_exit_timeout: float | None = None, progress_bar_options: dict[str, Any] | None = None,
                      progress_bar_style: str | None = None) -> list[Any]:
        """Like map, in completion order."""
        return list(itertools.chain.from_iterable(self._run(
            func, iterable_of_args, False, iterable_len, max_tasks_active, chunk_size, n_splits, worker_lifespan,
            progress_bar, worker_init, worker_exit, task_timeout, worker_init_timeout, worker_exit_timeout,
            progress_bar_options, progress_bar_style, lazy=False)))

    def imap(self, func: Callable[..., Any], iterable_of_args: Iterable[Any] | Any, iterable_len: int | None = None,
             max_tasks_active: int | None = None, chunk_size: int | None = None, n_splits: int | None = None,
             worker_lifespan: int | None = None, progress_bar: bool | str = False,
             worker_init: Callable[..., Any] | None = None, worker_exit: Callable[..., Any] | None = None,
             task_timeout: float | None = None, worker_init_timeout: float | None = None,
             worker_exit_timeout: float | None = None, progress_bar_options: dict[str, Any] | None = None,
             progress_bar_style: str | None = None) -> Generator[Any, None, None]:
        """A lazy map: results in input order as soon as they are available."""
        return self._run(func, iterable_of_args, True, iterable_len, max_tasks_active, chunk_size, n_splits,
                         worker_lifespan, progress_bar, worker_init, worker_exit, task_timeout, worker_init_timeout,
                         worker_exit_timeout, progress_bar_options, progress_bar_style, lazy=True)

    def imap_unordered(self, func: Callable[..., Any], iterable_of_args: Iterable[Any] | Any,
                       iterable_len: int | None = None, max_tasks_active: int | None = None,
                       chunk_size: int | None = None, n_splits: int | None = None,
                       worker_lifespan: int | None = None, progress_bar: bool | str = False,
                       worker_init: Callable[..., Any] | None = None, worker_exit: Callable[..., Any] | None = None,
                       task_timeout: float | None = None, worker_init_timeout: float | None = None,
                       worker_exit_timeout: float | None = None, progress_bar_options: dict[str, Any] | None = None,
                       progress_bar_style: str | None = None) -> Generator[Any, None, None]:
        """A lazy map: results in completion order."""
        return self._run(func, iterable_of_args, False, iterable_len, max_tasks_active, chunk_size, n_splits,
                         worker_lifespan, progress_bar, worker_init, worker_exit, task_timeout, worker_init_timeout,
                         worker_exit_timeout, progress_bar_options, progress_bar_style, lazy=True)

    def _run(self, func: Callable[..., Any], iterable: Any, ordered: bool, iterable_len: int | None,
             max_tasks_active: int | None, chunk_size: int | None, n_splits: int | None,
             worker_lifespan: int | None, progress_bar: bool | str, worker_init: Callable[..., Any] | None,
             worker_exit: Callable[..., Any] | None, task_timeout: float | None,
             worker_init_timeout: float | None, worker_exit_timeout: float | None,
             progress_bar_options: dict[str, Any] | None, progress_bar_style: str | None,
             *, lazy: bool) -> Generator[Any, None, None]:
        # Validate now, so that even a lazy imap reports bad arguments at the call, not at the first next().
        if not callable(func):
            raise TypeError(f"func must be callable, got {func!r}")
        iterable_len = check.iterable_len(iterable_len)
        check.positive_int("max_tasks_active", max_tasks_active)
        check.chunk_size("chunk_size", chunk_size)
        check.positive_int("n_splits", n_splits)
        check.positive_int("worker_lifespan", worker_lifespan)
        task_timeout = check.timeout("task_timeout", task_timeout)
        init_timeout = check.timeout("worker_init_timeout", worker_init_timeout)
        exit_timeout = check.timeout("worker_exit_timeout", worker_exit_timeout)
        if progress_bar_style is None:  # the default style: config() or PARALLELIZE_PROGRESS_BAR_STYLE, else "auto"
            progress_bar_style = _config.configured("progress_bar_style")
        check_progress(progress_bar, progress_bar_style, progress_bar_options)
        if not is_numpy_array(iterable) and not isinstance(iterable, Iterable):
            raise TypeError(f"iterable_of_args must be iterable, got {type(iterable).__name__}")
        settings = self._settings(worker_init, worker_exit, worker_lifespan)
        generator = self._execute(func, iterable, ordered, iterable_len, max_tasks_active, chunk_size, n_splits,
                                  settings, task_timeout, init_timeout, exit_timeout, progress_bar,
                                  progress_bar_options, progress_bar_style, lazy)
        return generator

    def _execute(self, func: Callable[..., Any], iterable: Any, ordered: bool, iterable_len: int | None,
                 max_tasks_active: int | None, chunk_size: int | None, n_splits: int | None,
                 settings: WorkerSettings, task_timeout: float | None, init_timeout: float | None,
                 exit_timeout: float | None, progress_bar: bool | str, progress_bar_options: dict[str, Any] | None,
                 progress_bar_style: str | None, lazy: bool) -> Generator[Any, None, None]:
        n_jobs = self._workers.n_jobs
        if is_numpy_array(iterable) and chunk_size is None and n_splits is None:
            n_splits = 4 * n_jobs  # MPIRE's default for arrays: the chunk count is visible in the output
        bar = make_bar(progress_bar, progress_bar_style, progress_bar_options, callable_name(func))
        with self._lock:
            engine = self._engine_for(settings, change_hooks=True)
            job = map_job(engine, func, iterable, n_jobs=n_jobs, ordered=ordered, iterable_len=iterable_len,
                          max_tasks_active=max_tasks_active, chunk_size=chunk_size, n_splits=n_splits,
                          task_timeout=task_timeout, worker_init_timeout=init_timeout,
                          worker_exit_timeout=exit_timeout, order_tasks=self._order_tasks, call_mode=CALL_MPIRE,
                          split_arrays=True)
            if lazy:
                self._lazy_job = job
            self._active_calls += 1

        def on_end(failed: bool) -> None:
            with self._lock:
                if self._lazy_job is job:
                    self._lazy_job = None
                self._active_calls -= 1
                self._after_call(engine, failed)

        try:
            # A map (not lazy) takes the results a batch at a time: no generator step per result.
            yield from run(engine, job, bar, on_end, batches=not lazy)
        except Exception as exc:  # the outermost frame of imap: the user's loop is next
            hide_library_frames(exc)
            raise

    # --- apply --------------------------------------------------------------------------------------------------

    def apply(self, func: Callable[..., Any], args: Any = (), kwargs: dict[str, Any] | None = None,
              callback: Callable[[Any], Any] | None = None,
              error_callback: Callable[[BaseException], Any] | None = None,
              worker_init: Callable[..., Any] | None = None, worker_exit: Callable[..., Any] | None = None,
              task_timeout: float | None = None, worker_init_timeout: float | None = None,
              worker_exit_timeout: float | None = None) -> Any:
        """Run one call in a worker and return its result."""
        return self.apply_async(func, args, kwargs, callback, error_callback, worker_init, worker_exit, task_timeout,
                                worker_init_timeout, worker_exit_timeout).get()

    def apply_async(self, func: Callable[..., Any], args: Any = (), kwargs: dict[str, Any] | None = None,
                    callback: Callable[[Any], Any] | None = None,
                    error_callback: Callable[[BaseException], Any] | None = None,
                    worker_init: Callable[..., Any] | None = None, worker_exit: Callable[..., Any] | None = None,
                    task_timeout: float | None = None, worker_init_timeout: float | None = None,
                    worker_exit_timeout: float | None = None) -> AsyncResult:
        """Run one call in a worker without waiting; the AsyncResult gives the value later."""
        if not callable(func):
            raise TypeError(f"func must be callable, got {func!r}")
        if not isinstance(args, tuple):
            args = (args,)  # as MPIRE: a single argument need not be wrapped in a tuple
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict or None, got {kwargs!r}")
        task_timeout = check.timeout("task_timeout", task_timeout)
        init_timeout = check.timeout("worker_init_timeout", worker_init_timeout)
        exit_timeout = check.timeout("worker_exit_timeout", worker_exit_timeout)
        settings = self._settings(worker_init, worker_exit, None)
        with self._lock:
            engine = self._engine_for(settings, change_hooks=False)
            job = apply_job(engine, func, args, kwargs or {}, task_timeout=task_timeout,
                            worker_init_timeout=init_timeout, worker_exit_timeout=exit_timeout)
            result = AsyncResult(engine, job, callback, error_callback)
            engine.submit(job, background=True)  # (in serial mode it runs here and now)
        return result

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def stop_and_join(self, keep_alive: bool = False) -> None:
        """Wait for outstanding tasks; unless keep_alive, run the exit hooks and end the workers."""
        with self._lock:
            if keep_alive:
                if self._engine is not None:
                    self._engine.wait_async_jobs()
                return
            self._pool.close()

    join = stop_and_join

    def terminate(self) -> None:
        """End every worker now. Outstanding tasks are dropped, exit hooks do not run."""
        with self._lock:
            engine = self._engine
            if engine is not None and self._pool.detach(engine):
                self._pool.kill(engine)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._engine is not None:
                self._engine.terminate()

    def get_exit_results(self) -> list[Any]:
        """The worker_exit return values from the last time workers stopped."""
        return list(self._pool.exit_results)

    def get_insights(self) -> dict[str, Any]:
        """Timings per worker (start-up, init, waiting, working, exit) and the slowest tasks, in MPIRE's shape:
        durations as "H:MM:SS.mmm" strings, ratios as floats. Empty when insights are disabled or nothing ran."""
        insights = self._pool_insights()
        return insights.as_mpire_dict() if insights is not None else {}

    def print_insights(self) -> None:
        """Print the insights as MPIRE lays them out (or MPIRE's line saying there are none)."""
        insights = self._pool_insights()
        print(insights.format() if insights is not None else NO_STATS)

    def _pool_insights(self) -> PoolInsights | None:
        """The insights of the live workers, else of the workers that ran last."""
        engine = self._engine
        if not self._workers.enable_insights:
            return None
        if engine is not None and engine.insights is not None:
            return engine.insights
        return self._pool.last_insights

    # --- internals ----------------------------------------------------------------------------------------------

    def _settings(self, worker_init: Callable[..., Any] | None, worker_exit: Callable[..., Any] | None,
                  worker_lifespan: int | None) -> WorkerSettings:
        for name, hook in (("worker_init", worker_init), ("worker_exit", worker_exit)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable or None, got {hook!r}")
        return self._workers._replace(worker_init=worker_init, worker_exit=worker_exit,
                                      worker_lifespan=worker_lifespan)

    def _engine_for(self, settings: WorkerSettings, *, change_hooks: bool) -> Runner:
        """The running workers if they fit *settings*, else new ones.

        As in MPIRE, live workers are kept (with their state) whatever the call's hooks and lifespan: a map hands
        its own to them (*change_hooks*), an apply keeps theirs. Only a setter that changed what every call
        receives (pass_on_worker_id, set_shared_objects, set_use_worker_state) needs new workers.
        """
        self._check_not_busy()
        engine = self._pool.engine_for(settings)
        self._keep_workers(engine.settings, settings, change_hooks, lambda: engine.update_hooks(
            settings.worker_init, settings.worker_exit, settings.worker_lifespan))
        return engine

    def _check_not_busy(self) -> None:
        if self._lazy_job is not None:  # an imap whose iterator is still open, whatever its tasks' state
            raise PoolBusyError("this WorkerPool is still running an imap/imap_unordered: exhaust or close() that "
                                "iterator before starting another map (the running one is left untouched)")

    def _keep_workers(self, current: WorkerSettings, settings: WorkerSettings, change_hooks: bool,
                      update: Callable[[], int]) -> None:
        """A call with *settings* on live workers that have *current*: a map hands them its hooks and lifespan
        (``update()`` does, returning how many live workers it told), an apply leaves them theirs."""
        hooks_changed = (settings.worker_init, settings.worker_exit) != (current.worker_init, current.worker_exit)
        if not change_hooks:
            if hooks_changed and (settings.worker_init is not None or settings.worker_exit is not None):
                warnings.warn("apply/apply_async: the workers are running already, so the worker_init and "
                              "worker_exit given here are not used (the running workers keep theirs)",
                              RuntimeWarning, stacklevel=user_stacklevel())
            return
        if not hooks_changed and settings.worker_lifespan == current.worker_lifespan:
            return
        if update() and hooks_changed:
            warnings.warn("worker_init/worker_exit changed while the workers are alive: they keep running with "
                          "their state; a new worker_init runs only in a worker that has run none yet, and the "
                          "latest worker_exit runs when the workers stop", RuntimeWarning,
                          stacklevel=user_stacklevel())

    def _after_call(self, engine: Runner, failed: bool) -> None:
        if self._keep_alive or self._active_calls or engine.has_async_jobs() or not self._pool.detach(engine):
            return
        if failed:
            self._pool.kill(engine)  # as MPIRE: after an error the workers are not asked to finish politely
        else:
            self._pool.stop(engine)


class ThreadingContext:
    """``pool.ctx`` under start_method="threading", as in MPIRE: threading's primitives for events, locks and
    barriers, and multiprocessing's ``Value``, ``Array``, ``JoinableQueue`` and ``Process``. Those are thread-safe
    too, and a ``Value`` or ``Array`` has ``get_lock()``, which code written for process pools calls."""

    Barrier = threading.Barrier
    BoundedSemaphore = threading.BoundedSemaphore
    Condition = threading.Condition
    Event = threading.Event
    Lock = threading.Lock
    RLock = threading.RLock
    Semaphore = threading.Semaphore
    Thread = threading.Thread
    Queue = queue.Queue
    Array = multiprocessing.Array
    JoinableQueue = multiprocessing.JoinableQueue
    Process = multiprocessing.Process
    Value = multiprocessing.Value


def _same_processes(current: WorkerSettings, settings: WorkerSettings) -> bool:
    """Whether workers started with *current* can serve a call with *settings*: hooks and lifespan aside."""
    return current.same_workers(settings._replace(worker_init=current.worker_init, worker_exit=current.worker_exit,
                                                  worker_lifespan=current.worker_lifespan))


def _log_restart() -> None:
    logger().warning("WorkerPool: pass_worker_id, shared_objects or use_worker_state changed while workers were "
                     "alive; starting new workers")


def _equal(a: Any, b: Any) -> bool:
    try:
        return (a == b) is True
    except Exception:  # an == that raises is not equality
        return False


def _context(start_method: str) -> Any:
    if start_method == "threading":
        return ThreadingContext
    return multiprocessing.get_context(start_method)
