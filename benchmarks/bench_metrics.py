"""GET /metrics at many models, through the server (issue 23): how long a scrape takes to its
last byte, idle and right after traffic, and whether it holds up other requests.

One server of N tiny scikit-learn models (``bench_density.write_models``, default settings),
every model sent a first request, then, in rounds:

* ``idle``: scrapes with nothing else going on;
* ``after traffic``: a request to every model (``--touch`` of them, all by default: every
  model's figures changed), then a scrape at once;
* ``after a few``: a request to ``--few`` models, then a scrape (most models idle since the
  last scrape, the usual case);

each scrape timed by curl from sending the request to the last byte of the body, as plain text
(``Accept`` empty), as Prometheus asks for it (its ``Accept`` header, which chooses
OpenMetrics, and ``Accept-Encoding: gzip``). During the idle scrapes a process of its own asks
for ``/v2/health/live`` every 2 ms: the slowest of those answers tells how long a scrape holds
the event loop. Also the PSS of the server's tree before the scrapes, after the first two (no
traffic in between) and at the end.

``--baseline REF`` runs runtime-core from git revision REF too, on the same repository, each
round scraping both servers in turn (before and after in one sitting).

    python benchmarks/bench_metrics.py --count 10000 --baseline main   # ~2.5 min
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_density import BODY, all_ready, write_models
from bench_request_path import extract
from common import environment, progress, publish, table
from measure import tree_pss_mib
from servers import RuntimeCoreServer

#: What Prometheus 2.x/3.x sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
KINDS = {
    "text": {},
    "prometheus": {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"},
}


def _connection(url: str) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=120)


def scrape(url: str, headers: dict[str, str]) -> tuple[float, int, str]:
    """Seconds to the last byte of one ``GET /metrics`` (curl's ``time_total``, a client
    that costs little beside the server), the body's bytes, its encoding."""
    written = "%{http_code} %{time_total} %{size_download} %header{content-encoding}"
    args = ["curl", "-sS", "-o", "/dev/null", "-w", written]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url + "/metrics"], capture_output=True, text=True, check=True).stdout.split()
    if out[0] != "200":
        raise RuntimeError(f"/metrics answered {out[0]}")
    return float(out[1]), int(out[2]), out[3] if len(out) > 3 else "identity"


def touch(url: str, names: list[str], threads: int = 4) -> None:
    """One request to each of ``names``, on ``threads`` keep-alive connections."""

    def run(part: list[str]) -> None:
        conn = _connection(url)
        for name in part:
            conn.request("POST", f"/v2/models/{name}/infer", BODY, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{name} answered {resp.status}")
        conn.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, [names[i::threads] for i in range(threads)]))


def _ping(url: str, interval: float, stop: Any, conn_out: Any) -> None:
    conn = _connection(url)
    samples = []
    while not stop.is_set():
        t0 = time.perf_counter()
        conn.request("GET", "/v2/health/live")
        conn.getresponse().read()
        samples.append((t0, time.perf_counter() - t0))
        time.sleep(interval)
    conn.close()
    conn_out.send(samples)


class Pinger:
    """``GET /v2/health/live`` every ``interval`` seconds on one keep-alive connection, from a
    process of its own (so that the scraping client's own work does not delay it); keeps each
    answer's latency with its start time (``perf_counter`` is the same clock in every process)."""

    def __init__(self, url: str, interval: float = 0.002) -> None:
        self.stop = multiprocessing.Event()
        self._theirs, self._ours = multiprocessing.Pipe()
        self.proc = multiprocessing.Process(target=_ping, args=(url, interval, self.stop, self._theirs), daemon=True)
        self.samples: list[tuple[float, float]] = []

    def __enter__(self) -> Pinger:
        self.proc.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.samples = self._ours.recv()
        self.proc.join()

    def worst(self, start: float, end: float) -> float:
        """The slowest answer to a ping sent between ``start`` and ``end``."""
        return max((s for t, s in self.samples if start <= t <= end), default=0.0)


def measure(servers: dict[str, RuntimeCoreServer], names: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = {label: {"code": label, "models": len(names)} for label in servers}
    times: dict[tuple[str, str], list[float]] = {}
    held: dict[str, list[float]] = {label: [] for label in servers}
    for label, server in servers.items():
        rows[label]["pss_before_mib"] = tree_pss_mib(server.pid)
    for r in range(args.rounds):
        for label, server in servers.items():
            for kind, headers in KINDS.items():
                with Pinger(server.url) as pinger:
                    t0 = time.perf_counter()
                    seconds, size, encoding = scrape(server.url, headers)
                    t1 = time.perf_counter()
                    time.sleep(0.02)
                times.setdefault((label, f"idle_{kind}"), []).append(seconds)
                rows[label][f"{kind}_mib"] = size / 2**20
                rows[label][f"{kind}_encoding"] = encoding
                if kind == "text":
                    held[label].append(pinger.worst(t0, t1))
            if r == 0:  # scraped, and no traffic since the first requests
                rows[label]["pss_scraped_mib"] = tree_pss_mib(server.pid)
            few = names[(r * args.few) % len(names) :][: args.few]
            touch(server.url, few)
            times.setdefault((label, "few_text"), []).append(scrape(server.url, {})[0])
            touch(server.url, names[: args.touch])
            times.setdefault((label, "traffic_text"), []).append(scrape(server.url, {})[0])
            touch(server.url, names[: args.touch])
            times.setdefault((label, "traffic_prometheus"), []).append(scrape(server.url, KINDS["prometheus"])[0])
        progress(
            f"round {r + 1}: "
            + "; ".join(
                f"{label} " + ", ".join(f"{k} {v[-1]:.3f}" for (lab, k), v in times.items() if lab == label)
                for label in servers
            )
        )
    for (label, key), values in times.items():
        rows[label][f"{key}_ms"] = 1000 * statistics.median(values)
        rows[label][f"{key}_all_ms"] = [round(1000 * v, 1) for v in values]
    for label, server in servers.items():
        rows[label]["held_ms"] = 1000 * statistics.median(held[label])
        rows[label]["held_max_ms"] = 1000 * max(held[label])
        rows[label]["pss_after_mib"] = tree_pss_mib(server.pid)
    return list(rows.values())


COLUMNS = [
    ("code", "code"),
    ("idle_text_ms", "idle, text ms"),
    ("idle_prometheus_ms", "idle, as Prometheus asks ms"),
    ("few_text_ms", "after a few, text ms"),
    ("traffic_text_ms", "after traffic, text ms"),
    ("traffic_prometheus_ms", "after traffic, as Prometheus asks ms"),
    ("text_mib", "text MiB"),
    ("prometheus_mib", "as Prometheus asks MiB"),
    ("prometheus_encoding", "encoding"),
    ("held_ms", "slowest health answer during a scrape, median ms"),
    ("held_max_ms", "the same, worst ms"),
    ("pss_before_mib", "PSS before MiB"),
    ("pss_scraped_mib", "PSS after 2 scrapes MiB"),
    ("pss_after_mib", "PSS at the end MiB"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--few", type=int, default=100, help="models sent a request before an 'after a few' scrape")
    parser.add_argument("--touch", type=int, default=None, help="models sent a request before an 'after traffic' one")
    parser.add_argument("--baseline", help="also run runtime-core from this git revision")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as scratch, ExitStack() as stack:
        folder = Path(scratch)
        names = write_models(folder / "repo", args.count, mlserver=False)
        args.touch = args.touch or len(names)
        servers: dict[str, RuntimeCoreServer] = {}
        if args.baseline:
            source = extract(args.baseline, folder / "baseline")
            servers[args.baseline] = RuntimeCoreServer(folder / "repo", python_path=source, timeout=900.0)
        servers["this tree"] = RuntimeCoreServer(folder / "repo", timeout=900.0)
        for label, server in servers.items():
            started = time.perf_counter()
            stack.enter_context(server)
            all_ready(server.url, len(names), started)
            touch(server.url, names)  # a first request to every model
            progress(f"{label}: ready, every model asked once, in {time.perf_counter() - started:.1f} s")
        rows = measure(servers, names, args)
    markdown = table([title for _, title in COLUMNS], [[row.get(key) for key, _ in COLUMNS] for row in rows])
    publish("metrics", {"environment": environment(), "args": vars(args), "rows": rows}, markdown)


if __name__ == "__main__":
    main()
