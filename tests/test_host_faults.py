"""Faults of the shared host (issue 20): a host that dies or stops, at any point of an
eviction or a load, costs its models no more than a retry or a clean 503.

Real server processes; the host (``rc-h:<runtime>``) is found with psutil and killed or
stopped by the test. Loads and requests are held in progress with the toy runtime's gates
(a file the toy waits for, after it has written ``<gate>.<pid>``), so each kill lands at a
known point. Every test waits for its requests to complete, never for a length of time.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import random
import re
import signal
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
from support import infer_body, named_processes, output, toy_model
from tritonclient.grpc import service_pb2, service_pb2_grpc

from runtime_core.testing import ServerProcess, wait_until

pytestmark = pytest.mark.e2e  # every test here starts real server processes

#: What the tests give a server: a small worker_timeout, so that the bound on every request
#: (the safety net) is short, and a client timeout well past it.
WORKER_TIMEOUT = 10.0
CLIENT_TIMEOUT = 120.0
#: An import path (``package.module:Class``) or a traceback must never reach a client.
INTERNAL = re.compile(r"\w+\.\w+:\w+|Traceback|rc_toy_runtimes|runtime_core")


def hosts(server: ServerProcess) -> list[psutil.Process]:
    return [proc for name, proc in named_processes(server.pid) if name.startswith("rc-h:")]


def host_of(server: ServerProcess) -> psutil.Process:
    return wait_until(lambda: (found := hosts(server)) and found[0], 60, "the host")


def index(server: ServerProcess) -> dict[str, dict[str, Any]]:
    status, doc = server.post_json("/v2/repository/index", {})
    assert status == 200, doc
    return {item["name"]: item for item in doc}


def infer(server: ServerProcess, model: str, values: list[float], **parameters: Any) -> tuple[int, Any]:
    status, body, _ = server.request(
        "POST",
        f"/v2/models/{model}/infer",
        json.dumps(infer_body(values, **parameters)).encode(),
        {"Content-Type": "application/json"},
        timeout=CLIENT_TIMEOUT,
    )
    return status, json.loads(body)


def grpc_infer(server: ServerProcess, model: str, value: float) -> tuple[int, Any]:
    """One request over gRPC, as ``(status, doc)`` in REST's terms: 200 and the outputs, or
    503 and the error for UNAVAILABLE (any other code fails the test)."""
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[1])
    tensor.contents.fp64_contents.append(value)
    with grpc.insecure_channel(server.grpc_url) as channel:
        try:
            reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=CLIENT_TIMEOUT)
        except grpc.RpcError as err:
            assert err.code() is grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
            return 503, {"error": err.details()}
    names = [out.name for out in reply.outputs]
    y = np.frombuffer(reply.raw_output_contents[names.index("y")], dtype="<f8")
    return 200, {"outputs": [{"name": "y", "data": y.tolist()}]}


def assert_answered(results: list[tuple[int, Any]], values: list[float]) -> None:
    """Each request got its own answer (200), or a clean 503 that names no internals."""
    for (status, doc), value in zip(results, values, strict=True):
        if status == 200:
            assert output(doc, "y") == [value], doc
        else:
            assert status == 503, doc
            assert not INTERNAL.search(doc["error"]), doc


def settle(server: ServerProcess, models: list[str]) -> None:
    """Afterwards every model answers 200, and the index says READY for each."""
    for name in models:
        status, doc = infer(server, name, [7.0])
        assert (status, output(doc, "y")) == (200, [7.0]), (name, doc)
    rows = index(server)
    for name in models:
        assert rows[name]["state"] == "READY", rows[name]
        assert rows[name]["residency"] in ("resident", "evicted"), rows[name]
        status, ready = server.get(f"/v2/models/{name}/ready")
        assert status == 200 and ready["ready"] is True, (name, ready)


def wait_answered(futures: list[concurrent.futures.Future[Any]]) -> None:
    """Wait for every request to complete: the server bounds each by worker_timeout."""
    wait_until(lambda: all(f.done() for f in futures), 3 * WORKER_TIMEOUT, "every request to be answered")


def started(gate: Path, pid: int) -> bool:
    return Path(f"{gate}.{pid}").exists()


def env(**extra: str) -> dict[str, str]:
    return {"RUNTIME_CORE_WORKER_TIMEOUT": str(WORKER_TIMEOUT), "RUNTIME_CORE_LAZY_LOAD": "true", **extra}


# ---------------------------------------------------------------------------- host death


def test_host_killed_during_a_load_with_requests_parked_and_queued(tmp_path: Path, serve: Any) -> None:
    """The churn hang: the host dies while it loads an evicted model that has one request
    parked (capacity 1) and more queued in the scheduler. Each request is retried once on a
    fresh host (or fails with a clean 503); none is left waiting."""
    gate = tmp_path / "load-gate"
    toy_model(tmp_path / "repo", "a", parameters={"extra": {"load_gate": str(gate)}})
    toy_model(tmp_path / "repo", "b")
    (tmp_path / "repo" / "settings.json").write_text(json.dumps({"memory_budget": 1}))  # room for one
    server = serve(tmp_path / "repo", env=env())
    assert infer(server, "b", [1.0])[0] == 200  # the host runs; a is evicted (never loaded)
    host = host_of(server)
    with concurrent.futures.ThreadPoolExecutor(11) as ex:
        futures = [ex.submit(infer, server, "a", [float(i)]) for i in range(6)]
        futures += [ex.submit(grpc_infer, server, "a", value) for value in (6.0, 7.0)]  # gRPC clients alike
        wait_until(lambda: started(gate, host.pid), 30, "a's load to start in the host")
        futures += [ex.submit(infer, server, "b", [float(i)]) for i in range(8, 11)]
        os.kill(host.pid, signal.SIGKILL)
        gate.touch()  # loads into the new host go through
        wait_answered(futures)
    assert_answered([f.result() for f in futures], [float(i) for i in range(11)])
    settle(server, ["a", "b"])


def test_host_killed_with_requests_in_flight_and_others_parked(tmp_path: Path, serve: Any) -> None:
    """The host dies while it runs a request of a resident model and another model's load
    waits behind it (parked): both are retried on a fresh host."""
    gate = tmp_path / "gate"
    repo = tmp_path / "repo"
    for name in ("a", "b", "c"):
        toy_model(repo, name)
    (repo / "settings.json").write_text(json.dumps({"memory_budget": 1}))
    server = serve(repo, env=env())
    assert infer(server, "a", [1.0])[0] == 200
    host = host_of(server)
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        held = ex.submit(infer, server, "a", [2.0], gate=str(gate))
        wait_until(lambda: started(gate, host.pid), 30, "the host to run a's request")
        others = [ex.submit(infer, server, name, [float(i)]) for i, name in enumerate(["b", "c", "b", "a"])]
        wait_until(lambda: index(server)["b"]["residency"] == "loading", 30, "b to wait for its load")
        os.kill(host.pid, signal.SIGKILL)
        gate.touch()
        futures = [held, *others]
        wait_answered(futures)
    assert_answered([f.result() for f in futures], [2.0, 0.0, 1.0, 2.0, 3.0])
    settle(server, ["a", "b", "c"])


def test_host_killed_right_after_an_eviction(tmp_path: Path, serve: Any) -> None:
    """The host dies just after a load evicted another model: requests to both, sent while
    its death is being noticed, are answered, and both models come back."""
    repo = tmp_path / "repo"
    for name in ("a", "b"):
        toy_model(repo, name)
    (repo / "settings.json").write_text(json.dumps({"memory_budget": 1}))
    server = serve(repo, env=env())
    for _ in range(3):
        # From a fresh host (both evicted): over the budget with requests in flight, both may
        # have stayed resident since the last round, and then no load would evict.
        for old in hosts(server):
            os.kill(old.pid, signal.SIGKILL)
        wait_until(lambda: {r["residency"] for r in index(server).values()} == {"evicted"}, 30, "both evicted")
        assert infer(server, "a", [1.0])[0] == 200
        assert infer(server, "b", [1.0])[0] == 200  # loads b, evicts a
        assert index(server)["a"]["residency"] == "evicted"
        host = host_of(server)
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            futures = [ex.submit(infer, server, name, [float(i)]) for i, name in enumerate("ababab")]
            os.kill(host.pid, signal.SIGKILL)
            wait_answered(futures)
        assert_answered([f.result() for f in futures], [float(i) for i in range(6)])
        settle(server, ["a", "b"])


@pytest.fixture(scope="module")
def knn_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve sklearn KNeighborsRegressor models of about 1 MB each (they keep their data)."""
    import joblib
    from sklearn.neighbors import KNeighborsRegressor

    root = tmp_path_factory.mktemp("knn")
    rng = np.random.default_rng(3)
    for i in range(12):
        x = rng.normal(size=(16_000, 8))
        model = KNeighborsRegressor(n_neighbors=3).fit(x, x[:, 0] * i)
        folder = root / f"k{i:02d}"
        folder.mkdir()
        joblib.dump(model, folder / "model.joblib")
        (folder / "model-settings.json").write_text(json.dumps({"name": folder.name, "runtime": "sklearn"}))
    (root / "settings.json").write_text(json.dumps({"memory_budget": 4 * 1024 * 1024}))
    return root


def test_sklearn_host_killed_during_eviction_churn(knn_repo: Path, serve: Any) -> None:
    """The probe of issue 20, smaller: clients over random models that evict each other
    all the time; the host is killed three times. Every request is answered (200 or a clean
    503), and afterwards every model answers and the index is truthful."""
    server = serve(knn_repo, env=env())
    models = sorted(p.name for p in knn_repo.iterdir() if p.is_dir())
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP64", "data": [0.1] * 8}]}).encode()
    answered: list[tuple[int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            status, raw, _ = server.request(
                "POST",
                f"/v2/models/{rng.choice(models)}/infer",
                body,
                {"Content-Type": "application/json"},
                timeout=CLIENT_TIMEOUT,
            )
            with lock:
                answered.append((status, "" if status == 200 else json.loads(raw)["error"]))

    def count() -> int:
        with lock:
            return len(answered)

    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        futures = [ex.submit(client, seed) for seed in range(6)]
        try:
            for kill in range(3):
                wait_until(lambda k=kill: count() >= 40 * (k + 1), 6 * WORKER_TIMEOUT, "requests to be answered")
                os.kill(host_of(server).pid, signal.SIGKILL)
            wait_until(lambda: count() >= 160, 6 * WORKER_TIMEOUT, "requests after the last kill")
        finally:
            stop.set()
        wait_until(lambda: all(f.done() for f in futures), 3 * WORKER_TIMEOUT, "every client's last request")
        for f in futures:
            f.result()
    problems = [(code, error) for code, error in answered if code != 200 and (code != 503 or INTERNAL.search(error))]
    assert not problems, problems[:5]
    for name in models:
        status, _ = server.post_json(f"/v2/models/{name}/infer", json.loads(body))
        assert status == 200, name
    assert {row["state"] for row in index(server).values()} == {"READY"}


def test_a_host_death_is_logged_with_its_signal(tmp_path: Path, serve: Any) -> None:
    toy_model(tmp_path, "a")
    server = serve(tmp_path)
    host = host_of(server)
    os.kill(host.pid, signal.SIGKILL)
    wait_until(lambda: f"pid {host.pid}) was killed by signal 9" in server.output(), 30, "the host's death logged")
    (line,) = [s for s in server.output().splitlines() if f"pid {host.pid})" in s]
    assert "WARNING" in line and "toy-identity" in line, line
    assert infer(server, "a", [1.0])[0] == 200


# ---------------------------------------------------------------------------- stopped host


def _cont(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def test_a_stopped_host_with_requests_is_replaced_and_they_are_retried(tmp_path: Path, serve: Any) -> None:
    """SIGSTOP of a host holding requests: it is found stopped and killed well before
    worker_timeout, and its requests are retried on a fresh host, all 200 (with only
    worker_timeout to find it, the oldest one would fail with 504)."""
    repo = tmp_path / "repo"
    for name in ("a", "b", "c"):
        toy_model(repo, name)
    server = serve(repo, env={"RUNTIME_CORE_WORKER_TIMEOUT": str(WORKER_TIMEOUT)})
    host = host_of(server)
    os.kill(host.pid, signal.SIGSTOP)
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            futures = [ex.submit(infer, server, name, [float(i)]) for i, name in enumerate("abcabc")]
            wait_answered(futures)
    finally:
        _cont(host.pid)
    results = [f.result() for f in futures]
    assert [(status, output(doc, "y")) for status, doc in results] == [(200, [float(i)]) for i in range(6)], results
    assert host.pid not in {output(doc, "pid")[0] for _, doc in results}


def test_readiness_says_not_ready_while_the_host_is_stopped(tmp_path: Path, serve: Any) -> None:
    """An idle server's stopped host is found by the readiness probe (no timer runs), which
    says not ready until the host is replaced; the model then answers from a new host."""
    toy_model(tmp_path, "a")
    server = serve(tmp_path, env={"RUNTIME_CORE_WORKER_TIMEOUT": str(WORKER_TIMEOUT)})
    host = host_of(server)
    os.kill(host.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: server.get("/v2/models/a/ready")[1]["ready"] is False, 30, "readiness to say not ready")
        wait_until(lambda: not host.is_running() or host.status() == psutil.STATUS_ZOMBIE, 30, "the host killed")
    finally:
        _cont(host.pid)
    wait_until(lambda: server.get("/v2/models/a/ready")[1]["ready"] is True, 30, "readiness again")
    status, doc = infer(server, "a", [3.0])
    assert (status, output(doc, "y")) == (200, [3.0])
    assert output(doc, "pid")[0] != host.pid


def test_a_stopped_root_does_not_hold_up_a_new_host(tmp_path: Path, serve: Any) -> None:
    """The root template is stopped when a host must be replaced: the fork would wait for
    good. The root is killed, the host starts as a fresh interpreter, and the model serves."""
    toy_model(tmp_path, "a")
    server = serve(tmp_path, env={"RUNTIME_CORE_WORKER_TIMEOUT": str(WORKER_TIMEOUT)})
    host = host_of(server)
    (root,) = [proc for name, proc in named_processes(server.pid) if name == "rc-root"]
    os.kill(root.pid, signal.SIGSTOP)
    try:
        os.kill(host.pid, signal.SIGKILL)
        # A zombie while its parent, the root, is stopped: gone for the server (sockets closed).
        wait_until(lambda: host.status() == psutil.STATUS_ZOMBIE, 30, "the host to go")
        status, doc = infer(server, "a", [4.0])
    finally:
        _cont(root.pid)
    assert (status, output(doc, "y")) == (200, [4.0]), doc
    assert output(doc, "pid")[0] != host.pid


# ---------------------------------------------------------------------------- safety net


def test_requests_waiting_for_a_load_longer_than_worker_timeout_get_503(tmp_path: Path, serve: Any) -> None:
    """A load that never ends (held by its gate): the request waiting for it (parked) is
    answered 503 once it has waited worker_timeout, and so is each request queued behind
    it (an evicted model takes one at a time), at once, not worker_timeout each in turn.
    Once the load ends the model serves."""
    gate = tmp_path / "load-gate"
    toy_model(tmp_path / "repo", "a", parameters={"extra": {"load_gate": str(gate)}})
    timeout = 2.0
    server = serve(tmp_path / "repo", env=env(RUNTIME_CORE_WORKER_TIMEOUT=str(timeout)))
    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        futures = [ex.submit(infer, server, "a", [float(i)]) for i in range(12)]
        # Queued one after another, worker_timeout each, the last would wait 12 of them.
        wait_until(lambda: all(f.done() for f in futures), 5 * timeout, "every request to be answered")
    for future in futures:
        status, doc = future.result()
        assert status == 503, doc
        assert "worker_timeout" in doc["error"] and not INTERNAL.search(doc["error"]), doc
    gate.touch()
    wait_until(lambda: infer(server, "a", [2.0])[0] == 200, 60, "the model to serve once loaded")
