"""Throughput, latency, CPU and memory of the worker pool, against in-process predict and MLServer.

For each model (``light``: 1-row requests, ``heavy`` and ``xgb``: 64-row requests)
and each ``parallel_workers`` value, a fresh runtime-core server serving only that
model is loaded closed-loop (wrk, concurrency C) for W seconds of warm-up and D
seconds of measurement: req/s, p50, p99, server CPU ms per request (all processes
of the server's tree) and PSS of the tree. Then, in the same run:

* the in-process bound: a plain ``predict`` loop on the same rows in this process,
  single-threaded (calls/s on one core, and x2 for two cores);
* MLServer 1.7.1 (its ``mlserver`` command named by ``MLSERVER_BIN``) on the same model folders and load,
  for several server-wide ``parallel_workers``;
* three models (light + heavy + xgb) with 4 workers each: total PSS and
  start-to-ready time, against MLServer with 4 shared workers.

Results go to ``benchmarks/results/parallel-*.{json,md}``; the table is also printed.

Examples::

    python benchmarks/bench_parallel.py                      # full run (~10 min)
    python benchmarks/bench_parallel.py --quick              # smoke run
    python benchmarks/bench_parallel.py --models light --workers 0,4 --quick --no-mlserver --no-memory
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import models
from common import closed_window, environment, fmt, infer_url, median, progress, publish, table, verdict
from loadgen import ClosedLoop, run_loads
from measure import http_status, pool_state, state_change, tree_pss_mib, tree_stats
from servers import MLServerServer, RuntimeCoreServer, mlserver_available

DEFAULT_MLSERVER_WORKERS = {"light": [1, 0, 2, 4], "heavy": [1, 0, 2], "xgb": [1, 0, 2]}


# --------------------------------------------------------------------------- in-process bound


def in_process(name: str, seconds: float, threads: int = 1) -> dict[str, Any]:
    """Calls/s of a plain predict loop on the benchmark rows, in this process, ``threads`` threads.

    One thread: calls per CPU second (one core's worth), best of 5 slices. More threads: wall-clock
    calls/s (best slice), since several threads' CPU seconds are not one core's."""
    from threadpoolctl import threadpool_limits

    x = models.request_array(name)
    path = models.artifact_path(name)
    if name == "xgb":
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(str(path))
        booster.set_param({"nthread": threads})

        def call() -> object:
            return booster.inplace_predict(x)
    else:
        import joblib

        estimator = joblib.load(path)

        def call() -> object:
            return estimator.predict(x)

    # Throughput from CPU time (process_time), not wall time: on a shared machine the wall clock
    # counts the time other jobs held the core. Best of 5 slices; wall-clock rates kept for reference.
    cpu_rates, wall_rates, count = [], [], 0
    with threadpool_limits(threads):
        for _ in range(20):
            call()
        for _ in range(5):
            done, started, cpu0 = 0, time.perf_counter(), time.process_time()
            deadline = started + seconds / 5
            while time.perf_counter() < deadline:
                for _ in range(5):
                    call()
                done += 5
            wall_rates.append(done / (time.perf_counter() - started))
            cpu_rates.append(done / max(time.process_time() - cpu0, 1e-9))
            count += done
    rate = max(cpu_rates) if threads == 1 else max(wall_rates)
    return {
        "model": name,
        "threads": threads,
        "calls": count,
        "cpu_rates": cpu_rates,
        "wall_rates": wall_rates,
        "rps_1core": rate,
        "rps_2core": 2 * rate,
        "ms_per_call": 1000 / rate,
    }


# --------------------------------------------------------------------------- server scenarios


def _warm_every(url: str, names: list[str]) -> None:
    """One request per model so that lazily touched pages are counted in PSS."""
    import urllib.request

    for name in names:
        req = urllib.request.Request(
            infer_url(url, name), data=models.request_body(name), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()


def measure_server(server: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop window against a started server, plus its memory, size and start time,
    and for runtime-core the state the window measured (where the model ran, and the elastic
    moves made during the window: none once a steady load has settled)."""
    url, body = infer_url(server.url, name), models.request_body(name)
    if args.warmup > 0:
        run_loads([ClosedLoop(url, body, concurrency=args.concurrency, duration=args.warmup)])
    before = pool_state(server.url, name)
    row = closed_window(url, body, server.pid, concurrency=args.concurrency, warmup=0, duration=args.duration)
    row["state"] = state_change(before, pool_state(server.url, name)) if before is not None else "-"
    row["pss_mib"] = tree_pss_mib(server.pid)
    row["processes"] = len(tree_stats(server.pid))
    row["ready_s"] = server.ready_seconds
    return row


def run_runtime_core(name: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-rc-") as tmp:
        repo = Path(tmp)
        models.write_model(repo, name, workers=workers)
        with RuntimeCoreServer(repo) as server:
            row = measure_server(server, name, args)
            row["alive_after"] = http_status(server.url + "/v2/health/ready") == 200
    row.update(server="runtime-core", model=name, workers=workers)
    return row


def run_mlserver(name: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-mls-") as tmp:
        repo = Path(tmp)
        models.write_model(repo, name, flavor="mlserver")
        with MLServerServer(repo, parallel_workers=workers) as server:
            row = measure_server(server, name, args)
    row.update(server="mlserver", model=name, workers=workers)
    return row


def run_memory(args: argparse.Namespace, use_mlserver: bool) -> list[dict[str, Any]]:
    """Three models x 4 workers: start-to-ready and total PSS (median of ``--starts`` starts)."""
    names = ["light", "heavy", "xgb"]
    out = []
    servers = ["runtime-core"] + (["mlserver"] if use_mlserver else [])
    for which in servers:
        readies, psses, idle_psses = [], [], []
        for attempt in range(args.starts):
            with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
                repo = Path(tmp)
                server: RuntimeCoreServer | MLServerServer
                if which == "runtime-core":
                    for name in names:
                        models.write_model(repo, name, workers=4)
                    server = RuntimeCoreServer(repo)
                else:
                    for name in names:
                        models.write_model(repo, name, flavor="mlserver")
                    server = MLServerServer(repo, parallel_workers=4)
                with server:
                    readies.append(server.ready_seconds)
                    time.sleep(1.0)
                    idle_psses.append(tree_pss_mib(server.pid))
                    _warm_every(server.url, names)
                    time.sleep(0.5)
                    psses.append(tree_pss_mib(server.pid))
                    processes = len(tree_stats(server.pid))
            progress(
                f"memory {which} start {attempt + 1}/{args.starts}: ready {readies[-1]:.2f} s, "
                f"PSS {psses[-1]:.0f} MiB ({processes} processes)"
            )
        out.append(
            {
                "server": which,
                "models": names,
                "workers": 4,
                "ready_s": median(readies),
                "ready_all": readies,
                "pss_mib": median(psses),
                "pss_idle_mib": median(idle_psses),
                "pss_all": psses,
                "processes": processes,
            }
        )
    return out


# --------------------------------------------------------------------------- report


def _find(rows: list[dict[str, Any]], server: str, model: str, workers: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["server"] == server and r["model"] == model and r["workers"] == workers), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(data: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, ratio/value, verdict) rows for the goals of the issues."""
    rows: list[dict[str, Any]] = data["servers"]
    inproc = {(r["model"], r["threads"]): r for r in data["in_process"]}
    out: list[tuple[str, str, str, str]] = []

    def rps(server: str, model: str, workers: int) -> float | None:
        row = _find(rows, server, model, workers)
        return row["rps"] if row else None

    def add(label: str, detail: str, value: float | None, goal: float, higher: bool = True, unit: str = "x") -> None:
        ok = None if value is None else (value >= goal if higher else value <= goal)
        shown = "-" if value is None else f"{value:.2f}{unit}"
        out.append((label, detail, shown, verdict(ok)))

    light4 = rps("runtime-core", "light", 4)
    one = inproc.get(("light", 1))
    add(
        "light: 4 workers >= 1.0x in-process (1 core)",
        f"{fmt(light4)} vs {fmt(one and one['rps_1core'])} req/s",
        _ratio(light4, one and one["rps_1core"]),
        1.0,
    )
    add(
        "light: 4 workers vs in-process x2 cores (info)",
        f"{fmt(light4)} vs {fmt(one and one['rps_2core'])} req/s",
        _ratio(light4, one and one["rps_2core"]),
        1.0,
    )
    light0 = rps("runtime-core", "light", 0)
    add(
        "light: 4 workers >= 1.0x parallel_workers=0 (server in-process)",
        f"{fmt(light4)} vs {fmt(light0)} req/s",
        _ratio(light4, light0),
        1.0,
    )
    row = _find(rows, "runtime-core", "light", 4)
    add(
        "light: CPU/request with 4 workers <= 0.25 ms",
        "server tree CPU / requests",
        row["cpu_ms_per_req"] if row else None,
        0.25,
        higher=False,
        unit=" ms",
    )
    mls1 = rps("mlserver", "light", 1)
    add(
        "light: 4 workers >= 5x MLServer default (1 worker)",
        f"{fmt(light4)} vs {fmt(mls1)} req/s",
        _ratio(light4, mls1),
        5.0,
    )
    h0, h2 = rps("runtime-core", "heavy", 0), rps("runtime-core", "heavy", 2)
    add("heavy: 2 workers >= 1.85x 0 workers", f"{fmt(h2)} vs {fmt(h0)} req/s", _ratio(h2, h0), 1.85)
    hin = inproc.get(("heavy", 1))
    add(
        "heavy: 2 workers >= 0.9x in-process x2 cores",
        f"{fmt(h2)} vs {fmt(hin and hin['rps_2core'])} req/s",
        _ratio(h2, hin and hin["rps_2core"]),
        0.9,
    )
    x0, x2 = rps("runtime-core", "xgb", 0), rps("runtime-core", "xgb", 2)
    add(
        "xgb: 2 workers >= 1.3x 0 workers (in-process, default caps)",
        f"{fmt(x2)} vs {fmt(x0)} req/s",
        _ratio(x2, x0),
        1.3,
    )
    xin = inproc.get(("xgb", 2))
    add(
        "xgb: 2 workers vs in-process loop nthread=2 (info)",
        f"{fmt(x2)} vs {fmt(xin and xin['rps_1core'])} req/s",
        _ratio(x2, xin and xin["rps_1core"]),
        1.3,
    )
    mls_x = [r["rps"] for r in rows if r["server"] == "mlserver" and r["model"] == "xgb"]
    add(
        "xgb: 2 workers >= 2.5x MLServer's best",
        f"{fmt(x2)} vs {fmt(max(mls_x) if mls_x else None)} req/s",
        _ratio(x2, max(mls_x) if mls_x else None),
        2.5,
    )
    mem = {m["server"]: m for m in data["memory"]}
    if "runtime-core" in mem:
        m = mem["runtime-core"]
        add(
            "3 models x 4 workers: total PSS <= 947 MiB",
            f"MLServer: {fmt(mem.get('mlserver', {}).get('pss_mib'))} MiB",
            m["pss_mib"],
            947,
            higher=False,
            unit=" MiB",
        )
        add(
            "3 models x 4 workers: start to ready <= 2.5 s",
            f"MLServer: {fmt(mem.get('mlserver', {}).get('ready_s'))} s",
            m["ready_s"],
            2.5,
            higher=False,
            unit=" s",
        )
    return out


def render(data: dict[str, Any]) -> str:
    parts = [f"# bench_parallel ({data['env']['time']}, {data['env']['cpus']} CPUs)", ""]
    a = data["args"]
    parts.append(
        f"Closed loop, concurrency {a['concurrency']}, warm-up {a['warmup']} s, window {a['duration']} s. "
        "CPU ms/req: user+sys of the server's whole process tree / requests; main proc: the HTTP "
        "process alone; server cores: tree CPU / wall; idle cores: machine-wide idle during the window."
    )
    parts.append("")
    headers = [
        "model",
        "server",
        "workers",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU ms/req",
        "main proc ms/req",
        "server cores",
        "idle cores",
        "PSS MiB",
        "errors",
        "runtime-core state (moves in the window)",
    ]
    body = [
        [
            r["model"],
            r["server"],
            r["workers"],
            r["rps"],
            r["p50_ms"],
            r["p99_ms"],
            r["cpu_ms_per_req"],
            r["cpu_main_ms_per_req"],
            r["cpu_cores"],
            r["machine_idle_cores"],
            r["pss_mib"],
            r["errors"],
            r.get("state", "-"),
        ]
        for r in data["servers"]
    ]
    parts += [table(headers, body), ""]
    if data["in_process"]:
        parts.append(
            "In-process bound (plain predict loop in the bench process; 1 thread: calls per CPU second, "
            "best of 5 slices; 2 threads: wall-clock calls/s):"
        )
        parts.append("")
        parts.append(
            table(
                ["model", "threads", "ms/call", "calls/s 1 core", "x2 cores"],
                [
                    [r["model"], r["threads"], r["ms_per_call"], r["rps_1core"], r["rps_2core"]]
                    for r in data["in_process"]
                ],
            )
        )
        parts.append("")
    if data["memory"]:
        parts.append("Three models (light + heavy + xgb), 4 workers each (MLServer: 4 shared workers):")
        parts.append("")
        parts.append(
            table(
                ["server", "start to ready s", "PSS MiB (after 1 request each)", "PSS MiB idle", "processes"],
                [[m["server"], m["ready_s"], m["pss_mib"], m["pss_idle_mib"], m["processes"]] for m in data["memory"]],
            )
        )
        parts.append("")
    parts.append("Targets:")
    parts.append("")
    parts.append(table(["target", "measured", "value", "verdict"], data["targets"]))
    if data.get("failures"):
        parts += ["", "Failures:", ""] + [f"- {f.splitlines()[0]}" for f in data["failures"]]
    return "\n".join(parts)


def _attempt(data: dict[str, Any], label: str, fn: Any, *fn_args: Any) -> Any:
    """Run one scenario; a server that fails (e.g. does not start) is recorded, not fatal."""
    try:
        return fn(*fn_args)
    except (RuntimeError, TimeoutError, OSError) as exc:
        progress(f"{label} FAILED: {exc}")
        data["failures"].append(f"{label}: {str(exc)[-2000:]}")
        return None


def _show(row: dict[str, Any]) -> str:
    return (
        f"{row['rps']:.0f} req/s p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms, "
        f"CPU {row['cpu_ms_per_req']:.3f} ms/req (main {row['cpu_main_ms_per_req']:.3f}), "
        f"server {row['cpu_cores']:.2f} cores, idle {row['machine_idle_cores']:.2f} cores, "
        f"PSS {row['pss_mib']:.0f} MiB, errors {row['errors']}"
    )


def collect(
    data: dict[str, Any], args: argparse.Namespace, names: list[str], worker_counts: list[int], use_mlserver: bool
) -> None:
    for name in names:
        models.artifact_path(name)  # train before timing anything
    if not args.no_inprocess:
        for name in names:
            for threads in [1, 2] if name == "xgb" else [1]:
                row = in_process(name, args.inproc_seconds, threads)
                data["in_process"].append(row)
                progress(
                    f"in-process {name} threads={threads}: {row['rps_1core']:.0f} calls/s "
                    f"({row['ms_per_call']:.3f} ms/call)"
                )
    for name in names:
        for workers in worker_counts:
            row = _attempt(data, f"runtime-core {name} workers={workers}", run_runtime_core, name, workers, args)
            if row is not None:
                data["servers"].append(row)
                progress(f"runtime-core {name} workers={workers}: {_show(row)}")
        if use_mlserver:
            counts = (
                [int(w) for w in args.mlserver_workers.split(",")]
                if args.mlserver_workers
                else DEFAULT_MLSERVER_WORKERS[name]
            )
            for workers in counts:
                row = _attempt(data, f"mlserver {name} workers={workers}", run_mlserver, name, workers, args)
                if row is not None:
                    data["servers"].append(row)
                    progress(f"mlserver {name} workers={workers}: {_show(row)}")
    if not args.no_memory:
        data["memory"] = _attempt(data, "memory", run_memory, args, use_mlserver) or []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="light,heavy,xgb", help="comma-separated: light,heavy,xgb")
    parser.add_argument("--workers", default="0,1,2,4", help="runtime-core parallel_workers values")
    parser.add_argument(
        "--mlserver-workers",
        default=None,
        help="MLServer parallel_workers values for every model (default: light 1,0,2,4; others 1,0,2)",
    )
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="measured window, seconds")
    parser.add_argument("-w", "--warmup", type=float, default=3.0, help="warm-up before each window, seconds")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("--inproc-seconds", type=float, default=3.0)
    parser.add_argument("--starts", type=int, default=3, help="server starts for the memory/startup scenario")
    parser.add_argument("--quick", action="store_true", help="short windows (3 s, 1 s warm-up), one start")
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-inprocess", action="store_true")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only re-render the tables of a results JSON")
    args = parser.parse_args()
    if args.render:
        data = json.loads(args.render.read_text())
        data["targets"] = targets(data)
        markdown = render(data)
        args.render.with_suffix(".md").write_text(markdown + "\n")
        print(markdown)
        return
    if args.quick:
        args.duration, args.warmup, args.inproc_seconds, args.starts = 3.0, 1.0, 1.0, 1
    names = [n for n in args.models.split(",") if n]
    worker_counts = [int(w) for w in args.workers.split(",") if w != ""]
    use_mlserver = not args.no_mlserver and mlserver_available()
    if not args.no_mlserver and not use_mlserver:
        progress("MLServer not found (set MLSERVER_BIN to its mlserver command): skipping it")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required (apt-get install wrk)")

    data: dict[str, Any] = {
        "env": environment(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "servers": [],
        "in_process": [],
        "memory": [],
        "failures": [],
    }
    try:
        collect(data, args, names, worker_counts, use_mlserver)
    except KeyboardInterrupt:
        progress("interrupted: writing what was measured")
        data["failures"].append("interrupted")
    data["targets"] = targets(data)
    markdown = render(data)
    publish("parallel", data, markdown)


if __name__ == "__main__":
    main()
