"""Graceful shutdown under load and hot reload of a watched repository."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from support import infer_body, output, toy_model

from runtime_core.testing import ServerProcess, wait_until

pytestmark = pytest.mark.e2e  # every test here starts real server processes


def infer(server: ServerProcess, model: str, **params: Any) -> tuple[int, Any]:
    try:
        return server.post_json(f"/v2/models/{model}/infer", infer_body([1.0], **params), timeout=30)
    except OSError:
        return -1, None  # connection refused: the server had stopped listening


def test_sigterm_finishes_accepted_requests_then_exits_0(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "slow", parallel_workers=2, parameters={"extra": {"sleep": 0.2}})
    server = serve(tmp_path)
    marker = tmp_path / "started"
    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        # 2 workers x pipeline depth 2 take 4; the other 8 queue.
        accepted = [ex.submit(infer, server, "slow", started_file=str(marker)) for _ in range(12)]
        wait_until(lambda: marker.exists() and len(marker.read_text().split()) >= 2, 30, "both workers busy")
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: server.get("/v2/health/ready")[0] == 400, 30, "readiness to turn false")
        late = infer(server, "slow")[0]
        results = [f.result()[0] for f in accepted]
    assert results == [200] * 12  # queued work was finished, not dropped
    assert late in (503, -1)
    assert server.proc.wait(timeout=30) == 0


def test_watch_loads_reloads_and_unloads_without_failing_requests(tmp_path: Path, serve: Any) -> None:
    repo = tmp_path / "repo"
    toy_model(repo, "kept", parallel_workers=1)
    server = serve(repo, args=["--watch"], env={"RUNTIME_CORE_WATCH_INTERVAL": "0.2"})
    before = output(infer(server, "kept")[1], "loaded_at")[0]

    toy_model(repo, "fresh", parallel_workers=1)
    wait_until(lambda: infer(server, "fresh")[0] == 200, 20, "the new model to serve")

    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            statuses.append(infer(server, "kept", sleep=0.01)[0])

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        settings = repo / "kept" / "model-settings.json"
        doc = json.loads(settings.read_text())
        doc["parameters"] = {"extra": {"revision": 2}}
        wait_until(lambda: len(statuses) >= 5, 20, "requests flowing before the change")
        settings.write_text(json.dumps(doc))
        wait_until(lambda: output(infer(server, "kept")[1], "loaded_at")[0] != before, 20, "the reload")
        reloaded = len(statuses)
        wait_until(lambda: len(statuses) >= reloaded + 5, 20, "requests flowing after the reload")
    finally:
        stop.set()
        worker.join()
    assert statuses and set(statuses) == {200}

    shutil.rmtree(repo / "fresh")
    wait_until(lambda: infer(server, "fresh")[0] in (404, 503), 20, "the removed model to go")
    assert infer(server, "kept")[0] == 200


def test_a_load_whose_grpc_caller_gave_up_still_finishes(tmp_path: Path, serve: Any) -> None:
    """A gRPC ``RepositoryModelLoad`` past its deadline is cancelled on the server side; the
    load itself runs on (as Triton's does), so the model ends READY and answers, instead of
    staying LOADING with a half-started pool."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    repo = tmp_path / "repo"
    toy_model(repo, "b")
    server = serve(repo)
    gate = tmp_path / "load-gate"
    toy_model(repo, "a", parameters={"extra": {"load_gate": str(gate)}})
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="a"), timeout=1.0)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert list(tmp_path.glob("load-gate.*")), "the load was under way when the caller gave up"
    gate.touch()

    def state() -> str:
        status, doc = server.post_json("/v2/repository/index", {})
        assert status == 200, doc
        return next(item["state"] for item in doc if item["name"] == "a")

    wait_until(lambda: state() == "READY", message="a's load to finish after its caller left")
    status, body, _ = server.request(
        "POST",
        "/v2/models/a/infer",
        json.dumps(infer_body([3.0])).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200 and output(json.loads(body), "y") == [3.0]
