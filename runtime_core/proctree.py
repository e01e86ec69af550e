"""ProcessTree: CPU and memory of the server's whole process tree, for the status page.

Read from ``/proc`` (Linux) when asked, never on a timer: nothing runs in the background and
nothing needs cancelling. A sample is kept for a second, so however many pages poll, the tree
is read at most once a second.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


class ProcessTree:
    """CPU and memory of this process and all its descendants, read from ``/proc`` (Linux).

    Memory is the proportional set size (shared pages split among the processes that
    share them, so forked workers are not counted many times over) where the kernel
    offers it, else the resident set size.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._last: tuple[float, dict[int, int]] | None = None
        self._cached: tuple[float, dict[str, Any]] | None = None

    @staticmethod
    def _stat(pid: str) -> tuple[int, int, int, int] | None:
        """(parent pid, CPU ticks, resident pages, start in ticks after boot) of one process,
        or None if it is gone."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        fields = raw[raw.rfind(b")") + 2 :].split()  # the command name may hold spaces
        return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21]), int(fields[19])

    def _since_start(self, root: tuple[int, int, int, int], ticks: int) -> float | None:
        """Cores used on average since the root process started (the first sample has no
        previous one to compare with)."""
        try:
            with open("/proc/uptime", "rb") as f:
                uptime = float(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        alive = uptime - root[3] / self._ticks
        return ticks / self._ticks / alive if alive > 0 else None

    @staticmethod
    def _pss(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def sample(self) -> dict[str, Any]:
        """``{"processes", "cpu_cores", "memory_bytes"}``. ``cpu_cores`` covers the time since the
        previous sample (the first: since the server started)."""
        now = self._clock()
        if self._cached is not None and now - self._cached[0] < 1.0:
            return self._cached[1]
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
        except OSError:  # pragma: no cover - not Linux
            return {"processes": 0, "cpu_cores": None, "memory_bytes": None}
        stats = {int(p): s for p in pids if (s := self._stat(p)) is not None}
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_) in stats.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            if pid in stats:
                tree.append(pid)
                todo.extend(children.get(pid, ()))
        ticks = {pid: stats[pid][1] for pid in tree}
        memory = 0
        for pid in tree:
            pss = self._pss(pid)
            memory += pss if pss is not None else stats[pid][2] * self._page
        cpu = None
        if self._last is None and os.getpid() in stats:
            cpu = self._since_start(stats[os.getpid()], sum(ticks.values()))
        elif self._last is not None and now > self._last[0]:
            before = self._last[1]
            used = sum(t - before.get(pid, t) for pid, t in ticks.items())  # new processes: from now on
            cpu = max(0.0, used / self._ticks / (now - self._last[0]))
        self._last = (now, ticks)
        out = {"processes": len(tree), "cpu_cores": cpu, "memory_bytes": memory}
        self._cached = (now, out)
        return out
