"""Maps errors to HTTP statuses and V2 error bodies ``{"error": "..."}``.

This is the only place that knows HTTP status codes for
:class:`~runtime_core.errors.RuntimeCoreError` subclasses. Unexpected
exceptions become a 500 with a generic message; the traceback goes to the log,
never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from runtime_core import errors
from runtime_core.rest.keys import DATAPLANE
from runtime_core.sanitize import client_message

log = logging.getLogger("runtime_core.rest")

STATUS: dict[type[errors.RuntimeCoreError], int] = {
    errors.InvalidRequest: 400,
    errors.SettingsError: 400,
    errors.RuntimeNotFound: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.ModelNotFound: 404,
    errors.PayloadTooLarge: 413,
    errors.InferenceFailed: 500,
    errors.ModelLoadError: 500,
    errors.PluginError: 500,
    errors.ModelNotReady: 503,
    errors.WorkerDied: 503,
    errors.QueueFull: 503,
    errors.ShuttingDown: 503,
    errors.DeadlineExceeded: 504,
}


def status_of(error: errors.RuntimeCoreError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.RuntimeCoreError as exc:
        headers = None
        if isinstance(exc, errors.QueueFull):
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        elif isinstance(exc, errors.Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        message = exc.message
        if isinstance(exc, errors.SettingsError):  # settings errors name server files: keep them in the log
            log.warning("%s", exc.message)
            message = client_message(exc.message)
        return error_response(status_of(exc), message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = {
            404: "not found",
            405: "method not allowed",
            408: "the request body did not arrive within read_timeout",
            413: "request body too large",
        }.get(
            exc.status, exc.reason
        )
        return error_response(exc.status, reason, {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None)
    except Exception:
        log.exception("unexpected error handling %s %s", request.method, request.path)
        return error_response(500, "internal server error")


#: Paths answered normally while the server drains: probes must see it draining.
_HEALTH = frozenset({"/v2/health/live", "/v2/health/ready"})


@web.middleware
async def drain_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """After SIGTERM: health answers as usual (ready is false), every other request gets 503
    "the server is shutting down"; every answer closes its connection, so keep-alive
    clients go elsewhere before the listener closes. Requests accepted before still run."""
    if not request.app[DATAPLANE].state.draining:
        return await handler(request)
    if request.path.rstrip("/") in _HEALTH:
        response = await handler(request)
    else:
        response = error_response(503, "the server is shutting down")
    response.force_close()
    return response
