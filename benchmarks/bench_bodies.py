"""Large bodies: time per MiB, in each direction, through a running server.

One runtime-core server with the built-in ``echo`` model (one worker). For each size
(default 5, 20, 40 and 80 MiB) three kinds of request, each sent R times (default 3)
on a fresh connection, one at a time; the table gives the median wall time from
sending the first byte to reading the last, and that time divided by the body's MiB:

* ``malformed request``: a JSON body of that size that is not valid JSON (the worker
  reads it whole and answers 400): the request direction alone;
* ``binary request``: a valid FP32 tensor of that size in Triton's binary extension,
  its echo asked in binary too, so the response is as large as the request (both
  directions);
* ``json response``: the same binary request, its echo answered as JSON, which the
  worker formats (0.5 is written ``0.5,``: the same size as the binary tensor).

A cost linear in the body size shows as a flat ms/MiB column (issue 13 measured
0.11, 1.6 and 6.3 s for malformed 5, 20 and 40 MiB bodies: quadratic). Results:
``benchmarks/results/bodies-*.{json,md}``.

    python benchmarks/bench_bodies.py            # ~1 min
    python benchmarks/bench_bodies.py --sizes 5 20 -r 1
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from common import environment, median, progress, table, write_results
from servers import HOST, RuntimeCoreServer

MIB = 1024 * 1024
KINDS = ("malformed request", "binary request", "json response")


def _bodies(mib: int) -> dict[str, tuple[bytes, dict[str, str]]]:
    count = mib * MIB // 4
    tensor = struct.pack("<f", 0.5) * count
    binary: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": [count], "datatype": "FP32", "parameters": {"binary_data_size": len(tensor)}}]
    }
    json_out = json.dumps(binary).encode()
    binary["parameters"] = {"binary_data_output": True}
    binary_out = json.dumps(binary).encode()
    prefix = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ['
    filler = b"1," * ((mib * MIB - len(prefix)) // 2)
    return {
        "malformed request": (prefix + filler + b"x]}]}", {"Content-Type": "application/json"}),
        "binary request": (binary_out + tensor, {"Inference-Header-Content-Length": str(len(binary_out))}),
        "json response": (json_out + tensor, {"Inference-Header-Content-Length": str(len(json_out))}),
    }


def _send(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, int, float]:
    """(status, response bytes, seconds from the first byte sent to the last byte read)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=600)
    try:
        started = time.perf_counter()
        conn.request("POST", "/v2/models/echo/infer", body, headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, len(data), time.perf_counter() - started
    finally:
        conn.close()


EXPECTED = {"malformed request": 400, "binary request": 200, "json response": 200}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 40, 80], help="body sizes in MiB")
    parser.add_argument("-r", "--repeats", type=int, default=3, help="requests per size and kind (median)")
    args = parser.parse_args()

    repo = Path(tempfile.mkdtemp(prefix="bench-bodies-"))
    (repo / "echo").mkdir()
    (repo / "echo" / "model-settings.json").write_text(json.dumps({"runtime": "echo", "parallel_workers": 1}))
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    try:
        with RuntimeCoreServer(repo) as server:
            _send(server.port, *_bodies(1)["binary request"])  # warm
            for mib in args.sizes:
                for kind, (body, headers) in _bodies(mib).items():
                    runs = [_send(server.port, body, headers) for _ in range(args.repeats)]
                    statuses = {status for status, _, _ in runs}
                    if statuses != {EXPECTED[kind]}:
                        raise SystemExit(f"{kind} of {mib} MiB answered {statuses}, expected {EXPECTED[kind]}")
                    seconds = median([s for _, _, s in runs])
                    response = runs[0][1]
                    progress(f"{kind:18} {mib:3} MiB: {seconds:.3f} s")
                    results.append(
                        {
                            "kind": kind,
                            "mib": mib,
                            "request_bytes": len(body),
                            "response_bytes": response,
                            "seconds": seconds,
                            "runs": [s for _, _, s in runs],
                        }
                    )
                    rows.append([kind, mib, f"{response / MIB:.1f}", seconds * 1e3, seconds * 1e3 / mib])
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    markdown = table(["body", "request MiB", "response MiB", "median ms", "ms per request MiB"], rows)
    json_path, md_path = write_results("bodies", {"environment": environment(), "results": results}, markdown)
    print()
    print(markdown)
    print()
    progress(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
