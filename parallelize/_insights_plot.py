"""``InsightsReport.plot()``: each worker's timeline across the watched calls, and its time per phase.

matplotlib is an optional extra (``pip install 'parallelize[plot]'``). The figure is built without pyplot, so no
GUI backend is chosen and it works in any thread; a notebook shows the returned Figure as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._insights_report import PHASES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ._insights_report import InsightsReport

COLOURS = {"start_up": "#8c8c8c", "init": "#f2a541", "waiting": "#dddddd", "working": "#3f7fbf", "exit": "#c0504d"}
LABELS = {"start_up": "start-up", "init": "init", "waiting": "waiting", "working": "working", "exit": "exit"}


def plot(report: InsightsReport, path: str | None) -> Figure:
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ImportError("InsightsReport.plot() needs matplotlib, which is not installed: "
                          "pip install 'parallelize[plot]'") from exc
    calls = report.calls
    workers = report.workers
    if not workers:
        raise ValueError("this report has no calls to plot: make the parallel calls inside the insights() block")
    rows = {(w.pool, w.worker_id): row for row, w in enumerate(workers)}
    origin = min(call.started for call in calls)
    figure = Figure(figsize=(9, 1.4 + 0.32 * len(workers)), layout="constrained")
    timeline, totals = figure.subplots(1, 2, sharey=True, width_ratios=(4, 1))

    for call in calls:  # each call's window: its workers wait, except where a phase is drawn over it
        start = call.started - origin
        timeline.axvline(start, color="#b0b0b0", linewidth=0.6, zorder=0)
        timeline.text(start, -0.75, f" {call.function}", fontsize=8, va="center", clip_on=True)
        for worker in call.workers:
            row = rows[(worker.pool, worker.worker_id)]
            timeline.broken_barh([(start, call.wall)], (row - 0.35, 0.7), facecolors=COLOURS["waiting"],
                                 linewidth=0)
    for worker in workers:
        row = rows[(worker.pool, worker.worker_id)]
        for phase in ("start_up", "init", "working", "exit"):
            bars = [(start - origin, end - start) for kind, start, end in worker.spans if kind == phase]
            if bars:
                timeline.broken_barh(bars, (row - 0.35, 0.7), facecolors=COLOURS[phase], linewidth=0)
    timeline.set_yticks(range(len(workers)), [f"{w.pool}/{w.worker_id}" for w in workers], fontsize=8)
    timeline.set_ylim(len(workers) - 0.4, -1.2)
    timeline.set_xlabel("seconds since the first watched call")
    timeline.set_title(f"Timeline (efficiency {report.efficiency * 100:.0f} %)", fontsize=10)

    left = [0.0] * len(workers)
    for phase in PHASES:
        widths = [w.phase(phase) for w in workers]
        totals.barh(range(len(workers)), widths, left=left, height=0.7, color=COLOURS[phase])
        left = [a + b for a, b in zip(left, widths, strict=True)]
    totals.set_xlim(0, max(left) * 1.05 or 1.0)
    totals.set_xlabel("seconds per phase")
    totals.set_title("Time per phase", fontsize=10)
    figure.legend(handles=[Patch(color=COLOURS[p], label=LABELS[p]) for p in PHASES], loc="outside lower center",
                  ncols=len(PHASES), fontsize=8, frameon=False)
    if path is not None:
        figure.savefig(path, dpi=100)
    return figure
