"""Progress bars: every style with its output captured, per-task counts, totals for lazy inputs, bars of calls that
run at the same time, and the checks made before any work starts.

The log style is what a pipe or a file gets ("auto" anywhere but a terminal or a notebook); the tests give the
bar a file of their own (progress_tasks.Sink), which is not a terminal, and a short PARALLELIZE_PROGRESS_INTERVAL.
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import logging
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import progress_tasks as pt
from parallelize import ConfigError, WorkerPool, _progress, _progress_tqdm, config, parallel
from progress_tasks import Sink, Terminal, counts, touch_when

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture(autouse=True)
def quick_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log line at every update, and no PARALLELIZE_PROGRESS_BAR_STYLE from outside."""
    monkeypatch.setenv("PARALLELIZE_PROGRESS_INTERVAL", "1e-9")
    monkeypatch.delenv("PARALLELIZE_PROGRESS_BAR_STYLE", raising=False)


@pytest.fixture
def held(fast_start_method: str) -> Iterator[Any]:
    func = pt.held.options(start_method=fast_start_method)
    yield func
    func.close()


# --- per-task counts ------------------------------------------------------------------------------------------------


def test_the_bar_counts_the_tasks_of_a_running_chunk(held: Any, tmp_path: Path) -> None:
    # One chunk of 10 whose task 5 waits until the bar shows 5/10: a bar fed by finished chunks only would show
    # 0/10 until the end, and the call would wait for ever (the task gives up after 30 s).
    sink = Sink(touch_when("5/10", tmp_path / "go"))
    items = [(i, str(tmp_path)) for i in range(10)]
    assert held(items, progress_bar=True, progress_bar_options={"file": sink}) == list(range(10))
    shown = counts(sink.lines())
    assert (5, 10) in shown
    assert shown[-1] == (10, 10)
    assert shown == sorted(shown)


def test_a_chunk_sent_again_after_its_worker_died_is_not_counted_twice(tmp_path: Path,
                                                                        closing: Callable[[Any], Any]) -> None:
    # The worker dies at task 5 after the bar has shown 5/10: tasks 0-4 run again, task 5 is retried. Task 2 of the
    # second run waits until the bar has drawn a line since the death, with 2 of the tasks run again done.
    func = closing(pt.held.options(start_method="fork", retries=1))
    first = touch_when("5/10", tmp_path / "go")

    def check(sink: Sink) -> None:
        first(sink)
        if (tmp_path / "died").exists():
            (tmp_path / "go again").touch()

    sink = Sink(check)
    items = [(i, str(tmp_path), True) for i in range(10)]
    assert func(items, progress_bar=True, progress_bar_options={"file": sink}) == list(range(10))
    assert (tmp_path / "died").exists()
    shown = counts(sink.lines())
    assert (5, 10) in shown
    assert shown == sorted(shown)  # never back, never past the total
    assert shown[-1] == (10, 10)


def test_a_serial_call_counts_each_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_DISABLE", "1")
    sink = Sink()
    assert pt.plain(range(4), chunk_size=4, progress_bar=True, progress_bar_options={"file": sink}) == [0, 1, 2, 3]
    assert [done for done, _ in counts(sink.lines())][:5] == [0, 1, 2, 3, 4]  # (then the chunk, the end)


# --- the log style ----------------------------------------------------------------------------------------------------

JOB = """
import logging
import sys
import time
sys.path[:0] = [{repo!r}]
from parallelize import parallel

@parallel(n_jobs=2, progress_bar=True, on_error="return")
def nap(x):
    time.sleep(0.05)
    if x == 3:
        raise ValueError(x)
    return x

if __name__ == "__main__":
    {setup}
    print(len(nap(range(20))))
"""


@pytest.mark.parametrize(("setup", "prefix"), [
    ("pass", "[parallelize] "),  # no logging configured: straight to stderr
    ("logging.basicConfig()", "[parallelize] "),  # logging that would hide INFO lines: stderr still
    ("logging.basicConfig(level=logging.INFO, format='%(name)s|%(message)s')", "parallelize.progress|"),
])
def test_piped_output_gets_plain_log_lines(tmp_path: Path, setup: str, prefix: str) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB.format(repo=str(REPO), setup=setup))
    env = {"PATH": "/usr/bin:/bin", "PARALLELIZE_PROGRESS_INTERVAL": "0.1"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "20\n"
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    lines = done.stderr.splitlines()
    assert all(line.startswith(f"{prefix}nap: ") for line in lines), lines
    assert lines[0] == f"{prefix}nap: 0/20 tasks (0%), elapsed 0:00, 0 failed, started"
    assert lines[-1].startswith(f"{prefix}nap: 20/20 tasks (100%), ")
    assert lines[-1].endswith(", 1 failed, done")
    middle = lines[1:-1]
    assert middle, lines  # the first result came back at least 0.15 s after the first line
    assert all(" tasks/s, elapsed " in line for line in middle)
    assert any(", ETA " in line for line in middle)


def test_log_lines_go_to_the_logger_when_it_shows_them(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="parallelize.progress")
    assert pt.plain(range(3), progress_bar=True) == [0, 1, 2]
    messages = [r.getMessage() for r in caplog.records if r.name == "parallelize.progress"]
    assert messages[0] == "plain: 0/3 tasks (0%), elapsed 0:00, started"
    assert messages[-1].startswith("plain: 3/3 tasks (100%), ") and messages[-1].endswith(", done")


def test_a_bar_that_cannot_write_does_not_fail_the_call(caplog: pytest.LogCaptureFixture) -> None:
    class Breaks(Sink):
        def write(self, text: str) -> int:
            if "started" not in text:
                raise OSError("disk full")
            return super().write(text)

    assert pt.plain(range(5), progress_bar=True, progress_bar_options={"file": Breaks()}) == list(range(5))
    assert "the progress bar of plain failed and is turned off" in caplog.text


# --- totals -----------------------------------------------------------------------------------------------------------


def test_iterable_len_caps_a_generator_and_gives_the_bar_its_total() -> None:
    sink = Sink()
    assert pt.plain(itertools.count(), iterable_len=7, progress_bar=True,
                    progress_bar_options={"file": sink}) == list(range(7))
    shown = counts(sink.lines())
    assert shown[0] == (0, 7) and shown[-1] == (7, 7)


def test_a_generator_without_iterable_len_gains_its_total_when_it_runs_out() -> None:
    sink = Sink()
    assert pt.plain((x for x in range(6)), progress_bar=True, progress_bar_options={"file": sink}) == list(range(6))
    shown = counts(sink.lines())
    assert shown[0] == (0, None)
    assert shown[-1] == (6, 6)


def test_workerpool_total_becomes_the_real_count_when_the_input_is_shorter() -> None:
    # As MPIRE: iterable_len is the total until the input runs out; then the number of items it gave.
    sink = Sink()
    with WorkerPool(1, start_method="threading") as pool:
        assert pool.map(pt.plain.serial, (x for x in range(4)), iterable_len=10, progress_bar=True,
                        progress_bar_options={"file": sink}) == [0, 1, 2, 3]
    shown = counts(sink.lines())
    assert shown[0] == (0, 10) and shown[-1] == (4, 4)


@pytest.mark.parametrize("bad", [-1, 2.5, "3", True])
def test_iterable_len_of_the_decorator_is_checked(bad: Any) -> None:
    with pytest.raises(ConfigError, match="iterable_len"):
        pt.plain(range(3), iterable_len=bad)


# --- bars at the same time ----------------------------------------------------------------------------------------


def test_calls_in_two_threads_draw_separate_bars(closing: Callable[[Any], Any]) -> None:
    # Each call's tasks wait until both bars have started, so the two bars are shown at the same time.
    event = threading.Event()

    def both_started(sink: Sink) -> None:
        if sum(line.endswith("started") for line in sink.lines()) == 2:
            event.set()

    sink = Sink(both_started)
    alpha = closing(pt.gated.options(shared_objects=event))
    beta = closing(alpha.options())
    results = []

    def run(func: Any, name: str) -> None:
        results.append(func(range(30), progress_bar=True, progress_bar_options={"file": sink, "desc": name}))

    threads = [threading.Thread(target=run, args=(func, name)) for func, name in ((alpha, "alpha"), (beta, "beta"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(pt.LIMIT)
    assert results == [list(range(30))] * 2
    by_name: dict[str, list[tuple[int, int | None]]] = {"alpha": [], "beta": []}
    for line in sink.lines():
        match = pt.LOG_LINE.match(line)
        assert match is not None, line
        by_name[match["name"]].extend(counts([line]))
    for shown in by_name.values():
        assert shown[0] == (0, 30) and shown[-1] == (30, 30) and shown == sorted(shown)


def test_a_call_inside_another_calls_loop_draws_its_own_bar() -> None:
    sink = Sink()
    outer = pt.plain.imap(range(3), chunk_size=1, progress_bar=True, progress_bar_options={"file": sink,
                                                                                          "desc": "outer"})
    for x in outer:
        assert pt.plain(range(x + 2), progress_bar=True, progress_bar_options={"file": sink, "desc": "inner"}) \
            == list(range(x + 2))
    lines = sink.lines()
    counts(lines)  # every line whole
    ends = [line.split(" tasks")[0] for line in lines if line.endswith(", done")]
    assert ends == ["[parallelize] inner: 2/2", "[parallelize] inner: 3/3", "[parallelize] inner: 4/4",
                    "[parallelize] outer: 3/3"]


def test_std_bars_in_two_threads_each_reach_their_total(closing: Callable[[Any], Any]) -> None:
    out = io.StringIO()
    funcs = [closing(pt.plain.options()) for _ in range(2)]
    threads = [threading.Thread(target=func, args=(range(25 + n),),
                                kwargs={"progress_bar": True, "progress_bar_style": "std",
                                        "progress_bar_options": {"file": out, "desc": f"bar{n}"}})
               for n, func in enumerate(funcs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(pt.LIMIT)
    text = out.getvalue()
    assert "bar0: 100%" in text and "25/25" in text
    assert "bar1: 100%" in text and "26/26" in text


# --- the other styles ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["std", "rich"])
def test_bars_start_no_thread_of_their_own(style: str, closing: Callable[[Any], Any]) -> None:
    # Asked from inside the call, while its bar is shown (thread workers run in this process).
    if style == "rich":
        pytest.importorskip("rich", reason="the rich style needs rich (pip install 'parallelize[rich]')")
    func = closing(parallel(n_jobs=1, backend="thread")(pt.bar_threads))
    assert func(range(2), progress_bar=True, progress_bar_style=style,
                progress_bar_options={"file": io.StringIO()}) == [[], []]


def test_rich_bar_shows_the_final_count(closing: Callable[[Any], Any]) -> None:
    pytest.importorskip("rich", reason="the rich style needs rich (pip install 'parallelize[rich]')")
    out = io.StringIO()
    with WorkerPool(2, start_method="fork") as pool:
        assert pool.map(pt.plain.serial, range(37), progress_bar=True, progress_bar_style="rich",
                        progress_bar_options={"file": out}) == list(range(37))
    assert "37/37" in out.getvalue()
    assert "\r" not in out.getvalue()  # not a terminal: rich prints the final state only


def test_rich_bars_of_a_nested_loop_share_one_display_and_leave_a_line_each() -> None:
    pytest.importorskip("rich", reason="the rich style needs rich (pip install 'parallelize[rich]')")
    out = io.StringIO()
    options: dict[str, Any] = {"file": out}
    for x in pt.plain.imap(range(3), chunk_size=1, progress_bar=True, progress_bar_style="rich",
                           progress_bar_options={**options, "desc": "outer"}):
        pt.plain(range(x + 2), progress_bar=True, progress_bar_style="rich",
                 progress_bar_options={**options, "desc": "inner", "leave": x != 1})
    rows = [line.split()[0] + " " + line.split()[2] for line in out.getvalue().splitlines()]
    assert rows == ["inner 2/2", "inner 4/4", "outer 3/3"]  # the inner bar with leave=False left nothing


def test_rich_bar_with_fork_workers_warns_of_no_thread(tmp_path: Path) -> None:
    pytest.importorskip("rich", reason="the rich style needs rich (pip install 'parallelize[rich]')")
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}]
        from parallelize import parallel

        @parallel(n_jobs=2, start_method="fork", progress_bar=True, progress_bar_style="rich")
        def double(x):
            return 2 * x

        print(sum(double(range(100))))
    """)
    done = subprocess.run([sys.executable, "-W", "error::parallelize.ForkAfterThreadsWarning", "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "9900\n"
    assert "100/100" in done.stderr


def test_notebook_bar_is_a_widget_that_reaches_its_total(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ipywidgets", reason="the notebook style needs ipywidgets "
                                             "(pip install 'parallelize[notebook]')")
    widgets: list[tuple[float, float, str]] = []
    close = _progress_tqdm.TqdmBar.close

    def spy(self: Any, *args: Any) -> None:
        close(self, *args)
        widget = self._bar.container.children[1]
        widgets.append((widget.value, widget.max, widget.bar_style))

    monkeypatch.setattr(_progress_tqdm.TqdmBar, "close", spy)
    assert pt.plain(range(12), progress_bar=True, progress_bar_style="notebook") == list(range(12))
    assert pt.plain((x for x in range(5)), progress_bar=True, progress_bar_style="notebook") == list(range(5))
    assert widgets == [(12, 12, "success"), (5, 5, "success")]
    capsys.readouterr()  # (outside a kernel, IPython prints the widget's text)


# --- the choice of style ------------------------------------------------------------------------------------------


def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    shell_class = type("ZMQInteractiveShell", (), {})
    module = types.ModuleType("IPython")
    module.get_ipython = shell_class  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", module)


@pytest.mark.parametrize(("enabled", "file", "kernel", "expected"), [
    (True, Terminal(), False, "std"),
    (True, io.StringIO(), False, "log"),
    (True, None, True, "notebook"),
    ("auto", Terminal(), False, "std"),
    ("auto", io.StringIO(), False, None),
])
def test_auto_draws_a_bar_where_someone_watches_and_log_lines_elsewhere(
        monkeypatch: pytest.MonkeyPatch, enabled: Any, file: Any, kernel: bool, expected: str | None) -> None:
    if kernel:
        pytest.importorskip("ipywidgets", reason="the notebook style needs ipywidgets")
        fake_kernel(monkeypatch)
    bar = _progress.make_bar(enabled, None, {} if file is None else {"file": file}, "f")
    assert (bar.style if bar is not None else None) == expected


def test_progress_bar_auto_shows_nothing_in_a_pipe() -> None:
    sink = Sink()
    assert pt.plain(range(3), progress_bar="auto", progress_bar_options={"file": sink}) == [0, 1, 2]
    assert sink.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar() -> None:
    out = Terminal()
    pt.plain(range(3), progress_bar=True, progress_bar_options={"file": out})
    assert "plain: 100%" in out.getvalue() and "\r" in out.getvalue()


@pytest.mark.parametrize("how", ["config", "environment"])
def test_workerpool_takes_the_configured_default_style(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()  # "auto" would draw a tqdm bar here
    with WorkerPool(1, start_method="threading") as pool:
        if how == "environment":
            monkeypatch.setenv("PARALLELIZE_PROGRESS_BAR_STYLE", "log")
            pool.map(pt.plain.serial, range(3), progress_bar=True, progress_bar_options={"file": terminal})
        else:
            with config(progress_bar_style="log"):
                pool.map(pt.plain.serial, range(3), progress_bar=True, progress_bar_options={"file": terminal})
    assert counts(terminal.getvalue().splitlines())[-1] == (3, 3)


# --- checks before any work -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("style", "extra"), [("rich", "rich"), ("notebook", "notebook")])
def test_a_style_whose_package_is_missing_names_the_extra(style: str, extra: str, monkeypatch: pytest.MonkeyPatch,
                                                          closing: Callable[[Any], Any]) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("rich", "ipywidgets") else find_spec(name, *args))
    message = rf"pip install 'parallelize\[{extra}\]'"
    func = closing(pt.plain.options(backend="process", start_method="fork"))
    with pytest.raises(ConfigError, match=message):
        func(range(3), progress_bar=True, progress_bar_style=style)
    assert func.worker_pids() == []  # no pool was started
    with WorkerPool(1, start_method="threading") as pool, pytest.raises(ConfigError, match=message):
        pool.imap(pt.plain.serial, range(3), progress_bar=True, progress_bar_style=style)  # at the call


@pytest.mark.parametrize(("options", "message"), [
    ({"desk": "x"}, "unknown key 'desk'; did you mean 'desc'"),
    ({"ncols": "wide"}, r"progress_bar_options\['ncols'\] must be an integer or None, got 'wide'"),
    ({"file": 3}, r"progress_bar_options\['file'\] must be a file-like object"),
    ({"total": 3}, "may not set 'total'"),
    ([("desc", "x")], "must be a dict"),
])
def test_progress_bar_options_are_checked_before_any_work(options: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parallel(progress_bar_options=options)(pt.plain.__wrapped__)
    with pytest.raises(ConfigError, match=message), config(progress_bar_options=options):
        pass
    with WorkerPool(1, start_method="threading") as pool, pytest.raises(ConfigError, match=message):
        pool.imap(pt.plain.serial, range(3), progress_bar=True, progress_bar_options=options)


@pytest.mark.parametrize(("value", "message"), [
    ("soon", "PARALLELIZE_PROGRESS_INTERVAL='soon' is not a number of seconds"),
    ("0", "PARALLELIZE_PROGRESS_INTERVAL='0' must be a positive number of seconds"),
    ("nan", "PARALLELIZE_PROGRESS_INTERVAL='nan' must be a positive number of seconds"),
])
def test_a_bad_progress_interval_is_reported(value: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_PROGRESS_INTERVAL", value)
    with pytest.raises(ConfigError, match=message):
        pt.plain(range(3), progress_bar=True, progress_bar_options={"file": Terminal()})
    assert pt.plain(range(3)) == [0, 1, 2]  # no bar: not read


@pytest.mark.parametrize("bad", ["sometimes", 1, None])
def test_progress_bar_must_be_true_false_or_auto(bad: Any) -> None:
    with pytest.raises(ConfigError, match="progress_bar must be True, False or 'auto'"):
        parallel(progress_bar=bad)(pt.plain.__wrapped__)
    with WorkerPool(1, start_method="threading") as pool, pytest.raises(ConfigError, match="progress_bar must be"):
        pool.map(pt.plain.serial, range(3), progress_bar=bad)


def test_progress_bar_variable_takes_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_PROGRESS_BAR", "auto")
    sink = Sink()
    assert pt.plain(range(3), progress_bar_options={"file": sink}) == [0, 1, 2]
    assert sink.getvalue() == ""  # not a terminal
    monkeypatch.setenv("PARALLELIZE_PROGRESS_BAR", "sometimes")
    with pytest.raises(ConfigError, match="PARALLELIZE_PROGRESS_BAR='sometimes' is not a boolean or 'auto'"):
        pt.plain(range(3))
