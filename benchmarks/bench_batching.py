"""Adaptive batching (issue 5): many 1-row requests to a light model, batching on vs off.

The light model (LogisticRegression, 20 features) gets 1-row requests from a closed
loop (wrk) at concurrency C (default 32). Configurations, each on a fresh server:

* runtime-core, ``parallel_workers`` 2 and 4, with ``model-settings.json``
  ``"max_batch_size": 32`` and ``"max_batch_time"`` 0.005 / 0.002 (``on``) or neither
  (``off``). Note that ``off`` is not "no batching": runtime-core's workers always
  coalesce the requests already waiting when they become free into one ``predict``
  call (docs/architecture.md); ``on`` adds waiting for a batch to fill.
* MLServer 1.7.1 (default ``parallel_workers: 1``) with its adaptive batching on
  (``max_batch_size`` / ``max_batch_time`` in its model-settings.json) and off. With
  batching off MLServer runs one ``predict`` per request: the plain per-request baseline.

Each server is warmed up for W s, then measured over R windows of D s; the table
gives the median window (req/s, p50, p99, server CPU ms per request over the whole
process tree). Results: ``benchmarks/results/batching-*.{json,md}``.

Examples::

    python benchmarks/bench_batching.py                    # full run (~6 min)
    python benchmarks/bench_batching.py --quick --no-mlserver
    python benchmarks/bench_batching.py --workers 2 --batch-times 0.005 --repeats 1
    python benchmarks/bench_batching.py --interleave --no-mlserver -r 5   # a busy machine

With ``--interleave`` every server is started first, and the rounds take one window of
each configuration in turn (each window after its own W s of warm-up; the order rotates
from round to round), so that the configurations compared see the same background load.
``--control`` (with ``--interleave``) adds a second ``off`` server per worker count: its
ratio to ``off`` is the noise of the run itself, against which on/off is read. The issue-9
target is decided by::

    python benchmarks/bench_batching.py --interleave --control --no-mlserver -c 32 -r 7 -d 4 -w 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import models
from common import closed_window, environment, fmt, infer_url, median, progress, publish, table, verdict
from measure import tree_stats
from servers import MLServerServer, RuntimeCoreServer, mlserver_available

MODEL = "light"
BATCH_SIZE = 32
METRICS = ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "cpu_ms_per_req", "cpu_main_ms_per_req", "cpu_cores")


#: The ``batch_time`` that marks the control server in a configuration (batching off).
CONTROL_TIME = -1.0
#: Label of the second, identical ``off`` server of ``--control``: its ratio to ``off`` is
#: the noise of the measurement itself (an A/A comparison) in the same run.
CONTROL = "off (control)"


def _label(batch_time: float | None) -> str:
    if batch_time == CONTROL_TIME:
        return CONTROL
    return "off" if batch_time is None else f"on {1000 * batch_time:g} ms"


def _server(
    repo: Path, server_kind: str, workers: int, batch_time: float | None, idle_timeout: float | None = None
) -> RuntimeCoreServer | MLServerServer:
    extra: dict[str, Any] = {}
    if batch_time is not None:
        extra = {"max_batch_size": BATCH_SIZE, "max_batch_time": batch_time}
    if server_kind == "runtime-core":
        models.write_model(repo, MODEL, workers=workers, **extra)
        if idle_timeout is not None:
            (repo / "settings.json").write_text(json.dumps({"worker_idle_timeout": idle_timeout}))
        return RuntimeCoreServer(repo)
    models.write_model(repo, MODEL, flavor="mlserver", **extra)
    return MLServerServer(repo, parallel_workers=workers)


def _window(server: RuntimeCoreServer | MLServerServer, warmup: float, args: argparse.Namespace) -> dict[str, Any]:
    return closed_window(
        infer_url(server.url, MODEL),
        models.request_body(MODEL),
        server.pid,
        concurrency=args.concurrency,
        warmup=warmup,
        duration=args.duration,
    )


def run_config(server_kind: str, workers: int, batch_time: float | None, args: argparse.Namespace) -> dict[str, Any]:
    """One server, W s of warm-up, R windows of D s; the median window plus every window."""
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        with _server(Path(tmp), server_kind, workers, batch_time) as server:
            windows = [_window(server, args.warmup if i == 0 else 0.0, args) for i in range(args.repeats)]
            processes = len(tree_stats(server.pid))
    return _row(server_kind, workers, batch_time, windows, processes)


def run_interleaved(configs: list[tuple[str, int, float | None]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every configuration's server started at once, then one window of each in turn, R rounds:
    on a shared machine the configurations being compared see the same background load.
    Round i starts at configuration i (the order rotates), so that none is always measured
    first, or always right after the same neighbour. The servers keep their workers between
    their windows (``worker_idle_timeout`` 600 s): a server waits for the others' windows,
    which under steady traffic it would not, and retiring workers meanwhile made each window
    start from a different state."""
    labels = [config[2] for config in configs]
    with contextlib.ExitStack() as stack:
        servers = []
        for kind, workers, batch_time in configs:
            repo = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-batch-")))
            time_ = None if batch_time == CONTROL_TIME else batch_time
            servers.append(stack.enter_context(_server(repo, kind, workers, time_, idle_timeout=600.0)))
        windows: list[list[dict[str, Any]]] = [[] for _ in configs]
        for i in range(args.repeats):
            for k in range(len(servers)):
                n = (i + k) % len(servers)
                windows[n].append(_window(servers[n], args.warmup, args))
                progress(
                    f"round {i + 1}: {configs[n][0]} workers={configs[n][1]} {_label(labels[n])}: "
                    f"{windows[n][-1]['rps']:.0f} req/s, p99 {windows[n][-1]['p99_ms']:.2f} ms"
                )
        processes = [len(tree_stats(server.pid)) for server in servers]
    return [_row(*config, w, p) for config, w, p in zip(configs, windows, processes, strict=True)]


def _row(
    server_kind: str, workers: int, batch_time: float | None, windows: list[dict[str, Any]], processes: int
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "server": server_kind,
        "workers": workers,
        "batching": _label(batch_time),
        "max_batch_size": BATCH_SIZE if batch_time is not None and batch_time != CONTROL_TIME else 0,
        "max_batch_time": batch_time if batch_time and batch_time > 0 else 0.0,
        "windows": windows,
        "errors": sum(w["errors"] for w in windows),
        "processes": processes,
    }
    for key in METRICS:
        row[key] = median([w[key] for w in windows])
    return row


def _find(rows: list[dict[str, Any]], server: str, workers: int, batching: str) -> dict[str, Any] | None:
    return next(
        (r for r in rows if r["server"] == server and r["workers"] == workers and r["batching"] == batching), None
    )


def targets(data: dict[str, Any]) -> list[list[str]]:
    """Issue 5: batching on >= 3x the throughput of batching off, with p99 no worse, for each baseline."""
    rows: list[dict[str, Any]] = data["rows"]
    out: list[list[str]] = []
    mls_off = next((r for r in rows if r["server"] == "mlserver" and r["batching"] == "off"), None)

    def paired(row: dict[str, Any], base: dict[str, Any] | None, key: str) -> float | None:
        """The median over rounds of row / base, window by window (interleaved runs measure
        the two side by side); None without paired windows."""
        if base is None or len(base["windows"]) != len(row["windows"]) or not all(w[key] for w in base["windows"]):
            return None
        return median([a[key] / b[key] for a, b in zip(row["windows"], base["windows"], strict=True)])

    for row in rows:
        if row["server"] != "runtime-core" or row["batching"] == "off":
            continue
        same = _find(rows, "runtime-core", row["workers"], "off")
        control = _find(rows, "runtime-core", row["workers"], CONTROL)
        if row["batching"] == CONTROL:
            rps, p99 = paired(row, same, "rps"), paired(row, same, "p99_ms")
            if rps is not None and p99 is not None:
                out.append(
                    [
                        f"runtime-core {row['workers']} workers {CONTROL}",
                        "the same settings as off, another server: the noise of the measurement (A/A)",
                        f"{rps:.2f}x",
                        f"{p99:.2f}x",
                        "-",
                    ]
                )
            continue
        aa_rps = paired(control, same, "rps") if control else None
        aa_p99 = paired(control, same, "p99_ms") if control else None
        on_rps, on_p99 = paired(row, same, "rps"), paired(row, same, "p99_ms")
        if on_rps is not None and on_p99 is not None and aa_rps is not None and aa_p99 is not None:
            # As far from 1.0 as an identical server was is no evidence of a cost.
            noise_rps, noise_p99 = abs(1.0 - aa_rps), abs(1.0 - aa_p99)
            out.append(
                [
                    f"runtime-core {row['workers']} workers {row['batching']}",
                    "issue 9, within the A/A noise: >= 1.0x coalescing less the control's distance from 1.0, "
                    "p99 no worse than 1.0x plus it",
                    f"{on_rps:.2f}x (bar {1 - noise_rps:.2f}x)",
                    f"{on_p99:.2f}x (bar {1 + noise_p99:.2f}x)",
                    verdict(on_rps >= 1.0 - noise_rps and on_p99 <= 1.0 + noise_p99),
                ]
            )
        baselines = [
            ("runtime-core off (coalescing), same workers", same),
            ("MLServer off (one predict per request)", mls_off),
        ]
        if on_rps is not None and on_p99 is not None:
            # Issue 9: waiting for a batch must never cost (the strict reading).
            out.append(
                [
                    f"runtime-core {row['workers']} workers {row['batching']}",
                    "issue 9: >= 1.0x coalescing, p99 no worse (median of paired windows)",
                    f"{on_rps:.2f}x",
                    f"{on_p99:.2f}x",
                    verdict(on_rps >= 1.0 and on_p99 <= 1.0),
                ]
            )
        for label, base in baselines:
            if base is None or not base["rps"]:
                continue
            ratio = row["rps"] / base["rps"]
            p99_ok = row["p99_ms"] <= base["p99_ms"]
            out.append(
                [
                    f"runtime-core {row['workers']} workers {row['batching']}",
                    label,
                    f"{fmt(row['rps'])} vs {fmt(base['rps'])} req/s = {ratio:.2f}x",
                    f"{fmt(row['p99_ms'])} vs {fmt(base['p99_ms'])} ms",
                    verdict(ratio >= 3.0 and p99_ok),
                ]
            )
    return out


def render(data: dict[str, Any]) -> str:
    a = data["args"]
    parts = [
        f"# bench_batching ({data['env']['time']}, {data['env']['cpus']} CPUs)",
        "",
        f"Light model, 1-row requests, closed loop (wrk) concurrency {a['concurrency']}, warm-up {a['warmup']} s, "
        f"median of {a['repeats']} windows of {a['duration']} s on one server per row. `on`: max_batch_size "
        f"{BATCH_SIZE} and the max_batch_time shown; `off`: neither (runtime-core still coalesces waiting "
        "requests; MLServer runs one predict per request). CPU ms/req: the server's whole process tree.",
        "",
    ]
    headers = [
        "server",
        "workers",
        "batching",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU ms/req",
        "main proc ms/req",
        "server cores",
        "req/s of each window",
        "errors",
    ]
    body = [
        [
            r["server"],
            r["workers"],
            r["batching"],
            r["rps"],
            r["p50_ms"],
            r["p99_ms"],
            r["max_ms"],
            r["cpu_ms_per_req"],
            r["cpu_main_ms_per_req"],
            r["cpu_cores"],
            " / ".join(fmt(w["rps"]) for w in r["windows"]),
            r["errors"],
        ]
        for r in data["rows"]
    ]
    parts += [table(headers, body), "", "Targets (issue 5: >= 3x throughput, p99 no worse than the baseline):", ""]
    parts.append(table(["configuration", "baseline", "throughput", "p99", "verdict"], data["targets"]))
    if data.get("failures"):
        parts += ["", "Failures:", ""] + [f"- {f.splitlines()[0]}" for f in data["failures"]]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="2,4", help="runtime-core parallel_workers values")
    parser.add_argument("--batch-times", default="0.005,0.002", help="max_batch_time values (seconds) for 'on'")
    parser.add_argument("--mlserver-workers", type=int, default=1, help="MLServer parallel_workers (default 1)")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="each measured window, seconds")
    parser.add_argument("-w", "--warmup", type=float, default=3.0, help="warm-up before the first window")
    parser.add_argument("-r", "--repeats", type=int, default=3, help="measured windows per server (median)")
    parser.add_argument("--quick", action="store_true", help="3 s windows, 1 s warm-up, 1 window")
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument(
        "--control",
        action="store_true",
        help="with --interleave: a second 'off' server per worker count, whose ratio to 'off' is the noise",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="start every server at once and measure one window of each in turn (a shared machine)",
    )
    args = parser.parse_args()
    if args.control and not args.interleave:
        parser.error("--control needs --interleave (the two 'off' servers are compared round by round)")
    if args.quick:
        args.duration, args.warmup, args.repeats = 3.0, 1.0, 1
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required (apt-get install wrk)")
    models.artifact_path(MODEL)
    batch_times: list[float | None] = [None] + [float(t) for t in args.batch_times.split(",") if t]
    if args.control:
        batch_times.insert(1, CONTROL_TIME)
    configs: list[tuple[str, int, float | None]] = [
        ("runtime-core", int(w), t) for w in args.workers.split(",") if w for t in batch_times
    ]
    if not args.no_mlserver:
        if mlserver_available():
            configs += [("mlserver", args.mlserver_workers, t) for t in batch_times if t != CONTROL_TIME]
        else:
            progress("MLServer not found: skipping it")
    data: dict[str, Any] = {"env": environment(), "args": vars(args), "rows": [], "failures": []}
    if args.interleave:
        try:
            data["rows"] = run_interleaved(configs, args)
        except (RuntimeError, TimeoutError, OSError, KeyboardInterrupt) as exc:
            progress(f"interleaved run FAILED: {exc}")
            data["failures"].append(f"interleaved: {str(exc)[-2000:]}")
        configs = []
    try:
        for kind, workers, batch_time in configs:
            label = f"{kind} workers={workers} batching {_label(batch_time)}"
            try:
                row = run_config(kind, workers, batch_time, args)
            except (RuntimeError, TimeoutError, OSError) as exc:
                progress(f"{label} FAILED: {exc}")
                data["failures"].append(f"{label}: {str(exc)[-2000:]}")
                continue
            data["rows"].append(row)
            progress(
                f"{label}: {row['rps']:.0f} req/s p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms, "
                f"CPU {row['cpu_ms_per_req']:.3f} ms/req, server {row['cpu_cores']:.2f} cores, "
                f"errors {row['errors']}"
            )
    except KeyboardInterrupt:
        progress("interrupted: writing what was measured")
        data["failures"].append("interrupted")
    data["targets"] = targets(data)
    markdown = render(data)
    publish("batching", data, markdown)


if __name__ == "__main__":
    main()
