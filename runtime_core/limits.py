"""How many CPUs and how much memory this process may use, container limits included.

Inside a container the host's core count and ``MemTotal`` say nothing about what the
process may use: Kubernetes turns a pod's ``resources.limits`` into a cgroup CPU quota
and a cgroup memory limit. Thread caps, the in-flight budget and default sizes are
derived from :func:`cpu_count`; the model memory budget from :func:`memory_limit`.

Both read the cgroup files of this process (v2 ``cpu.max`` and ``memory.max``; v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us`` and ``memory.limit_in_bytes``), in the
process's own cgroup and every ancestor up to the mount point, and the smallest limit
wins. Every function takes ``root``, the folder that stands for ``/``, so that tests
point it at a fake tree. Missing or unreadable files mean "no limit", never an error.

Hand-written rather than a dependency: no maintained library reads both cgroup versions,
and the rules fit in a page (the same ones the JDK and Go's ``automaxprocs`` follow).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

__all__ = ["cpu_count", "cpu_quota", "memory_limit"]

_MOUNT = Path("sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_cgroups(root: Path) -> dict[str, str]:
    """``/proc/self/cgroup`` as {controller: path}; the v2 entry is under the key ``""``."""
    text = _read(root / "proc/self/cgroup") or ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(","):
            found.setdefault(controller, parts[2])
    return found


def _chain(mount: Path, own: str | None) -> list[Path]:
    """The process's cgroup folder under ``mount`` and its ancestors that exist, mount included.

    In a container with a cgroup namespace, ``/proc/self/cgroup`` says ``/`` and the limit
    sits in the mount itself; without one, it names a path below the mount."""
    folders = [mount]
    if own:
        relative = Path(own.lstrip("/"))
        for depth in range(1, len(relative.parts) + 1):
            folder = mount.joinpath(*relative.parts[:depth])
            if folder.is_dir():
                folders.append(folder)
    return folders


def _v1_mount(root: Path, controller: str) -> Path | None:
    base = root / _MOUNT
    for name in (controller, f"{controller},cpuacct", f"cpuacct,{controller}"):
        if (base / name).is_dir():
            return base / name
    return None


def _v2_mount(root: Path) -> Path | None:
    for mount in (root / _MOUNT, root / _MOUNT / "unified"):
        if (mount / "cgroup.controllers").is_file():
            return mount
    return None


def cpu_quota(root: Path | str = "/") -> float | None:
    """The cgroup CPU quota in cores (``1.5`` for ``150000 100000``), or ``None`` if unlimited."""
    root = Path(root)
    own = _own_cgroups(root)
    quotas: list[float] = []
    v2 = _v2_mount(root)
    if v2 is not None:
        for folder in _chain(v2, own.get("")):
            fields = (_read(folder / "cpu.max") or "").split()
            if len(fields) == 2 and fields[0] != "max":
                try:
                    quota, period = int(fields[0]), int(fields[1])
                except ValueError:
                    continue
                if quota > 0 and period > 0:
                    quotas.append(quota / period)
    v1 = _v1_mount(root, "cpu")
    if v1 is not None:
        for folder in _chain(v1, own.get("cpu")):
            try:
                quota = int(_read(folder / "cpu.cfs_quota_us") or "-1")
                period = int(_read(folder / "cpu.cfs_period_us") or "0")
            except ValueError:
                continue
            if quota > 0 and period > 0:  # -1: no quota
                quotas.append(quota / period)
    return min(quotas) if quotas else None


#: ``(monotonic time, cores)`` of the last :func:`cpu_count` of this process's own cgroup.
_cpu_count_cache: tuple[float, int] | None = None
#: Seconds a count of this process's CPUs is reused: each count reads several cgroup files,
#: and every model's pool asks at start (10,000 models: 20,000 counts, issue 23).
CPU_COUNT_TTL = 1.0


def cpu_count(root: Path | str = "/") -> int:
    """CPUs this process may use: the smaller of its affinity mask and its cgroup quota.

    A fractional quota rounds down (at least 1): a thread more than the quota allows gets
    throttled at the end of every CFS period, which shows as latency spikes, not speed.
    The count of this process's own cgroup (``root`` ``/``) is reused for ``CPU_COUNT_TTL``."""
    global _cpu_count_cache
    own = str(root) == "/"
    if own and _cpu_count_cache is not None and time.monotonic() - _cpu_count_cache[0] < CPU_COUNT_TTL:
        return _cpu_count_cache[1]
    cores = _cpu_count(root)
    if own:
        _cpu_count_cache = (time.monotonic(), cores)
    return cores


def _cpu_count(root: Path | str) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota(root)
    if quota is not None:
        cores = min(cores, math.floor(quota + 1e-9))
    return max(1, cores)


def _mem_total(root: Path) -> int | None:
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            try:
                return int(fields[1]) * (1024 if fields[-1].lower() == "kb" else 1)
            except (IndexError, ValueError):
                return None
    return None


def memory_limit(root: Path | str = "/") -> int | None:
    """Bytes of memory this process may use: its cgroup memory limit, or ``MemTotal``,
    whichever is smaller; ``None`` only when neither can be read (not Linux)."""
    root = Path(root)
    own = _own_cgroups(root)
    limits: list[int] = []
    v2 = _v2_mount(root)
    if v2 is not None:
        for folder in _chain(v2, own.get("")):
            value = _read(folder / "memory.max")
            if value and value != "max" and value.isdigit():
                limits.append(int(value))
    v1 = _v1_mount(root, "memory")
    if v1 is not None:
        for folder in _chain(v1, own.get("memory")):
            value = _read(folder / "memory.limit_in_bytes")
            if value and value.isdigit():  # "no limit" is a huge number; MemTotal caps it
                limits.append(int(value))
    total = _mem_total(root)
    if total is not None:
        limits.append(total)
    return min(limits) if limits else None
