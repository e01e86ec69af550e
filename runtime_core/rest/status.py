"""The statistics extension and the status page: thin handlers over :mod:`runtime_core.stats`.

* ``GET /v2/models/stats``, ``/v2/models/{m}/stats``, ``/v2/models/{m}/versions/{v}/stats``:
  Triton's statistics extension;
* ``GET /``: the status page (HTML, with its script and style sheet from ``/static/``,
  shipped in the package: it works with no internet access);
* ``GET /status.json``: what the page polls;
* ``GET /docs/``: the documentation that came with this release (the Markdown files of the
  source tree's ``docs/``, shipped in the package), as plain text, so that the page's "Docs"
  link works with no internet access.

The page shows only what the V2 endpoints already expose: each model's state reason only
when the repository index (which shows it too) is open to anyone. ``status_page = false``
turns the page, its assets and its JSON into 404s; the statistics extension stays.
"""

from __future__ import annotations

import functools
import html
import importlib.resources

import orjson
from aiohttp import web

from runtime_core import __version__
from runtime_core.dataplane import EXTENSIONS
from runtime_core.rest.keys import SETTINGS, STATISTICS

#: Files under ``/static/``: name -> content type.
ASSETS = {"status.js": "text/javascript", "status.css": "text/css"}

_CACHE = {"Cache-Control": "no-cache"}


def _asset(name: str) -> bytes:
    return importlib.resources.files("runtime_core.rest").joinpath("static", name).read_bytes()


@functools.cache
def _docs() -> dict[str, tuple[str, str]]:
    """``{name: (content type, charset or "")}`` of the shipped documentation files (listed
    once: the package does not change while the server runs)."""
    found: dict[str, tuple[str, str]] = {}
    folder = importlib.resources.files("runtime_core.rest").joinpath("docs")
    for kind, suffix, charset in (("text/plain", ".md", "utf-8"), ("image/png", ".png", "")):
        for sub in (folder, folder.joinpath("img")):
            if sub.is_dir():
                prefix = "" if sub is folder else "img/"
                found.update({prefix + f.name: (kind, charset) for f in sub.iterdir() if f.name.endswith(suffix)})
    return found


def _json(data: object) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json", headers=_CACHE)


async def model_stats(request: web.Request) -> web.Response:
    info = request.match_info
    return _json(request.app[STATISTICS].model_stats(info.get("model"), info.get("version")))


def _check_enabled(request: web.Request) -> None:
    if not request.app[SETTINGS].status_page:
        raise web.HTTPNotFound()


async def page(request: web.Request) -> web.Response:
    _check_enabled(request)
    return web.Response(body=_asset("status.html"), content_type="text/html", charset="utf-8", headers=_CACHE)


async def asset(request: web.Request) -> web.Response:
    _check_enabled(request)
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.Response(body=_asset(name), content_type=ASSETS[name], charset="utf-8", headers=_CACHE)


async def docs_index(request: web.Request) -> web.Response:
    _check_enabled(request)
    pages = sorted(name for name, (kind, _) in _docs().items() if kind == "text/plain")
    items = "".join(f'<li><a href="/docs/{html.escape(n)}">{html.escape(n)}</a></li>' for n in pages)
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>runtime-core docs</title>'
        f'<link rel="icon" href="data:,"></head><body><h1>runtime-core {html.escape(__version__)} docs</h1>'
        f'<p><a href="/">Status page</a></p><ul>{items}</ul></body></html>'
    )
    return web.Response(text=body, content_type="text/html", headers=_CACHE)


async def doc(request: web.Request) -> web.Response:
    _check_enabled(request)
    name = request.match_info["name"]
    known = _docs().get(name)  # only the shipped files: no path from the URL reaches the disk
    if known is None:
        raise web.HTTPNotFound()
    kind, charset = known
    data = importlib.resources.files("runtime_core.rest").joinpath("docs", *name.split("/")).read_bytes()
    return web.Response(body=data, content_type=kind, charset=charset or None, headers=_CACHE)


async def favicon(request: web.Request) -> web.Response:
    """No icon: browsers ask for one on plain-text pages (the docs), and a 404 would be logged."""
    return web.Response(status=204)


async def status(request: web.Request) -> web.Response:
    _check_enabled(request)
    settings = request.app[SETTINGS]
    data = request.app[STATISTICS].status(reasons=settings.repository_api and settings.repository_token is None)
    # gRPC's address as the client sees this host; unknown when the port is picked at start (0).
    grpc = f"{request.url.host}:{settings.grpc_port}" if settings.grpc_enabled and settings.grpc_port else None
    data["server"].update(
        name="runtime-core",
        version=__version__,
        extensions=list(EXTENSIONS),
        url=f"{request.scheme}://{request.host}",
        grpc=grpc,
    )
    return _json(data)


def setup_status_routes(app: web.Application) -> None:
    """Add the routes. Called before the model routes: ``/v2/models/stats`` must not be taken
    for the metadata of a model called ``stats``."""
    app.router.add_get("/v2/models/stats", model_stats)
    app.router.add_get("/v2/models/{model}/stats", model_stats)
    app.router.add_get("/v2/models/{model}/versions/{version}/stats", model_stats)
    app.router.add_get("/", page)
    app.router.add_get("/status.json", status)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/docs/", docs_index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/docs/{name:.+}", doc)
