"""``python -m parallelize.demo``: the main job in one screen, with the speed-up it gives on this machine.

A CPU-bound pure-Python function is run over 48 inputs twice: once in a plain loop, once with @parallel on
every available CPU. The results must be identical; the speed-up is printed.
"""

from __future__ import annotations

import argparse
import time

from parallelize import cpu_count, parallel


def count_primes(limit: int) -> int:
    """Deliberately slow (trial division) so each task takes a few tens of milliseconds."""
    count = 0
    for n in range(2, limit):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            count += 1
    return count


@parallel
def count_primes_parallel(limit: int) -> int:
    return count_primes(limit)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m parallelize.demo",
        description="Count primes for 48 inputs in a plain loop, then with @parallel on every available CPU, check "
                    "that the results are identical and print the speed-up.",
    ).parse_args(argv)
    inputs = [20_000 + 500 * i for i in range(48)]
    n_cpus = cpu_count()

    started = time.perf_counter()
    serial = [count_primes(limit) for limit in inputs]
    serial_seconds = time.perf_counter() - started

    count_primes_parallel(inputs[:2])  # start the worker pool once, as a long-running program would
    started = time.perf_counter()
    parallel_results = count_primes_parallel(inputs)
    parallel_seconds = time.perf_counter() - started
    count_primes_parallel.close()

    if parallel_results != serial:
        raise SystemExit("demo failed: parallel results differ from the serial loop")
    print(f"counted primes below {len(inputs)} limits ({inputs[0]:,} .. {inputs[-1]:,})")
    print(f"  serial loop          : {serial_seconds:6.2f} s")
    print(f"  @parallel, {n_cpus} worker(s): {parallel_seconds:6.2f} s")
    print(f"  speed-up             : {serial_seconds / parallel_seconds:6.2f}x on {n_cpus} CPU(s); results identical")


if __name__ == "__main__":
    main()
