"""What Triton's clients touch beyond inference, through tritonclient itself (http and grpc):
the model configuration, Triton's unknown-model wording, shared memory refused clearly, and
client-supplied names that errors quote (bounded, however long they are).

A real server on 127.0.0.1 with real models; each bad request is followed by a good one that
must succeed on the same server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from runtime_core.testing import ServerProcess, write_model

pytestmark = pytest.mark.e2e  # every test here starts real server processes

MiB = 1024 * 1024
#: An error quoting a client's name says at most this much (the name is cut to 120 characters).
BOUNDED = 400


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("triton-repo")
    write_model(
        root / "echo",
        name="echo",
        runtime="echo",
        platform="echo-platform",
        parallel_workers=2,
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 3]}, {"name": "s", "datatype": "BYTES", "shape": [-1]}],
        outputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
    )
    write_model(
        root / "batched",
        name="batched",
        runtime="echo",
        max_batch_size=8,
        max_batch_time=0.002,
        inputs=[{"name": "x", "datatype": "INT64", "shape": [-1, 4]}],
        outputs=[{"name": "x", "datatype": "INT64", "shape": [-1, 4]}],
    )
    write_model(root / "echo-v", name="echo-v", runtime="echo", parameters={"version": "7"})
    proc = ServerProcess(root, workers=1)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(url=server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    # Room for a 1 MiB model name in the request (grpcio's default send limit is larger anyway).
    with grpc.insecure_channel(server.grpc_url, options=[("grpc.max_send_message_length", 8 * MiB)]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def failure(call: Callable[[], Any]) -> tuple[str, str]:
    """``(status, message)`` of a tritonclient call that must fail; never a traceback."""
    with pytest.raises(InferenceServerException) as info:
        call()
    message = info.value.message() or ""
    assert "Traceback" not in message and 'File "' not in message, message
    return str(info.value.status()).removeprefix("StatusCode."), message


def rpc_failure(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    return error.code(), error.details() or ""


def x_input(module: Any, values: np.ndarray[Any, Any]) -> Any:
    item = module.InferInput("x", list(values.shape), "FP32")
    item.set_data_from_numpy(values)
    return item


def good_inference(client: Any, module: Any) -> None:
    """The request every failure is followed by: it must succeed on the same server."""
    values = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    result = client.infer("echo", [x_input(module, values)])
    np.testing.assert_array_equal(result.as_numpy("x"), values)


# --------------------------------------------------------------------------- model configuration


def test_tritonclient_reads_the_model_config_over_http(http: httpclient.InferenceServerClient) -> None:
    config = http.get_model_config("echo")
    assert config["name"] == "echo" and config["platform"] == "echo-platform" and config["backend"] == "echo"
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("x", "TYPE_FP32", [-1, 3]),
        ("s", "TYPE_STRING", [-1]),
    ]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [("x", "TYPE_FP32", [-1, 3])]
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_CPU", 2)]

    batched = http.get_model_config("batched")
    # Triton leaves the batch dimension out of dims when the model batches.
    assert batched["max_batch_size"] == 8 and batched["input"][0]["dims"] == [4]
    assert batched["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert [(g["kind"], g["count"]) for g in batched["instance_group"]] == [("KIND_CPU", 1)]

    assert http.get_model_config("echo-v", "7")["name"] == "echo-v"


def test_tritonclient_reads_the_model_config_over_grpc(grpc_client: grpcclient.InferenceServerClient) -> None:
    # The reply is parsed by Triton's own generated ModelConfigResponse: the wire format is Triton's.
    config = grpc_client.get_model_config("echo").config
    assert (config.name, config.platform, config.backend, config.max_batch_size) == ("echo", "echo-platform", "echo", 0)
    assert config.WhichOneof("scheduling_choice") is None
    data_type = type(config.input[0]).DESCRIPTOR.fields_by_name["data_type"].enum_type
    assert [(t.name, data_type.values_by_number[t.data_type].name, list(t.dims)) for t in config.input] == [
        ("x", "TYPE_FP32", [-1, 3]),
        ("s", "TYPE_STRING", [-1]),
    ]
    (group,) = config.instance_group
    assert (group.kind, group.count) == (group.KIND_CPU, 2)

    batched = grpc_client.get_model_config("batched", as_json=True)["config"]
    assert batched["max_batch_size"] == 8 and batched["input"][0]["data_type"] == "TYPE_INT64"
    assert int(batched["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    assert grpc_client.get_model_config("echo-v", "7").config.name == "echo-v"


def test_the_config_of_an_unknown_model_or_version_is_not_found(
    server: ServerProcess, http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    status, doc = server.get("/v2/models/nope/config")
    assert status == 404 and doc == {"error": "Request for unknown model: 'nope' is not found"}
    status, doc = server.get("/v2/models/echo-v/versions/9/config")
    assert status == 404 and doc == {"error": "Request for unknown model: 'echo-v' version '9' is not found"}
    status, message = failure(lambda: grpc_client.get_model_config("nope"))
    assert status == "NOT_FOUND" and "Request for unknown model" in message
    good_inference(http, httpclient)


# --------------------------------------------------------------------------- Triton's wording


def test_an_unknown_model_is_answered_in_tritons_words(
    server: ServerProcess, http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    values = np.ones((1, 3), dtype=np.float32)
    for call in (
        lambda: http.get_model_metadata("nope"),
        lambda: http.infer("nope", [x_input(httpclient, values)]),
        lambda: grpc_client.get_model_metadata("nope"),
        lambda: grpc_client.infer("nope", [x_input(grpcclient, values)]),
    ):
        status, message = failure(call)
        assert status in ("404", "NOT_FOUND"), (status, message)
        assert message.startswith("Request for unknown model: 'nope'"), message
    status, doc = server.post_json("/v2/models/nope/infer", {"inputs": []})
    assert status == 404 and "Request for unknown model" in doc["error"]
    good_inference(grpc_client, grpcclient)


# --------------------------------------------------------------------------- shared memory


def test_the_shared_memory_calls_are_refused_clearly(
    server: ServerProcess, http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    for client, expected in ((http, "400"), (grpc_client, "UNIMPLEMENTED")):
        for call in (
            client.get_system_shared_memory_status,
            lambda client=client: client.register_system_shared_memory("region", "/rc-key", 64),
            client.unregister_system_shared_memory,
            client.get_cuda_shared_memory_status,
            lambda client=client: client.register_cuda_shared_memory("region", b"\x00" * 64, 0, 64),
            lambda client=client: client.unregister_cuda_shared_memory("region"),
        ):
            status, message = failure(call)
            assert (status, message) == (
                expected,
                "shared memory is not supported by this server; send the tensors in the request",
            )
    assert "Traceback" not in server.output()  # an answer, not an unexpected error
    good_inference(http, httpclient)


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_a_request_naming_shared_memory_is_refused_clearly(
    module: Any, http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    client = http if module is httpclient else grpc_client
    expected = "400" if module is httpclient else "INVALID_ARGUMENT"
    item = module.InferInput("x", [1, 3], "FP32")
    item.set_shared_memory("region", 12)
    status, message = failure(lambda: client.infer("echo", [item]))
    assert status == expected and "input 'x'" in message and "shared memory is not supported" in message

    wanted = module.InferRequestedOutput("x")
    wanted.set_shared_memory("region", 12)
    values = np.ones((1, 3), dtype=np.float32)
    status, message = failure(lambda: client.infer("echo", [x_input(module, values)], outputs=[wanted]))
    assert status == expected and "output 'x'" in message and "shared memory is not supported" in message
    good_inference(client, module)


# --------------------------------------------------------------------------- bounded names


def test_a_huge_model_name_is_not_found_with_a_bounded_message(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, server: ServerProcess, http: httpclient.InferenceServerClient
) -> None:
    name = "m" * MiB
    code, details = rpc_failure(lambda: stub.ModelInfer(service_pb2.ModelInferRequest(model_name=name)))
    assert code is grpc.StatusCode.NOT_FOUND and len(details) < BOUNDED and "Request for unknown model" in details
    code, details = rpc_failure(lambda: stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=name)))
    assert code is grpc.StatusCode.NOT_FOUND and len(details) < BOUNDED
    code, details = rpc_failure(lambda: stub.ModelReady(service_pb2.ModelReadyRequest(name="echo", version="7" * MiB)))
    assert code is grpc.StatusCode.NOT_FOUND and len(details) < BOUNDED

    status, body, _ = server.request("GET", "/v2/models/" + "m" * 6000)
    assert status == 404 and len(json.loads(body)["error"]) < BOUNDED
    good_inference(http, httpclient)


def test_huge_input_and_output_names_are_quoted_bounded(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    server: ServerProcess,
    grpc_client: grpcclient.InferenceServerClient,
) -> None:
    name = "n" * MiB
    request = service_pb2.ModelInferRequest(model_name="echo")
    for _ in range(2):  # the same name twice: an error that quotes it
        request.inputs.add(name=name, datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    code, details = rpc_failure(lambda: stub.ModelInfer(request))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "appears twice" in details and len(details) < BOUNDED

    request = service_pb2.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="BOGUS" * 100_000, shape=[1])
    code, details = rpc_failure(lambda: stub.ModelInfer(request))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "unknown datatype" in details and len(details) < BOUNDED

    long = "o" * 200_000
    doc = {
        "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
        "outputs": [{"name": long, "parameters": {"content_type": long}}],
    }
    status, answer = server.post_json("/v2/models/echo/infer", doc)
    assert status == 400 and len(answer["error"]) < BOUNDED
    good_inference(grpc_client, grpcclient)


# --------------------------------------------------------------------------- contents and raw contents


def test_an_input_with_both_contents_and_raw_contents_is_invalid(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, grpc_client: grpcclient.InferenceServerClient
) -> None:
    request = service_pb2.ModelInferRequest(model_name="echo")
    item = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    item.contents.fp32_contents.extend([9.0, 9.0, 9.0])
    request.raw_input_contents.append(np.array([1, 2, 3], dtype=np.float32).tobytes())
    code, details = rpc_failure(lambda: stub.ModelInfer(request))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details == "input 'x': has both contents and raw_input_contents; send one of them"
    good_inference(grpc_client, grpcclient)
