"""Worker lifetimes: a pool's fixed slots, the worker each holds at a time, and the states that worker goes through.

A slot (one worker_id) outlives its workers: a worker that dies, reaches its lifespan or is killed leaves the slot
VACANT, and the next dispatch starts another in it. A worker's life, each step named by a method of WorkerSlot:

    VACANT --started--> STARTING --became_ready--> SERVING --exit_began--> EXITING --reported_end--> ENDED
                         |   ^                        |
                         |   +----init_runs_again-----+          any worker --was_killed--> KILLED
                         +--init_failed--> ENDED

Whatever the state, the slot goes back to VACANT only when the backend reports the process (or thread) gone.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator, MutableSequence
from typing import TYPE_CHECKING, Any

from ._settings import WorkerSettings
from ._worker import WorkerSpec
from .backends import Backend

if TYPE_CHECKING:
    from ._deadlines import Interrupted
    from ._job import Job
    from ._messages import RunChunk

KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL when stopping a worker


class Life(enum.Enum):
    VACANT = "vacant"  # no worker: the next dispatch starts one
    STARTING = "starting"  # started; its worker_init, if any, has not finished (chunks may queue up meanwhile)
    SERVING = "serving"  # runs chunks
    EXITING = "exiting"  # nothing left to run, and told to stop or at its lifespan: its worker_exit may run
    ENDED = "ended"  # said it ends (its exit report, or a failed worker_init): the process is about to go
    KILLED = "killed"  # being killed: its late answers are ignored


class WorkerSlot:
    """One worker position (its worker_id) and the worker in it now."""

    def __init__(self, worker_id: int, *, key: int | None = None, pid: int | None = None, life: Life = Life.VACANT,
                 known_funcs: set[int] | None = None, init_hook: Callable[..., Any] | None = None,
                 start_by: float | None = None) -> None:
        self.worker_id = worker_id
        self.key = key  # the backend's name for the worker
        self.pid = pid
        self.life = life
        self.inflight: deque[tuple[Job, RunChunk]] = deque()  # sent, in the order it answers them
        self.n_assigned = 0  # tasks sent to this worker (its lifespan counts them)
        self.known_funcs: set[int] = set() if known_funcs is None else known_funcs
        self.init_hook = init_hook  # the worker_init this worker runs or ran (it runs at most one)
        self.stop_sent = False  # told to stop: takes no new chunks, exits once those in flight are answered
        self.answered = False  # has returned a chunk
        # Has returned a chunk since the last dispatch: its queue moves, so it may queue as deep as short chunks do
        # (a worker on a long task returns nothing, and gets no more than PREFETCH chunks behind it).
        self.flowing = False
        self.exit_timeout: float | None = None  # from the calls running when its exit began (or the latest call)
        self.interrupted: Interrupted | None = None  # asked to interrupt what it runs, and until when it may take
        self.start_by = start_by  # monotonic time its start must have reached worker_init (or ready) by

    # --- transitions ---

    def became_ready(self) -> None:
        """Its worker_init returned (or it had none)."""
        if self.life is Life.STARTING:
            self.life = Life.SERVING
        self.start_by = None

    def init_failed(self) -> None:
        """Its worker_init raised or timed out: it reports it and ends itself. (SERVING: a worker_init handed over
        by update_hooks while it was starting runs after its first ready report.)"""
        if self.life in (Life.STARTING, Life.SERVING):
            self.life = Life.ENDED

    def init_runs_again(self) -> None:
        """A kept-alive pool's next call gave it a worker_init to run now (its timeout counts from the start)."""
        if self.life is Life.SERVING:
            self.life = Life.STARTING

    def exit_began(self, timeout: float | None) -> None:
        """Nothing left to run, and told to stop or at its lifespan: it may run its worker_exit within *timeout*.
        (A worker still in its worker_init gets there when it becomes ready.)"""
        if self.life is Life.SERVING:
            self.life = Life.EXITING
            self.exit_timeout = timeout

    def reported_end(self) -> None:
        if self.life is not Life.KILLED:
            self.life = Life.ENDED

    def was_killed(self) -> None:
        self.life = Life.KILLED

    # --- questions ---

    @property
    def running(self) -> bool:
        """A worker is in the slot and may still run something (so it can be interrupted or time out)."""
        return self.life not in (Life.VACANT, Life.KILLED)

    @property
    def reachable(self) -> bool:
        """It can still be told something new (a function, new hooks, to stop)."""
        return self.life in (Life.STARTING, Life.SERVING, Life.EXITING) and not self.stop_sent

    def takes_chunks(self, lifespan: int | None, prefetch: int) -> bool:
        return (self.life in (Life.STARTING, Life.SERVING) and not self.stop_sent and len(self.inflight) < prefetch
                and (lifespan is None or self.n_assigned < lifespan))

    def lifespan_reached(self, lifespan: int | None) -> bool:
        return lifespan is not None and self.n_assigned >= lifespan


class Workers:
    """The slots of one pool and the backend that runs their workers."""

    def __init__(self, settings: WorkerSettings, backend: Backend, start_timeout: float | None) -> None:
        self.settings = settings
        self.backend = backend
        self.start_timeout = start_timeout  # see Deadlines: a start that hangs is killed, not waited for
        self.slots = [WorkerSlot(i) for i in range(settings.n_jobs)]
        self._by_key: dict[int, WorkerSlot] = {}
        self._keys = itertools.count()

    def __iter__(self) -> Iterator[WorkerSlot]:
        return iter(self.slots)

    def by_key(self, key: int) -> WorkerSlot | None:
        """The slot of a worker still in it (None for one already gone, or a disowned thread)."""
        return self._by_key.get(key)

    def start(self, slot: WorkerSlot, functions: dict[int, Callable[..., Any]]) -> None:
        """VACANT -> STARTING: a new worker in *slot*, knowing *functions* from the start."""
        settings = self.settings
        key = next(self._keys)
        self.backend.start_worker(key, WorkerSpec(
            slot.worker_id, settings, functions, cpu_ids=settings.cpu_ids[slot.worker_id] if settings.cpu_ids else None,
            created_at=time.time()))
        fresh = WorkerSlot(slot.worker_id, key=key, pid=self.backend.pid(key), life=Life.STARTING,
                           known_funcs=set(functions), init_hook=settings.worker_init,
                           start_by=None if self.start_timeout is None else time.monotonic() + self.start_timeout)
        self.slots[slot.worker_id] = fresh
        self._by_key[key] = fresh

    def gone(self, key: int) -> WorkerSlot | None:
        """The backend reports the worker *key* ended: its slot becomes VACANT. Returns the slot as it was."""
        slot = self._by_key.pop(key, None)
        if slot is not None:
            self.slots[slot.worker_id] = WorkerSlot(slot.worker_id)
        return slot

    def kill(self, slot: WorkerSlot) -> None:
        assert slot.key is not None
        slot.was_killed()
        self.backend.kill(slot.key, KILL_GRACE)

    def clock(self, slot: WorkerSlot) -> MutableSequence[int]:
        assert slot.key is not None
        return self.backend.clock(slot.key)

    def pids(self) -> list[int]:
        return [slot.pid for slot in self.slots if slot.key is not None and slot.pid is not None]

    def all_gone(self) -> bool:
        return all(slot.key is None for slot in self.slots)
