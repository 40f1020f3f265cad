"""Rounds, statistics and the report.

Per workload: every peer runs once per round, round-robin, the order rotated by one each round; the warm-up
rounds are discarded. A row reports the median, min..max, and ratios taken per round then reduced by the median:
to mpire, to the in-run floor and to the ideal (serial / n_jobs, where that makes sense). Ratios are of time (or of
memory for W7): below 1 means less than the reference. A row is "noisy" when (max - min) / median > 0.25.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from . import BLAS_VARIABLES
from .peers import FLOOR, MP_POOL, MPIRE, RATIO_TO, SERIAL, Peer
from .workloads import Sizes, Workload, WrongResult

NOISY = 0.25


@dataclass
class Raw:
    """What running one workload produced (also what a child process sends back as JSON)."""

    workload: str
    values: dict[str, list[float]] = field(default_factory=dict)  # peer -> value per measured round
    notes: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_workload(cls: type[Workload], peers: list[Peer], sizes: Sizes, n_jobs: int, in_child: bool) -> Raw:
    workload = cls(sizes, n_jobs)
    if workload.env is not None and not in_child:
        return run_in_child(workload, peers, sizes, n_jobs)
    raw = Raw(cls.id)
    active: list[Peer] = []
    for peer in peers:
        reason = workload.skip(peer)
        if peer.only_in is not None and cls.id not in peer.only_in:
            reason = f"runs in {', '.join(peer.only_in)} only"
        if reason:
            raw.skipped[peer.name] = reason
        else:
            active.append(peer)
            raw.values[peer.name] = []
    log(f"[{cls.id}] setup ({', '.join(p.name for p in active)})")
    workload.setup()
    try:
        for peer in list(active):
            try:
                workload.begin(peer)
            except Exception as exc:
                fail(raw, active, peer, exc)
        total = sizes.warmup + workload.rounds()
        for round_index in range(total):
            start = time.perf_counter()
            shift = round_index % len(active) if active else 0
            for peer in active[shift:] + active[:shift]:
                if peer not in active:
                    continue  # failed earlier in this round
                try:
                    value = workload.measure(peer)
                except Exception as exc:
                    fail(raw, active, peer, exc)
                    with contextlib.suppress(Exception):
                        workload.end(peer)
                    continue
                if round_index >= sizes.warmup:
                    raw.values[peer.name].append(value)
            kind = "warm-up" if round_index < sizes.warmup else "round"
            log(f"[{cls.id}] {kind} {round_index + 1}/{total} done in {time.perf_counter() - start:.1f}s")
        for peer in active:
            try:
                workload.end(peer)
            except Exception as exc:
                fail(raw, active, peer, exc)
    finally:
        workload.teardown()
        reap_children()
    raw.notes.update(workload.notes)
    return raw


def fail(raw: Raw, active: list[Peer], peer: Peer, exc: BaseException) -> None:
    kind = "WRONG RESULT" if isinstance(exc, WrongResult) else f"{type(exc).__name__}"
    raw.errors[peer.name] = f"{kind}: {exc}"
    log(f"[{raw.workload}] FAILED {peer.name}: {kind}: {exc}")
    if peer in active:
        active.remove(peer)


def run_in_child(workload: Workload, peers: list[Peer], sizes: Sizes, n_jobs: int) -> Raw:
    """Run *workload* in ``python -m benchmarks`` with its environment (glibc malloc settings are read at start)."""
    assert workload.env is not None
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "raw.json")
        command = [sys.executable, "-m", "benchmarks", "--only", workload.id, "--sizes", sizes.name,
                   "--n-jobs", str(n_jobs), "--peers", ",".join(p.name for p in peers), "--child-raw", out]
        log(f"[{workload.id}] in a child process with {' '.join(f'{k}={v}' for k, v in workload.env.items())}")
        done = subprocess.run(command, env={**os.environ, **workload.env}, cwd=os.getcwd(), timeout=600,
                              check=False)
        if done.returncode != 0 and not os.path.exists(out):
            return Raw(workload.id, errors={"(child)": f"child exited with {done.returncode}"})
        with open(out) as file:
            data = json.load(file)
    return Raw(**data[0])


def reap_children() -> None:
    """Kill what a failed peer may have left behind (our own descendants only; trackers end with us)."""
    import psutil

    deadline = time.monotonic() + 3.0
    while True:
        leftovers = [child for child in psutil.Process().children(recursive=True)
                     if "resource_tracker" not in _cmdline(child) and "semaphore_tracker" not in _cmdline(child)
                     and "loky" not in _cmdline(child)]
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for child in leftovers:
        log(f"warning: killing leftover child {child.pid} ({_cmdline(child)[:80]})")
        with contextlib.suppress(psutil.Error):
            child.send_signal(signal.SIGKILL)
            child.wait(2)


def _cmdline(process: Any) -> str:
    try:
        return " ".join(process.cmdline())
    except Exception:
        return ""


# --- statistics --------------------------------------------------------------------------------------------------


def per_round(values: list[float], reference: list[float] | None) -> float | None:
    if not reference or not values:
        return None
    ratios = [v / r for v, r in zip(values, reference, strict=False) if r > 0]
    return statistics.median(ratios) if ratios else None


def rows_of(workload: Workload, raw: Raw, peer_order: list[str]) -> list[dict[str, Any]]:
    serial = raw.values.get(SERIAL) or None
    serial_median = statistics.median(serial) if serial else None
    mpire, floor = raw.values.get(MPIRE) or None, raw.values.get(FLOOR) or None
    pool = raw.values.get(MP_POOL) or None
    ideals = [workload.ideal(s) for s in serial] if serial else None
    rows: list[dict[str, Any]] = []
    for name in peer_order:
        row: dict[str, Any] = {"workload": raw.workload, "peer": name, "unit": workload.value_unit,
                               "note": raw.notes.get(name, "")}
        if name in raw.errors:
            row["error"] = raw.errors[name]
        elif name in raw.skipped:
            row["skipped"] = raw.skipped[name]
        values = raw.values.get(name)
        if values and "error" not in row:
            median = statistics.median(values)
            spread = (max(values) - min(values)) / median if median else 0.0
            ideal_ratio = None
            if ideals and all(i is not None for i in ideals):
                ideal_ratio = per_round(values, [i for i in ideals if i is not None])
            row.update(values=values, median=median, min=min(values), max=max(values), spread=spread,
                       noisy=spread > NOISY, metric=workload.metric(median, serial_median),
                       vs_mpire=per_round(values, mpire), vs_floor=per_round(values, floor), vs_ideal=ideal_ratio,
                       vs_pool=per_round(values, pool))
            base = RATIO_TO.get(name)
            ratio = per_round(values, raw.values.get(base) or None) if base is not None else None
            if ratio is not None:
                row["vs_base"] = ratio
                row["note"] = "; ".join(filter(None, [row["note"], f"{ratio:.2g}x the time of {base} (per-round "
                                                                   "ratio)"]))
        if "values" in row or "error" in row or "skipped" in row:
            rows.append(row)
    return rows


# --- report ------------------------------------------------------------------------------------------------------


def machine(n_jobs: int, sizes: Sizes, load_before: tuple[float, ...]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "n_jobs": n_jobs,
        "load_before": [round(x, 2) for x in load_before],
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "sizes": sizes.name,
        "rounds": {"warmup": sizes.warmup, "fast": sizes.rounds, "slow": sizes.slow_rounds},
        "blas_env": {name: os.environ.get(name) for name in BLAS_VARIABLES},
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")} or "glibc defaults",
        "versions": {},
    }
    for module in ("parallelize", "mpire", "joblib", "numpy", "psutil"):
        try:
            from importlib.metadata import version

            info["versions"][module] = version(module)
        except Exception:
            info["versions"][module] = "not installed"
    try:
        import numpy

        config = numpy.show_config(mode="dicts")  # type: ignore[func-returns-value]
        blas = config["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:
        info["blas"] = "unknown"
    try:
        import threadpoolctl

        info["blas_threads"] = [f"{p['internal_api']}: {p['num_threads']}" for p in threadpoolctl.threadpool_info()]
    except ImportError:
        info["blas_threads"] = "threadpoolctl not installed; pinned through the variables above"
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def format_value(value: float, unit: str) -> str:
    if unit == "MiB":
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 0.01:
        return f"{value * 1e3:.0f} ms"
    return f"{value * 1e3:.2f} ms"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_against_pool(sections: list[tuple[Workload, list[dict[str, Any]]]]) -> list[str]:
    """One line per workload: parallelize's per-round time ratio to multiprocessing.Pool (< 1: faster)."""
    ours = ("parallelize @parallel", "parallelize WorkerPool")
    lines = ["", "### Summary: parallelize against multiprocessing.Pool (xmp.Pool, < 1 is better)", "",
             "| Workload | " + " | ".join(ours) + " |", "|---|" + "---:|" * len(ours)]
    any_row = False
    for workload, rows in sections:
        by_peer = {row["peer"]: row for row in rows}
        ratios = [by_peer.get(name, {}).get("vs_pool") for name in ours]
        if any(r is not None for r in ratios):
            any_row = True
            lines.append(f"| {workload.id} | " + " | ".join(_ratio(r) for r in ratios) + " |")
    return lines if any_row else []


def markdown(meta: dict[str, Any], sections: list[tuple[Workload, list[dict[str, Any]]]], notes: list[str]) -> str:
    lines = ["# parallelize benchmarks", ""]
    lines.append(f"- Date: {meta['date']}; sizes: {meta['sizes']} (warm-up rounds {meta['rounds']['warmup']}, "
                 f"measured rounds {meta['rounds']['fast']}, cold/heavy workloads {meta['rounds']['slow']})")
    lines.append(f"- CPU: {meta['cpu_model']}; {meta['cpu_count']} CPUs ({meta['cpus_usable']} usable); "
                 f"n_jobs={meta['n_jobs']}; load average before {meta['load_before']}, after {meta['load_after']}")
    lines.append(f"- {meta['python']} on {meta['platform']}; "
                 + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    blas_env = ", ".join(f"{k}={v}" for k, v in meta["blas_env"].items() if v is not None)
    lines.append(f"- BLAS: {meta['blas']}; {blas_env}; {meta['blas_threads']}")
    lines.append(f"- malloc: {meta['malloc_env']} (W5 runs in child processes with MALLOC_MMAP_THRESHOLD_ fixed, "
                 "see its rows)")
    lines.append("- Ratios are per-round ratios of time (W7: of memory), reduced by the median: < 1 means less than "
                 "the reference. xideal: vs serial/n_jobs (W3b: init + work/n_jobs). noisy: (max-min)/median > 0.25.")
    lines += summary_against_pool(sections)
    for workload, rows in sections:
        lines += ["", f"### {workload.id}: {workload.title}", ""]
        lines.append(f"| Peer | median | min..max | {workload.unit} | xmp.Pool | xmpire | xfloor | xideal | noisy "
                     "| note |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|:-:|---|")
        for row in rows:
            if "error" in row:
                lines.append(f"| {row['peer']} | **FAILED** | | | | | | | | {row['error'][:200]} |")
            elif "skipped" in row:
                lines.append(f"| {row['peer']} | skipped | | | | | | | | {row['skipped']} |")
            else:
                unit = row["unit"]
                lines.append(
                    f"| {row['peer']} | {format_value(row['median'], unit)} | {format_value(row['min'], unit)}.."
                    f"{format_value(row['max'], unit)} | {row['metric']} | {_ratio(row['vs_pool'])} | "
                    f"{_ratio(row['vs_mpire'])} | "
                    f"{_ratio(row['vs_floor'])} | {_ratio(row['vs_ideal'])} | {'noisy' if row['noisy'] else ''} | "
                    f"{row['note']} |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
