"""Swagger UI at ``/v2/docs`` and ``/v2/models/{m}/docs`` in a real headless Chromium (Debian's
``chromium``, driven by Playwright: the ``browser`` fixture of conftest.py).

The pages render every operation of their document, the per-model page shows that model's
paths with its name written in and runs a request from "Try it out", no JavaScript error is
logged, and no request leaves 127.0.0.1: every request the browser makes is recorded, and any
to another host is refused and fails the test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from runtime_core.testing import ServerProcess, write_model

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("swagger-repo")
    write_model(
        root / "echo",
        name="echo",
        runtime="echo",
        parallel_workers=0,
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1]}],
        outputs=[{"name": "x", "datatype": "FP32", "shape": [-1]}],
    )
    write_model(root / "v", name="versioned", runtime="echo", parallel_workers=0, parameters={"version": "3"})
    proc = ServerProcess(root)
    yield proc
    proc.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab that records every request and refuses those that would leave 127.0.0.1;
    fails the test if any was made or if the browser logged a JavaScript error."""
    errors: list[str] = []
    outside: list[str] = []
    inside: list[str] = []
    context = browser.new_context(viewport={"width": 1400, "height": 900})

    def watch(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).hostname == "127.0.0.1":
            inside.append(url)
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    context.route("**/*", watch)
    tab = context.new_page()
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert any(url.endswith("/swagger-ui-bundle.js") for url in inside), inside  # the watch saw the page load
    assert outside == [], outside
    assert errors == [], errors


def operations(server: ServerProcess, path: str) -> list[tuple[str, str]]:
    """``(METHOD, path)`` of every operation in the document served at ``path``."""
    status, doc = server.get(path)
    assert status == 200
    return sorted((method.upper(), route) for route, item in doc["paths"].items() for method in item)


def shown(page: Any) -> list[tuple[str, str]]:
    """``(METHOD, path)`` of every operation Swagger UI rendered."""
    blocks = page.locator(".opblock .opblock-summary")
    found = []
    for i in range(blocks.count()):
        block = blocks.nth(i)
        method = block.locator(".opblock-summary-method").inner_text().strip()
        path = block.locator(".opblock-summary-path").get_attribute("data-path")
        found.append((method, path))
    return sorted(found)


def test_the_server_page_renders_every_operation(page: Any, server: ServerProcess) -> None:
    expected = operations(server, "/v2/docs/openapi.json")
    page.goto(server.url + "/v2/docs")
    page.locator(".opblock").nth(len(expected) - 1).wait_for()
    assert shown(page) == expected
    assert "runtime-core V2 inference API" in page.locator(".info .title").inner_text()


def test_the_model_page_shows_that_models_paths_and_runs_a_request(page: Any, server: ServerProcess) -> None:
    expected = operations(server, "/v2/models/echo/docs/openapi.json")
    assert ("POST", "/v2/models/echo/infer") in expected
    assert all(path.startswith("/v2/models/echo") for _, path in expected)
    page.goto(server.url + "/v2/models/echo/docs")
    page.locator(".opblock").nth(len(expected) - 1).wait_for()
    assert shown(page) == expected

    # "Try it out" on the model's readiness: the browser calls this server and shows its answer.
    ready = page.locator('.opblock-get:has(.opblock-summary-path[data-path="/v2/models/echo/ready"])')
    ready.locator(".opblock-summary").click()
    ready.locator("button.try-out__btn").click()
    ready.locator("button.execute").click()
    live = ready.locator(".live-responses-table tbody td.response-col_status")
    live.wait_for()
    assert live.inner_text().strip() == "200"
    assert json.loads(ready.locator(".live-responses-table .microlight").first.inner_text()) == {
        "name": "echo",
        "ready": True,
    }


def test_a_versions_page_shows_that_versions_paths(page: Any, server: ServerProcess) -> None:
    expected = operations(server, "/v2/models/versioned/versions/3/docs/openapi.json")
    assert ("POST", "/v2/models/versioned/versions/3/infer") in expected
    assert all(path.startswith("/v2/models/versioned/versions/3") for _, path in expected)
    page.goto(server.url + "/v2/models/versioned/versions/3/docs")
    page.locator(".opblock").nth(len(expected) - 1).wait_for()
    assert shown(page) == expected


def test_mlservers_addresses_of_the_documents_serve_the_same(server: ServerProcess) -> None:
    for ours, theirs in (
        ("/v2/docs/openapi.json", "/v2/docs/dataplane.json"),
        ("/v2/models/echo/docs/openapi.json", "/v2/models/echo/docs/dataplane.json"),
        ("/v2/models/versioned/versions/3/docs/openapi.json", "/v2/models/versioned/versions/3/docs/dataplane.json"),
    ):
        assert server.get(ours) == server.get(theirs)


def test_an_unknown_models_page_is_not_found(server: ServerProcess) -> None:
    for path in ("/v2/models/nope/docs", "/v2/models/nope/docs/openapi.json"):
        status, doc = server.get(path)
        assert status == 404 and doc == {"error": "Request for unknown model: 'nope' is not found"}
    status, doc = server.get("/v2/models/versioned/versions/9/docs")
    assert status == 404 and doc == {"error": "Request for unknown model: 'versioned' version '9' is not found"}


def test_the_assets_are_the_listed_files_only(server: ServerProcess) -> None:
    status, body, headers = server.request("GET", "/v2/docs/swagger-ui/swagger-ui.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css") and b".swagger-ui" in body
    for name in ("swagger-ui.js.map", "index.html", "..%2f..%2fopenapi.json"):
        status, body, _ = server.request("GET", "/v2/docs/swagger-ui/" + name)
        assert status == 404 and json.loads(body) == {"error": "not found"}


def test_no_path_of_the_server_is_in_the_pages(server: ServerProcess) -> None:
    for path in ("/v2/docs", "/v2/models/echo/docs", "/v2/models/echo/docs/openapi.json"):
        status, body, _ = server.request("GET", path)
        assert status == 200 and str(Path.home()) not in body.decode() and "site-packages" not in body.decode()
