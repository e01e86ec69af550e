"""Maps errors to HTTP statuses and V2 error bodies ``{"error": "..."}``; the app's other
middlewares (drain, CORS, and observing inference requests).

This is the only place that knows HTTP status codes for
:class:`~runtime_core.errors.RuntimeCoreError` subclasses. Unexpected
exceptions become a 500 with a generic message; the traceback goes to the log,
never to the client.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from runtime_core import errors
from runtime_core.dataplane import DataPlane
from runtime_core.requestlog import REQUEST_ID
from runtime_core.rest.keys import DATAPLANE, OBSERVATION
from runtime_core.sanitize import client_message
from runtime_core.settings import CorsSettings

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
            408: "the request body stalled for longer than read_timeout",
            413: "request body too large",
        }.get(exc.status, exc.reason)
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


#: Request headers a browser may always send (CORS "safelisted"), so never refused.
_SAFE_HEADERS = ("Accept", "Accept-Language", "Content-Language", "Content-Type")
#: What ``allow_methods: ["*"]`` allows, and how a preflight lists it (as MLServer does).
_ALL_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def cors_middleware(cors: CorsSettings) -> Middleware:
    """CORS as MLServer's ``cors_settings`` describe it, answering as MLServer 1.7 does (its
    Starlette CORSMiddleware). Written here rather than with aiohttp-cors, which has no
    origin regular expression and wants every route registered with it.

    A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered here, 200
    when allowed, else 400 ``{"error": ...}`` naming what is not: either way with the same
    ``Access-Control-*`` headers (allowed methods, allowed headers with the safelisted ones,
    max age, credentials; the origin only when it is allowed), so a browser's console shows
    the policy. Any other request from an allowed origin gets ``Access-Control-Allow-Origin``
    (and the credentials and exposed-headers headers) on whatever it is answered, errors
    included."""
    any_origin = "*" in cors.allow_origins
    origins = frozenset(cors.allow_origins)
    pattern = re.compile(cors.allow_origin_regex) if cors.allow_origin_regex else None
    any_method = "*" in cors.allow_methods
    allowed_methods = _ALL_METHODS if any_method else tuple(m.upper() for m in cors.allow_methods)
    any_header = "*" in cors.allow_headers
    listed_headers = sorted(set(_SAFE_HEADERS) | set(cors.allow_headers))
    allowed_headers = frozenset(h.lower() for h in listed_headers)
    # With credentials a preflight names the origin rather than "*" (browsers refuse "*" then).
    explicit_origin = not any_origin or cors.allow_credentials
    preflight_headers = {"Vary": "Origin"} if explicit_origin else {"Access-Control-Allow-Origin": "*"}
    preflight_headers["Access-Control-Allow-Methods"] = ", ".join(allowed_methods)
    preflight_headers["Access-Control-Max-Age"] = str(cors.max_age)
    if not any_header:
        preflight_headers["Access-Control-Allow-Headers"] = ", ".join(listed_headers)
    if cors.allow_credentials:
        preflight_headers["Access-Control-Allow-Credentials"] = "true"

    def origin_allowed(origin: str) -> bool:
        return any_origin or origin in origins or bool(pattern and pattern.fullmatch(origin))

    def allow_origin(origin: str, headers: dict[str, str]) -> None:
        if any_origin and not cors.allow_credentials:
            headers["Access-Control-Allow-Origin"] = "*"
        else:  # echo the origin: "*" does not work with credentials
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
        if cors.allow_credentials:
            headers["Access-Control-Allow-Credentials"] = "true"

    def preflight(request: web.Request, origin: str, wanted: str) -> web.Response:
        headers = dict(preflight_headers)
        asked = request.headers.get("Access-Control-Request-Headers")
        refused = []
        if origin_allowed(origin):
            if explicit_origin:
                headers["Access-Control-Allow-Origin"] = origin
        else:
            refused.append("origin")
        if wanted.upper() not in allowed_methods:
            refused.append("method")
        if any_header and asked is not None:
            headers["Access-Control-Allow-Headers"] = asked
        elif asked is not None and any(h.strip().lower() not in allowed_headers for h in asked.split(",")):
            refused.append("headers")
        if refused:
            return error_response(400, f"CORS preflight refused: disallowed {', '.join(refused)}", headers)
        return web.Response(status=200, text="OK", headers=headers)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        wanted = request.headers.get("Access-Control-Request-Method")
        if request.method == "OPTIONS" and wanted is not None:
            return preflight(request, origin, wanted)
        response = await handler(request)
        if origin_allowed(origin):
            extra: dict[str, str] = {}
            allow_origin(origin, extra)
            if cors.expose_headers:
                extra["Access-Control-Expose-Headers"] = ", ".join(cors.expose_headers)
            response.headers.update(extra)
        return response

    return middleware


def observe_middleware(plane: DataPlane) -> Middleware:
    """Observe inference requests (paths ending in ``/infer``) with ``request_log`` or ``tracing``
    on: the span and the log line are the data plane's (:meth:`DataPlane.observe`); this adds
    what only HTTP knows. It sits outside the other middlewares, so that refusals and errors
    are observed as the responses they became. The request id is the client's
    ``X-Request-ID``, else one made up, and goes back in that header. A status of 500 or more
    marks the span failed; a client's error (4xx) does not."""

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.rstrip("/").endswith("/infer"):
            return await handler(request)
        model = request.match_info.get("model", "")
        version = request.match_info.get("version")
        attributes = {"http.request.method": request.method, "url.path": request.path, "runtime_core.model": model}
        if version:
            attributes["runtime_core.model_version"] = version
        with plane.observe(
            "http",
            carrier=request.headers,  # case-insensitive, as the propagator's lookups need
            request_id=request.headers.get(REQUEST_ID),
            span_name=f"infer {model}",
            attributes=attributes,
            model=model,
            version=version or "",
        ) as observation:
            request[OBSERVATION] = observation
            response = await handler(request)
            body = getattr(response, "body", None)
            observation.finish(
                status=response.status,
                status_attribute="http.response.status_code",
                failed=response.status >= 500,
                bytes_in=request.content_length or 0,
                bytes_out=len(body) if isinstance(body, bytes | bytearray) else (response.content_length or 0),
            )
            if observation.request_id:
                response.headers[REQUEST_ID] = observation.request_id
            return response

    return observe
