"""Several callers on one pool: one caller's failure or interruption is never another caller's."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]

# The main thread maps over 200 items and gets a Ctrl-C midway; a helper thread, started just after it (so the
# main thread is the one driving the pool), maps over 60 items on the same pool at the same time.
INNOCENT_BYSTANDER = textwrap.dedent("""
    import os, signal, sys, threading, time, warnings
    sys.path[:0] = [{repo!r}]
    warnings.simplefilter("ignore")
    from parallelize import parallel

    @parallel(n_jobs=2, chunk_size=1)
    def slow(x):
        time.sleep(0.01)
        return x

    if __name__ == "__main__":
        delay = float(sys.argv[1])
        out = {{}}

        def helper():
            try:
                out["r"] = slow(list(range(60)))
            except BaseException as exc:
                out["r"] = exc

        slow([0, 1])
        thread = threading.Thread(target=helper)
        threading.Timer(0.05, thread.start).start()
        threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            slow(list(range(200)))
            print("main: finished")
        except KeyboardInterrupt:
            print("main: KeyboardInterrupt")
        thread.join(60)
        r = out["r"]
        print("helper:", "all" if r == list(range(60)) else (f"{{len(r)}} of 60" if isinstance(r, list) else repr(r)))
        print("again:", slow(range(5)) == list(range(5)))
""")


@pytest.mark.parametrize("delay", [0.2, 0.3, 0.5])
def test_ctrl_c_in_one_thread_leaves_another_threads_call_whole(tmp_path: Path, delay: float) -> None:
    script = tmp_path / "bystander.py"
    script.write_text(INNOCENT_BYSTANDER.format(repo=str(REPO)))
    done = subprocess.run([sys.executable, str(script), str(delay)], capture_output=True, text=True, timeout=90)
    assert done.stdout.splitlines() == ["main: KeyboardInterrupt", "helper: all", "again: True"], done.stderr
