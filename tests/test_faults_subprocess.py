"""Faults that hit the parent itself (Ctrl-C, SIGKILL): the parent is a child Python process running a map.

The child runs ``fault_tasks.chaos`` over tasks that publish their worker's pid in a directory and then block, so
the test knows when the map is in full swing and which workers to look for afterwards. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fault_tasks
from fault_tasks import gone, open_fds, our_new_shm, shm_entries, wait_until

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

CHILD = """
import sys
sys.path[:0] = [{tests!r}, {repo!r}]
from fault_tasks import chaos

if __name__ == "__main__":
    mode, start_method, directory = sys.argv[1:4]
    action = "ignore_term" if mode == "stubborn" else "block"
    items = [(i, action, directory) for i in range(2)]
    if mode == "continue":
        try:
            chaos(items, start_method=start_method)
        except KeyboardInterrupt:
            print("caught KeyboardInterrupt", flush=True)
        print(chaos(range(10), start_method=start_method), flush=True)
    else:
        chaos(items, start_method=start_method)
        print("the map returned", flush=True)
"""


@pytest.fixture(autouse=True)
def no_leaked_fds_or_shm() -> Iterator[None]:
    fds, shm = open_fds(), shm_entries()
    yield
    assert open_fds() - fds == set()
    assert wait_until(lambda: not our_new_shm(shm), 2.0), our_new_shm(shm)


def start_child(tmp_path: Path, mode: str, start_method: str) -> tuple[subprocess.Popen[str], list[int]]:
    """The child, once both of its workers are running a task; and their pids."""
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(TESTS), repo=str(REPO)))
    work = tmp_path / "work"
    work.mkdir()
    child = subprocess.Popen([sys.executable, str(script), mode, start_method, str(work)], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        for i in range(2):
            assert fault_tasks.wait_for(work / f"{i}.pid", 30.0), "the child's workers never started their tasks"
    except BaseException:
        child.kill()
        child.communicate(timeout=10)
        raise
    return child, [int((work / f"{i}.pid").read_text()) for i in range(2)]


def finish(child: subprocess.Popen[str], limit: float) -> tuple[str, str]:
    """The child's output once it has ended; a child still running after *limit* seconds is killed (its workers
    then end through their lifeline) and the test fails."""
    try:
        return child.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        child.kill()
        _, err = child.communicate(timeout=10)
        pytest.fail(f"the child was still running {limit}s later:\n{err}")


def ctrl_c(child: subprocess.Popen[str]) -> None:
    """What the terminal does on Ctrl-C: SIGINT to the whole foreground process group."""
    os.killpg(child.pid, signal.SIGINT)


def assert_no_orphans(worker_pids: list[int]) -> None:
    assert wait_until(lambda: all(gone(pid) for pid in worker_pids), 5.0), \
        [pid for pid in worker_pids if not gone(pid)]


def assert_one_keyboard_interrupt(stderr: str) -> None:
    assert stderr.count("Traceback (most recent call last)") == 1, stderr
    assert stderr.rstrip().splitlines()[-1] == "KeyboardInterrupt", stderr
    assert "fault_tasks.py" not in stderr  # no worker traceback (the tasks live there)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_ctrl_c_raises_one_keyboard_interrupt_quickly(tmp_path: Path, start_method: str) -> None:
    child, workers = start_child(tmp_path, "plain", start_method)
    t0 = time.monotonic()
    ctrl_c(child)
    out, err = finish(child, 10)
    assert time.monotonic() - t0 < 3.0
    assert child.returncode == -signal.SIGINT, (child.returncode, err)
    assert "the map returned" not in out
    assert_one_keyboard_interrupt(err)
    assert_no_orphans(workers)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_ctrl_c_then_the_same_function_works_again(tmp_path: Path, start_method: str) -> None:
    child, workers = start_child(tmp_path, "continue", start_method)
    ctrl_c(child)
    out, err = finish(child, 10)
    assert child.returncode == 0, err
    assert out.splitlines() == ["caught KeyboardInterrupt", str([i * i for i in range(10)])]
    assert "Traceback" not in err
    assert_no_orphans(workers)  # the interrupted workers were stopped; fresh ones ran the second call


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_second_ctrl_c_during_cleanup_still_ends_cleanly(tmp_path: Path, start_method: str) -> None:
    # The tasks ignore SIGTERM, so stopping the workers takes a grace period: the second Ctrl-C lands in it.
    child, workers = start_child(tmp_path, "stubborn", start_method)
    t0 = time.monotonic()
    ctrl_c(child)
    time.sleep(0.2)  # not a wait for a result: the spacing between two key presses
    ctrl_c(child)
    _, err = finish(child, 8)
    assert time.monotonic() - t0 < 5.0
    assert child.returncode == -signal.SIGINT, (child.returncode, err)
    assert_one_keyboard_interrupt(err)
    assert_no_orphans(workers)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_parent_killed_with_sigkill_leaves_no_workers(tmp_path: Path, start_method: str) -> None:
    child, workers = start_child(tmp_path, "plain", start_method)
    assert all(not gone(pid) for pid in workers)
    child.kill()
    finish(child, 10)
    assert child.returncode == -signal.SIGKILL
    assert_no_orphans(workers)  # the lifeline pipe closed: each worker ended itself, mid-task
