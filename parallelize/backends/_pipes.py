"""Length-prefixed frames over OS pipes: blocking on the worker side, non-blocking on the parent side.

The parent never blocks on a write (a full pipe keeps the rest in an outbox and waits for writability), so a
worker busy writing a large result and a parent writing a large chunk can never deadlock each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections import deque
from typing import Any

from .._serialize import dumps, loads
from .._worker import ResultUnpicklable

HEADER = struct.Struct("<Q")
_READ_SIZE = 1 << 18
PIPE_SIZE = 1 << 20  # bigger pipes mean fewer wake-ups for large messages


def enlarge_pipe(fd: int) -> None:
    """Ask Linux for a larger pipe buffer; silently keep the default where that is not allowed."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setpipe, PIPE_SIZE)


def frame(payload: bytes) -> list[memoryview]:
    return [memoryview(HEADER.pack(len(payload))), memoryview(payload)]


def write_all(fd: int, parts: list[memoryview]) -> None:
    """Blocking write of every byte of *parts* (the worker side)."""
    while parts:
        written = os.writev(fd, parts)
        _consume(parts, written)


def _consume(parts: list[memoryview] | deque[memoryview], written: int) -> None:
    while written:
        head = parts[0]
        if written >= len(head):
            written -= len(head)
            if isinstance(parts, deque):
                parts.popleft()
            else:
                parts.pop(0)
        else:
            parts[0] = head[written:]
            written = 0


class ChildChannel:
    """The worker's end: blocking reads of tasks, blocking writes of results."""

    def __init__(self, task_fd: int, result_fd: int) -> None:
        self._reader = open(task_fd, "rb", buffering=_READ_SIZE, closefd=False)  # noqa: SIM115  (lives as long as the worker)
        self._result_fd = result_fd

    def recv(self) -> Any:
        header = self._reader.read(HEADER.size)
        if len(header) < HEADER.size:
            raise EOFError
        (size,) = HEADER.unpack(header)
        body = self._reader.read(size)
        if len(body) < size:
            raise EOFError
        return loads(body)

    def send(self, message: Any) -> None:
        try:
            payload = dumps(message)
        except Exception as exc:
            raise ResultUnpicklable(f"{type(exc).__name__}: {exc}") from exc
        write_all(self._result_fd, frame(payload))


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

    def send(self, payload: bytes) -> bool:
        """Write what fits now; True when something is left for later (wait for writability)."""
        parts = frame(payload)
        if self.outbox:
            self.outbox.extend(parts)
            return True
        try:
            written = os.writev(self.fd, parts)
        except BlockingIOError:
            written = 0
        _consume(parts, written)
        self.outbox.extend(parts)
        return bool(self.outbox)

    def flush(self) -> bool:
        """Write more of the outbox; True while something is still left."""
        while self.outbox:
            try:
                written = os.writev(self.fd, list(self.outbox)[:64])
            except BlockingIOError:
                return True
            _consume(self.outbox, written)
        return False
