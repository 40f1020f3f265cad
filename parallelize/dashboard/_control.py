"""Starting, connecting and stopping: at most one dashboard per process, started here or connected to."""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from typing import Any, TextIO

from .. import _env, _progress
from .._config import DASHBOARD_KEY_VARIABLE
from .._errors import ConfigError
from .._frames import user_stacklevel
from . import _keys
from ._client import Connection
from ._feed import Feed
from ._registry import Registry
from ._server import Server, is_loopback

MPIRE_PORT_RANGE = range(8080, 8100)

logger = logging.getLogger("parallelize")


class Dashboard:
    """A dashboard served by this process (start()): open ``url`` in a browser. Other processes show their calls
    on it after ``connect_to_dashboard(port, host)``, with ``key`` (found by itself on this machine)."""

    def __init__(self, host: str, port: int, out: TextIO | None) -> None:
        self.registry = Registry()
        self.key = secrets.token_urlsafe(32)
        self._token = secrets.token_urlsafe(32)
        process = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        self._server = Server(self.registry, host, port, self._token, self.key, process)
        self.host = host
        self.port = self._server.port
        shown = socket.gethostname() if host in ("", "0.0.0.0", "::") else host
        self.address = f"http://{f'[{shown}]' if ':' in shown else shown}:{self.port}/"
        self.url = f"{self.address}?token={self._token}"
        self.key_file = None
        try:
            self.key_file = _keys.write(self.port, self.key)
        except OSError as exc:
            logger.warning("parallelize: the dashboard's key could not be stored (%s): processes that connect to it "
                           "need key=dashboard.key or %s", exc, DASHBOARD_KEY_VARIABLE)
        self.feed = Feed(self.registry)
        if out is not None:
            print(f"parallelize dashboard: {self.url}", file=out, flush=True)

    def stop(self) -> None:
        """Stop serving (and forget the calls); the same as dashboard.stop() while this is the process's one."""
        if _active is not None and _active[1] is self:
            stop()
        else:
            self._close()

    def _close(self) -> None:
        self._server.stop()
        _keys.remove(self.port, self.key)

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<parallelize dashboard at {self.address} (the URL with its token is .url)>"


class _Connected:
    """This process connected to a dashboard of another (connect_to_dashboard)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.feed = Feed(connection)

    def _close(self) -> None:
        self.connection.close()


_lock = threading.RLock()
_active: tuple[int, Dashboard | _Connected] | None = None  # with the pid that made it: a forked child has none
_exit_hook = False


def _current() -> Dashboard | _Connected | None:
    return _active[1] if _active is not None and _active[0] == os.getpid() else None


def _activate(what: Dashboard | _Connected) -> None:
    global _active, _exit_hook
    _active = (os.getpid(), what)
    _progress.set_dashboard(what.feed)
    if not _exit_hook:
        atexit.register(stop)  # a connection sends its last records; the server's key file goes
        _exit_hook = True


def start(host: str = "127.0.0.1", port: int = 0) -> Dashboard:
    """Start a dashboard in this process (or return the one running) and print its URL once, on stderr.

    Args:
        host: the address to listen on. Another than 127.0.0.1 is taken only when named, with a warning: anyone
            who can reach it and has the URL sees the calls' arguments and tracebacks.
        port: the port; 0 for a free one.

    Returns:
        The ``Dashboard``: ``url`` (with its token), ``port``, ``stop()``; also a context manager.

    Example:
        ```python
        from parallelize import dashboard

        board = dashboard.start()
        print(board.url)
        ```
    """
    return _start(host, port, sys.stderr)


def _is_port(value: Any, lowest: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lowest <= value <= 65535


def _ports(value: Any) -> list[int]:
    """The port numbers of *value*, a range or a list of them; [] if it is anything else."""
    ports = list(value) if isinstance(value, Iterable) and not isinstance(value, str) else []
    return ports if all(_is_port(port) for port in ports) else []


def _start(host: Any, port: Any, out: TextIO | None) -> Dashboard:
    if not isinstance(host, str):
        raise ConfigError(f"host must be a host name or address, got {host!r}")
    if not _is_port(port, lowest=0):
        raise ConfigError(f"port must be a port number from 0 (any free port) to 65535, got {port!r}")
    with _lock:
        current = _current()
        if isinstance(current, _Connected):
            raise RuntimeError("this process is connected to a dashboard of another process: shutdown_dashboard() "
                               "first to start one here")
        if current is not None:
            if (host, port) not in ((current.host, 0), (current.host, current.port)):
                raise RuntimeError(f"a dashboard runs in this process already, at {current.address}: stop() it "
                                   "first to start one on another address")
            return current
        if not is_loopback(host):
            warnings.warn(f"the parallelize dashboard listens on {host or 'every interface'}: anyone who can reach "
                          "it and has its URL sees the names, arguments and tracebacks of this program's calls",
                          UserWarning, stacklevel=user_stacklevel())
        dashboard = Dashboard(host, port, out)
        _activate(dashboard)
        return dashboard


def start_for_calls() -> _progress.DashboardFeed:
    """The feed of the dashboard a call asks for: the one on, or one started now (PARALLELIZE_DASHBOARD=1, or
    progress_bar_style="dashboard" with none running)."""
    with _lock:
        current = _current()
        return (current if current is not None else start()).feed


def stop() -> None:
    """Stop this process's dashboard, or its connection to another's. Nothing happens when there is neither."""
    global _active
    with _lock:
        current = _current()
        _active = None
        _progress.set_dashboard(None)
    if current is not None:
        current._close()


# --- MPIRE's names ------------------------------------------------------------------------------------------------


def start_dashboard(port_range: Iterable[int] = MPIRE_PORT_RANGE) -> dict[str, Any]:
    """MPIRE's start_dashboard: a dashboard on 127.0.0.1, on the first free port of *port_range*. It answers
    connecting processes on the same port (MPIRE uses a second one), and its URL carries a token."""
    ports = _ports(port_range)
    if not ports:
        raise ConfigError(f"port_range must be port numbers (1 to 65535), such as range(8080, 8100), got "
                          f"{port_range!r}")
    with _lock:
        if _current() is not None:
            raise RuntimeError("You already have a running dashboard")  # MPIRE's error, word for word
        for port in ports:
            try:
                dashboard = start("127.0.0.1", port)
            except OSError:  # taken
                continue
            return {"dashboard_port_nr": dashboard.port, "manager_host": "127.0.0.1",
                    "manager_port_nr": dashboard.port, "url": dashboard.url}
    raise OSError(f"the dashboard found no free port in {port_range!r}")


def connect_to_dashboard(manager_port_nr: int, manager_host: str | bytes | None = None, *,
                         key: str | None = None) -> None:
    """MPIRE's connect_to_dashboard: show this process's calls on the dashboard of another process, served at
    *manager_host* (127.0.0.1 by default) on *manager_port_nr*. It takes them only with its key: *key*, else
    PARALLELIZE_DASHBOARD_KEY, else (a dashboard on this machine) the key file it wrote."""
    if not _is_port(manager_port_nr):
        raise ConfigError(f"manager_port_nr must be a port number (1 to 65535), got {manager_port_nr!r}")
    host = manager_host.decode() if isinstance(manager_host, bytes) else manager_host or "127.0.0.1"
    if key is None:
        key = _env.read(DASHBOARD_KEY_VARIABLE, _env.parse_str)[1]
    if key is None and is_loopback(host):
        key = _keys.read(manager_port_nr)
    if key is None:
        raise PermissionError(f"no key for the dashboard at {host}:{manager_port_nr}: give key=..., or set "
                              f"{DASHBOARD_KEY_VARIABLE}, to the key of that dashboard (its .key attribute, or the "
                              f"file {_keys.key_file(manager_port_nr)} on its machine)")
    with _lock:
        if _current() is not None:
            raise RuntimeError("You're already connected to a running dashboard")  # MPIRE's error, word for word
        try:
            connection = Connection(host, manager_port_nr, key)
        except ConnectionRefusedError as exc:
            raise ConnectionRefusedError(f"could not connect to the dashboard at {host}:{manager_port_nr}") from exc
        _activate(_Connected(connection))


def shutdown_dashboard() -> None:
    """MPIRE's shutdown_dashboard: stop this process's dashboard, or its connection."""
    stop()
