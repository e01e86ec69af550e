"""The V2 gRPC endpoint against REST JSON, on runtime-core and MLServer 1.7.1, in one run.

Models: ``light`` (LogisticRegression) and ``xgb`` (XGBClassifier), the same request
rows as the other benches (``models.request_array``), one worker process per model on
both servers (MLServer: ``parallel_workers`` 1, server-wide).

Protocols, per server and model:

* ``rest-json``: the V2 JSON body, closed loop with wrk (C in flight);
* ``grpc``: a ``ModelInferRequest`` with the rows in ``raw_input_contents`` (what
  tritonclient and KServe's client send), closed loop with grpc_load.py (Python,
  grpcio asyncio, pre-serialized bytes; C in flight on one channel).

Every body is checked once per server (gRPC and REST answer the same numbers), then
loaded for D s after a warm-up.

Server CPU per request falls as the load rises (a busier worker merges more requests into
one ``predict``; a busier event loop writes more frames per system call), and in the
closed loop the cheap C generator (wrk) lets REST run at a higher rate than the Python
gRPC generator. So runtime-core is also loaded at the *same* fixed rate over both
protocols (``--rate``, open loop: ``loadgen.OpenLoop`` for REST, ``grpc_load.py --rate``
for gRPC), the comparison the CPU targets are judged on as well. Table: req/s, p50/p99, server CPU ms per request
(whole process tree / requests) and the main process's share. The gRPC generator is
Python and costs CPU on the same cores, so req/s compares fairly only gRPC against gRPC;
server CPU per request compares everything.

Before the windows, ``forwarding`` times the two designs for the main process's part of
a gRPC request (issue 10), in this process, per request:

* ``forward``: read the model name (``codecs.grpc.route``) and pass the bytes on;
  the worker parses the request and serializes the reply, which goes back untouched;
* ``convert``: parse the whole ``ModelInferRequest`` and rebuild it as a binary
  tensor extension body (JSON header + raw tensors) for the worker, then turn the
  worker's binary reply back into a ``ModelInferResponse``.

Results: ``benchmarks/results/grpc-*.{json,md}``.

Examples::

    python benchmarks/bench_grpc.py                 # full run (~4 min)
    python benchmarks/bench_grpc.py --quick --no-mlserver
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import models
import numpy as np
import orjson
from common import HERE, closed_window, environment, infer_url, median, progress, publish, table, verdict, windowed
from grpc_load import METHOD, GrpcClosedLoop
from loadgen import OpenLoop
from servers import MLServerServer, RuntimeCoreServer, free_port, mlserver_available

from runtime_core.codecs.grpc import route
from runtime_core.codecs.json import encode_response
from runtime_core.proto.grpc_service_pb2 import ModelInferRequest, ModelInferResponse
from runtime_core.types import InferenceRequest, InferenceResponse, Tensor

MODELS = ("light", "xgb")
PROTOCOLS = ("rest-json", "grpc")
_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}


def grpc_body(model: str, x: np.ndarray[Any, Any]) -> bytes:
    request = ModelInferRequest(model_name=model, raw_input_contents=[np.ascontiguousarray(x, "<f4").tobytes()])
    request.inputs.add(name="input-0", datatype="FP32", shape=list(x.shape))
    return bytes(request.SerializeToString())


def grpc_outputs(reply: bytes) -> dict[str, np.ndarray[Any, Any]]:
    message = ModelInferResponse.FromString(reply)
    out = {}
    for i, o in enumerate(message.outputs):
        if message.raw_output_contents:
            arr = np.frombuffer(message.raw_output_contents[i], dtype=_DTYPES[o.datatype])
        else:
            field = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents"}[o.datatype]
            arr = np.asarray(getattr(o.contents, field), dtype=_DTYPES[o.datatype])
        out[o.name] = arr.reshape(list(o.shape))
    return out


def rest_outputs(url: str, body: bytes) -> dict[str, np.ndarray[Any, Any]]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        doc = json.loads(resp.read())
    return {o["name"]: np.asarray(o["data"], dtype=_DTYPES[o["datatype"]]).reshape(o["shape"]) for o in doc["outputs"]}


def check(server: Any, model: str, rest_body: bytes, grpc_request: bytes) -> None:
    """The server answers the gRPC request with the numbers of the REST one."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = channel.unary_unary(METHOD)(grpc_request, timeout=60)
    got, want = grpc_outputs(reply), rest_outputs(infer_url(server.url, model), rest_body)
    if set(got) != set(want) or any(not np.allclose(got[k], want[k]) for k in got):
        raise RuntimeError(f"{server.name} {model}: gRPC and REST answers differ: {got} vs {want}")


# --------------------------------------------------------------------------- forward vs convert


def _per_call(fn: Callable[[], Any], seconds: float) -> float:
    """Microseconds per call of ``fn``, over about ``seconds`` of calls."""
    n, start = 0, time.perf_counter()
    while True:
        for _ in range(200):
            fn()
        n += 200
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 1e6 * elapsed / n


def _to_binary_extension(payload: bytes) -> tuple[bytes, int]:
    """What the main process would do to hand a gRPC request to the workers as a binary body."""
    request = ModelInferRequest.FromString(payload)
    inputs = []
    for item, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        inputs.append(
            {
                "name": item.name,
                "datatype": item.datatype,
                "shape": list(item.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    doc: dict[str, Any] = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if request.id:
        doc["id"] = request.id
    if request.outputs:
        doc["outputs"] = [{"name": o.name} for o in request.outputs]
    header = orjson.dumps(doc)
    return header + b"".join(request.raw_input_contents), len(header)


def _from_binary_extension(body: bytes, header_length: int) -> bytes:
    """What the main process would do to turn a worker's binary reply into a ModelInferResponse."""
    doc = orjson.loads(body[:header_length])
    reply = ModelInferResponse(model_name=doc["model_name"], id=doc.get("id", ""))
    offset = header_length
    for o in doc["outputs"]:
        reply.outputs.add(name=o["name"], datatype=o["datatype"], shape=o["shape"])
        size = o["parameters"]["binary_data_size"]
        reply.raw_output_contents.append(body[offset : offset + size])
        offset += size
    return bytes(reply.SerializeToString())


def forwarding(seconds: float) -> list[dict[str, Any]]:
    rows = []
    cases = {m: models.request_array(m) for m in MODELS}
    cases["64x20"] = np.round(models.dataset()[0][1000:1064], 4).astype(np.float32)
    for name, x in cases.items():
        payload = grpc_body(name, x)
        labels = np.zeros(x.shape[0], dtype=np.int64)
        reply, length = encode_response(
            InferenceResponse([Tensor("predict", labels)]),
            model_name=name,
            model_version=None,
            request=InferenceRequest([], parameters={"binary_data_output": True}),
        )
        assert length is not None
        forward = _per_call(lambda p=payload: route(p), seconds)  # type: ignore[misc]
        convert_in = _per_call(lambda p=payload: _to_binary_extension(p), seconds)  # type: ignore[misc]
        convert_out = _per_call(lambda r=reply, n=length: _from_binary_extension(r, n), seconds)  # type: ignore[misc]
        rows.append(
            {
                "request": name,
                "shape": list(x.shape),
                "bytes": len(payload),
                "forward_us": forward,
                "convert_request_us": convert_in,
                "convert_reply_us": convert_out,
                "convert_us": convert_in + convert_out,
            }
        )
        progress(f"forwarding {name}: forward {forward:.2f} us, convert {convert_in + convert_out:.2f} us")
    return rows


# --------------------------------------------------------------------------- windows


def floor(args: argparse.Namespace) -> dict[str, Any]:
    """Server CPU per call of a bare grpc.aio server (grpc_load.py bare-server), same generator."""
    port = free_port()
    cmd = [sys.executable, str(HERE / "grpc_load.py"), "bare-server", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"READY":
            raise RuntimeError("the bare gRPC server did not start")
        (result,), cpu = windowed(
            lambda d: [
                GrpcClosedLoop(
                    f"127.0.0.1:{port}", b"x", concurrency=args.concurrency, duration=d, processes=args.clients
                )
            ],
            proc.pid,
            args.warmup,
            args.duration,
        )
    finally:
        proc.kill()
        proc.wait()
    row = {**result.as_dict(), "cpu_ms_per_req": 1000 * cpu.seconds / (result.requests or float("nan"))}
    progress(f"bare grpc.aio: {row['rps']:.0f} req/s, CPU {row['cpu_ms_per_req']:.3f} ms/req")
    return row


def measure(server: Any, label: str, args: argparse.Namespace, bodies: dict[str, dict[str, bytes]]) -> list[dict]:
    rows = []
    for model in MODELS:
        check(server, model, bodies[model]["rest-json"], bodies[model]["grpc"])
        for protocol in PROTOCOLS:
            if label == "mlserver" and protocol == "rest-json" and args.no_mlserver_rest:
                continue
            body = bodies[model][protocol]
            if protocol == "rest-json":
                w = closed_window(
                    infer_url(server.url, model),
                    body,
                    server.pid,
                    concurrency=args.concurrency,
                    warmup=args.warmup,
                    duration=args.duration,
                )
            else:
                (result,), cpu = windowed(
                    lambda d, b=body: [
                        GrpcClosedLoop(
                            server.grpc_target, b, concurrency=args.concurrency, duration=d, processes=args.clients
                        )
                    ],
                    server.pid,
                    args.warmup,
                    args.duration,
                )
                w = result.as_dict()
                done = result.requests or float("nan")
                w["cpu_cores"] = cpu.seconds / cpu.wall if cpu.wall else float("nan")
                w["cpu_ms_per_req"] = 1000 * cpu.seconds / done
                w["cpu_main_ms_per_req"] = 1000 * cpu.root_seconds / done
            row = {"server": label, "model": model, "protocol": protocol, **w}
            rows.append(row)
            progress(
                f"{label} {model} {protocol}: {row['rps']:.0f} req/s, p50 {row['p50_ms']:.2f} ms, "
                f"CPU {row['cpu_ms_per_req']:.3f} ms/req, errors {row['errors']}"
            )
    return rows


def same_rate(server: Any, args: argparse.Namespace, bodies: dict[str, dict[str, bytes]]) -> list[dict]:
    """REST JSON and gRPC at the same fixed rate (open loop), ``--rounds`` times, alternating."""
    rows = []
    for round_ in range(args.rounds):
        for model in MODELS:
            for protocol in PROTOCOLS:
                body = bodies[model][protocol]

                def loads(d: float, p: str = protocol, b: bytes = body, m: str = model) -> list[Any]:
                    if p == "rest-json":
                        return [OpenLoop(infer_url(server.url, m), b, rate=args.rate, duration=d)]
                    return [
                        GrpcClosedLoop(
                            server.grpc_target,
                            b,
                            concurrency=args.concurrency,
                            duration=d,
                            processes=args.clients,
                            rate=args.rate,
                        )
                    ]

                (result,), cpu = windowed(loads, server.pid, args.warmup, args.duration)
                done = result.requests or float("nan")
                row = {
                    "server": "runtime-core",
                    "model": model,
                    "protocol": protocol,
                    "round": round_,
                    **result.as_dict(),
                    "cpu_ms_per_req": 1000 * cpu.seconds / done,
                    "cpu_main_ms_per_req": 1000 * cpu.root_seconds / done,
                    "cpu_workers_ms_per_req": 1000 * (cpu.seconds - cpu.root_seconds) / done,
                }
                rows.append(row)
                progress(
                    f"same rate {args.rate:g}/s {model} {protocol}: {row['rps']:.0f} req/s, "
                    f"p50 {row['p50_ms']:.2f} ms, "
                    f"CPU {row['cpu_ms_per_req']:.3f} ms/req (main {row['cpu_main_ms_per_req']:.3f}), "
                    f"errors {row['errors']}"
                )
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    bodies = {m: {"rest-json": models.request_body(m), "grpc": grpc_body(m, models.request_array(m))} for m in MODELS}
    out: dict[str, Any] = {"forwarding": forwarding(args.forward_seconds), "windows": [], "floor": floor(args)}
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        repo = Path(tmp) / "rc"
        for m in MODELS:
            models.write_model(repo, m, workers=args.workers)
        with RuntimeCoreServer(repo) as server:
            progress(f"runtime-core ready in {server.ready_seconds:.2f} s")
            out["windows"] += measure(server, "runtime-core", args, bodies)
            if args.rate:
                out["same_rate"] = same_rate(server, args, bodies)
        if not args.no_mlserver and mlserver_available():
            repo = Path(tmp) / "ml"
            for m in MODELS:
                models.write_model(repo, m, flavor="mlserver")
            with MLServerServer(repo, parallel_workers=args.workers) as server:
                progress(f"MLServer ready in {server.ready_seconds:.2f} s")
                out["windows"] += measure(server, "mlserver", args, bodies)
    return out


def render(data: dict[str, Any]) -> str:
    fwd = table(
        ["request", "shape", "bytes", "forward us", "convert us (request + reply)"],
        [
            [
                r["request"],
                "x".join(map(str, r["shape"])),
                r["bytes"],
                r["forward_us"],
                f"{r['convert_us']:.2f} ({r['convert_request_us']:.2f} + {r['convert_reply_us']:.2f})",
            ]
            for r in data["forwarding"]
        ],
    )
    rows = data["windows"]
    win = table(
        ["server", "model", "protocol", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "main ms/req", "errors"],
        [
            [
                r["server"],
                r["model"],
                r["protocol"],
                r["rps"],
                r["p50_ms"],
                r["p99_ms"],
                r["cpu_ms_per_req"],
                r["cpu_main_ms_per_req"],
                r["errors"],
            ]
            for r in rows
        ],
    )

    def pick(server: str, model: str, protocol: str, key: str) -> float | None:
        found = [r[key] for r in rows if (r["server"], r["model"], r["protocol"]) == (server, model, protocol)]
        return median(found) if found else None

    same = data.get("same_rate") or []

    def pick_same(model: str, protocol: str, key: str) -> float | None:
        found = [r[key] for r in same if (r["model"], r["protocol"]) == (model, protocol)]
        return median(found) if found else None

    targets = []
    for model in MODELS:
        g = pick("runtime-core", model, "grpc", "cpu_ms_per_req")
        j = pick("runtime-core", model, "rest-json", "cpu_ms_per_req")
        ok = None if g is None or j is None else g <= j
        measured = f"{g:.3f} vs {j:.3f} ms" if g is not None and j is not None else "-"
        targets.append([f"{model}: gRPC CPU/req <= REST JSON CPU/req (closed loop)", measured, verdict(ok)])
        g, j = pick_same(model, "grpc", "cpu_ms_per_req"), pick_same(model, "rest-json", "cpu_ms_per_req")
        if g is not None and j is not None:
            targets.append(
                [
                    f"{model}: the same, at {data['args']['rate']:g} req/s both (median)",
                    f"{g:.3f} vs {j:.3f} ms",
                    verdict(g <= j),
                ]
            )
    ours, theirs = pick("runtime-core", "light", "grpc", "rps"), pick("mlserver", "light", "grpc", "rps")
    ok = None if ours is None or theirs is None else ours >= 3 * theirs
    ratio = f"{ours:.0f} vs {theirs:.0f} req/s ({ours / theirs:.1f}x)" if ok is not None else "-"
    targets.append(["light: gRPC req/s >= 3x MLServer's gRPC", ratio, verdict(ok)])
    return "\n\n".join(
        [
            "### Main process: forward the request vs convert it (us per request)",
            fwd,
            f"### Closed loop, C = {data['args']['concurrency']}, {data['args']['duration']:g} s windows",
            win,
            f"Bare grpc.aio server (constant answer, same generator): {data['floor']['rps']:.0f} req/s, "
            f"{data['floor']['cpu_ms_per_req']:.3f} ms server CPU per call.",
            *(
                [
                    f"### runtime-core, REST JSON and gRPC at the same rate "
                    f"({data['args']['rate']:g} req/s, open loop)",
                    table(
                        [
                            "model",
                            "protocol",
                            "round",
                            "req/s",
                            "p50 ms",
                            "p99 ms",
                            "CPU ms/req",
                            "main ms/req",
                            "workers ms/req",
                            "errors",
                        ],
                        [
                            [
                                r["model"],
                                r["protocol"],
                                r["round"],
                                r["rps"],
                                r["p50_ms"],
                                r["p99_ms"],
                                r["cpu_ms_per_req"],
                                r["cpu_main_ms_per_req"],
                                r["cpu_workers_ms_per_req"],
                                r["errors"],
                            ]
                            for r in same
                        ],
                    ),
                ]
                if same
                else []
            ),
            "### Targets",
            table(["target", "measured", "verdict"], targets),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("-w", "--warmup", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=1, help="gRPC generator processes sharing C")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per model (MLServer: server-wide)")
    parser.add_argument("--rate", type=float, default=800.0, help="same-rate windows: req/s (0: none)")
    parser.add_argument("--rounds", type=int, default=2, help="same-rate windows per model and protocol")
    parser.add_argument("--forward-seconds", type=float, default=1.0, help="timing of each forwarding case")
    parser.add_argument("--quick", action="store_true", help="3 s windows, 1 s warm-up")
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--no-mlserver-rest", action="store_true", help="MLServer's gRPC only")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.forward_seconds = 3.0, 1.0, 0.3
    data = run(args)
    data["args"] = vars(args)
    data["environment"] = environment()
    publish("grpc", data, render(data))


if __name__ == "__main__":
    main()
