"""OpenTelemetry tracing (``tracing = true``), recorded with the SDK's in-memory exporter.

The SDK's exporter lives in the process that makes the spans, so these tests run the
server's main process in the test process: the real composition (registry, scheduler,
repository, data plane, aiohttp app, gRPC server) on real sockets on 127.0.0.1, called by
real HTTP and gRPC clients. The first test keeps the model in the main process
(``parallel_workers = 0``); the others run it in real worker processes, with a toy runtime
installed through the plugin entry point (``toy-traced``) that records a span of its own in
the worker and answers with the trace and parent it got, so the test can check that the
runtime's span is a child of the request's span in the main process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support import toy_model
from tritonclient.utils import InferenceServerException

from runtime_core.dataplane import DataPlane, ServerState
from runtime_core.grpc.server import GrpcServer
from runtime_core.plugins import load_registry
from runtime_core.repository import ModelRepository
from runtime_core.rest.app import create_app, serve
from runtime_core.scheduler import FairScheduler
from runtime_core.settings import ServerSettings
from runtime_core.stats import ServerStatistics
from runtime_core.testing import write_model

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
GOOD = {"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}
BAD = {"inputs": [{"name": "a", "shape": [3], "datatype": "INT32", "data": [1, 2]}]}

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    # The global provider can be set once per process: this module's exporter stays in it.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture
def toy_path(toy_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy plugin, visible to this process's registry and to the worker processes."""
    monkeypatch.syspath_prepend(str(toy_site))
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(toy_site) + (os.pathsep + path if path else ""))


@dataclass
class Server:
    url: str
    grpc_url: str


@contextlib.asynccontextmanager
async def running(root: Path, *, tracing: bool, workers: int) -> AsyncIterator[Server]:
    """The server's composition (as ``runtime_core.cli`` builds it) in this process."""
    settings = ServerSettings(model_repository=root, parallel_workers=workers, tracing=tracing, cpu_priority=False)
    scheduler = FairScheduler(settings.max_inflight, cpu_priority=False)
    repository = ModelRepository(root, settings, load_registry(), scheduler)
    await repository.load_all()
    plane = DataPlane(settings, repository, scheduler, ServerState(started=True))
    statistics = ServerStatistics(scheduler, repository)
    http = await serve(create_app(plane, statistics=statistics), "127.0.0.1", 0)
    port = http.address[1]
    grpc_server = GrpcServer(plane, statistics)
    grpc_port = await grpc_server.start("127.0.0.1", 0)
    await grpc_server.set_serving(True)
    try:
        yield Server(f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")
    finally:
        await grpc_server.stop(0)
        await http.runner.cleanup()
        scheduler.close()
        await repository.aclose(5.0)


async def _traffic(root: Path, tracing: bool) -> list[int]:
    statuses = []
    async with running(root, tracing=tracing, workers=0) as server, aiohttp.ClientSession() as session:
        url = f"{server.url}/v2/models/echo"
        calls = ((url + "/infer", GOOD, {"traceparent": TRACEPARENT}), (url + "/versions/1/infer", BAD, {}))
        for path, body, extra in calls:
            async with session.post(path, json=body, headers=extra) as response:
                statuses.append(response.status)
        async with session.get(url) as response:  # metadata: not traced
            statuses.append(response.status)
    return statuses


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def hex_id(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) of a span, in hex."""
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> dict[str, ReadableSpan]:
    assert parent.context is not None
    found = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id}
    for child in found.values():
        assert child.context is not None and child.context.trace_id == parent.context.trace_id
    return found


def test_a_span_per_inference_with_queue_and_compute(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    write_model(tmp_path / "echo", name="echo", runtime="echo", parameters={"version": "1"})
    assert asyncio.run(_traffic(tmp_path, tracing=True)) == [200, 400, 200]

    spans = exporter.get_finished_spans()
    good, bad = by_name(spans, "infer echo")
    assert len(spans) == 4  # two requests, and queue + compute of the one a worker answered

    # The first request continues the caller's trace.
    assert good.kind is SpanKind.SERVER
    assert hex_id(good)[0] == TRACE_ID
    assert good.parent is not None and format(good.parent.span_id, "016x") == PARENT_ID
    assert good.attributes is not None and good.attributes["http.response.status_code"] == 200
    assert good.attributes["runtime_core.model"] == "echo"
    assert set(children(spans, good)) == {"queue", "compute"}
    [queue] = by_name(spans, "queue")
    [compute] = by_name(spans, "compute")
    assert good.start_time is not None and good.end_time is not None
    assert queue.start_time is not None and queue.end_time is not None
    assert compute.start_time is not None and compute.end_time is not None
    assert good.start_time <= queue.start_time <= queue.end_time == compute.start_time
    assert compute.start_time < compute.end_time <= good.end_time
    assert compute.attributes is not None and compute.attributes["runtime_core.batch"] == 1
    assert compute.attributes["runtime_core.rows"] == 2

    # The bad request starts its own trace and has no worker spans.
    assert bad.parent is None and hex_id(bad)[0] != TRACE_ID
    assert bad.attributes is not None and bad.attributes["http.response.status_code"] == 400
    assert bad.attributes["runtime_core.model_version"] == "1"
    assert bad.status.status_code is StatusCode.UNSET  # a client's error is not the server's


def test_off_by_default(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    write_model(tmp_path / "echo", name="echo", runtime="echo", parameters={"version": "1"})
    assert asyncio.run(_traffic(tmp_path, tracing=False)) == [200, 400, 200]
    assert exporter.get_finished_spans() == ()


# ---------------------------------------------------------------------- into the workers

ROWS = {"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP64", "data": [1.0, 2.0]}]}


async def rest_infer(server: Server, model: str, traceparent: str | None, body: Any = ROWS) -> dict[str, Any]:
    headers = {"traceparent": traceparent} if traceparent else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/v2/models/{model}/infer", json=body, headers=headers) as response:
            doc: dict[str, Any] = await response.json()
            assert response.status == 200, doc
            return doc


async def grpc_infer(server: Server, model: str, traceparent: str | None) -> dict[str, str]:
    tensor = grpcclient.InferInput("x", [2, 1], "FP64")
    tensor.set_data_from_numpy(np.array([[1.0], [2.0]]))
    async with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = await client.infer(model, [tensor], headers={"traceparent": traceparent} if traceparent else None)
    np.testing.assert_array_equal(result.as_numpy("y"), [[1.0], [2.0]])
    parameters = result.get_response().parameters
    return {key: parameters[key].string_param for key in ("trace_id", "parent_id")}


@pytest.mark.e2e
def test_the_runtime_runs_in_the_request_span_over_rest_and_grpc(
    tmp_path: Path, exporter: InMemorySpanExporter, toy_path: None
) -> None:
    toy_model(tmp_path, "traced", runtime="toy-traced", parallel_workers=1)

    async def scenario() -> list[dict[str, str]]:
        async with running(tmp_path, tracing=True, workers=1) as server:
            rest = (await rest_infer(server, "traced", TRACEPARENT))["parameters"]
            grpc = await grpc_infer(server, "traced", TRACEPARENT)
            fresh = (await rest_infer(server, "traced", None))["parameters"]
            async with grpcclient.InferenceServerClient(server.grpc_url) as client:
                with pytest.raises(InferenceServerException) as caught:
                    await client.infer("nope", [], headers={"traceparent": TRACEPARENT})
                assert caught.value.status() == "StatusCode.NOT_FOUND"
            return [rest, grpc, fresh]

    rest, grpc, fresh = asyncio.run(scenario())
    spans = exporter.get_finished_spans()
    served = [s for s in spans if s.name == "infer traced"]
    assert len(served) == 3
    rest_span, grpc_span, fresh_span = sorted(served, key=lambda s: s.start_time or 0)
    for span, seen in ((rest_span, rest), (grpc_span, grpc), (fresh_span, fresh)):
        assert span.kind is SpanKind.SERVER
        # The runtime's own span, made in the worker, is a child of the request's span.
        assert (seen["trace_id"], seen["parent_id"]) == hex_id(span)
        assert set(children(spans, span)) == {"queue", "compute"}
    for span in (rest_span, grpc_span):  # both continue the client's trace
        assert hex_id(span)[0] == TRACE_ID
        assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    assert fresh_span.parent is None and hex_id(fresh_span)[0] != TRACE_ID

    assert grpc_span.attributes is not None
    assert grpc_span.attributes["rpc.system"] == "grpc" and grpc_span.attributes["rpc.method"] == "ModelInfer"
    assert grpc_span.attributes["runtime_core.model"] == "traced"
    assert grpc_span.attributes["rpc.grpc.status_code"] == 0

    # A call for an unknown model: its span says NOT_FOUND (5), which is the client's error.
    [unknown] = by_name(spans, "infer nope")
    assert unknown.attributes is not None and unknown.attributes["rpc.grpc.status_code"] == 5
    assert unknown.status.status_code is StatusCode.UNSET
    assert hex_id(unknown)[0] == TRACE_ID and children(spans, unknown) == {}


@pytest.mark.e2e
def test_a_merged_call_runs_in_the_first_request_context(
    tmp_path: Path, exporter: InMemorySpanExporter, toy_path: None
) -> None:
    toy_model(tmp_path, "traced", runtime="toy-traced", parallel_workers=1, max_batch_size=8, max_batch_time=0.5)
    parents = [f"00-{i + 1:032x}-{PARENT_ID}-01" for i in range(8)]

    async def scenario() -> list[dict[str, Any]]:
        async with running(tmp_path, tracing=True, workers=1) as server:
            return list(await asyncio.gather(*(rest_infer(server, "traced", p) for p in parents)))

    answers = asyncio.run(scenario())
    span_of = {hex_id(s)[0]: hex_id(s)[1] for s in exporter.get_finished_spans() if s.name == "infer traced"}
    assert len(span_of) == 8
    calls: dict[int, list[str]] = defaultdict(list)  # call number -> trace ids of its requests
    seen: dict[int, set[tuple[str, str]]] = defaultdict(set)  # call number -> the contexts its requests saw
    for parent, doc in zip(parents, answers, strict=True):
        [call] = {out["data"][0] for out in doc["outputs"] if out["name"] == "call"}
        calls[call].append(parent.split("-")[1])
        seen[call].add((doc["parameters"]["trace_id"], doc["parameters"]["parent_id"]))
    assert max(len(traces) for traces in calls.values()) > 1  # some requests did share a call
    for call, traces in calls.items():
        # One context per call: the span of one of the requests it served.
        [(trace_id, parent_id)] = seen[call]
        assert trace_id in traces and span_of[trace_id] == parent_id


@pytest.mark.e2e
def test_no_context_reaches_the_runtime_when_tracing_is_off(
    tmp_path: Path, exporter: InMemorySpanExporter, toy_path: None
) -> None:
    toy_model(tmp_path, "traced", runtime="toy-traced", parallel_workers=1)

    async def scenario() -> list[dict[str, str]]:
        async with running(tmp_path, tracing=False, workers=1) as server:
            rest = (await rest_infer(server, "traced", TRACEPARENT))["parameters"]
            return [rest, await grpc_infer(server, "traced", TRACEPARENT)]

    for seen in asyncio.run(scenario()):
        assert seen == {"trace_id": "", "parent_id": ""}
    assert exporter.get_finished_spans() == ()


# A worker process without OpenTelemetry (importing it fails): requests without a context never
# reach for it, and a request with one still runs, without the context, and says so once.
_WITHOUT_OPENTELEMETRY = """
import asyncio, importlib.abc, sys
from pathlib import Path


class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ImportError(name + " is not installed here")
        return None


sys.meta_path.insert(0, NoOpenTelemetry())
from runtime_core.envelope import Envelope
from runtime_core.batchloop import run_envelopes
from runtime_core.inference import ModelHandler
from runtime_core.testing import make_runtime

handler = ModelHandler(make_runtime(Path(sys.argv[1]), {"runtime": "echo"}))
body = b'{"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [7]}]}'
plain = asyncio.run(run_envelopes(handler, [Envelope(body)]))
assert [o.code for o in plain] == [0], plain
traced = asyncio.run(run_envelopes(handler, [Envelope(body, trace=sys.argv[2])] * 2))
assert [o.code for o in traced] == [0, 0], traced
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


@pytest.mark.e2e
def test_a_worker_needs_no_opentelemetry(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OPENTELEMETRY, str(tmp_path / "echo"), TRACEPARENT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert result.stderr.count("OpenTelemetry is not installed") == 1, result.stderr
