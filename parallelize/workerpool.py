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
        """Whether the call has finished (with a value or an exception)."""
        return self._done.is_set()

    def successful(self) -> bool:
        """Whether the call finished without an exception.

        Raises:
            ValueError: the call has not finished yet.
        """
        if not self._done.is_set():
            raise ValueError("the result is not ready yet")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the call has finished, or *timeout* seconds (``None``: no limit)."""
        self._engine.drive(self._done.is_set, check.wait_timeout("timeout", timeout))

    def get(self, timeout: float | None = None) -> Any:
        """The call's value, waiting for it at most *timeout* seconds (``None``: no limit).

        Raises:
            ResultTimeoutError: the call had not finished within *timeout* (it goes on; ``get`` may be called
                again).
            PoolClosedError: the pool was terminated before the call finished.
            Exception: the call's own exception, with its type.
        """
        self.wait(timeout)
        if not self._done.is_set():
            raise ResultTimeoutError(f"the result was not ready within {timeout}s")
        if self._error is not None:  # PoolClosedError if the pool was terminated first
            raise self._error
        return self._value


class WorkerPool:
    """A pool of workers with the API of ``mpire.WorkerPool`` (2.10): code written for MPIRE switches by changing
    its import. Workers start at the first call; with ``keep_alive`` they are kept for the next ones.

    Args:
        n_jobs: number of workers; ``None``, ``0`` or ``-1``: every usable CPU (capped by ``PARALLELIZE_MAX_CPU``),
            ``-k``: all but k-1.
        daemon: start the worker processes as daemons.
        cpu_ids: CPU pinning: one entry for all workers or one per worker, each a CPU id or a list of ids.
        shared_objects: one object given to every worker once, and passed to every task (after the worker id).
        pass_worker_id: pass the worker id (0 ... n_jobs-1) as the first argument of every task.
        use_worker_state: pass a per-worker dict, which lives as long as the worker, to every task and hook.
        start_method: ``"fork"``, ``"forkserver"``, ``"spawn"`` or ``"threading"``.
        keep_alive: keep the workers between maps (MPIRE's rules: a later map reuses them, with its own hooks).
        use_dill: accepted and ignored: functions always travel with cloudpickle.
        enable_insights: time every task for ``get_insights()`` and ``print_insights()``.
        order_tasks: send chunk i to worker ``i % n_jobs``.

    Raises:
        ConfigError: an argument has a value that is not allowed.

    Example:
        ```python
        from parallelize import WorkerPool

        def add(a, b):
            return a + b

        if __name__ == "__main__":
            with WorkerPool(n_jobs=4) as pool:
                print(pool.map(add, [(1, 2), (3, 4)]))  # [3, 7]
        ```
    """

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
        """Pass the worker id to every task from the next call on (new workers start if it changed)."""
        self._workers = self._workers._replace(pass_worker_id=check.flag("pass_on", pass_on))

    def set_shared_objects(self, shared_objects: Any = None) -> None:
        """Give every task *shared_objects* from the next call on. An equal object changes nothing; another one
        makes the next call start new workers (their predecessors' exit hooks run)."""
        # As MPIRE: an equal object changes nothing, so live workers are kept. Objects without a plain boolean ==
        # (numpy arrays) count as changed unless they are the same object.
        current = self._workers.shared_objects
        if shared_objects is not current and not _equal(shared_objects, current):
            self._workers = self._workers._replace(shared_objects=shared_objects)

    def set_use_worker_state(self, use_worker_state: bool = True) -> None:
        """Pass the per-worker state dict to every task from the next call on."""
        self._workers = self._workers._replace(worker_state=check.flag("use_worker_state", use_worker_state))

    def set_keep_alive(self, keep_alive: bool = True) -> None:
        """Keep the workers alive between maps (or not, from the next call's end on)."""
        self._keep_alive = check.flag("keep_alive", keep_alive)

    def set_order_tasks(self, order_tasks: bool = True) -> None:
        """Send chunk i to worker ``i % n_jobs`` (or let the least busy worker take each chunk)."""
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
        """Run *func* on every item of *iterable_of_args*; the results in input order.

        A dict item becomes keyword arguments; a string, bytes or numpy array is passed whole; any other iterable
        item is unpacked as positional arguments. A numpy array given as the whole input is cut into slices along
        its first axis, one task each.

        Args:
            func: the function to run.
            iterable_of_args: the inputs, one task per item.
            iterable_len: the number of items to read (and the progress bar's total) for an input without a length.
            max_tasks_active: at most this many items read and their results not yet handed out.
            chunk_size: tasks per chunk (automatic when neither this nor *n_splits* is given).
            n_splits: cut the input into this many chunks.
            worker_lifespan: replace a worker after this many tasks.
            progress_bar: ``True``, ``False`` or ``"auto"`` (only on a terminal or in a notebook).
            concatenate_numpy_output: join array results into one array.
            worker_init: run once in each worker before its first task (hooks persist with ``keep_alive``).
            worker_exit: run once in each worker when it stops; see ``get_exit_results()``.
            task_timeout: seconds per task; past it the task fails with ``TaskTimeoutError``.
            worker_init_timeout: seconds for ``worker_init``.
            worker_exit_timeout: seconds for ``worker_exit``.
            progress_bar_options: tqdm keyword arguments (``desc``, ``position``...).
            progress_bar_style: ``None`` (the configured default, else ``"auto"``), ``"std"``, ``"notebook"``,
                ``"rich"``, ``"log"`` or ``"dashboard"``.

        Returns:
            The list of results in input order, or one array when the results are numpy arrays and
                *concatenate_numpy_output* is true.

        Raises:
            Exception: the first task's exception, with its own type; its ``__cause__`` holds the worker's traceback.
            WorkerDiedError: a worker died while running a task.
            TaskTimeoutError: a task or hook ran past its timeout.
            PoolBusyError: an ``imap`` of this pool is still open.
            ConfigError: an argument has a value that is not allowed.
        """
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
        """Like ``map``, with the results in completion order. Takes the same arguments (but
        ``concatenate_numpy_output``).

        Returns:
            The list of results, in the order the tasks finished.
        """
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
        """A lazy ``map``: results in input order, each as soon as it and the ones before it are ready. Takes the
        same arguments as ``map`` (but ``concatenate_numpy_output``), checked here rather than at the first
        ``next()``.

        Yields:
            The results, one by one. Leaving the generator early (``break``, ``close()``) cancels the rest of
                the map.
        """
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
        """A lazy ``map`` in completion order. Takes the same arguments as ``imap``.

        Yields:
            The results, in the order the tasks finished.
        """
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
        """Run one call ``func(*args, **kwargs)`` in a worker and wait for it.

        Args:
            func: the function to run.
            args: its positional arguments (a value that is not a tuple is the single argument).
            kwargs: its keyword arguments.
            callback: called in the parent with the result.
            error_callback: called in the parent with the exception, if the call fails.
            worker_init: a hook for workers started for this call (live workers keep their own).
            worker_exit: likewise.
            task_timeout: seconds for the call.
            worker_init_timeout: seconds for ``worker_init``.
            worker_exit_timeout: seconds for ``worker_exit``.

        Returns:
            What *func* returned.

        Raises:
            Exception: the call's exception, with its own type.
        """
        return self.apply_async(func, args, kwargs, callback, error_callback, worker_init, worker_exit, task_timeout,
                                worker_init_timeout, worker_exit_timeout).get()

    def apply_async(self, func: Callable[..., Any], args: Any = (), kwargs: dict[str, Any] | None = None,
                    callback: Callable[[Any], Any] | None = None,
                    error_callback: Callable[[BaseException], Any] | None = None,
                    worker_init: Callable[..., Any] | None = None, worker_exit: Callable[..., Any] | None = None,
                    task_timeout: float | None = None, worker_init_timeout: float | None = None,
                    worker_exit_timeout: float | None = None) -> AsyncResult:
        """Run one call ``func(*args, **kwargs)`` in a worker without waiting for it. Takes the same arguments as
        ``apply``.

        Returns:
            An ``AsyncResult``: ``get(timeout)`` returns the value (or raises the call's exception).

        Example:
            ```python
            result = pool.apply_async(add, (1, 2))
            print(result.get(timeout=10))  # 3
            ```
        """
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
        """Wait for outstanding tasks (``apply_async``); then, unless *keep_alive*, run the exit hooks and end the
        workers. Also available as ``join``.

        Args:
            keep_alive: only wait: the workers stay for the next call.
        """
        with self._lock:
            if keep_alive:
                if self._engine is not None:
                    self._engine.wait_async_jobs()
                return
            self._pool.close()

    join = stop_and_join

    def terminate(self) -> None:
        """End every worker now: outstanding tasks are dropped, exit hooks do not run. Leaving a
        ``with WorkerPool(...)`` block calls it; an open ``imap`` or pending ``apply_async`` then raises
        ``PoolClosedError``."""
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
        """What ``worker_exit`` returned in each worker, the last time workers stopped.

        Returns:
            A list, one entry per worker that ran the exit hook.
        """
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
