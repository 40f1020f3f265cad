"""The decorator: ``@parallel`` turns a function into one that runs over an iterable on a cached worker pool.

ParallelFunction is a wrapt FunctionWrapper, so functions, methods, classmethods and staticmethods keep their
name, docstring, signature and binding. Calling it resolves the configuration (_config), gets the pool from its
PoolHolder (_pool_cache) and runs one Job through _calls: the same path WorkerPool uses.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.machinery
import itertools
import multiprocessing
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from . import _config
from . import _validation as check
from ._calls import Call, apply_job, map_job, run, started
from ._chunking import is_numpy_array, known_length
from ._config import Options
from ._errors import ConfigError, PoolClosedError
from ._frames import hide_library_frames, hides_library_frames, raises_job_errors
from ._insights import Insights
from ._job import Job
from ._pool_cache import PoolHolder
from ._progress import ProgressBar, make_bar
from ._serial import SerialWorker
from ._settings import WorkerSettings
from ._worker import in_worker

if TYPE_CHECKING:
    import concurrent.futures

    from ._runner import Runner

SUBMIT_ATTEMPTS = 3  # tries to submit a call when other threads keep closing the function's pool under it

P = ParamSpec("P")
R = TypeVar("R")


# --- what workers call ---------------------------------------------------------------------------------------------


class TaskTarget:
    """The user's function as workers run it: bound to its instance or class, travelling by reference.

    Pickling names the decorated object (module + qualified name) and the instance, so spawn and forkserver
    workers import the function instead of receiving a copy. Functions that cannot be found by name there travel
    by value through cloudpickle: those defined inside another function, and those of the main program, because a
    spawn or forkserver worker's `__main__` is not the program's (a `python -c` program has none to import, and a
    script's functions defined under `if __name__ == "__main__":` do not exist in it).
    """

    def __init__(self, plain: Callable[..., Any], bind_to: Any, module: str | None, qualname: str | None) -> None:
        self.plain = plain
        self.bind_to = bind_to
        self.module = module
        self.qualname = qualname
        self.parallelize_callable = functools.partial(plain, bind_to) if bind_to is not None else plain

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.parallelize_callable(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.module not in (None, "__main__", "__mp_main__") and self.qualname and "<locals>" not in self.qualname:
            try:
                found = _find_plain(self.module, self.qualname)
            except Exception:
                found = None
            if found is self.plain:
                return (_load_target, (self.module, self.qualname, self.bind_to))
        return (_by_value_target, (self.plain, self.bind_to))


def _find(module: str, qualname: str) -> Any:
    """The object stored under a qualified name, read from namespaces so that no descriptor binds it."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        namespace = vars(obj) if hasattr(obj, "__dict__") else {}
        obj = namespace[part] if part in namespace else getattr(obj, part)
    return obj


def _find_plain(module: str, qualname: str) -> Callable[..., Any]:
    """The undecorated function behind a decorated name."""
    return _unwrap(_find(module, qualname))


def _find_decorated(module: str, qualname: str) -> Any:
    obj = _find(module, qualname)
    if isinstance(obj, classmethod | staticmethod) and not isinstance(obj, ParallelFunction):
        obj = obj.__func__
    return obj


def _rebuild(func: Any, options: dict[str, Any]) -> ParallelFunction[Any, Any]:
    return ParallelFunction(func, options)


def _unwrap(obj: Any) -> Callable[..., Any]:
    if isinstance(obj, classmethod | staticmethod):
        obj = obj.__func__
    if isinstance(obj, ParallelFunction):
        obj = obj.__wrapped__
    if isinstance(obj, classmethod | staticmethod):
        obj = obj.__func__
    return obj  # type: ignore[no-any-return]


def _load_target(module: str, qualname: str, bind_to: Any) -> Callable[..., Any]:
    plain = _find_plain(module, qualname)
    return functools.partial(plain, bind_to) if bind_to is not None else plain


def _by_value_target(plain: Callable[..., Any], bind_to: Any) -> Callable[..., Any]:
    return functools.partial(plain, bind_to) if bind_to is not None else plain


class _Zipped:
    """Several iterables of inputs as one, like ``map(f, xs, ys)``: tuples of their items, as long as the
    shortest; each tuple is unpacked into the call."""

    def __init__(self, iterables: tuple[Any, ...]) -> None:
        self.iterables = iterables

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return zip(*self.iterables)  # noqa: B905 (the shortest input ends the map, as with map())


class _SizedZipped(_Zipped):
    """Zipped inputs whose length is known (every input has one): chunk sizes and progress bars use it."""

    def __init__(self, iterables: tuple[Any, ...], length: int) -> None:
        super().__init__(iterables)
        self.length = length

    def __len__(self) -> int:
        return self.length


# --- the decorated object --------------------------------------------------------------------------------------------


class _Core:
    """State shared by a ParallelFunction and every bound version of it."""

    def __init__(self, func: Any, options: dict[str, Any]) -> None:
        self.options = options
        plain = _unwrap(func)
        self.kind = "static" if isinstance(func, staticmethod) else "class" if isinstance(func, classmethod) \
            else "function"
        self.module: str | None = getattr(plain, "__module__", None)
        self.qualname: str | None = getattr(plain, "__qualname__", None)
        self.plain = plain
        self.holder = PoolHolder(self.qualname or repr(plain))
        self.targets: dict[int, TaskTarget] = {}

    def bind_to(self, instance: Any) -> Any:
        """What the function is bound to when reached through *instance*: the class for a classmethod."""
        if self.kind == "class" and instance is not None:
            return instance if isinstance(instance, type) else type(instance)
        return instance if self.kind == "function" else None

    def target(self, instance: Any) -> TaskTarget:
        bind_to = self.bind_to(instance)
        target = self.targets.get(id(bind_to))
        if target is None or target.bind_to is not bind_to:
            target = TaskTarget(self.plain, bind_to, self.module, self.qualname)
            self.targets[id(bind_to)] = target
        return target

    def resolve(self, call_options: dict[str, Any]) -> Options:
        checked = _config.validate(call_options, f"{self.qualname}()")
        options, _ = _config.resolve(self.options, checked)
        return options

    def serial_mode(self, options: Options) -> bool:
        if options.disabled:
            return True
        if not in_worker():
            return False
        if options.nested and options.backend == "process" and multiprocessing.current_process().daemon:
            raise ConfigError(f"{self.qualname}: nested=True starts a pool inside a worker, but this worker is a "
                              "daemonic process, which may not have children: give the outer function "
                              "daemon=False")
        return not options.nested

    # --- maps ---

    def inputs(self, iterables: tuple[Any, ...]) -> Any:
        """The one iterable of task inputs: the iterable itself, or several zipped as ``map(f, xs, ys)`` does."""
        for position, iterable in enumerate(iterables):
            if is_numpy_array(iterable) or isinstance(iterable, Iterable):
                continue
            kind = type(iterable).__name__
            if position == 0:
                raise TypeError(
                    f"{self.qualname}() runs the function over an iterable of inputs and got a non-iterable "
                    f"{kind}; to call it once, in this process, use {self.qualname}.serial(...)")
            raise TypeError(
                f"{self.qualname}() runs the function over iterables of inputs, zipped as map() does, and its "
                f"argument {position + 1} is a non-iterable {kind}; to pass the same value with every item, give "
                "itertools.repeat(value)")
        if len(iterables) == 1:
            return iterables[0]
        lengths = [known_length(iterable, None) for iterable in iterables]
        if None in lengths:
            return _Zipped(iterables)
        return _SizedZipped(iterables, min(n for n in lengths if n is not None))

    def resolve_map(self, call_options: dict[str, Any]) -> tuple[Options, int | None]:
        """A map's options, and its iterable_len: a keyword of the call only (like WorkerPool's), the number of
        items to read, which gives an input without a length (a generator) a total for its progress bar."""
        iterable_len = check.iterable_len(call_options.pop("iterable_len", None))
        return self.resolve(call_options), iterable_len

    def map_all(self, instance: Any, iterables: tuple[Any, ...], call_options: dict[str, Any],
                ordered: bool) -> list[Any]:
        """Every result of a map, collected batch by batch (no generator step per result)."""
        results = self.run_map(instance, iterables, call_options, ordered, batches=True)
        return results if isinstance(results, list) else list(itertools.chain.from_iterable(results))

    def run_map(self, instance: Any, iterables: tuple[Any, ...], call_options: dict[str, Any],
                ordered: bool, *, batches: bool = False) -> Iterable[Any]:
        """The results of a map, one by one (or, with *batches*, in lists; a serial map returns one list)."""
        iterable = self.inputs(iterables)
        options, iterable_len = self.resolve_map(call_options)
        target = self.target(instance)
        if self.serial_mode(options):
            return self.run_serial(target, iterable, options, ordered, iterable_len)
        for attempt in range(SUBMIT_ATTEMPTS):
            engine, job, bar = self.start_map(target, iterable, options, ordered, iterable_len)
            try:
                return started(engine, job, bar, self.ender(engine, options), batches=batches)
            except PoolClosedError:
                if attempt == SUBMIT_ATTEMPTS - 1:
                    raise
                # Another thread closed this pool between our getting it and submitting (nothing was read from
                # the input yet): the next try gets a new one.
        raise AssertionError("unreachable")

    def start_map(self, target: TaskTarget, iterable: Any, options: Options, ordered: bool,
                  iterable_len: int | None) -> tuple[Runner, Job, ProgressBar | None]:
        """The pool for *options*, and a job (with its progress bar) of *target* over *iterable* on it."""
        bar = self.bar(options)  # first: a style whose package is missing fails before any pool starts
        engine = self.holder.engine_for(WorkerSettings.from_options(options))
        job = self.map_job(engine, target, iterable, options, ordered, iterable_len)
        return engine, job, bar

    def bar(self, options: Options) -> ProgressBar | None:
        return make_bar(options.progress_bar, options.progress_bar_style, options.progress_bar_options,
                        self.qualname or repr(self.plain))

    def map_job(self, runner: Runner, target: TaskTarget, iterable: Any, options: Options, ordered: bool,
                iterable_len: int | None) -> Job:
        return map_job(runner, target, iterable, n_jobs=options.n_jobs, ordered=ordered, iterable_len=iterable_len,
                       max_tasks_active=options.max_tasks_active, chunk_size=options.chunk_size,
                       n_splits=options.n_splits, task_timeout=options.task_timeout,
                       worker_init_timeout=options.worker_init_timeout,
                       worker_exit_timeout=options.worker_exit_timeout, on_error=options.on_error,
                       retries=options.retries, retry_backoff=options.retry_backoff, owner=self)

    def ender(self, engine: Runner, options: Options) -> Callable[[bool], None]:
        """The on_end of a call on *engine*: end_map, whether or not the call failed."""
        return lambda failed: self.end_map(engine, options)

    def end_map(self, engine: Runner, options: Options) -> None:
        """After a call: its own pool ends with keep_alive=False; replaced pools end once no call uses them."""
        if not options.keep_alive:
            self.holder.release(engine)
        self.holder.call_ended()

    def run_serial(self, target: TaskTarget, iterable: Any, options: Options, ordered: bool,
                   iterable_len: int | None) -> list[Any]:
        """Everything in this thread, as a single worker would: init hook, the job (the same Job, with its error
        policy, as in workers), exit hook."""
        # A bar is drawn by the caller's process only: a call nested in a worker runs here without one.
        bar = None if in_worker() else self.bar(options)
        worker = SerialWorker(WorkerSettings.from_options(options))
        job = self.map_job(worker, target, iterable, options, ordered, iterable_len)
        batches = run(worker, job, bar, _ignore, batches=True)
        results = list(itertools.chain.from_iterable(batches))
        self.serial_worker_done(worker)
        return results

    def serial_worker_done(self, worker: SerialWorker) -> None:
        if worker.settings.worker_exit is not None:
            self.holder.exit_results = worker.stop()

    def submit(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> concurrent.futures.Future[Any]:
        options = self.resolve({})
        target = self.target(instance)
        import concurrent.futures  # here: it costs a few ms of import time (logging with it) that maps never need

        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        serial = self.serial_mode(options)

        def finished(job: Job) -> None:
            if job.error is not None:  # PoolClosedError if the pool was closed first
                future.set_exception(job.error)
            else:
                future.set_result(job.pop_ready()[0])

        for attempt in range(SUBMIT_ATTEMPTS):
            settings = WorkerSettings.from_options(options)
            engine = SerialWorker(settings) if serial else self.holder.engine_for(settings)
            job = apply_job(engine, target, args, kwargs, task_timeout=options.task_timeout,
                            worker_init_timeout=options.worker_init_timeout,
                            worker_exit_timeout=options.worker_exit_timeout, retries=options.retries,
                            retry_backoff=options.retry_backoff, owner=self)
            job.finish_listeners.append(finished)
            try:
                engine.submit(job, background=True)  # a SerialWorker runs it here and now
                if isinstance(engine, SerialWorker):  # (serial: its one call is over)
                    self.serial_worker_done(engine)
                return future
            except PoolClosedError:  # closed by another thread in the meantime: as in run_map
                if attempt == SUBMIT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    @raises_job_errors
    async def aimap(self, instance: Any, iterables: tuple[Any, ...], call_options: dict[str, Any],
                    ordered: bool) -> AsyncIterator[Any]:
        """Results as they come, without blocking the event loop: a background driver runs the pool."""
        iterable = self.inputs(iterables)
        options, iterable_len = self.resolve_map(call_options)
        target = self.target(instance)
        if self.serial_mode(options):
            for value in self.run_serial(target, iterable, options, ordered, iterable_len):
                yield value
            return
        engine, job, bar = self.start_map(target, iterable, options, ordered, iterable_len)
        import asyncio  # here, not at the top: it costs ~15 ms of import time that sync users never need

        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def notify(*_: Any) -> None:
            # Called by the driver thread; the caller may have left this aimap early and its event loop ended
            # before the cancellation reached the job. Raising there would fail the driver and leave the job
            # counted as pending, so that closing the pool would wait for it for ever.
            with contextlib.suppress(RuntimeError):  # (the loop is closed: nobody is waiting any more)
                loop.call_soon_threadsafe(wake.set)

        job.progress_listeners.append(notify)
        job.finish_listeners.append(notify)
        call = Call(engine, job, bar, self.ender(engine, options))
        try:
            call.begin(background=True)  # the background driver runs the pool; this face only waits for it
            while (batch := call.batch()) is not None:
                if not batch:
                    await wake.wait()
                    wake.clear()
                for value in batch:
                    yield value
            error = call.error()
            if error is not None:
                raise error
        finally:
            call.end()


def _ignore(failed: bool) -> None:
    """The on_end of a serial call: its worker ends with it (see run_serial)."""


class _Methods(Generic[P, R]):
    """The methods of a decorated function; the bound and unbound wrappers share them."""

    _self_core: _Core
    _self_instance: Any
    _self_owner: Any

    def _instance(self) -> Any:
        instance = self._self_instance
        if instance is None and self._self_core.kind == "class":
            return self._self_owner  # a classmethod reached through its class
        return instance

    def imap(self, iterable: Iterable[Any], /, *iterables: Iterable[Any], **options: Any) -> Iterable[R]:
        """Run the function over *iterable* lazily: results one by one, in input order, each as soon as it and
        the ones before it are ready.

        The input is read as the workers need it. Leaving the loop early (``break``, ``close()``, dropping the
        generator) cancels the rest of the call: nothing more is sent and running tasks are interrupted.

        Args:
            iterable: the inputs, one task per item (a tuple item is unpacked, a dict item becomes keywords).
            *iterables: more inputs, zipped with the first as ``map(f, xs, ys)`` does.
            **options: options for this call only (see ``parallel``), and ``iterable_len=N``: read at most N
                items, and N is the progress bar's total for an input without a length.

        Returns:
            A generator of the results.

        Raises:
            ConfigError: an option has a value that is not allowed (raised here, before the first ``next()``).
            TypeError: an unknown option, or an input that is not iterable.

        Example:
            ```python
            for result in f.imap(read_rows(), iterable_len=1000):
                print(result)
            ```
        """
        return self._self_core.run_map(self._instance(), (iterable, *iterables), options, ordered=True)

    def imap_unordered(self, iterable: Iterable[Any], /, *iterables: Iterable[Any], **options: Any) -> Iterable[R]:
        """Like ``imap``, with the results in completion order: each as soon as it is ready.

        Args:
            iterable: the inputs, one task per item.
            *iterables: more inputs, zipped with the first.
            **options: options for this call only, and ``iterable_len``.

        Returns:
            A generator of the results, in the order the tasks finished.
        """
        return self._self_core.run_map(self._instance(), (iterable, *iterables), options, ordered=False)

    @hides_library_frames
    def map_unordered(self, iterable: Iterable[Any], /, *iterables: Iterable[Any], **options: Any) -> list[R]:
        """Run the function over *iterable*: all results, in completion order.

        Args:
            iterable: the inputs, one task per item.
            *iterables: more inputs, zipped with the first.
            **options: options for this call only, and ``iterable_len``.

        Returns:
            The list of results, in the order the tasks finished.
        """
        return self._self_core.map_all(self._instance(), (iterable, *iterables), options, ordered=False)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[R]:
        """Run one call ``f(*args, **kwargs)`` in a worker, without waiting for it.

        The pool is driven by a background thread, so the caller is free. The call's options are the
        decorator's and ``config()``'s (``task_timeout``, ``retries``...); ``submit`` takes no options of its own.

        Args:
            *args: the function's positional arguments.
            **kwargs: the function's keyword arguments.

        Returns:
            A ``concurrent.futures.Future``: ``result(timeout)``, ``add_done_callback``, ``as_completed``...
                work as usual. Its exception is the task's, or ``PoolClosedError`` if the pool was closed first.

        Example:
            ```python
            future = f.submit(3)
            print(future.result(timeout=10))
            ```
        """
        return self._self_core.submit(self._instance(), args, kwargs)

    async def amap(self, iterable: Iterable[Any], /, *iterables: Iterable[Any], **options: Any) -> list[R]:
        """``await f.amap(items)``: all results in input order, without blocking the event loop.

        A background thread drives the pool; the coroutine waits for its results.

        Args:
            iterable: the inputs, one task per item.
            *iterables: more inputs, zipped with the first.
            **options: options for this call only, and ``iterable_len``.

        Returns:
            The list of results, in input order.
        """
        try:
            return [value async for value in
                    self._self_core.aimap(self._instance(), (iterable, *iterables), options, True)]
        except Exception as exc:
            hide_library_frames(exc)
            raise

    def aimap(self, iterable: Iterable[Any], /, *iterables: Iterable[Any], **options: Any) -> AsyncIterator[R]:
        """``async for r in f.aimap(items)``: results in input order, without blocking the event loop.

        Args:
            iterable: the inputs, one task per item.
            *iterables: more inputs, zipped with the first.
            **options: options for this call only, and ``iterable_len``.

        Returns:
            An asynchronous iterator of the results. Leaving it early cancels the rest of the call.
        """
        return self._self_core.aimap(self._instance(), (iterable, *iterables), options, True)

    def serial(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the plain function once, in this process: ``f.serial(x)`` is the undecorated ``f(x)``.

        Args:
            *args: the function's positional arguments.
            **kwargs: the function's keyword arguments.

        Returns:
            What the function returns.
        """
        return self._self_core.target(self._instance()).parallelize_callable(*args, **kwargs)  # type: ignore[no-any-return]

    def insights(self) -> Insights:
        """``with f.insights() as report:`` collects the insights of this function's calls made in the block (in
        this thread or asyncio task), with the calls their tasks make; see ``parallelize.insights()``.

        Returns:
            A context manager whose ``__enter__`` returns the ``InsightsReport``.
        """
        return Insights(owner=self._self_core)

    def close(self) -> list[Any]:
        """Stop this function's workers (their exit hooks run). The next call starts new ones.

        Also drops the per-instance targets of a decorated method, which keep their instances alive until then.
        Calling it is optional: pools are closed at interpreter exit.

        Returns:
            What ``worker_exit`` returned in each worker (empty without an exit hook).

        Raises:
            Exception: the first exception a ``worker_exit`` hook raised.
        """
        core = self._self_core
        core.targets.clear()
        return core.holder.close()

    @property
    def exit_results(self) -> list[Any]:
        """What ``worker_exit`` returned in the workers stopped most recently (a list, one entry per worker)."""
        return list(self._self_core.holder.exit_results)

    @property
    def decorator_options(self) -> dict[str, Any]:
        """The options given to ``@parallel`` (or to ``options()``), and the hooks, as a dict."""
        return dict(self._self_core.options)

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers: empty before the first call and after ``close()``.

        Returns:
            A list of pids (empty for thread workers, which have no process of their own).
        """
        engine: Runner | None = self._self_core.holder.engine
        return engine.worker_pids() if engine is not None and engine.usable else []

    # wrapt's proxy answers dir() and repr() for the wrapped function; the subclasses below use these instead.

    def _parallel_dir(self) -> list[str]:
        """The function's attributes and this object's methods, so that tab completion finds imap, submit..."""
        ours = {name for cls in type(self).__mro__ if cls.__module__ == __name__
                for name in vars(cls) if not name.startswith("_")}
        return sorted(ours.union(dir(self.__wrapped__)))  # type: ignore[attr-defined]

    def _parallel_repr(self) -> str:
        core = self._self_core
        bound_to = core.bind_to(self._instance())
        if bound_to is not None:
            return f"<bound parallel method {core.qualname} of {bound_to!r}>"
        kind = {"function": "function", "class": "classmethod", "static": "staticmethod"}[core.kind]
        return f"<parallel {kind} {core.module}.{core.qualname}>"


def _wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    raise AssertionError("unreachable: ParallelFunction handles calls itself")  # pragma: no cover


def _wrapt_extension() -> Any:
    """wrapt's compiled extension module, loaded on its own; None where it cannot be (wrapt's Python code is then
    imported as usual).

    The decorator needs only wrapt's FunctionWrapper and BoundFunctionWrapper, which the extension defines.
    ``import wrapt`` also loads wrapt's pure-Python proxies, decorator factories, import hooks and patching
    helpers, and ``inspect`` with them: about 5 ms of every program's start-up (measured with wrapt 1.17). The
    module is registered under its own name, so a later ``import wrapt`` by the program takes this very module,
    and wrapt's classes are the ones ParallelFunction derives from.
    """
    if "wrapt" in sys.modules or os.environ.get("WRAPT_DISABLE_EXTENSIONS"):
        return None  # wrapt imported already: its classes; extensions disabled: wrapt's Python ones
    name = "wrapt._wrappers"
    if name in sys.modules:
        return sys.modules[name]
    try:
        # Found as `import wrapt` would find it: the first of sys.meta_path's finders that knows it.
        package = next(filter(None, (finder.find_spec("wrapt", None) for finder in sys.meta_path
                                     if hasattr(finder, "find_spec"))), None)
        if package is None or not package.submodule_search_locations:
            return None
        for directory in package.submodule_search_locations:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(directory, "_wrappers" + suffix)
                if os.path.isfile(path):
                    loader = importlib.machinery.ExtensionFileLoader(name, path)
                    module = loader.create_module(importlib.machinery.ModuleSpec(name, loader, origin=path))
                    loader.exec_module(module)
                    return sys.modules.setdefault(name, module)
    except Exception:  # (ImportError, OSError: an extension that does not load here)
        pass
    return None


if TYPE_CHECKING:
    # wrapt 1.x ships no types (Any to mypy), 2.x generic classes: the class statements below ignore both.
    from wrapt import BoundFunctionWrapper as _BoundFunctionWrapper
    from wrapt import FunctionWrapper as _FunctionWrapper
else:
    _wrapt = _wrapt_extension()
    if _wrapt is None:
        import wrapt as _wrapt
    _FunctionWrapper = _wrapt.FunctionWrapper
    _BoundFunctionWrapper = _wrapt.BoundFunctionWrapper


class BoundParallelFunction(_BoundFunctionWrapper, _Methods[P, R]):  # type: ignore[misc, type-arg, unused-ignore]
    """A decorated method accessed through an instance or class."""

    @property
    def _self_core(self) -> _Core:  # type: ignore[override]
        return self._self_parent._self_core  # type: ignore[no-any-return]

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Like a bound method: the object it is bound to, and the attribute name.
        owner = self._instance()
        if owner is None:
            owner = self._self_owner
        return (getattr, (owner, self.__wrapped__.__name__))

    __dir__ = _Methods._parallel_dir
    __repr__ = __str__ = _Methods._parallel_repr

    @hides_library_frames
    def __call__(self, iterable: Iterable[Any], /, *iterables: Iterable[Any], **options: Any) -> list[R]:
        return self._self_core.map_all(self._instance(), (iterable, *iterables), options, ordered=True)


class ParallelFunction(_FunctionWrapper, _Methods[P, R]):  # type: ignore[misc, type-arg, unused-ignore]
    """A function that, called on an iterable, runs on a pool of workers. See ``parallel``.

    ``f(xs)`` runs the function on every item of *xs* in worker processes and returns the results in input order
    (a tuple item is unpacked into the arguments, a dict item into keywords); ``f(xs, ys)`` zips several
    iterables, as ``map(f, xs, ys)`` does. Keyword arguments override options for that call only. Methods:
    ``imap`` and ``imap_unordered`` (lazy), ``map_unordered``, ``amap`` and ``aimap`` (asyncio), ``submit`` (one
    call, a Future), ``serial`` (one call in this process), ``options`` (a copy with other options),
    ``insights`` (a context manager reporting its calls), ``close``, ``exit_results``, ``worker_pids``, and
    ``worker_init`` / ``worker_exit`` (decorators for hooks).
    """

    __bound_function_wrapper__ = BoundParallelFunction

    def __init__(self, func: Callable[P, R], options: dict[str, Any]) -> None:
        super().__init__(func, _wrapper)
        self._self_core = _Core(func, options)

    __dir__ = _Methods._parallel_dir
    __repr__ = __str__ = _Methods._parallel_repr

    def _instance(self) -> Any:
        return None

    @hides_library_frames
    def __call__(self, iterable: Iterable[Any], /, *iterables: Iterable[Any], **options: Any) -> list[R]:
        """Run the function over *iterable* (or over several, zipped as ``map(f, xs, ys)`` does).

        Args:
            iterable: the inputs, one task per item: a tuple item is unpacked into the arguments, a dict item
                becomes keyword arguments, anything else is the single argument.
            *iterables: more inputs, zipped with the first (as long as the shortest).
            **options: options for this call only (see ``parallel``), and ``iterable_len=N``.

        Returns:
            The list of results, in input order. With ``on_error="return"`` a failed item's exception takes its
                place; with ``on_error="skip"`` it is left out.

        Raises:
            Exception: the first task's exception, with its own type (``on_error="raise"``, the default); its
                ``__cause__`` holds the worker's traceback.
            WorkerDiedError: a worker died while running a task.
            TaskTimeoutError: a task ran past ``task_timeout``.
            ConfigError: an option or ``PARALLELIZE_*`` variable has a value that is not allowed.
            TypeError: an unknown option, or an input that is not iterable.
        """
        return self._self_core.map_all(None, (iterable, *iterables), options, ordered=True)

    def worker_init(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: run *hook* once in each worker as it starts, before its first task.

        The hook receives the same leading arguments as the task (worker id, shared objects, worker state, as
        enabled), without an item.

        Args:
            hook: the function to run.

        Returns:
            *hook*, unchanged.

        Example:
            ```python
            @f.worker_init
            def load(worker_state):
                worker_state["model"] = load_model()
            ```
        """
        self._self_core.options["worker_init"] = _config.validate({"worker_init": hook}, "worker_init")["worker_init"]
        return hook

    def worker_exit(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: run *hook* once in each worker when it stops; what it returns is collected in
        ``exit_results`` (and returned by ``close()``).

        Args:
            hook: the function to run; it receives the same leading arguments as ``worker_init``.

        Returns:
            *hook*, unchanged.
        """
        self._self_core.options["worker_exit"] = _config.validate({"worker_exit": hook}, "worker_exit")["worker_exit"]
        return hook

    def options(self, **overrides: Any) -> ParallelFunction[P, R]:
        """A copy of this function with some options changed. The copy has its own pool.

        Args:
            **overrides: options to change (see ``parallel``).

        Returns:
            A new ``ParallelFunction``.

        Raises:
            ConfigError: an option has a value that is not allowed.
            TypeError: an unknown option.

        Example:
            ```python
            small = f.options(n_jobs=2, chunk_size=1)
            ```
        """
        merged = {**self._self_core.options, **_config.validate(overrides, "options()")}
        return ParallelFunction(self.__wrapped__, merged)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # By reference (module + qualified name), so workers and other processes import the same object; by value
        # where the name does not lead back here (defined in a function, or inside a class pickled by value).
        core = self._self_core
        if core.module and core.qualname and "<locals>" not in core.qualname:
            try:
                if _find_decorated(core.module, core.qualname) is self:
                    return (_find_decorated, (core.module, core.qualname))
            except Exception:
                pass
        return (_rebuild, (self.__wrapped__, core.options))

    def __copy__(self) -> ParallelFunction[P, R]:
        return ParallelFunction(self.__wrapped__, dict(self._self_core.options))

    def __deepcopy__(self, memo: Any) -> ParallelFunction[P, R]:
        return self.__copy__()


@overload
def parallel(func: Callable[P, R], /) -> ParallelFunction[P, R]: ...


@overload
def parallel(
    *,
    n_jobs: int | None = ...,
    backend: str = ...,
    start_method: str | None = ...,
    chunk_size: int | float | None = ...,
    n_splits: int | None = ...,
    max_tasks_active: int | None = ...,
    worker_lifespan: int | None = ...,
    task_timeout: float | None = ...,
    worker_init_timeout: float | None = ...,
    worker_exit_timeout: float | None = ...,
    progress_bar: bool | str = ...,
    progress_bar_options: dict[str, Any] | None = ...,
    progress_bar_style: str | None = ...,
    on_error: str = ...,
    retries: int = ...,
    retry_backoff: float = ...,
    max_worker_memory: int | str | None = ...,
    enable_insights: bool = ...,
    daemon: bool = ...,
    keep_alive: bool = ...,
    nested: bool = ...,
    pass_worker_id: bool = ...,
    worker_state: bool = ...,
    shared_objects: Any = ...,
    cpu_ids: Any = ...,
    worker_init: Callable[..., Any] | None = ...,
    worker_exit: Callable[..., Any] | None = ...,
) -> Callable[[Callable[P, R]], ParallelFunction[P, R]]: ...


def parallel(func: Any = None, /, **options: Any) -> Any:
    """Make *func* run in parallel: ``f(items)`` maps it over *items* on a pool of worker processes.

    Usable bare (``@parallel``) or with options (``@parallel(n_jobs=4, worker_state=True)``), on functions,
    methods, classmethods and staticmethods. Options are checked here, so a bad value fails at decoration time;
    nothing starts until the first call, and the pool is kept for the next calls. Each option can also be given
    per call, in ``with config(...)`` and (most) in a ``PARALLELIZE_*`` variable; the options table of the
    decorator guide describes each one.

    Args:
        func: the function to decorate (when used bare).
        **options: ``n_jobs``, ``backend``, ``start_method``, ``chunk_size``, ``n_splits``, ``max_tasks_active``,
            ``worker_lifespan``, ``task_timeout``, ``worker_init_timeout``, ``worker_exit_timeout``,
            ``progress_bar``, ``progress_bar_options``, ``progress_bar_style``, ``on_error``, ``retries``,
            ``retry_backoff``, ``max_worker_memory``, ``enable_insights``, ``daemon``, ``keep_alive``, ``nested``,
            ``pass_worker_id``, ``worker_state``, ``shared_objects``, ``cpu_ids``, ``worker_init``,
            ``worker_exit``.

    Returns:
        A ``ParallelFunction`` (bare), or a decorator that makes one.

    Raises:
        TypeError: an unknown option (with the closest known one suggested), or *func* is not callable.
        ConfigError: an option has a value that is not allowed.

    Example:
        ```python
        from parallelize import parallel

        @parallel(n_jobs=4)
        def square(x):
            return x * x

        if __name__ == "__main__":
            print(square(range(10)))  # [0, 1, 4, ..., 81]
        ```
    """
    checked = _config.validate(options, "parallel()")
    if func is None:
        return lambda f: ParallelFunction(f, dict(checked))
    if not callable(func) and not isinstance(func, classmethod | staticmethod):
        raise TypeError(f"parallel() decorates a function, got {func!r}")
    return ParallelFunction(func, dict(checked))

