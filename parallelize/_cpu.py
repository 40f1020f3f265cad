"""How many CPUs this process may really use: affinity and cgroup quota aware.

Sits before the data path: configuration resolves a default or ``n_jobs=-1`` through
:func:`cpu_count` before any pool exists. It only reads ``/proc`` and ``/sys``. The affinity
mask is read on every call; the cgroup quota is cached for a few seconds per process (a forked child reads its
own), because quotas rarely change while a process runs and reading them costs a dozen file reads.

``os.cpu_count()`` reports the machine's CPUs. A container limited by a CFS quota (``docker
--cpus=2``) or a process pinned with ``taskset`` gets far fewer, and starting one worker per machine
CPU there only adds context switches. The answer here is the smallest of:

- the CPUs in the affinity mask (``os.sched_getaffinity``);
- the cgroup v2 quota, ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``);
- the cgroup v1 quota, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (``-1`` means none);

each quota rounded up (1.5 CPUs -> 2), and never less than 1. A quota set on an ancestor cgroup
binds its descendants too, so every level from this process's cgroup up to the mount is read.
Cgroup directories are found from ``/proc/self/cgroup`` and ``/proc/self/mountinfo``, falling
back to the usual ``/sys/fs/cgroup`` layout when ``mountinfo`` cannot be read. Anything missing or
unparsable counts as "no limit": this function never raises.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path, PurePosixPath
from typing import NamedTuple

__all__ = ["cpu_count"]

# The kernel's default CFS period, used when cpu.max holds a quota alone.
_DEFAULT_PERIOD_US = 100_000

_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")
_INTEGER = re.compile(r"-?[0-9]+")


class _Membership(NamedTuple):
    """One line of /proc/self/cgroup: ``hierarchy-id:controller,list:/path``."""

    hierarchy_id: str
    controllers: frozenset[str]
    path: str


class _Mount(NamedTuple):
    """A cgroup filesystem mount from /proc/self/mountinfo."""

    root: str  # the directory of the hierarchy that is mounted (field 4)
    mount_point: str  # where it is mounted (field 5)
    fstype: str  # "cgroup2" or "cgroup"
    super_options: frozenset[str]  # for cgroup v1 these name the controllers


_CGROUP_TTL_S = 5.0
_cgroup_cache: tuple[int, float, int | None] | None = None  # (pid, read at, limit)


def cpu_count() -> int:
    """The number of CPUs this process can use, at least 1: what ``n_jobs=None`` means.

    The smaller of the CPUs in this process's affinity mask (read on every call) and its cgroup v1 or v2 CPU
    quota, rounded up (re-read at most every 5 seconds). A container limited to 2 CPUs gets 2, not the host's
    count that ``os.cpu_count()`` gives.

    Returns:
        The number of usable CPUs.
    """
    return _effective_cpu_count(_affinity_cpu_count(), _cached_cgroup_cpu_limit())


def _cached_cgroup_cpu_limit() -> int | None:
    """The cgroup quota, re-read at most every few seconds: it is a dozen file reads, and every call of a
    decorated function asks. The affinity mask, one cheap system call, is always read fresh."""
    global _cgroup_cache
    now = time.monotonic()
    cached = _cgroup_cache
    if cached is not None and cached[0] == os.getpid() and now - cached[1] < _CGROUP_TTL_S:
        return cached[2]
    limit = _cgroup_cpu_limit()
    _cgroup_cache = (os.getpid(), now, limit)
    return limit


def _effective_cpu_count(affinity: int, cgroup_limit: int | None) -> int:
    count = affinity if cgroup_limit is None else min(affinity, cgroup_limit)
    return max(1, count)


def _affinity_cpu_count() -> int:
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # AttributeError: no sched_getaffinity (macOS, Windows)
        allowed = 0
    return allowed or os.cpu_count() or 1


def _cgroup_cpu_limit(root: str | os.PathLike[str] = "/") -> int | None:
    """Return the tightest cgroup CPU quota, rounded up to whole CPUs, or None if there is none.

    ``root`` stands for the filesystem root, so tests can point it at a fake tree holding
    ``proc/self/cgroup``, ``proc/self/mountinfo`` and ``sys/fs/cgroup/...``.
    """
    base = Path(root)
    memberships = _read_memberships(base / "proc/self/cgroup")
    mounts = _read_cgroup_mounts(base / "proc/self/mountinfo")
    if mounts is None:
        mounts = _fallback_mounts(base)

    v2_path = next((m.path for m in memberships if m.hierarchy_id == "0"), "/")
    v1_path = next((m.path for m in memberships if "cpu" in m.controllers), "/")

    limits: list[int] = []
    for mount in mounts:
        if mount.fstype == "cgroup2":
            reader, cgroup_path = _read_v2_limit, v2_path
        elif "cpu" in mount.super_options:
            reader, cgroup_path = _read_v1_limit, v1_path
        else:
            continue
        for directory in _cgroup_dirs(base, mount, cgroup_path):
            limit = reader(directory)
            if limit is not None:
                limits.append(limit)
    return min(limits, default=None)


def _read_memberships(path: Path) -> list[_Membership]:
    text = _read_text(path)
    if text is None:
        return []
    memberships = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy_id, controllers, cgroup_path = parts
        memberships.append(
            _Membership(hierarchy_id, frozenset(filter(None, controllers.split(","))), cgroup_path)
        )
    return memberships


def _read_cgroup_mounts(path: Path) -> list[_Mount] | None:
    """Parse cgroup mounts from a mountinfo file; None if the file cannot be read."""
    text = _read_text(path)
    if text is None:
        return None
    mounts = []
    for line in text.splitlines():
        # "36 35 98:0 /root /mount/point rw,noatime shared:1 - cgroup2 cgroup2 rw"
        # Optional fields (shared:1 ...) vary in number; " - " ends them.
        fields = line.split()
        try:
            separator = fields.index("-")
        except ValueError:
            continue
        before, after = fields[:separator], fields[separator + 1 :]
        if len(before) < 5 or not after or after[0] not in ("cgroup", "cgroup2"):
            continue
        super_options = after[-1].split(",") if len(after) >= 2 else []
        mounts.append(
            _Mount(
                root=_unescape(before[3]),
                mount_point=_unescape(before[4]),
                fstype=after[0],
                super_options=frozenset(super_options),
            )
        )
    return mounts


def _fallback_mounts(base: Path) -> list[_Mount]:
    """The usual layouts, for when mountinfo is unreadable: v2 unified or v1 per-controller."""
    mounts = []
    if (base / "sys/fs/cgroup/cgroup.controllers").is_file():
        mounts.append(_Mount("/", "/sys/fs/cgroup", "cgroup2", frozenset()))
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (base / "sys/fs/cgroup" / name).is_dir():
            mounts.append(_Mount("/", f"/sys/fs/cgroup/{name}", "cgroup", frozenset({"cpu"})))
            break
    return mounts


def _cgroup_dirs(base: Path, mount: _Mount, cgroup_path: str) -> list[Path]:
    """This process's cgroup directory under ``mount`` and each ancestor up to the mount point."""
    mount_dir = base / mount.mount_point.lstrip("/")
    relative = _relative_to_mount_root(cgroup_path, mount.root)
    dirs = [mount_dir]
    current = mount_dir
    for part in relative.parts:
        current = current / part
        dirs.append(current)
    return dirs


def _relative_to_mount_root(cgroup_path: str, mount_root: str) -> PurePosixPath:
    path = PurePosixPath(cgroup_path)
    root = PurePosixPath(mount_root)
    if not path.is_absolute() or ".." in path.parts:
        return PurePosixPath()
    try:
        return path.relative_to(root)
    except ValueError:
        # The mount shows another part of the hierarchy (e.g. a container's own cgroup without a
        # cgroup namespace): only the mount point itself can be read.
        return PurePosixPath()


def _read_v2_limit(directory: Path) -> int | None:
    text = _read_text(directory / "cpu.max")
    if text is None:
        return None
    parts = text.split()
    if len(parts) not in (1, 2) or parts[0] == "max":
        return None
    quota = _parse_int(parts[0])
    period = _parse_int(parts[1]) if len(parts) == 2 else _DEFAULT_PERIOD_US
    return _quota_to_cpus(quota, period)


def _read_v1_limit(directory: Path) -> int | None:
    quota_text = _read_text(directory / "cpu.cfs_quota_us")
    if quota_text is None:
        return None
    quota = _parse_int(quota_text.strip())
    if quota is None or quota < 0:  # -1: no quota
        return None
    period_text = _read_text(directory / "cpu.cfs_period_us")
    period = None if period_text is None else _parse_int(period_text.strip())
    return _quota_to_cpus(quota, period)


def _quota_to_cpus(quota: int | None, period: int | None) -> int | None:
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None
    return -(-quota // period)  # integer ceiling: no float rounding on exact multiples


def _parse_int(text: str) -> int | None:
    # Stricter than int(), which also takes "1_000", "+5" and non-ASCII digits.
    return int(text) if _INTEGER.fullmatch(text) else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space, ``\\134`` for a backslash)."""
    return _MOUNTINFO_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)
