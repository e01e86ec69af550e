"""The V2 gRPC endpoint, through Triton's own gRPC clients (``tritonclient.grpc``, sync and asyncio).

Real servers on 127.0.0.1, real third-party clients and generated stubs: every
datatype through raw and through typed contents, the same outputs as REST, every
status code, deadlines and cancellation proven with call counters, the
repository RPCs, the standard health service, 200 concurrent calls and a drain
on SIGTERM. KServe's client runs in its own process: see test_grpc_kserve.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import metric, toy_model
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from runtime_core.testing import ServerProcess, wait_until, write_model

pytestmark = pytest.mark.e2e  # every test here starts real server processes

NUMERIC = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-1.5, 0.25, 3.0e38]], dtype=np.float32),
    "FP64": np.array([[-1.5, 0.25, 1.0e308]], dtype=np.float64),
}
TEXT = np.array([[b"", "h\u00e9llo".encode(), b"x" * 40]], dtype=np.object_)
SAMPLES = {**NUMERIC, "BYTES": np.array([[b"", b"\x00\xff raw", "h\u00e9llo".encode()]], dtype=np.object_)}
# The typed contents field each datatype travels in (FP16 widened to fp32, as Triton's clients do).
TYPED = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP16": "fp32_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# What a client error message must never show.
LEAKS = re.compile(r"Traceback|File \"|/tmp/|/work/|site-packages|Error\b|Exception\b")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("grpc-repo")
    write_model(
        root / "echo",
        name="echo",
        runtime="echo",
        platform="echo-platform",
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        outputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
    )
    write_model(root / "echo-v", name="echo-v", runtime="echo", parameters={"version": "7"})
    proc = ServerProcess(root, workers=1)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(url=server.grpc_url)
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """Triton's generated stub, for requests the high-level client cannot build (typed contents)."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def tensor(name: str, array: np.ndarray[Any, Any], datatype: str) -> grpcclient.InferInput:
    item = grpcclient.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def typed_request(model: str, datatype: str, array: np.ndarray[Any, Any]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    item = request.inputs.add(name="x", datatype=datatype, shape=list(array.shape))
    values = array.reshape(-1).tolist()
    getattr(item.contents, TYPED[datatype]).extend(values)
    return request


def raw_output(reply: service_pb2.ModelInferResponse, index: int) -> Any:
    """Decode one raw output with the client library's own helper."""
    return grpcclient.InferResult(reply).as_numpy(reply.outputs[index].name)


def status_of(call: Callable[[], Any]) -> tuple[str, str]:
    """``(status name, message)`` of a call that must fail."""
    with pytest.raises(InferenceServerException) as info:
        call()
    status = str(info.value.status()).removeprefix("StatusCode.")
    message = info.value.message() or ""
    assert not LEAKS.search(message), message
    return status, message


def rpc_error(call: Callable[[], Any]) -> tuple[str, str]:
    """``(status name, details)`` of a raw-stub call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    message = error.details() or ""
    assert not LEAKS.search(message), message
    return error.code().name, message


# --------------------------------------------------------------------------- health and metadata


def test_health_and_metadata_rpcs(server: ServerProcess, client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("echo") and client.is_model_ready("echo-v", "7")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "runtime-core" and "model_repository" in meta["extensions"]
    model = client.get_model_metadata("echo", as_json=True)
    assert model["platform"] == "echo-platform"
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "3"]}]
    rest = server.get("/v2/models/echo")[1]
    assert [int(d) for d in model["inputs"][0]["shape"]] == rest["inputs"][0]["shape"]
    assert client.get_model_metadata("echo-v", "7", as_json=True)["versions"] == ["7"]
    assert status_of(lambda: client.is_model_ready("nope"))[0] == "NOT_FOUND"
    assert status_of(lambda: client.get_model_metadata("nope"))[0] == "NOT_FOUND"
    assert status_of(lambda: client.get_model_metadata("echo-v", "8"))[0] == "NOT_FOUND"


def test_the_standard_health_service_answers_probes(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- tensors


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_every_datatype_round_trips_raw(client: grpcclient.InferenceServerClient, datatype: str) -> None:
    array = SAMPLES[datatype]
    result = client.infer("echo", [tensor("x", array, datatype)])
    out = result.get_output("x")
    assert out.datatype == datatype and list(out.shape) == list(array.shape)
    got = result.as_numpy("x")
    assert got.dtype == array.dtype and np.array_equal(got, array)


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_every_datatype_round_trips_typed(stub: service_pb2_grpc.GRPCInferenceServiceStub, datatype: str) -> None:
    array = SAMPLES[datatype]
    reply = stub.ModelInfer(typed_request("echo", datatype, array), timeout=30)
    assert reply.outputs[0].datatype == datatype and list(reply.outputs[0].shape) == list(array.shape)
    got = raw_output(reply, 0)
    assert np.array_equal(got, array)


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_rest_and_grpc_give_identical_outputs(
    server: ServerProcess, client: grpcclient.InferenceServerClient, datatype: str
) -> None:
    array = TEXT if datatype == "BYTES" else NUMERIC[datatype]
    outputs: list[np.ndarray[Any, Any]] = []
    rest = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30.0)
    try:
        for binary in (False, True):
            item = httpclient.InferInput("x", list(array.shape), datatype)
            item.set_data_from_numpy(array, binary_data=binary)
            wanted = [httpclient.InferRequestedOutput("x", binary_data=binary)]
            outputs.append(rest.infer("echo", [item], outputs=wanted, request_id="r-1").as_numpy("x"))
    finally:
        rest.close()
    result = client.infer("echo", [tensor("x", array, datatype)], request_id="r-1")
    assert result.get_response().id == "r-1"
    outputs.append(result.as_numpy("x"))
    if datatype == "BYTES":  # tritonclient.http hands JSON strings back as str
        outputs = [np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(o) for o in outputs]
    for out in outputs:
        assert out.dtype == outputs[-1].dtype and np.array_equal(out, outputs[-1]), datatype


def test_requested_outputs_id_and_parameters_pass_through(
    client: grpcclient.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    a, b = np.array([[1.0, 2.0]], dtype=np.float32), np.array([b"q", b"r"], dtype=np.object_)
    result = client.infer(
        "echo",
        [tensor("a", a, "FP32"), tensor("b", b, "BYTES")],
        outputs=[grpcclient.InferRequestedOutput("b")],
        request_id="abc",
        parameters={"content_type": "np"},
    )
    reply = result.get_response()
    assert [o.name for o in reply.outputs] == ["b"] and reply.id == "abc" and reply.model_name == "echo"
    assert list(result.as_numpy("b")) == [b"q", b"r"]
    # A requested output's content type applies and is echoed in its parameters, as over REST.
    request = typed_request("echo", "BYTES", np.array([b"hi"], dtype=np.object_))
    wanted = request.outputs.add(name="x")
    wanted.parameters["content_type"].string_param = "base64"
    reply = stub.ModelInfer(request, timeout=30)
    assert reply.outputs[0].parameters["content_type"].string_param == "base64"
    assert raw_output(reply, 0).tolist() == [b"aGk="]
    # Triton's timeout parameter (microseconds) reaches the worker as over REST.
    request = typed_request("echo", "FP64", np.array([1.0]))
    request.parameters["timeout"].int64_param = 10_000_000
    assert stub.ModelInfer(request, timeout=30).outputs[0].name == "x"
    status, message = status_of(
        lambda: client.infer("echo", [tensor("a", a, "FP32")], outputs=[grpcclient.InferRequestedOutput("zz")])
    )
    assert status == "INVALID_ARGUMENT" and "'zz'" in message


def test_bad_tensors_are_invalid_argument_and_the_next_request_succeeds(
    server: ServerProcess, client: grpcclient.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    short = service_pb2.ModelInferRequest(model_name="echo", raw_input_contents=[b"\x00" * 7])
    short.inputs.add(name="x", datatype="FP32", shape=[2])
    assert rpc_error(lambda: stub.ModelInfer(short, timeout=30)) == (
        "INVALID_ARGUMENT",
        "input 'x': shape [2] of FP32 needs 8 bytes, raw contents have 7",
    )
    cut = service_pb2.ModelInferRequest(model_name="echo", raw_input_contents=[b"\x05\x00\x00\x00ab"])
    cut.inputs.add(name="x", datatype="BYTES", shape=[1])
    code, message = rpc_error(lambda: stub.ModelInfer(cut, timeout=30))
    assert code == "INVALID_ARGUMENT" and "BYTES element" in message
    odd = service_pb2.ModelInferRequest(model_name="echo")
    odd.inputs.add(name="x", datatype="FP99", shape=[1])
    code, message = rpc_error(lambda: stub.ModelInfer(odd, timeout=30))
    assert code == "INVALID_ARGUMENT" and "unknown datatype 'FP99'" in message
    few = typed_request("echo", "INT8", np.array([1, 2, 3]))
    few.inputs[0].shape[:] = [4]
    code, message = rpc_error(lambda: stub.ModelInfer(few, timeout=30))
    assert code == "INVALID_ARGUMENT" and "needs 4 elements" in message
    wide = typed_request("echo", "INT8", np.array([1, 300]))
    code, message = rpc_error(lambda: stub.ModelInfer(wide, timeout=30))
    assert code == "INVALID_ARGUMENT" and "out of range for INT8" in message
    with grpc.insecure_channel(server.grpc_url) as channel:
        garbage = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        code, message = rpc_error(lambda: garbage(b"\xff\xff\xff", timeout=30))
    assert code == "INVALID_ARGUMENT" and "not a valid ModelInferRequest" in message
    assert np.array_equal(client.infer("echo", [tensor("x", NUMERIC["INT8"], "INT8")]).as_numpy("x"), NUMERIC["INT8"])


# --------------------------------------------------------------------------- errors


def test_every_error_maps_to_its_status_code(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "toy", parallel_workers=1)
    toy_model(tmp_path, "broken", parameters={"extra": {"load_fails": True}})
    toy_model(tmp_path, "narrow", parallel_workers=1, max_queue_size=1, parameters={"extra": {"sleep": 2.0}})
    server = serve(tmp_path, env={"RUNTIME_CORE_MAX_REQUEST_SIZE": "4096", "RUNTIME_CORE_PIPELINE_DEPTH": "1"})
    client = grpcclient.InferenceServerClient(url=server.grpc_url)
    x = tensor("x", np.array([1.0, 2.0]), "FP64")
    try:
        assert status_of(lambda: client.infer("nope", [x]))[0] == "NOT_FOUND"
        status, message = status_of(lambda: client.infer("broken", [x]))
        assert status == "UNAVAILABLE" and "'broken' is not ready" in message
        status, message = status_of(lambda: client.infer("toy", [x], parameters={"fail": True}))
        assert status == "INTERNAL" and "failed to run the request" in message
        assert status_of(lambda: client.infer("toy", [x], parameters={"invalid": True}))[0] == "INVALID_ARGUMENT"
        status, message = status_of(lambda: client.infer("toy", [x], parameters={"crash": True}))
        assert status == "UNAVAILABLE", message
        wait_until(lambda: client.infer("toy", [x]), 60, "a replacement worker")
        big = tensor("x", np.zeros(1000), "FP64")
        assert status_of(lambda: client.infer("toy", [big]))[0] == "RESOURCE_EXHAUSTED"
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client.infer, "narrow", [x]) for _ in range(6)]
            concurrent.futures.wait(futures)
        refused = [f.exception() for f in futures if f.exception() is not None]
        assert refused and len(refused) < 6  # one runs, one waits, the rest are refused at once
        for error in refused:
            assert isinstance(error, InferenceServerException)
            assert str(error.status()) == "StatusCode.RESOURCE_EXHAUSTED" and "queue is full" in error.message()
        assert client.infer("toy", [x]).as_numpy("y").tolist() == [1.0, 2.0]
    finally:
        client.close()


def test_deadlines_expire_in_the_queue_and_cancelled_calls_are_dropped(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "slow", parallel_workers=1)
    server = serve(tmp_path, env={"RUNTIME_CORE_PIPELINE_DEPTH": "1"})
    x = tensor("x", np.array([1.0]), "FP64")

    def calls() -> int:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            return int(client.infer("slow", [x]).as_numpy("calls")[0])
        finally:
            client.close()

    async def scenario() -> None:
        client = aioclient.InferenceServerClient(server.grpc_url)
        try:
            # Holds the only worker long enough for the calls below to wait in the queue.
            busy = asyncio.ensure_future(client.infer("slow", [x], parameters={"sleep": 4.0}))
            await asyncio.to_thread(wait_until, lambda: metric(server, "inflight_requests", "slow") == 1, 30, "busy")
            # Queued behind the busy call; its deadline passes there.
            with pytest.raises(InferenceServerException) as info:
                await client.infer("slow", [x], client_timeout=0.2)
            assert str(info.value.status()) == "StatusCode.DEADLINE_EXCEEDED"
            # Queued, then cancelled by the client.
            doomed = asyncio.ensure_future(client.infer("slow", [x]))
            await asyncio.to_thread(wait_until, lambda: metric(server, "queue_depth", "slow") == 1, 30, "queued")
            doomed.cancel()
            await asyncio.to_thread(wait_until, lambda: metric(server, "queue_depth", "slow") == 0, 30, "dropped")
            await busy
        finally:
            await client.close()

    asyncio.run(scenario())
    # The cancelled call is counted as such (the expired one too, when grpcio's cancel at its
    # deadline comes before the scheduler's own check).
    assert metric(server, "cancelled_requests", "slow") >= 1
    assert calls() == 2  # the busy call and this one: neither queued call reached the runtime


# --------------------------------------------------------------------------- repository


def test_repository_rpcs(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "a", parallel_workers=1)
    server = serve(tmp_path)
    client = grpcclient.InferenceServerClient(url=server.grpc_url)
    try:
        index = client.get_model_repository_index(as_json=True)["models"]
        assert [(m["name"], m["state"]) for m in index] == [("a", "READY")]
        client.unload_model("a")
        assert not client.is_model_ready("a")
        assert client.get_model_repository_index(as_json=True)["models"][0]["state"] == "UNAVAILABLE"
        toy_model(tmp_path, "b", parallel_workers=1)
        client.load_model("b")
        client.load_model("a")
        assert client.is_model_ready("a") and client.is_model_ready("b")
        assert status_of(lambda: client.load_model("nope"))[0] == "NOT_FOUND"
    finally:
        client.close()


def test_repository_rpcs_need_the_token_when_one_is_set(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "a", parallel_workers=1)
    server = serve(tmp_path, env={"RUNTIME_CORE_REPOSITORY_TOKEN": "s3cret"})
    client = grpcclient.InferenceServerClient(url=server.grpc_url)
    try:
        for call in (client.get_model_repository_index, lambda: client.unload_model("a")):
            status, message = status_of(call)
            assert status == "UNAUTHENTICATED" and "Bearer" in message
        wrong = {"authorization": "Bearer nope"}
        assert status_of(lambda: client.load_model("a", headers=wrong))[0] == "UNAUTHENTICATED"
        good = {"authorization": "Bearer s3cret"}
        assert client.get_model_repository_index(headers=good, as_json=True)["models"][0]["name"] == "a"
        client.unload_model("a", headers=good)
        assert not client.is_model_ready("a")
    finally:
        client.close()


def test_repository_rpcs_are_refused_when_the_api_is_off(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "a", parallel_workers=1)
    server = serve(tmp_path, env={"RUNTIME_CORE_REPOSITORY_API": "false"})
    client = grpcclient.InferenceServerClient(url=server.grpc_url)
    try:
        status, message = status_of(lambda: client.unload_model("a"))
        assert status == "PERMISSION_DENIED" and "repository_api" in message
        assert client.is_model_ready("a")
    finally:
        client.close()


# --------------------------------------------------------------------------- load and lifecycle


def test_200_concurrent_calls_through_the_asyncio_client(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "toy", parallel_workers=2)
    server = serve(tmp_path)

    async def scenario() -> list[list[float]]:
        client = aioclient.InferenceServerClient(server.grpc_url)
        try:
            calls = [
                client.infer("toy", [tensor("x", np.array([float(i), -1.0]), "FP64")], request_id=str(i))
                for i in range(200)
            ]
            results = await asyncio.gather(*calls)
        finally:
            await client.close()
        assert [r.get_response().id for r in results] == [str(i) for i in range(200)]
        return [r.as_numpy("y").tolist() for r in results]

    assert asyncio.run(scenario()) == [[float(i), -1.0] for i in range(200)]


def test_sigterm_lets_grpc_calls_in_flight_finish(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "slow", parallel_workers=1, parameters={"extra": {"sleep": 1.0}})
    server = serve(tmp_path, env={"RUNTIME_CORE_PIPELINE_DEPTH": "1"})
    x = tensor("x", np.array([3.0]), "FP64")
    client = grpcclient.InferenceServerClient(url=server.grpc_url)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client.infer, "slow", [x]) for _ in range(4)]
            # All four inside the server (a call that arrives after SIGTERM is refused, as it
            # should be), at least two of them queued behind a running one.
            wait_until(
                lambda: (
                    (queued := metric(server, "queue_depth", "slow")) >= 2
                    and queued + metric(server, "inflight_requests", "slow") == 4
                ),
                30,
                "all four calls in the server, some queued behind a running one",
            )
            server.proc.send_signal(signal.SIGTERM)
            results = [f.result(timeout=60) for f in futures]
        assert [r.as_numpy("y").tolist() for r in results] == [[3.0]] * 4
        assert server.stop() == 0
        assert "runtime-core: stopped" in server.output()
    finally:
        client.close()


def test_health_is_not_serving_until_the_models_are_loaded(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "late", parallel_workers=1, parameters={"extra": {"load_sleep": 5.0}})
    server = serve(tmp_path, wait=False)

    def check() -> Any:
        with grpc.insecure_channel(server.grpc_url) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status

    assert wait_until(check, 60, "the gRPC port") == health_pb2.HealthCheckResponse.NOT_SERVING
    client = grpcclient.InferenceServerClient(url=server.grpc_url)
    try:
        assert client.is_server_live() and not client.is_server_ready()
        server.wait_ready()
        assert check() == health_pb2.HealthCheckResponse.SERVING and client.is_server_ready()
    finally:
        client.close()


def test_grpc_can_be_switched_off(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "a", parallel_workers=1)
    server = serve(tmp_path, args=["--no-grpc"])
    assert "grpc://" not in server.output()
    assert server.get("/v2/models/a/ready")[0] == 200
    with grpc.insecure_channel(server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
