"""Shared memory for large buffers: numpy arrays cross between parent and worker process without a pipe.

Each worker process gets two anonymous memfd segments (nothing is ever created in /dev/shm, so nothing can leak
there: the memory goes away with the last mapping and descriptor):

- the **task arena**, written by the parent and read *in place* by the worker. An array argument arrives as a
  view of shared memory: no copy and no fresh pages in the worker. The parent allocates the regions; the worker
  hands a region back once nothing refers to it any more (checked whenever it sends a message), so an argument
  a task keeps (in worker state, say) simply stays allocated while it is used.
- the **result ring**, written by the worker and copied out by the parent the moment each result frame arrives
  (results outlive any chunk, so they cannot stay in the ring). The parent publishes how far it has read in the
  ring's first page; the worker never overwrites what the parent has not read. (The parent stores that cursor
  after its copy has completed; this relies on a CPU not making a store visible before an earlier load has its
  data, which holds on x86-64 and, in practice, on arm64.)

A buffer that does not fit (a full arena or ring) travels through the pipe instead, so the sizes below bound
the memory per worker, never what can be sent. Pages once touched stay resident while the worker lives: that is
what makes the next array cheap (no page faults).

Mappings are made with libc's mmap rather than the mmap module, which keeps a hidden duplicate of each
descriptor until the mapping closes: forked siblings would inherit those and keep a dead worker's memory alive.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import sys
import weakref
from typing import Any

# Every out-of-band buffer (_serialize.OUT_OF_BAND_MIN): even at 64-256 KiB, shared memory took maps of such
# arrays or byte strings in half the time the pipe frame did (measured with 2 workers).
SHARED_MIN = 1 << 16
ARENA_BYTES = 32 << 20  # per worker and direction; address space only until used
_PAGE = mmap.PAGESIZE
_RING_DATA = _PAGE  # the ring's first page holds the parent's read cursor
_UNUSED = 2  # sys.getrefcount of a region holder only TaskArenaReader refers to
_MAP_FIXED = 0x10  # Linux; the mmap module does not export it

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_MAP_FAILED = ctypes.c_void_p(-1).value


def _round_up(size: int) -> int:
    return -(-size // _PAGE) * _PAGE


def _map(fd: int, size: int, flags: int, address: int | None = None) -> int:
    result = _libc.mmap(address, size, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, 0)
    if result is None or result == _MAP_FAILED:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mmap of {size} bytes failed: {os.strerror(errno)}")
    return int(result)


def create_segment_fds() -> tuple[int, int] | None:
    """(task arena fd, result ring fd) for a new worker, or None where memfd is missing (the pipes do it all)."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None or not sys.platform.startswith("linux"):
        return None
    fds: list[int] = []
    try:
        for name, size in (("parallelize-tasks", ARENA_BYTES), ("parallelize-results", _RING_DATA + ARENA_BYTES)):
            fd = memfd_create(name, os.MFD_CLOEXEC)
            fds.append(fd)
            os.ftruncate(fd, size)
    except OSError:
        for fd in fds:
            os.close(fd)
        return None
    return fds[0], fds[1]


class _Segment:
    """One shared mapping of a whole memfd.

    With *keep_fd* the segment keeps *fd* for write() and closes it in close(); without, *fd* stays the caller's.
    *inherit* says whether processes forked from here get the mapping: only where user objects may lie on it (a
    forked child touching an object on a mapping it lacks would crash).
    """

    def __init__(self, fd: int, *, keep_fd: bool, inherit: bool) -> None:
        self.size = os.fstat(fd).st_size
        self.address = _map(fd, self.size, mmap.MAP_SHARED)
        if not inherit:
            _libc.madvise(self.address, self.size, mmap.MADV_DONTFORK)
        self.fd = fd if keep_fd else -1
        # In the parent no view of the mapping outlives the call that made it (copies in, copies out), so close()
        # may unmap; in the worker, arrays lie on the arena, which therefore lives as long as the process.
        self.view = memoryview((ctypes.c_char * self.size).from_address(self.address)).cast("B")
        self._touched = 0  # bytes from the start this process has written at least once

    def write(self, offset: int, buffer: memoryview) -> None:
        end = offset + buffer.nbytes
        if end <= self._touched:
            self.view[offset:end] = buffer  # pages that exist: a plain copy is the fastest
            return
        # Pages never written yet: pwrite lets the kernel allocate them in one go, where a copy through the
        # mapping would take a page fault on each (about 1.6x slower for a cold MiB, measured).
        while buffer.nbytes:
            written = os.pwrite(self.fd, buffer, offset)
            buffer, offset = buffer[written:], offset + written
        self._touched = max(self._touched, end)

    def close(self) -> None:
        self.view.release()
        _libc.munmap(self.address, self.size)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TaskArena:
    """Parent side of the task arena: places argument buffers, takes regions back when the worker says so.
    Owns *fd*."""

    def __init__(self, fd: int) -> None:
        self._segment = _Segment(fd, keep_fd=True, inherit=False)
        self.fd = fd
        self._free: list[tuple[int, int]] = [(0, self._segment.size)]  # sorted (start, end) extents
        self._sizes: dict[int, int] = {}
        self.in_use = 0  # bytes of the regions placed and not released yet

    def place(self, buffer: memoryview) -> int:
        """Copy *buffer* into the arena: its offset, or -1 when it does not fit now."""
        size = _round_up(buffer.nbytes)
        for index, (start, end) in enumerate(self._free):  # first fit: low regions are reused, pages stay warm
            if end - start >= size:
                if end - start == size:
                    del self._free[index]
                else:
                    self._free[index] = (start + size, end)
                self._segment.write(start, buffer)
                self._sizes[start] = size
                self.in_use += size
                return start
        return -1

    def release(self, offsets: list[int]) -> None:
        for offset in offsets:
            size = self._sizes.pop(offset, None)
            if size is None:  # a worker reporting a region twice is a bug, but not one worth dying for
                continue
            self.in_use -= size
            start, end = offset, offset + size
            index = bisect.bisect(self._free, (start, end))
            if index < len(self._free) and self._free[index][0] == end:
                end = self._free.pop(index)[1]
            if index > 0 and self._free[index - 1][1] == start:
                index -= 1
                start = self._free.pop(index)[0]
            self._free.insert(index, (start, end))

    def close(self) -> None:
        self._segment.close()


# The arena readers of this process (one in a worker), for _privatise_after_fork.
_readers: weakref.WeakSet[TaskArenaReader] = weakref.WeakSet()
_fork_hook: list[bool] = []  # registered once per process


class TaskArenaReader:
    """Worker side of the task arena: argument buffers as writable views of shared memory. Closes *fd*."""

    def __init__(self, fd: int) -> None:
        # Inherited by forks: a pool forked inside a task may hand the task's arguments to its children.
        self._segment = _Segment(fd, keep_fd=False, inherit=True)
        os.close(fd)  # the mapping is all the worker needs
        # Each region is exported through a ctypes array of its own: every array or memoryview built on the
        # region holds a reference to it, so its reference count says whether anything still uses the region.
        self._held: list[tuple[int, Any]] = []
        if not _fork_hook:
            os.register_at_fork(after_in_child=_privatise_after_fork)
            _fork_hook.append(True)
        _readers.add(self)

    def view(self, offset: int, size: int, readonly: bool = False) -> memoryview:
        """The region at *offset* as a writable view (*readonly* is for the Fetch signature: objects rebuilt on a
        read-only buffer are read-only whatever buffer the unpickler is given)."""
        holder = (ctypes.c_char * size).from_address(self._segment.address + offset)
        self._held.append((offset, holder))
        return memoryview(holder).cast("B")

    def released(self) -> list[int]:
        """Offsets of the regions nothing refers to any more; forgets them."""
        if not self._held:
            return []
        free: list[int] = []
        kept: list[tuple[int, Any]] = []
        for entry in self._held:
            # References: the entry tuple, and getrefcount's argument. Anything more is a user of the region.
            if sys.getrefcount(entry[1]) <= _UNUSED:
                free.append(entry[0])
            else:
                kept.append(entry)
        self._held = kept
        return free

    def privatise(self) -> None:
        """Turn the arena into private memory of this process, with the regions still in use copied over.

        Run in a child forked from a worker: the child must see the arguments it inherited as they were at the
        fork, as it would with any other memory, not the parent's later writes into reused regions; and its
        own writes must not reach the worker.
        """
        address, size = self._segment.address, self._segment.size
        kept = [(offset, ctypes.string_at(address + offset, ctypes.sizeof(holder))) for offset, holder in self._held]
        _map(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED, address)
        for offset, data in kept:
            ctypes.memmove(address + offset, data, len(data))


def _privatise_after_fork() -> None:
    for reader in list(_readers):
        reader.privatise()
    _readers.clear()  # private memory now: later forks copy it on write like any other


class ResultRing:
    """The result ring, used from both sides: the worker places buffers, the parent copies them out.

    The worker's ring owns *fd* (it writes through it); the parent's leaves *fd* to the caller.
    """

    def __init__(self, fd: int, *, writer: bool) -> None:
        self._segment = _Segment(fd, keep_fd=writer, inherit=False)
        self.fd = self._segment.fd
        self._capacity = self._segment.size - _RING_DATA
        # Bytes the parent has consumed since the start, as one int64 the parent writes and the worker reads.
        self._cursor = self._segment.view[:8].cast("q")
        self._head = 0  # worker side: bytes written since the start

    def place(self, buffer: memoryview) -> int:
        """(Worker) copy *buffer* into the ring: its position, or -1 when the parent has not made room yet."""
        size = _round_up(buffer.nbytes)
        position = self._head
        offset = position % self._capacity
        if offset + size > self._capacity:  # never wrap a buffer around the end: skip to the start
            position += self._capacity - offset
            offset = 0
        if position + size - self._cursor[0] > self._capacity:
            return -1
        self._segment.write(_RING_DATA + offset, buffer)
        self._head = position + size
        return position

    @property
    def consumed(self) -> int:
        """(Parent) bytes taken out of the ring since the start."""
        return int(self._cursor[0])

    def take(self, position: int, size: int, readonly: bool = False) -> bytes | bytearray:
        """(Parent) a private copy of the buffer at *position* (immutable bytes if *readonly*: a bytes result is
        then that very object); its space goes back to the worker."""
        start = _RING_DATA + position % self._capacity
        part = self._segment.view[start : start + size]
        copy = bytes(part) if readonly else bytearray(part)
        self._cursor[0] = position + _round_up(size)
        return copy

    def close(self) -> None:
        self._cursor.release()
        self._segment.close()


class InheritedFd:
    """A descriptor handed to a new worker process: inherited as it is under fork, and duplicated into the child
    under spawn and forkserver by multiprocessing's own means (those it uses for Connection objects)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing.reduction import DupFd

        return (_adopt, (DupFd(self.fd),))


def _adopt(duplicate: Any) -> InheritedFd:
    return InheritedFd(duplicate.detach())
