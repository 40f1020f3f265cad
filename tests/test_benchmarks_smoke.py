"""The benchmark harness runs: ``python -m benchmarks --smoke`` (tiny sizes, one round, serial + parallelize +
floor) exits 0 and prints a table for every workload. Benchmarks themselves never run in the test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / "benchmarks" / "__main__.py").exists(), reason="benchmarks/ is not in this tree")
def test_smoke_run_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONWARNINGS": ""},
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| Peer | median |" in done.stdout
    for workload in ("W1", "W1s", "W2", "W3a", "W3b", "W4", "W5-fresh", "W5-reuse", "W5b-digest", "W5b-bytes",
                     "W6-fresh", "W6-cached", "W6-process", "W6-import", "W7"):
        assert f"### {workload}:" in done.stdout, workload
    assert "FAILED" not in done.stdout
    assert out.exists() and '"workloads"' in out.read_text()


@pytest.mark.skipif(not (ROOT / "benchmarks" / "__main__.py").exists(), reason="benchmarks/ is not in this tree")
def test_unknown_peer_fails_naming_the_known_ones() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--only", "W1", "--peers", "serial,mpier"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "'mpier'" in done.stderr and "mpire" in done.stderr and "parallelize WorkerPool" in done.stderr
    assert "| Peer |" not in done.stdout
