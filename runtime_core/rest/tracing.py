"""The REST front end's tracing (``tracing = true``): a span per inference request.

A thin middleware over :class:`runtime_core.tracing.RequestTracer` (see there for the spans
and how their context reaches the worker): it reads the caller's ``traceparent`` from the
HTTP headers, hands the request span's own ``traceparent`` to the infer handler (request key
:data:`~runtime_core.rest.keys.TRACEPARENT`) for the envelope, and records the HTTP status.
A status of 500 or more marks the span as failed; a client's error (4xx) does not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from runtime_core.envelope import Outcome
from runtime_core.rest.keys import OUTCOME, TRACEPARENT
from runtime_core.tracing import RequestTracer


def tracing_middleware() -> Middleware:
    """The middleware; ``ImportError`` if the ``tracing`` extra is not installed."""
    tracer = RequestTracer()

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
        # The headers' mapping is case-insensitive, as the propagator's lookups need.
        with tracer.request(f"infer {model}", request.headers, attributes) as span:
            request[TRACEPARENT] = span.traceparent
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.failed()
            outcome = request.get(OUTCOME)
            if isinstance(outcome, Outcome):
                span.answered(outcome)
            return response

    return tracing
