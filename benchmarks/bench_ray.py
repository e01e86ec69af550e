"""Overhead of the Ray pool backend against local worker processes, on one machine, one run.

On one machine Ray cannot add cores, so this measures what it costs: req/s and server CPU
per request for the ``light`` model (LogisticRegression, 1 row: server overhead) and the
``heavy`` random forest (300 trees, 64 rows: CPU-bound), each with W workers, served by

* ``process``: runtime-core's local worker processes;
* ``ray``: the same model with ``"backend": "ray"``: W Ray actors (``num_cpus`` 1) on a
  local Ray head started for the run (``ray start --head --block``).

CPU per request counts the server's whole process tree and, for ``ray``, also the Ray
head's whole tree (GCS, raylet, the actors, Ray's idle helpers): everything Ray adds is
charged to it. Closed loop with wrk (C in flight), W s warm-up then D s window per row.

Large bodies: the built-in ``echo`` model (one worker / one actor) echoes a binary FP32
tensor of 1, 8 and 32 MiB in binary, one request at a time (median of 3): what carrying
the bytes through Ray (its object store, for arguments this large) adds per MiB.

Targets (issue 11): heavy with Ray >= 0.9x the process backend's req/s; light CPU per
request with Ray <= 2x the process backend's.

Results: ``benchmarks/results/ray-*.{json,md}``.

Example::

    python benchmarks/bench_ray.py               # ~3 min
    python benchmarks/bench_ray.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import models
from bench_bodies import _bodies, _send
from common import environment, infer_url, progress, publish, table, verdict
from loadgen import ClosedLoop, run_loads
from measure import CpuWindow
from servers import HOST, RuntimeCoreServer, free_port

MODELS = ("light", "heavy")
BACKENDS = ("process", "ray")


class RayHead:
    """``ray start --head --block`` in its own session: its tree holds every Ray process."""

    def __init__(self, cpus: int) -> None:
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"
        ray_bin = Path(sys.executable).with_name("ray")
        cmd = [str(ray_bin), "start", "--head", "--block", f"--port={self.port}", f"--node-ip-address={HOST}"]
        cmd += [f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def wait(self, timeout: float = 120.0) -> None:
        """Until the head's GCS port accepts connections (actors wait for the raylet anyway)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("ray start exited")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("the Ray head did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()


class _Both:
    """CPU windows over two process trees at once (the server's and the Ray head's)."""

    def __init__(self, roots: list[int]) -> None:
        self.windows = [CpuWindow(r) for r in roots]

    def __enter__(self) -> _Both:
        for w in self.windows:
            w.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.windows:
            w.__exit__(*exc)


def measure(server: RuntimeCoreServer, ray_root: int | None, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop window; CPU of the server's tree and, for Ray, of the Ray head's tree."""
    concurrency = args.concurrency[model]
    url, body = infer_url(server.url, model), models.request_body(model)

    def make(seconds: float) -> list[ClosedLoop]:
        return [ClosedLoop(url, body, concurrency=concurrency, duration=seconds)]

    run_loads(make(args.warmup))
    loads = make(args.duration)
    for load in loads:
        load.prepare()
    try:
        with _Both([server.pid] + ([ray_root] if ray_root is not None else [])) as cpu:
            for load in loads:
                load.go()
            [result] = [load.wait() for load in loads]
    finally:
        for load in loads:
            load.kill()
    row = result.as_dict()
    main = cpu.windows[0]
    row["cpu_s"] = main.seconds
    row["ray_cpu_s"] = cpu.windows[1].seconds if ray_root is not None else 0.0
    requests = result.requests
    row["cpu_main_ms_per_req"] = 1000 * main.root_seconds / requests if requests else math.nan
    row["cpu_ms_per_req_total"] = 1000 * (row["cpu_s"] + row["ray_cpu_s"]) / requests if requests else math.nan
    row["window_s"] = cpu.windows[0].wall
    return row


def large_body(server: RuntimeCoreServer, mib: int, repeats: int) -> dict[str, Any]:
    """A binary FP32 tensor of ``mib`` MiB echoed back in binary, one request at a time."""
    body, headers = _bodies(mib)["binary request"]
    runs = [_send(server.port, body, headers) for _ in range(repeats + 1)][1:]  # the first warms
    if {status for status, _, _ in runs} != {200}:
        raise RuntimeError(f"echo of {mib} MiB failed: {[status for status, _, _ in runs]}")
    seconds = sorted(s for _, _, s in runs)[len(runs) // 2]
    return {"mib": mib, "median_ms": 1000 * seconds, "runs_ms": [1000 * s for _, _, s in runs]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"args": dict(vars(args)), "env": environment(), "rows": [], "bodies": []}
    head = RayHead(cpus=args.workers * len(MODELS) + 1)  # logical CPUs: one per actor (and echo's)
    try:
        head.wait()
        progress(f"Ray head at {head.address}")
        for backend in BACKENDS:
            repo = Path(tempfile.mkdtemp(prefix=f"bench-ray-{backend}-"))
            try:
                extra: dict[str, Any] = {}
                if backend == "ray":
                    extra = {"backend": "ray", "ray": {"num_cpus": 1, "placement": "DEFAULT"}}
                for model in MODELS:
                    models.write_model(repo, model, workers=args.workers, **extra)
                (repo / "echo").mkdir()
                echo = {"runtime": "echo", "parallel_workers": 1, **extra}
                (repo / "echo" / "model-settings.json").write_text(json.dumps(echo))
                server = RuntimeCoreServer(repo, timeout=300)
                if backend == "ray":
                    server.environment = lambda: {**os.environ, "RUNTIME_CORE_RAY_ADDRESS": head.address}  # type: ignore[method-assign]
                with server:
                    progress(f"{backend}: ready in {server.ready_seconds:.1f} s")
                    for model in MODELS:  # a model that failed to load would give rows of errors
                        with urllib.request.urlopen(f"{server.url}/v2/models/{model}/ready", timeout=10):
                            pass
                    if backend == "ray":
                        # What the Ray cluster burns with no request at all (GCS, raylet, actors'
                        # core-worker threads): a fixed cost, shown apart from the per-request one.
                        with CpuWindow(head.proc.pid) as idle:
                            time.sleep(args.duration)
                        results["ray_idle_cores"] = idle.seconds / idle.wall
                        progress(f"ray: idle cluster uses {results['ray_idle_cores']:.2f} cores")
                    for mib in args.body_sizes:
                        row = large_body(server, mib, args.repeats)
                        row.update(backend=backend)
                        results["bodies"].append(row)
                        progress(f"{backend} echo of {mib} MiB: {row['median_ms']:.0f} ms")
                    for model in MODELS:
                        row = measure(server, head.proc.pid if backend == "ray" else None, model, args)
                        row.update(backend=backend, model=model)
                        results["rows"].append(row)
                        progress(
                            f"{backend} {model}: {row['rps']:.0f} req/s, "
                            f"{row['cpu_ms_per_req_total']:.2f} ms CPU/req (Ray part {row['ray_cpu_s']:.1f} s)"
                        )
            finally:
                shutil.rmtree(repo, ignore_errors=True)
    finally:
        head.stop()
    return results


def render(results: dict[str, Any]) -> str:
    rows = {(r["backend"], r["model"]): r for r in results["rows"]}
    a = results["args"]
    lines = [
        f"Closed loop with wrk, {a['workers']} workers per model (Ray: {a['workers']} actors, num_cpus 1, "
        f"on a local head), warm-up {a['warmup']} s, window {a['duration']} s, concurrency "
        f"light {a['concurrency']['light']}, heavy {a['concurrency']['heavy']}. CPU per request: the "
        "server's process tree plus, for Ray, the Ray head's whole tree.",
        "",
    ]
    body = []
    for model in MODELS:
        for backend in BACKENDS:
            r = rows[(backend, model)]
            idle = results.get("ray_idle_cores", 0.0) if backend == "ray" else 0.0
            busy = r["cpu_s"] + r["ray_cpu_s"] - idle * r["window_s"]
            r["cpu_ms_per_req_less_idle"] = 1000 * busy / r["requests"] if r["requests"] else math.nan
            cpu = [r["cpu_ms_per_req_total"], r["cpu_ms_per_req_less_idle"], r["cpu_main_ms_per_req"]]
            body.append([model, backend, r["rps"], r["p50_ms"], r["p99_ms"], *cpu])
    headers = ["model", "backend", "req/s", "p50 ms", "p99 ms", "CPU ms/req (all)", "less Ray's idle"]
    headers.append("main process CPU ms/req")
    lines.append(table(headers, body))
    lines[0] += f" The idle Ray cluster used {results.get('ray_idle_cores', math.nan):.2f} cores (measured apart)."
    if results.get("bodies"):
        by = {(b["backend"], b["mib"]): b for b in results["bodies"]}
        sizes = sorted({b["mib"] for b in results["bodies"]})
        lines += [
            "",
            "Large bodies: the built-in `echo` model (1 worker / 1 actor), a binary FP32 tensor echoed "
            f"in binary, one request at a time, median of {a['repeats']} after one to warm up.",
            "",
            table(
                ["MiB each way", "process ms", "ray ms", "ray extra ms per MiB"],
                [
                    [m, by[("process", m)]["median_ms"], by[("ray", m)]["median_ms"],
                     (by[("ray", m)]["median_ms"] - by[("process", m)]["median_ms"]) / m]
                    for m in sizes
                ],
            ),
        ]
    heavy = rows[("ray", "heavy")]["rps"] / rows[("process", "heavy")]["rps"]
    light = rows[("ray", "light")]["cpu_ms_per_req_total"] / rows[("process", "light")]["cpu_ms_per_req_total"]
    results["ratios"] = {"heavy_rps": heavy, "light_cpu": light}
    lines += [
        "",
        table(
            ["target", "measured", "verdict"],
            [
                ["heavy req/s, Ray / process >= 0.9", f"{heavy:.2f}x", verdict(heavy >= 0.9)],
                ["light CPU per request, Ray / process <= 2", f"{light:.2f}x", verdict(light <= 2.0)],
            ],
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--quick", action="store_true", help="2 s warm-up, 5 s windows")
    parser.add_argument("--body-sizes", type=int, nargs="*", default=[1, 8, 32], help="echo body sizes, MiB")
    parser.add_argument("-r", "--repeats", type=int, default=3, help="requests per body size (median)")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.duration = 2.0, 5.0
    args.concurrency = {"light": 16, "heavy": 8}
    results = run(args)
    markdown = render(results)
    publish("ray", results, markdown)


if __name__ == "__main__":
    main()
