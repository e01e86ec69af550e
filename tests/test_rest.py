"""The V2 REST API of a real ``runtime-core start`` process, over real sockets.

One server per module (echo and toy models, one worker each); every error case
checks the status, that the body is exactly ``{"error": str}`` with nothing of
the server's insides in it, and that the server still answers afterwards with
the same worker (no worker lost or replaced).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import infer_body, output, toy_model

import runtime_core
from runtime_core.testing import ServerProcess, wait_until, write_model

pytestmark = pytest.mark.e2e  # every test here starts real server processes

ECHO_BODY = {"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}
TOY_BODY = infer_body([1.0, 2.0])


# --------------------------------------------------------------------------- fixtures


def _env(toy_site: Path, **extra: str) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    env = {"PYTHONPATH": str(toy_site) + (os.pathsep + path if path else "")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rest-repo")
    write_model(root / "echo", name="echo", runtime="echo")
    write_model(root / "echo-v", name="echo-v", runtime="echo", parameters={"version": "2"})
    write_model(root / "cycle", name="cycle", runtime="echo")
    toy_model(root, "toy")
    toy_model(root, "slow", parameters={"extra": {"sleep": 0.3}})
    toy_model(root, "broken", parameters={"extra": {"load_fails": True}})
    toy_model(root, "escape-rel", parameters={"uri": "../../../../etc/passwd"})
    toy_model(root, "escape-abs", parameters={"uri": "/etc/passwd"})
    toy_model(root, "escape-pct", parameters={"uri": "..%2F..%2Fetc%2Fpasswd"})
    return root


@pytest.fixture(scope="module")
def server(repo: Path, toy_site: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(repo, workers=1, env=_env(toy_site))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def toy_pid(server: ServerProcess) -> int:
    status, doc = server.post_json("/v2/models/toy/infer", TOY_BODY)
    assert status == 200, doc
    return int(output(doc, "pid")[0])


@pytest.fixture(scope="module")
def small_server(repo: Path, toy_site: Path) -> Iterator[ServerProcess]:
    """A server whose request body limit is 1000 bytes."""
    proc = ServerProcess(repo, workers=1, env=_env(toy_site, RUNTIME_CORE_MAX_REQUEST_SIZE="1000"))
    yield proc
    proc.stop()


# --------------------------------------------------------------------------- helpers


def raw_request(
    server: ServerProcess, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """A request with the path sent exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.headers)
    finally:
        conn.close()


SERVER_PATHS = [str(Path(runtime_core.__file__).parent), sys.prefix, str(Path.home())]
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[\w.\-]+/)+[\w.\-]*")
PYTHON_INSIDES = re.compile(r"Traceback|File \"|Error:|Exception|\w+Error\b|<[a-z_.]+ object at")


def assert_error(status: int, body: bytes, expected: int | tuple[int, ...], *, client_path: bool = False) -> str:
    """The response is an error with status ``expected`` and a clean ``{"error": str}`` body."""
    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert status in allowed, (status, body)
    doc = json.loads(body)
    assert isinstance(doc, dict) and list(doc) == ["error"], doc
    message = doc["error"]
    assert isinstance(message, str) and message
    assert not PYTHON_INSIDES.search(message), message
    for path in SERVER_PATHS:
        assert path not in message, message
    if not client_path:  # a path the client sent may be quoted back; none of the server's
        assert not ABSOLUTE_PATH.search(message), message
    return message


def assert_still_serving(server: ServerProcess, toy_pid: int) -> None:
    """A good request succeeds afterwards, on the same (only) worker."""
    status, doc = server.post_json("/v2/models/toy/infer", TOY_BODY)
    assert status == 200, doc
    assert output(doc, "y") == [1.0, 2.0]
    assert output(doc, "pid") == [toy_pid]
    status, doc = server.post_json("/v2/models/echo/infer", ECHO_BODY)
    assert status == 200, doc


def post(server: ServerProcess, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    status, data, _ = server.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
    return status, data


# --------------------------------------------------------------------------- health and metadata


def test_health_live_and_ready(server: ServerProcess) -> None:
    for path in ("/v2/health/live", "/v2/health/ready"):
        status, body, headers = server.request("GET", path)
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        doc = json.loads(body)
        assert isinstance(doc, dict) and all(v is True for v in doc.values())


def test_server_metadata(server: ServerProcess) -> None:
    status, doc = server.get("/v2")
    assert status == 200
    assert doc["name"] == "runtime-core"
    assert doc["version"] == runtime_core.__version__
    assert {"binary_tensor_data", "model_repository"} <= set(doc["extensions"])
    assert all(isinstance(e, str) for e in doc["extensions"])


def test_model_metadata(server: ServerProcess) -> None:
    status, doc = server.get("/v2/models/toy")
    assert status == 200
    assert doc["name"] == "toy"
    assert isinstance(doc["platform"], str) and doc["platform"]
    assert isinstance(doc["inputs"], list) and isinstance(doc["outputs"], list)
    for tensor in doc["inputs"] + doc["outputs"]:
        assert set(tensor) == {"name", "datatype", "shape"}


def test_versioned_model_metadata_and_infer(server: ServerProcess) -> None:
    status, doc = server.get("/v2/models/echo-v")
    assert status == 200 and doc["versions"] == ["2"]
    status, doc = server.get("/v2/models/echo-v/versions/2")
    assert status == 200 and doc["name"] == "echo-v"
    status, doc = server.get("/v2/models/echo-v/versions/2/ready")
    assert (status, doc) == (200, {"name": "echo-v", "ready": True})
    status, doc = server.post_json("/v2/models/echo-v/versions/2/infer", ECHO_BODY)
    assert status == 200
    assert doc["model_name"] == "echo-v" and doc["model_version"] == "2"
    # Unversioned models answer without model_version.
    status, doc = server.post_json("/v2/models/echo/infer", ECHO_BODY)
    assert status == 200 and "model_version" not in doc


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/echo-v/versions/3"),
        ("GET", "/v2/models/echo-v/versions/3/ready"),
        ("POST", "/v2/models/echo-v/versions/3/infer"),
        ("GET", "/v2/models/echo/versions/1"),
    ],
)
def test_wrong_version_is_404(server: ServerProcess, toy_pid: int, method: str, path: str) -> None:
    body = json.dumps(ECHO_BODY).encode() if method == "POST" else None
    status, data, _ = server.request(method, path, body)
    assert "version" in assert_error(status, data, 404)
    assert_still_serving(server, toy_pid)


def test_model_ready(server: ServerProcess) -> None:
    assert server.get("/v2/models/echo/ready") == (200, {"name": "echo", "ready": True})
    status, body, _ = server.request("GET", "/v2/models/broken/ready")
    assert status == 400 and json.loads(body) == {"name": "broken", "ready": False}


# --------------------------------------------------------------------------- inference


def test_infer_echoes_id_and_inputs(server: ServerProcess) -> None:
    body = {
        "id": "request-42",
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
            {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["héllo"]},
            {"name": "c", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
        ],
    }
    status, headers_body, headers = server.request(
        "POST", "/v2/models/echo/infer", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(headers_body)
    assert doc["model_name"] == "echo"
    assert doc["id"] == "request-42"
    assert doc["outputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.0]},
        {"name": "b", "datatype": "BYTES", "shape": [1], "data": ["héllo"]},
        {"name": "c", "datatype": "BOOL", "shape": [3], "data": [True, False, True]},
    ]


def test_infer_without_id_has_no_id(server: ServerProcess) -> None:
    status, doc = server.post_json("/v2/models/echo/infer", ECHO_BODY)
    assert status == 200 and "id" not in doc


def test_requested_outputs_are_honoured_in_order(server: ServerProcess) -> None:
    status, doc = server.post_json("/v2/models/toy/infer", {**TOY_BODY, "outputs": [{"name": "calls"}, {"name": "y"}]})
    assert status == 200
    assert [o["name"] for o in doc["outputs"]] == ["calls", "y"]
    assert output(doc, "y") == [1.0, 2.0]


def test_unknown_requested_output_is_400(server: ServerProcess, toy_pid: int) -> None:
    body = json.dumps({**TOY_BODY, "outputs": [{"name": "nope"}]}).encode()
    status, data = post(server, "/v2/models/toy/infer", body)
    assert "nope" in assert_error(status, data, 400)
    assert_still_serving(server, toy_pid)


def test_binary_request_and_response(server: ServerProcess) -> None:
    header = json.dumps(
        {
            "inputs": [{"name": "a", "shape": [2], "datatype": "INT16", "parameters": {"binary_data_size": 4}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    status, body, headers = server.request(
        "POST",
        "/v2/models/echo/infer",
        header + b"\x01\x00\xff\xff",
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200
    length = int(headers["Inference-Header-Content-Length"])
    doc = json.loads(body[:length])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 4
    assert body[length:] == b"\x01\x00\xff\xff"


def test_runtime_failure_is_500_and_the_worker_survives(server: ServerProcess, toy_pid: int) -> None:
    status, data = post(server, "/v2/models/toy/infer", json.dumps(infer_body([1.0], fail=True)).encode())
    message = assert_error(status, data, 500)
    assert "toy" in message
    assert "RuntimeError" not in message
    assert_still_serving(server, toy_pid)


def test_runtime_rejection_is_400(server: ServerProcess, toy_pid: int) -> None:
    status, data = post(server, "/v2/models/toy/infer", json.dumps(infer_body([1.0], invalid=True)).encode())
    assert "rejects" in assert_error(status, data, 400)
    assert_still_serving(server, toy_pid)


def test_model_not_ready_is_503(server: ServerProcess, toy_pid: int) -> None:
    for method, path in [("POST", "/v2/models/broken/infer"), ("GET", "/v2/models/broken")]:
        body = json.dumps(TOY_BODY).encode() if method == "POST" else None
        status, data, _ = server.request(method, path, body)
        assert "broken" in assert_error(status, data, 503)
    assert_still_serving(server, toy_pid)


# --------------------------------------------------------------------------- malformed requests

BAD_TENSOR = {"name": "x", "shape": [2], "datatype": "FP32"}
HUGE_BYTES = {"name": "x", "shape": [2**40], "datatype": "BYTES", "parameters": {"binary_data_size": 0}}
BAD_INFER_BODIES = [
    b"",
    b"{",
    b"not json",
    b"\xff\xfe\x00",
    b"[]",
    b"null",
    b'{"inputs": {}}',
    b'{"inputs": [], "id": 7}',
    json.dumps({"inputs": [{**BAD_TENSOR, "data": [1]}]}).encode(),  # shape mismatch
    json.dumps({"inputs": [{**BAD_TENSOR, "data": ["a", "b"]}]}).encode(),  # strings into FP32
    json.dumps({"inputs": [{**BAD_TENSOR, "data": [[1, 2], [3]]}]}).encode(),  # ragged
    json.dumps({"inputs": [{**BAD_TENSOR, "data": [1, None]}]}).encode(),  # null
    json.dumps({"inputs": [{**BAD_TENSOR, "datatype": "FP8", "data": [1, 2]}]}).encode(),
    json.dumps({"inputs": [{**BAD_TENSOR, "datatype": ["FP32"], "data": [1, 2]}]}).encode(),
    json.dumps({"inputs": [{**BAD_TENSOR, "shape": [-2], "data": [1, 2]}]}).encode(),
    json.dumps({"inputs": [{**BAD_TENSOR, "datatype": "UINT8", "data": [1, 256]}]}).encode(),
    json.dumps({"inputs": [{**BAD_TENSOR, "datatype": "INT8", "data": [1, 1.5]}]}).encode(),
    json.dumps({"inputs": [{**BAD_TENSOR, "datatype": "FP16", "data": [1, 1e10]}]}).encode(),
    json.dumps({"inputs": [{**BAD_TENSOR, "data": [1, 2]}, {**BAD_TENSOR, "data": [1, 2]}]}).encode(),
    json.dumps({"inputs": [{**BAD_TENSOR, "shape": [0] * 70, "data": []}]}).encode(),
    json.dumps({"inputs": [{**BAD_TENSOR, "data": [1, 2]}], "outputs": "y"}).encode(),
    json.dumps({"inputs": [{**BAD_TENSOR, "data": [1, 2]}], "parameters": [1]}).encode(),
]


@pytest.mark.parametrize("model", ["echo", "toy"])
@pytest.mark.parametrize("body", BAD_INFER_BODIES)
def test_malformed_infer_bodies_are_400(server: ServerProcess, toy_pid: int, model: str, body: bytes) -> None:
    status, data = post(server, f"/v2/models/{model}/infer", body)
    assert_error(status, data, 400)
    assert_still_serving(server, toy_pid)


def _binary(inputs: list[dict[str, Any]], tail: bytes) -> tuple[bytes, int]:
    header = json.dumps({"inputs": inputs}).encode()
    return header + tail, len(header)


@pytest.mark.parametrize(
    ("body_and_length", "header_delta"),
    [
        (_binary([{**BAD_TENSOR, "parameters": {"binary_data_size": 8}}], b"\0" * 8), 9),  # header past the body
        (_binary([{**BAD_TENSOR, "parameters": {"binary_data_size": 8}}], b"\0" * 8), -3),  # header cut short
        (_binary([{**BAD_TENSOR, "parameters": {"binary_data_size": 4}}], b"\0" * 4), 0),  # size vs shape
        (_binary([{**BAD_TENSOR, "parameters": {"binary_data_size": 16}}], b"\0" * 8), 0),  # past the end
        (_binary([{**BAD_TENSOR, "parameters": {"binary_data_size": 8}}], b"\0" * 9), 0),  # trailing bytes
        (_binary([{**BAD_TENSOR, "datatype": "BOOL", "parameters": {"binary_data_size": 2}}], b"\x01\x05"), 0),
        (_binary([{**BAD_TENSOR, "datatype": "BYTES", "parameters": {"binary_data_size": 5}}], b"\x09\0\0\0a"), 0),
    ],
)
def test_malformed_binary_bodies_are_400(
    server: ServerProcess, toy_pid: int, body_and_length: tuple[bytes, int], header_delta: int
) -> None:
    body, length = body_and_length
    headers = {
        "Inference-Header-Content-Length": str(length + header_delta),
        "Content-Type": "application/octet-stream",
    }
    status, data = post(server, "/v2/models/echo/infer", body, headers)
    assert_error(status, data, 400)
    assert_still_serving(server, toy_pid)


def test_a_huge_binary_shape_is_refused_without_allocating(server: ServerProcess, toy_pid: int) -> None:
    # 2**40 BYTES elements and no data: refused from the shape (max_elements, 413) before
    # anything is allocated; the worker survives.
    body, length = _binary([HUGE_BYTES], b"")
    headers = {"Inference-Header-Content-Length": str(length), "Content-Type": "application/octet-stream"}
    status, data = post(server, "/v2/models/echo/infer", body, headers)
    assert "max_elements" in assert_error(status, data, 413)
    assert_still_serving(server, toy_pid)


@pytest.mark.parametrize(
    "headers",
    [
        {"Inference-Header-Content-Length": "abc"},
        {"Inference-Header-Content-Length": "-5"},
        {"Inference-Header-Content-Length": "1.5"},
        {"Inference-Header-Content-Length": "1000000"},  # past the body
        {"Inference-Header-Content-Length": "2147483648"},  # past 32 bits
        {"Inference-Header-Content-Length": "99999999999999999999999"},  # past 64 bits
        {"Request-Timeout": "soon"},
        {"Request-Timeout": "0"},
        {"Request-Timeout": "-1"},
        {"Request-Timeout": "nan"},
        {"Request-Timeout": "inf"},
        {"Request-Timeout": "Infinity"},
        {"Request-Timeout": "1e999"},
    ],
)
def test_bad_headers_are_400(server: ServerProcess, toy_pid: int, headers: dict[str, str]) -> None:
    status, data = post(server, "/v2/models/echo/infer", json.dumps(ECHO_BODY).encode(), headers)
    assert_error(status, data, 400)
    assert_still_serving(server, toy_pid)


# --------------------------------------------------------------------------- not found, routes, methods


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v2/models/nope/versions/1/infer"),
        ("POST", "/v2/repository/models/nope/load"),
        ("POST", "/v2/repository/models/nope/unload"),
    ],
)
def test_unknown_model_is_404(server: ServerProcess, toy_pid: int, method: str, path: str) -> None:
    body = json.dumps(ECHO_BODY).encode() if method == "POST" else None
    status, data, _ = server.request(method, path, body)
    assert "nope" in assert_error(status, data, 404)
    assert_still_serving(server, toy_pid)


@pytest.mark.parametrize(
    "path",
    ["/x", "/v1/models/echo", "/v2/nope", "/v2/models", "/v2/models/echo/infer/more", "/v2/repository", "/metrics/x"],
)
def test_unknown_route_is_404_json(server: ServerProcess, toy_pid: int, path: str) -> None:
    status, data, headers = server.request("GET", path)
    assert_error(status, data, 404)
    assert headers["Content-Type"].startswith("application/json")
    assert_still_serving(server, toy_pid)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2"),
        ("GET", "/v2/health/live"),
        ("GET", "/v2/health/ready"),
        ("GET", "/v2/models/echo"),
        ("GET", "/v2/models/echo/ready"),
        ("GET", "/v2/models/echo-v/versions/2/ready"),
        ("POST", "/v2/models/echo/infer"),
        ("POST", "/v2/repository/index"),
        ("GET", "/v2/docs/openapi.json"),
    ],
)
def test_trailing_slash_gets_the_same_answer(server: ServerProcess, method: str, path: str) -> None:
    body = json.dumps(ECHO_BODY).encode() if method == "POST" else None
    plain = server.request(method, path, body)
    slashed = server.request(method, path + "/", body)
    assert slashed[0] == plain[0] == 200, (slashed, plain)
    assert json.loads(slashed[1]) == json.loads(plain[1])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/echo/infer"),
        ("PUT", "/v2/models/echo/infer"),
        ("POST", "/v2/health/live"),
        ("DELETE", "/v2"),
        ("GET", "/v2/repository/index"),
        ("GET", "/v2/repository/models/echo/load"),
        ("PATCH", "/v2/models/echo"),
    ],
)
def test_wrong_method_is_405_json(server: ServerProcess, toy_pid: int, method: str, path: str) -> None:
    status, data, headers = server.request(method, path, b"{}" if method != "GET" else None)
    assert_error(status, data, 405)
    assert headers["Content-Type"].startswith("application/json")
    assert "Allow" in headers
    assert_still_serving(server, toy_pid)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/..%2F..%2Fetc%2Fpasswd"),
        ("GET", "/v2/models/%2Fetc%2Fpasswd/ready"),
        ("GET", "/v2/models/%2e%2e/ready"),
        ("POST", "/v2/models/..%2Fecho/infer"),
        ("POST", "/v2/models/echo%2F..%2Ftoy/infer"),
        ("POST", "/v2/models/..%5C..%5Cecho/infer"),
        ("POST", "/v2/models/%2Ftmp/versions/..%2F1/infer"),
        ("POST", "/v2/repository/models/..%2F..%2Fetc/load"),
        ("POST", "/v2/repository/models/%2Fetc/load"),
        ("POST", "/v2/repository/models/%2e%2e/load"),
        ("POST", "/v2/repository/models/..%5Cecho/load"),
        ("POST", "/v2/repository/models/echo%00/load"),
        ("POST", "/v2/repository/models/%2e%2e%2Fecho/unload"),
        ("POST", "/v2/repository/models/..%252Fecho/load"),  # double-encoded
    ],
)
def test_separators_and_dot_dot_in_model_names_are_refused(
    server: ServerProcess, toy_pid: int, method: str, path: str
) -> None:
    body = json.dumps(ECHO_BODY).encode() if path.endswith("/infer") else None
    status, data, _ = raw_request(server, method, path, body)
    assert_error(status, data, (400, 404), client_path=True)
    assert_still_serving(server, toy_pid)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/../../../../etc/passwd",
        "/v2/models/echo/../../../etc/passwd/ready",
        "/v2/repository/models/../../../tmp/load",
        "//etc/passwd",
    ],
)
def test_dot_dot_segments_in_urls_never_reach_a_model(server: ServerProcess, toy_pid: int, path: str) -> None:
    status, data, _ = raw_request(server, "POST" if path.endswith("load") else "GET", path)
    assert 400 <= status < 500
    assert_error(status, data, status, client_path=True)
    assert_still_serving(server, toy_pid)


@pytest.mark.parametrize("name", ["escape-rel", "escape-abs", "escape-pct"])
def test_model_uris_outside_the_repository_are_refused(server: ServerProcess, toy_pid: int, name: str) -> None:
    # The model is listed, never loaded, and says why without naming server paths.
    status, index = server.post_json("/v2/repository/index")
    assert status == 200
    (entry,) = [e for e in index if e["name"] == name]
    assert entry["state"] == "UNAVAILABLE"
    assert "uri" in entry["reason"]
    for path in [*SERVER_PATHS, "/etc/passwd"]:
        assert path not in entry["reason"]
    status, data, _ = server.request("POST", f"/v2/models/{name}/infer", json.dumps(TOY_BODY).encode())
    assert_error(status, data, 503)
    status, data, _ = server.request("POST", f"/v2/repository/models/{name}/load")
    assert "uri" in assert_error(status, data, 400)
    assert_still_serving(server, toy_pid)


# --------------------------------------------------------------------------- repository extension


def test_repository_index(server: ServerProcess) -> None:
    empty: dict[str, Any] = {}
    for body in (None, empty):
        status, index = server.post_json("/v2/repository/index", body)
        assert status == 200
        by_name = {e["name"]: e for e in index}
        assert by_name["echo"]["state"] == "READY"
        assert by_name["broken"]["state"] == "UNAVAILABLE"
        assert by_name["broken"]["reason"]
        assert by_name["echo-v"]["version"] == "2"
        for entry in index:
            assert entry["state"] in {"UNKNOWN", "READY", "UNAVAILABLE", "LOADING", "UNLOADING"}
            assert isinstance(entry["reason"], str)
    status, index = server.post_json("/v2/repository/index", {"ready": True})
    assert status == 200
    names = {e["name"] for e in index}
    assert {"echo", "toy"} <= names and "broken" not in names


@pytest.mark.parametrize("body", [b"{", b"[]", b"3", b"\xff"])
@pytest.mark.parametrize("path", ["/v2/repository/index", "/v2/repository/models/echo/load"])
def test_repository_bad_bodies_are_400(server: ServerProcess, toy_pid: int, path: str, body: bytes) -> None:
    status, data = post(server, path, body)
    assert_error(status, data, 400)
    assert_still_serving(server, toy_pid)


@pytest.mark.parametrize("ready", ["no", 1, "true", [True]])
def test_repository_index_ready_must_be_a_boolean(server: ServerProcess, toy_pid: int, ready: Any) -> None:
    status, data = post(server, "/v2/repository/index", json.dumps({"ready": ready}).encode())
    assert "ready" in assert_error(status, data, 400)
    assert_still_serving(server, toy_pid)


def test_unload_then_infer_then_load_again(server: ServerProcess, toy_pid: int) -> None:
    assert server.post_json("/v2/models/cycle/infer", ECHO_BODY)[0] == 200
    status, _ = server.post_json("/v2/repository/models/cycle/unload")  # empty body
    assert status == 200
    # The model is known but not loaded: infer is 503 and readiness 400 (false), not 404 (no such model).
    status, data, _ = server.request("POST", "/v2/models/cycle/infer", json.dumps(ECHO_BODY).encode())
    assert "cycle" in assert_error(status, data, 503)
    status, body, _ = server.request("GET", "/v2/models/cycle/ready")
    assert status == 400 and json.loads(body) == {"name": "cycle", "ready": False}
    status, index = server.post_json("/v2/repository/index")
    assert {e["name"]: e["state"] for e in index}["cycle"] == "UNAVAILABLE"
    # Unloading twice is an error that names the model.
    status, data, _ = server.request("POST", "/v2/repository/models/cycle/unload")
    assert "cycle" in assert_error(status, data, (400, 404))
    # Load again (body {}), and it serves.
    status, doc = server.post_json("/v2/repository/models/cycle/load", {})
    assert status == 200 and doc["state"] == "READY"
    status, doc = server.post_json("/v2/models/cycle/infer", ECHO_BODY)
    assert status == 200 and doc["outputs"][0]["data"] == [1, 2]
    # Loading a loaded model reloads it and it keeps serving.
    assert server.post_json("/v2/repository/models/cycle/load")[0] == 200
    assert server.post_json("/v2/models/cycle/infer", ECHO_BODY)[0] == 200
    assert_still_serving(server, toy_pid)


def test_loading_a_broken_model_fails_cleanly(server: ServerProcess, toy_pid: int) -> None:
    status, data, _ = server.request("POST", "/v2/repository/models/broken/load")
    assert "broken" in assert_error(status, data, 500)
    assert_still_serving(server, toy_pid)


# --------------------------------------------------------------------------- deadlines


@pytest.mark.parametrize("timeout", ["0.1", "0.000001"])
def test_request_timeout_expires_while_queued_504(
    server: ServerProcess, toy_pid: int, timeout: str, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    first: list[Any] = []
    busy_body = infer_body([1.0, 2.0], sleep=2.0, started_file=str(marker))
    busy = threading.Thread(target=lambda: first.append(server.post_json("/v2/models/slow/infer", busy_body)))
    busy.start()
    wait_until(marker.exists, 30, "the first request to occupy the only worker")
    status, data = post(server, "/v2/models/slow/infer", json.dumps(TOY_BODY).encode(), {"Request-Timeout": timeout})
    busy.join()
    assert "deadline" in assert_error(status, data, 504)
    assert first[0][0] == 200
    # The expired request never ran: the worker's next call is the one right after the first.
    status, doc = server.post_json("/v2/models/slow/infer", TOY_BODY)
    assert status == 200
    assert output(doc, "calls") == [output(first[0][1], "calls")[0] + 1]
    assert_still_serving(server, toy_pid)


def test_generous_request_timeout_is_honoured(server: ServerProcess) -> None:
    status, data = post(server, "/v2/models/slow/infer", json.dumps(TOY_BODY).encode(), {"Request-Timeout": "30"})
    assert status == 200, data


# --------------------------------------------------------------------------- body size limit


def test_body_over_the_limit_is_413(small_server: ServerProcess) -> None:
    big = json.dumps(infer_body([0.5] * 400)).encode()
    assert len(big) > 1000
    status, data = post(small_server, "/v2/models/echo/infer", big)
    assert_error(status, data, 413)
    # Without Content-Length (chunked), the limit holds while reading.
    conn = http.client.HTTPConnection("127.0.0.1", small_server.port, timeout=30)
    try:
        conn.request("POST", "/v2/models/echo/infer", body=iter([big[:500], big[500:]]), encode_chunked=True)
        resp = conn.getresponse()
        assert_error(resp.status, resp.read(), 413)
    finally:
        conn.close()
    for path in ("/v2/repository/index", "/v2/repository/models/echo/load"):
        status, data = post(small_server, path, b" " * 2000)
        assert_error(status, data, 413)
    # A body under the limit still works, on the same worker.
    small = infer_body([0.5] * 10)
    status, doc = small_server.post_json("/v2/models/toy/infer", small)
    assert status == 200, doc
    pid = output(doc, "pid")
    status, doc = small_server.post_json("/v2/models/toy/infer", small)
    assert status == 200 and output(doc, "pid") == pid


@pytest.mark.parametrize("binary", [False, True])
def test_output_that_breaks_its_datatype_is_500_naming_model_and_output(
    server: ServerProcess, toy_pid: int, binary: bool
) -> None:
    body = infer_body([1.5, 2.5], label_output="INT8", binary_data_output=binary)
    status, data = post(server, "/v2/models/toy/infer", json.dumps(body).encode())
    message = assert_error(status, data, 500)
    assert "model 'toy'" in message and "output 'y'" in message and "INT8" in message
    # Values that survive the conversion are converted, the same in JSON and binary.
    body = infer_body([1.0, 2.0], label_output="INT8")
    status, data = post(server, "/v2/models/toy/infer", json.dumps(body).encode())
    assert status == 200
    (y,) = [o for o in json.loads(data)["outputs"] if o["name"] == "y"]
    assert (y["datatype"], y["data"]) == ("INT8", [1, 2])
    assert_still_serving(server, toy_pid)
