"""The functions an engine's workers know, each named by a func_id: held while calls use them, then forgotten.

A kept-alive pool may be given a new callable on every call (a fresh ``functools.partial`` per map). Each one is
pickled once and registered in every worker, so keeping them all would grow the parent and every worker without
bound. Calls hold their function (``acquire`` / ``release``). Of the functions no call uses any more, the most
recent few stay registered, so a function called again and again is not sent again each time. Older ones are
dropped here, and the engine tells the workers to drop them too (``take_dropped``).

A registration keeps its function alive, so ``id(function)`` cannot be reused by another object while it maps to
a func_id; both mappings go together, and func_ids are never reused, so nothing stale can be named.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ._serialize import dumps_by_value

IDLE_KEPT = 8  # functions no call uses that stay registered, most recently used first


class FunctionRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # calls register from their own threads; the loop reads from the driver's
        self._func_ids = itertools.count()
        self._functions: dict[int, Callable[..., Any]] = {}
        self._by_object: dict[int, int] = {}  # id(function) -> func_id
        self._users: dict[int, int] = {}  # func_id -> calls holding it
        self._idle: OrderedDict[int, None] = OrderedDict()  # func_ids no call holds, least recently used first
        self._payloads: dict[int, bytes] = {}
        self._dropped: list[int] = []  # func_ids the workers have not yet been told to drop

    def acquire(self, func: Callable[..., Any]) -> int:
        """The func_id of *func*, registering it if needed; held until ``release``."""
        with self._lock:
            func_id = self._by_object.get(id(func))
            if func_id is None:
                func_id = next(self._func_ids)
                self._functions[func_id] = func
                self._by_object[id(func)] = func_id
            self._idle.pop(func_id, None)
            self._users[func_id] = self._users.get(func_id, 0) + 1
            return func_id

    def release(self, func_id: int) -> None:
        """A call holding *func_id* has ended. The least recently used idle functions beyond IDLE_KEPT go."""
        with self._lock:
            users = self._users[func_id] - 1
            if users:
                self._users[func_id] = users
                return
            del self._users[func_id]
            self._idle[func_id] = None
            while len(self._idle) > IDLE_KEPT:
                old, _ = self._idle.popitem(last=False)
                del self._by_object[id(self._functions.pop(old))]
                self._payloads.pop(old, None)
                self._dropped.append(old)

    def payload(self, func_id: int) -> bytes:
        """The function pickled by value, for workers started before it was registered; pickled once."""
        with self._lock:
            payload = self._payloads.get(func_id)
            if payload is None:
                payload = self._payloads[func_id] = dumps_by_value(self._functions[func_id])
            return payload

    def snapshot(self) -> dict[int, Callable[..., Any]]:
        """Every registered function, for a worker about to start (its own dict: the worker changes it)."""
        with self._lock:
            return dict(self._functions)

    def take_dropped(self) -> list[int]:
        """The func_ids dropped since the last call: the workers that know them must forget them."""
        with self._lock:
            dropped, self._dropped = self._dropped, []
            return dropped

    def __len__(self) -> int:
        return len(self._functions)
