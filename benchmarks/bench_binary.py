"""JSON vs the binary tensor extension: a [64, 20] FP32 request, server CPU per request.

Two models on one runtime-core server (``parallel_workers`` 2 each by default):

* ``echo`` (built-in ``"runtime": "echo"``): answers with its input, so the
  request and the response both carry the 64 x 20 tensor -- the cost is all codec;
* ``light`` (LogisticRegression, 20 features) with 64-row requests: the answer is
  64 INT64 labels.

Three bodies per model, all the same rows (``models.request_array``-style, 64 rows):

* ``json``: V2 JSON, ``data`` as a flat list of numbers;
* ``binary``: Triton's binary tensor extension (docs/protocol.md): JSON header
  with ``parameters.binary_data_size``, then 5,120 raw little-endian FP32 bytes,
  header ``Inference-Header-Content-Length``; the response stays JSON;
* ``binary+out``: the same plus ``"parameters": {"binary_data_output": true}`` so
  the response's tensors come back binary too.

Each body is checked once (200, and the same numbers decoded from every variant's
answer), then loaded closed-loop with wrk (concurrency C, default 8; the Lua script
reads the body from a file and sets the headers). Variants are interleaved in R
rounds of D s windows on the same server; the table gives medians: req/s, p50, p99,
server CPU ms per request (whole process tree / requests) and the main process's share.
Results: ``benchmarks/results/binary-*.{json,md}``.

Examples::

    python benchmarks/bench_binary.py                  # full run (~3 min)
    python benchmarks/bench_binary.py --quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import models
import numpy as np
from common import closed_window, environment, infer_url, median, progress, publish, table
from servers import RuntimeCoreServer

ROWS = 64
VARIANTS = ("json", "binary", "binary+out")
METRICS = ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_ms_per_req", "cpu_main_ms_per_req", "cpu_cores")
_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}


def rows64() -> np.ndarray[Any, Any]:
    x, _ = models.dataset()
    return np.round(x[1000 : 1000 + ROWS], 4).astype(np.float32)


def make_body(x: np.ndarray[Any, Any], variant: str) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers) of one request carrying ``x`` as input ``input-0``."""
    tensor: dict[str, Any] = {"name": "input-0", "shape": list(x.shape), "datatype": "FP32"}
    if variant == "json":
        tensor["data"] = [round(float(v), 4) for v in x.flat]
        return json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode(), {}
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    doc: dict[str, Any] = {"inputs": [tensor]}
    if variant == "binary+out":
        doc["parameters"] = {"binary_data_output": True}
    header = json.dumps(doc, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return header + raw, headers


def decode_response(raw: bytes, header_length: str | None) -> dict[str, np.ndarray[Any, Any]]:
    """Output name -> array, from a JSON or binary-extension response."""
    size = int(header_length) if header_length is not None else len(raw)
    doc = json.loads(raw[:size])
    offset, out = size, {}
    for o in doc["outputs"]:
        dtype = _DTYPES[o["datatype"]]
        nbytes = (o.get("parameters") or {}).get("binary_data_size")
        if nbytes is not None:
            arr = np.frombuffer(raw[offset : offset + nbytes], dtype=dtype)
            offset += nbytes
        else:
            arr = np.asarray(o["data"], dtype=dtype)
        out[o["name"]] = arr.reshape(o["shape"])
    return out


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, np.ndarray[Any, Any]]]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
        return resp.status, raw, decode_response(raw, resp.headers.get("Inference-Header-Content-Length"))


def check(url: str, bodies: dict[str, tuple[bytes, dict[str, str]]]) -> dict[str, int]:
    """Every variant answers 200 with the same numbers; returns each variant's response size."""
    sizes, reference = {}, None
    for variant, (body, headers) in bodies.items():
        status, raw, outputs = post(url, body, headers)
        if status != 200:
            raise RuntimeError(f"{variant}: HTTP {status}")
        sizes[variant] = len(raw)
        if reference is None:
            reference = outputs
        elif set(outputs) != set(reference) or any(
            not np.allclose(outputs[k], reference[k], rtol=1e-6, atol=1e-6) for k in outputs
        ):
            raise RuntimeError(f"{variant}: the answer differs from the JSON request's")
    return sizes


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    x = rows64()
    bodies = {v: make_body(x, v) for v in VARIANTS}
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-binary-") as tmp:
        repo = Path(tmp)
        models.write_model(repo, "light", workers=args.workers)
        (repo / "echo").mkdir()
        (repo / "echo" / "model-settings.json").write_text(
            json.dumps({"name": "echo", "runtime": "echo", "parallel_workers": args.workers}) + "\n"
        )
        with RuntimeCoreServer(repo) as server:
            progress(f"runtime-core echo + light ({args.workers} workers each) ready in {server.ready_seconds:.2f} s")
            for model in ("echo", "light"):
                url = infer_url(server.url, model)
                sizes = check(url, bodies)
                windows: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
                for i in range(args.repeats):
                    for variant in VARIANTS:
                        body, headers = bodies[variant]
                        w = closed_window(
                            url,
                            body,
                            server.pid,
                            concurrency=args.concurrency,
                            warmup=args.warmup if i == 0 else 0.0,
                            duration=args.duration,
                            headers=headers,
                        )
                        windows[variant].append(w)
                        progress(
                            f"  {model} {variant} round {i + 1}: {w['rps']:.0f} req/s p50 {w['p50_ms']:.2f} "
                            f"p99 {w['p99_ms']:.2f} ms, CPU {w['cpu_ms_per_req']:.3f} ms/req "
                            f"(main {w['cpu_main_ms_per_req']:.3f}), errors {w['errors']}"
                        )
                for variant in VARIANTS:
                    row: dict[str, Any] = {
                        "model": model,
                        "variant": variant,
                        "request_bytes": len(bodies[variant][0]),
                        "response_bytes": sizes[variant],
                        "windows": windows[variant],
                        "errors": sum(w["errors"] for w in windows[variant]),
                    }
                    for key in METRICS:
                        row[key] = median([w[key] for w in windows[variant]])
                    out.append(row)
    return out


def render(data: dict[str, Any]) -> str:
    a = data["args"]
    parts = [
        f"# bench_binary ({data['env']['time']}, {data['env']['cpus']} CPUs)",
        "",
        f"[{ROWS}, 20] FP32 per request; closed loop (wrk) concurrency {a['concurrency']}; {a['workers']} workers "
        f"per model; warm-up {a['warmup']} s; median of {a['repeats']} interleaved windows of {a['duration']} s. "
        "CPU ms/req: the server's whole process tree / requests.",
        "",
    ]
    headers = [
        "model",
        "body",
        "request bytes",
        "response bytes",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU ms/req",
        "main proc ms/req",
        "CPU vs json",
        "errors",
    ]
    body = []
    for r in data["rows"]:
        base = next(b for b in data["rows"] if b["model"] == r["model"] and b["variant"] == "json")
        body.append(
            [
                r["model"],
                r["variant"],
                r["request_bytes"],
                r["response_bytes"],
                r["rps"],
                r["p50_ms"],
                r["p99_ms"],
                r["cpu_ms_per_req"],
                r["cpu_main_ms_per_req"],
                f"{r['cpu_ms_per_req'] / base['cpu_ms_per_req']:.2f}x",
                r["errors"],
            ]
        )
    parts.append(table(headers, body))
    if data.get("failures"):
        parts += ["", "Failures:", ""] + [f"- {f.splitlines()[0]}" for f in data["failures"]]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="parallel_workers of each model")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="each measured window, seconds")
    parser.add_argument("-w", "--warmup", type=float, default=2.0, help="warm-up before a variant's first window")
    parser.add_argument("-r", "--repeats", type=int, default=2, help="interleaved rounds (median)")
    parser.add_argument("--quick", action="store_true", help="3 s windows, 1 s warm-up, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.repeats = 3.0, 1.0, 1
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required (apt-get install wrk)")
    models.artifact_path("light")
    data: dict[str, Any] = {"env": environment(), "args": vars(args), "rows": [], "failures": []}
    try:
        data["rows"] = run(args)
    except (RuntimeError, TimeoutError, OSError) as exc:
        progress(f"FAILED: {exc}")
        data["failures"].append(str(exc)[-2000:])
    except KeyboardInterrupt:
        progress("interrupted")
        data["failures"].append("interrupted")
    markdown = render(data)
    publish("binary", data, markdown)


if __name__ == "__main__":
    main()
