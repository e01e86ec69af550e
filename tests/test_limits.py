"""CPU and memory limits read from fake cgroup trees (v1 and v2), as a container sees them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime_core.limits import cpu_count, cpu_quota, memory_limit

MEM_TOTAL = 8 * 1024**3
AFFINITY = len(os.sched_getaffinity(0))


def tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (path relative to ``root`` -> text) and a ``/proc/meminfo``."""
    files = {"proc/meminfo": f"MemTotal:       {MEM_TOTAL // 1024} kB\nMemFree:  1 kB\n", **files}
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def v2(root: Path, own: str = "/", **folders: dict[str, str]) -> Path:
    """A cgroup v2 tree: ``folders`` maps a cgroup path ("" for the mount) to its files."""
    files = {"proc/self/cgroup": f"0::{own}\n", "sys/fs/cgroup/cgroup.controllers": "cpu memory\n"}
    for folder, contents in folders.items():
        for name, text in contents.items():
            files[f"sys/fs/cgroup/{folder.replace('.', '/')}/{name}".replace("//", "/")] = text
    return tree(root, files)


def test_no_cgroup_files_means_affinity_and_memtotal(tmp_path: Path) -> None:
    root = tree(tmp_path, {})
    assert cpu_quota(root) is None
    assert cpu_count(root) == AFFINITY
    assert memory_limit(root) == MEM_TOTAL


def test_v2_quota_in_a_namespaced_container(tmp_path: Path) -> None:
    root = v2(tmp_path, **{"": {"cpu.max": "50000 100000\n", "memory.max": "536870912\n"}})
    assert cpu_quota(root) == 0.5
    assert cpu_count(root) == 1  # half a core still runs one thread
    assert memory_limit(root) == 512 * 1024**2


def test_v2_smallest_limit_along_the_hierarchy_wins(tmp_path: Path) -> None:
    root = v2(
        tmp_path,
        own="/kubepods/pod1/ctr",
        kubepods={"cpu.max": "max 100000\n", "memory.max": "max\n"},
        **{
            "kubepods.pod1": {"cpu.max": "150000 100000\n", "memory.max": "1073741824\n"},
            "kubepods.pod1.ctr": {"cpu.max": "max 100000\n", "memory.max": "2147483648\n"},
        },
    )
    assert cpu_quota(root) == 1.5
    assert cpu_count(root) == 1  # rounds down: a second thread would be throttled
    assert memory_limit(root) == 1024**3


def test_v2_quota_above_the_affinity_mask_leaves_the_mask(tmp_path: Path) -> None:
    root = v2(tmp_path, **{"": {"cpu.max": f"{(AFFINITY + 6) * 100000} 100000\n", "memory.max": "max\n"}})
    assert cpu_quota(root) == AFFINITY + 6
    assert cpu_count(root) == AFFINITY
    assert memory_limit(root) == MEM_TOTAL  # "max": the machine's memory


def test_v1_cfs_quota_and_memory_limit(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "268435456\n",
        },
    )
    assert cpu_quota(root) == 1.0
    assert cpu_count(root) == 1
    assert memory_limit(root) == 256 * 1024**2


def test_v1_without_limits_is_unlimited(tmp_path: Path) -> None:
    """v1 writes "no limit" as -1 (CPU) and as a huge number (memory)."""
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/\n2:cpu:/\n",
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        },
    )
    assert cpu_quota(root) is None
    assert cpu_count(root) == AFFINITY
    assert memory_limit(root) == MEM_TOTAL


@pytest.mark.parametrize("cpu_max", ["", "garbage\n", "0 100000\n", "50000 0\n", "x y\n"])
def test_unreadable_or_nonsense_files_mean_no_limit(tmp_path: Path, cpu_max: str) -> None:
    root = v2(tmp_path, **{"": {"cpu.max": cpu_max, "memory.max": "lots\n"}})
    assert cpu_quota(root) is None
    assert cpu_count(root) == AFFINITY
    assert memory_limit(root) == MEM_TOTAL


def test_this_machine() -> None:
    """The real files read without error and give usable figures."""
    assert 1 <= cpu_count() <= AFFINITY
    limit = memory_limit()
    assert limit is not None and limit > 0
