"""Turning objects into bytes and back for the trip between the parent and a worker process.

Plain pickle (protocol 5) is the fast path; cloudpickle is the fallback for what pickle cannot do by reference
(lambdas, closures, functions defined in ``__main__`` under spawn). Exceptions get a reducer that does not call
their ``__init__`` again, so exceptions with custom constructor signatures survive the trip.
"""

from __future__ import annotations

import builtins
import copyreg
import functools
import io
import pickle
import threading
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
    buffer = io.BytesIO()
    _by_value_pickler(buffer, None).dump(obj)
    return buffer.getvalue()


loads = pickle.loads

OUT_OF_BAND_MIN = 1 << 16  # buffers at least this large travel beside the pickle, not copied into it


def dumps_out_of_band(obj: Any) -> tuple[bytes, list[memoryview]]:
    """Pickle *obj*, keeping large buffers out of the pickle: (the pickle, the buffers).

    Out of band go contiguous buffers of numpy arrays (pickle protocol 5), and ``bytes`` and ``bytearray`` objects
    of OUT_OF_BAND_MIN bytes or more at any depth of *obj*. The buffers are memoryviews of the objects' own memory:
    written to a pipe or shared memory from there, they are never copied into the pickle, and the receiver
    rebuilds the objects on the buffers it is given (``pickle.loads(data, buffers=buffers)``).
    """
    sink = getattr(_local, "sink", None)
    if sink is None:
        sink = _local.sink = _Sink()
    elif sink.busy:  # a __reduce__ called while pickling sends a message of its own
        sink = _Sink()
    sink.busy = True
    try:
        try:
            sink.pickler.dump(obj)
        except _PICKLE_FAILURES:
            sink.parts.clear()
            _by_value_pickler(sink, sink.keep_in_band).dump(obj)
        return _split(sink.parts)
    finally:
        sink.pickler.clear_memo()  # the memo keeps every object of the message alive
        sink.parts.clear()
        sink.busy = False


_local = threading.local()  # a Pickler per thread, reused: making one costs more than a small message's pickle


class _Sink:
    """The file a Pickler writes to, and its buffer callback: everything in order in ``parts``.

    The C pickler writes the pickle in pieces (bytes), and hands every ``bytes`` or ``bytearray`` object of 64 KiB
    or more (its frame size) to ``write()`` on its own, right after a piece that ends with that object's opcode.
    The callback adds the out-of-band buffers as memoryviews, so buffers of both kinds are in the order the
    unpickler asks for them.
    """

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.write = self.parts.append
        self.pickler = pickle.Pickler(self, protocol=PROTOCOL, buffer_callback=self.keep_in_band)
        self.busy = False

    def keep_in_band(self, buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True
        self.parts.append(raw)
        return False


# What replaces the opcode of a bytes or bytearray object sent out of band: call the rebuilder on the next buffer.
# GLOBAL, NEXT_BUFFER, TUPLE1, REDUCE; the MEMOIZE the pickler wrote after the object then applies to the result.
_CALL_ON_BUFFER = pickle.NEXT_BUFFER + pickle.TUPLE1 + pickle.REDUCE
_AS_BYTES = pickle.GLOBAL + b"builtins\nbytes\n" + _CALL_ON_BUFFER
_AS_BYTEARRAY = pickle.GLOBAL + f"{__name__}\n_bytearray_of\n".encode() + _CALL_ON_BUFFER


def _bytearray_of(buffer: Any) -> bytearray:
    """A bytearray sent out of band: the buffer itself when it is a bytearray of its own (copied out of shared
    memory for this object alone), else a copy (it is a view of a frame or of the task arena)."""
    return buffer if type(buffer) is bytearray else bytearray(buffer)


# The opcodes announcing an object the C pickler writes on its own: with a 4-byte size (bytes, str) and with an
# 8-byte one (bytearray; bytes and str of 4 GiB or more).
_SIZE4 = (pickle.BINBYTES[0], pickle.BINUNICODE[0])
_SIZE8 = (pickle.BINBYTES8[0], pickle.BINUNICODE8[0], pickle.BYTEARRAY8[0])
_REBUILDERS = {(pickle.BINBYTES[0], bytes): _AS_BYTES, (pickle.BINBYTES8[0], bytes): _AS_BYTES,
               (pickle.BYTEARRAY8[0], bytearray): _AS_BYTEARRAY}


def _announcing_opcode(piece: bytes, first: bool, size: int) -> tuple[int, int]:
    """(opcode, its length with its size field) when *piece* ends by announcing an object of *size* bytes that
    the pickler wrote on its own right after it (str, bytes, bytearray); (0, 0) when what follows *piece* is just
    the next piece of the pickle.

    A piece written at a frame boundary is one whole frame (after the protocol header, in the first piece); a
    piece written before such an object always ends outside any frame, with the object's opcode and size.
    """
    if len(piece) >= 5 and piece[-5] in _SIZE4 and int.from_bytes(piece[-4:], "little") == size:
        found = piece[-5], 5
    elif len(piece) >= 9 and piece[-9] in _SIZE8 and int.from_bytes(piece[-8:], "little") == size:
        found = piece[-9], 9
    else:
        return 0, 0
    start = 2 if first else 0
    whole_frame = (piece[start : start + 1] == pickle.FRAME
                   and start + 9 + int.from_bytes(piece[start + 1 : start + 9], "little") >= len(piece))
    return (0, 0) if whole_frame else found


def _split(parts: list[Any]) -> tuple[bytes, list[memoryview]]:
    """The pickle and the out-of-band buffers in what a _Sink collected: each bytes or bytearray object the
    pickler wrote on its own leaves the pickle for the buffers, its opcode replaced by a call on its buffer."""
    if len(parts) == 1:  # a small message: one piece, nothing out of band
        return parts[0], []
    pieces: list[Any] = []
    buffers: list[memoryview] = []
    previous: bytes | None = None  # the last piece of the pickler's own, which may announce an object
    previous_first = False
    for part in parts:
        kind = type(part)
        if kind is memoryview:
            buffers.append(part)
            continue
        if previous is not None and (kind is bytes or kind is bytearray) and len(part) >= OUT_OF_BAND_MIN:
            opcode, length = _announcing_opcode(previous, previous_first, len(part))
            if opcode:
                previous = None
                rebuild = _REBUILDERS.get((opcode, kind))
                if rebuild is None:  # a str's text: it stays in the pickle
                    pieces.append(part)
                else:
                    pieces[-1] = memoryview(pieces[-1])[:-length]
                    pieces.append(rebuild)
                    buffers.append(memoryview(part))
                continue
        previous_first = not pieces
        pieces.append(part)
        previous = part if kind is bytes else None
    # One piece: what stays in the pickle between large objects is small, and a frame writes best in one go.
    return b"".join(pieces), buffers


def _reduce_memoryview(view: memoryview) -> tuple[Any, ...]:
    """A memoryview travels as its bytes (out of band when large) with its format and shape."""
    probe: Any = memoryview(bytes(view.itemsize))  # Any: typeshed knows cast() only for literal formats
    try:
        probe.cast(view.format)
    except (ValueError, TypeError):
        raise TypeError(f"a memoryview of format {view.format!r} cannot be rebuilt in another process (only native "
                        "single-character formats can): send view.cast('B') or bytes(view)") from None
    if view.nbytes == 0 and (view.format != "B" or view.ndim != 1):
        raise TypeError(f"an empty memoryview of format {view.format!r} and shape {view.shape} cannot be rebuilt "
                        "in another process: send b'' or view.cast('B')")
    data: Any = view
    if not view.c_contiguous:
        data = view.tobytes() if view.readonly else bytearray(view.tobytes())
    return _memoryview_of, (pickle.PickleBuffer(data), view.format, view.shape, view.readonly)


def _memoryview_of(buffer: Any, fmt: str, shape: tuple[int, ...], readonly: bool) -> memoryview:
    view: Any = memoryview(buffer).cast("B")
    if fmt != "B" or len(shape) != 1:
        view = view.cast(fmt, shape)
    rebuilt: memoryview = view.toreadonly() if readonly and not view.readonly else view
    return rebuilt


def _by_value_pickler(file: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool] | None) -> pickle.Pickler:
    """cloudpickle's Pickler, which also sends memoryviews (plain pickle refuses them)."""
    return _by_value_class()(file, protocol=PROTOCOL, buffer_callback=buffer_callback)


@functools.cache
def _by_value_class() -> type[pickle.Pickler]:
    import cloudpickle  # imported lazily: it costs several ms and the fast path never needs it

    class ByValuePickler(cloudpickle.Pickler):  # type: ignore[misc]
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is memoryview:
                return _reduce_memoryview(obj)
            return super().reducer_override(obj)

    return ByValuePickler


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
    import traceback  # on a task's failure only: with linecache and tokenize it costs a few ms of start-up

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
