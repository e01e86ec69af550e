"""Triton's own HTTP client (``tritonclient.http``) against a real runtime-core server.

If a third-party V2 client works unchanged, so will users' existing code: every
numeric datatype and BYTES, inputs and outputs in JSON and in binary, the
health, metadata and model repository calls, and errors it can read.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from runtime_core.testing import ServerProcess, write_model

pytestmark = pytest.mark.e2e  # every test here starts real server processes

NUMERIC = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("triton-repo")
    write_model(root / "echo", name="echo", runtime="echo")
    write_model(root / "echo-v", name="echo-v", runtime="echo", parameters={"version": "7"})
    write_model(root / "cycle", name="cycle", runtime="echo")
    proc = ServerProcess(root, workers=1)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30.0)
    yield triton
    triton.close()


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray[Any, Any]:
    count = int(np.prod(shape))
    if datatype == "BYTES":
        items = [b"", b"abc", "h\u00e9llo".encode(), b"x" * 40, b"1", b"z"][:count]
        return np.array(items, dtype=np.object_).reshape(shape)
    dtype: np.dtype[Any] = np.dtype(NUMERIC[datatype])
    if dtype.kind == "b":
        return np.asarray(np.arange(count) % 2 == 0).reshape(shape)
    if dtype.kind == "f":
        return np.asarray(np.arange(count, dtype=dtype) * dtype.type(-1.5) + dtype.type(0.25)).reshape(shape)
    info = np.iinfo(dtype)
    values = [info.min, info.max, 0, 1, info.max // 3, info.min // 3 if info.min else 7][:count]
    return np.array(values, dtype=dtype).reshape(shape)


def as_bytes(array: np.ndarray[Any, Any]) -> list[bytes]:
    """BYTES results come back as ``bytes`` (binary) or ``str`` (JSON): compare as bytes."""
    return [x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1)]


# --------------------------------------------------------------------------- health and metadata


def test_server_live_ready_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "runtime-core"
    assert "binary_tensor_data" in meta["extensions"]
    assert "model_repository" in meta["extensions"]


def test_model_ready_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("echo")
    assert client.is_model_ready("echo-v", "7")
    assert not client.is_model_ready("echo-v", "8")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("echo")
    assert meta["name"] == "echo"
    assert isinstance(meta["inputs"], list) and isinstance(meta["outputs"], list)
    meta = client.get_model_metadata("echo-v", "7")
    assert meta["versions"] == ["7"]


def test_errors_reach_the_client_with_status_and_message(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404"
    assert "nope" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [_input("FP32", sample("FP32"), True)])
    assert info.value.status() == "404"


# --------------------------------------------------------------------------- inference


def _input(datatype: str, data: np.ndarray[Any, Any], binary: bool, name: str = "x") -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary_out", [True, False], ids=["out-binary", "out-json"])
@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_nan_and_infinity_come_back_as_sent(
    client: httpclient.InferenceServerClient, datatype: str, binary_out: bool
) -> None:
    """JSON has no NaN: the server writes NaN/Infinity tokens, which tritonclient reads as the
    same values a binary response carries (docs/protocol.md)."""
    data = np.array([np.nan, np.inf, -np.inf, 0.5], dtype=NUMERIC[datatype])
    result = client.infer(
        "echo", [_input(datatype, data, True)], outputs=[httpclient.InferRequestedOutput("x", binary_data=binary_out)]
    )
    back = result.as_numpy("x")
    assert back is not None and back.dtype == data.dtype
    np.testing.assert_array_equal(back, data)  # NaN equals NaN here


@pytest.mark.parametrize("binary_out", [True, False], ids=["out-binary", "out-json"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["in-binary", "in-json"])
@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_infer_every_datatype(
    client: httpclient.InferenceServerClient, datatype: str, binary_in: bool, binary_out: bool
) -> None:
    data = sample(datatype)
    result = client.infer(
        "echo",
        [_input(datatype, data, binary_in)],
        outputs=[httpclient.InferRequestedOutput("x", binary_data=binary_out)],
        request_id=f"{datatype}-{binary_in}-{binary_out}",
    )
    response = result.get_response()
    assert response["model_name"] == "echo"
    assert response["id"] == f"{datatype}-{binary_in}-{binary_out}"
    (out,) = response["outputs"]
    assert out["datatype"] == datatype and out["shape"] == [2, 3]
    assert ("binary_data_size" in out.get("parameters", {})) == binary_out
    back = result.as_numpy("x")
    assert back is not None and back.shape == data.shape
    if datatype == "BYTES":
        assert as_bytes(back) == as_bytes(data)
    else:
        assert back.dtype == data.dtype
        np.testing.assert_array_equal(back, data)


def test_infer_several_inputs_mixed_and_default_outputs(client: httpclient.InferenceServerClient) -> None:
    inputs = [
        _input("FP32", sample("FP32"), True, "a"),
        _input("BYTES", sample("BYTES", (3,)), False, "b"),
        _input("INT64", sample("INT64", (1, 6)), True, "c"),
    ]
    # No requested outputs: the client asks for every output in binary.
    result = client.infer("echo", inputs)
    np.testing.assert_array_equal(result.as_numpy("a"), sample("FP32"))
    assert as_bytes(result.as_numpy("b")) == as_bytes(sample("BYTES", (3,)))
    np.testing.assert_array_equal(result.as_numpy("c"), sample("INT64", (1, 6)))
    # A subset, in the order asked for.
    result = client.infer(
        "echo",
        inputs,
        outputs=[httpclient.InferRequestedOutput("c", binary_data=False), httpclient.InferRequestedOutput("a")],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["c", "a"]
    assert result.as_numpy("b") is None


def test_infer_versioned_model(client: httpclient.InferenceServerClient) -> None:
    result = client.infer("echo-v", [_input("INT8", sample("INT8"), True)], model_version="7")
    assert result.get_response()["model_version"] == "7"
    with pytest.raises(InferenceServerException) as info:
        client.infer("echo-v", [_input("INT8", sample("INT8"), True)], model_version="8")
    assert info.value.status() == "404"


def test_unknown_requested_output_is_a_400(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("echo", [_input("FP32", sample("FP32"), True)], outputs=[httpclient.InferRequestedOutput("nope")])
    assert info.value.status() == "400"
    assert "nope" in info.value.message()


def test_empty_and_scalar_tensors(client: httpclient.InferenceServerClient) -> None:
    empty = np.zeros((0, 4), dtype=np.float32)
    result = client.infer("echo", [_input("FP32", empty, True)])
    assert result.as_numpy("x").shape == (0, 4)
    one = np.array([[3]], dtype=np.int32)
    result = client.infer("echo", [_input("INT32", one, False)], outputs=[httpclient.InferRequestedOutput("x", False)])
    np.testing.assert_array_equal(result.as_numpy("x"), one)


# --------------------------------------------------------------------------- repository


def test_repository_index_load_and_unload(client: httpclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    states = {entry["name"]: entry["state"] for entry in index}
    assert states == {"echo": "READY", "echo-v": "READY", "cycle": "READY"}
    client.unload_model("cycle")
    assert not client.is_model_ready("cycle")
    assert {e["name"]: e["state"] for e in client.get_model_repository_index()}["cycle"] == "UNAVAILABLE"
    with pytest.raises(InferenceServerException) as info:
        client.infer("cycle", [_input("FP32", sample("FP32"), True)])
    assert info.value.status() == "503"
    client.load_model("cycle")
    assert client.is_model_ready("cycle")
    result = client.infer("cycle", [_input("FP32", sample("FP32"), True)])
    np.testing.assert_array_equal(result.as_numpy("x"), sample("FP32"))
    with pytest.raises(InferenceServerException) as info:
        client.load_model("nope")
    assert info.value.status() == "404"


# --------------------------------------------------------------------------- malformed binary requests


def _raw(server: ServerProcess, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/v2/models/echo/infer", body=body, headers=headers)
        resp = conn.getresponse()
        assert resp.getheader("Content-Type", "").startswith("application/json")
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _binary_request(datatype: str, shape: list[int], size: int, tail: bytes) -> tuple[bytes, int]:
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}]}
    ).encode()
    return header + tail, len(header)


@pytest.mark.parametrize(
    ("request_args", "header_delta"),
    [
        (("FP32", [2], 8, b"\0" * 8), 1),  # Inference-Header-Content-Length past the body
        (("FP32", [2], 8, b"\0" * 8), 1000),
        (("FP32", [3], 8, b"\0" * 8), 0),  # size does not match the shape
        (("INT64", [2, 2], 16, b"\0" * 16), 0),
        (("FP64", [1], 4, b"\0" * 4), 0),
        (("INT32", [2], 8, b"\0" * 4), 0),  # size runs past the body
        (("UINT8", [2], 2, b"\0" * 3), 0),  # extra bytes after the tensors
        (("BYTES", [2], 9, b"\x01\0\0\0a\x03\0\0\0"), 0),  # element runs past its size
        (("BYTES", [1], 4, b"\x05\0\0\0"), 0),
        (("BOOL", [2], 2, b"\x00\x07"), 0),
    ],
)
def test_malformed_binary_requests_are_400_json(
    server: ServerProcess,
    client: httpclient.InferenceServerClient,
    request_args: tuple[str, list[int], int, bytes],
    header_delta: int,
) -> None:
    body, length = _binary_request(*request_args)
    headers = {
        "Inference-Header-Content-Length": str(length + header_delta),
        "Content-Type": "application/octet-stream",
    }
    status, doc = _raw(server, body, headers)
    assert status == 400
    assert list(doc) == ["error"] and isinstance(doc["error"], str) and doc["error"]
    # The server keeps serving binary requests.
    result = client.infer("echo", [_input("FP32", sample("FP32"), True)])
    np.testing.assert_array_equal(result.as_numpy("x"), sample("FP32"))


def test_binary_request_sent_raw_is_answered_in_binary(server: ServerProcess) -> None:
    header = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}],
            "outputs": [{"name": "x", "parameters": {"binary_data": True}}],
        }
    ).encode()
    payload = np.array([1.5, -2.0], dtype="<f4").tobytes()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/v2/models/echo/infer",
            body=header + payload,
            headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        )
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200
        length = int(resp.getheader("Inference-Header-Content-Length", "-1"))
    finally:
        conn.close()
    doc = json.loads(body[:length])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert body[length:] == payload
    assert len(body) == length + 8


def test_pure_json_body_is_not_mistaken_for_binary(server: ServerProcess) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}).encode()
    status, doc = _raw(server, body, {"Content-Type": "application/json"})
    assert status == 200 and doc["outputs"][0]["data"] == [1.0]
