"""The ``parallelize-dashboard`` command: a dashboard of its own, which other processes connect to.

Unlike a dashboard started inside a program, it outlives the programs it shows: their finished calls stay on
the page after they exit.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from . import _control


def _port_range(text: str) -> range:
    """MPIRE's --port-range A-B: the ports from A up to B, B excluded."""
    first, _, last = text.partition("-")
    try:
        ports = range(int(first), int(last))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two port numbers as A-B, such as 8080-8100, got {text!r}") from None
    if not ports:
        raise argparse.ArgumentTypeError(f"the range {text!r} holds no port")
    return ports


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="parallelize-dashboard",
        description="Serve a parallelize dashboard that other processes show their calls on, after "
                    "parallelize.dashboard.connect_to_dashboard(PORT). Stop it with Ctrl-C.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only; another one warns)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, default=0, help="the port (default: a free one)")
    where.add_argument("--port-range", type=_port_range, help="the first free port of A-B, as MPIRE's command")
    args = parser.parse_args(argv)
    stopped = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopped.set()

    # Before the URL is printed: whoever reads it may stop the command at once.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    failure: OSError | None = None
    for port in args.port_range if args.port_range is not None else [args.port]:
        try:
            dashboard = _control._start(args.host, port, sys.stdout)
            break
        except OSError as exc:  # taken: the next port of the range
            failure = exc
    else:
        print(f"parallelize-dashboard: cannot listen on {args.host}: {failure}", file=sys.stderr)
        return 1
    print("Other processes show their calls here after:\n"
          "    from parallelize.dashboard import connect_to_dashboard\n"
          f"    connect_to_dashboard({dashboard.port}{'' if args.host == '127.0.0.1' else f', {args.host!r}'})",
          flush=True)
    if dashboard.key_file is not None:
        print(f"They read its key from {dashboard.key_file}; elsewhere, give them its content as "
              "PARALLELIZE_DASHBOARD_KEY.", flush=True)
    stopped.wait()
    dashboard.stop()
    return 0
