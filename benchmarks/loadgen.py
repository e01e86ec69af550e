"""Load generators: closed loop (wrk + Lua) and open loop (asyncio + aiohttp, own process).

Closed loop (:class:`ClosedLoop`): ``wrk`` keeps C connections, each sending the
next request as soon as the previous answer arrives. A Lua ``done`` hook prints
one JSON line with the request count, error counts and latency percentiles
(microseconds, from wrk's per-thread histograms), which is parsed here.

Open loop (:class:`OpenLoop`): this file run as ``python loadgen.py open-worker``
in a separate process. Request *i* is scheduled at ``t0 + i / R``; latency is
measured from that scheduled start, so a server that stalls is charged for the
wait of every request queued behind the stall (no coordinated omission). The
requests go out over a pool of keep-alive connections (``--connections``); the
report includes the generator's worst dispatch lag so a generator that could not
keep up is visible.

Every load generator targets 127.0.0.1 only and is bounded in time (and the
open loop in count: ``R * D`` requests).

Both have the same life cycle so several loads can run in the same window::

    loads = [OpenLoop(url_a, body_a, rate=100, duration=10), ClosedLoop(url_b, body_b, concurrency=16, duration=10)]
    for load in loads: load.prepare()   # spawn; the open loop warms its connections and waits
    for load in loads: load.go()        # start the clocks
    results = [load.wait() for load in loads]

CLI (one load, handy for poking at a server by hand)::

    python benchmarks/loadgen.py closed URL BODY_FILE -c 16 -d 10 -w 3
    python benchmarks/loadgen.py open URL BODY_FILE --rate 100 -d 10 -w 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

WRK = shutil.which("wrk") or "/usr/bin/wrk"

_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\n]+): ([^\n]*)") do
  wrk.headers[name] = value
end
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass(slots=True)
class LoadResult:
    """What one load measured. Latencies in milliseconds."""

    kind: str  # "closed" or "open"
    requests: int  # successful (2xx) requests completed in the window
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    p90_ms: float = math.nan
    max_ms: float = math.nan
    concurrency: int = 0
    rate: float = 0.0
    max_lag_ms: float = 0.0  # open loop: worst delay between a request's scheduled and actual send

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_local(url: str) -> None:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"benchmarks only target 127.0.0.1, not {host!r}")


def _body_file(body: bytes) -> str:
    f = tempfile.NamedTemporaryFile("wb", prefix="bench-body-", suffix=".json", delete=False)
    with f:
        f.write(body)
    return f.name


class ClosedLoop:
    """``wrk -t1 -cC -dD`` with the POST body ``body`` (any bytes: the Lua script reads it from a
    file) and extra request ``headers`` (they override ``Content-Type: application/json``)."""

    def __init__(
        self,
        url: str,
        body: bytes,
        *,
        concurrency: int,
        duration: float,
        threads: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        _check_local(url)
        self.url, self.body, self.concurrency, self.threads = url, body, concurrency, min(threads, concurrency)
        self.headers = dict(headers or {})
        self.duration = max(1, round(duration))
        self._proc: subprocess.Popen[str] | None = None
        self._files: list[str] = []

    def prepare(self) -> None:
        body_file = _body_file(self.body)
        lua = tempfile.NamedTemporaryFile("w", prefix="bench-", suffix=".lua", delete=False)
        with lua:
            lua.write(_LUA)
        self._files = [body_file, lua.name]
        self._cmd = [WRK, f"-t{self.threads}", f"-c{self.concurrency}", f"-d{self.duration}s", "--timeout", "30s"]
        self._cmd += ["-s", lua.name, self.url]
        self._env = {
            **os.environ,
            "BENCH_BODY_FILE": body_file,
            "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in self.headers.items()),
        }

    def go(self) -> None:
        self._proc = subprocess.Popen(
            self._cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self._env
        )

    def wait(self) -> LoadResult:
        assert self._proc is not None
        try:
            out, _ = self._proc.communicate(timeout=self.duration + 60)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            for name in self._files:
                os.unlink(name)
        line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no result:\n{out}")
        raw = json.loads(line.removeprefix("BENCH_JSON "))
        seconds = raw["duration_us"] / 1e6
        errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
        ok = raw["requests"] - raw["status"]
        return LoadResult(
            kind="closed",
            requests=ok,
            errors=errors,
            seconds=seconds,
            rps=ok / seconds if seconds else 0.0,
            p50_ms=raw["p50_us"] / 1000,
            p90_ms=raw["p90_us"] / 1000,
            p99_ms=raw["p99_us"] / 1000,
            max_ms=raw["max_us"] / 1000,
            concurrency=self.concurrency,
        )

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


class OpenLoop:
    """Fixed-rate load from a separate Python process (this file's ``open-worker``)."""

    def __init__(self, url: str, body: bytes, *, rate: float, duration: float, connections: int = 32) -> None:
        _check_local(url)
        self.url, self.body, self.rate, self.duration, self.connections = url, body, rate, duration, connections
        self._proc: subprocess.Popen[str] | None = None
        self._body_file = ""

    def prepare(self) -> None:
        self._body_file = _body_file(self.body)
        cmd = [sys.executable, __file__, "open-worker", self.url, self._body_file, "--rate", str(self.rate)]
        cmd += ["-d", str(self.duration), "--connections", str(self.connections)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != "READY":
            self.kill()
            raise RuntimeError(f"open-loop generator failed to start: {line!r}")

    def go(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write("GO\n")
        self._proc.stdin.flush()

    def wait(self) -> LoadResult:
        assert self._proc is not None
        try:
            out, _ = self._proc.communicate(timeout=self.duration + 90)
        finally:
            self.kill()
            os.unlink(self._body_file)
        return LoadResult(**json.loads(out.strip().splitlines()[-1]))

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


Load = ClosedLoop | OpenLoop


def run_loads(loads: list[Load]) -> list[LoadResult]:
    """Run several loads in the same window (see the module docstring); kills them all on error."""
    try:
        for load in loads:
            load.prepare()
        for load in loads:
            load.go()
        return [load.wait() for load in loads]
    finally:
        for load in loads:
            load.kill()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# --------------------------------------------------------------------------- open-loop worker process


async def _open_worker(url: str, body: bytes, rate: float, duration: float, connections: int) -> LoadResult:
    import aiohttp

    loop = asyncio.get_running_loop()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    latencies: list[float] = []
    errors = 0
    max_lag = 0.0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Open the connection pool before the clock starts (also checks the server answers).
        async def warm() -> None:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()

        await asyncio.gather(*(warm() for _ in range(min(connections, 8))))
        print("READY", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)

        async def one(scheduled: float) -> None:
            nonlocal errors
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    ok = 200 <= resp.status < 300
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - scheduled)
            else:
                errors += 1

        total = int(rate * duration)
        # The clock is time.perf_counter and the pacing is done by a thread sleeping with
        # time.sleep (microsecond accuracy): uvloop's timers have millisecond resolution,
        # which would add up to ~1 ms of generator error to every latency.
        t0 = time.perf_counter() + 0.005
        pending: set[asyncio.Task[None]] = set()
        all_sent = asyncio.Event()

        def start(scheduled: float) -> None:
            task = loop.create_task(one(scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)

        def pace() -> None:
            nonlocal max_lag
            for i in range(total):
                scheduled = t0 + i / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                max_lag = max(max_lag, time.perf_counter() - scheduled)
                loop.call_soon_threadsafe(start, scheduled)
            loop.call_soon_threadsafe(all_sent.set)

        pacer = threading.Thread(target=pace, name="pacer", daemon=True)
        pacer.start()
        await all_sent.wait()
        pacer.join()
        if pending:
            await asyncio.wait(pending, timeout=35)
        seconds = time.perf_counter() - t0
    latencies.sort()
    return LoadResult(
        kind="open",
        requests=len(latencies),
        errors=total - len(latencies),  # failed or unfinished
        seconds=seconds,
        rps=len(latencies) / seconds if seconds else 0.0,
        p50_ms=percentile(latencies, 50) * 1000,
        p90_ms=percentile(latencies, 90) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        max_ms=(latencies[-1] * 1000) if latencies else math.nan,
        rate=rate,
        max_lag_ms=max_lag * 1000,
    )


def _open_worker_main(args: argparse.Namespace) -> None:
    _check_local(args.url)
    sys.setswitchinterval(0.0005)  # the pacer thread gets the GIL within 0.5 ms of waking
    body = Path(args.body_file).read_bytes()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(_open_worker(args.url, body, args.rate, args.duration, args.connections))
    print(json.dumps(result.as_dict()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("closed", "open", "open-worker"):
        p = sub.add_parser(mode)
        p.add_argument("url")
        p.add_argument("body_file")
        p.add_argument("-d", "--duration", type=float, default=10.0)
        p.add_argument("-w", "--warmup", type=float, default=3.0)
        p.add_argument("-c", "--concurrency", type=int, default=16)
        p.add_argument("--rate", type=float, default=100.0)
        p.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if args.mode == "open-worker":
        _open_worker_main(args)
        return
    body = Path(args.body_file).read_bytes()
    for phase, seconds in (("warm-up", args.warmup), ("measure", args.duration)):
        if seconds <= 0:
            continue
        load: Load
        if args.mode == "closed":
            load = ClosedLoop(args.url, body, concurrency=args.concurrency, duration=seconds)
        else:
            load = OpenLoop(args.url, body, rate=args.rate, duration=seconds, connections=args.connections)
        started = time.perf_counter()
        (result,) = run_loads([load])
        print(f"{phase}: {time.perf_counter() - started:.1f} s", json.dumps(result.as_dict()), flush=True)


if __name__ == "__main__":
    main()
