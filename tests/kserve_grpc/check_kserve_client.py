"""KServe's ``InferenceGRPCClient`` against a real runtime-core server.

Run in its own pytest process, in KServe's own environment, by tests/test_grpc_kserve.py
(the file name keeps it out of the main collection), which starts the server (an ``echo``
model) and names its gRPC address in ``RC_GRPC_TARGET``: KServe's generated protobuf module
registers the same ``inference.*`` symbols as tritonclient's, and KServe's SDK cannot be
installed beside MLServer's. This file imports nothing of runtime-core.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import grpc
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.infer_type import RequestedOutput

SAMPLES = {
    "BOOL": np.array([[True, False]]),
    "UINT8": np.array([[0, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[-1.5, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-1.5, 3.0e38]], dtype=np.float32),
    "FP64": np.array([[-1.5, 1.0e308]], dtype=np.float64),
    "BYTES": np.array([[b"\x00\xff", "h\u00e9llo".encode()]], dtype=np.object_),
}


@pytest.fixture(scope="module")
def server() -> str:
    """The gRPC address of the server under test (started by tests/test_grpc_kserve.py)."""
    return os.environ["RC_GRPC_TARGET"]


def run(server: str, call: Any) -> Any:
    async def scenario() -> Any:
        async with InferenceGRPCClient(server) as client:
            return await call(client)

    return asyncio.run(scenario())


def test_health_rpcs(server: str) -> None:
    async def call(client: InferenceGRPCClient) -> tuple[bool, bool, bool]:
        return await client.is_server_live(), await client.is_server_ready(), await client.is_model_ready("echo")

    assert run(server, call) == (True, True, True)


# KServe's client sends FP16 only raw: the protocol has no typed field for it.
CASES = [(datatype, True) for datatype in SAMPLES] + [(datatype, False) for datatype in SAMPLES if datatype != "FP16"]


@pytest.mark.parametrize(("datatype", "raw"), CASES, ids=[f"{d}-{'raw' if r else 'typed'}" for d, r in CASES])
def test_every_datatype_round_trips(server: str, datatype: str, raw: bool) -> None:
    array = SAMPLES[datatype]
    item = InferInput("x", list(array.shape), datatype)
    if raw:
        item.set_data_from_numpy(array, binary_data=True)
    else:
        item = InferInput("x", list(array.shape), datatype, data=array.reshape(-1).tolist())
    request = InferRequest("echo", [item], request_id="k-1", request_outputs=[RequestedOutput("x")])

    async def call(client: InferenceGRPCClient) -> Any:
        return await client.infer(request)

    response = run(server, call)
    assert response.id == "k-1" and response.model_name == "echo"
    (out,) = response.outputs
    assert out.datatype == datatype and list(out.shape) == list(array.shape)
    got = out.as_numpy()
    assert np.array_equal(got.reshape(array.shape), array)


def test_errors_carry_status_codes(server: str) -> None:
    item = InferInput("x", [1], "FP32")
    item.set_data_from_numpy(np.array([1.0], dtype=np.float32))

    async def call(client: InferenceGRPCClient) -> Any:
        return await client.infer(InferRequest("nope", [item]))

    with pytest.raises(grpc.RpcError) as info:
        run(server, call)
    error: Any = info.value
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == "Request for unknown model: 'nope' is not found"
