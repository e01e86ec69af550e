"""The request log of the REST front end: one JSON line per inference request, when
``request_log`` is on (the writer: :mod:`runtime_core.requestlog`).

Each line holds what the server measured anyway: ``"protocol": "http"``, the model and the
version that served it (the one the unversioned route picked; else the URL's), the HTTP
status, a request id (the client's ``X-Request-ID``, else one
made up here and sent back in that header), the body sizes in and out, and the seconds the
request spent in its model's queue (``queue_ms``, from the scheduler), in the worker
(``compute_ms``, as the worker reports it) and in the server in all (``total_ms``, from the
first byte handled to the response). Requests that no worker answered (refused, queue
full, model not ready) have ``null`` queue and compute times.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from runtime_core import requestlog
from runtime_core.envelope import Outcome
from runtime_core.requestlog import REQUEST_ID
from runtime_core.rest.keys import OUTCOME, SERVED_VERSION


def request_log_middleware() -> Middleware:
    """The middleware; it logs inference requests only (paths ending in ``/infer``)."""
    requestlog.setup()

    @web.middleware
    async def request_log(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.rstrip("/").endswith("/infer"):
            return await handler(request)
        started = time.perf_counter()
        request_id = request.headers.get(REQUEST_ID) or uuid.uuid4().hex
        response = await handler(request)
        total = time.perf_counter() - started
        response.headers[REQUEST_ID] = request_id
        outcome = request.get(OUTCOME)
        body = getattr(response, "body", None)
        requestlog.write(
            protocol="http",
            model=request.match_info.get("model"),
            version=request.get(SERVED_VERSION) or request.match_info.get("version"),
            status=response.status,
            request_id=request_id,
            bytes_in=request.content_length or 0,
            bytes_out=len(body) if isinstance(body, bytes | bytearray) else (response.content_length or 0),
            outcome=outcome if isinstance(outcome, Outcome) else None,
            total=total,
        )
        return response

    return request_log
