"""V2 endpoint handlers: thin, no business logic.

The infer handler routes bytes: it reads the body, hands it to the scheduler
and returns the worker's bytes. It never parses tensors; the worker does.
"""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from runtime_core import __version__
from runtime_core.envelope import Envelope, Wire
from runtime_core.errors import Forbidden, InvalidRequest, ModelNotReady, PayloadTooLarge, error_from_code
from runtime_core.repository import ModelRecord, ModelState
from runtime_core.rest.keys import METRICS, OPENAPI, REPOSITORY, SCHEDULER, SETTINGS, STATE
from runtime_core.rest.middlewares import error_response

EXTENSIONS = ["model_repository", "binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"
TIMEOUT_HEADER = "Request-Timeout"


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _record(request: web.Request) -> ModelRecord:
    info = request.match_info
    return request.app[REPOSITORY].get(info["model"], info.get("version"))


async def live(request: web.Request) -> web.Response:
    return _json({"live": True})


async def ready(request: web.Request) -> web.Response:
    is_ready = request.app[STATE].ready
    return _json({"ready": is_ready}, 200 if is_ready else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return _json({"name": "runtime-core", "version": __version__, "extensions": EXTENSIONS})


async def model_metadata(request: web.Request) -> web.Response:
    record = _record(request)
    if record.state is not ModelState.READY or record.metadata is None:
        raise ModelNotReady(f"model {record.name!r} is not ready ({record.state.value})", model=record.name)
    meta = record.metadata
    body: dict[str, object] = {"name": record.name, "platform": meta.platform or record.runtime}
    if record.version:
        body["versions"] = [record.version]
    body["inputs"] = [t.to_json() for t in meta.inputs]
    body["outputs"] = [t.to_json() for t in meta.outputs]
    return _json(body)


async def model_ready(request: web.Request) -> web.Response:
    record = _record(request)
    is_ready = record.state is ModelState.READY
    return _json({"name": record.name, "ready": is_ready}, 200 if is_ready else 503)


def _deadline(request: web.Request) -> float:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidRequest(f"{TIMEOUT_HEADER} must be a number of seconds") from None
    if not seconds > 0:
        raise InvalidRequest(f"{TIMEOUT_HEADER} must be positive")
    return time.time() + seconds


def _header_length(request: web.Request) -> int:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return -1
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequest(f"{HEADER_LENGTH} must be a non-negative integer")
    return int(raw)


async def infer(request: web.Request) -> web.Response:
    record = _record(request)
    if record.state is not ModelState.READY:
        raise ModelNotReady(f"model {record.name!r} is not ready ({record.state.value})", model=record.name)
    limit = request.app[SETTINGS].max_request_size
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes is over the limit of {limit}")
    arrived = time.time()
    header_length, deadline = _header_length(request), _deadline(request)
    body = await request.read()
    if header_length > len(body):
        raise InvalidRequest(f"{HEADER_LENGTH} is larger than the request body")
    wire = Wire.JSON if header_length < 0 else Wire.BINARY
    envelope = Envelope(body, wire, max(header_length, 0), deadline, arrived)
    outcome = await request.app[SCHEDULER].submit(record.name, envelope)
    if outcome.code:
        raise error_from_code(outcome.code, outcome.body.decode("utf-8", "replace"), model=record.name)
    if outcome.wire is Wire.JSON:
        return web.Response(body=outcome.body, content_type="application/json")
    return web.Response(
        body=outcome.body,
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(outcome.header_length)},
    )


async def _optional_json(request: web.Request) -> dict[str, object]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return doc


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _guarded(handler: Handler) -> Handler:
    """The repository endpoints: 403 when ``repository_api`` is off; with ``repository_token``
    set, 401 (and ``WWW-Authenticate: Bearer``) unless ``Authorization: Bearer <token>``."""

    @functools.wraps(handler)
    async def guard(request: web.Request) -> web.Response:
        settings = request.app[SETTINGS]
        if not settings.repository_api:
            raise Forbidden("the repository API is disabled on this server (repository_api is false)")
        token = settings.repository_token
        if token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return error_response(
                    401, "the repository API needs 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
                )
        return await handler(request)

    return guard


@_guarded
async def repository_index(request: web.Request) -> web.Response:
    doc = await _optional_json(request)
    ready_only = doc.get("ready") or False  # absent or null: every model
    if not isinstance(ready_only, bool):
        raise InvalidRequest("'ready' must be true or false")
    return _json(request.app[REPOSITORY].index(ready_only=ready_only))


@_guarded
async def repository_load(request: web.Request) -> web.Response:
    await _optional_json(request)
    record = await request.app[REPOSITORY].load(request.match_info["model"])
    return _json({"name": record.name, "state": record.state.value})


@_guarded
async def repository_unload(request: web.Request) -> web.Response:
    await _optional_json(request)
    await request.app[REPOSITORY].unload(request.match_info["model"])
    return _json({"name": request.match_info["model"], "state": ModelState.UNAVAILABLE.value})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
