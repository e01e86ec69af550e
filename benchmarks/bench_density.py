"""Many models on one machine: memory, start-up, idle cost and throughput against N.

For N tiny scikit-learn models (LogisticRegression on 20 features, one folder each, default
settings), runtime-core and MLServer 1.7.1 are measured in the same run:

* time to ready: the server's ``/v2/health/ready``, then every model READY in the
  repository index;
* processes and PSS of the server's process tree, and its idle CPU (cores) over a quiet
  window (``--idle`` seconds, 10 by default, once ``SETTLE`` seconds have passed since every
  model was READY, so that the last loads' follow-up work does not count as idle). Idle
  CPU is the kernel's run time in nanoseconds of every thread of every process of the
  server's tree (``/proc/PID/task/TID/schedstat``), the same method for both servers: clock
  ticks of 10 ms (``/proc/PID/stat``) cannot tell 0.004 from 0.01 cores in 10 s. The
  main process's share is reported too;
* the latency of a first request to each model in turn (one at a time; ``--first`` models,
  1000 by default: pass N for every model), and the PSS of the tree just after;
* closed-loop traffic (wrk, concurrency 8, 1-row requests), each request to a model picked
  at random, uniformly or by Zipf's law (s = 1.2): req/s, p99 and server CPU per request;
* the same uniform traffic at moderate load (``--think``): each connection waits a random
  think time (exponential, mean 1, 2 and 4 ms by default) after each answer. Flat-out traffic
  is where one model gains most from merging its concurrent requests into one call; at a
  moderate rate that gain mostly goes, and a model count's cost shows as it is in the
  normal case. The think time is random so that the connections do not fall into step
  (a fixed one makes all eight send together, a burst every few milliseconds).

    python benchmarks/bench_density.py                 # N in 1, 200, 1000 (about 10 min)
    python benchmarks/bench_density.py --counts 1 200 --duration 5 --warmup 2   # quicker
    python benchmarks/bench_density.py --counts 10000 --first 10000   # ten thousand (issue 23)

MLServer is found through ``MLSERVER_BIN`` (see ``servers.py``); without it its rows are
skipped. Results go to ``benchmarks/results/density-*.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import environment, fmt, progress, publish, table, windowed
from loadgen import _LUA, ClosedLoop
from measure import RunTimeWindow, tree_pids, tree_pss_mib
from servers import MLServerServer, RuntimeCoreServer, mlserver_available

FEATURES = 20
#: Seconds between every model READY and the idle-CPU window.
SETTLE = 3.0
BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP32", "data": [0.1] * FEATURES}]}
).encode()

_ROUTED_LUA = r"""
local names, cdf = {}, {}
for line in io.lines(os.getenv("BENCH_ROUTES")) do
  local name, p = string.match(line, "([^ ]+) ([^ ]+)")
  names[#names + 1] = name
  cdf[#cdf + 1] = tonumber(p)
end
math.randomseed(os.time())
request = function()
  local r = math.random()
  local lo, hi = 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < r then lo = mid + 1 else hi = mid end
  end
  return wrk.format(nil, "/v2/models/" .. names[lo] .. "/infer")
end
"""

#: wrk's ``delay`` hook: milliseconds a connection waits after an answer before its next
#: request, drawn from an exponential distribution of mean ``BENCH_THINK_MS`` (whole
#: milliseconds: wrk's timers have no finer grain).
_THINK_LUA = r"""
local think = tonumber(os.getenv("BENCH_THINK_MS"))
delay = function()
  return math.floor(-math.log(1 - math.random()) * think)
end
"""


class RoutedLoop(ClosedLoop):
    """wrk sending each request to a model drawn from ``weights`` (names -> probability);
    with ``think_ms``, each connection waits a random think time after each answer."""

    def __init__(self, base: str, weights: dict[str, float], *, think_ms: float = 0.0, **kw: Any) -> None:
        super().__init__(base + "/v2/models/x/infer", BODY, **kw)
        self.base = base
        self.weights = weights
        self.think_ms = think_ms

    def prepare(self) -> None:
        super().prepare()
        routes = tempfile.NamedTemporaryFile("w", prefix="bench-routes-", delete=False)
        total, acc = sum(self.weights.values()), 0.0
        with routes:
            for name, weight in self.weights.items():
                acc += weight / total
                routes.write(f"{name} {acc:.9f}\n")
        lua = self._cmd[self._cmd.index("-s") + 1]
        Path(lua).write_text(_LUA + _ROUTED_LUA + (_THINK_LUA if self.think_ms else ""))
        self._env["BENCH_THINK_MS"] = str(self.think_ms)
        self._cmd[-1] = self.base
        self._env["BENCH_ROUTES"] = routes.name
        self._files.append(routes.name)


def zipf(names: list[str], s: float = 1.2) -> dict[str, float]:
    return {name: 1.0 / (rank**s) for rank, name in enumerate(names, start=1)}


def write_models(root: Path, count: int, mlserver: bool) -> list[str]:
    import joblib
    from sklearn.linear_model import LogisticRegression

    cache = Path(__file__).parent / ".cache" / "density"
    cache.mkdir(parents=True, exist_ok=True)
    names = []
    rng = np.random.default_rng(0)
    for i in range(count):
        name = f"m{i:04d}"
        artifact = cache / f"{name}.joblib"
        if not artifact.exists():
            x = rng.normal(size=(64, FEATURES)).astype(np.float32)
            joblib.dump(LogisticRegression().fit(x, (x[:, i % FEATURES] > 0).astype(int)), artifact)
        folder = root / name
        folder.mkdir(parents=True)
        shutil.copyfile(artifact, folder / "model.joblib")  # a symlink would leave the repository
        if mlserver:
            settings: dict[str, Any] = {
                "name": name,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"},
            }
        else:
            settings = {"name": name, "runtime": "sklearn"}
        (folder / "model-settings.json").write_text(json.dumps(settings))
        names.append(name)
    return names


def post(url: str, body: bytes = b"{}") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def all_ready(base: str, count: int, started: float, timeout: float = 600.0) -> float:
    while time.perf_counter() < started + timeout:
        status, body = post(base + "/v2/repository/index")
        if status == 200:
            items = json.loads(body)
            if sum(1 for item in items if item.get("state") == "READY") >= count:
                return time.perf_counter() - started
        time.sleep(0.1)
    raise TimeoutError("models not ready")


def measure(server_cls: Any, count: int, args: argparse.Namespace) -> dict[str, Any]:
    mlserver = server_cls is MLServerServer
    root = Path(tempfile.mkdtemp(prefix="bench-density-"))
    try:
        names = write_models(root, count, mlserver)
        kwargs: dict[str, Any] = {"parallel_workers": 1} if mlserver else {}
        server = server_cls(root, timeout=900.0, **kwargs)
        started = time.perf_counter()
        with server:
            row: dict[str, Any] = {"server": server.name, "models": count}
            row["ready_server_s"] = server.ready_seconds
            row["ready_all_s"] = all_ready(server.url, count, started)
            time.sleep(SETTLE)  # let start-up work settle before the idle window
            with RunTimeWindow(server.pid) as idle:
                time.sleep(args.idle)
            row["idle_cores"] = idle.seconds / idle.wall
            assert idle.by_process is not None
            row["idle_main_cores"] = idle.by_process.get(server.pid, 0.0) / idle.wall
            row["processes"] = len(tree_pids(server.pid))
            row["pss_mib"] = tree_pss_mib(server.pid)
            first = []
            for name in names[: args.first]:
                t0 = time.perf_counter()
                status, body = post(f"{server.url}/v2/models/{name}/infer", BODY)
                first.append(1000 * (time.perf_counter() - t0))
                if status != 200:
                    raise RuntimeError(f"{server.name}: {name} answered {status}: {body[:200]!r}")
            row["pss_after_first_mib"] = tree_pss_mib(server.pid)  # every model asked once (--first)
            first.sort()
            row["first_p50_ms"] = statistics.median(first)
            row["first_p99_ms"] = first[min(len(first) - 1, int(0.99 * len(first)))]
            for label, weights in (("uniform", dict.fromkeys(names, 1.0)), ("zipf", zipf(names))):
                (result,), cpu = windowed(
                    lambda d, w=weights: [RoutedLoop(server.url, w, concurrency=args.concurrency, duration=d)],
                    server.pid,
                    args.warmup,
                    args.duration,
                )
                if result.errors:
                    raise RuntimeError(f"{server.name}: {result.errors} errors under {label} traffic")
                row[f"{label}_rps"] = result.rps
                row[f"{label}_p99_ms"] = result.p99_ms
                row[f"{label}_cpu_ms_per_req"] = 1000 * cpu.seconds / result.requests
                row[f"{label}_main_cpu_ms_per_req"] = 1000 * cpu.root_seconds / result.requests
            uniform = dict.fromkeys(names, 1.0)
            for think in args.think:
                (result,), cpu = windowed(
                    lambda d, t=think: [
                        RoutedLoop(server.url, uniform, concurrency=args.concurrency, duration=d, think_ms=t)
                    ],
                    server.pid,
                    1.0,
                    args.duration,
                )
                if result.errors:
                    raise RuntimeError(f"{server.name}: {result.errors} errors at think time {think:g} ms")
                row[f"think{think:g}_rps"] = result.rps
                row[f"think{think:g}_cpu_ms_per_req"] = 1000 * cpu.seconds / result.requests
                row[f"think{think:g}_main_cpu_ms_per_req"] = 1000 * cpu.root_seconds / result.requests
            row["pss_after_traffic_mib"] = tree_pss_mib(server.pid)
            row["processes_after_traffic"] = len(tree_pids(server.pid))
            if not mlserver:
                spawns, seconds = (
                    metric(server.url, "runtime_core_worker_spawns_total"),
                    metric(server.url, "runtime_core_worker_spawn_seconds_total"),
                )
                row["worker_spawns"] = spawns
                row["spawn_ms"] = 1000 * seconds / spawns if spawns else None
        progress(f"{server.name} x {count}: " + ", ".join(f"{k}={fmt(v)}" for k, v in row.items() if k != "server"))
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)


COLUMNS = [
    ("server", "server"),
    ("models", "models"),
    ("ready_server_s", "server ready s"),
    ("ready_all_s", "all ready s"),
    ("processes", "processes"),
    ("pss_mib", "PSS MiB"),
    ("idle_cores", "idle cores (ns run time, whole tree)"),
    ("idle_main_cores", "idle cores, main proc"),
    ("first_p50_ms", "1st req p50 ms"),
    ("first_p99_ms", "1st req p99 ms"),
    ("pss_after_first_mib", "PSS after 1st reqs MiB"),
    ("uniform_rps", "uniform req/s"),
    ("uniform_p99_ms", "uniform p99 ms"),
    ("uniform_cpu_ms_per_req", "uniform CPU ms/req"),
    ("uniform_main_cpu_ms_per_req", "uniform main proc ms/req"),
    ("zipf_rps", "Zipf req/s"),
    ("zipf_p99_ms", "Zipf p99 ms"),
    ("zipf_cpu_ms_per_req", "Zipf CPU ms/req"),
    ("zipf_main_cpu_ms_per_req", "Zipf main proc ms/req"),
    ("processes_after_traffic", "processes after"),
    ("pss_after_traffic_mib", "PSS after MiB"),
    ("worker_spawns", "workers spawned"),
    ("spawn_ms", "mean spawn ms"),
]


def _cell(row: dict[str, Any], key: str) -> Any:
    value = row.get(key)
    if key.startswith("idle") and isinstance(value, float):
        return f"{value:.4f}"  # idle cores are thousandths: the default two decimals show 0.00
    return value


def moderate_table(rows: list[dict[str, Any]], thinks: list[float]) -> str:
    """CPU per request at each think time, and against one model's at the same think time
    (same server, count 1, when it was measured)."""
    one = {row["server"]: row for row in rows if row["models"] == 1}
    lines = []
    for row in rows:
        for think in thinks:
            cpu = row[f"think{think:g}_cpu_ms_per_req"]
            base = one.get(row["server"], {}).get(f"think{think:g}_cpu_ms_per_req")
            lines.append(
                [
                    row["server"],
                    row["models"],
                    think,
                    row[f"think{think:g}_rps"],
                    1000 * cpu,
                    1000 * row[f"think{think:g}_main_cpu_ms_per_req"],
                    f"{cpu / base:.2f}x" if base else None,
                ]
            )
    headers = ["server", "models", "think ms (mean)", "req/s", "CPU us/req", "main proc us/req", "CPU / 1 model's"]
    return table(headers, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 200, 1000])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle-CPU window")
    parser.add_argument("--first", type=int, default=1000, help="models sent a first request, in turn")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--think",
        type=float,
        nargs="*",
        default=[1.0, 2.0, 4.0],
        help="mean think times (ms) of the moderate-load windows; none: skip them",
    )
    parser.add_argument("--no-mlserver", action="store_true")
    args = parser.parse_args()
    servers: list[Any] = [RuntimeCoreServer]
    if mlserver_available() and not args.no_mlserver:
        servers.append(MLServerServer)
    rows = [measure(cls, count, args) for count in args.counts for cls in servers]
    markdown = table([title for _, title in COLUMNS], [[_cell(row, key) for key, _ in COLUMNS] for row in rows])
    if args.think:
        markdown += "\n\nModerate load (uniform traffic, random think time per connection):\n\n"
        markdown += moderate_table(rows, args.think)
    publish("density", {"environment": environment(), "args": vars(args), "rows": rows}, markdown)


if __name__ == "__main__":
    main()
