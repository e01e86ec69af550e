"""The aiohttp application factory and the HTTP server."""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from runtime_core import __version__
from runtime_core.dataplane import DataPlane
from runtime_core.metrics import ServerMetrics
from runtime_core.rest.handlers import metrics
from runtime_core.rest.keys import DATAPLANE, METRICS, OPENAPI, SETTINGS, STATISTICS
from runtime_core.rest.listener import BACKLOG, accept_queue, listening_sockets, refuse_new_connections
from runtime_core.rest.middlewares import cors_middleware, drain_middleware, error_middleware, observe_middleware
from runtime_core.rest.routes import setup_routes
from runtime_core.stats import ServerStatistics


def create_app(
    dataplane: DataPlane, metrics: ServerMetrics | None = None, statistics: ServerStatistics | None = None
) -> web.Application:
    settings = dataplane.settings
    # The body limit is enforced twice: by Content-Length before reading (handlers.infer)
    # and by aiohttp while reading chunked bodies.
    # Observing sits outside the others, so that it sees refusals and errors as their responses.
    middlewares: list[Middleware] = [drain_middleware, error_middleware]
    if settings.cors_settings is not None:  # errors and shutdown answers get the CORS headers too
        middlewares.insert(0, cors_middleware(settings.cors_settings))
    if dataplane.observing:
        middlewares.insert(0, observe_middleware(dataplane))
    app = web.Application(client_max_size=settings.max_request_size, middlewares=middlewares)
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


class ProtocolLog:
    """aiohttp's per-connection logger (its ``logger`` argument), made safe to expose.

    aiohttp answers a request it cannot parse (a negative or duplicate Content-Length, bad
    chunking) with 400 itself, before any handler or middleware runs, and logs each one
    with a full traceback: a client could flood the log. Here such parse errors make one
    warning line, at most one per ``interval`` seconds, which counts the ones left out.
    Anything else aiohttp reports keeps its traceback.
    """

    def __init__(self, interval: float = 60.0, logger: logging.Logger | None = None) -> None:
        self.interval = interval
        self.log = logger or logging.getLogger("runtime_core.rest")
        self._next = 0.0
        self._dropped = 0

    def exception(self, msg: str, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        if not isinstance(exc_info, HttpProcessingError):
            self.log.error(msg, *args, exc_info=exc_info or True, **kwargs)
            return
        now = time.monotonic()
        if now < self._next:
            self._dropped += 1
            return
        self._next = now + self.interval
        dropped, self._dropped = self._dropped, 0
        more = f" ({dropped} more in the last {self.interval:g} s)" if dropped else ""
        self.log.warning("malformed HTTP request answered 400: %s%s", exc_info.message, more)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log.debug(msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log.warning(msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log.error(msg, *args, **kwargs)


@dataclass
class HttpServer:
    """The listening HTTP server: its runner and its sockets."""

    runner: web.AppRunner
    sockets: list[socket.socket]

    @property
    def address(self) -> tuple[str, int]:
        """The (first) address and the port it listens on (the bound port when 0 asked for a
        free one)."""
        host, port = self.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self, linger: float, quiet: float = 0.25) -> None:
        """Stop serving HTTP, answering every request that reached the server (issue 20).

        While draining every answer carries ``Connection: close``, so a connection that sends a
        request is answered, then closed. In order:

        1. up to ``linger`` seconds for keep-alive clients to send one more request (answered
           "shutting down") and go, so that a request already on its way finds the socket open;
        2. the port stops taking new connections (their SYNs are dropped: the client tries again
           and then finds the port closed), the handshakes under way complete within ``quiet``
           seconds and are accepted; then the port closes, between two accepts: the kernel
           resets connections it completed that the server had not accepted, and there are none;
        3. connections accepted just before send their first request at once: up to ``quiet``
           seconds for them to be answered. aiohttp's own shutdown would close them at once and
           drop a request that arrives before the close reaches the client;
        4. what is left is idle: closed (FIN, not reset); requests in progress once answered.
        """
        server = self.runner.server
        deadline = time.monotonic() + linger
        while server is not None and server.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for sock in self.sockets:
            refuse_new_connections(sock)
        settled = time.monotonic() + quiet
        deadline = settled + max(linger, quiet)
        while time.monotonic() < deadline and (
            time.monotonic() < settled or any(accept_queue(sock) for sock in self.sockets)
        ):
            await asyncio.sleep(0.002)  # the loop accepts them meanwhile
        for site in self.runner.sites:
            await site.stop()  # no await inside: nothing is accepted between the check and the close
        deadline = time.monotonic() + quiet
        while True:  # the first pass also lets connections accepted last get their handler
            await asyncio.sleep(0.02)
            if server is None or not server.connections or time.monotonic() >= deadline:
                break
        await self.runner.cleanup()


async def serve(app: web.Application, host: str, port: int) -> HttpServer:
    """Start listening on ``host:port``. Raises :class:`OSError` when it cannot."""
    settings = app[SETTINGS]
    access_log = logging.getLogger("aiohttp.access") if settings.access_log else None
    runner = web.AppRunner(
        app,
        access_log=access_log,
        handler_cancellation=True,
        # aiohttp's keep-alive timer runs from the connection (or the previous response)
        # until a request's headers are complete: it is the header read timeout too.
        keepalive_timeout=settings.read_timeout,
        logger=ProtocolLog(),
    )
    sockets = listening_sockets(host, port)
    try:
        await runner.setup()
        for sock in sockets:
            await web.SockSite(runner, sock, backlog=BACKLOG).start()
    except BaseException:
        for sock in sockets:
            sock.close()
        await runner.cleanup()
        raise
    return HttpServer(runner, sockets)


async def serve_metrics(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """A second listener that serves only ``GET /metrics`` of ``app`` (``metrics_port``, where
    MLServer users' Prometheus scrapes). Returns its runner and bound port."""
    metrics_app = web.Application()
    metrics_app[METRICS] = app[METRICS]
    metrics_app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(metrics_app, access_log=None, keepalive_timeout=app[SETTINGS].read_timeout)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port
