"""What the REST front end gives runtimes that read requests themselves (``Runtime.raw_requests``).

- **Headers.** Such a runtime's requests carry their HTTP headers (lower-case names, as
  MLServer hands them to ``MLModel.predict`` in ``parameters.headers``). Other models'
  requests do not, so they pay nothing for it.
- **The model's own endpoints.** A runtime lists them in ``ModelMetadata.endpoints``
  (``(method, path)``, e.g. MLServer's ``@custom_handler(rest_path=...)``). Models load and
  unload while the server runs and aiohttp's route table is fixed once it serves, so one
  catch-all route, registered after every V2 route, looks the path up among the READY
  models and forwards the call to that model's pool like an inference
  (:attr:`~runtime_core.envelope.Wire.CUSTOM`): it runs in the model's worker, under the
  model's queue, fair share and deadline. A path no model claims keeps its 404 (or 405
  where another route takes the path with another method).
"""

from __future__ import annotations

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from runtime_core.envelope import Envelope, Wire
from runtime_core.errors import InvalidRequest
from runtime_core.repository import ModelRecord, ModelState
from runtime_core.rest.keys import DATAPLANE, OBSERVATION

__all__ = ["forwarded_headers", "setup_custom_routes"]


def forwarded_headers(record: ModelRecord, headers: CIMultiDictProxy[str]) -> bytes:
    """The request's headers for ``record``'s runtime (JSON, lower-case names), or ``b""``
    when its runtime does not read requests itself."""
    if not record.raw_requests:
        return b""
    return orjson.dumps({name.lower(): value for name, value in headers.items()})


def _owner(request: web.Request) -> tuple[ModelRecord | None, set[str]]:
    """The READY model that serves ``request``'s method and path as an endpoint of its own,
    else ``None`` and the methods that models serve at this path."""
    method, path = request.method.upper(), request.path
    others: set[str] = set()
    for record in request.app[DATAPLANE].repository.records():
        meta = record.metadata if record.state is ModelState.READY else None
        if meta is None:
            continue
        for endpoint_method, endpoint_path in meta.endpoints:
            if endpoint_path == path:
                if endpoint_method == method:
                    return record, others
                others.add(endpoint_method)
    return None, others


async def _not_routed(request: web.Request, allowed: set[str]) -> web.Response:
    """The answer aiohttp would have given without the catch-all: 405 if another route (or a
    model's endpoint) takes this path with another method, else 404."""
    for resource in request.app.router.resources():
        if any(route.handler is endpoint for route in resource):  # the catch-all itself
            continue
        _match, methods = await resource.resolve(request)
        allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
    raise web.HTTPNotFound()


async def endpoint(request: web.Request) -> web.Response:
    """Forward a call of a model's own endpoint to the model's pool."""
    record, allowed = _owner(request)
    if record is None:
        return await _not_routed(request, allowed)
    try:
        text = (await request.read()).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not UTF-8 text") from None
    call = {"method": request.method.upper(), "path": request.path, "query": dict(request.query), "body": text}
    plane = request.app[DATAPLANE]
    envelope = Envelope(orjson.dumps(call), wire=Wire.CUSTOM, headers=forwarded_headers(record, request.headers))
    outcome = await plane.infer(record.key, envelope, request.get(OBSERVATION))
    return web.Response(body=outcome.body, content_type="application/json")


_CATCH_ALL = "/{_endpoint_path:.*}"


def setup_custom_routes(app: web.Application) -> None:
    """Register the catch-all route; call it last, after every other route."""
    app.router.add_route("*", _CATCH_ALL, endpoint)
