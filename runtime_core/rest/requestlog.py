"""The request log: one JSON line per inference request, when ``request_log`` is on.

Each line holds what the server measured anyway: the model and version from the URL,
the HTTP status, a request id (the client's ``X-Request-ID``, else one made up here and
sent back in that header), the body sizes in and out, and the seconds the request spent
in its model's queue (``queue_ms``, from the scheduler), in the worker (``compute_ms``,
as the worker reports it) and in the server in all (``total_ms``, from the first byte
handled to the response). Requests that no worker answered (refused, queue full, model
not ready) have ``null`` queue and compute times.

Lines go to stderr through the logger ``runtime_core.requests``, as bare JSON objects
whatever ``log_format`` says, so that a log shipper can parse them line by line.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from runtime_core.envelope import Outcome
from runtime_core.rest.keys import OUTCOME

REQUEST_ID = "X-Request-ID"
log = logging.getLogger("runtime_core.requests")


def _setup_logger() -> None:
    """A handler of its own that writes the message as it is (one JSON object per line)."""
    if not any(getattr(h, "_rc_request_log", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._rc_request_log = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # not again through the server's own (text or JSON) handler


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def request_log_middleware() -> Middleware:
    """The middleware; it logs inference requests only (paths ending in ``/infer``)."""
    _setup_logger()

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
        queue = compute = None
        if isinstance(outcome, Outcome):
            queue, compute = _ms(outcome.queued), _ms(outcome.compute)
        body = getattr(response, "body", None)
        line = {
            "time": round(time.time(), 3),
            "model": request.match_info.get("model"),
            "version": request.match_info.get("version"),
            "status": response.status,
            "request_id": request_id,
            "bytes_in": request.content_length or 0,
            "bytes_out": len(body) if isinstance(body, bytes | bytearray) else (response.content_length or 0),
            "queue_ms": queue,
            "compute_ms": compute,
            "total_ms": _ms(total),
        }
        log.info("%s", orjson.dumps(line).decode())
        return response

    return request_log
