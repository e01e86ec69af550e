"""Fairness: does a flooded heavy model hurt a light one, and do weights split the CPU?

Scenario A (one server; light and heavy, 2 workers each), each phase W s warm-up + D s window:

1. light alone, open loop at ``--light-rate`` req/s (latency from each request's scheduled start);
2. heavy alone, closed loop at ``--heavy-concurrency``;
3. both at once: light p50/p99 loaded/alone, heavy req/s together/alone;
4. light alone, closed loop at concurrency 1;
5. both at once with the closed-loop light probe.

The same phases run against MLServer 1.7.1 with its shared pool (default
``parallel_workers: 1``, and 4), and with one pool per model
(``parameters.inference_pool_gid``, ``parallel_workers: 2`` -> 2 workers per model).

Scenario B (runtime-core only): two copies of the heavy model, ``"weight": 2`` and
``"weight": 1``, 2 workers each, both flooded closed-loop. Each model's CPU is the
CPU of its workers, found by their kernel process name ``rc-w<i>:<model>``
(``/proc/PID/comm``) in the server's process tree at the end of the window.

Results: ``benchmarks/results/fairness-*.{json,md}``.

Examples::

    python benchmarks/bench_fairness.py            # full run (~8 min)
    python benchmarks/bench_fairness.py --quick --no-mlserver
"""

from __future__ import annotations

import argparse
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import models
from common import environment, fmt, infer_url, progress, publish, table, verdict, windowed
from loadgen import ClosedLoop, Load, LoadResult, OpenLoop
from measure import cpu_delta
from servers import MLServerServer, RuntimeCoreServer, mlserver_available

# --------------------------------------------------------------------------- scenario A


def light_heavy_phases(url: str, root: int, args: argparse.Namespace) -> dict[str, Any]:
    light_url, heavy_url = infer_url(url, "light"), infer_url(url, "heavy")
    light_body, heavy_body = models.request_body("light"), models.request_body("heavy")

    def light_open(d: float) -> Load:
        return OpenLoop(light_url, light_body, rate=args.light_rate, duration=d)

    def light_closed(d: float) -> Load:
        return ClosedLoop(light_url, light_body, concurrency=1, duration=d)

    def heavy(d: float) -> Load:
        return ClosedLoop(heavy_url, heavy_body, concurrency=args.heavy_concurrency, duration=d)

    phases: dict[str, Any] = {}

    def run(label: str, make: Any) -> list[LoadResult]:
        results, cpu = windowed(make, root, args.warmup, args.duration)
        phases[label] = {
            "results": [r.as_dict() for r in results],
            "server_cpu_cores": cpu.seconds / cpu.wall,
            "machine_busy_cores": cpu.machine_busy / cpu.wall,
        }
        summary = ", ".join(
            f"{r.kind}: {r.rps:.0f} req/s p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} ms err {r.errors}" for r in results
        )
        progress(f"  {label}: {summary}")
        return results

    (lo_alone,) = run("light_open_alone", lambda d: [light_open(d)])
    (h_alone,) = run("heavy_alone", lambda d: [heavy(d)])
    lo_both, h_both_o = run("both_open", lambda d: [light_open(d), heavy(d)])
    (lc_alone,) = run("light_closed_alone", lambda d: [light_closed(d)])
    lc_both, h_both_c = run("both_closed", lambda d: [light_closed(d), heavy(d)])

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {
        "phases": phases,
        "light_open_alone_p50": lo_alone.p50_ms,
        "light_open_alone_p99": lo_alone.p99_ms,
        "light_open_loaded_p50": lo_both.p50_ms,
        "light_open_loaded_p99": lo_both.p99_ms,
        "light_open_p50_ratio": ratio(lo_both.p50_ms, lo_alone.p50_ms),
        "light_open_p99_ratio": ratio(lo_both.p99_ms, lo_alone.p99_ms),
        "light_closed_alone_p50": lc_alone.p50_ms,
        "light_closed_alone_p99": lc_alone.p99_ms,
        "light_closed_loaded_p50": lc_both.p50_ms,
        "light_closed_loaded_p99": lc_both.p99_ms,
        "light_closed_p50_ratio": ratio(lc_both.p50_ms, lc_alone.p50_ms),
        "light_closed_p99_ratio": ratio(lc_both.p99_ms, lc_alone.p99_ms),
        "light_closed_alone_rps": lc_alone.rps,
        "light_closed_loaded_rps": lc_both.rps,
        "heavy_alone_rps": h_alone.rps,
        "heavy_with_open_rps": h_both_o.rps,
        "heavy_with_closed_rps": h_both_c.rps,
        "heavy_open_ratio": ratio(h_both_o.rps, h_alone.rps),
        "heavy_closed_ratio": ratio(h_both_c.rps, h_alone.rps),
        "errors": sum(r["errors"] for p in phases.values() for r in p["results"]),
    }


def scenario_runtime_core(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-fair-") as tmp:
        repo = Path(tmp)
        models.write_model(repo, "light", workers=2)
        models.write_model(repo, "heavy", workers=2)
        with RuntimeCoreServer(repo) as server:
            progress(f"runtime-core light+heavy (2 workers each) ready in {server.ready_seconds:.2f} s")
            out = light_heavy_phases(server.url, server.pid, args)
    out["server"] = "runtime-core (2 workers per model)"
    return out


def scenario_mlserver(args: argparse.Namespace, workers: int, per_model_pool: bool) -> dict[str, Any]:
    label = f"MLServer {'pool per model' if per_model_pool else 'shared pool'}, parallel_workers={workers}"
    with tempfile.TemporaryDirectory(prefix="bench-fair-mls-") as tmp:
        repo = Path(tmp)
        for name in ("light", "heavy"):
            params = {"inference_pool_gid": f"pool-{name}"} if per_model_pool else {}
            models.write_model(repo, name, flavor="mlserver", parameters=params)
        with MLServerServer(repo, parallel_workers=workers) as server:
            progress(f"{label} ready in {server.ready_seconds:.2f} s")
            out = light_heavy_phases(server.url, server.pid, args)
    out["server"] = label
    return out


# --------------------------------------------------------------------------- scenario B


def read_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _post(url: str, body: bytes) -> None:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()


def worker_pids(pids: list[int], name: str) -> list[int]:
    """The pids among ``pids`` of model ``name``'s workers: the kernel name of each
    (``/proc/PID/comm``, cut to 15 bytes) is ``rc-w<i>:<model>``."""
    out = []
    for pid in pids:
        comm = read_comm(pid)
        head, _, _ = comm.partition(":")
        if head.startswith("rc-w") and head[4:].isdigit() and f"{head}:{name}"[:15] == comm:
            out.append(pid)
    return out


def scenario_weights(args: argparse.Namespace) -> dict[str, Any]:
    weights = {"heavy_w2": 2.0, "heavy_w1": 1.0}
    with tempfile.TemporaryDirectory(prefix="bench-weights-") as tmp:
        repo = Path(tmp)
        for name, weight in weights.items():
            models.write_model(repo, "heavy", model_name=name, workers=2, weight=weight)
        with RuntimeCoreServer(repo) as server:
            progress(f"weights: runtime-core ready in {server.ready_seconds:.2f} s")
            body = models.request_body("heavy")
            for name in weights:  # one request each: every worker is up and named
                _post(infer_url(server.url, name), body)

            def make(d: float) -> list[Load]:
                return [
                    ClosedLoop(infer_url(server.url, n), body, concurrency=args.heavy_concurrency, duration=d)
                    for n in weights
                ]

            results, cpu = windowed(make, server.pid, args.warmup, args.duration)
            assert cpu.before is not None and cpu.after is not None
            alive = [pid for pid, _ in cpu.after]
            workers_of = {n: worker_pids(alive, n) for n in weights}
            progress(f"weights: worker pids {workers_of}")
            if any(not pids for pids in workers_of.values()):
                raise RuntimeError(f"no rc-w<i>:<model> workers found for some model: {workers_of}")
            cpu_of = {n: cpu_delta(cpu.before, cpu.after, only=pids) for n, pids in workers_of.items()}
    total = sum(cpu_of.values())
    rows = []
    for (name, weight), result in zip(weights.items(), results, strict=True):
        rows.append(
            {
                "model": name,
                "weight": weight,
                "rps": result.rps,
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "cpu_s": cpu_of[name],
                "cpu_share": cpu_of[name] / total if total else 0,
                "errors": result.errors,
            }
        )
    ratio = rows[0]["cpu_s"] / rows[1]["cpu_s"] if rows[1]["cpu_s"] else float("nan")
    rps_ratio = rows[0]["rps"] / rows[1]["rps"] if rows[1]["rps"] else float("nan")
    progress(f"weights: CPU ratio w2/w1 = {ratio:.2f}, req/s ratio = {rps_ratio:.2f}")
    return {"models": rows, "cpu_ratio": ratio, "rps_ratio": rps_ratio, "workers": workers_of}


# --------------------------------------------------------------------------- report


def render(data: dict[str, Any]) -> str:
    a = data["args"]
    parts = [
        f"# bench_fairness ({data['env']['time']}, {data['env']['cpus']} CPUs)",
        "",
        f"Light probe: open loop {a['light_rate']} req/s, or closed loop concurrency 1; heavy flood: closed "
        f"loop concurrency {a['heavy_concurrency']}; warm-up {a['warmup']} s, window {a['duration']} s.",
        "",
    ]
    headers = [
        "server",
        "light open p50/p99 alone ms",
        "loaded ms",
        "p99 ratio",
        "light c=1 p50/p99 alone ms",
        "loaded ms",
        "p99 ratio",
        "heavy alone req/s",
        "heavy w/ open",
        "heavy w/ c=1",
        "errors",
    ]
    rows = []
    for s in data["light_heavy"]:
        rows.append(
            [
                s["server"],
                f"{fmt(s['light_open_alone_p50'], 2)} / {fmt(s['light_open_alone_p99'], 2)}",
                f"{fmt(s['light_open_loaded_p50'], 2)} / {fmt(s['light_open_loaded_p99'], 2)}",
                f"{s['light_open_p99_ratio']:.2f}x",
                f"{fmt(s['light_closed_alone_p50'], 2)} / {fmt(s['light_closed_alone_p99'], 2)}",
                f"{fmt(s['light_closed_loaded_p50'], 2)} / {fmt(s['light_closed_loaded_p99'], 2)}",
                f"{s['light_closed_p99_ratio']:.2f}x",
                s["heavy_alone_rps"],
                f"{fmt(s['heavy_with_open_rps'])} ({s['heavy_open_ratio']:.2f}x)",
                f"{fmt(s['heavy_with_closed_rps'])} ({s['heavy_closed_ratio']:.2f}x)",
                s["errors"],
            ]
        )
    parts += [table(headers, rows), ""]
    if data.get("weights"):
        w = data["weights"]
        parts.append("Weights (two flooded copies of heavy, 2 workers each; CPU of each model's rc-w<i> workers):")
        parts.append("")
        parts.append(
            table(
                ["model", "weight", "req/s", "p50 ms", "p99 ms", "CPU s", "CPU share", "errors"],
                [
                    [
                        r["model"],
                        r["weight"],
                        r["rps"],
                        r["p50_ms"],
                        r["p99_ms"],
                        r["cpu_s"],
                        f"{100 * r['cpu_share']:.1f}%",
                        r["errors"],
                    ]
                    for r in w["models"]
                ],
            )
        )
        parts.append("")
        parts.append(f"CPU ratio w2/w1: {w['cpu_ratio']:.2f} (req/s ratio {w['rps_ratio']:.2f})")
        parts.append("")
    parts.append("Targets:")
    parts.append("")
    rc = next((s for s in data["light_heavy"] if s["server"].startswith("runtime-core")), None)
    trows: list[tuple[str, str, str]] = []
    if rc is not None:
        trows += [
            (
                "light p99 under flood <= 2x alone (open loop)",
                f"{rc['light_open_p99_ratio']:.2f}x",
                verdict(rc["light_open_p99_ratio"] <= 2.0),
            ),
            ("... with heavy >= 0.9x alone", f"{rc['heavy_open_ratio']:.2f}x", verdict(rc["heavy_open_ratio"] >= 0.9)),
            (
                "light p99 under flood <= 2x alone (closed c=1)",
                f"{rc['light_closed_p99_ratio']:.2f}x",
                verdict(rc["light_closed_p99_ratio"] <= 2.0),
            ),
            (
                "... with heavy >= 0.9x alone",
                f"{rc['heavy_closed_ratio']:.2f}x",
                verdict(rc["heavy_closed_ratio"] >= 0.9),
            ),
        ]
    if data.get("weights"):
        r = data["weights"]["cpu_ratio"]
        trows.append(("weights 2:1 -> CPU 2:1 within 15% (1.70-2.30)", f"{r:.2f}", verdict(1.7 <= r <= 2.3)))
    data["targets"] = trows
    parts.append(table(["target", "value", "verdict"], trows))
    if data.get("failures"):
        parts += ["", "Failures:", ""] + [f"- {f.splitlines()[0]}" for f in data["failures"]]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="measured window, seconds")
    parser.add_argument("-w", "--warmup", type=float, default=3.0, help="warm-up before each window, seconds")
    parser.add_argument("--light-rate", type=float, default=100.0, help="open-loop light probe, req/s")
    parser.add_argument("--heavy-concurrency", type=int, default=16)
    parser.add_argument(
        "--mlserver-configs",
        default="shared:1,shared:4,pool:2",
        help="comma-separated shared:N / pool:N (pool = one inference_pool_gid per model)",
    )
    parser.add_argument("--quick", action="store_true", help="3 s windows, 1 s warm-up")
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--no-weights", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    for name in ("light", "heavy"):
        models.artifact_path(name)
    data: dict[str, Any] = {
        "env": environment(),
        "args": vars(args),
        "light_heavy": [],
        "weights": None,
        "failures": [],
    }

    def attempt(label: str, fn: Any, *fn_args: Any) -> Any:
        try:
            return fn(*fn_args)
        except (RuntimeError, TimeoutError, OSError) as exc:
            progress(f"{label} FAILED: {exc}")
            data["failures"].append(f"{label}: {str(exc)[-2000:]}")
            return None

    try:
        row = attempt("runtime-core light+heavy", scenario_runtime_core, args)
        if row is not None:
            data["light_heavy"].append(row)
        if not args.no_weights:
            data["weights"] = attempt("weights", scenario_weights, args)
        if not args.no_mlserver and mlserver_available():
            for config in args.mlserver_configs.split(","):
                kind, workers = config.split(":")
                row = attempt(f"MLServer {config}", scenario_mlserver, args, int(workers), kind == "pool")
                if row is not None:
                    data["light_heavy"].append(row)
    except KeyboardInterrupt:
        progress("interrupted: writing what was measured")
        data["failures"].append("interrupted")
    markdown = render(data)
    publish("fairness", data, markdown)


if __name__ == "__main__":
    main()
