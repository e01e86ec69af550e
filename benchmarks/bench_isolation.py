"""Isolation at moderate load: does a busy or a sleeping model slow a light one down?

One server holds three models (issue 20): ``light`` and ``heavy`` with ``parallel_workers: 2``
each, as in bench_fairness, and ``sleepy`` (every call sleeps 1 s, no CPU; see
``sleepy.py``), everything else default, so that all three start on their runtime's shared
host. Phases, each W s warm-up + D s window, in this order:

1. light alone, open loop at ``--light-rate`` req/s (latency from each request's scheduled
   start, so a stall is charged to every request queued behind it); then the machine's floor:
   light beside one busy loop per CPU at ``SCHED_IDLE`` that belongs to no server (pure CPU,
   no I/O). No server can do better beside a model that keeps every core busy, so the ratio of
   this phase to light alone is what the machine itself costs the probe;
2. for each N of ``--sleepy-clients`` (1, 2): light (open loop) + sleepy, closed loop at N
   clients, so that the sleeping model always has a call in flight. These come first, so
   that sleepy's first call finds light on the shared host (``--heavy-first`` swaps 2 and 3);
3. for each C of ``--heavy-concurrency`` (2, 4, 16): heavy alone, closed loop at C; then light
   (open loop) + heavy at C; then heavy alone again: light p99 / light-alone p99, and heavy
   req/s / the mean of the two heavy-alone phases around it (so that a drift of the machine
   during the three phases does not count as light's doing).

The warm-ups are kept (a model moves in the first one after a change of load), and their
light p99 reported beside the window's.

Per phase: light p50/p99, heavy or sleepy req/s and latency, errors, CPU of the server's
process tree, the machine's load averages and its steal time (a virtual machine's CPUs taken
by the hypervisor, from ``/proc/stat``). For runtime-core also the state that was
measured: the server's processes by kernel name (``/proc/PID/comm``) at the start and at the
end of each window -- ``rc-h:<runtime>`` hosts, ``rc-w<i>:<model>`` dedicated workers -- the
CPU of each of those groups, the share of samples (every 0.5 s) in which each group ran at
``SCHED_IDLE``, and the server's log lines about hosts and workers.

The same phases run against MLServer 1.7.1 (``--mlserver-configs``): its default, one shared
pool with ``parallel_workers: 1`` (``shared:1``), and one pool per model
(``parameters.inference_pool_gid``) with ``parallel_workers: 2`` (``pool:2``). The folder of
this file is put on the ``PYTHONPATH`` of both servers, so that their processes can unpickle
the ``sleepy`` model.

Results: ``benchmarks/results/isolation-*.{json,md}``.

Examples::

    python benchmarks/bench_isolation.py            # full run (~7 min with MLServer)
    python benchmarks/bench_isolation.py --quick --no-mlserver
    python benchmarks/bench_isolation.py --heavy-concurrency 2 --sleepy-clients 1 --mlserver-configs pool:2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import models
from common import HERE, environment, fmt, infer_url, progress, publish, table, verdict, windowed
from loadgen import ClosedLoop, Load, LoadResult, OpenLoop, run_loads
from measure import ProcKey, cpu_delta, tree_stats
from servers import MLServerServer, RuntimeCoreServer, mlserver_available

MODELS = ("light", "heavy", "sleepy")
#: Log lines of runtime-core's about where models run (kept per phase as evidence).
LOG_WORDS = re.compile(r"moved|stall|sibling|host|worker|WARNING|ERROR", re.IGNORECASE)
P99_LIMIT = 2.0  # light p99 at most this many times its p99 alone
HEAVY_FLOOR = 0.9  # heavy req/s at least this share of heavy alone at the same C


def _with_benchmarks_path(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this folder first on PYTHONPATH: the servers unpickle ``sleepy.Sleepy``."""
    rest = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(HERE) + (os.pathsep + rest if rest else "")
    return env


class RuntimeCore(RuntimeCoreServer):
    def environment(self) -> dict[str, str]:
        return _with_benchmarks_path(super().environment())


class MLServer(MLServerServer):
    def environment(self) -> dict[str, str]:
        return _with_benchmarks_path(super().environment())


# --------------------------------------------------------------------------- server state


def read_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def role(comm: str) -> str:
    """The group of a runtime-core process by its kernel name: ``host`` (``rc-h:<runtime>``),
    ``w:<model>`` (``rc-w<i>:<model>``, cut to 15 bytes), ``root`` (``rc-root``) or ``main``."""
    head, _, rest = comm.partition(":")
    if head == "rc-h":
        return "host"
    if head.startswith("rc-w") and head[4:].isdigit():
        return f"w:{rest}"
    if comm == "rc-root":
        return "root"
    return "main"


def census(root: int) -> dict[str, Any]:
    """The server's processes now: how many hosts, how many dedicated workers per model."""
    comms = [read_comm(s.pid) for s in tree_stats(root)]
    roles = Counter(role(c) for c in comms if c)
    return {
        "hosts": roles.get("host", 0),
        "workers": {k[2:]: n for k, n in sorted(roles.items()) if k.startswith("w:")},
        "processes": len(comms),
        "names": sorted(c for c in comms if c.startswith("rc-")),
    }


def state_text(state: dict[str, Any] | None) -> str:
    """``2 hosts; heavy 2w, sleepy 1w`` for a census."""
    if not state:
        return "-"
    workers = ", ".join(f"{m} {n}w" for m, n in state["workers"].items()) or "no workers"
    return f"{state['hosts']} host{'s' if state['hosts'] != 1 else ''}; {workers}"


def cpu_by_role(before: dict[ProcKey, int], after: dict[ProcKey, int], comms: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid, comm in comms.items():
        key = role(comm) if comm else "gone"
        out[key] = out.get(key, 0.0) + cpu_delta(before, after, only=[pid])
    return out


def sched_policy(pid: int) -> int | None:
    """The scheduling policy of ``pid`` (field 41 of ``/proc/PID/stat``): 0 normal, 5 idle."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[38])


class PrioritySampler:
    """Samples, every ``interval`` s of a window, which of the server's hosts and workers run
    at ``SCHED_IDLE`` (runtime-core's ``cpu_priority`` puts a saturated model's workers there
    while another model has work within its means): the share of samples per process group."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self.root, self.interval = root, interval
        self.samples: Counter[str] = Counter()
        self.idle: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="priority-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for s in tree_stats(self.root):
                group = role(read_comm(s.pid))
                if group in ("main", "root"):
                    continue
                policy = sched_policy(s.pid)
                if policy is not None:
                    self.samples[group] += 1
                    self.idle[group] += policy == os.SCHED_IDLE

    def stop(self) -> dict[str, float]:
        """Per group (``host``, ``w:<model>``): the share of process samples at SCHED_IDLE."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return {g: self.idle[g] / n for g, n in sorted(self.samples.items()) if n}


def idle_text(shares: dict[str, float] | None) -> str:
    if not shares:
        return "-"
    return ", ".join(f"{g.removeprefix('w:')} {100 * v:.0f}%" for g, v in shares.items())


class LogFollower:
    """New lines of a server's log since the last call (those that say where models run)."""

    def __init__(self, path: str) -> None:
        self.path, self.offset = path, 0

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        lines = data.decode(errors="replace").splitlines()
        return [ln for ln in lines if LOG_WORDS.search(ln)][-60:]


#: The floor's CPU hogs: a busy loop at SCHED_IDLE, the lowest priority Linux has.
_IDLE_HOG = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True:\n    pass\n"


class IdleHogs:
    """One busy loop per CPU at ``SCHED_IDLE``, for the machine-floor phase."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> IdleHogs:
        cmd = [sys.executable, "-c", _IDLE_HOG]
        self._procs = [subprocess.Popen(cmd) for _ in range(os.cpu_count() or 1)]
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.wait()


def steal_ticks() -> int:
    """The machine's steal time so far, in clock ticks (0 where the kernel does not count it)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) if len(fields) > 8 else 0


def load_averages() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


# --------------------------------------------------------------------------- phases


def isolation_phases(server: Any, args: argparse.Namespace, runtime_core: bool) -> dict[str, Any]:
    url, root = server.url, server.pid
    bodies = {name: models.request_body(name) for name in MODELS}
    log = LogFollower(server._log.name) if runtime_core else None
    if log is not None:
        log.new_lines()  # start-up lines are not a phase's

    def light(d: float) -> Load:
        return OpenLoop(infer_url(url, "light"), bodies["light"], rate=args.light_rate, duration=d)

    def closed(name: str, clients: int, d: float) -> Load:
        return ClosedLoop(infer_url(url, name), bodies[name], concurrency=clients, duration=d)

    phases: dict[str, Any] = {}

    def run(label: str, loads: list[tuple[str, Any]], around: Any = None) -> dict[str, LoadResult]:
        with around or contextlib.nullcontext():
            return measure(label, loads)

    def measure(label: str, loads: list[tuple[str, Any]]) -> dict[str, LoadResult]:
        start: dict[str, Any] = {}
        sampler = PrioritySampler(root) if runtime_core else None

        def make(d: float) -> list[Load]:
            if runtime_core:  # just before the window: the state it starts in
                start["state"] = census(root)
                if sampler is not None:
                    sampler.start()
            return [factory(d) for _, factory in loads]

        # The warm-up is kept, not discarded: where a model first moves (a stall, a first
        # worker), the move happens in it, and its light p99 is what the move cost.
        before_warmup = census(root) if runtime_core else None
        warm = run_loads([factory(args.warmup) for _, factory in loads]) if args.warmup > 0 else []
        steal_before = steal_ticks()
        try:
            results, cpu = windowed(make, root, 0, args.duration)
        finally:
            idle = sampler.stop() if sampler is not None else None
        steal = (steal_ticks() - steal_before) / os.sysconf("SC_CLK_TCK")
        by_model = {name: r for (name, _), r in zip(loads, results, strict=True)}
        phase: dict[str, Any] = {
            "results": {name: r.as_dict() for name, r in by_model.items()},
            "server_cpu_cores": cpu.seconds / cpu.wall if cpu.wall else float("nan"),
            "machine_busy_cores": cpu.machine_busy / cpu.wall if cpu.wall else float("nan"),
            "steal_share": steal / (cpu.wall * (os.cpu_count() or 1)) if cpu.wall else float("nan"),
            "loadavg": load_averages(),
            "errors": sum(r.errors for r in results),
            "warmup": {name: r.as_dict() for (name, _), r in zip(loads, warm, strict=False)},
        }
        if runtime_core:
            assert cpu.before is not None and cpu.after is not None
            comms = {pid: read_comm(pid) for pid, _ in cpu.after}
            phase["state_before_warmup"] = before_warmup
            phase["state_start"] = start.get("state")
            phase["state_end"] = census(root)
            phase["cpu_by_role"] = cpu_by_role(cpu.before, cpu.after, comms)
            phase["sched_idle_share"] = idle
            phase["log"] = log.new_lines() if log is not None else []
        phases[label] = phase
        summary = ", ".join(
            f"{n}: {r.rps:.0f} req/s p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} ms err {r.errors}"
            for n, r in by_model.items()
        )
        extra = f" [{state_text(phase.get('state_end'))}; SCHED_IDLE {idle_text(idle)}]" if runtime_core else ""
        progress(f"  {label}: {summary}; server {phase['server_cpu_cores']:.2f} cores{extra}")
        for line in phase.get("log", [])[-5:]:
            progress(f"    log: {line[:160]}")
        return by_model

    alone = run("light_alone", [("light", light)])["light"]
    floor = run("light_idle_hogs", [("light", light)], around=IdleHogs())["light"]
    rows: list[dict[str, Any]] = []

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    def row(label: str, key: str, both: dict[str, LoadResult], other: str, other_alone: LoadResult | None) -> None:
        warm = phases[key]["warmup"].get("light") or {}
        rows.append(
            {
                "phase": label,
                "key": key,
                "light_p50": both["light"].p50_ms,
                "light_p99": both["light"].p99_ms,
                "light_p99_ratio": ratio(both["light"].p99_ms, alone.p99_ms),
                "light_warmup_p99": warm.get("p99_ms", float("nan")),
                "other": other,
                "other_rps": both[other].rps,
                "other_p99": both[other].p99_ms,
                "other_alone_rps": other_alone.rps if other_alone else float("nan"),
                "other_ratio": ratio(both[other].rps, other_alone.rps) if other_alone else float("nan"),
            }
        )

    def sleepy_phases() -> None:
        for n in args.sleepy_clients:
            key = f"light_sleepy_{n}"
            both = run(key, [("light", light), ("sleepy", lambda d, n=n: closed("sleepy", n, d))])
            row(f"sleepy {n} client{'s' if n != 1 else ''}", key, both, "sleepy", None)

    def heavy_phases() -> None:
        for c in args.heavy_concurrency:

            def heavy(d: float, c: int = c) -> Load:
                return closed("heavy", c, d)

            before = run(f"heavy_alone_c{c}", [("heavy", heavy)])["heavy"]
            key = f"light_heavy_c{c}"
            both = run(key, [("light", light), ("heavy", heavy)])
            # Heavy alone again after the phase with light, and the ratio taken against the
            # mean of the two: heavy's rate alone drifted by 5-10 % between neighbouring
            # phases of a run, as much as light takes from it, so one phase before was not
            # a reference that a 0.9x bound could be read against.
            after = run(f"heavy_alone_after_c{c}", [("heavy", heavy)])["heavy"]
            h_alone = dataclasses.replace(before, rps=(before.rps + after.rps) / 2)
            row(f"heavy C={c}", key, both, "heavy", h_alone)
            rows[-1]["other_alone_rps_each"] = [before.rps, after.rps]

    # The sleepy phases first by default: they test whether light leaves a host stalled by
    # another model's call, which needs light on the shared host when sleepy's first call
    # comes; after the heavy phases light may already have workers of its own.
    for group in (sleepy_phases, heavy_phases) if args.sleepy_first else (heavy_phases, sleepy_phases):
        group()
    for r in rows:
        phase = phases[r["key"]]
        r["errors"] = phase["errors"]
        r["server_cpu_cores"] = phase["server_cpu_cores"]
        r["loadavg"] = phase["loadavg"]
        r["state"] = state_text(phase.get("state_end"))
        r["sched_idle"] = idle_text(phase.get("sched_idle_share"))
        r["moves"] = sum("'light' moved to a sibling host" in line for line in phase.get("log", []))
        r["steal_share"] = phase["steal_share"]
        r["light_p99_over_floor"] = ratio(r["light_p99"], floor.p99_ms)
    return {
        "phases": phases,
        "rows": rows,
        "light_alone_p50": alone.p50_ms,
        "light_alone_p99": alone.p99_ms,
        "light_alone_state": state_text(phases["light_alone"].get("state_end")),
        "floor_p50": floor.p50_ms,
        "floor_p99": floor.p99_ms,
        "floor_ratio": ratio(floor.p99_ms, alone.p99_ms),
        "errors": sum(p["errors"] for p in phases.values()),
    }


def write_repository(repo: Path, flavor: str, per_model_pool: bool = False) -> None:
    for name in MODELS:
        if flavor == "mlserver":
            params = {"inference_pool_gid": f"pool-{name}"} if per_model_pool else {}
            models.write_model(repo, name, flavor="mlserver", parameters=params)
        else:
            workers = 2 if name in ("light", "heavy") else None  # sleepy: the defaults
            models.write_model(repo, name, workers=workers)


def scenario_runtime_core(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-iso-") as tmp:
        repo = Path(tmp)
        write_repository(repo, "runtime-core")
        with RuntimeCore(repo) as server:
            progress(f"runtime-core light+heavy (2 workers each) + sleepy ready in {server.ready_seconds:.2f} s")
            progress(f"  state at start: {state_text(census(server.pid))}")
            out = isolation_phases(server, args, runtime_core=True)
    out["server"] = "runtime-core"
    return out


def scenario_mlserver(args: argparse.Namespace, workers: int, per_model_pool: bool) -> dict[str, Any]:
    label = f"MLServer {'pool per model' if per_model_pool else 'shared pool'}, parallel_workers={workers}"
    with tempfile.TemporaryDirectory(prefix="bench-iso-mls-") as tmp:
        repo = Path(tmp)
        write_repository(repo, "mlserver", per_model_pool)
        with MLServer(repo, parallel_workers=workers) as server:
            progress(f"{label} ready in {server.ready_seconds:.2f} s")
            out = isolation_phases(server, args, runtime_core=False)
    out["server"] = label
    return out


# --------------------------------------------------------------------------- report


def _ratio(value: float) -> str:
    return fmt(value, 2) + "x" if value == value else "-"


def _percent(share: float | None) -> str:
    return f"{share * 100:.1f} %" if share is not None and share == share else "-"


def render(data: dict[str, Any]) -> str:
    a = data["args"]
    env = data["env"]
    parts = [
        f"# bench_isolation ({env['time']}, {env['cpus']} CPUs)",
        "",
        f"Light probe: open loop {a['light_rate']} req/s; heavy: closed loop at C = "
        f"{', '.join(map(str, a['heavy_concurrency']))}; sleepy (1 s sleep per call): closed loop at "
        f"{', '.join(map(str, a['sleepy_clients']))} clients; warm-up {a['warmup']} s, window {a['duration']} s. "
        "light and heavy: parallel_workers 2; sleepy: defaults.",
        "",
        f"`uptime` at start: {data['uptime_start']}; at end: {data['uptime_end']}.",
        "",
    ]
    servers = data["servers"]
    if servers:
        labels = [r["phase"] for r in servers[0]["rows"]]
        headers = ["server", "light alone p50/p99 ms", "machine floor: p99 beside idle hogs / alone"]
        headers += [f"light p99 ratio, {lb}" for lb in labels]
        headers += [f"heavy req/s ratio, {r['phase']}" for r in servers[0]["rows"] if r["other"] == "heavy"]
        headers.append("errors")
        summary = []
        for s in servers:
            line: list[Any] = [s["server"], f"{fmt(s['light_alone_p50'], 2)} / {fmt(s['light_alone_p99'], 2)}"]
            line.append(f"{_ratio(s['floor_ratio'])} ({fmt(s['floor_p99'], 2)} ms)")
            line += [_ratio(r["light_p99_ratio"]) for r in s["rows"]]
            line += [_ratio(r["other_ratio"]) for r in s["rows"] if r["other"] == "heavy"]
            line.append(s["errors"])
            summary.append(line)
        parts += ["Summary (ratios against the same server's own alone phases in this run):", ""]
        parts += [table(headers, summary), ""]
        detail_headers = [
            "server",
            "phase",
            "light p50 / p99 ms",
            "p99 / alone",
            "p99 / floor",
            "light p99 in warm-up ms",
            "other req/s",
            "other p99 ms",
            "heavy alone req/s, before / after",
            "heavy / mean alone",
            "errors",
            "server cores",
            "load avg 1 min",
            "steal",
            "runtime-core state at end",
            "SCHED_IDLE share of samples",
        ]
        detail = []
        for s in servers:
            for key, label, p50, p99, vs_alone in (
                ("light_alone", "light alone", s["light_alone_p50"], s["light_alone_p99"], 1.0),
                ("light_idle_hogs", "light beside idle hogs (floor)", s["floor_p50"], s["floor_p99"], s["floor_ratio"]),
            ):
                phase = s["phases"][key]
                detail.append(
                    [
                        s["server"],
                        label,
                        f"{fmt(p50, 2)} / {fmt(p99, 2)}",
                        _ratio(vs_alone),
                        "-",
                        fmt((phase["warmup"].get("light") or {}).get("p99_ms"), 2),
                        "-",
                        "-",
                        "-",
                        "-",
                        phase["errors"],
                        fmt(phase["server_cpu_cores"], 2),
                        phase["loadavg"][0],
                        _percent(phase.get("steal_share")),
                        state_text(phase.get("state_end")) if s["server"] == "runtime-core" else "-",
                        idle_text(phase.get("sched_idle_share")),
                    ]
                )
            for r in s["rows"]:
                detail.append(
                    [
                        s["server"],
                        r["phase"],
                        f"{fmt(r['light_p50'], 2)} / {fmt(r['light_p99'], 2)}",
                        _ratio(r["light_p99_ratio"]),
                        _ratio(r["light_p99_over_floor"]),
                        fmt(r["light_warmup_p99"], 2),
                        f"{r['other']} {fmt(r['other_rps'])}",
                        fmt(r["other_p99"]),
                        " / ".join(fmt(v) for v in r["other_alone_rps_each"])
                        if "other_alone_rps_each" in r
                        else fmt(r["other_alone_rps"]),
                        _ratio(r["other_ratio"]),
                        r["errors"],
                        fmt(r["server_cpu_cores"], 2),
                        r["loadavg"][0],
                        _percent(r.get("steal_share")),
                        (r["state"] + (f"; light moved {r['moves']}x" if r["moves"] else ""))
                        if s["server"] == "runtime-core"
                        else "-",
                        r.get("sched_idle", "-") if s["server"] == "runtime-core" else "-",
                    ]
                )
        parts += ["Per phase:", "", table(detail_headers, detail), ""]
    parts += ["Targets (runtime-core):", ""]
    rc = next((s for s in servers if s["server"] == "runtime-core"), None)
    trows: list[tuple[str, str, str]] = []
    if rc is not None:
        for r in rc["rows"]:
            trows.append(
                (
                    f"light p99 <= {P99_LIMIT:g}x alone, {r['phase']}",
                    _ratio(r["light_p99_ratio"]),
                    verdict(r["light_p99_ratio"] <= P99_LIMIT),
                )
            )
        for r in rc["rows"]:
            if r["other"] == "heavy":
                trows.append(
                    (
                        f"heavy req/s >= {HEAVY_FLOOR:g}x alone, {r['phase']}",
                        _ratio(r["other_ratio"]),
                        verdict(r["other_ratio"] >= HEAVY_FLOOR),
                    )
                )
        trows.append(("no errors", str(rc["errors"]), verdict(rc["errors"] == 0)))
    data["targets"] = trows
    parts.append(table(["target", "value", "verdict"], trows))
    if data.get("failures"):
        parts += ["", "Failures:", ""] + [f"- {f.splitlines()[0]}" for f in data["failures"]]
    return "\n".join(parts)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="measured window, seconds")
    parser.add_argument("-w", "--warmup", type=float, default=3.0, help="warm-up before each window, seconds")
    parser.add_argument("--light-rate", type=float, default=100.0, help="open-loop light probe, req/s")
    parser.add_argument("--heavy-concurrency", type=_ints, default=[2, 4, 16], help="comma-separated C of heavy")
    parser.add_argument("--sleepy-clients", type=_ints, default=[1, 2], help="comma-separated clients of sleepy")
    parser.add_argument(
        "--mlserver-configs",
        default="shared:1,pool:2",
        help="comma-separated shared:N / pool:N (pool = one inference_pool_gid per model)",
    )
    parser.add_argument(
        "--heavy-first",
        dest="sleepy_first",
        action="store_false",
        help="run the heavy phases before the sleepy ones (default: sleepy first, while light is on the host)",
    )
    parser.add_argument("--quick", action="store_true", help="3 s windows, 1 s warm-up")
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--no-runtime-core", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    for name in MODELS:
        models.artifact_path(name)
    data: dict[str, Any] = {
        "env": environment(),
        "args": vars(args),
        "uptime_start": uptime(),
        "servers": [],
        "failures": [],
    }
    progress(data["uptime_start"])

    def attempt(label: str, fn: Any, *fn_args: Any) -> None:
        try:
            data["servers"].append(fn(*fn_args))
        except (RuntimeError, TimeoutError, OSError) as exc:
            progress(f"{label} FAILED: {exc}")
            data["failures"].append(f"{label}: {str(exc)[-2000:]}")

    try:
        if not args.no_runtime_core:
            attempt("runtime-core", scenario_runtime_core, args)
        if not args.no_mlserver and mlserver_available():
            for config in args.mlserver_configs.split(","):
                kind, workers = config.split(":")
                attempt(f"MLServer {config}", scenario_mlserver, args, int(workers), kind == "pool")
    except KeyboardInterrupt:
        progress("interrupted: writing what was measured")
        data["failures"].append("interrupted")
    data["uptime_end"] = uptime()
    publish("isolation", data, render(data))


if __name__ == "__main__":
    main()
