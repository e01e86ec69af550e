"""V2 endpoint handlers: a thin adapter from HTTP to the :class:`~runtime_core.dataplane.DataPlane`.

Each handler reads what the request says (path, headers, body), asks the data
plane, and writes the answer as JSON; errors are raised and become statuses in
:mod:`runtime_core.rest.middlewares`. The infer handler routes bytes: it never
parses tensors; the worker does.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable, Iterator

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from runtime_core.codecs.validation import SHARED_MEMORY_UNSUPPORTED
from runtime_core.envelope import Envelope, Wire
from runtime_core.errors import InvalidRequest
from runtime_core.rest.custom import forwarded_headers
from runtime_core.rest.keys import DATAPLANE, METRICS, OBSERVATION, OPENAPI, SETTINGS

HEADER_LENGTH = "Inference-Header-Content-Length"
TIMEOUT_HEADER = "Request-Timeout"


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _model(request: web.Request) -> tuple[str, str | None]:
    return request.match_info["model"], request.match_info.get("version")


async def live(request: web.Request) -> web.Response:
    return _json({"live": request.app[DATAPLANE].live()})


# Readiness is a boolean carried by the status (Open Inference Protocol, health): 200 for
# true, 4xx for false; 400 as Triton answers. The JSON body stays for humans.
NOT_READY = 400


async def ready(request: web.Request) -> web.Response:
    is_ready = request.app[DATAPLANE].ready()
    return _json({"ready": is_ready}, 200 if is_ready else NOT_READY)


async def server_metadata(request: web.Request) -> web.Response:
    return _json(request.app[DATAPLANE].server_metadata())


async def model_metadata(request: web.Request) -> web.Response:
    return _json(request.app[DATAPLANE].model_metadata(*_model(request)))


async def model_config(request: web.Request) -> web.Response:
    return _json(request.app[DATAPLANE].model_config(*_model(request)))


async def shared_memory(request: web.Request) -> web.Response:
    """Triton's shared-memory extension: its status, register and unregister endpoints."""
    raise InvalidRequest(SHARED_MEMORY_UNSUPPORTED)


async def model_ready(request: web.Request) -> web.Response:
    name, is_ready = request.app[DATAPLANE].model_ready(*_model(request))
    return _json({"name": name, "ready": is_ready}, 200 if is_ready else NOT_READY)


def _deadline(request: web.Request) -> float:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidRequest(f"{TIMEOUT_HEADER} must be a number of seconds") from None
    if not (seconds > 0 and math.isfinite(seconds)):  # "inf" and "nan" parse as floats
        raise InvalidRequest(f"{TIMEOUT_HEADER} must be a positive, finite number of seconds")
    return time.time() + seconds


async def _body(request: web.Request) -> bytes:
    """The whole body. It must keep arriving: a pause longer than ``read_timeout`` is 408, so
    a client that trickles or stalls cannot hold a connection and a buffer forever, while a
    large body on a slow but steady link is fine. Over ``max_request_size``: 413."""
    settings = request.app[SETTINGS]
    content = request.content
    if content.is_eof():
        # The whole body came in with the headers (most small requests): take it as it is, with
        # no timer, no buffer and no copy (issue 23).
        whole = content.read_nowait()
        if len(whole) > settings.max_request_size:
            raise web.HTTPRequestEntityTooLarge(max_size=settings.max_request_size, actual_size=len(whole))
        return whole
    loop = asyncio.get_running_loop()
    body = bytearray()
    try:
        # One timer, moved on at every chunk: no task per request on the hot path.
        async with asyncio.timeout(settings.read_timeout) as pause:
            while chunk := await request.content.readany():
                body += chunk
                if len(body) > settings.max_request_size:
                    raise web.HTTPRequestEntityTooLarge(max_size=settings.max_request_size, actual_size=len(body))
                pause.reschedule(loop.time() + settings.read_timeout)
    except TimeoutError:
        raise web.HTTPRequestTimeout() from None
    return bytes(body)


def _header_length(request: web.Request) -> int:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return -1
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequest(f"{HEADER_LENGTH} must be a non-negative integer")
    return int(raw)


async def infer(request: web.Request) -> web.Response:
    plane = request.app[DATAPLANE]
    # Looked up only when set: a missing key costs the request mapping a KeyError.
    observation = request.get(OBSERVATION) if plane.observing else None
    record = plane.ready_model(*_model(request), observation)
    declared = request.content_length
    if declared is not None:
        plane.check_size(declared)
    arrived = time.time()
    header_length, deadline = _header_length(request), _deadline(request)
    body = await _body(request)
    if header_length > len(body):
        raise InvalidRequest(f"{HEADER_LENGTH} is larger than the request body")
    wire = Wire.JSON if header_length < 0 else Wire.BINARY
    envelope = Envelope(
        body,
        wire=wire,
        header_length=max(header_length, 0),
        deadline=deadline,
        arrived=arrived,
        headers=forwarded_headers(record, request.headers),
    )
    outcome = await plane.infer(record.key, envelope, observation)
    if outcome.wire is Wire.JSON:
        return web.Response(body=outcome.body, content_type="application/json")
    return web.Response(
        body=outcome.body,
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(outcome.header_length)},
    )


async def _optional_json(request: web.Request) -> dict[str, object]:
    raw = await _body(request)
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
    """The repository endpoints: the data plane's access rule on the ``Authorization`` header."""

    @functools.wraps(handler)
    async def guard(request: web.Request) -> web.Response:
        request.app[DATAPLANE].authorize(request.headers.get("Authorization"))
        return await handler(request)

    return guard


@_guarded
async def repository_index(request: web.Request) -> web.Response:
    doc = await _optional_json(request)
    ready_only = doc.get("ready") or False  # absent or null: every model
    if not isinstance(ready_only, bool):
        raise InvalidRequest("'ready' must be true or false")
    return _json(await request.app[DATAPLANE].repository_index(ready_only))


@_guarded
async def repository_load(request: web.Request) -> web.Response:
    await _optional_json(request)
    return _json(await request.app[DATAPLANE].load(request.match_info["model"]))


@_guarded
async def repository_unload(request: web.Request) -> web.Response:
    await _optional_json(request)
    return _json(await request.app[DATAPLANE].unload(request.match_info["model"]))


async def metrics(request: web.Request) -> web.Response:
    chunks, content_type = request.app[METRICS].chunks(request.headers.get("Accept", ""))
    return web.Response(body=_Chunks(chunks, content_type), headers={"Content-Type": content_type})


class _Chunks(Payload):
    """A body sent as it is written, a chunk at a time (HTTP/1.1 chunked transfer encoding):
    /metrics at ten thousand models is 55 MB of text, which is then never held at once, and
    the event loop serves other requests between chunks (see
    :meth:`~runtime_core.metrics.ServerMetrics.chunks`). Chunks smaller than :attr:`SEND` are
    sent together."""

    SEND = 256 * 1024

    def __init__(self, chunks: Iterator[bytes], content_type: str) -> None:
        super().__init__(chunks, content_type=content_type)
        self._chunks = chunks

    async def write(self, writer: AbstractStreamWriter) -> None:
        pending: list[bytes] = []
        size = 0
        for chunk in self._chunks:
            pending.append(chunk)
            size += len(chunk)
            if size >= self.SEND:
                await writer.write(b"".join(pending))
                pending.clear()
                size = 0
            await asyncio.sleep(0)  # a write returns at once while the client keeps up
        if pending:
            await writer.write(b"".join(pending))

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._chunks).decode(encoding, errors)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
