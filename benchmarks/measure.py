"""Process-tree measurements from /proc: CPU time, PSS, and start-to-ready time.

* CPU: ``utime + stime`` of every process in the tree rooted at a pid, read
  from ``/proc/PID/stat``. :func:`cpu_snapshot` returns per-process times keyed
  by ``(pid, starttime)`` so a reused pid is never mistaken for the same
  process; :func:`cpu_delta` sums the per-process deltas of the processes alive
  at both ends of the window (a process that starts or exits inside the window
  is not counted -- the benchmarks do not restart workers, so nothing is lost).
* Idle CPU: the kernel's run time in nanoseconds of every thread of the tree, from
  ``/proc/PID/task/TID/schedstat`` (:class:`RunTimeWindow`). ``/proc/PID/stat`` counts in
  clock ticks of 10 ms, too coarse for a server that should use under 1 % of a core;
  schedstat is exact. A thread that exits inside the window loses its time (an idle
  server starts none).
* Memory: ``Pss`` of every process of the tree from ``/proc/PID/smaps_rollup``.
  PSS splits each shared page among the processes that map it, so the sum over
  the tree is the tree's real share of RAM (copy-on-write pages counted once).
* Start-to-ready: wall time from spawning a server to the first 200 on
  ``GET /v2/health/ready`` (the same route on runtime-core and MLServer).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ProcKey = tuple[int, int]  # (pid, starttime in ticks since boot)


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    starttime: int
    cpu_ticks: int  # utime + stime


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime 15, starttime 22 (1-based).
    return ProcStat(
        pid=pid,
        state=fields[0],
        ppid=int(fields[1]),
        starttime=int(fields[19]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
    )


def _all_stats() -> list[ProcStat]:
    stats = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                stats.append(stat)
    return stats


def tree_stats(root: int) -> list[ProcStat]:
    """The process ``root`` and all its descendants alive now."""
    stats = _all_stats()
    children: dict[int, list[ProcStat]] = {}
    by_pid = {s.pid: s for s in stats}
    for s in stats:
        children.setdefault(s.ppid, []).append(s)
    if root not in by_pid:
        return []
    out, todo = [], [by_pid[root]]
    while todo:
        s = todo.pop()
        out.append(s)
        todo.extend(children.get(s.pid, []))
    return out


def tree_pids(root: int) -> list[int]:
    return [s.pid for s in tree_stats(root)]


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def cpu_snapshot(root: int) -> dict[ProcKey, int]:
    """CPU ticks of every process of the tree, keyed by (pid, starttime)."""
    return {(s.pid, s.starttime): s.cpu_ticks for s in tree_stats(root)}


def cpu_delta(before: dict[ProcKey, int], after: dict[ProcKey, int], only: Iterable[int] | None = None) -> float:
    """CPU seconds used between two snapshots by the processes alive at the end (optionally
    only the pids in ``only``). A process born between the snapshots (a worker started on
    demand) used all of its CPU inside the window, so it counts whole."""
    wanted = None if only is None else set(only)
    ticks = 0
    for key, end in after.items():
        if wanted is None or key[0] in wanted:
            ticks += end - before.get(key, 0)
    return ticks / CLOCK_TICKS


def _task_run_ns(pid: int) -> dict[tuple[int, int], int]:
    """Run time (ns, on a CPU) of every thread of ``pid``, keyed by (pid, tid)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                out[(pid, int(tid))] = int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return out


def run_ns_snapshot(root: int) -> dict[tuple[int, int, int], int]:
    """Run time (ns) of every thread of the tree, keyed by (pid, starttime, tid)."""
    out = {}
    for s in tree_stats(root):
        for (pid, tid), ns in _task_run_ns(s.pid).items():
            out[(pid, s.starttime, tid)] = ns
    return out


@dataclass(slots=True)
class RunTimeWindow:
    """Nanosecond CPU of a process tree across a window (every thread of every process).

    ``seconds`` counts the threads alive at the end (a thread born inside the window counts
    whole); ``by_process`` splits it by pid, for finding what still runs in an idle server."""

    root: int
    seconds: float = 0.0
    wall: float = 0.0
    by_process: dict[int, float] | None = None
    _before: dict[tuple[int, int, int], int] | None = None
    _t0: float = 0.0

    def __enter__(self) -> RunTimeWindow:
        self._before = run_ns_snapshot(self.root)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        after = run_ns_snapshot(self.root)
        self.wall = time.perf_counter() - self._t0
        assert self._before is not None
        by_process: dict[int, float] = {}
        for key, end in after.items():
            by_process[key[0]] = by_process.get(key[0], 0.0) + (end - self._before.get(key, 0)) / 1e9
        self.by_process = by_process
        self.seconds = sum(by_process.values())


def pss_mib(pids: Iterable[int]) -> float:
    """Sum of PSS over ``pids``, in MiB (processes that vanished count 0)."""
    total_kib = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total_kib += int(line.split()[1])
                        break
        except OSError:
            continue
    return total_kib / 1024


def tree_pss_mib(root: int) -> float:
    return pss_mib(tree_pids(root))


def pool_state(base_url: str, model: str) -> dict[str, Any] | None:
    """Where runtime-core runs ``model`` now and its pool's elastic moves so far
    (``placement``, ``decisions`` of ``/status.json``), or None where the server has no such page."""
    try:
        with urllib.request.urlopen(f"{base_url}/status.json?model={model}", timeout=5) as resp:
            rows = json.loads(resp.read())["models"]
    except (OSError, ValueError, KeyError):
        return None
    row = next((m for m in rows if m.get("name") == model), None)
    if row is None or "placement" not in row:
        return None
    return {"placement": row["placement"], "decisions": row["decisions"] or {}, "workers": row["workers"]}


def state_change(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """One line: the state at the end of a window, and the moves made during it."""
    if after is None:
        return "-"
    workers = after.get("workers") or {}
    if after["placement"] is None:  # parallel_workers 0: no pool of processes to choose
        return "main process"
    text = f"{after['placement']} ({workers.get('ready', 0)}/{workers.get('total', 0)} workers)"
    old = (before or {}).get("decisions", {})
    moves = {k: v - old.get(k, 0) for k, v in after["decisions"].items() if v - old.get(k, 0)}
    return text + ("; " + ", ".join(f"{k} {v}" for k, v in sorted(moves.items())) if moves else "; settled")


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status of a GET to ``url``, or None if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (OSError, ValueError):
        return None


def wait_ready(url: str, started: float, timeout: float, alive: Callable[[], bool], interval: float = 0.02) -> float:
    """Poll ``url`` until it answers 200; returns seconds since ``started`` (a perf_counter value).

    ``alive`` is checked between polls so a server that dies fails fast."""
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if http_status(url, timeout=1.0) == 200:
            return time.perf_counter() - started
        if not alive():
            raise RuntimeError(f"server exited before {url} answered 200")
        time.sleep(interval)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def machine_times() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS, idle / CLOCK_TICKS


@dataclass(slots=True)
class CpuWindow:
    """CPU of a process tree across a window: ``with`` it around the measured load."""

    root: int
    seconds: float = 0.0  # CPU seconds of the whole tree
    root_seconds: float = 0.0  # CPU seconds of the root process alone (the server's main process)
    wall: float = 0.0
    machine_busy: float = 0.0  # CPU seconds of every process on the machine (the load generators too)
    machine_idle: float = 0.0
    before: dict[ProcKey, int] | None = None
    after: dict[ProcKey, int] | None = None
    _t0: float = 0.0
    _machine: tuple[float, float] = (0.0, 0.0)

    def __enter__(self) -> CpuWindow:
        self.before = cpu_snapshot(self.root)
        self._machine = machine_times()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.after = cpu_snapshot(self.root)
        self.wall = time.perf_counter() - self._t0
        busy, idle = machine_times()
        self.machine_busy, self.machine_idle = busy - self._machine[0], idle - self._machine[1]
        assert self.before is not None
        self.seconds = cpu_delta(self.before, self.after)
        self.root_seconds = cpu_delta(self.before, self.after, only=[self.root])
