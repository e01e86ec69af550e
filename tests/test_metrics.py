"""GET /metrics of a real server after known traffic: exact counts per model and outcome.

Each model gets its own kind of traffic so that every count is exact: successes and
client errors on ``echo``; successes, client and server errors on ``toy``; a full
queue and an expired deadline on ``queued`` (one worker, queue of one); a worker
crash on ``crashy``. The scrape is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import infer_body, toy_model

from runtime_core.testing import ServerProcess, wait_until, write_model

pytestmark = pytest.mark.e2e  # every test here starts real server processes

ECHO_OK = {"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}
ECHO_BAD = {"inputs": [{"name": "a", "shape": [3], "datatype": "INT32", "data": [1, 2]}]}
OUTCOMES = ("success", "client_error", "server_error", "rejected", "deadline_expired")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: ServerProcess) -> tuple[Samples, dict[str, str]]:
    status, body, headers = server.request("GET", "/metrics")
    assert status == 200
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(body.decode()):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, headers


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def requests(samples: Samples, model: str, version: str = "") -> dict[str, int]:
    return {
        o: int(value(samples, "runtime_core_requests_total", model=model, version=version, outcome=o)) for o in OUTCOMES
    }


def wait_for(server: ServerProcess, check: Any, timeout: float = 20.0) -> Samples:
    """The first scrape whose samples pass ``check`` (polled by the shared wait_until)."""

    def passing() -> Samples | None:
        samples, _ = scrape(server)
        return samples if check(samples) else None

    return wait_until(passing, timeout, "the expected metrics")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("metrics-repo")


@pytest.fixture(scope="module")
def server(root: Path, toy_site: Path) -> Iterator[ServerProcess]:
    write_model(root / "echo", name="echo", runtime="echo", parameters={"version": "1"})
    write_model(root / "fresh", name="fresh", runtime="echo")
    toy_model(root, "toy")
    toy_model(root, "queued", max_queue_size=1)
    toy_model(root, "crashy")
    toy_model(root, "broken", parameters={"extra": {"load_fails": True}})
    path = os.environ.get("PYTHONPATH")
    env = {
        "PYTHONPATH": str(toy_site) + (os.pathsep + path if path else ""),
        "RUNTIME_CORE_PIPELINE_DEPTH": "2",
        "RUNTIME_CORE_MIN_WORKERS": "1",
    }
    proc = ServerProcess(root, workers=1, env=env)
    yield proc
    proc.stop()


def test_endpoint_content_type_and_initial_series(server: ServerProcess) -> None:
    samples, headers = scrape(server)
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    # Every READY model has its series before its first request, all zero.
    assert requests(samples, "crashy") == dict.fromkeys(OUTCOMES, 0)
    assert value(samples, "runtime_core_model_state", model="echo", version="1", state="READY") == 1
    assert value(samples, "runtime_core_model_state", model="broken", version="", state="UNAVAILABLE") == 1
    assert value(samples, "runtime_core_model_state", model="broken", version="", state="READY") == 0
    assert value(samples, "runtime_core_model_load_seconds", model="echo", version="1") > 0
    assert value(samples, "runtime_core_model_load_seconds", model="broken", version="") == 0
    assert value(samples, "runtime_core_workers_ready", model="toy", version="") == 1
    assert ("runtime_core_requests_total", frozenset({"model": "broken", "version": ""}.items())) not in samples
    assert value(samples, "process_resident_memory_bytes") > 0


def test_counts_and_histograms_per_model(server: ServerProcess) -> None:
    n_echo, m_echo = 5, 3
    for i in range(n_echo):  # versioned and unversioned URLs count under the same series
        path = "/v2/models/echo/versions/1/infer" if i % 2 else "/v2/models/echo/infer"
        assert server.post_json(path, ECHO_OK)[0] == 200
    for _ in range(m_echo):
        assert server.post_json("/v2/models/echo/infer", ECHO_BAD)[0] == 400
    n_toy, m_toy, k_toy = 4, 2, 3
    for _ in range(n_toy):
        assert server.post_json("/v2/models/toy/infer", infer_body([1.0]))[0] == 200
    for _ in range(m_toy):
        assert server.post_json("/v2/models/toy/infer", infer_body([1.0], invalid=True))[0] == 400
    for _ in range(k_toy):
        assert server.post_json("/v2/models/toy/infer", infer_body([1.0], fail=True))[0] == 500
    # Requests refused before they reach a queue are not per-model requests.
    assert server.post_json("/v2/models/nope/infer", ECHO_OK)[0] == 404

    samples, _ = scrape(server)
    assert requests(samples, "echo", "1") == {**dict.fromkeys(OUTCOMES, 0), "success": n_echo, "client_error": m_echo}
    assert requests(samples, "toy") == {
        **dict.fromkeys(OUTCOMES, 0),
        "success": n_toy,
        "client_error": m_toy,
        "server_error": k_toy,
    }
    for model, version, answered in (("echo", "1", n_echo + m_echo), ("toy", "", n_toy + m_toy + k_toy)):
        labels = {"model": model, "version": version}
        sums = {}
        for kind in ("queue", "compute", "duration"):
            name = f"runtime_core_request_{kind}_seconds"
            count = value(samples, f"{name}_count", **labels)
            assert count == answered, (model, kind)
            assert value(samples, f"{name}_bucket", **labels, le="+Inf") == count
            buckets = [v for (n, ls), v in samples.items() if n == f"{name}_bucket" and ("model", model) in ls]
            assert buckets == sorted(buckets)  # cumulative
            sums[kind] = value(samples, f"{name}_sum", **labels)
        assert 0 < sums["compute"] < sums["duration"]
        assert 0 <= sums["queue"] < sums["duration"]


def test_queue_full_rejection_and_expired_deadline(server: ServerProcess) -> None:
    labels = {"model": "queued", "version": ""}
    statuses: list[int] = []

    def call(sleep: float, headers: dict[str, str] | None = None) -> None:
        body = infer_body([1.0], sleep=sleep)
        status, _, _ = server.request(
            "POST",
            "/v2/models/queued/infer",
            json.dumps(body).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )
        statuses.append(status)

    # One worker with a pipeline of 2 holds two requests; the queue holds one more.
    threads = [threading.Thread(target=call, args=(0.8,)) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(
        server,
        lambda s: (
            value(s, "runtime_core_queue_depth", **labels) == 1
            and value(s, "runtime_core_inflight_requests", **labels) == 2
        ),
    )
    status, body, headers = server.request(
        "POST", "/v2/models/queued/infer", b'{"inputs": []}', {"Content-Type": "application/json"}
    )
    assert status == 503 and "Retry-After" in headers
    assert b"queue is full" in body
    for t in threads:
        t.join()
    assert statuses == [200, 200, 200]

    # Two running, one queued with a deadline shorter than the wait: it expires in the queue.
    statuses.clear()
    threads = [threading.Thread(target=call, args=(0.5,)) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(server, lambda s: value(s, "runtime_core_inflight_requests", **labels) == 2)
    call(0.0, {"Request-Timeout": "0.2"})
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 200, 504]

    samples, _ = scrape(server)
    assert requests(samples, "queued") == {
        **dict.fromkeys(OUTCOMES, 0),
        "success": 5,
        "rejected": 1,
        "deadline_expired": 1,
    }
    # Rejections are not observed in the latency histograms; the expired request never reached a worker.
    assert value(samples, "runtime_core_request_duration_seconds_count", **labels) == 6
    assert value(samples, "runtime_core_request_queue_seconds_count", **labels) == 6
    assert value(samples, "runtime_core_request_compute_seconds_count", **labels) == 5
    assert value(samples, "runtime_core_request_queue_seconds_sum", **labels) > 0.5  # queued ones waited
    assert value(samples, "runtime_core_queue_depth", **labels) == 0
    assert value(samples, "runtime_core_inflight_requests", **labels) == 0


def test_worker_restart_is_counted(server: ServerProcess) -> None:
    labels = {"model": "crashy", "version": ""}
    status, _ = server.post_json("/v2/models/crashy/infer", infer_body([1.0], crash=True))
    assert status == 503
    samples = wait_for(
        server,
        lambda s: (
            value(s, "runtime_core_worker_restarts_total", **labels) == 1
            and value(s, "runtime_core_workers_ready", **labels) == 1
        ),
    )
    assert requests(samples, "crashy") == {**dict.fromkeys(OUTCOMES, 0), "server_error": 1}
    assert value(samples, "runtime_core_request_compute_seconds_count", **labels) == 0  # no worker answered
    assert value(samples, "runtime_core_request_duration_seconds_count", **labels) == 1
    assert server.post_json("/v2/models/crashy/infer", infer_body([1.0]))[0] == 200
    samples, _ = scrape(server)
    assert requests(samples, "crashy")["success"] == 1


def test_metric_types(server: ServerProcess) -> None:
    _, body, _ = server.request("GET", "/metrics")
    types = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    assert types["runtime_core_requests"] == "counter"
    assert types["runtime_core_worker_restarts"] == "counter"
    assert types["runtime_core_cancelled_requests"] == "counter"
    for name in ("queue", "compute", "duration"):
        assert types[f"runtime_core_request_{name}_seconds"] == "histogram"
    for name in ("queue_depth", "inflight_requests", "model_state", "model_load_seconds", "workers_ready"):
        assert types[f"runtime_core_{name}"] == "gauge"


def test_openmetrics_on_request(server: ServerProcess) -> None:
    status, body, headers = server.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_operations_doc_lists_every_metric(server: ServerProcess) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(runtime_core_[a-z_]+)`", doc, flags=re.M))
    _, body, _ = server.request("GET", "/metrics")
    exported = set()
    for family in text_string_to_metric_families(body.decode()):
        if family.name.startswith("runtime_core_"):
            exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert documented == exported


def test_every_scrape_is_current(server: ServerProcess, root: Path) -> None:
    """/metrics keeps the order and the label text of the models from one scrape to the next
    (issue 23), never their figures: a request, an unload, a load and a model new to the server
    each show in the very next scrape."""
    labels = {"model": "fresh", "version": ""}
    samples, _ = scrape(server)
    assert requests(samples, "fresh") == dict.fromkeys(OUTCOMES, 0)
    for n in (1, 2, 3):
        assert server.post_json("/v2/models/fresh/infer", ECHO_OK)[0] == 200
        samples, _ = scrape(server)
        assert requests(samples, "fresh") == {**dict.fromkeys(OUTCOMES, 0), "success": n}
        assert value(samples, "runtime_core_request_duration_seconds_count", **labels) == n
        assert value(samples, "runtime_core_request_duration_seconds_bucket", **labels, le="+Inf") == n
    assert server.post_json("/v2/models/fresh/infer", ECHO_BAD)[0] == 400
    samples, _ = scrape(server)
    assert requests(samples, "fresh") == {**dict.fromkeys(OUTCOMES, 0), "success": 3, "client_error": 1}

    assert server.post_json("/v2/repository/models/fresh/unload")[0] == 200
    samples, _ = scrape(server)
    assert value(samples, "runtime_core_model_state", **labels, state="UNAVAILABLE") == 1
    assert value(samples, "runtime_core_model_state", **labels, state="READY") == 0
    assert ("runtime_core_queue_depth", frozenset(labels.items())) not in samples  # its queue went with it
    assert ("runtime_core_workers_ready", frozenset(labels.items())) not in samples
    assert requests(samples, "fresh")["success"] == 3  # its counts stay

    assert server.post_json("/v2/repository/models/fresh/load")[0] == 200
    samples, _ = scrape(server)
    assert value(samples, "runtime_core_model_state", **labels, state="READY") == 1
    assert value(samples, "runtime_core_queue_depth", **labels) == 0
    assert server.post_json("/v2/models/fresh/infer", ECHO_OK)[0] == 200
    samples, _ = scrape(server)
    assert requests(samples, "fresh")["success"] == 4

    write_model(root / "late", name="late", runtime="echo")
    assert server.post_json("/v2/repository/models/late/load")[0] == 200
    samples, _ = scrape(server)
    assert requests(samples, "late") == dict.fromkeys(OUTCOMES, 0)
    assert value(samples, "runtime_core_model_state", model="late", version="", state="READY") == 1
    assert server.post_json("/v2/models/late/infer", ECHO_OK)[0] == 200
    samples, _ = scrape(server)
    assert requests(samples, "late")["success"] == 1


def test_scrape_is_sent_in_chunks(server: ServerProcess) -> None:
    """The text goes out as it is written (chunked transfer encoding); HEAD answers without it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
        assert b"runtime_core_requests_total{" in body and body.endswith(b"\n")
        conn.request("HEAD", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b""
    finally:
        conn.close()


def _families(text: str) -> dict[str, Any]:
    return {
        f.name: (f.type, f.documentation, sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples))
        for f in text_string_to_metric_families(text)
    }


class _Pool:
    """What the scheduler and the metrics read of a pool: its health, its priority setters."""

    on_capacity: Any = None
    parallelism = 1

    def __init__(self, ready: int, restarts: int) -> None:
        self.ready, self.restarts = ready, restarts

    def health(self) -> Any:
        from runtime_core.pools.base import PoolHealth

        return PoolHealth(workers=2, ready=self.ready, restarts=self.restarts)

    def set_nice(self, nice: int) -> None:
        pass

    def set_background(self, background: bool) -> bool:
        return False


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_fast_exposition_matches_prometheus_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accept: str, chunk: int | None
) -> None:
    """render() writes the per-model families itself (issue 23): the same families, help texts
    and samples as prometheus_client's exposition of the same registry, also when it writes
    them in chunks of ``chunk`` models."""
    from prometheus_client.exposition import choose_encoder

    from runtime_core import metrictext
    from runtime_core.envelope import Outcome
    from runtime_core.metrics import ServerMetrics
    from runtime_core.plugins import load_registry
    from runtime_core.repository import ModelRepository, ModelState
    from runtime_core.scheduler import FairScheduler
    from runtime_core.settings import load_server_settings

    if chunk is not None:
        monkeypatch.setattr(metrictext, "CHUNK", chunk)
    scheduler = FairScheduler()
    repository = ModelRepository(None, load_server_settings(tmp_path), load_registry(), scheduler)
    models = [("a", None, ModelState.READY), ("b", "2", ModelState.READY), ("c", None, None)]
    models += [(f"m{i}", None if i % 3 else "1", ModelState.READY) for i in range(7)]
    for i, (name, version, state) in enumerate(models):
        record = repository._record(name, version)
        record.state = state or ModelState.UNAVAILABLE
        record.load_time = 0.25 * i
        if record.state is ModelState.READY and i % 2:
            record.pool = _Pool(ready=i % 3, restarts=i)  # type: ignore[assignment]
            scheduler.add(record.key, record.pool)
    metrics = ServerMetrics(scheduler, repository, process=False)
    metrics.observe("a", Outcome(0, b""), 0.0001, 0.002, 0.003)
    metrics.observe("b/2", 7, 0.0, 0.0, 0.0)
    for i in range(0, 7, 2):
        metrics.observe(f"m{i}" if i % 3 else f"m{i}/1", Outcome(0, b""), 0.001 * i, 0.01, 0.02)
    body, content_type = metrics.render(accept)
    encoder, expected_type = choose_encoder(accept)
    assert content_type == expected_type
    fast, slow = body.decode(), encoder(metrics.registry).decode()
    if accept:
        assert fast.endswith("# EOF\n") and fast.count("# EOF") == 1
        fast, slow = fast.replace("# EOF\n", ""), slow.replace("# EOF\n", "")
    families = _families(fast)
    assert families == _families(slow)
    assert len(families["runtime_core_workers_ready"][2]) == 5  # every family has series
    assert len(families["runtime_core_queue_depth"][2]) == 5
    assert families["runtime_core_workers_live"][2] == [("runtime_core_workers_live", (), 4.0)]
    chunks, _ = metrics.chunks(accept)
    assert b"".join(chunks) == body  # what GET /metrics sends, a chunk at a time
