"""Swagger UI, as MLServer serves it, working with no internet access.

* ``GET /v2/docs``: Swagger UI on the server's OpenAPI document (``/v2/docs/openapi.json``);
* ``GET /v2/models/{m}/docs``: Swagger UI on one model's document,
  ``/v2/models/{m}/docs/openapi.json``: the server's paths under ``/v2/models/{model}``
  with the model's name written in (so "Try it out" needs no name typed in);
* ``GET /v2/docs/swagger-ui/{name}``: the page's script and style sheet.

Swagger UI itself comes from the ``swagger-ui-bundle`` package, which ships its built
files; the pages load nothing from anywhere but this server. An unknown model's page is 404,
as its metadata is.
"""

from __future__ import annotations

import functools
import html
import importlib.resources
from pathlib import Path
from typing import Any

import orjson
import swagger_ui_bundle
from aiohttp import web

from runtime_core.rest.keys import DATAPLANE, OPENAPI

#: Files under ``/v2/docs/swagger-ui/``: name -> where it is shipped.
_ASSETS: dict[str, Path] = {
    "swagger-ui-bundle.js": Path(str(swagger_ui_bundle.swagger_ui_path)) / "swagger-ui-bundle.js",
    "swagger-ui.css": Path(str(swagger_ui_bundle.swagger_ui_path)) / "swagger-ui.css",
    "swagger-init.js": Path(str(importlib.resources.files("runtime_core.rest").joinpath("static", "swagger-init.js"))),
}
_PREFIX = "/v2/models/{model}"


def _page(title: str, spec: str) -> web.Response:
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        '<link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/v2/docs/swagger-ui/swagger-ui.css"></head>'
        f'<body><div id="swagger-ui" data-spec="{html.escape(spec)}"></div>'
        '<script src="/v2/docs/swagger-ui/swagger-ui-bundle.js"></script>'
        '<script src="/v2/docs/swagger-ui/swagger-init.js"></script></body></html>'
    )
    return web.Response(text=body, content_type="text/html")


async def server_docs(request: web.Request) -> web.Response:
    return _page("runtime-core API", "/v2/docs/openapi.json")


async def model_docs(request: web.Request) -> web.Response:
    record = request.app[DATAPLANE].model(request.match_info["model"])
    return _page(f"runtime-core API: model {record.name}", f"/v2/models/{record.name}/docs/openapi.json")


async def model_openapi(request: web.Request) -> web.Response:
    record = request.app[DATAPLANE].model(request.match_info["model"])
    return web.Response(body=_model_document(request.app[OPENAPI], record.name), content_type="application/json")


@functools.lru_cache(maxsize=256)
def _model_document(document: bytes, name: str) -> bytes:
    """The server's document cut to one model's paths, its name in place of ``{model}``."""
    doc: dict[str, Any] = orjson.loads(document)
    paths: dict[str, Any] = {}
    for path, item in doc["paths"].items():
        if path != _PREFIX and not path.startswith(_PREFIX + "/"):
            continue
        paths[path.replace(_PREFIX, f"/v2/models/{name}", 1)] = {
            method: {
                **operation,
                # the operation id stays unique within this document, and the name is no parameter
                "parameters": [p for p in operation.get("parameters", []) if p.get("name") != "model"],
            }
            for method, operation in item.items()
        }
    doc["paths"] = paths
    doc["info"] = {**doc["info"], "title": f"{doc['info']['title']}: model {name}"}
    return orjson.dumps(doc)


async def asset(request: web.Request) -> web.FileResponse:
    path = _ASSETS.get(request.match_info["name"])  # only the listed files: no URL path reaches the disk
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def setup_swagger_routes(app: web.Application) -> None:
    app.router.add_get("/v2/docs", server_docs)
    app.router.add_get("/v2/docs/swagger-ui/{name}", asset)
    app.router.add_get(_PREFIX + "/docs", model_docs)
    app.router.add_get(_PREFIX + "/docs/openapi.json", model_openapi)
