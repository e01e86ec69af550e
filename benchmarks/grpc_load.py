"""gRPC load from a process of its own: closed loop (C calls in flight on one channel) or
open loop (a fixed rate of calls, whatever the answers do).

There is no wrk for gRPC here, so the generator is Python: grpcio's asyncio client
sending pre-serialized ``ModelInferRequest`` bytes (no per-call protobuf work: the
method is called without serializers) and counting the replies. It costs CPU
like the server it loads, so on a small machine its req/s figures are bounded by
the client as much as by the server: compare servers by *server CPU per request*,
or compare req/s only between runs that use this same generator (gRPC vs gRPC).

``GrpcClosedLoop`` follows the interface of :class:`loadgen.ClosedLoop`
(``prepare``/``go``/``wait``/``kill``), so it runs inside ``common.windowed``; with
``rate`` set it is an open loop like :class:`loadgen.OpenLoop`: call *i* is sent at
``t0 + i / R`` and its latency counts from then. Server CPU per request depends on the
load (a busier worker merges more requests into one ``predict``, a busier event loop
writes more frames per system call), so the open loop is how REST and gRPC are compared
at the *same* request rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time

from loadgen import LoadResult, percentile

METHOD = "/inference.GRPCInferenceService/ModelInfer"


class GrpcClosedLoop:
    """``C`` concurrent ModelInfer calls against ``target`` (``127.0.0.1:port``) for ``duration`` s,
    from ``processes`` generator processes (each with its own channel and a share of ``C``)."""

    def __init__(
        self, target: str, body: bytes, *, concurrency: int, duration: float, processes: int = 1, rate: float = 0.0
    ) -> None:
        if not target.startswith(("127.0.0.1:", "localhost:")):
            raise ValueError(f"benchmarks only target 127.0.0.1, not {target!r}")
        self.target, self.body, self.concurrency, self.duration = target, body, concurrency, duration
        self.processes = max(1, min(processes, concurrency))
        self.rate = rate  # > 0: open loop at this many calls/s in all (split among the processes)
        self._procs: list[subprocess.Popen[str]] = []
        self._body_file = ""

    def prepare(self) -> None:
        f = tempfile.NamedTemporaryFile("wb", prefix="bench-grpc-", suffix=".pb", delete=False)
        with f:
            f.write(self.body)
        self._body_file = f.name
        base, extra = divmod(self.concurrency, self.processes)
        shares = [base + (i < extra) for i in range(self.processes)]
        for share in shares:
            cmd = [sys.executable, __file__, self.target, self._body_file, "-c", str(share), "-d", str(self.duration)]
            if self.rate:
                cmd += ["--rate", str(self.rate / self.processes)]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self._procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "READY":
                self.kill()
                raise RuntimeError(f"gRPC load generator failed to start: {line!r}")

    def go(self) -> None:
        for proc in self._procs:
            assert proc.stdin is not None
            proc.stdin.write("GO\n")
            proc.stdin.flush()

    def wait(self) -> LoadResult:
        try:
            parts = []
            for proc in self._procs:
                out, _ = proc.communicate(timeout=self.duration + 90)
                parts.append(LoadResult(**json.loads(out.strip().splitlines()[-1])))
        finally:
            self.kill()
            os.unlink(self._body_file)
        if len(parts) == 1:
            return parts[0]
        seconds = max(p.seconds for p in parts)
        requests = sum(p.requests for p in parts)
        # Percentiles of the parts, weighted by nothing: the slowest part's, a conservative figure.
        return LoadResult(
            kind=parts[0].kind,
            requests=requests,
            errors=sum(p.errors for p in parts),
            seconds=seconds,
            rps=sum(p.rps for p in parts),
            p50_ms=max(p.p50_ms for p in parts),
            p90_ms=max(p.p90_ms for p in parts),
            p99_ms=max(p.p99_ms for p in parts),
            max_ms=max(p.max_ms for p in parts),
            concurrency=self.concurrency,
            rate=sum(p.rate for p in parts),
            max_lag_ms=max(p.max_lag_ms for p in parts),
        )

    def kill(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _run(target: str, body: bytes, concurrency: int, duration: float, rate: float = 0.0) -> LoadResult:
    import grpc

    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(METHOD)
        await call(body, timeout=30)  # connected and answering before the window opens
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        latencies: list[float] = []
        errors = 0
        lag = 0.0
        start = time.perf_counter()
        stop = start + duration

        async def one(since: float) -> None:
            nonlocal errors
            try:
                await call(body, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                return
            latencies.append(time.perf_counter() - since)

        async def worker() -> None:
            while True:
                sent = time.perf_counter()
                if sent >= stop:
                    return
                await one(sent)

        if rate > 0:  # open loop: call i is due at start + i / rate, latency counted from then
            calls: set[asyncio.Task[None]] = set()
            total, i = int(rate * duration), 0
            while i < total:
                now = time.perf_counter()
                while i < total and start + i / rate <= now:
                    task = asyncio.create_task(one(start + i / rate))
                    calls.add(task)
                    task.add_done_callback(calls.discard)
                    lag = max(lag, now - (start + i / rate))
                    i += 1
                if i < total:
                    await asyncio.sleep(start + i / rate - time.perf_counter())
            await asyncio.gather(*calls)
        else:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    latencies.sort()
    return LoadResult(
        kind="open" if rate > 0 else "closed",
        requests=len(latencies),
        errors=errors,
        seconds=seconds,
        rps=len(latencies) / seconds if seconds else 0.0,
        p50_ms=1000 * percentile(latencies, 50) if latencies else math.nan,
        p90_ms=1000 * percentile(latencies, 90) if latencies else math.nan,
        p99_ms=1000 * percentile(latencies, 99) if latencies else math.nan,
        max_ms=1000 * latencies[-1] if latencies else math.nan,
        concurrency=concurrency,
        rate=rate,
        max_lag_ms=1000 * lag,
    )


def main() -> None:
    if sys.argv[1:2] == ["bare-server"]:
        reply = open(sys.argv[3], "rb").read() if len(sys.argv) > 3 else b"\n\x05light"
        bare_server(int(sys.argv[2]), reply)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="127.0.0.1:PORT")
    parser.add_argument("body", help="file holding one serialized ModelInferRequest")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: calls/s (0: closed loop of -c calls)")
    args = parser.parse_args()
    with open(args.body, "rb") as f:
        body = f.read()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(_run(args.target, body, args.concurrency, args.duration, args.rate))
    print(json.dumps(result.as_dict()), flush=True)


# --------------------------------------------------------------------------- the floor


async def _bare_server(port: int, reply: bytes) -> None:
    """grpcio's asyncio server on uvloop answering every ModelInfer with the same bytes (``reply``;
    ``bare-server PORT [REPLY_FILE]``): the cost of the gRPC stack alone, which any grpc.aio
    front end pays per call."""
    import grpc

    async def answer(request: bytes, context: object) -> bytes:
        return reply

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(answer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


def bare_server(port: int, reply: bytes) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_bare_server(port, reply))


if __name__ == "__main__":
    main()
