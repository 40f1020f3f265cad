"""Turning objects into bytes and back for the trip between the parent and a worker process.

Plain pickle (protocol 5) is the fast path; cloudpickle is the fallback for what pickle cannot do by reference
(lambdas, closures, functions defined in ``__main__`` under spawn). Exceptions get a reducer that does not call
their ``__init__`` again, so exceptions with custom constructor signatures survive the trip.
"""

from __future__ import annotations

import builtins
import copyreg
import io
import pickle
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

from ._errors import RemoteError
from ._frames import skip_leading_library_frames

PROTOCOL = 5
_PICKLE_FAILURES = (pickle.PicklingError, TypeError, AttributeError, RecursionError)


def dumps(obj: Any) -> bytes:
    """Pickle *obj*, falling back to cloudpickle for objects plain pickle refuses (e.g. lambdas)."""
    try:
        return pickle.dumps(obj, protocol=PROTOCOL)
    except _PICKLE_FAILURES:
        return dumps_by_value(obj)


def dumps_by_value(obj: Any) -> bytes:
    """Pickle with cloudpickle: functions and classes of ``__main__`` or closures travel by value."""
    import cloudpickle  # imported lazily: it costs several ms and the fast path never needs it

    return cloudpickle.dumps(obj, protocol=PROTOCOL)  # type: ignore[no-any-return]


loads = pickle.loads

OUT_OF_BAND_MIN = 1 << 16  # buffers at least this large travel beside the pickle, not copied into it


def dumps_out_of_band(obj: Any) -> tuple[bytes, list[memoryview]]:
    """Pickle *obj*, keeping large contiguous buffers (numpy arrays) out of the pickle (protocol 5).

    The buffers are returned as memoryviews of the objects' own memory: written to a pipe from there, they are
    never copied in user space, and the receiver rebuilds arrays directly on the bytes it read.
    """
    buffers: list[memoryview] = []

    def keep_in_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(raw)
        return False

    try:
        return pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=keep_in_band), buffers
    except _PICKLE_FAILURES:
        buffers.clear()
        import cloudpickle

        return cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=keep_in_band), buffers


class ResultUnpicklable(Exception):
    """Raised by a worker's Channel whose send() could not serialise a message (see _worker.Channel)."""


def describe_unpicklable(obj: Any, limit: int = 200) -> str:
    """A short, capped description of an object for error messages."""
    try:
        text = repr(obj)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(obj).__qualname__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- exceptions -------------------------------------------------------------------------------------------------


def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any] | None) -> Any:
    exc = cls.__new__(cls, *args)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


def _reduce_exception(exc: BaseException) -> tuple[Any, ...]:
    state = dict(exc.__dict__) if getattr(exc, "__dict__", None) else None
    return (_rebuild_exception, (type(exc), exc.args, state))


# Exceptions whose __init__ is a builtin one rebuild exactly with cls(*args) (that is how SystemExit.code or
# OSError.errno come back); only a class with its own __init__ needs the rebuild that skips __init__.
_BUILTIN_EXCEPTION_INITS = {
    cls.__init__ for cls in vars(builtins).values() if isinstance(cls, type) and issubclass(cls, BaseException)
}


def _needs_custom_reduce(obj: Any) -> bool:
    return (isinstance(obj, BaseException) and type(obj).__reduce__ is BaseException.__reduce__
            and type(obj).__init__ not in _BUILTIN_EXCEPTION_INITS)


class _ExceptionPickler(pickle.Pickler):
    """Pickles exceptions without relying on ``cls(*args)`` reconstructing them."""

    dispatch_table = copyreg.dispatch_table.copy()

    def reducer_override(self, obj: Any) -> Any:
        if _needs_custom_reduce(obj):
            return _reduce_exception(obj)
        return NotImplemented


class TaskFailure(NamedTuple):
    """An exception raised by a task (or hook), ready to cross a process boundary."""

    position: int  # of the failing item inside its chunk; -1 for hooks
    payload: bytes | None  # the pickled exception, None if it could not be pickled
    type_name: str
    exc_repr: str
    traceback_text: str


class LocalFailure(NamedTuple):
    """A task's exception that never left this process (serial mode): the object itself, with its traceback."""

    position: int
    error: BaseException


def _dump_exception_by_value(exc: BaseException) -> bytes:
    """cloudpickle, for exception classes that exist only by value here (defined in the parent's __main__ and
    shipped with the function): cloudpickle's class tracking maps them back to the parent's own class."""
    import cloudpickle

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        def reducer_override(self, obj: Any) -> Any:
            if _needs_custom_reduce(obj):
                return _reduce_exception(obj)
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    Pickler(buffer, protocol=PROTOCOL).dump(exc)
    return buffer.getvalue()


def pack_exception(exc: BaseException, index: int = -1) -> TaskFailure:
    """Capture *exc* with its traceback text (from the user's first frame: the worker's own loop is noise);
    pickle it if possible."""
    tb_text = "".join(traceback.format_exception(type(exc), exc, skip_leading_library_frames(exc.__traceback__)))
    payload: bytes | None = None
    bare = exc.with_traceback(None)
    for dump in (_dump_exception, _dump_exception_by_value):
        try:
            payload = dump(bare)
            pickle.loads(payload)  # an exception that pickles but cannot be rebuilt must not fail in the parent
            break
        except Exception:
            payload = None
    return TaskFailure(index, payload, type(exc).__qualname__, describe_unpicklable(exc, 500), tb_text)


def _dump_exception(exc: BaseException) -> bytes:
    buffer = io.BytesIO()
    _ExceptionPickler(buffer, protocol=PROTOCOL).dump(exc)
    return buffer.getvalue()


def note_task(exc: BaseException, index: int, item: Any) -> None:
    """Say on *exc* which task raised it: its position in the input and a capped repr of its input.

    An exception note (Python 3.11+), shown under the message; Python 3.10 has no notes, and the message
    itself must stay the task's own, so there the exception is left as it is.
    """
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(f"(raised by the task at input index {index}, called with {describe_unpicklable(item)})")


def unpack_exception(failure: TaskFailure | LocalFailure) -> BaseException:
    """The original exception (or a RemoteError stand-in), with the worker traceback as ``__cause__``."""
    from ._errors import RemoteTraceback

    if isinstance(failure, LocalFailure):
        return failure.error

    exc: BaseException
    if failure.payload is not None:
        try:
            exc = pickle.loads(failure.payload)
        except Exception:
            exc = RemoteError(failure.type_name, failure.exc_repr, failure.traceback_text)
    else:
        exc = RemoteError(failure.type_name, failure.exc_repr, failure.traceback_text)
    exc.__cause__ = RemoteTraceback(failure.traceback_text)
    return exc


def convert_each(values: list[Any], failures: list[TaskFailure] | None, convert: Callable[[int, Any], Any],
                 error_for: Callable[[int, Any, Exception], BaseException],
                 keep_going: bool) -> tuple[list[Any], list[TaskFailure] | None]:
    """*values* of one chunk, each passed through ``convert(position, value)`` on its own (pickled in the worker,
    unpickled in the parent), so one that fails fails only its own task, with ``error_for(position, value,
    exc)``. Positions that failed already stay None. Without *keep_going* it stops at the first failure."""
    failed = list(failures or ())
    failed_positions = {f.position for f in failed}
    converted: list[Any] = []
    for position, value in enumerate(values):
        if position in failed_positions:
            converted.append(None)
            continue
        try:
            converted.append(convert(position, value))
        except Exception as exc:
            error = error_for(position, value, exc)
            error.__cause__ = exc
            failed.append(pack_exception(error, position))
            if not keep_going:
                break  # the values end before the failure, as a chunk that stops at a failing task sends them
            converted.append(None)
    failed.sort(key=lambda f: f.position)
    return converted, failed or None
