"""``python -m benchmarks [--quick | --smoke] [--json FILE] [--only W1,W2...] [--peers NAME,...]``

Prints a Markdown table to stdout (progress goes to stderr) and, with --json, writes every value to FILE.
Exit status 1 when a peer returned a wrong result or crashed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="sizes", const="quick", help="smaller, ≤ 1 minute")
    size.add_argument("--smoke", action="store_const", dest="sizes", const="smoke",
                      help="tiny sizes, 1 round, serial + parallelize + floor only: checks the harness runs")
    size.add_argument("--sizes", choices=("full", "quick", "smoke"), help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--only", metavar="W1,W2", help="workloads to run (W6 = every W6-*)")
    parser.add_argument("--peers", metavar="NAME,...", help="peers to run (names as in the table)")
    parser.add_argument("--n-jobs", type=int, default=2, help="workers per pool (default 2)")
    parser.add_argument("--child-raw", help=argparse.SUPPRESS)  # internal: run one workload, dump raw values
    args = parser.parse_args(argv)
    args.sizes = args.sizes or "full"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.sizes == "smoke":
        os.environ.setdefault("BENCH_W3B_INIT", "0.02")  # before benchmarks.tasks is imported (workers inherit it)
    load_before = os.getloadavg()

    from . import harness, peers, workloads

    sizes = {"full": workloads.FULL, "quick": workloads.QUICK, "smoke": workloads.SMOKE}[args.sizes]
    chosen = workloads.select(args.only)
    everyone = peers.all_peers(args.n_jobs)
    wanted = [name.strip() for name in args.peers.split(",")] if args.peers \
        else peers.SMOKE_PEERS if args.sizes == "smoke" else None
    unknown = [name for name in wanted or () if name not in {peer.name for peer in everyone}]
    if unknown:  # a typo would otherwise run nothing and print an empty table
        raise SystemExit(f"--peers: unknown peer(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(peer.name for peer in everyone)}")
    notes: list[str] = []
    active: list[peers.Peer] = []
    for peer in everyone:
        if wanted is not None and peer.name not in wanted:
            continue
        reason = peer.missing()
        if reason:
            notes.append(reason)
        else:
            active.append(peer)

    raws: list[harness.Raw] = []
    try:
        for cls in chosen:
            raws.append(harness.run_workload(cls, active, sizes, args.n_jobs, in_child=bool(args.child_raw)))
    finally:
        shutdown(active)
    if args.child_raw:
        with open(args.child_raw, "w") as file:
            json.dump([dataclasses.asdict(raw) for raw in raws], file)
        return 0

    meta = harness.machine(args.n_jobs, sizes, load_before)
    meta["load_after"] = [round(x, 2) for x in os.getloadavg()]
    order = [peer.name for peer in active]
    sections = []
    for cls, raw in zip(chosen, raws, strict=True):
        sections.append((cls(sizes, args.n_jobs), harness.rows_of(cls(sizes, args.n_jobs), raw, order)))
    notes += standing_notes()
    print(harness.markdown(meta, sections, notes), end="")
    if args.json:
        document: dict[str, Any] = {"meta": meta, "notes": notes, "workloads": [
            {"id": w.id, "title": w.title, "unit": w.unit, "rows": rows} for w, rows in sections]}
        with open(args.json, "w") as file:
            json.dump(document, file, indent=1)
    failed = [row for _, rows in sections for row in rows if "error" in row]
    for row in failed:
        print(f"FAILED {row['workload']} / {row['peer']}: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


def shutdown(active: list[Any]) -> None:
    """Close the loky executor and every cached decorated pool, then make sure no worker is left behind."""
    from . import harness, peers

    for peer in active:
        if isinstance(peer, (peers.Joblib, peers.Decorated)):
            try:
                peer.prepare()
            except Exception as exc:
                harness.log(f"warning: closing {peer.name}: {exc}")
    harness.reap_children()


def standing_notes() -> list[str]:
    return [
        "W1: ppe (chunksize=1) runs fewer tasks (W1s's count) and its time is scaled to the W1 count.",
        "W3a: fork-based peers get the array through fork (shared_objects for mpire/parallelize, initializer "
        "globals for mp.Pool/ppe/floor: copy-on-write, never pickled); joblib passes it per task (auto memmap). "
        "Passing the whole array per task to a fork pool (~0.1 s pickle per task) is not run.",
        "W5: fresh-page regime MALLOC_MMAP_THRESHOLD_=131072 (every 1 MiB buffer is a new mmap: page faults each "
        "time); buffer-reuse regime MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 (1 MiB "
        "buffers come from the heap and are reused). Setting the threshold also turns off glibc's dynamic "
        "threshold, whose history dependence otherwise makes W5 bimodal. MiB/s counts 1 MiB in + 1 MiB out per "
        "task as 1 MiB.",
        "W6-fresh/W6-cached: median of repeated calls within a round. W6-process: wall time of `python -c` "
        "(interpreter start included). W6-import: the peer's usual import statement (`from parallelize import "
        "parallel`, `from mpire import WorkerPool`, ...), timed inside a fresh interpreter with bytecode cached.",
        "W7: peak of the summed PSS of the pool's processes (psutil, sampled every 20 ms during the W3a map and "
        "once after it, workers still up); pages shared with the parent (the array, and the parent's heap for "
        "fork peers) count for a share only, so absolute numbers depend on what the parent holds.",
    ]


if __name__ == "__main__":
    sys.exit(main())
