"""The V2 route table, in one function."""

from __future__ import annotations

from aiohttp import web

from runtime_core.rest import handlers
from runtime_core.rest.custom import setup_custom_routes
from runtime_core.rest.status import setup_status_routes
from runtime_core.rest.swagger import setup_swagger_routes


def setup_routes(app: web.Application) -> None:
    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    # Inference first: aiohttp tries the routes under /v2/models one regular expression at a
    # time, in the order they were added, and no other route matches a path ending in /infer.
    for base in (model, versioned):
        app.router.add_post(base + "/infer", handlers.infer)
    setup_status_routes(app)  # before the model routes: /v2/models/stats is not a model's metadata
    app.router.add_get("/v2/health/live", handlers.live)
    app.router.add_get("/v2/health/ready", handlers.ready)
    app.router.add_get("/v2", handlers.server_metadata)
    for base in (model, versioned):
        app.router.add_get(base, handlers.model_metadata)
        app.router.add_get(base + "/ready", handlers.model_ready)
        app.router.add_get(base + "/config", handlers.model_config)
    app.router.add_post("/v2/repository/index", handlers.repository_index)
    app.router.add_post("/v2/repository/models/{model}/load", handlers.repository_load)
    app.router.add_post("/v2/repository/models/{model}/unload", handlers.repository_unload)
    app.router.add_get("/v2/docs/openapi.json", handlers.openapi)
    app.router.add_get("/v2/docs/dataplane.json", handlers.openapi)  # MLServer's name for it
    setup_swagger_routes(app)
    # Triton's shared-memory extension, refused with a clear 400 rather than a 404
    for kind in ("systemsharedmemory", "cudasharedmemory"):
        app.router.add_get(f"/v2/{kind}/status", handlers.shared_memory)
        app.router.add_get(f"/v2/{kind}/region/{{region}}/status", handlers.shared_memory)
        app.router.add_post(f"/v2/{kind}/region/{{region}}/register", handlers.shared_memory)
        app.router.add_post(f"/v2/{kind}/region/{{region}}/unregister", handlers.shared_memory)
        app.router.add_post(f"/v2/{kind}/unregister", handlers.shared_memory)
    app.router.add_get("/metrics", handlers.metrics)
    _with_trailing_slashes(app)
    setup_custom_routes(app)  # last: a catch-all for the endpoints of models' own (rest/custom.py)


def _with_trailing_slashes(app: web.Application) -> None:
    """Every route answers with and without a trailing slash, the same answer (``GET /v2/``
    is ``GET /v2``): clients that append one get no 404, and no redirect that a POST would
    not follow."""
    twins = [
        (route.method, resource.canonical + "/", route.handler)
        for resource in list(app.router.resources())
        if not resource.canonical.endswith("/")
        for route in resource
    ]
    for method, path, handler in twins:
        app.router.add_route(method, path, handler)
