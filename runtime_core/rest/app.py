"""The aiohttp application factory and the HTTP server."""

from __future__ import annotations

import importlib.resources
import logging

import orjson
from aiohttp import web

from runtime_core import __version__
from runtime_core.dataplane import DataPlane
from runtime_core.metrics import ServerMetrics
from runtime_core.rest.keys import DATAPLANE, METRICS, OPENAPI, SETTINGS, STATISTICS
from runtime_core.rest.middlewares import error_middleware
from runtime_core.rest.routes import setup_routes
from runtime_core.stats import ServerStatistics


def create_app(
    dataplane: DataPlane, metrics: ServerMetrics | None = None, statistics: ServerStatistics | None = None
) -> web.Application:
    settings = dataplane.settings
    # The body limit is enforced twice: by Content-Length before reading (handlers.infer)
    # and by aiohttp while reading chunked bodies.
    app = web.Application(client_max_size=settings.max_request_size, middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[DATAPLANE] = dataplane
    app[METRICS] = metrics or ServerMetrics(dataplane.scheduler, dataplane.repository)
    app[STATISTICS] = statistics or ServerStatistics(dataplane.scheduler, dataplane.repository)
    app[OPENAPI] = openapi_document()
    setup_routes(app)
    return app


def openapi_document() -> bytes:
    """The shipped OpenAPI document, with this server's version in ``info.version``."""
    doc = orjson.loads(importlib.resources.files("runtime_core.rest").joinpath("openapi.json").read_bytes())
    doc["info"]["version"] = __version__
    return orjson.dumps(doc)


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start listening; returns the runner (to clean up) and the bound port."""
    access_log = logging.getLogger("aiohttp.access") if app[SETTINGS].access_log else None
    runner = web.AppRunner(app, access_log=access_log, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    addresses = runner.addresses  # the bound port, when port 0 asked for a free one
    bound = int(addresses[0][1]) if addresses else port
    return runner, bound
