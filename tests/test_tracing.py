"""OpenTelemetry tracing (``tracing = true``), recorded with the SDK's in-memory exporter.

The SDK's exporter lives in the process that makes the spans, so this test runs the server
in the test process: the real composition (registry, scheduler, repository, data plane,
aiohttp app) on a real socket on 127.0.0.1, the model in the main process
(``parallel_workers = 0``), called by a real HTTP client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from runtime_core.dataplane import DataPlane, ServerState
from runtime_core.plugins import load_registry
from runtime_core.repository import ModelRepository
from runtime_core.rest.app import create_app, serve
from runtime_core.scheduler import FairScheduler
from runtime_core.settings import ServerSettings
from runtime_core.testing import write_model

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
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


async def _traffic(root: Path, tracing: bool) -> list[int]:
    settings = ServerSettings(model_repository=root, parallel_workers=0, tracing=tracing, cpu_priority=False)
    scheduler = FairScheduler(settings.max_inflight, cpu_priority=False)
    repository = ModelRepository(root, settings, load_registry(), scheduler)
    await repository.load_all()
    app = create_app(DataPlane(settings, repository, scheduler, ServerState(started=True)))
    runner, port = await serve(app, "127.0.0.1", 0)
    statuses = []
    try:
        url = f"http://127.0.0.1:{port}/v2/models/echo"
        async with aiohttp.ClientSession() as session:
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
            for path, body, extra in ((url + "/infer", GOOD, headers), (url + "/versions/1/infer", BAD, {})):
                async with session.post(path, json=body, headers=extra) as response:
                    statuses.append(response.status)
            async with session.get(url) as response:  # metadata: not traced
                statuses.append(response.status)
    finally:
        await runner.cleanup()
        scheduler.close()
        await repository.aclose(5.0)
    return statuses


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_a_span_per_inference_with_queue_and_compute(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    write_model(tmp_path / "echo", name="echo", runtime="echo", parameters={"version": "1"})
    assert asyncio.run(_traffic(tmp_path, tracing=True)) == [200, 400, 200]

    spans = exporter.get_finished_spans()
    good, bad = by_name(spans, "infer echo")
    assert len(spans) == 4  # two requests, and queue + compute of the one a worker answered

    # The first request continues the caller's trace.
    assert good.kind is SpanKind.SERVER
    assert format(good.context.trace_id, "032x") == TRACE_ID
    assert good.parent is not None and format(good.parent.span_id, "016x") == PARENT_ID
    assert good.attributes is not None and good.attributes["http.response.status_code"] == 200
    assert good.attributes["runtime_core.model"] == "echo"
    [queue] = by_name(spans, "queue")
    [compute] = by_name(spans, "compute")
    for child in (queue, compute):
        assert child.parent is not None and child.parent.span_id == good.context.span_id
        assert child.context.trace_id == good.context.trace_id
    assert good.start_time is not None and good.end_time is not None
    assert queue.start_time is not None and queue.end_time is not None
    assert compute.start_time is not None and compute.end_time is not None
    assert good.start_time <= queue.start_time <= queue.end_time == compute.start_time
    assert compute.start_time < compute.end_time <= good.end_time
    assert compute.attributes is not None and compute.attributes["runtime_core.batch"] == 1

    # The bad request starts its own trace and has no worker spans.
    assert bad.parent is None and bad.context.trace_id != good.context.trace_id
    assert bad.attributes is not None and bad.attributes["http.response.status_code"] == 400
    assert bad.attributes["runtime_core.model_version"] == "1"
    assert bad.status.status_code is StatusCode.UNSET  # a client error is not the server's


def test_off_by_default(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    write_model(tmp_path / "echo", name="echo", runtime="echo", parameters={"version": "1"})
    assert asyncio.run(_traffic(tmp_path, tracing=False)) == [200, 400, 200]
    assert exporter.get_finished_spans() == ()
