"""The workloads W1-W7. Each measures one round for one peer (``measure``) and checks the result.

Values are seconds (lower is better) except W7 (MiB of PSS). ``metric`` turns the median into the unit readers
expect (tasks/s, speed-up vs serial, MiB/s, ms, MiB).
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from . import tasks
from .peers import FLOOR, SERIAL, Hooks, Peer

ROOT = Path(__file__).resolve().parent.parent


class WrongResult(AssertionError):
    """A peer returned a wrong result: the row fails, loudly."""


@dataclass(frozen=True)
class Sizes:
    name: str
    rounds: int  # measured rounds (after the warm-up rounds) of the fast workloads
    slow_rounds: int  # of the cold, heavy ones (W3a, W3b, W4, W7)
    warmup: int
    w1: int
    w1s: int
    w2: int
    w3a_mib: int
    w3b: int
    w4: int
    w5: int
    w5b: int  # 64 KiB byte strings
    latency_reps: int  # cached map(10) calls per round (fresh pools: a third of it, at least 1)


FULL = Sizes("full", rounds=4, slow_rounds=3, warmup=1, w1=200_000, w1s=5_000, w2=400, w3a_mib=128, w3b=2000,
             w4=1500, w5=64, w5b=2000, latency_reps=30)
QUICK = Sizes("quick", rounds=3, slow_rounds=2, warmup=1, w1=100_000, w1s=2_000, w2=150, w3a_mib=128, w3b=600,
              w4=750, w5=32, w5b=2000, latency_reps=15)
SMOKE = Sizes("smoke", rounds=1, slow_rounds=1, warmup=0, w1=2_000, w1s=100, w2=8, w3a_mib=8, w3b=20, w4=30, w5=4,
              w5b=20, latency_reps=2)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise WrongResult(what)


def close_to(value: float, expected: float) -> bool:
    return math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-6)


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


class Workload:
    id: ClassVar[str] = "?"
    title: ClassVar[str] = "?"
    unit: ClassVar[str] = "s"  # of the metric column
    warm: ClassVar[bool] = False  # pools opened once (untimed) and reused by every round
    slow: ClassVar[bool] = False
    has_ideal: ClassVar[bool] = False
    value_unit: ClassVar[str] = "s"
    env: ClassVar[dict[str, str] | None] = None  # run in a child process with this environment

    def __init__(self, sizes: Sizes, n_jobs: int) -> None:
        self.sizes, self.n_jobs = sizes, n_jobs
        self.notes: dict[str, str] = {}  # peer name -> note for the row

    def rounds(self) -> int:
        return self.sizes.slow_rounds if self.slow else self.sizes.rounds

    def skip(self, peer: Peer) -> str | None:
        return None

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def begin(self, peer: Peer) -> None:
        if self.warm:
            peer.open(self.hooks(peer), warm=True)

    def end(self, peer: Peer) -> None:
        if self.warm:
            peer.close()

    def hooks(self, peer: Peer) -> Hooks:
        return Hooks()

    def measure(self, peer: Peer) -> float:
        raise NotImplementedError

    def cold(self, peer: Peer, func: Callable[..., Any], items: Sequence[Any]) -> tuple[float, list[Any], list[Any]]:
        """Start a pool, map, stop it (all timed). Returns (seconds, results, exit results)."""
        peer.prepare()
        start = time.perf_counter()
        peer.open(self.hooks(peer), warm=False)
        try:
            results = peer.map(func, items)
        finally:
            exits = peer.close()
        return time.perf_counter() - start, results, exits

    def ideal(self, serial: float) -> float | None:
        return serial / self.n_jobs if self.has_ideal else None

    def metric(self, median: float, serial_median: float | None) -> str:
        return f"{median * 1e3:.1f} ms"


def format_rate(value: float) -> str:
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.1f} k" if value >= 1e3 else f"{value:.1f} "


def speed_up(median: float, serial_median: float | None) -> str:
    return f"{serial_median / median:.2f}x serial" if serial_median else "-"


# --- W1, W1s -----------------------------------------------------------------------------------------------------


class W1(Workload):
    id, title, unit, warm = "W1", "trivial tasks (x*x), warm pools, default chunking", "tasks/s", True
    chunk_size: int | None = None

    def n(self) -> int:
        return self.sizes.w1

    def setup(self) -> None:
        self.items = list(range(self.n()))
        self.expected = sum(x * x for x in self.items)

    def measure(self, peer: Peer) -> float:
        items, scale = self.items, 1.0
        if peer.name == "ppe (chunksize=1)" and self.chunk_size is None:
            items = self.items[:self.sizes.w1s]  # chunksize 1 on 200k tasks would take ~10 s a round
            scale = len(self.items) / len(items)
            self.notes[peer.name] = f"{len(items)} tasks (its default chunksize=1), time scaled x{scale:g}"
        seconds, results = timed(lambda: peer.map(tasks.square, items, self.chunk_size))
        expected = self.expected if scale == 1.0 else sum(x * x for x in items)
        check(len(results) == len(items) and sum(results) == expected, f"wrong sum of squares from {peer.name}")
        return seconds * scale

    def metric(self, median: float, serial_median: float | None) -> str:
        return f"{format_rate(self.n() / median)}tasks/s"


class W1s(W1):
    id, title = "W1s", "trivial tasks, chunk size 1 (streaming), warm pools"
    chunk_size = 1

    def n(self) -> int:
        return self.sizes.w1s

    def skip(self, peer: Peer) -> str | None:
        return "same as ppe (chunksize=1) here" if peer.name == "ppe (tuned chunks)" else None


# --- W2 ----------------------------------------------------------------------------------------------------------


class W2(Workload):
    id, title, unit, warm, has_ideal = "W2", "CPU-bound numpy (~1 ms SVD+matmul), warm pools", "x serial", True, True

    def setup(self) -> None:
        self.items = list(range(self.sizes.w2))
        self.expected = math.fsum(tasks.svd_matmul(seed) for seed in self.items)

    def measure(self, peer: Peer) -> float:
        seconds, results = timed(lambda: peer.map(tasks.svd_matmul, self.items))
        check(len(results) == len(self.items) and close_to(math.fsum(results), self.expected),
              f"wrong W2 checksum from {peer.name}")
        return seconds

    def metric(self, median: float, serial_median: float | None) -> str:
        return speed_up(median, serial_median)


# --- W3a, W7 -----------------------------------------------------------------------------------------------------


class W3a(Workload):
    id, unit, slow, has_ideal = "W3a", "x serial", True, True
    title = "big array in the parent read by every task (shared_objects / fork globals), cold pools"
    N_BLOCKS = 32

    def setup(self) -> None:
        import numpy as np

        n = self.sizes.w3a_mib * 1024 * 1024 // 8
        self.array = np.arange(n, dtype=np.float64) % 1000.0
        self.items = list(range(self.N_BLOCKS))
        self.expected = math.fsum(tasks.block_work(self.array, i) for i in self.items)

    def teardown(self) -> None:
        del self.array

    def hooks(self, peer: Peer) -> Hooks:
        return Hooks(shared=self.array)

    def skip(self, peer: Peer) -> str | None:
        if not peer.forks and peer.name != SERIAL:
            self.notes[peer.name] = "no fork: the array travels as a task argument (joblib memory-maps it)"
        return None

    def measure(self, peer: Peer) -> float:
        seconds, results, _ = self.cold(peer, tasks.block_work, self.items)
        check(len(results) == len(self.items) and close_to(math.fsum(results), self.expected),
              f"wrong W3a checksum from {peer.name}")
        return seconds

    def metric(self, median: float, serial_median: float | None) -> str:
        return speed_up(median, serial_median)


class W7(W3a):
    id, unit, value_unit = "W7", "MiB", "MiB"
    title = "memory: summed PSS of the workers during W3a (peak)"

    def skip(self, peer: Peer) -> str | None:
        return "no workers" if peer.name == SERIAL else super().skip(peer)

    def measure(self, peer: Peer) -> float:
        """Peak PSS while the map runs, and once more after it with the workers still up (keep_alive)."""
        peer.prepare()
        sampler = PssSampler()  # before the pool starts: what exists now is not the pool
        peer.open(self.hooks(peer), warm=True)
        try:
            with sampler:
                results = peer.map(tasks.block_work, self.items)
                peak = max(sampler.peak, sampler.sample())
        finally:
            peer.close()
        check(len(results) == len(self.items) and close_to(math.fsum(results), self.expected),
              f"wrong W7 checksum from {peer.name}")
        check(peak > 0, f"W7: no worker of {peer.name} was seen")
        return peak

    def ideal(self, serial: float) -> float | None:
        return None

    def metric(self, median: float, serial_median: float | None) -> str:
        return f"{median:.0f} MiB"


class PssSampler:
    """Samples the summed PSS (MiB) of this process's new descendants every 20 ms, in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self.me = psutil.Process()
        self.before = {child.pid for child in self.me.children(recursive=True)}
        self.interval = interval
        self.peak = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self) -> float:
        import psutil

        total = 0
        for child in self.me.children(recursive=True):
            if child.pid in self.before:
                continue
            try:
                if "resource_tracker" in " ".join(child.cmdline()):
                    continue
                total += child.memory_full_info().pss
            except psutil.Error:
                continue
        return total / 2**20

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, self.sample())

    def __enter__(self) -> PssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# --- W3b ---------------------------------------------------------------------------------------------------------


class W3b(Workload):
    id, unit, slow, has_ideal = "W3b", "x serial", True, True
    title = "expensive per-worker init (0.3 s) + worker state, cold pools"

    def setup(self) -> None:
        self.items = list(range(self.sizes.w3b))
        state: dict[str, Any] = {"table": [k * k % 9973 for k in range(1000)]}
        self.expected = sum(tasks.use_state(state, x) for x in self.items)

    def hooks(self, peer: Peer) -> Hooks:
        return Hooks(state=True, init=tasks.expensive_init)

    def measure(self, peer: Peer) -> float:
        seconds, results, _ = self.cold(peer, tasks.use_state, self.items)
        check(sum(results) == self.expected, f"wrong W3b sum from {peer.name}")
        return seconds

    def ideal(self, serial: float) -> float | None:
        init = tasks.W3B_INIT_SECONDS  # every worker pays it, in parallel
        return init + (serial - init) / self.n_jobs

    def metric(self, median: float, serial_median: float | None) -> str:
        return speed_up(median, serial_median)


# --- W4 ----------------------------------------------------------------------------------------------------------


class W4(Workload):
    id, unit, slow, has_ideal = "W4", "x serial", True, True
    title = "uneven stateful work (90% 1x, 9% 10x, 1% 100x), merged at worker exit, cold pools"

    def setup(self) -> None:
        import random

        rng = random.Random(4)
        self.items = [rng.choices((500, 5000, 50000), weights=(90, 9, 1))[0] for _ in range(self.sizes.w4)]
        acc = {cost: tasks.busy(cost) for cost in set(self.items)}
        self.expected = {"n": len(self.items), "cost": sum(self.items), "acc": sum(acc[c] for c in self.items)}

    def hooks(self, peer: Peer) -> Hooks:
        if peer.exit_hooks:
            return Hooks(state=True, init=tasks.uneven_init, exit=tasks.uneven_exit)
        self.notes[peer.name] = "no exit hook: per-task partials merged in the parent"
        return Hooks()

    def measure(self, peer: Peer) -> float:
        func = tasks.uneven_into_state if peer.exit_hooks else tasks.uneven_partial
        seconds, results, exits = self.cold(peer, func, self.items)
        parts = exits if peer.exit_hooks else results
        merged = {key: sum(part[key] for part in parts) for key in self.expected}
        check(merged == self.expected, f"wrong W4 merge from {peer.name}: {merged} != {self.expected}")
        return seconds

    def metric(self, median: float, serial_median: float | None) -> str:
        return speed_up(median, serial_median)


# --- W5 ----------------------------------------------------------------------------------------------------------

FRESH_PAGES = {"MALLOC_MMAP_THRESHOLD_": "131072"}
BUFFER_REUSE = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


class W5Fresh(Workload):
    id, unit, warm, env = "W5-fresh", "MiB/s", True, FRESH_PAGES
    title = "1 MiB numpy arrays in and out, warm pools; malloc mmaps every 1 MiB block (fresh pages)"

    def setup(self) -> None:
        import numpy as np

        rng = np.random.default_rng(5)
        self.items = [rng.standard_normal(131072) for _ in range(self.sizes.w5)]
        self.expected = math.fsum(float(a.sum()) for a in self.items) + 131072.0 * len(self.items)

    def teardown(self) -> None:
        del self.items

    def measure(self, peer: Peer) -> float:
        seconds, results = timed(lambda: peer.map(tasks.add_one, self.items))
        check(len(results) == len(self.items) and all(r.shape == (131072,) for r in results)
              and math.isclose(math.fsum(float(r.sum()) for r in results), self.expected, rel_tol=1e-9),
              f"wrong W5 arrays from {peer.name}")
        return seconds

    def metric(self, median: float, serial_median: float | None) -> str:
        return f"{self.sizes.w5 / median:.0f} MiB/s"


class W5Reuse(W5Fresh):
    id, env = "W5-reuse", BUFFER_REUSE
    title = "1 MiB numpy arrays in and out, warm pools; malloc reuses heap buffers"


# --- W5b ---------------------------------------------------------------------------------------------------------


class W5bDigest(Workload):
    id, unit, warm, has_ideal = "W5b-digest", "x serial", True, True
    title = "sha256 of in-memory 64 KiB byte strings, 32-byte digests back, warm pools"
    task: ClassVar[Callable[[bytes], bytes]] = staticmethod(tasks.sha256_digest)

    def setup(self) -> None:
        import random

        rng = random.Random(5)
        self.items = [rng.randbytes(tasks.W5B_BYTES) for _ in range(self.sizes.w5b)]
        self.expected = [type(self).task(item) for item in self.items]

    def teardown(self) -> None:
        del self.items, self.expected

    def measure(self, peer: Peer) -> float:
        seconds, results = timed(lambda: peer.map(type(self).task, self.items))
        check(results == self.expected, f"wrong W5b results from {peer.name}")
        return seconds

    def metric(self, median: float, serial_median: float | None) -> str:
        return speed_up(median, serial_median)


class W5bBytes(W5bDigest):
    id = "W5b-bytes"
    title = "sha256 of in-memory 64 KiB byte strings, 64 KiB bytes back (the digest repeated), warm pools"
    task = staticmethod(tasks.sha256_spread)


# --- W6 ----------------------------------------------------------------------------------------------------------

TEN = list(range(10))
TEN_SUM = sum(x * x for x in TEN)


class W6Fresh(Workload):
    id, title, unit = "W6-fresh", "latency: new pool + map(10 trivial tasks) + stop", "ms"

    def measure(self, peer: Peer) -> float:
        times = []
        for _ in range(max(1, self.sizes.latency_reps // 10)):
            seconds, results, _ = self.cold(peer, tasks.square, TEN)
            check(sum(results) == TEN_SUM, f"wrong W6 sum from {peer.name}")
            times.append(seconds)
        return statistics.median(times)

    def metric(self, median: float, serial_median: float | None) -> str:
        return f"{median * 1e3:.2f} ms"


class W6Cached(W6Fresh):
    id, title, warm = "W6-cached", "latency: map(10) on a warm pool (cached decorated call)", True

    def measure(self, peer: Peer) -> float:
        times = []
        for _ in range(self.sizes.latency_reps):
            seconds, results = timed(lambda: peer.map(tasks.square, TEN))
            check(sum(results) == TEN_SUM, f"wrong W6 sum from {peer.name}")
            times.append(seconds)
        return statistics.median(times)


PROCESS_SNIPPETS = {
    SERIAL: "print(sum(sq(x) for x in range(10)))",
    "mp.Pool": "import multiprocessing as mp\nwith mp.get_context('fork').Pool(2) as p:\n    print(sum(p.map(sq, "
               "range(10))))",
    "ppe (chunksize=1)": "import multiprocessing as mp\nfrom concurrent.futures import ProcessPoolExecutor as E\n"
                         "with E(2, mp_context=mp.get_context('fork')) as e:\n    print(sum(e.map(sq, range(10))))",
    "joblib (loky)": "from joblib import Parallel, delayed\nprint(sum(Parallel(n_jobs=2)(delayed(sq)(x) for x in "
                     "range(10))))",
    "mpire": "from mpire import WorkerPool\nwith WorkerPool(2, start_method='fork') as p:\n    print(sum(p.map(sq, "
             "range(10))))",
    "parallelize @parallel": "from parallelize import parallel\nprint(sum(parallel(n_jobs=2)(sq)(range(10))))",
    "parallelize WorkerPool": "from parallelize import WorkerPool\nwith WorkerPool(2) as p:\n    print(sum(p.map(sq, "
                              "range(10))))",
    FLOOR: "from benchmarks.floor import ForkFloor\nf = ForkFloor(2)\nprint(sum(f.map(sq, range(10))))\nf.close()",
}


def run_python(code: str) -> tuple[float, str]:
    """Seconds from start to exit of ``python -c code`` (in the repo root), and its stdout.

    Bytecode is written and used whatever PYTHONDONTWRITEBYTECODE says: an installed library has its .pyc files,
    so compiling sources on every start would measure something no user sees.
    """
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise WrongResult(f"python -c failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds, done.stdout


class W6Process(W6Fresh):
    id, title = "W6-process", "latency: whole process start → map(10) → exit (python -c, subprocess)"

    def skip(self, peer: Peer) -> str | None:
        return None if peer.name in PROCESS_SNIPPETS else "no snippet"

    def measure(self, peer: Peer) -> float:
        code = "def sq(x):\n    return x * x\n" + PROCESS_SNIPPETS[peer.name] + "\n"
        seconds, out = run_python(code)
        check(out.split() == [str(TEN_SUM)], f"wrong W6-process output from {peer.name}: {out!r}")
        return seconds


# The import statement each peer's users write: `import parallelize` alone would load nothing (names load on first
# use), so the rows time what it takes to get the name a program then uses.
IMPORTS = {
    "mp.Pool": "from multiprocessing import Pool",
    "ppe (chunksize=1)": "from concurrent.futures import ProcessPoolExecutor",
    "joblib (loky)": "from joblib import Parallel, delayed",
    "mpire": "from mpire import WorkerPool",
    "parallelize @parallel": "from parallelize import parallel",
    "parallelize WorkerPool": "from parallelize import WorkerPool",
    FLOOR: "from benchmarks.floor import ForkFloor",
}


class W6Import(W6Fresh):
    id, title = "W6-import", "import time: the peer's usual import statement (fresh interpreter, timed inside it)"

    def skip(self, peer: Peer) -> str | None:
        return None if peer.name in IMPORTS else "same module as another row" if peer.name != SERIAL else "no import"

    def measure(self, peer: Peer) -> float:
        code = (f"import time\nstart = time.perf_counter()\n{IMPORTS[peer.name]}\n"
                "print(time.perf_counter() - start)\n")
        run_python(code)  # untimed: leaves every module's bytecode cached, as an installed library has it
        _, out = run_python(code)
        return float(out.strip())


# --- W8 ----------------------------------------------------------------------------------------------------------


class WDask(W1):
    """10k trivial tasks on a local Dask cluster of n_jobs single-thread worker processes: parallelize's dask
    backend against joblib's dask backend on the same cluster, with local process pools for scale."""

    id, title = "W8-dask", "10k trivial tasks on a local Dask cluster (n_jobs workers of 1 thread), warm"
    RUNS = ("parallelize @parallel (dask)", "joblib (dask)", "parallelize @parallel", "mp.Pool", SERIAL)

    def n(self) -> int:
        return 10_000

    def skip(self, peer: Peer) -> str | None:
        return None if peer.name in self.RUNS else "not a Dask row"

    cluster: Any = None

    def begin(self, peer: Peer) -> None:
        if peer.name in self.RUNS[:2] and self.cluster is None:  # (started only for the Dask rows: not in --smoke)
            import distributed

            from .peers import DaskCluster

            self.cluster = distributed.LocalCluster(
                n_workers=self.n_jobs, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
            DaskCluster.client = distributed.Client(self.cluster)  # the default client: joblib's backend takes it
        super().begin(peer)

    def teardown(self) -> None:
        if self.cluster is not None:
            from .peers import DaskCluster

            DaskCluster.client.close()
            DaskCluster.client = None
            self.cluster.close()
            self.cluster = None


class WDaskCold(WDask):
    """The same, each round starting the pool's workers on the cluster and stopping them (the cluster stays up)."""

    id, title, warm = "W8-dask-cold", "10k trivial tasks on a local Dask cluster: new pool + map + stop", False

    def measure(self, peer: Peer) -> float:
        seconds, results, _ = self.cold(peer, tasks.square, self.items)
        check(len(results) == len(self.items) and sum(results) == self.expected,
              f"wrong sum of squares from {peer.name}")
        return seconds


ALL: list[type[Workload]] = [W1, W1s, W2, W3a, W3b, W4, W5Fresh, W5Reuse, W5bDigest, W5bBytes, W6Fresh, W6Cached,
                             W6Process, W6Import, W7, WDask, WDaskCold]


def select(only: str | None) -> list[type[Workload]]:
    """``--only W1,W6``: a name matches its id exactly, or the part of it before '-' (W6 = every W6-*)."""
    if not only:
        return list(ALL)
    wanted = {name.strip().lower() for name in only.split(",") if name.strip()}
    chosen = [w for w in ALL if w.id.lower() in wanted or w.id.split("-")[0].lower() in wanted]
    unknown = wanted - {w.id.lower() for w in ALL} - {w.id.split("-")[0].lower() for w in ALL}
    if unknown:
        raise SystemExit(f"--only: unknown workload(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(w.id for w in ALL)}")
    return chosen


def child_env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}
