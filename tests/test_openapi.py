"""The OpenAPI document against a live server, with schemathesis.

The document shipped in the package (``runtime_core/rest/openapi.json``) is what
``GET /v2/docs/openapi.json`` serves (checked below) and what schemathesis
generates requests from: schema examples, then generated valid and invalid
data, a bounded number per operation. Every response must

* not be a 5xx, except a 503/504 the operation documents (deadline or readiness);
* be ``{"error": str}`` when it is an error (the readiness endpoints answer 503
  with their usual body, as documented);
* conform to the document: status code, content type, headers and body schema.

The load and unload endpoints are not fuzzed: each load starts processes and an
unload of ``echo`` would turn every later case into a 503. They are exercised
once each, on purpose, at the end, and validated against the document the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import runtime_core
from runtime_core.testing import ServerProcess, write_model

pytestmark = pytest.mark.e2e  # every test here starts real server processes

DOCUMENT = Path(runtime_core.__file__).parent / "rest" / "openapi.json"
READINESS = {"/v2/health/ready", "/v2/models/{model}/ready", "/v2/models/{model}/versions/{version}/ready"}
DESTRUCTIVE = r"^/v2/repository/models/"

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all", "max-examples": 30, "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
    }
)
schema = schemathesis.openapi.from_path(DOCUMENT, config=CONFIG)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("openapi-repo")
    write_model(root / "echo", name="echo", runtime="echo", parameters={"version": "1"})
    # Small limits, so that generated bodies also meet the 413 path.
    proc = ServerProcess(root, workers=1, env={"RUNTIME_CORE_MAX_REQUEST_SIZE": "65536"})
    yield proc
    proc.stop()


@schemathesis.check
def documented_server_errors_only(ctx: Any, response: Any, case: Any) -> bool | None:
    status = response.status_code
    if status >= 500 and not (status in (503, 504) and str(status) in case.operation.definition.raw["responses"]):
        raise AssertionError(f"{case.method} {case.formatted_path}: undocumented server error {status}")
    return None


@schemathesis.check
def errors_are_json_error_objects(ctx: Any, response: Any, case: Any) -> bool | None:
    status = response.status_code
    if status < 400 or (status == 503 and case.path in READINESS):
        return None
    content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), response.headers
    doc = json.loads(response.content)
    assert isinstance(doc, dict) and list(doc) == ["error"] and isinstance(doc["error"], str), doc
    return None


def _seconds(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return 1e9  # not a number: the server answers 400


CHECKS = [
    documented_server_errors_only,
    errors_are_json_error_objects,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@schema.exclude(path_regex=DESTRUCTIVE).parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_api_conforms(case: Any, server: ServerProcess) -> None:
    # Generated timeouts are mostly tiny: most cases would only meet the 504 of a request
    # that expired in the queue (tested in test_metrics), never the model.
    timeout = (case.headers or {}).get("Request-Timeout")
    if timeout is not None and _seconds(timeout) < 1.0:
        case.headers["Request-Timeout"] = "30"
    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)


def test_served_document_is_the_shipped_one(server: ServerProcess) -> None:
    status, served = server.get("/v2/docs/openapi.json")
    assert status == 200
    shipped = json.loads(DOCUMENT.read_text())
    assert served["info"]["version"] == runtime_core.__version__
    served["info"]["version"] = shipped["info"]["version"]
    assert served == shipped
    assert served["openapi"].startswith("3.0")


#: Prints the route table as JSON. Run in a fresh interpreter: the route table imports the
#: server's generated gRPC messages, which cannot share a process with tritonclient's (both
#: register ``grpc_service.proto``), and other test modules import tritonclient.
#: The catch-all that forwards models' own endpoints (rest/custom.py) is left out: those
#: paths are the models', known only once they load, not the server's.
_ROUTES = """
import json
from aiohttp import web
from runtime_core.rest import custom
from runtime_core.rest.routes import setup_routes
app = web.Application()
setup_routes(app)
print(json.dumps(sorted({
    (r.method.lower(), r.resource.canonical.rstrip("/") or "/")
    for r in app.router.routes()
    if r.method != "HEAD" and r.resource is not None and r.handler is not custom.endpoint
})))
"""


def test_every_route_is_documented(server: ServerProcess) -> None:
    """The document and the route table list the same (method, path) pairs (a path with a
    trailing slash is the same route: it gets the same answer)."""
    listed = subprocess.run([sys.executable, "-c", _ROUTES], check=True, capture_output=True, text=True).stdout
    routes = {(method, path) for method, path in json.loads(listed)}
    documented = {(m, p) for p, item in json.loads(DOCUMENT.read_text())["paths"].items() for m in item}
    assert routes == documented


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/repository/models/echo/load", 200),
        ("/v2/repository/models/nope/load", 404),
        ("/v2/repository/models/nope/unload", 404),
        ("/v2/repository/models/echo/unload", 200),
        ("/v2/repository/models/echo/load", 200),
    ],
)
def test_repository_operations_conform(server: ServerProcess, path: str, expected: int) -> None:
    operation = schema[path.replace("echo", "{model}").replace("nope", "{model}")]["POST"]
    case = operation.Case(path_parameters={"model": path.split("/")[4]}, media_type="application/json", body={})
    response = case.call(base_url=server.url, timeout=60)
    assert response.status_code == expected, response.text
    case.validate_response(response, checks=CHECKS)


def test_metrics_operation_conforms(server: ServerProcess) -> None:
    response = requests.get(server.url + "/metrics", timeout=10)
    case = schema["/metrics"]["GET"].Case()
    case.validate_response(response, checks=CHECKS)
    assert os.linesep.join(response.text.splitlines()).count("runtime_core_requests_total") >= 5
