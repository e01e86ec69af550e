"""Where runtime-core's server CPU per request goes, stage by stage (issue 23).

Starts runtime-core with the light model in-process (``light-inproc``, ``parallel_workers:
0``) and on the default pool (``light``) (or, for ``rest-floor`` and ``grpc-floor``, the bare
servers of ``bench_request_path.py`` answering runtime-core's reply), loads one case closed loop (wrk for REST,
``grpc_load.py`` for gRPC) and samples the main process, and for pool cases the busiest
worker too, with py-spy (``pip install py-spy``; a sampling profiler, so the server runs
unmodified) while the server's CPU is measured over the same window. Every sample of a
process's serving thread is put in the stage of the deepest frame that names one
(:data:`STAGES`, first match per frame); the stage's share of the samples times the
process's CPU per request is its cost in microseconds per request.

py-spy cannot see inside compiled code: time spent in uvloop's C loop (epoll, socket reads,
callbacks' C parts) shows as the loop's Python caller, ``event loop (uvloop, C)``; grpcio's
compiled server shows as ``gRPC (grpcio)``. Sampling also slows the server a little
(``--nonblocking`` is used: the process is not paused to be read), so the figures are
shares of a slightly slower server, not exact timings.

Usage::

    python benchmarks/profile_request_path.py rest-inproc    # or rest-pool, grpc-inproc, grpc-pool
    python benchmarks/profile_request_path.py rest-inproc -d 20 --raw /tmp/inproc.raw
    python benchmarks/profile_request_path.py rest-pool --ref main   # another revision
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import models
from bench_grpc import grpc_body
from bench_request_path import Bare, extract, grpc_reply, rest_reply
from common import HERE, infer_url, windowed
from grpc_load import GrpcClosedLoop
from loadgen import ClosedLoop
from measure import cpu_delta, cpu_snapshot, tree_pids
from servers import RuntimeCoreServer, free_port

#: (stage, pattern over one frame ``function (file:line)``), most specific first.
STAGES: list[tuple[str, str]] = [
    ("response writing (aiohttp)", r"finish_response|write_eof|StreamResponse\.prepare|_start \(aiohttp|_writelines|"
     r"write_headers|_prepare_headers|Response\.__init__|StreamResponse\.__init__|content_type"),
    ("HTTP parsing (aiohttp)", r"data_received \(aiohttp|RequestHandler\.start |_make_request|BaseRequest\.__init__|"
     r"StreamReader\.__init__"),
    ("routing (aiohttp)", r"UrlDispatcher\.resolve|Resource\.resolve|_match \(aiohttp|UrlMappingMatchInfo"),
    ("middlewares", r"_middleware|middlewares\.py|_fix_request_current_app|Application\._handle"),
    ("body read", r"_body \(runtime_core|readany|StreamReader\.|asyncio/timeouts\.py"),
    ("handler", r"runtime_core/rest/handlers\.py|runtime_core/rest/custom\.py|model_infer|_infer \(runtime_core/grpc|"
     r"_answering_errors|route \(runtime_core"),
    ("observation (request log, tracing)", r"runtime_core/requestlog\.py|runtime_core/tracing\.py|Observation\."),
    ("data plane", r"runtime_core/dataplane\.py|runtime_core/repository\.py"),
    ("metrics and statistics", r"runtime_core/(stats|metrics|modelfigures|metricseries|metricfamilies)\.py"),
    ("scheduler", r"runtime_core/(scheduler|lanes|cpupriority)\.py"),
    ("pool dispatch", r"runtime_core/pools/|runtime_core/(messages|framing|batchloop|worker|host)\.py|BatchLoop|"
     r"run_envelopes|run_groups|_cpu_wait|_WorkerProtocol"),
    ("batch merge and split", r"_run_group|run_batch|_batch_key|concatenate|array_split|split \(numpy"),
    ("validation (inputs, outputs)", r"runtime_core/codecs/validation\.py|runtime_core/content\.py|"
     r"check_requested_outputs"),
    ("decode", r"ModelHandler\.decode|ModelHandler\.rows|decode \(runtime_core/codecs|decode_request|"
     r"decode_grpc_request|_from_json_data|_from_typed"),
    ("predict", r"ModelHandler\._predict|runtime_core_sklearn|sklearn/"),
    ("encode", r"ModelHandler\._encode|encode \(runtime_core/codecs|encode_response|encode_grpc_response|_json_data"),
    ("gRPC (grpcio)", r"grpc/_cython|grpc/aio|grpc/_|_Arrivals"),
    ("event loop (uvloop, C)", r"Runner\.run|run_until_complete|run_forever"),
]  # fmt: skip
_COMPILED = [(stage, re.compile(pattern)) for stage, pattern in STAGES]
CASES = {
    "rest-floor": ("rest", ""),
    "grpc-floor": ("grpc", ""),
    "rest-inproc": ("rest", "light-inproc"),
    "rest-pool": ("rest", "light"),
    "grpc-inproc": ("grpc", "light-inproc"),
    "grpc-pool": ("grpc", "light"),
}


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def stage_of(frames: list[str]) -> str:
    stage = "other"
    for frame in frames:  # the deepest frame that names a stage decides
        for name, pattern in _COMPILED:
            if pattern.search(frame):
                stage = name
                break
    return stage


def breakdown(raw: Path) -> tuple[collections.Counter[str], int]:
    """Samples per stage of the serving thread (threads started by ``threading`` are left out:
    grpcio's poller and the watchers, mostly idle in C, where py-spy cannot tell idle)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or "Thread._bootstrap" in stack:
            continue
        counts[stage_of(stack.split(";"))] += int(n)
        total += int(n)
    return counts, total


def profile(args: argparse.Namespace) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    protocol, model = CASES[args.case]
    with tempfile.TemporaryDirectory(prefix="profile-request-path-") as tmp:
        repo = Path(tmp) / "repo"
        models.write_model(repo, "light")
        models.write_model(repo, "light", model_name="light-inproc", workers=0)
        source = extract(args.ref, Path(tmp) / "source") if args.ref else None
        with RuntimeCoreServer(repo, python_path=source) as server, contextlib.ExitStack() as floors:
            url, body = infer_url(server.url, model or "light"), models.request_body("light")
            target, message = server.grpc_target, grpc_body(model or "light", models.request_array("light"))
            pid = server.pid
            if not model:  # a floor: answers runtime-core's own reply bytes
                reply = Path(tmp) / "reply"
                if protocol == "rest":
                    reply.write_bytes(rest_reply(url, body))
                    port = free_port()
                    url = f"http://127.0.0.1:{port}/v2/models/light/infer"
                    floor = Bare([sys.executable, str(HERE / "bare_http.py"), str(port), str(reply)])
                else:
                    reply.write_bytes(grpc_reply(target, message))
                    port = free_port()
                    target = f"127.0.0.1:{port}"
                    floor = Bare([sys.executable, str(HERE / "grpc_load.py"), "bare-server", str(port), str(reply)])
                floors.callback(floor.stop)
                pid = floor.pid

            def loads(d: float) -> list[ClosedLoop | GrpcClosedLoop]:
                if protocol == "rest":
                    return [ClosedLoop(url, body, concurrency=args.concurrency, duration=d)]
                return [GrpcClosedLoop(target, message, concurrency=args.concurrency, duration=d)]

            windowed(loads, pid, 0, args.warmup)  # workers started, caches warm
            targets = {"main process" if model else "floor": pid}
            if model == "light":
                before = cpu_snapshot(server.pid)
                windowed(loads, server.pid, 0, 1)
                after = cpu_snapshot(server.pid)
                # Dedicated workers, or the runtime's host when it serves the requests itself.
                workers = [p for p in tree_pids(server.pid) if _name(p).startswith(("rc-w", "rc-h"))]
                if workers:
                    busiest = max(workers, key=lambda p: cpu_delta(before, after, only=[p]))
                    targets[f"worker ({_name(busiest)})"] = busiest
            raws = {name: Path(tmp) / f"{name.replace(' ', '-')}.raw" for name in targets}
            spies = [
                subprocess.Popen(
                    [py_spy, "record", "-p", str(pid), "-r", str(args.rate), "-d", str(int(args.duration)),
                     "--nonblocking", "--format", "raw", "-o", str(raws[name])],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for name, pid in targets.items()
            ]  # fmt: skip
            time.sleep(0.5)  # py-spy attached
            (result,), cpu = windowed(loads, pid, 0, args.duration - 1)
            for spy in spies:
                spy.wait()
            assert cpu.before is not None and cpu.after is not None
            requests = result.requests or 1
            print(f"{args.case}: {result.rps:.0f} req/s under py-spy, {1000 * cpu.seconds / requests:.4f} ms CPU/req")
            for name, pid in targets.items():
                counts, total = breakdown(raws[name])
                us = 1e6 * cpu_delta(cpu.before, cpu.after, only=[pid]) / requests
                if args.raw:
                    shutil.copy(raws[name], f"{args.raw}.{name.replace(' ', '-')}")
                print(f"\n{name}: {us:.1f} us CPU per request, {total} samples\n")
                print("| stage | share | us/request |\n|---|---|---|")
                for stage, n in counts.most_common():
                    print(f"| {stage} | {100 * n / total:.1f} % | {us * n / total:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=list(CASES))
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-d", "--duration", type=float, default=15.0, help="seconds sampled")
    parser.add_argument("-w", "--warmup", type=float, default=3.0)
    parser.add_argument("-r", "--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--raw", help="keep the collapsed stacks as RAW.<process>")
    parser.add_argument("--ref", help="profile runtime-core from this git revision, not the work tree")
    profile(parser.parse_args())


if __name__ == "__main__":
    main()
