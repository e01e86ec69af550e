"""MLServer's own MLModel runtimes served by runtime-core: real server processes, real
sockets, the user's module beside model-settings.json, mlserver-lightgbm trained here, and
MLServer itself (in-process) as the reference for what a response must be."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from mlserver_support import lightgbm_model, mlserver_model, mlserver_reference, process_names

from runtime_core.testing import ServerProcess, wait_until

pytestmark = pytest.mark.e2e  # every test here starts real server processes

SUM_BODY = {"id": "req-1", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
HELLO_BODY = {
    "id": "req-2",
    "inputs": [{"name": "q", "shape": [2], "datatype": "BYTES", "data": ['{"name": "ann"}', '{"name": "bob"}']}],
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One repository with every kind of model the module's tests serve."""
    root = tmp_path_factory.mktemp("mlserver-models")
    greeting = {"extra": {"greeting": "hi"}}
    mlserver_model(root, "hello", "jsonmodels", "jsonmodels.JsonHelloWorldModel", parameters=greeting)
    mlserver_model(root, "summer", "summodel", "summodel.SumModel")
    mlserver_model(root, "broken", "brokenmodels", "brokenmodels.FailsToLoad")
    mlserver_model(root, "missing", "jsonmodels", "jsonmodels.NoSuchModel")
    mlserver_model(root, "streamer", "brokenmodels", "brokenmodels.StreamsOnly")
    tarball = {"environment_tarball": "./environment.tar.gz"}
    mlserver_model(root, "packed", "summodel", "summodel.SumModel", parameters=tarball)
    lightgbm_model(root, "gbm")
    # Co-hosting: the models above share the mlserver runtime's host process; this one has a
    # dedicated worker of its own (forked from that host), as a busy model gets.
    mlserver_model(root, "hello-own", "jsonmodels", "jsonmodels.JsonHelloWorldModel", min_workers=1)
    # MLServer's adaptive batching, deterministic: in the main process (parallel_workers 0) the
    # model waits up to max_batch_time for max_batch_size requests.
    mlserver_model(
        root,
        "batcher",
        "batchmodel",
        "batchmodel.CountingSumModel",
        parallel_workers=0,
        max_batch_size=4,
        max_batch_time=30,
    )
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerProcess]:
    """One server for the module: one per test would cost more CPU than the tests."""
    process = ServerProcess(repository)
    yield process
    process.stop()


def post(server: ServerProcess, path: str, doc: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, body, _ = server.request(
        "POST", path, json.dumps(doc).encode(), {"Content-Type": "application/json", **(headers or {})}
    )
    return status, json.loads(body)


def index(server: ServerProcess) -> dict[str, dict[str, Any]]:
    status, rows = server.post_json("/v2/repository/index")
    assert status == 200
    return {row["name"]: row for row in rows}


def test_a_custom_mlmodel_beside_its_settings_answers_exactly_as_mlserver(
    server: ServerProcess, repository: Path
) -> None:
    for name, body in (("summer", SUM_BODY), ("hello", HELLO_BODY)):
        status, got = post(server, f"/v2/models/{name}/infer", body)
        assert status == 200, got
        assert [got] == mlserver_reference(repository / name, [(f"/v2/models/{name}/infer", body, {})])
    # The id, the response parameters and the outputs' content types come from the model.
    assert got["id"] == "req-2"
    assert got["parameters"] == {"content_type": "str", "served_by": "json-hello"}
    assert got["outputs"][0]["parameters"] == {"content_type": "str"}
    assert [json.loads(s) for s in got["outputs"][0]["data"]] == [{"reply": "hi ann"}, {"reply": "hi bob"}]


def test_a_request_without_an_id_gets_one_as_mlserver_gives(server: ServerProcess) -> None:
    body = {"inputs": SUM_BODY["inputs"]}
    first, second = post(server, "/v2/models/summer/infer", body)[1], post(server, "/v2/models/summer/infer", body)[1]
    assert len(first["id"]) == 36 and first["id"] != second["id"]  # a fresh uuid4 each time


def test_an_mlserver_lightgbm_model_trained_here_answers_as_mlserver(server: ServerProcess, repository: Path) -> None:
    _folder, rows = lightgbm_model(repository.parent / "gbm-rows", "unused")
    tensor = {"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
    body = {"id": "gbm-1", "inputs": [tensor]}
    status, got = post(server, "/v2/models/gbm/infer", body)
    assert status == 200, got
    assert [got] == mlserver_reference(repository / "gbm", [("/v2/models/gbm/infer", body, {})])
    probabilities = np.array(got["outputs"][0]["data"])
    assert probabilities.shape == (3,) and ((probabilities > 0) & (probabilities < 1)).all()


def test_a_failing_load_or_a_missing_class_makes_only_that_model_unavailable(server: ServerProcess) -> None:
    rows = index(server)
    assert rows["broken"]["state"] == "UNAVAILABLE"
    assert "the weights file is missing" in rows["broken"]["reason"]
    assert "FailsToLoad.load() failed" in rows["broken"]["reason"]
    assert rows["missing"]["state"] == "UNAVAILABLE"
    assert "jsonmodels.NoSuchModel" in rows["missing"]["reason"] and "cannot be imported" in rows["missing"]["reason"]
    assert {rows[name]["state"] for name in ("hello", "summer", "gbm")} == {"READY"}
    status, got = post(server, "/v2/models/broken/infer", SUM_BODY)
    assert status == 503 and "broken" in got["error"]
    assert post(server, "/v2/models/summer/infer", SUM_BODY)[0] == 200


def test_streaming_and_environment_tarballs_are_refused_by_name(server: ServerProcess) -> None:
    rows = index(server)
    assert rows["streamer"]["state"] == "UNAVAILABLE" and "predict_stream" in rows["streamer"]["reason"]
    assert rows["packed"]["state"] == "UNAVAILABLE" and "environment_tarball" in rows["packed"]["reason"]
    status, got = post(server, "/v2/models/summer/infer_stream", SUM_BODY)
    assert status == 400 and "predict_stream" in got["error"] and "Traceback" not in got["error"]
    assert post(server, "/v2/models/summer/infer", SUM_BODY)[0] == 200


def test_bad_requests_get_a_clear_400_and_the_next_request_succeeds(server: ServerProcess) -> None:
    status, body, _ = server.request("POST", "/v2/models/summer/infer", b'{"inputs": [', {})
    assert status == 400 and "not a valid inference request" in json.loads(body)["error"]
    status, got = post(server, "/v2/models/summer/infer", {"inputs": [{"name": "x", "shape": [1], "data": [1]}]})
    assert status == 400 and "inputs.0.datatype" in got["error"]
    assert "pydantic" not in got["error"] and "ValidationError" not in got["error"]
    status, got = post(server, "/v2/models/summer/infer", SUM_BODY)
    assert status == 200 and got["outputs"][0]["data"] == [3.0, 7.0]


def test_request_headers_reach_parameters_headers(server: ServerProcess, repository: Path) -> None:
    status, got = post(server, "/v2/models/summer/infer", SUM_BODY, {"X-Echo": "from-rest"})
    assert status == 200
    assert got["outputs"][1] == {
        "name": "echo",
        "shape": [1, 1],
        "datatype": "BYTES",
        "parameters": {"content_type": "str"},
        "data": ["from-rest"],
    }
    headers = {"X-Echo": "from-rest"}
    assert [got] == mlserver_reference(repository / "summer", [("/v2/models/summer/infer", SUM_BODY, headers)])


def test_custom_handler_endpoints_are_served_at_mlservers_paths(server: ServerProcess) -> None:
    status, before = server.get("/sum-model/stats")
    assert status == 200
    assert post(server, "/v2/models/summer/infer", SUM_BODY)[0] == 200
    status, after = server.get("/sum-model/stats?scale=10")  # runs in the process that ran the inference
    assert status == 200 and after == {"calls": (before["calls"] + 1) * 10}
    status, got = server.get("/sum-model/stats?scale=ten")
    assert status == 400 and "scale" in got["error"]
    status, got = post(server, "/sum-model/add", [1, 2, 3.5])
    assert status == 200 and got["sum"] == 6.5
    status, got = post(server, "/sum-model/add", {"not": "a list"})
    assert status == 400 and "numbers" in got["error"]
    status, got = server.get("/sum-model/nowhere")
    assert status == 404
    status, _body, _ = server.request("GET", "/sum-model/add")  # the path exists, for POST only
    assert status == 405


def test_grpc_inference_of_a_custom_mlmodel_with_tritonclient(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        x = grpcclient.InferInput("x", [2, 3], "FP32")
        x.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
        result = client.infer("summer", [x], request_id="grpc-1", headers={"x-echo": "from-grpc"})
        assert result.get_response().id == "grpc-1"
        np.testing.assert_array_equal(result.as_numpy("total"), [[3.0], [12.0]])
        assert result.as_numpy("echo").ravel().tolist() == [b"from-grpc"]
        content_types = {o.name: o.parameters["content_type"].string_param for o in result.get_response().outputs}
        assert content_types == {"total": "np", "echo": "str"}
    finally:
        client.close()


def test_models_share_the_mlserver_host_and_a_busy_one_gets_its_own_worker(server: ServerProcess) -> None:
    names = wait_until(
        lambda: (found := process_names(server.pid)) and "rc-w0:hello-own" in found and found,
        message="hello-own's dedicated worker",
    )
    assert names.count("rc-h:mlserver") == 1  # hello, summer, gbm: one process for all three
    assert not any(n.startswith("rc-w") and n.endswith((":hello", ":summer", ":gbm")) for n in names)
    for name, greeting in (("hello", "hi"), ("hello-own", "hello")):
        status, got = post(server, f"/v2/models/{name}/infer", HELLO_BODY)
        assert status == 200 and json.loads(got["outputs"][0]["data"][1]) == {"reply": f"{greeting} bob"}


def test_mlservers_batching_merges_requests_into_one_predict_and_splits_the_answers(server: ServerProcess) -> None:
    before = server.get("/batch-model/calls")[1]
    answers: dict[int, tuple[int, Any]] = {}

    def ask(n: int) -> None:
        rows = [[n, n]] * (n + 1)  # request n has n + 1 rows
        body = {"id": f"b{n}", "inputs": [{"name": "x", "shape": [n + 1, 2], "datatype": "FP32", "data": rows}]}
        answers[n] = post(server, "/v2/models/batcher/infer", body)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(4):
        status, got = answers[n]
        assert status == 200, got
        assert got["id"] == f"b{n}"
        assert got["outputs"][0]["shape"] == [n + 1, 1] and got["outputs"][0]["data"] == [2.0 * n] * (n + 1)
    after = server.get("/batch-model/calls")[1]
    assert after["calls"] == before["calls"] + 1 and after["rows"][-1] == 1 + 2 + 3 + 4
