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
the bytes to an actor (on its TCP connection to the server) adds per MiB.

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
from measure import CLOCK_TICKS, CpuWindow, cmdline
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
        # Ray turns token authentication on for `ray start` when a token file exists in the
        # home folder (a local ray.init() writes one); the server would then need the token.
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
        )

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


def predicts(server: RuntimeCoreServer, model: str) -> tuple[int, int]:
    """(rows served, predict calls) of ``model`` so far, from the statistics extension (which
    counts rows, as Triton does)."""
    with urllib.request.urlopen(f"{server.url}/v2/models/{model}/stats", timeout=10) as resp:
        stats = json.load(resp)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def ray_role(pid: int) -> str:
    """What a process of the Ray head's tree is, from its title: Ray renames its workers."""
    words = cmdline(pid)
    first = words[0] if words else ""
    if first.startswith("ray::IDLE"):
        return "idle workers"
    if first.startswith("ray::"):
        return "actors"
    if "gcs_server" in first:
        return "gcs"
    if "raylet" in first:
        return "raylet"
    return "other"


def by_role(window: CpuWindow) -> dict[str, float]:
    """CPU seconds of the window per :func:`ray_role`."""
    assert window.before is not None and window.after is not None
    roles: dict[str, float] = {}
    for key, end in window.after.items():
        role = ray_role(key[0])
        roles[role] = roles.get(role, 0.0) + (end - window.before.get(key, 0)) / CLOCK_TICKS
    return roles


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


def measure(server: RuntimeCoreServer, head: RayHead | None, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop window: req/s, latency, CPU of the server's tree and, for Ray, of the
    Ray head's tree (by role), and how many requests each ``predict`` served."""
    concurrency = args.concurrency[model]
    url, body = infer_url(server.url, model), models.request_body(model)

    def make(seconds: float) -> list[ClosedLoop]:
        return [ClosedLoop(url, body, concurrency=concurrency, duration=seconds)]

    run_loads(make(args.warmup))
    loads = make(args.duration)
    for load in loads:
        load.prepare()
    before = predicts(server, model)
    try:
        with _Both([server.pid] + ([head.proc.pid] if head is not None else [])) as cpu:
            for load in loads:
                load.go()
            [result] = [load.wait() for load in loads]
    finally:
        for load in loads:
            load.kill()
    after = predicts(server, model)
    row = result.as_dict()
    main = cpu.windows[0]
    requests = result.requests
    per_req = 1000 / requests if requests else math.nan
    row["window_s"] = main.wall
    row["cpu_s"] = main.seconds
    row["ray_cpu_s"] = cpu.windows[1].seconds if head is not None else 0.0
    row["ray_roles_ms_per_req"] = {k: v * per_req for k, v in by_role(cpu.windows[1]).items()} if head else {}
    row["cpu_main_ms_per_req"] = main.root_seconds * per_req
    row["cpu_server_ms_per_req"] = main.seconds * per_req
    row["cpu_ms_per_req_total"] = (row["cpu_s"] + row["ray_cpu_s"]) * per_req
    rows, executions = after[0] - before[0], after[1] - before[1]
    rows_per_request = len(models.request_array(model))
    row["requests_per_predict"] = rows / rows_per_request / executions if executions else math.nan
    return row


def large_body(server: RuntimeCoreServer, mib: int, repeats: int) -> dict[str, Any]:
    """A binary FP32 tensor of ``mib`` MiB echoed back in binary, one request at a time."""
    body, headers = _bodies(mib)["binary request"]
    runs = [_send(server.port, body, headers) for _ in range(repeats + 1)][1:]  # the first warms
    if {status for status, _, _ in runs} != {200}:
        raise RuntimeError(f"echo of {mib} MiB failed: {[status for status, _, _ in runs]}")
    seconds = sorted(s for _, _, s in runs)[len(runs) // 2]
    return {"mib": mib, "median_ms": 1000 * seconds, "runs_ms": [1000 * s for _, _, s in runs]}


def phase(backend: str, round_: int, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """One backend's turn in one round: its own server (and, for Ray, its own Ray head, so
    that no idle Ray cluster runs beside the process backend's windows), every model once."""
    head = RayHead(cpus=args.workers * len(MODELS) + 1) if backend == "ray" else None  # one per actor
    repo = Path(tempfile.mkdtemp(prefix=f"bench-ray-{backend}-"))
    try:
        extra: dict[str, Any] = {}
        if head is not None:
            head.wait()
            extra = {"backend": "ray", "ray": {"num_cpus": 1, "placement": "DEFAULT"}}
        for model in MODELS:
            models.write_model(repo, model, workers=args.workers, **extra)
        (repo / "echo").mkdir()
        echo = {"runtime": "echo", "parallel_workers": 1, **extra}
        (repo / "echo" / "model-settings.json").write_text(json.dumps(echo))
        server = RuntimeCoreServer(repo, timeout=300)
        if head is not None:
            address = head.address
            server.environment = lambda: {**os.environ, "RUNTIME_CORE_RAY_ADDRESS": address}  # type: ignore[method-assign]
        with server:
            progress(f"round {round_} {backend}: ready in {server.ready_seconds:.1f} s")
            for model in MODELS:  # a model that failed to load would give rows of errors
                with urllib.request.urlopen(f"{server.url}/v2/models/{model}/ready", timeout=10):
                    pass
            idle = 0.0
            if head is not None:
                # What the Ray cluster burns with no request at all (GCS, raylet, the actors'
                # core-worker threads): a fixed cost, shown apart from the per-request one.
                with CpuWindow(head.proc.pid) as window:
                    time.sleep(args.idle)
                idle = window.seconds / window.wall
                results["ray_idle"].append({"round": round_, "cores": idle, "roles": by_role(window)})
                progress(f"round {round_} ray: idle cluster uses {idle:.2f} cores")
            if round_ == 0:
                for mib in args.body_sizes:
                    body_row = large_body(server, mib, args.repeats)
                    body_row.update(backend=backend)
                    results["bodies"].append(body_row)
                    progress(f"{backend} echo of {mib} MiB: {body_row['median_ms']:.0f} ms")
            for model in MODELS:
                row = measure(server, head, model, args)
                busy = row["cpu_s"] + row["ray_cpu_s"] - idle * row["window_s"]
                row["cpu_ms_per_req_less_idle"] = 1000 * busy / row["requests"] if row["requests"] else math.nan
                row.update(backend=backend, model=model, round=round_)
                results["rows"].append(row)
                progress(
                    f"round {round_} {backend} {model}: {row['rps']:.0f} req/s, "
                    f"{row['cpu_ms_per_req_total']:.2f} ms CPU/req, "
                    f"{row['requests_per_predict']:.1f} requests per predict"
                )
    finally:
        if head is not None:
            head.stop()
        shutil.rmtree(repo, ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"args": dict(vars(args)), "env": environment(), "rows": [], "bodies": [], "ray_idle": []}
    for round_ in range(args.rounds):
        # Alternate the order, so that a drift in the machine's load favours neither backend.
        for backend in BACKENDS if round_ % 2 == 0 else BACKENDS[::-1]:
            phase(backend, round_, args, results)
    return results


def _median(values: list[float]) -> float:
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


FIELDS = (
    "rps",
    "p50_ms",
    "p99_ms",
    "cpu_ms_per_req_total",
    "cpu_ms_per_req_less_idle",
    "cpu_server_ms_per_req",
    "cpu_main_ms_per_req",
    "requests_per_predict",
)


def summarise(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
    """Per backend and model, the median over rounds of every field; and per target, the
    median over rounds of the ratio within a round (the two backends' windows closest in time)."""
    rows = results["rows"]
    summary: dict[tuple[str, str], dict[str, float]] = {}
    for model in MODELS:
        for backend in BACKENDS:
            mine = [r for r in rows if r["model"] == model and r["backend"] == backend]
            summary[(backend, model)] = {f: _median([r[f] for r in mine]) for f in FIELDS}
            roles = {role for r in mine for role in r["ray_roles_ms_per_req"]}
            for role in sorted(roles):
                shares = [r["ray_roles_ms_per_req"].get(role, 0.0) for r in mine]
                summary[(backend, model)][f"ray {role}"] = _median(shares)

    def ratio(model: str, field: str) -> list[float]:
        out = []
        for round_ in sorted({r["round"] for r in rows}):
            pair = {r["backend"]: r[field] for r in rows if r["model"] == model and r["round"] == round_}
            if len(pair) == 2 and pair["process"]:
                out.append(pair["ray"] / pair["process"])
        return out

    heavy, light, light_less = (
        ratio("heavy", "rps"),
        ratio("light", "cpu_ms_per_req_total"),
        ratio("light", "cpu_ms_per_req_less_idle"),
    )
    results["ratios"] = {
        "heavy_rps": _median(heavy),
        "heavy_rps_rounds": heavy,
        "light_cpu": _median(light),
        "light_cpu_rounds": light,
        "light_cpu_less_idle": _median(light_less),
        "light_cpu_less_idle_rounds": light_less,
    }
    results["ray_idle_cores"] = _median([i["cores"] for i in results["ray_idle"]])
    return summary


def render(results: dict[str, Any]) -> str:
    summary = summarise(results)
    a = results["args"]
    lines = [
        f"Closed loop with wrk, {a['workers']} workers per model (Ray: {a['workers']} actors, num_cpus 1, "
        f"on a local Ray head), warm-up {a['warmup']:g} s, window {a['duration']:g} s, concurrency "
        f"light {a['concurrency']['light']}, heavy {a['concurrency']['heavy']}; {a['rounds']} rounds (each "
        "backend with its own server, and Ray with its own head, per round; the order alternates), "
        "medians over rounds. CPU per request, all: the server's process tree plus, for Ray, the Ray "
        f"head's whole tree. The idle Ray cluster used {results['ray_idle_cores']:.2f} cores (median, "
        "measured apart); 'less Ray's idle' subtracts that.",
        "",
    ]
    body = []
    for model in MODELS:
        for backend in BACKENDS:
            s = summary[(backend, model)]
            body.append([model, backend, *(s[f] for f in FIELDS)])
    headers = ["model", "backend", "req/s", "p50 ms", "p99 ms", "CPU ms/req (all)", "less Ray's idle"]
    headers += ["server tree ms/req", "main process ms/req", "requests per predict"]
    lines.append(table(headers, body))
    roles = sorted({k.removeprefix("ray ") for s in summary.values() for k in s if k.startswith("ray ")})
    if roles:
        lines += [
            "",
            "Where the Ray head's tree spent its CPU, ms per request (median over rounds):",
            "",
            table(["model", *roles], [[m, *(summary[("ray", m)].get(f"ray {r}", 0.0) for r in roles)] for m in MODELS]),
        ]
    if results.get("bodies"):
        by = {(b["backend"], b["mib"]): b for b in results["bodies"]}
        sizes = sorted({b["mib"] for b in results["bodies"]})
        lines += [
            "",
            "Large bodies (first round): the built-in `echo` model (1 worker / 1 actor), a binary FP32 "
            f"tensor echoed in binary, one request at a time, median of {a['repeats']} after one to warm up.",
            "",
            table(
                ["MiB each way", "process ms", "ray ms", "ray extra ms per MiB"],
                [
                    [
                        m,
                        by[("process", m)]["median_ms"],
                        by[("ray", m)]["median_ms"],
                        (by[("ray", m)]["median_ms"] - by[("process", m)]["median_ms"]) / m,
                    ]
                    for m in sizes
                ],
            ),
        ]
    r = results["ratios"]

    def rounds(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    lines += [
        "",
        table(
            ["target (ratio within a round, median over rounds)", "measured", "rounds", "verdict"],
            [
                [
                    "heavy req/s, Ray / process >= 0.9",
                    f"{r['heavy_rps']:.2f}x",
                    rounds(r["heavy_rps_rounds"]),
                    verdict(r["heavy_rps"] >= 0.9),
                ],
                [
                    "light CPU per request (all), Ray / process <= 2",
                    f"{r['light_cpu']:.2f}x",
                    rounds(r["light_cpu_rounds"]),
                    verdict(r["light_cpu"] <= 2.0),
                ],
                [
                    "light CPU per request less Ray's idle, Ray / process <= 2",
                    f"{r['light_cpu_less_idle']:.2f}x",
                    rounds(r["light_cpu_less_idle_rounds"]),
                    verdict(r["light_cpu_less_idle"] <= 2.0),
                ],
            ],
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds the idle Ray cluster is measured")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each backend once per round); medians")
    parser.add_argument("--quick", action="store_true", help="1 round, 2 s warm-up, 5 s windows, no large bodies")
    parser.add_argument("--body-sizes", type=int, nargs="*", default=[1, 8, 32], help="echo body sizes, MiB")
    parser.add_argument("-r", "--repeats", type=int, default=3, help="requests per body size (median)")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.duration, args.rounds, args.body_sizes = 2.0, 5.0, 1, []
    args.concurrency = {"light": 16, "heavy": 8}
    results = run(args)
    markdown = render(results)
    publish("ray", results, markdown)


if __name__ == "__main__":
    main()
