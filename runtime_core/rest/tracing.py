"""OpenTelemetry tracing of inference requests (the ``tracing`` extra), when ``tracing`` is on.

One span per inference request in the main process, a child of the caller's trace when the
request carries a W3C ``traceparent`` header, with two child spans built from what the
server measured anyway: ``queue`` (the wait in the model's queue, from the scheduler) and
``compute`` (decode, predict and encode in the worker, as the worker reports it, with the
three parts and the batch size as attributes). The two child spans are laid back to back,
ending when the answer came back; the transfer between the main process and the worker
(tens of microseconds) is not drawn. Workers do not make spans of their own.

Spans go to whatever tracer provider the application configured (for instance with
``opentelemetry-instrument`` and the ``OTEL_*`` variables); with none, nothing is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from runtime_core.envelope import Outcome
from runtime_core.rest.keys import OUTCOME


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def tracing_middleware() -> Middleware:
    """The middleware; ``ImportError`` if the ``tracing`` extra is not installed."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tracer = trace.get_tracer("runtime_core")

    @web.middleware
    async def tracing(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.rstrip("/").endswith("/infer"):
            return await handler(request)
        model = request.match_info.get("model", "")
        attributes = {"http.request.method": request.method, "url.path": request.path, "runtime_core.model": model}
        version = request.match_info.get("version")
        if version:
            attributes["runtime_core.model_version"] = version
        parent = propagate.extract(dict(request.headers))
        with tracer.start_as_current_span(f"infer {model}", context=parent, kind=SpanKind.SERVER) as span:
            span.set_attributes(attributes)
            response = await handler(request)
            answered = time.time_ns()
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            outcome = request.get(OUTCOME)
            if isinstance(outcome, Outcome):
                computing = answered - _ns(outcome.compute)
                queued = computing - _ns(outcome.queued)
                tracer.start_span("queue", start_time=queued).end(end_time=computing)
                compute = tracer.start_span(
                    "compute",
                    start_time=computing,
                    attributes={
                        "runtime_core.decode_ms": outcome.decode * 1000,
                        "runtime_core.predict_ms": outcome.predict * 1000,
                        "runtime_core.encode_ms": outcome.encode * 1000,
                        "runtime_core.batch": outcome.batch,
                    },
                )
                compute.end(end_time=answered)
            return response

    return tracing
