"""A pool's insights for its whole life (``enable_insights=True``): MPIRE's ``get_insights()`` and
``print_insights()``.

Every chunk of such a pool is timed (RunChunk.collect); the engine feeds what the workers measured here, per worker
slot, so a worker replaced during the pool's life (lifespan, memory) adds to its slot's numbers.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

from ._messages import ChunkStats

PHASES = ("start_up", "init", "waiting", "working", "exit")
NO_STATS = "No profiling stats available. Try to run a function first with insights enabled ..."


class PoolInsights:
    def __init__(self, n_jobs: int) -> None:
        self.n_jobs = n_jobs
        self.n_completed = [0] * n_jobs
        self.seconds = {phase: [0.0] * n_jobs for phase in PHASES}
        self.slowest: list[tuple[float, str]] = []  # min-heap of the 5 longest tasks: (seconds, arguments)

    def started(self, worker_id: int, start_up_time: float, init_time: float) -> None:
        self.seconds["start_up"][worker_id] += start_up_time
        self.seconds["init"][worker_id] += init_time

    def chunk(self, worker_id: int, stats: ChunkStats) -> None:
        self.n_completed[worker_id] += stats.n_completed
        self.seconds["working"][worker_id] += stats.working_time
        self.seconds["waiting"][worker_id] += stats.waiting_time
        for entry in stats.slowest:
            if len(self.slowest) < 5:
                heapq.heappush(self.slowest, entry)
            elif entry > self.slowest[0]:
                heapq.heapreplace(self.slowest, entry)

    def exited(self, worker_id: int, exit_time: float, waiting_time: float | None) -> None:
        self.seconds["exit"][worker_id] += exit_time
        self.seconds["waiting"][worker_id] += waiting_time or 0.0

    def as_mpire_dict(self) -> dict[str, Any]:
        """MPIRE's insights dictionary, in its key order: durations as "H:MM:SS.mmm" strings, ratios as floats,
        the slowest tasks' arguments as "Arg 0: ... | Arg 1: ..."."""
        totals = {phase: sum(values) for phase, values in self.seconds.items()}
        total = sum(totals.values())
        slowest = sorted(self.slowest, reverse=True)
        out: dict[str, Any] = {"n_completed_tasks": list(self.n_completed)}
        out.update({f"{phase}_time": [clock_text(v) for v in self.seconds[phase]] for phase in PHASES})
        out.update({f"total_{phase}_time": clock_text(totals[phase]) for phase in PHASES})
        out["top_5_max_task_durations"] = [clock_text(seconds) for seconds, _ in slowest]
        out["top_5_max_task_args"] = [args for _, args in slowest]
        out["total_time"] = clock_text(total)
        for phase in PHASES:
            values = self.seconds[phase]
            mean = sum(values) / len(values)
            out[f"{phase}_ratio"] = totals[phase] / (total + 1e-8)  # (as MPIRE: no division by zero)
            out[f"{phase}_time_mean"] = clock_text(mean)
            out[f"{phase}_time_std"] = clock_text(math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)))
        return out

    def format(self) -> str:
        """print_insights()'s text, as MPIRE lays it out."""
        data = self.as_mpire_dict()
        lines = ["WorkerPool insights", "-------------------",
                 f"Total number of tasks completed: {sum(data['n_completed_tasks'])}"]
        for phase in PHASES:
            lines.append(f"Total {phase.replace('_', ' ')} time: {data[f'total_{phase}_time']}s (mean: "
                         f"{data[f'{phase}_time_mean']}, std: {data[f'{phase}_time_std']}, ratio: "
                         f"{data[f'{phase}_ratio'] * 100:.2f}%)")
        if data["working_ratio"] < 0.8:
            lines += ["", "Efficiency warning: working ratio is < 80%!"]
        lines += ["", "Stats per worker", "----------------"]
        for worker_id in range(self.n_jobs):
            parts = [f"Worker {worker_id}", f"Tasks completed: {data['n_completed_tasks'][worker_id]}"]
            parts += [f"{phase.replace('_', ' ')}: {data[f'{phase}_time'][worker_id]}s" for phase in PHASES]
            lines.append(" - ".join(parts))
        lines += ["", "Top 5 longest tasks", "-------------------"]
        for rank, (duration, args) in enumerate(zip(data["top_5_max_task_durations"], data["top_5_max_task_args"],
                                                    strict=True), start=1):
            lines.append(f"{rank}. Time: {duration} - {args}")
        return "\n".join(lines)


def clock_text(seconds: float) -> str:
    """A duration as MPIRE writes it: timedelta's text cut to milliseconds ("0:00:01.234"; "0:00:00" for a whole
    number of seconds, "1 day, 0:00:00.500" past a day)."""
    from datetime import timedelta  # (only for an insights text: start-up time otherwise)

    text = str(timedelta(seconds=seconds))
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction[:3]}" if fraction else whole
