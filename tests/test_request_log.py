"""The request log (``request_log``): one JSON line per inference request, from a real server.

Known traffic (two good requests, one with the client's ``X-Request-ID``, one bad request
on a versioned URL, one for an unknown model, plus calls that are not inferences) must
give exactly one line per inference, with the status, the sizes, and times where the
queue wait and the worker's compute fit inside the total. gRPC ModelInfer calls get the
same lines, with the gRPC status code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from runtime_core.proto import grpc_service_pb2 as pb
from runtime_core.testing import ServerProcess, wait_until, write_model

pytestmark = pytest.mark.e2e  # every test here starts real server processes

GOOD = {"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}
BAD = {"inputs": [{"name": "a", "shape": [3], "datatype": "INT32", "data": [1, 2]}]}


def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in server.output().splitlines():
        if line.startswith("{") and '"request_id"' in line:
            lines.append(json.loads(line))
    return lines


def post(
    server: ServerProcess, path: str, doc: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    body = json.dumps(doc).encode()
    status, _, response_headers = server.request(
        "POST", path, body, {"Content-Type": "application/json", **(headers or {})}
    )
    return status, response_headers


def test_one_line_per_inference_with_times_that_add_up(tmp_path: Path, serve: Any) -> None:
    write_model(tmp_path / "echo", name="echo", runtime="echo", parameters={"version": "1"})
    server = serve(tmp_path, workers=1, env={"RUNTIME_CORE_REQUEST_LOG": "true", "RUNTIME_CORE_LOG_FORMAT": "json"})

    status, headers = post(server, "/v2/models/echo/infer", GOOD, {"X-Request-ID": "client-42"})
    assert status == 200 and headers["X-Request-ID"] == "client-42"
    status, headers = post(server, "/v2/models/echo/infer", GOOD)
    assert status == 200
    made_up = headers["X-Request-ID"]
    assert post(server, "/v2/models/echo/versions/1/infer", BAD)[0] == 400
    assert post(server, "/v2/models/nope/infer", GOOD)[0] == 404
    assert server.get("/v2/models/echo")[0] == 200  # not an inference: not logged

    lines = wait_until(lambda: (found := log_lines(server)) and len(found) >= 4 and found, message="4 log lines")
    assert len(lines) == 4
    first, second, bad, unknown = lines
    assert first["request_id"] == "client-42" and second["request_id"] == made_up
    for line in (first, second):
        assert (line["protocol"], line["model"], line["version"], line["status"]) == ("http", "echo", "1", 200)
        assert line["bytes_in"] == len(json.dumps(GOOD).encode())
        assert line["bytes_out"] > 0
        assert line["queue_ms"] >= 0 and line["compute_ms"] > 0
        assert line["queue_ms"] + line["compute_ms"] <= line["total_ms"]
    assert (bad["model"], bad["version"], bad["status"]) == ("echo", "1", 400)
    assert bad["queue_ms"] is None and bad["compute_ms"] is None and bad["total_ms"] > 0
    assert (unknown["model"], unknown["status"]) == ("nope", 404)
    assert "Warning" not in server.output()  # quiet otherwise: no library warning per request


def test_off_by_default(tmp_path: Path, serve: Any) -> None:
    write_model(tmp_path / "echo", name="echo", runtime="echo")
    server = serve(tmp_path, workers=0)
    status, headers = post(server, "/v2/models/echo/infer", GOOD)
    assert status == 200 and "X-Request-ID" not in headers
    server.stop()
    assert log_lines(server) == []


def grpc_infer(channel: grpc.Channel, model: str, metadata: tuple[tuple[str, str], ...]) -> tuple[Any, bytes, Any]:
    """(status code, request bytes, the call's initial metadata) of one ModelInfer call."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="a", datatype="INT32", shape=[2])
    request.raw_input_contents.append(np.array([1, 2], dtype="<i4").tobytes())
    payload = request.SerializeToString()
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        _, call = infer.with_call(payload, metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), payload, dict(exc.initial_metadata())  # type: ignore[attr-defined]
    return call.code(), payload, dict(call.initial_metadata())


def test_grpc_calls_are_logged_too(tmp_path: Path, serve: Any) -> None:
    write_model(tmp_path / "echo", name="echo", runtime="echo", parameters={"version": "1"})
    server = serve(tmp_path, workers=1, env={"RUNTIME_CORE_REQUEST_LOG": "true"})
    with grpc.insecure_channel(server.grpc_url) as channel:
        good = grpc_infer(channel, "echo", (("x-request-id", "grpc-7"),))
        unknown = grpc_infer(channel, "nope", ())
    assert good[0] is grpc.StatusCode.OK and good[2]["x-request-id"] == "grpc-7"
    assert unknown[0] is grpc.StatusCode.NOT_FOUND
    made_up = unknown[2]["x-request-id"]

    lines = wait_until(lambda: (found := log_lines(server)) and len(found) >= 2 and found, message="2 log lines")
    assert len(lines) == 2
    first, second = lines
    assert (first["protocol"], first["model"], first["version"], first["status"]) == ("grpc", "echo", "1", 0)
    assert first["request_id"] == "grpc-7" and first["bytes_in"] == len(good[1]) and first["bytes_out"] > 0
    assert first["queue_ms"] >= 0 and first["compute_ms"] > 0
    assert first["queue_ms"] + first["compute_ms"] <= first["total_ms"]
    assert (second["protocol"], second["model"], second["status"]) == ("grpc", "nope", 5)  # NOT_FOUND
    assert second["request_id"] == made_up and second["queue_ms"] is None and second["compute_ms"] is None
