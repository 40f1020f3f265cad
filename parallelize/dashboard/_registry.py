"""The calls a dashboard shows: this process's, and those that connected processes post.

Every record enters through one door, publish(), which keeps only known fields of the right type and caps the size
of texts and lists, so a connected process (or a task's enormous repr) can neither break the page nor fill the
memory. Finished calls are kept up to MAX_FINISHED, the oldest dropped first.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

MAX_FINISHED = 100  # finished calls kept for the page
MAX_CALLS = 1000  # records in all: beyond, calls of connected processes are refused
SILENT_AFTER = 15.0  # seconds without news from a connected process before its running calls show as silent
STATES = ("running", "done", "failed", "cancelled")

_TEXT = 1_000  # characters of a name, a call site, an argument repr
_LONG_TEXT = 20_000  # characters of an error message or a traceback (its end is kept: the raising line)
_MAX_WORKERS = 1024


class PublishError(ValueError):
    """A record a connected process posted is not what a call's record is."""


def _text(limit: int, keep_end: bool = False) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise PublishError(f"expected a string, got {type(value).__name__}")
        if len(value) <= limit:
            return value
        return "…" + value[-limit:] if keep_end else value[:limit] + "…"

    return check


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PublishError(f"expected a count, got {value!r}")
    return value


def _optional_count(value: Any) -> int | None:
    return None if value is None else _count(value)


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PublishError(f"expected a number of seconds, got {value!r}")
    return max(0.0, float(value))  # a clock read a hair early is no reason to refuse a record


def _state(value: Any) -> str:
    if value not in STATES:
        raise PublishError(f"expected one of {', '.join(STATES)}, got {value!r}")
    return str(value)


def _error(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PublishError("expected the error as an object")
    notes = value.get("notes", [])
    if not isinstance(notes, list):
        raise PublishError("expected the error's notes as a list")
    return {"type": _text(_TEXT)(value.get("type", "")), "message": _text(_LONG_TEXT)(value.get("message", "")),
            "notes": [_text(_TEXT)(note) for note in notes[:20]],
            "traceback": _text(_LONG_TEXT, keep_end=True)(value.get("traceback", ""))}


_PHASES = ("tasks", "start_up", "init", "waiting", "working", "exit")


def _insights(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("workers"), list):
        raise PublishError("expected the insights as an object with a list of workers")
    workers = []
    for worker in value["workers"][:_MAX_WORKERS]:
        if not isinstance(worker, dict):
            raise PublishError("expected each worker's insights as an object")
        workers.append({"tasks": _count(worker.get("tasks", 0)),
                        **{phase: _seconds(worker.get(phase, 0.0)) for phase in _PHASES[1:]}})
    slowest = value.get("slowest", [])
    if not isinstance(slowest, list) or not all(isinstance(s, list) and len(s) == 2 for s in slowest):
        raise PublishError("expected the slowest tasks as a list of [seconds, argument] pairs")
    return {"workers": workers, "slowest": [[_seconds(s), _text(_TEXT)(a)] for s, a in slowest[:5]]}


_FIELDS: dict[str, Callable[[Any], Any]] = {
    "name": _text(_TEXT),
    "site": _text(_TEXT),
    "code": _text(_TEXT),
    "process": _text(_TEXT),
    "started": _seconds,  # wall-clock time (epoch seconds) the call started
    "elapsed": _seconds,  # seconds since the start, as its process measured it when it sent the record
    "done": _count,
    "total": _optional_count,
    "failed": _count,
    "state": _state,
    "error": _error,
    "insights": _insights,
}


def clean(fields: Any) -> dict[str, Any]:
    """*fields* of a call's record, checked and capped; PublishError if one is unknown or of the wrong type."""
    if not isinstance(fields, dict):
        raise PublishError("expected a call's record as an object")
    out = {}
    for name, value in fields.items():
        check = _FIELDS.get(name)
        if check is None:
            raise PublishError(f"unknown field {name!r}")
        try:
            out[name] = check(value)
        except PublishError as exc:
            raise PublishError(f"{name}: {exc}") from None
    return out


class Registry:
    """Records by call id, with when each was last heard of; one lock, held briefly by publishers and readers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._order = 0
        self._sources: dict[str, float] = {}  # connected process -> when it last posted (monotonic)

    def publish(self, call_id: str, fields: dict[str, Any], source: str | None = None) -> None:
        """Merge *fields* into the record of *call_id* (made on first sight). *source*: the connected process
        that posted it, None for this process's own calls."""
        checked = clean(fields)
        now = time.monotonic()
        with self._lock:
            record = self._records.get(call_id)
            if record is None:
                if source is not None and len(self._records) >= MAX_CALLS:
                    raise PublishError(f"the dashboard holds {MAX_CALLS} calls already")
                self._order += 1
                record = self._records[call_id] = {"id": call_id, "order": self._order, "source": source,
                                                   "state": "running", "done": 0, "total": None, "failed": 0,
                                                   "elapsed": 0.0, "error": None, "insights": None}
            record.update(checked)
            record["seen"] = now
            if record["state"] != "running":
                self._prune()

    def heard_from(self, source: str) -> None:
        with self._lock:
            self._sources[source] = time.monotonic()

    def _prune(self) -> None:
        finished = sorted((r["order"], key) for key, r in self._records.items() if r["state"] != "running")
        for _, key in finished[:max(0, len(finished) - MAX_FINISHED)]:
            del self._records[key]

    def snapshot(self) -> list[dict[str, Any]]:
        """Every record as the page shows it: running calls first, newest first, with their time so far, rate and
        ETA as of now (a running call's clock goes on between two of its updates)."""
        now = time.monotonic()
        with self._lock:
            records = [dict(r) for r in self._records.values()]
            sources = dict(self._sources)
        out = []
        for record in records:
            seen = record.pop("seen")
            source = record.pop("source")
            elapsed = record["elapsed"]
            if record["state"] == "running":
                elapsed += now - seen
                if source is not None and now - sources.get(source, seen) > SILENT_AFTER:
                    record["state"] = "silent"  # its process stopped posting: ended without a word, or hung
            record["elapsed"] = elapsed
            rate = record["done"] / elapsed if elapsed > 0 else None
            record["rate"] = rate
            total = record["total"]
            record["eta"] = ((total - record["done"]) / rate if record["state"] == "running" and rate
                             and total is not None else None)
            out.append(record)
        out.sort(key=lambda r: (r["state"] != "running", -r["order"]))
        return out
