"""Triton's statistics extension, read with Triton's own client after known traffic.

``echo`` gets sequential requests, so every count is exact and each request's parts
(queue wait, decode, predict, encode) fit inside its total time; ``rows`` (row-wise) and
``single`` (not row-wise) get sequential requests of different batch sizes, so
``inference_count`` (rows, as Triton counts them) and ``batch_stats`` are exact; ``batch``
(a row-wise toy that reports which ``predict`` call served each request, and how many rows
it had) gets concurrent requests, and its ``batch_stats`` must match the calls the
responses report; ``broken`` failed to load and still has (empty) statistics. The gRPC
``ModelStatistics`` RPC answers the same figures.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from support import output, toy_model
from tritonclient.utils import InferenceServerException

from runtime_core.testing import ServerProcess, write_model

pytestmark = pytest.mark.e2e  # every test here starts real server processes

PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, toy_site: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("stats-repo")
    write_model(root / "echo", name="echo", runtime="echo", parameters={"version": "1"})
    toy_model(root, "batch", runtime="toy-batching", max_batch_size=8, max_batch_time=0.5)
    toy_model(root, "rows", runtime="toy-batching")
    toy_model(root, "single")
    toy_model(root, "broken", parameters={"extra": {"load_fails": True}})
    path = os.environ.get("PYTHONPATH")
    proc = ServerProcess(root, workers=1, env={"PYTHONPATH": str(toy_site) + (os.pathsep + path if path else "")})
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30.0)
    yield triton
    triton.close()


def echo_infer(client: httpclient.InferenceServerClient, binary: bool) -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = httpclient.InferInput("a", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data, binary_data=binary)
    result = client.infer("echo", [tensor], outputs=[httpclient.InferRequestedOutput("a", binary_data=binary)])
    np.testing.assert_array_equal(result.as_numpy("a"), data)


def only(stats: dict[str, Any]) -> dict[str, Any]:
    assert len(stats["model_stats"]) == 1, stats
    return dict(stats["model_stats"][0])


def test_server_advertises_the_extension(client: httpclient.InferenceServerClient) -> None:
    assert "statistics" in client.get_server_metadata()["extensions"]


def test_exact_counts_and_times_that_add_up(server: ServerProcess, client: httpclient.InferenceServerClient) -> None:
    before = int(time.time() * 1000)
    for i in range(5):
        echo_infer(client, binary=bool(i % 2))
    bad = {"inputs": [{"name": "a", "shape": [3], "datatype": "INT32", "data": [1, 2]}]}
    for _ in range(2):
        status, doc = server.post_json("/v2/models/echo/infer", bad)
        assert status == 400, doc
    after = int(time.time() * 1000)

    stats = only(client.get_inference_statistics("echo"))
    assert stats["name"] == "echo" and stats["version"] == "1"
    assert before <= stats["last_inference"] <= after
    assert stats["inference_count"] == 10  # five requests of two rows (echo's outputs are row-wise)
    assert stats["execution_count"] == 5
    infer = stats["inference_stats"]
    assert infer["fail"]["count"] == 2 and infer["fail"]["ns"] > 0
    assert infer["success"]["count"] == 5
    for part in PARTS:
        assert infer[part]["count"] == 5, part
        assert infer[part]["ns"] > 0, part
    # Each request's parts happen one after the other inside its submit-to-answer time.
    assert sum(infer[part]["ns"] for part in PARTS) <= infer["success"]["ns"]
    assert infer["cache_hit"] == {"count": 0, "ns": 0} and infer["cache_miss"] == {"count": 0, "ns": 0}
    # Sequential requests never share a predict call: five calls of two rows.
    [batch] = stats["batch_stats"]
    assert batch["batch_size"] == 2 and batch["compute_infer"]["count"] == 5
    for part in ("compute_input", "compute_infer", "compute_output"):
        assert batch[part] == infer[part]

    assert only(client.get_inference_statistics("echo", "1")) == stats


def rows_infer(client: httpclient.InferenceServerClient, model: str, rows: int) -> None:
    data = np.arange(rows * 3, dtype=np.float64).reshape(rows, 3)
    tensor = httpclient.InferInput("x", [rows, 3], "FP64")
    tensor.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer(model, [tensor]).as_numpy("y"), data)


def test_inference_count_counts_rows(server: ServerProcess, client: httpclient.InferenceServerClient) -> None:
    sizes = (1, 4, 4, 3, 1)
    for rows in sizes:
        rows_infer(client, "rows", rows)
        rows_infer(client, "single", rows)

    stats = only(client.get_inference_statistics("rows"))
    assert stats["inference_count"] == 13
    assert stats["execution_count"] == 5
    assert stats["inference_stats"]["success"]["count"] == 5
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]} == {1: 2, 3: 1, 4: 2}
    for part in ("compute_input", "compute_infer", "compute_output"):
        assert sum(b[part]["ns"] for b in stats["batch_stats"]) == stats["inference_stats"][part]["ns"]

    # A runtime whose outputs are not row-wise has no batch axis: a request is one inference.
    single = only(client.get_inference_statistics("single"))
    assert single["inference_count"] == 5 and single["execution_count"] == 5
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in single["batch_stats"]] == [(1, 5)]

    # The gRPC RPC serves the same figures.
    with grpcclient.InferenceServerClient(server.grpc_url) as triton:
        answer = triton.get_inference_statistics("rows", as_json=True)["model_stats"][0]
    assert int(answer["inference_count"]) == 13 and int(answer["execution_count"]) == 5
    assert sorted((int(b["batch_size"]), int(b["compute_infer"]["count"])) for b in answer["batch_stats"]) == [
        (1, 2),
        (3, 1),
        (4, 2),
    ]


def test_batch_stats_match_the_calls_that_ran(server: ServerProcess, client: httpclient.InferenceServerClient) -> None:
    bodies = [
        {"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP64", "data": [float(i), i + 0.5]}]} for i in range(16)
    ]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as ex:
        results = list(ex.map(lambda b: server.post_json("/v2/models/batch/infer", b), bodies))
    assert all(status == 200 for status, _ in results), results
    calls = {output(doc, "call")[0]: output(doc, "rows")[0] for _, doc in results}  # call number -> its rows
    sizes = Counter(calls.values())  # rows per call (the batch size) -> calls

    assert max(sizes) > 2  # some requests did share a call

    stats = only(client.get_inference_statistics("batch"))
    assert stats["inference_count"] == 32  # sixteen requests of two rows
    assert stats["execution_count"] == len(calls)
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]} == dict(sizes)
    infer = stats["inference_stats"]
    for part in ("compute_input", "compute_infer", "compute_output"):
        assert sum(b[part]["ns"] for b in stats["batch_stats"]) == infer[part]["ns"]
    assert sum(infer[part]["ns"] for part in PARTS) <= infer["success"]["ns"]


def test_every_model_and_unknown_ones(server: ServerProcess, client: httpclient.InferenceServerClient) -> None:
    every = client.get_inference_statistics()["model_stats"]
    assert [m["name"] for m in every] == ["batch", "broken", "echo", "rows", "single"]
    broken = every[1]
    assert broken["inference_count"] == 0 and broken["last_inference"] == 0 and broken["batch_stats"] == []

    for name, version in (("nope", ""), ("echo", "2")):
        with pytest.raises(InferenceServerException) as caught:
            client.get_inference_statistics(name, version)
        assert caught.value.status() == "404"
    status, doc = server.get("/v2/models/echo/versions/2/stats")
    assert status == 404 and doc == {"error": "Request for unknown model: 'echo' version '2' is not found"}
