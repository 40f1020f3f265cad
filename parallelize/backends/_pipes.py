"""Length-prefixed frames over OS pipes: blocking on the worker side, non-blocking on the parent side.

The parent never blocks on a write (a full pipe keeps the rest in an outbox and waits for writability), so a
worker busy writing a large result and a parent writing a large chunk can never deadlock each other.

A frame is: total length (8 bytes) | buffer count, pickle length, released count, wire kind (4 + 8 + 4 + 1) | per
out-of-band buffer its length, place and whether it is read-only (8 + 8 + 1) | released task-arena offsets (8
each) | the pickle | the inline buffers. The wire kind names the record a pickled plain tuple stands for (see
_messages.WIRE_TYPES), 0 for a message pickled as it is. Out-of-band buffers are those of large numpy arrays,
bytes and bytearray objects (see _serialize.dumps_out_of_band). A buffer's place is -1 when it follows the pickle
in the frame (written straight from the object's memory, read into one writable bytearray the receiver's objects
are rebuilt on), else where it lies in the worker's shared memory (see _shm): no copy into or out of the pickle
either way. Frames from a worker also list the task-arena regions it no longer uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import os
import pickle
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

from .._messages import WIRE_KINDS, WIRE_TYPES, Undecodable
from .._serialize import ResultUnpicklable, dumps_out_of_band
from ._shm import SHARED_MIN, InheritedFd, ResultRing, TaskArenaReader

HEADER = struct.Struct("<Q")
# Number of out-of-band buffers, length of the pickle, number of released regions, wire kind.
LAYOUT = struct.Struct("<IQIB")
_SMALL = struct.Struct("<QIQIB")  # HEADER and LAYOUT of a frame with no buffers and no released regions
_JOIN_BELOW = 1 << 14  # a smaller pickle is copied behind its header: one part to write instead of two
INLINE = -1  # the place of a buffer carried in the frame itself
_MAX_IOV = 64  # iovecs per writev call (well under IOV_MAX)
_READ_SIZE = 1 << 18
PIPE_SIZE = 1 << 20  # bigger pipes mean fewer wake-ups for large messages


def enlarge_pipe(fd: int) -> None:
    """Ask Linux for a larger pipe buffer; silently keep the default where that is not allowed."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setpipe, PIPE_SIZE)


def _descriptor_format(n_buffers: int, n_released: int) -> str:
    return "<" + "QqB" * n_buffers + f"{n_released}Q"


Place = Callable[[memoryview], int]  # copies a buffer into shared memory: where it lies, or INLINE
# (place, size, read-only) -> a buffer object to rebuild the object on. A read-only buffer can come back as bytes
# (an immutable copy): a bytes object is then rebuilt without a second copy.
Fetch = Callable[[int, int, bool], Any]


def encode(message: Any, place: Place | None = None, released: Sequence[int] = ()) -> list[memoryview]:
    """The parts of one frame carrying *message*, ready for writev. Raises if it cannot be pickled.

    With *place*, large buffers go to shared memory where it has room; *released* task-arena offsets ride along.
    """
    kind = WIRE_KINDS.get(type(message), 0)
    data, buffers = dumps_out_of_band(tuple(message) if kind else message)
    if not buffers and not released:  # the common case: one small pickle
        head = _SMALL.pack(LAYOUT.size + len(data), 0, len(data), 0, kind)
        if len(data) < _JOIN_BELOW:
            return [memoryview(head + data)]
        return [memoryview(head), memoryview(data)]
    descriptors: list[int] = []
    inline: list[memoryview] = []
    for buffer in buffers:
        where = place(buffer) if place is not None and buffer.nbytes >= SHARED_MIN else INLINE
        if where == INLINE:
            inline.append(buffer)
        descriptors += (buffer.nbytes, where, buffer.readonly)
    layout = (LAYOUT.pack(len(buffers), len(data), len(released), kind)
              + struct.pack(_descriptor_format(len(buffers), len(released)), *descriptors, *released))
    total = len(layout) + len(data) + sum(buffer.nbytes for buffer in inline)
    return [memoryview(HEADER.pack(total) + layout), memoryview(data), *inline]


def decode(body: bytes | bytearray | memoryview, fetch: Fetch | None = None,
           release: Callable[[list[int]], None] | None = None) -> Any:
    """The message in one frame's body (everything after the length).

    *fetch* gives the buffers that lie in shared memory; *release* receives the offsets the worker handed back.
    """
    n_buffers, data_size, n_released, kind = LAYOUT.unpack_from(body, 0)
    if not n_buffers and not n_released:
        message = pickle.loads(memoryview(body)[LAYOUT.size : LAYOUT.size + data_size])
        return tuple.__new__(WIRE_TYPES[kind], message) if kind else message
    view = memoryview(body)
    offset = LAYOUT.size
    descriptors = struct.unpack_from(_descriptor_format(n_buffers, n_released), view, offset)
    offset += 17 * n_buffers + 8 * n_released
    if n_released and release is not None:
        release(list(descriptors[3 * n_buffers :]))
    data = view[offset : offset + data_size]
    offset += data_size
    buffers: list[Any] = []
    for index in range(n_buffers):
        size, where, readonly = descriptors[3 * index : 3 * index + 3]
        if where != INLINE:
            if fetch is None:
                raise RuntimeError("a frame refers to shared memory this side does not have")
            buffers.append(fetch(where, size, readonly))
            continue
        part = view[offset : offset + size]
        offset += size
        # Arrays built on read-only memory would be read-only: copy in that (small-frame) case only.
        buffers.append(bytearray(part) if part.readonly else part)
    message = pickle.loads(data, buffers=buffers)
    return tuple.__new__(WIRE_TYPES[kind], message) if kind else message


def decode_answer(body: bytes | bytearray | memoryview, fetch: Fetch | None = None,
                  release: Callable[[list[int]], None] | None = None) -> Any:
    """``decode`` for a worker's message on the parent side: one that cannot be unpickled here becomes an
    Undecodable, the engine's to report as that task's failure, not an error that stops the loop serving every
    call."""
    try:
        return decode(body, fetch, release)
    except Exception as exc:
        return Undecodable(exc)


def write_all(fd: int, parts: list[memoryview]) -> None:
    """Blocking write of every byte of *parts* (the worker side)."""
    while parts:
        written = os.writev(fd, parts[:_MAX_IOV])
        _consume(parts, written)


def _consume(parts: list[memoryview] | deque[memoryview], written: int) -> None:
    """Drop the first *written* bytes of *parts*."""
    if isinstance(parts, deque):
        while parts and written >= len(parts[0]):
            written -= len(parts.popleft())
    else:
        whole = 0
        for part in parts:
            if written < len(part):
                break
            written -= len(part)
            whole += 1
        del parts[:whole]
    if written:
        parts[0] = parts[0][written:]


class ChildChannel:
    """The worker's end: blocking reads of tasks, blocking writes of results; large buffers through shared memory
    when the parent provided it."""

    def __init__(self, task_fd: int, result_fd: int, shared: tuple[InheritedFd, InheritedFd] | None = None) -> None:
        # Lives as long as the worker, hence no `with`.
        self._reader = cast(io.BufferedReader, open(task_fd, "rb", buffering=_READ_SIZE, closefd=False))  # noqa: SIM115
        self._result_fd = result_fd
        self._shared: tuple[TaskArenaReader, ResultRing] | None = None
        if shared is not None:
            self._shared = (TaskArenaReader(shared[0].fd), ResultRing(shared[1].fd, writer=True))
        self._unreported: list[int] = []  # released task-arena offsets not yet told to the parent

    def fds(self) -> list[int]:
        """The descriptors this channel owns besides the two pipes."""
        return [] if self._shared is None else [self._shared[1].fd]

    def recv(self) -> Any:
        header = self._reader.read(HEADER.size)
        if len(header) < HEADER.size:
            raise EOFError
        (size,) = HEADER.unpack(header)
        body = bytearray(size)  # writable: arrays rebuilt on it must be writable, as unpickled ones are
        view = memoryview(body)
        filled = 0
        while filled < size:
            n = self._reader.readinto(view[filled:])
            if not n:
                raise EOFError
            filled += n
        return decode(body, None if self._shared is None else self._shared[0].view)

    def send(self, message: Any) -> None:
        try:
            if self._shared is None:
                parts = encode(message)
            else:
                arena, ring = self._shared
                self._unreported += arena.released()
                parts = encode(message, ring.place, self._unreported)
                self._unreported.clear()
        except Exception as exc:
            raise ResultUnpicklable(f"{type(exc).__name__}: {exc}") from exc
        write_all(self._result_fd, parts)


class FrameReader:
    """Parent side, non-blocking: returns every complete frame readable now, keeps partial ones."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending = bytearray()
        self._body: bytearray | None = None  # a large frame being filled in place
        self._filled = 0

    def read_available(self) -> tuple[list[Any], bool]:
        """(complete payloads, end of file reached)."""
        frames: list[Any] = []
        while True:
            if self._body is not None:
                try:
                    n = os.readv(self.fd, [memoryview(self._body)[self._filled :]])
                except BlockingIOError:
                    return frames, False
                if n == 0:
                    return frames, True
                self._filled += n
                if self._filled == len(self._body):
                    frames.append(self._body)
                    self._body = None
                continue
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return frames, False
            if not data:
                return frames, True
            self._parse(data, frames)
            if len(data) < _READ_SIZE and self._body is None:
                return frames, False  # drained for now: skip a read that would only say EAGAIN

    def _parse(self, data: bytes, frames: list[Any]) -> None:
        if self._pending:
            self._pending += data
            buffer: bytes | bytearray = self._pending
        else:
            buffer = data
        view = memoryview(buffer)
        pos = 0
        end = len(buffer)
        while end - pos >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, pos)
            start = pos + HEADER.size
            if end - start >= size:
                frames.append(view[start : start + size])
                pos = start + size
                continue
            if size > _READ_SIZE:  # read the rest straight into its final buffer
                body = bytearray(size)
                have = end - start
                body[:have] = view[start:end]
                self._body, self._filled = body, have
                pos = end
            break
        # A new buffer, never a resize: frames handed out above may still be views of the old one.
        self._pending = bytearray(view[pos:end]) if pos < end else bytearray()


class ParentWriter:
    """Parent side, non-blocking writes with an outbox for what the pipe cannot take yet."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.outbox: deque[memoryview] = deque()

    def send(self, parts: list[memoryview]) -> bool:
        """Write what fits now; True when something is left for later (wait for writability)."""
        if self.outbox:
            self.outbox.extend(parts)
            return True
        while parts:
            try:
                written = os.writev(self.fd, parts[:_MAX_IOV])
            except BlockingIOError:
                break
            _consume(parts, written)
        self.outbox.extend(parts)
        return bool(self.outbox)

    def flush(self) -> bool:
        """Write more of the outbox; True while something is still left."""
        while self.outbox:
            try:
                written = os.writev(self.fd, list(itertools.islice(self.outbox, _MAX_IOV)))
            except BlockingIOError:
                return True
            _consume(self.outbox, written)
        return False
