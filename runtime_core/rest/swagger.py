"""Swagger UI, as MLServer serves it, working with no internet access.

* ``GET /v2/docs``: Swagger UI on the server's OpenAPI document (``/v2/docs/openapi.json``);
* ``GET /v2/models/{m}[/versions/{v}]/docs``: Swagger UI on one model's (or version's)
  document, ``.../docs/openapi.json`` (also ``.../docs/dataplane.json``, MLServer's name):
  the server's paths under ``/v2/models/{model}[/versions/{version}]`` with the model's
  name (and version) written in, so "Try it out" needs none typed in;
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
_VERSIONED = _PREFIX + "/versions/{version}"


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


def _record_paths(request: web.Request) -> tuple[str, str]:
    """The (page, document) URLs of the model, or model version, the request names (404 if
    there is none). Built from the server's own record, not from the request's text."""
    info = request.match_info
    record = request.app[DATAPLANE].model(info["model"], info.get("version"))
    base = f"/v2/models/{record.name}"
    if "version" in info and record.version is not None:
        base += f"/versions/{record.version}"
    return base, base + "/docs/openapi.json"


async def model_docs(request: web.Request) -> web.Response:
    base, spec = _record_paths(request)
    return _page(f"runtime-core API: {base.removeprefix('/v2/models/')}", spec)


async def model_openapi(request: web.Request) -> web.Response:
    base, _ = _record_paths(request)
    prefix = _VERSIONED if "version" in request.match_info else _PREFIX
    return web.Response(body=_model_document(request.app[OPENAPI], prefix, base), content_type="application/json")


@functools.lru_cache(maxsize=256)
def _model_document(document: bytes, prefix: str, base: str) -> bytes:
    """The server's document cut to the paths under ``prefix`` (``/v2/models/{model}``, or its
    versioned form), with the model's ``base`` path written in place of the template."""
    doc: dict[str, Any] = orjson.loads(document)
    written = {"model", "version"} if prefix == _VERSIONED else {"model"}
    paths: dict[str, Any] = {}
    for path, item in doc["paths"].items():
        if path != prefix and not path.startswith(prefix + "/"):
            continue
        paths[base + path.removeprefix(prefix)] = {
            method: {
                **operation,
                # the name (and version) are written into the path: no longer parameters
                "parameters": [p for p in operation.get("parameters", []) if p.get("name") not in written],
            }
            for method, operation in item.items()
        }
    doc["paths"] = paths
    doc["info"] = {**doc["info"], "title": f"{doc['info']['title']}: {base.removeprefix('/v2/models/')}"}
    return orjson.dumps(doc)


async def asset(request: web.Request) -> web.FileResponse:
    path = _ASSETS.get(request.match_info["name"])  # only the listed files: no URL path reaches the disk
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def setup_swagger_routes(app: web.Application) -> None:
    app.router.add_get("/v2/docs", server_docs)
    app.router.add_get("/v2/docs/swagger-ui/{name}", asset)
    for base in (_PREFIX, _VERSIONED):
        app.router.add_get(base + "/docs", model_docs)
        app.router.add_get(base + "/docs/openapi.json", model_openapi)
        # MLServer's name for the same document
        app.router.add_get(base + "/docs/dataplane.json", model_openapi)
