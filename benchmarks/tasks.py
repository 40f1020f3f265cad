"""Task functions and hooks, at module level so every peer can pickle them by reference (loky spawns its workers
and imports this module there)."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import numpy as np

# --- W1, W1s, W6 ---------------------------------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


# --- W2: CPU-bound numpy, ~1 ms per task ------------------------------------------------------------------------

W2_SIZE = 128


def svd_matmul(seed: int) -> float:
    a = np.random.default_rng(seed).standard_normal((W2_SIZE, W2_SIZE))
    singular = np.linalg.svd(a, compute_uv=False)
    return float(singular.sum() + (a @ a).sum())


# --- W3a / W7: a big array in the parent, read by every task ---------------------------------------------------


def block_work(array: np.ndarray, index: int, n_blocks: int = 32) -> float:
    """Work on block *index* of the array, plus a strided sample across all of it (every task needs it all)."""
    size = len(array) // n_blocks
    block = array[index * size:(index + 1) * size]
    total = float(np.sin(block).sum() + np.cos(block).sum() + np.sqrt(block).sum())
    return total + float(array[index::65536].sum())


# --- W3b: expensive init, worker state --------------------------------------------------------------------------

W3B_INIT_SECONDS = float(os.environ.get("BENCH_W3B_INIT", "0.3"))  # --smoke sets it (inherited by workers)


def expensive_init(state: dict[str, Any]) -> None:
    time.sleep(W3B_INIT_SECONDS)
    state["table"] = [k * k % 9973 for k in range(1000)]


def use_state(state: dict[str, Any], x: int) -> int:
    table = state["table"]
    return sum(table[(x * j) % 1000] for j in range(2000))


# --- W4: uneven stateful work merged at worker exit -------------------------------------------------------------


def busy(cost: int) -> int:
    acc = 0
    for j in range(cost):
        acc += j * j % 7
    return acc


def uneven_init(state: dict[str, Any]) -> None:
    state.update(n=0, cost=0, acc=0)


def uneven_into_state(state: dict[str, Any], cost: int) -> None:
    state["n"] += 1
    state["cost"] += cost
    state["acc"] += busy(cost)


def uneven_exit(state: dict[str, Any]) -> dict[str, int]:
    return {key: state[key] for key in ("n", "cost", "acc")}


def uneven_partial(cost: int) -> dict[str, int]:
    """The same work for pools without exit hooks: the partial comes back with each task, merged in the parent."""
    return {"n": 1, "cost": cost, "acc": busy(cost)}


# --- W5: 1 MiB numpy arrays in and out --------------------------------------------------------------------------


def add_one(array: np.ndarray) -> np.ndarray:
    return array + 1.0


# --- W5b: 64 KiB byte strings in, digests or 64 KiB byte strings out -------------------------------------------

W5B_BYTES = 64 * 1024


def sha256_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_spread(data: bytes) -> bytes:
    """The digest repeated to the input's length: a result as large as the argument."""
    return hashlib.sha256(data).digest() * (len(data) // 32)
