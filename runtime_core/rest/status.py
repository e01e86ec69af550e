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
from typing import Any

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
    """The page with the figures of this moment filled in, so that it says something without
    JavaScript too (issue 21); the script then redraws the same elements every poll."""
    _check_enabled(request)
    template = _asset("status.html").decode()
    text = render_page(template, _status_data(request))
    return web.Response(text=text, content_type="text/html", charset="utf-8", headers=_CACHE)


# --------------------------------------------------------------------------- server-side rendering
#
# The same figures, classes and data attributes as status.js draws (renderServer, renderTable),
# so that the script's first poll replaces them in place.

_ERROR_NAMES = {
    "client_error": "client",
    "server_error": "server",
    "rejected": "rejected",
    "deadline_expired": "expired",
}


def _fixed(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d} d {h} h"
    if h:
        return f"{h} h {m} min"
    if m:
        return f"{m} min {s % 60} s"
    return f"{s} s"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.{1 if i else 0}f} {units[i]}"


def _errors(errors: dict[str, int]) -> str:
    parts = [f"{_ERROR_NAMES.get(k, k)} {n}" for k, n in errors.items() if n > 0]
    return ", ".join(parts) if parts else "0"


def _td(text: str, name: str, extra: str = "", title: str = "") -> str:
    attribute = f' title="{html.escape(title)}"' if title else ""
    return f'<td class="{html.escape(name)}"{attribute}>{html.escape(text)}{extra}</td>'


def _row(m: dict[str, Any]) -> str:
    spans = ""
    if m["trouble"]:
        spans += f'<span class="trouble-why">{html.escape(", ".join(m["trouble"]))}</span>'
    if m.get("residency") and m["residency"] != "resident":
        spans += f'<span class="residency">{html.escape(m["residency"])}</span>'
    if m.get("reason") and m["state"] != "READY":
        spans += f'<span class="reason">{html.escape(m["reason"])}</span>'
    workers = m["workers"]
    cells = [
        _td(m["name"], "name"),
        _td(m["version"] or "-", "version"),
        _td(m["runtime"] or "-", "runtime"),
        _td(m["state"], f"state {m['state']}", spans, m.get("reason") or ""),
        _td(f"{workers['ready']}/{workers['total']}" if workers else "-", "workers"),
        _td("-" if m["restarts"] is None else str(m["restarts"]), "restarts"),
        _td(str(m["queued"]), "queued"),
        _td(str(m["inflight"]), "inflight"),
        _td("-" if m["weight"] is None else f"{m['weight']:g}", "weight"),
        _td(_fixed(m["requests_per_second"], 1), "rps"),
        _td(_fixed(m["p50_ms"], 2), "p50"),
        _td(_fixed(m["p99_ms"], 2), "p99"),
        _td(str(m["success"]), "success"),
        _td(_errors(m["errors"]), "errors"),
    ]
    trouble = ' class="trouble"' if m["trouble"] else ""
    model, version = html.escape(m["name"]), html.escape(m["version"] or "")
    return f'<tr data-model="{model}" data-version="{version}"{trouble}>{"".join(cells)}</tr>'


def _shown(shown: int, total: int) -> str:
    """The line above the table (``status.js`` writes the same)."""
    if shown >= total:
        return f"{total} model{'s' if total != 1 else ''}"
    return f"{shown} of {total} models shown: the troubled and the busiest first; filter by name to find others"


def render_page(template: str, data: dict[str, Any]) -> str:
    """``status.html`` with the server's figures and the models' rows of ``data`` (what
    ``/status.json`` says) in place of its ``<!--name-->`` markers."""
    server = data["server"]
    cpu = server["cpu_cores"]
    filled = {
        "version": server["version"],
        "uptime": _duration(server["uptime"]),
        "processes": str(server["processes"]),
        "cpu": "-" if cpu is None else f"{cpu * 100:.0f} % of a core",
        "memory": _bytes(server["memory_bytes"]),
        "url": f"{server['url']} (gRPC {server['grpc']})" if server["grpc"] else server["url"],
        "extensions": ", ".join(server["extensions"]),
        "shown": _shown(len(data["models"]), data["total"]),
    }
    for name, text in filled.items():
        template = template.replace(f"<!--{name}-->", html.escape(text))
    return template.replace("<!--rows-->", "".join(_row(m) for m in data["models"]))


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
    return _json(_status_data(request))


def _count(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number >= 0")
    return int(text)


def _status_data(request: web.Request) -> dict[str, Any]:
    """What ``/status.json`` says: ``?model=`` filters by name (any case, part of it),
    ``?limit=&offset=`` pages the models by name; without ``limit``, at most
    ``STATUS_ROWS`` rows, the troubled and busiest first (see ``ServerStatistics.status``)."""
    settings = request.app[SETTINGS]
    data = request.app[STATISTICS].status(
        reasons=settings.repository_api and settings.repository_token is None,
        model=request.query.get("model", "")[:128],
        limit=_count(request, "limit"),
        offset=_count(request, "offset") or 0,
    )
    # gRPC's address as the client sees this host; unknown when the port is picked at start (0).
    grpc = f"{request.url.host}:{settings.grpc_port}" if settings.grpc_enabled and settings.grpc_port else None
    data["server"].update(
        name="runtime-core",
        version=__version__,
        extensions=list(EXTENSIONS),
        url=f"{request.scheme}://{request.host}",
        grpc=grpc,
    )
    return data


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
