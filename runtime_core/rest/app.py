"""The aiohttp application factory and the HTTP server."""

from __future__ import annotations

from aiohttp import web

from runtime_core.repository import ModelRepository
from runtime_core.rest.keys import REPOSITORY, SCHEDULER, SETTINGS, STATE, ServerState
from runtime_core.rest.middlewares import error_middleware
from runtime_core.rest.routes import setup_routes
from runtime_core.scheduler import FairScheduler
from runtime_core.settings import ServerSettings


def create_app(
    settings: ServerSettings, repository: ModelRepository, scheduler: FairScheduler, state: ServerState
) -> web.Application:
    # The body limit is enforced twice: by Content-Length before reading (handlers.infer)
    # and by aiohttp while reading chunked bodies.
    app = web.Application(client_max_size=settings.max_request_size, middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[REPOSITORY] = repository
    app[SCHEDULER] = scheduler
    app[STATE] = state
    setup_routes(app)
    return app


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start listening; returns the runner (to clean up) and the bound port."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    addresses = runner.addresses  # the bound port, when port 0 asked for a free one
    bound = int(addresses[0][1]) if addresses else port
    return runner, bound
