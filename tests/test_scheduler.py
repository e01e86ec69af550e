"""Fair scheduling across models: order, shares, backpressure, deadlines, cancellation.

These tests assert orders and counts of completions, never wall-clock speed.
Toy models sleep in their workers to stand for slow and fast models. A test that needs a
request running or queued first waits for it (the toy's ``started_file``, the queue depth
in /metrics), never for a guessed time.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import infer_body, output, toy_model

from runtime_core.testing import ServerProcess, wait_until

pytestmark = pytest.mark.e2e  # every test here starts real server processes


def post(server: ServerProcess, model: str, headers: dict[str, str] | None = None, **params: Any) -> tuple[int, Any]:
    status, body, got = server.request(
        "POST",
        f"/v2/models/{model}/infer",
        json.dumps(infer_body([1.0], **params)).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )
    return status, (json.loads(body) if body else None, got)


def calls(server: ServerProcess, model: str) -> int:
    """How many predict calls the model's (single) worker has made, this one included."""
    status, (doc, _) = post(server, model)
    assert status == 200
    return int(output(doc, "calls")[0])


def queued(server: ServerProcess, model: str) -> int:
    """Requests waiting in the model's queue, from /metrics."""
    status, body, _ = server.request("GET", "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "runtime_core_queue_depth" and sample.labels.get("model") == model:
                return int(sample.value)
    return 0


def started(marker: Path, count: int = 1) -> bool:
    """The toy's ``started_file`` shows ``count`` calls begun."""
    return marker.exists() and len(marker.read_text().split()) >= count


class Recorder:
    def __init__(self) -> None:
        self.order: list[str] = []
        self.lock = threading.Lock()

    def run(self, server: ServerProcess, model: str, **params: Any) -> int:
        status, _ = post(server, model, **params)
        with self.lock:
            self.order.append(model)
        return status


def test_a_fast_model_is_served_before_a_slow_models_backlog_drains(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "slow", parallel_workers=1, parameters={"extra": {"sleep": 0.15}})
    toy_model(tmp_path, "fast", parallel_workers=1)
    server = serve(tmp_path, env={"RUNTIME_CORE_MAX_INFLIGHT": "1"})
    rec = Recorder()
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        slow = [ex.submit(rec.run, server, "slow") for _ in range(10)]
        wait_until(lambda: queued(server, "slow") >= 7, 30, "the slow backlog to be queued")
        fast = [ex.submit(rec.run, server, "fast") for _ in range(5)]
        statuses = [f.result() for f in slow + fast]
    assert set(statuses) == {200}
    last_fast = max(i for i, m in enumerate(rec.order) if m == "fast")
    slow_before = rec.order[:last_fast].count("slow")
    # All five fast requests finished while most of the slow backlog still waited.
    assert slow_before <= 5, rec.order


def test_weights_set_the_shares_of_two_busy_models(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "gold", parallel_workers=1, weight=3, parameters={"extra": {"sleep": 0.02}})
    toy_model(tmp_path, "iron", parallel_workers=1, weight=1, parameters={"extra": {"sleep": 0.02}})
    server = serve(tmp_path, env={"RUNTIME_CORE_MAX_INFLIGHT": "1"})
    rec = Recorder()

    def loop(model: str) -> None:
        for _ in range(8):
            rec.run(server, model)

    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        list(ex.map(loop, ["gold"] * 8 + ["iron"] * 8))
    window = rec.order[8:48]  # both models backlogged throughout this stretch
    gold = window.count("gold")
    assert 24 <= gold <= 35, f"gold got {gold} of {len(window)}: {rec.order}"


def test_a_full_queue_answers_503_with_retry_after_at_once(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "narrow", parallel_workers=1, max_queue_size=2, parameters={"extra": {"sleep": 0.4}})
    server = serve(tmp_path, env={"RUNTIME_CORE_PIPELINE_DEPTH": "2"})
    results: list[tuple[int, Any]] = []
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(post, server, "narrow") for _ in range(8)]
        results = [f.result() for f in futures]
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 4 + [503] * 4  # 2 in the worker, 2 queued, 4 refused
    for status, (doc, headers) in results:
        if status == 503:
            assert "queue is full" in doc["error"]
            assert int(headers["Retry-After"]) >= 1


def test_an_expired_deadline_never_reaches_the_runtime(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "slow", parallel_workers=1, parameters={"extra": {"sleep": 0.5}})
    server = serve(tmp_path, env={"RUNTIME_CORE_PIPELINE_DEPTH": "1"})
    marker = tmp_path / "started"
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        first = ex.submit(post, server, "slow", started_file=str(marker))
        wait_until(lambda: started(marker), 30, "the first request to run")
        late = ex.submit(post, server, "slow", {"Request-Timeout": "0.1"})
        assert first.result()[0] == 200
        status, (doc, _) = late.result()
    assert status == 504 and "deadline" in doc["error"]
    assert calls(server, "slow") == 2  # the first request and this one: the expired one never ran


def test_a_disconnected_clients_queued_request_is_dropped(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "slow", parallel_workers=1, parameters={"extra": {"sleep": 0.6}})
    server = serve(tmp_path, env={"RUNTIME_CORE_PIPELINE_DEPTH": "1"})
    marker = tmp_path / "started"
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        first = ex.submit(post, server, "slow", started_file=str(marker))
        wait_until(lambda: started(marker), 30, "the first request to run")
        body = json.dumps(infer_body([1.0])).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_until(lambda: queued(server, "slow") == 1, 30, "the second request to queue behind the first")
        assert first.result()[0] == 200
    assert calls(server, "slow") == 2  # the abandoned request never ran


def test_unloading_a_model_with_queued_requests_answers_them_all(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "slow", parallel_workers=1, parameters={"extra": {"sleep": 0.2}})
    toy_model(tmp_path, "other", parallel_workers=1)
    server = serve(tmp_path, env={"RUNTIME_CORE_PIPELINE_DEPTH": "1"})
    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        pending = [ex.submit(post, server, "slow") for _ in range(10)]
        wait_until(lambda: queued(server, "slow") >= 5, 30, "requests queued for the model")
        status, _ = server.post_json("/v2/repository/models/slow/unload", timeout=30)
        results = [f.result(timeout=30)[0] for f in pending]
    assert status == 200
    assert set(results) <= {200, 503} and 503 in results and 200 in results
    assert post(server, "other")[0] == 200
    assert post(server, "slow")[0] in (404, 503)


def test_the_v2_timeout_parameter_is_honoured_in_the_worker(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "slow", parallel_workers=1, parameters={"extra": {"sleep": 0.5}})
    server = serve(tmp_path, env={"RUNTIME_CORE_PIPELINE_DEPTH": "2"})
    marker = tmp_path / "started"
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        first = ex.submit(post, server, "slow", started_file=str(marker))
        wait_until(lambda: started(marker), 30, "the first request to run")
        late = ex.submit(post, server, "slow", timeout=100_000)  # microseconds, as in Triton
        assert first.result()[0] == 200
        status, (doc, _) = late.result()
    assert status == 504 and "parameters.timeout" in doc["error"]
    assert calls(server, "slow") == 2  # the timed-out request never reached predict
    status, (doc, _) = post(server, "slow", timeout="soon")
    assert status == 400 and "microseconds" in doc["error"]
