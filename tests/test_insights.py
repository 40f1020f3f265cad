"""Insights as context managers: ``parallelize.insights()`` and ``f.insights()``, their report (numbers, text,
JSON, plot), the advice it gives, what each block sees (this thread's calls and the calls their tasks make, not
another thread's), and the task timing done in the workers.

Nothing here asserts a speed: the overhead is measured by the benchmark suite (``python -m benchmarks --only W1``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import parallelize
from parallelize import InsightsReport, WorkerPool, parallel
from parallelize._call_record import CallReport, WorkerReport
from parallelize._insights_report import advise
from parallelize._messages import CALL_APPLY, CALL_MPIRE, CALL_UNPACK, RunChunk
from parallelize._task_timer import TaskTimes, describe_args, estimate_bytes

HERE = Path(__file__).name


@parallel(n_jobs=2, start_method="fork")
def double(x: int) -> int:
    return 2 * x


@parallel(n_jobs=2, start_method="fork")
def triple(x: int) -> int:
    return 3 * x


@parallel(n_jobs=2, start_method="fork")
def sums_of_doubles(x: int) -> int:
    """Calls another decorated function from its task: in a worker, that call runs serially, in the worker."""
    return sum(double([x, x + 1]))


@parallel(n_jobs=2, start_method="threading")
def threaded_sums(x: int) -> int:
    return sum(double([x]))


@parallel(n_jobs=2, start_method="fork")
def naps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@parallel(n_jobs=2, start_method="fork")
def fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


@parallel(n_jobs=1, start_method="fork", nested=True)
def double_on_a_pool_of_its_own(x: int) -> int:
    return 2 * x


@parallel(n_jobs=1, start_method="threading")
def sums_on_nested_pools(x: int) -> int:
    """From a worker thread, a call with nested=True starts a process pool of its own."""
    return sum(double_on_a_pool_of_its_own([x, x]))


@parallel(n_jobs=1, start_method="fork", enable_insights=True)
def logged(x: int) -> int:
    return x


@pytest.fixture(autouse=True)
def _close_pools() -> Any:
    yield
    for func in (double, triple, sums_of_doubles, threaded_sums, naps, fails_on_three, sums_on_nested_pools,
                 double_on_a_pool_of_its_own, logged):
        func.close()


def _line_of(marker: str) -> int:
    """The line of this file that holds *marker* (a call site the report must name)."""
    for number, line in enumerate(Path(__file__).read_text().splitlines(), start=1):
        if marker in line and "_line_of" not in line:
            return number
    raise AssertionError(marker)


# --- the context managers ---------------------------------------------------------------------------------------


def test_a_block_reports_each_call_with_its_numbers() -> None:
    with parallelize.insights() as report:
        assert double(range(40)) == [2 * x for x in range(40)]  # call: double 40
    assert isinstance(report, InsightsReport)
    (call,) = report.calls
    assert call.function == "double"
    assert call.call_site.endswith(f"{HERE}:{_line_of('# call: double 40')}")
    assert call.pool == "processes (fork)" and call.n_jobs == 2 and call.status == "done"
    assert call.items == 40 and call.n_completed == 40
    assert len(call.workers) == 2 and sum(w.n_completed for w in call.workers) == 40
    assert 0 < call.efficiency <= 1
    for worker in call.workers:  # the phases split the call's wall time
        phases = worker.start_up + worker.init + worker.waiting + worker.working + worker.exit
        assert phases == pytest.approx(call.wall, rel=1e-6)
        assert worker.peak_rss is not None and worker.peak_rss > 1 << 20
    assert 1 <= len(call.slowest) <= 5
    assert all(re.fullmatch(r"Arg 0: \d+( \(\+\d+ more tasks timed together\))?", args) for _, args in call.slowest)


def test_calls_outside_the_block_are_not_reported() -> None:
    double([1])
    with parallelize.insights() as report:
        triple([1, 2])
    double([3])
    assert [call.function for call in report.calls] == ["triple"]


def test_f_insights_reports_only_that_function() -> None:
    with double.insights() as report:
        double([1, 2])
        triple([1, 2])
        double([3])
    assert [call.function for call in report.calls] == ["double", "double"]


def test_blocks_inside_blocks_each_get_the_calls_made_in_them() -> None:
    with parallelize.insights() as outer:
        double([1])
        with parallelize.insights() as inner:
            triple([1])
    assert [c.function for c in outer.calls] == ["double", "triple"]
    assert [c.function for c in inner.calls] == ["triple"]


def test_one_block_cannot_be_entered_twice() -> None:
    block = parallelize.insights()
    with block, pytest.raises(RuntimeError, match="active already"), block:
        pass


def test_another_thread_s_calls_are_not_in_this_thread_s_report() -> None:
    """Both threads use the same pool at the same time; only the block's own call is watched."""
    inside, other_done = threading.Event(), threading.Event()
    other_result: list[Any] = []

    def other() -> None:
        assert inside.wait(30)
        other_result.append(double(range(100)))
        other_done.set()

    thread = threading.Thread(target=other)
    thread.start()
    try:
        with parallelize.insights() as report:
            inside.set()
            double(range(7))
            assert other_done.wait(30)
    finally:
        thread.join(30)
    assert other_result == [[2 * x for x in range(100)]]
    assert [(c.function, c.items) for c in report.calls] == [("double", 7)]


def test_calls_made_by_the_tasks_are_reported_as_nested() -> None:
    with parallelize.insights() as report:
        assert sums_of_doubles([1, 10]) == [2 + 4, 20 + 22]
    (call,) = report.calls
    assert call.function == "sums_of_doubles"
    assert [(n.function, n.pool, n.items) for n in call.nested] == [("double", "serial", 2)] * 2
    assert all(n.call_site.endswith(f"{HERE}:{_line_of('return sum(double([x, x + 1]))')}") for n in call.nested)
    assert "└ double" in str(report)
    assert report.to_dict()["calls"][0]["nested"][0]["function"] == "double"


def test_calls_made_by_tasks_in_worker_threads_are_nested_too() -> None:
    with parallelize.insights() as report:
        assert threaded_sums([1, 2, 3]) == [2, 4, 6]
    (call,) = report.calls
    assert call.pool == "threads"
    assert sorted(n.items for n in call.nested) == [1, 1, 1]
    assert all(w.peak_rss is None for w in call.workers)  # (threads share the process)


def test_a_nested_call_on_a_pool_of_its_own_is_reported_with_its_workers() -> None:
    with parallelize.insights() as report:
        assert sums_on_nested_pools([3]) == [12]
    (nested,) = report.calls[0].nested
    assert (nested.function, nested.pool, nested.n_completed) == ("double_on_a_pool_of_its_own",
                                                                  "processes (fork)", 2)
    assert nested.workers[0].peak_rss is not None


def test_enable_insights_logs_each_call_s_report_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG", logger="parallelize"):
        logged([1, 2])
    (message,) = [r.getMessage() for r in caplog.records if "insights of a call" in r.getMessage()]
    assert message.startswith("insights of a call of logged:\nparallelize insights: 1 call, 2 tasks")


def test_f_insights_includes_the_calls_its_tasks_make() -> None:
    with sums_of_doubles.insights() as report:
        sums_of_doubles([1])
    assert [n.function for n in report.calls[0].nested] == ["double"]


def test_a_call_in_serial_mode_is_reported_with_its_nested_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_DISABLE", "1")
    with parallelize.insights() as report:
        assert sums_of_doubles([1, 2]) == [6, 10]
    (call,) = report.calls
    assert (call.pool, call.n_jobs, call.n_completed) == ("serial", 1, 2)
    assert [n.function for n in call.nested] == ["double", "double"]  # not top-level calls of the block


def test_worker_pool_imap_submit_and_async_calls_are_reported() -> None:
    async def mapped() -> list[int]:
        return await triple.amap([1, 2])

    with parallelize.insights() as report:
        with WorkerPool(2, start_method="fork") as pool:
            assert pool.map(sorted, [([3, 1],)]) == [[1, 3]]
            assert pool.apply(sorted, ([2, 1],)) == [1, 2]
        assert list(double.imap([1, 2])) == [2, 4]
        assert double.submit(5).result(timeout=30) == 10
        assert asyncio.run(mapped()) == [3, 6]
    assert sorted(c.function for c in report.calls) == ["double", "double", "sorted", "sorted", "triple"]


def test_an_asyncio_task_s_block_sees_only_its_own_calls() -> None:
    async def watched(ready: asyncio.Event, done: asyncio.Event) -> InsightsReport:
        with parallelize.insights() as report:
            ready.set()
            await double.amap([1, 2])
            await done.wait()
        return report

    async def unwatched(ready: asyncio.Event, done: asyncio.Event) -> None:
        await ready.wait()
        await triple.amap([1, 2, 3])
        done.set()

    async def main() -> InsightsReport:
        ready, done = asyncio.Event(), asyncio.Event()
        report, _ = await asyncio.gather(watched(ready, done), unwatched(ready, done))
        return report

    assert [c.function for c in asyncio.run(main()).calls] == ["double"]


def test_a_call_read_after_the_block_is_added_when_it_ends() -> None:
    with parallelize.insights() as report:
        lazy = double.imap(range(5))
    assert list(lazy) == [0, 2, 4, 6, 8]
    assert [c.items for c in report.calls] == [5]


def test_a_failed_call_is_reported_with_its_error() -> None:
    with parallelize.insights() as report, pytest.raises(ValueError, match="three"):
        fails_on_three(range(6), chunk_size=1)
    assert report.calls[0].status == "failed (ValueError)"


def test_a_call_nobody_watches_is_not_timed() -> None:
    from parallelize._calls import map_job
    from parallelize._serial import SerialWorker
    from parallelize._settings import WorkerSettings

    runner = SerialWorker(WorkerSettings(n_jobs=1, start_method="fork"))
    job = map_job(runner, abs, [1, 2], n_jobs=1, ordered=True)
    chunk = job.take()
    assert (job.collect, job.record) == (False, None)
    assert chunk is not None and not chunk.collect
    with parallelize.insights():
        watched = map_job(runner, abs, [1, 2], n_jobs=1, ordered=True)
    chunk = watched.take()
    assert watched.collect and watched.record is not None and chunk is not None and chunk.collect


# --- the report -------------------------------------------------------------------------------------------------


def test_the_report_as_text_json_and_repr() -> None:
    with parallelize.insights() as report:
        double(range(20))
        triple(range(10))
    text = str(report)
    assert text.startswith("parallelize insights: 2 calls, 30 tasks")
    for section in ("Calls", "Workers", "Slowest tasks"):
        assert f"\n{section}\n" in text
    assert re.search(r"^  double/0 +\d+ ", text, re.MULTILINE) and re.search(r"^  triple/1 ", text, re.MULTILINE)
    assert re.search(r"^  ratio .*%", text, re.MULTILINE)
    data = json.loads(json.dumps(report.to_dict()))
    assert [c["function"] for c in data["calls"]] == ["double", "triple"]
    assert {w["pool"] for w in data["workers"]} == {"double", "triple"}
    assert set(data["totals"]) == set(data["means"]) == set(data["ratios"]) == {
        "start_up", "init", "waiting", "working", "exit"}
    assert sum(data["ratios"].values()) == pytest.approx(1.0)
    assert data["ratios"]["working"] == pytest.approx(data["efficiency"], rel=1e-6)
    assert sum(w["n_completed"] for w in data["workers"]) == 30
    assert repr(report) == f"<InsightsReport: 2 calls, efficiency {report.efficiency * 100:.0f} %>"


def test_worker_rows_add_up_the_calls_on_the_same_pool() -> None:
    with parallelize.insights() as report:
        double(range(10))
        double(range(6))
    rows = report.workers
    assert [(w.pool, w.worker_id) for w in rows] == [("double", 0), ("double", 1)]
    assert sum(w.n_completed for w in rows) == 16
    assert sum(w.working for w in rows) == pytest.approx(sum(c.working for c in report.calls))


def test_an_empty_report_says_so() -> None:
    with parallelize.insights() as report:
        pass
    assert str(report) == "parallelize insights: no parallel call was watched"
    assert report.to_dict()["calls"] == [] and report.efficiency == 0.0


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with parallelize.insights() as report:
        naps([0.01, 0.02, 0.0, 0.01])
        double(range(8))
    figure = report.plot(str(tmp_path / "insights.png"))
    assert (tmp_path / "insights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(figure.axes) == 2


def test_plot_without_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    with parallelize.insights() as report:
        double([1])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # (an import of it now raises ImportError)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'parallelize[plot]'")):
        report.plot()


def test_plot_of_an_empty_report_says_what_is_missing() -> None:
    pytest.importorskip("matplotlib")
    with parallelize.insights() as report:
        pass
    with pytest.raises(ValueError, match="no calls to plot"):
        report.plot()


# --- advice -------------------------------------------------------------------------------------------------------


def _call(*, wall: float = 1.0, n_jobs: int = 2, items: int = 1000, working: float = 0.5, start_up: float = 0.0,
          n_chunks: int = 8, slowest: tuple[tuple[float, str], ...] = ((0.01, "Arg 0: 1"),), arg_bytes: int = 0,
          pool: str = "processes (fork)") -> CallReport:
    """A call whose workers each worked *working* seconds of *wall* (and started up for *start_up*)."""
    workers = tuple(WorkerReport("f", i, items // n_jobs, start_up, 0.0, wall - working - start_up, working, 0.0,
                                 1 << 24) for i in range(n_jobs))
    return CallReport("f", "x.py:1", pool, n_jobs, items, 0.0, wall, "done", workers, slowest, n_chunks, arg_bytes)


def test_no_advice_when_the_workers_were_busy() -> None:
    assert advise(_call(working=0.9)) == []


def test_no_advice_about_a_call_too_short_to_matter() -> None:
    assert advise(_call(wall=0.005, working=0.001)) == []


def test_advice_small_chunks_names_a_chunk_size() -> None:
    # 4000 chunks of 5 tasks taking 0.2 ms each: 40 us per task, so 10 ms of work is 250 tasks.
    call = _call(items=20_000, working=0.4, n_chunks=4000)
    assert advise(call) == ["chunks take 200 us: sending them costs about as much as running them; "
                            "try chunk_size=250"]


def test_advice_tiny_tasks() -> None:
    (line,) = advise(_call(items=1_000_000, working=0.3, n_chunks=16))
    assert line.startswith("tasks take 600 ns each, less than handing one to a worker costs: give each task more "
                           "work")


def test_advice_large_arguments_names_shared_objects() -> None:
    (line,) = advise(_call(items=10, working=0.2, n_chunks=10, arg_bytes=10 * 40_000_000))
    assert line.startswith("arguments average 40.0 MB per task: pass the data the tasks share through "
                           "shared_objects")
    assert advise(_call(items=10, working=0.2, n_chunks=10, arg_bytes=10 * 40_000_000, pool="threads")) != [line]


def test_advice_one_task_bounds_the_call() -> None:
    (line,) = advise(_call(working=0.45, slowest=((0.8, "Arg 0: 7"),), n_chunks=8))
    assert line == "one task took 80 % of the time (Arg 0: 7): it bounds the call; split it into smaller tasks"


def test_advice_start_up() -> None:
    (line,) = advise(_call(working=0.3, start_up=0.5))
    assert line.startswith("starting the workers took 50 % of the time: that is paid once per pool")


def test_advice_fewer_tasks_than_workers() -> None:
    (line,) = advise(_call(items=3, n_jobs=8, working=0.2, n_chunks=3, slowest=((0.2, "Arg 0: 1"),)))
    assert line == "only 3 tasks for 8 workers: give the call more tasks, or use n_jobs=3"


def test_advice_when_no_single_cause_stands_out() -> None:
    (line,) = advise(_call(working=0.6))
    assert line.startswith("the workers worked 60 % of the time (starting 0 %, waiting 40 %) and no single cause "
                           "stands out")


def test_advice_reaches_the_report_for_a_call_bounded_by_one_task() -> None:
    naps([0.0, 0.0])  # the pool is up: the call below is all work and waiting
    with parallelize.insights() as report:
        naps([1.0, 0.0, 0.0, 0.0], chunk_size=1)
    assert any(re.fullmatch(r"naps \(.*\): one task took \d+ % of the time \(Arg 0: 1\.0\): it bounds the call; "
                            r"split it into smaller tasks", line) for line in report.advice), report.advice
    assert "\nAdvice\n  - naps (" in str(report)


def test_a_long_call_keeps_a_bounded_timeline_of_the_same_shape() -> None:
    from parallelize._call_record import MAX_SPANS, _add_span

    spans: list[tuple[str, float, float]] = []
    for i in range(20_000):  # chunks of 1 ms with 1 us between them, and a 1 s pause in the middle
        start = i * 0.001001 + (1.0 if i >= 10_000 else 0.0)
        _add_span(spans, "working", start, start + 0.001)
    assert len(spans) <= MAX_SPANS
    assert spans[0][1] == 0.0 and spans[-1][2] == pytest.approx(19_999 * 0.001001 + 1.001)
    assert any(b[1] - a[2] > 0.99 for a, b in itertools.pairwise(spans))  # the pause is still there


# --- timing in the workers ----------------------------------------------------------------------------------------


_job_ids = itertools.count(1_000_000)


def _chunk(items: list[Any]) -> RunChunk:
    """A chunk of a call of its own (a worker sends the slowest tasks of each call it has not sent yet)."""
    return RunChunk(next(_job_ids), 0, 0, CALL_UNPACK, items, 0, None, False, False, 1, True)


def test_task_times_times_fast_tasks_in_groups_and_says_so() -> None:
    values: list[Any] = []
    times = TaskTimes()
    items = list(range(20_000))
    assert times.run_mapped(map(abs, items), values) is None and values == items
    assert times.n_completed == 20_000 and times.working_time > 0
    stats = times.stats(_chunk(items), 0.0, [], in_process=True)
    assert len(stats.slowest) == 5 and stats.peak_rss > 0 and stats.started <= stats.ended
    assert any("more tasks timed together" in args for _, args in stats.slowest)


def test_task_times_per_task_names_single_tasks() -> None:
    values: list[Any] = []
    times = TaskTimes(per_task=True)
    times.run_mapped(map(abs, range(1000)), values)
    stats = times.stats(_chunk(list(range(1000))), 0.0, [], in_process=False)
    assert all(re.fullmatch(r"Arg 0: \d+", args) for _, args in stats.slowest) and stats.peak_rss == 0


def test_task_times_keeps_the_results_before_a_failure() -> None:
    def fail_at_50(x: int) -> int:
        if x == 50:
            raise KeyError(x)
        return x

    values: list[Any] = []
    times = TaskTimes()
    error = times.run_mapped(map(fail_at_50, range(100)), values)
    assert isinstance(error, KeyError) and values == list(range(50)) and times.n_completed == 50


def test_a_worker_sends_only_the_tasks_that_can_still_be_among_the_call_s_slowest() -> None:
    chunk = _chunk([1, 2, 3, 4, 5, 6])
    first = TaskTimes()
    for position, seconds in enumerate([0.5, 0.4, 0.3, 0.2, 0.1, 0.6]):
        first.note(seconds, position)
    assert [s for s, _ in first.stats(chunk, 0.0, [], in_process=False).slowest] == [0.6, 0.5, 0.4, 0.3, 0.2]
    second = TaskTimes()
    for position, seconds in enumerate([0.15, 0.35, 0.7]):
        second.note(seconds, position)
    assert second.stats(chunk, 0.0, [], in_process=False).slowest == [(0.7, "Arg 0: 3"), (0.35, "Arg 0: 2")]


def test_describe_args_follows_the_call_mode() -> None:
    assert describe_args((1, "a"), CALL_UNPACK) == "Arg 0: 1 | Arg 1: 'a'"
    assert describe_args([1, 2], CALL_UNPACK) == "Arg 0: [1, 2]"
    assert describe_args({"x": 1}, CALL_UNPACK) == "Arg x: 1"
    assert describe_args([1, 2], CALL_MPIRE) == "Arg 0: 1 | Arg 1: 2"
    assert describe_args("ab", CALL_MPIRE) == "Arg 0: 'ab'"
    assert describe_args(((3,), {"y": 2}), CALL_APPLY) == "Arg 0: 3 | Arg y: 2"
    long = describe_args("x" * 10_000, CALL_UNPACK)
    assert len(long) < 200 and long.startswith("Arg 0: 'xxx")


def test_estimate_bytes_sees_buffers_in_arguments() -> None:
    np = pytest.importorskip("numpy")
    items = [(np.zeros(1_000_000), i) for i in range(100)]
    assert 790_000_000 < estimate_bytes(items) < 820_000_000
    assert 99 * 10_000 < estimate_bytes([b"x" * 10_000] * 100) < 101 * 10_000
    assert estimate_bytes([]) == 0
