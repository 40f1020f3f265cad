"""The key connected processes authenticate with, kept in a file only this user may read.

So connect_to_dashboard(port) finds the key of a dashboard on this machine by itself, as MPIRE's needs nothing but
the port; a process elsewhere is given it (key=..., or PARALLELIZE_DASHBOARD_KEY).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def key_dir() -> Path:
    """$XDG_RUNTIME_DIR/parallelize-dashboard (a per-user directory emptied at logout), else under ~/.cache."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "parallelize-dashboard"


def key_file(port: int) -> Path:
    return key_dir() / f"{port}.key"


def write(port: int, key: str) -> Path:
    """Store *key* for the dashboard on *port*: readable by this user alone, replaced whole (never half-written)."""
    directory = key_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{directory} must be yours and closed to others (chmod 700) to hold a dashboard's key")
    path = key_file(port)
    partial = directory / f".{port}.{os.getpid()}.partial"
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.write(key)
    os.replace(partial, path)
    return path


def read(port: int) -> str | None:
    try:
        return key_file(port).read_text().strip() or None
    except FileNotFoundError:
        return None


def remove(port: int, key: str) -> None:
    """Remove the file of *port* if it still holds *key* (another dashboard may have taken the port since)."""
    if read(port) == key:
        with contextlib.suppress(FileNotFoundError):
            key_file(port).unlink()
