"""Worker insights: how each worker spent its time, fed by the engine from the workers' own measurements.

Workers send cumulative WorkerStats with their results; a worker replaced during a call (lifespan) has its last
numbers folded into its slot, so totals cover every process that ran in that slot.
"""

from __future__ import annotations

import math
from typing import Any

from ._messages import WorkerStats

_EMPTY = WorkerStats(0, 0.0, 0.0, [])


class InsightsCollector:
    def __init__(self, n_jobs: int) -> None:
        self.n_jobs = n_jobs
        self.start_up_time = [0.0] * n_jobs
        self.init_time = [0.0] * n_jobs
        self.exit_time = [0.0] * n_jobs
        self._retired = [_EMPTY] * n_jobs  # folded stats of workers that ended
        self._live: dict[int, tuple[int, WorkerStats]] = {}  # backend key -> (worker_id, latest stats)

    def started(self, worker_id: int, start_up_time: float, init_time: float) -> None:
        self.start_up_time[worker_id] += start_up_time
        self.init_time[worker_id] += init_time

    def update(self, worker_id: int, key: int, stats: WorkerStats) -> None:
        self._live[key] = (worker_id, stats)

    def exited(self, worker_id: int, key: int, exit_time: float, stats: WorkerStats | None) -> None:
        self.exit_time[worker_id] += exit_time
        self._live.pop(key, None)
        if stats is not None:
            self._retired[worker_id] = _merge(self._retired[worker_id], stats)

    def per_worker(self) -> list[WorkerStats]:
        totals = list(self._retired)
        for worker_id, stats in self._live.values():
            totals[worker_id] = _merge(totals[worker_id], stats)
        return totals

    def as_dict(self) -> dict[str, Any]:
        """The MPIRE-shaped insights dictionary (times in seconds)."""
        stats = self.per_worker()
        n_completed = [s.n_completed for s in stats]
        waiting = [s.waiting_time for s in stats]
        working = [s.working_time for s in stats]
        phases = {
            "start_up": self.start_up_time,
            "init": self.init_time,
            "waiting": waiting,
            "working": working,
            "exit": self.exit_time,
        }
        total = sum(sum(values) for values in phases.values())
        slowest = sorted((entry for s in stats for entry in s.slowest), reverse=True)[:5]
        out: dict[str, Any] = {"n_completed_tasks": n_completed}
        for name, values in phases.items():
            out[f"{name}_time"] = list(values)
            out[f"total_{name}_time"] = sum(values)
            out[f"{name}_time_mean"] = _mean(values)
            out[f"{name}_time_std"] = _std(values)
            out[f"{name}_ratio"] = sum(values) / total if total else 0.0
        out["total_time"] = total
        out["top_5_max_task_durations"] = [duration for duration, _ in slowest]
        out["top_5_max_task_args"] = [args for _, args in slowest]
        return out

    def as_mpire_dict(self) -> dict[str, Any]:
        """as_dict() with durations as "H:MM:SS.mmm" strings, as MPIRE gives them (task arguments stay reprs)."""
        data = self.as_dict()
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key == "top_5_max_task_args" or key.endswith("_ratio") or key == "n_completed_tasks":
                out[key] = value
            elif isinstance(value, list):
                out[key] = [_clock_text(v) for v in value]
            else:
                out[key] = _clock_text(value)
        return out

    def format(self) -> str:
        """A human-readable summary of as_dict()."""
        data = self.as_dict()
        lines = ["WorkerPool insights", "-------------------"]
        lines.append(f"Total number of tasks completed: {sum(data['n_completed_tasks'])}")
        lines.append("")
        lines.append(f"{'phase':<10} {'total':>12} {'mean':>12} {'std':>12} {'ratio':>8}")
        for name in ("start_up", "init", "waiting", "working", "exit"):
            lines.append(
                f"{name:<10} {_fmt(data[f'total_{name}_time']):>12} {_fmt(data[f'{name}_time_mean']):>12} "
                f"{_fmt(data[f'{name}_time_std']):>12} {data[f'{name}_ratio'] * 100:>7.2f}%"
            )
        lines.append("")
        for worker_id in range(self.n_jobs):
            lines.append(
                f"Worker {worker_id}: tasks {data['n_completed_tasks'][worker_id]}, "
                f"start-up {_fmt(data['start_up_time'][worker_id])}, init {_fmt(data['init_time'][worker_id])}, "
                f"waiting {_fmt(data['waiting_time'][worker_id])}, working {_fmt(data['working_time'][worker_id])}, "
                f"exit {_fmt(data['exit_time'][worker_id])}"
            )
        if data["top_5_max_task_durations"]:
            lines.append("")
            lines.append("Slowest tasks:")
            for duration, args in zip(data["top_5_max_task_durations"], data["top_5_max_task_args"], strict=True):
                lines.append(f"  {_fmt(duration):>12}  {args}")
        return "\n".join(lines)


def _clock_text(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours}:{minutes:02d}:{secs:02d}.{millis:03d}"


def _merge(a: WorkerStats, b: WorkerStats) -> WorkerStats:
    slowest = sorted(a.slowest + b.slowest, reverse=True)[:5]
    return WorkerStats(a.n_completed + b.n_completed, a.waiting_time + b.waiting_time,
                       a.working_time + b.working_time, slowest)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _std(values: list[float]) -> float:
    if not values:
        return 0.0
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f}ms"
    return f"{seconds * 1e6:.1f}us"
