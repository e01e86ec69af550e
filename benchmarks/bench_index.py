"""The repository index at many models, and what it costs the other requests.

One server of N tiny models (default settings: lazy loading above 1,000). A probe sends
requests back to back (one connection, 2 ms apart) to one model while the repository
index is asked every 2.2 s, so that every call rescans the folder (the index reuses a scan
for 2 s). Reported: the index's own time after its window and within it, and the probe's
latency while index calls run, against its latency with no index call (a first phase).

    python benchmarks/bench_index.py                  # 10,000 models, about 1.5 min
    python benchmarks/bench_index.py --models 2000
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bench_density as bd
from common import progress
from servers import RuntimeCoreServer


def _probe(port: int, model: str, stop: threading.Event, latencies: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json"}
    while not stop.is_set():
        started = time.perf_counter()
        conn.request("POST", f"/v2/models/{model}/infer", bd.BODY, headers)
        conn.getresponse().read()
        latencies.append(time.perf_counter() - started)
        time.sleep(0.002)


def _tail(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return {"n": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": ordered[-1] * 1e3}


Phase = tuple[dict[str, float], list[float], list[float]]


def _phase(server: RuntimeCoreServer, model: str, calls: int, index: bool) -> Phase:
    """The probe's tail over ``calls`` periods of 2.2 s, with the index asked after each when
    ``index``: (tail, index times after its window, index times within it)."""
    port = int(server.url.rsplit(":", 1)[1])
    stop, latencies = threading.Event(), []
    thread = threading.Thread(target=_probe, args=(port, model, stop, latencies))
    thread.start()
    rescans: list[float] = []
    cached: list[float] = []
    try:
        for _ in range(calls):
            time.sleep(2.2)
            if not index:
                continue
            started = time.perf_counter()
            bd.post(server.url + "/v2/repository/index")
            rescans.append(time.perf_counter() - started)
            started = time.perf_counter()
            bd.post(server.url + "/v2/repository/index")
            cached.append(time.perf_counter() - started)
    finally:
        stop.set()
        thread.join()
    return _tail(latencies), rescans, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=10_000, help="models in the repository (default 10,000)")
    parser.add_argument("--calls", type=int, default=8, help="index calls after its window (default 8)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        progress(f"writing {args.models} models")
        names = bd.write_models(root, args.models, False)
        with RuntimeCoreServer(root, timeout=900.0) as server:
            bd.all_ready(server.url, args.models, time.perf_counter())
            bd.post(f"{server.url}/v2/models/{names[0]}/infer", bd.BODY)
            progress("probe alone")
            alone, _, _ = _phase(server, names[0], args.calls, index=False)
            progress("probe with the index asked every 2.2 s")
            beside, rescans, cached = _phase(server, names[0], args.calls, index=True)
        row: dict[str, Any] = {
            "models": args.models,
            "index_rescan_s": statistics.median(rescans),
            "index_rescan_max_s": max(rescans),
            "index_cached_s": statistics.median(cached),
        }
        print(
            f"{args.models} models: index after its window {row['index_rescan_s']:.3f} s"
            f" (max {row['index_rescan_max_s']:.3f}), within it {row['index_cached_s']:.3f} s (medians)"
        )
        for label, tail in (("probe alone", alone), ("probe beside the index", beside)):
            print(
                f"{label:24s} n={tail['n']:5d}  p50 {tail['p50_ms']:.2f}  p99 {tail['p99_ms']:.2f}"
                f"  p99.9 {tail['p999_ms']:.2f}  max {tail['max_ms']:.1f} ms"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
