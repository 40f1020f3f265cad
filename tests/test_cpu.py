"""cpu_count(): affinity mask and cgroup v1/v2 quotas, against fake cgroup trees in tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parallelize import _cpu
from parallelize._cpu import _cgroup_cpu_limit, _effective_cpu_count, cpu_count

REPO_ROOT = Path(__file__).resolve().parents[1]

V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:4 - cgroup2 cgroup2 rw\n"
V1_MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
    "33 31 0:30 / /sys/fs/cgroup/memory rw,relatime shared:10 - cgroup cgroup rw,memory\n"
)


def write(root: Path, relative: str, content: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def v2_tree(root: Path, cpu_max: str | None, cgroup: str = "/app") -> Path:
    write(root, "proc/self/cgroup", f"0::{cgroup}\n")
    write(root, "proc/self/mountinfo", V2_MOUNTINFO)
    leaf = root / "sys/fs/cgroup" / cgroup.lstrip("/")
    leaf.mkdir(parents=True, exist_ok=True)
    if cpu_max is not None:
        (leaf / "cpu.max").write_text(cpu_max)
    return leaf


def v1_tree(root: Path, quota: str | None, period: str | None, cgroup: str = "/app") -> Path:
    write(root, "proc/self/cgroup", f"4:memory:{cgroup}\n3:cpu,cpuacct:{cgroup}\n")
    write(root, "proc/self/mountinfo", V1_MOUNTINFO)
    leaf = root / "sys/fs/cgroup/cpu,cpuacct" / cgroup.lstrip("/")
    leaf.mkdir(parents=True, exist_ok=True)
    if quota is not None:
        (leaf / "cpu.cfs_quota_us").write_text(quota)
    if period is not None:
        (leaf / "cpu.cfs_period_us").write_text(period)
    return leaf


# --- cgroup v2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("150000 100000\n", 2),  # 1.5 CPUs round up
        ("200000 100000\n", 2),  # an exact multiple stays exact
        ("50000 100000\n", 1),
        ("1 100000\n", 1),
        ("400000 50000\n", 8),
        ("300000\n", 3),  # quota alone: the default 100 ms period
    ],
)
def test_v2_quota_is_rounded_up_to_whole_cpus(tmp_path: Path, cpu_max: str, expected: int) -> None:
    v2_tree(tmp_path, cpu_max)
    assert _cgroup_cpu_limit(tmp_path) == expected


def test_v2_max_means_no_limit(tmp_path: Path) -> None:
    v2_tree(tmp_path, "max 100000\n")
    assert _cgroup_cpu_limit(tmp_path) is None


def test_v2_missing_cpu_max_means_no_limit(tmp_path: Path) -> None:
    v2_tree(tmp_path, None)
    assert _cgroup_cpu_limit(tmp_path) is None


def test_v2_quota_on_an_ancestor_binds_the_leaf(tmp_path: Path) -> None:
    leaf = v2_tree(tmp_path, "max 100000\n", cgroup="/parent/child")
    (leaf.parent / "cpu.max").write_text("250000 100000\n")
    assert _cgroup_cpu_limit(tmp_path) == 3


def test_v2_tightest_level_wins(tmp_path: Path) -> None:
    leaf = v2_tree(tmp_path, "100000 100000\n", cgroup="/parent/child")
    (leaf.parent / "cpu.max").write_text("400000 100000\n")
    assert _cgroup_cpu_limit(tmp_path) == 1


def test_v2_container_with_cgroup_namespace_reads_the_mount_point(tmp_path: Path) -> None:
    v2_tree(tmp_path, "200000 100000\n", cgroup="/")
    assert _cgroup_cpu_limit(tmp_path) == 2


def test_v2_mount_of_own_cgroup_without_namespace(tmp_path: Path) -> None:
    # Docker without a cgroup namespace: /proc/self/cgroup names the host path, and that same
    # directory is what is mounted at /sys/fs/cgroup.
    write(tmp_path, "proc/self/cgroup", "0::/docker/abc123\n")
    write(
        tmp_path,
        "proc/self/mountinfo",
        "30 23 0:26 /docker/abc123 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
    )
    write(tmp_path, "sys/fs/cgroup/cpu.max", "100000 100000\n")
    assert _cgroup_cpu_limit(tmp_path) == 1


def test_v2_mount_point_with_escaped_space(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "proc/self/mountinfo", "30 23 0:26 / /odd\\040place rw - cgroup2 none rw\n")
    write(tmp_path, "odd place/cpu.max", "300000 100000\n")
    assert _cgroup_cpu_limit(tmp_path) == 3


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "\n",
        "lots 100000",
        "100000 zero",
        "100000 0",
        "0 100000",
        "-5 100000",
        "1 2 3",
        "1.5 1",
        "+5 1",
        "1_000 10",
        "\xff\xfe",
        "\u0661\u0662 1",
    ],
)
def test_v2_garbage_cpu_max_means_no_limit(tmp_path: Path, garbage: str) -> None:
    v2_tree(tmp_path, garbage)
    assert _cgroup_cpu_limit(tmp_path) is None


def test_v2_undecodable_cpu_max_means_no_limit(tmp_path: Path) -> None:
    leaf = v2_tree(tmp_path, None)
    (leaf / "cpu.max").write_bytes(b"\xff\xfe\x00 100000")
    assert _cgroup_cpu_limit(tmp_path) is None


def test_cpu_max_that_is_a_directory_means_no_limit(tmp_path: Path) -> None:
    leaf = v2_tree(tmp_path, None)
    (leaf / "cpu.max").mkdir()
    assert _cgroup_cpu_limit(tmp_path) is None


# --- cgroup v1 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [("50000\n", "100000\n", 1), ("150000\n", "100000\n", 2), ("400000\n", "100000\n", 4)],
)
def test_v1_quota_over_period(tmp_path: Path, quota: str, period: str, expected: int) -> None:
    v1_tree(tmp_path, quota, period)
    assert _cgroup_cpu_limit(tmp_path) == expected


def test_v1_minus_one_means_no_limit(tmp_path: Path) -> None:
    v1_tree(tmp_path, "-1\n", "100000\n")
    assert _cgroup_cpu_limit(tmp_path) is None


@pytest.mark.parametrize(("quota", "period"), [(None, "100000"), ("50000", None), (None, None)])
def test_v1_missing_files_mean_no_limit(
    tmp_path: Path, quota: str | None, period: str | None
) -> None:
    v1_tree(tmp_path, quota, period)
    assert _cgroup_cpu_limit(tmp_path) is None


@pytest.mark.parametrize(
    ("quota", "period"),
    [("abc", "100000"), ("50000", "abc"), ("50000", "0"), ("0", "100000"), ("", ""), ("5 5", "1")],
)
def test_v1_garbage_means_no_limit(tmp_path: Path, quota: str, period: str) -> None:
    v1_tree(tmp_path, quota, period)
    assert _cgroup_cpu_limit(tmp_path) is None


def test_v1_quota_on_an_ancestor_binds_the_leaf(tmp_path: Path) -> None:
    leaf = v1_tree(tmp_path, "-1", "100000", cgroup="/kubepods/pod1")
    (leaf.parent / "cpu.cfs_quota_us").write_text("200000\n")
    (leaf.parent / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_limit(tmp_path) == 2


def test_v1_ignores_mounts_without_the_cpu_controller(tmp_path: Path) -> None:
    v1_tree(tmp_path, None, None)
    memory = tmp_path / "sys/fs/cgroup/memory/app"
    memory.mkdir(parents=True)
    (memory / "cpu.cfs_quota_us").write_text("100000\n")
    (memory / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_limit(tmp_path) is None


# --- hybrid, fallbacks, nothing ---------------------------------------------------------------


def test_hybrid_v1_cpu_quota_with_a_v2_unified_mount(tmp_path: Path) -> None:
    v1_tree(tmp_path, "300000", "100000", cgroup="/")
    with (tmp_path / "proc/self/mountinfo").open("a") as f:
        f.write("41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    with (tmp_path / "proc/self/cgroup").open("a") as f:
        f.write("0::/\n")
    (tmp_path / "sys/fs/cgroup/unified").mkdir()
    assert _cgroup_cpu_limit(tmp_path) == 3


def test_both_hierarchies_limited_takes_the_smaller(tmp_path: Path) -> None:
    v1_tree(tmp_path, "300000", "100000", cgroup="/")
    with (tmp_path / "proc/self/mountinfo").open("a") as f:
        f.write("41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    write(tmp_path, "sys/fs/cgroup/unified/cpu.max", "100000 100000")
    assert _cgroup_cpu_limit(tmp_path) == 1


def test_empty_tree_means_no_limit(tmp_path: Path) -> None:
    assert _cgroup_cpu_limit(tmp_path) is None


def test_mountinfo_without_cgroup_mounts_means_no_limit(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "proc/self/mountinfo", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "100000 100000")  # not a cgroup mount: ignored
    assert _cgroup_cpu_limit(tmp_path) is None


@pytest.mark.parametrize(
    "mountinfo",
    ["garbage\n", "1 2 3\n", "- cgroup2\n", "1 2 3 4 - cgroup2 cgroup2 rw\n", "\n\n"],
)
def test_malformed_mountinfo_lines_are_skipped(tmp_path: Path, mountinfo: str) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "proc/self/mountinfo", mountinfo)
    assert _cgroup_cpu_limit(tmp_path) is None


def test_without_mountinfo_falls_back_to_the_v2_unified_layout(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/app\n")
    write(tmp_path, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
    write(tmp_path, "sys/fs/cgroup/app/cpu.max", "250000 100000\n")
    assert _cgroup_cpu_limit(tmp_path) == 3


def test_without_any_proc_files_falls_back_to_the_v1_layout(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "100000\n")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    assert _cgroup_cpu_limit(tmp_path) == 1


def test_garbage_proc_self_cgroup_reads_the_mount_point(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "no colons here\n::\n")
    write(tmp_path, "proc/self/mountinfo", V2_MOUNTINFO)
    write(tmp_path, "sys/fs/cgroup/cpu.max", "200000 100000\n")
    assert _cgroup_cpu_limit(tmp_path) == 2


def test_cgroup_path_escaping_the_mount_is_not_followed(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/../../outside\n")
    write(tmp_path, "proc/self/mountinfo", V2_MOUNTINFO)
    write(tmp_path, "outside/cpu.max", "100000 100000\n")
    assert _cgroup_cpu_limit(tmp_path) is None


@given(quota=st.integers(1, 10**12), period=st.integers(1, 10**7))
def test_quota_rounds_up_exactly(quota: int, period: int) -> None:
    # The exact integer ceiling: float division would be off by one for huge values.
    result = _cpu._quota_to_cpus(quota, period)
    assert result is not None
    assert (result - 1) * period < quota <= result * period


# --- combining ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("affinity", "limit", "expected"),
    [(4, None, 4), (4, 2, 2), (2, 8, 2), (0, None, 1), (3, 0, 1)],
)
def test_effective_count_is_the_minimum_and_at_least_one(
    affinity: int, limit: int | None, expected: int
) -> None:
    assert _effective_cpu_count(affinity, limit) == expected


def test_cpu_count_uses_the_cgroup_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cpu, "_affinity_cpu_count", lambda: 16)
    monkeypatch.setattr(_cpu, "_cgroup_cpu_limit", lambda: 3)
    monkeypatch.setattr(_cpu, "_cgroup_cache", None)
    assert cpu_count() == 3


def test_cgroup_limit_is_read_again_after_its_cache_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = iter([3, 5])
    monkeypatch.setattr(_cpu, "_affinity_cpu_count", lambda: 16)
    monkeypatch.setattr(_cpu, "_cgroup_cpu_limit", lambda: next(limits))
    monkeypatch.setattr(_cpu, "_cgroup_cache", None)
    assert cpu_count() == 3
    assert cpu_count() == 3  # cached: not read again
    monkeypatch.setattr(_cpu, "_CGROUP_TTL_S", 0.0)
    assert cpu_count() == 5


def test_cpu_count_on_this_machine_is_within_the_affinity_mask() -> None:
    count = cpu_count()
    assert isinstance(count, int)
    assert 1 <= count <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert count <= len(os.sched_getaffinity(0))


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) not installed")
def test_taskset_to_one_cpu_gives_one() -> None:
    cpu = min(os.sched_getaffinity(0))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
        ),
    }
    completed = subprocess.run(
        [
            "taskset",
            "-c",
            str(cpu),
            sys.executable,
            "-c",
            "from parallelize._cpu import cpu_count; print(cpu_count())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "1"
