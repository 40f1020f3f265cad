"""The report of an insights() block: per worker, per call, the slowest tasks, and advice in plain words.

Every number comes from the CallReports gathered by _insights. Each worker's share of a call's wall time is split
into phases (start-up, init, waiting, working, exit) that add up to that wall time, so the working ratio of the
whole report is its efficiency: working time over n_jobs * wall time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ._call_record import N_SLOWEST, CallReport, WorkerReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PHASES = ("start_up", "init", "waiting", "working", "exit")
GOOD_EFFICIENCY = 0.8  # below it, the report says what held the workers back (MPIRE warns below 80 % too)
MIN_ADVISED_WALL = 0.01  # seconds: a shorter call is all fixed costs, and advice about it would be noise
SMALL_CHUNK = 1e-3  # seconds: chunks shorter than this cost about as much to send as to run
TARGET_CHUNK = 0.01  # seconds of work per chunk that the chunk_size advice aims at
TINY_TASK = 5e-6  # seconds: a task this short costs less than sending it and its result (about 1-5 us)
LARGE_ARGUMENTS = 1 << 20  # bytes per task: above this, copying arguments to the workers is worth avoiding


class InsightsReport:
    """What the calls watched by ``parallelize.insights()`` (or ``f.insights()``) measured.

    It fills as the watched calls end. ``str(report)`` is a readable table, ``report.to_dict()`` the same numbers
    for JSON, ``report.plot()`` a per-worker timeline (matplotlib), and ``report.advice`` what to change when the
    workers spent their time waiting.
    """

    def __init__(self, source: Callable[[], list[CallReport]]) -> None:
        self._source = source

    @property
    def calls(self) -> list[CallReport]:
        """The watched calls, in the order they started (calls their tasks made are in each one's ``nested``)."""
        return sorted(self._source(), key=lambda call: call.started)

    @property
    def workers(self) -> list[WorkerReport]:
        """Each worker's phases summed over the calls, one row per worker of each function's pool."""
        rows: dict[tuple[str, int], WorkerReport] = {}
        for call in self.calls:
            for worker in call.workers:
                key = (worker.pool, worker.worker_id)
                seen = rows.get(key)
                rows[key] = worker if seen is None else _add(seen, worker)
        return list(rows.values())

    @property
    def efficiency(self) -> float:
        """Working time over the time the workers were there for: the sum of n_jobs * wall time of every call."""
        capacity = sum(call.n_jobs * call.wall for call in self.calls)
        return sum(call.working for call in self.calls) / capacity if capacity > 0 else 0.0

    @property
    def slowest(self) -> list[tuple[float, str, str]]:
        """The slowest tasks of every call: (seconds, function, arguments), longest first."""
        tasks = [(seconds, call.function, args) for call in self.calls for seconds, args in call.slowest]
        return sorted(tasks, reverse=True)[:N_SLOWEST]

    @property
    def advice(self) -> list[str]:
        """One sentence per cause found in each call whose workers were busy less than 80 % of the time."""
        return [f"{call.function} ({call.call_site}): {line}" for call in _every(self.calls) for line in advise(call)]

    def totals(self) -> dict[str, float]:
        """Seconds per phase, summed over the workers."""
        workers = self.workers
        return {phase: sum(w.phase(phase) for w in workers) for phase in PHASES}

    def means(self) -> dict[str, float]:
        """Seconds per phase, per worker."""
        n = len(self.workers)
        return {phase: total / n if n else 0.0 for phase, total in self.totals().items()}

    def ratios(self) -> dict[str, float]:
        """Each phase's share of all the workers' time."""
        totals = self.totals()
        everything = sum(totals.values())
        return {phase: total / everything if everything else 0.0 for phase, total in totals.items()}

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-serialisable): seconds, bytes, counts and text."""
        return {
            "calls": [_call_dict(call) for call in self.calls],
            "workers": [_worker_dict(worker) for worker in self.workers],
            "totals": self.totals(),
            "means": self.means(),
            "ratios": self.ratios(),
            "efficiency": self.efficiency,
            "slowest": [{"seconds": s, "function": f, "args": a} for s, f, a in self.slowest],
            "advice": self.advice,
        }

    def plot(self, path: str | None = None) -> Figure:
        """A per-worker timeline of the calls and each worker's time per phase, as a matplotlib Figure; saved to
        *path* (any format matplotlib writes: .png, .svg, .pdf) when given. Needs matplotlib
        (``pip install 'parallelize[plot]'``)."""
        from ._insights_plot import plot

        return plot(self, path)

    def __repr__(self) -> str:
        calls = self.calls
        return f"<InsightsReport: {len(calls)} call{'s' * (len(calls) != 1)}, efficiency {_percent(self.efficiency)}>"

    def __str__(self) -> str:
        calls = self.calls
        if not calls:
            return "parallelize insights: no parallel call was watched"
        n_tasks = sum(call.n_completed for call in calls)
        lines = [f"parallelize insights: {len(calls)} call{'s' * (len(calls) != 1)}, {n_tasks} tasks, "
                 f"{_seconds(sum(call.wall for call in calls))} of wall time, efficiency {_percent(self.efficiency)}",
                 "", "Calls"]
        lines += _table(["function", "call site", "pool", "items", "wall", "efficiency", "status"],
                        [_call_row(call, depth) for call, depth in _every_with_depth(calls)], right={3, 4, 5})
        lines += ["", "Workers"]
        workers = self.workers
        rows = [[f"{w.pool}/{w.worker_id}", str(w.n_completed), *(_seconds(w.phase(p)) for p in PHASES),
                 _bytes(w.peak_rss)] for w in workers]
        totals, means, ratios = self.totals(), self.means(), self.ratios()
        rows.append(["total", str(sum(w.n_completed for w in workers)), *(_seconds(totals[p]) for p in PHASES), ""])
        rows.append(["mean", f"{sum(w.n_completed for w in workers) / len(workers):.0f}",
                     *(_seconds(means[p]) for p in PHASES), ""])
        rows.append(["ratio", "", *(_percent(ratios[p]) for p in PHASES), ""])
        lines += _table(["worker", "tasks", "start-up", "init", "waiting", "working", "exit", "peak RSS"], rows,
                        right=set(range(1, 8)))
        if self.slowest:
            lines += ["", "Slowest tasks"]
            lines += _table(["time", "function", "arguments"],
                            [[_seconds(s), f, a] for s, f, a in self.slowest], right={0})
        advice = self.advice
        if advice:
            lines += ["", "Advice"] + [f"  - {line}" for line in advice]
        return "\n".join(lines)


def advise(call: CallReport) -> list[str]:
    """Why *call*'s workers were not working, when they worked less than 80 % of its wall time (and it took 10 ms
    or more): one sentence per cause found, each with a concrete change."""
    if call.wall < MIN_ADVISED_WALL or call.efficiency >= GOOD_EFFICIENCY:
        return []
    capacity = call.n_jobs * call.wall
    lines: list[str] = []
    starting = sum(w.start_up + w.init for w in call.workers) / capacity
    if starting >= 0.25:
        lines.append(f"starting the workers took {_percent(starting)} of the time: that is paid once per pool, so "
                     "reuse the pool (a decorated function's pool stays alive between calls unless "
                     "keep_alive=False; a WorkerPool across several maps) and give each call more tasks")
    if call.items and call.items < call.n_jobs:
        lines.append(f"only {call.items} task{'s' * (call.items != 1)} for {call.n_jobs} workers: give the call "
                     f"more tasks, or use n_jobs={call.items}")
    longest = call.slowest[0][0] if call.slowest else 0.0
    if call.n_completed > 1 and longest >= 0.5 * call.wall:
        lines.append(f"one task took {_percent(longest / call.wall)} of the time ({call.slowest[0][1]}): it bounds "
                     "the call; split it into smaller tasks")
    per_task = call.working / call.n_completed if call.n_completed else 0.0
    if call.pool.startswith("processes") and call.n_completed and call.arg_bytes / call.n_completed >= LARGE_ARGUMENTS:
        lines.append(f"arguments average {_bytes(call.arg_bytes // call.n_completed)} per task: pass the data the "
                     "tasks share through shared_objects (sent to each worker once), not with every task")
    if call.pool != "serial" and 0 < per_task < TINY_TASK and call.n_completed >= 10 * call.n_jobs:
        lines.append(f"tasks take {_seconds(per_task)} each, less than handing one to a worker costs: give each "
                     "task more work (a batch of items per call of the function)")
    per_chunk = call.working / call.n_chunks if call.n_chunks else 0.0
    if 0 < per_chunk < SMALL_CHUNK and call.n_chunks >= 2 * call.n_jobs and per_task > 0:
        size = _round(min(TARGET_CHUNK / per_task, max(1.0, call.items / (4 * call.n_jobs))))
        if size > call.n_completed / call.n_chunks:
            lines.append(f"chunks take {_seconds(per_chunk)}: sending them costs about as much as running them; "
                         f"try chunk_size={size}")
    if not lines:
        waiting = sum(w.waiting for w in call.workers) / capacity
        lines.append(f"the workers worked {_percent(call.efficiency)} of the time (starting {_percent(starting)}, "
                     f"waiting {_percent(waiting)}) and no single cause stands out: check how fast the input is "
                     "produced (the workers wait for it) and how large the results are")
    return lines


# --- helpers ------------------------------------------------------------------------------------------------------


def _every(calls: list[CallReport]) -> list[CallReport]:
    return [call for call, _ in _every_with_depth(calls)]


def _every_with_depth(calls: list[CallReport] | tuple[CallReport, ...], depth: int = 0) -> list[tuple[CallReport, int]]:
    """The calls and, after each, the calls its tasks made (depth 1, 2...)."""
    out: list[tuple[CallReport, int]] = []
    for call in calls:
        out.append((call, depth))
        out += _every_with_depth(call.nested, depth + 1)
    return out


def _add(a: WorkerReport, b: WorkerReport) -> WorkerReport:
    peaks = [p for p in (a.peak_rss, b.peak_rss) if p is not None]
    return replace(a, n_completed=a.n_completed + b.n_completed, start_up=a.start_up + b.start_up,
                   init=a.init + b.init, waiting=a.waiting + b.waiting, working=a.working + b.working,
                   exit=a.exit + b.exit, peak_rss=max(peaks) if peaks else None, spans=a.spans + b.spans)


def _worker_dict(worker: WorkerReport) -> dict[str, Any]:
    return {"pool": worker.pool, "worker_id": worker.worker_id, "n_completed": worker.n_completed,
            **{phase: worker.phase(phase) for phase in PHASES}, "peak_rss": worker.peak_rss}


def _call_dict(call: CallReport) -> dict[str, Any]:
    return {"function": call.function, "call_site": call.call_site, "pool": call.pool, "n_jobs": call.n_jobs,
            "items": call.items, "n_completed": call.n_completed, "wall": call.wall, "efficiency": call.efficiency,
            "status": call.status, "n_chunks": call.n_chunks, "arg_bytes": call.arg_bytes,
            "slowest": [{"seconds": seconds, "args": args} for seconds, args in call.slowest],
            "workers": [_worker_dict(worker) for worker in call.workers],
            "advice": advise(call), "nested": [_call_dict(nested) for nested in call.nested]}


def _call_row(call: CallReport, depth: int) -> list[str]:
    name = "  " * depth + ("└ " if depth else "") + call.function
    return [name, call.call_site, call.pool, str(call.items), _seconds(call.wall), _percent(call.efficiency),
            call.status]


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(header)] + [line(row) for row in rows]


def _round(value: float) -> int:
    """*value* rounded to two significant digits (a chunk size people would write)."""
    if value < 10:
        return max(1, round(value))
    magnitude = 10 ** (int(math.log10(value)) - 1)
    return int(round(value / magnitude) * magnitude)


def _seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.0f} us"
    if seconds > 0:
        return f"{seconds * 1e9:.0f} ns"  # a trivial task: "0 us" would read as nothing measured
    return "0"


def _bytes(size: int | None) -> str:
    if size is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.0f} %"
