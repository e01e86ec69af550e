"""Operations settings on real servers: the repository endpoint guard, access log, log format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import infer_body, toy_model

from runtime_core.testing import ServerProcess, wait_until, write_model

pytestmark = pytest.mark.e2e  # every test here starts real server processes

ECHO_BODY = {"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [1]}]}
GUARDED = [
    ("/v2/repository/index", b"{}"),
    ("/v2/repository/models/echo/load", b""),
    ("/v2/repository/models/echo/unload", b""),
]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_model(tmp_path / "echo", name="echo", runtime="echo")
    toy_model(tmp_path, "toy")
    toy_model(tmp_path, "broken", parameters={"extra": {"load_fails": True}})
    return tmp_path


def error_of(body: bytes) -> str:
    doc = json.loads(body)
    assert isinstance(doc, dict) and list(doc) == ["error"] and isinstance(doc["error"], str), doc
    return doc["error"]


def post(server: ServerProcess, path: str, body: bytes = b"", **headers: str) -> tuple[int, bytes, dict[str, str]]:
    return server.request("POST", path, body, {"Content-Type": "application/json", **headers})


def wait_output(server: ServerProcess, predicate: Any, timeout: float = 10.0) -> str:
    """The server's output once ``predicate`` accepts it (polled by the shared wait_until)."""

    def matching() -> str:
        out = server.output()
        return out if predicate(out) else ""

    return wait_until(matching, timeout, "the expected server output")


# --------------------------------------------------------------------------- repository guard


def test_repository_api_disabled_answers_403(serve: Any, repo: Path) -> None:
    server = serve(repo, workers=1, env={"RUNTIME_CORE_REPOSITORY_API": "false"})
    for path, body in GUARDED:
        status, raw, headers = post(server, path, body, Authorization="Bearer anything")
        assert status == 403, path
        assert headers["Content-Type"].startswith("application/json")
        assert "disabled" in error_of(raw)
    # The rest of the API is untouched, and the model is still loaded.
    assert server.post_json("/v2/models/echo/infer", ECHO_BODY)[0] == 200
    assert server.get("/v2/models/echo/ready")[0] == 200
    assert server.request("GET", "/metrics")[0] == 200


def test_repository_token_required(serve: Any, repo: Path) -> None:
    server = serve(repo, workers=1, env={"RUNTIME_CORE_REPOSITORY_TOKEN": "s3cret"})
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"}, {"Authorization": "s3cret"}]
    for path, body in GUARDED:
        for headers in wrong:
            status, raw, answer = post(server, path, body, **headers)
            assert status == 401, (path, headers)
            assert answer["WWW-Authenticate"] == "Bearer"
            assert "Bearer" in error_of(raw)
            assert "s3cret" not in raw.decode()
    # Still loaded after all those refused unloads.
    assert server.post_json("/v2/models/echo/infer", ECHO_BODY)[0] == 200

    status, raw, _ = post(server, "/v2/repository/index", b"{}", Authorization="Bearer s3cret")
    assert status == 200 and {m["name"] for m in json.loads(raw)} == {"echo", "toy", "broken"}
    status, raw, _ = post(server, "/v2/repository/models/echo/unload", Authorization="bearer s3cret")
    assert status == 200 and json.loads(raw)["state"] == "UNAVAILABLE"
    assert server.post_json("/v2/models/echo/infer", ECHO_BODY)[0] == 503
    status, raw, _ = post(server, "/v2/repository/models/echo/load", Authorization="Bearer s3cret")
    assert status == 200 and json.loads(raw)["state"] == "READY"
    assert server.post_json("/v2/models/echo/infer", ECHO_BODY)[0] == 200
    # Data-plane endpoints need no token.
    assert server.get("/v2")[0] == 200
    assert server.request("GET", "/metrics")[0] == 200


def test_repository_guard_from_settings_json(serve: Any, repo: Path) -> None:
    (repo / "settings.json").write_text(json.dumps({"repository_token": "from-file"}))
    server = serve(repo, workers=0)
    assert post(server, "/v2/repository/index", b"{}")[0] == 401
    assert post(server, "/v2/repository/index", b"{}", Authorization="Bearer from-file")[0] == 200


# --------------------------------------------------------------------------- logs


def test_default_logs_are_quiet_and_name_the_model(serve: Any, repo: Path) -> None:
    server = serve(repo, workers=1)
    for _ in range(20):
        assert server.post_json("/v2/models/echo/infer", ECHO_BODY)[0] == 200
        assert server.get("/v2/health/live")[0] == 200
    assert server.post_json("/v2/models/toy/infer", infer_body([1.0], fail=True))[0] == 500
    out = wait_output(server, lambda o: "the toy model failed, as asked" in o)
    assert "POST /v2/models" not in out and "GET /v2/health" not in out  # no access log by default
    # The failed load and the failed request both name the model and the cause.
    assert "FAILED  broken" in out and "refuses to load" in out
    assert "model 'toy': inference failed" in out
    assert server.stop() == 0
    lines = [line for line in server.output().splitlines() if line.strip()]
    # One line per model event, a few status lines, the one traceback: nothing per request.
    assert len(lines) < 40, "\n".join(lines)


def test_access_log_on(serve: Any, repo: Path) -> None:
    server = serve(repo, workers=0, env={"RUNTIME_CORE_ACCESS_LOG": "true"})
    assert server.get("/v2/health/live")[0] == 200
    wait_output(server, lambda o: '"GET /v2/health/live HTTP/1.1" 200' in o)


def test_json_logs(serve: Any, repo: Path) -> None:
    server = serve(repo, workers=1, env={"RUNTIME_CORE_LOG_FORMAT": "json", "RUNTIME_CORE_ACCESS_LOG": "1"})
    assert server.post_json("/v2/models/echo/infer", ECHO_BODY)[0] == 200
    assert server.post_json("/v2/models/toy/infer", infer_body([1.0], fail=True))[0] == 500
    wait_output(server, lambda o: "the toy model failed, as asked" in o and "/v2/models/echo/infer" in o)
    assert server.stop() == 0
    docs = []
    for line in server.output().splitlines():
        if line.strip():
            doc = json.loads(line)  # every line, from the server and from the workers
            assert {"time", "level", "logger", "message", "pid"} <= set(doc), doc
            docs.append(doc)
    by_message = {d["message"]: d for d in docs}
    loaded = next(d for d in docs if d["message"].startswith("loaded echo (echo) in "))
    assert loaded["model"] == "echo" and loaded["level"] == "info"
    failed = next(d for d in docs if d.get("model") == "broken" and d["message"].startswith("FAILED"))
    assert failed["level"] == "error" and "refuses to load" in failed["message"]
    access = next(d for d in docs if d["logger"] == "aiohttp.access" and "/v2/models/echo/infer" in d["message"])
    assert " 200 " in access["message"]
    crash = next(d for d in docs if d["message"].startswith("model 'toy': inference failed [error id "))
    assert crash["logger"] == "runtime_core.inference" and crash["pid"] != server.pid  # from the worker
    assert "the toy model failed, as asked" in crash["exception"]
    assert "runtime-core: stopped" in by_message


def test_bad_log_format_is_refused(repo: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runtime_core.cli", "start", str(repo)],
        env={"RUNTIME_CORE_LOG_FORMAT": "xml", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "log_format" in proc.stderr


def test_max_elements_is_a_413_from_the_shapes_alone(serve: Any, repo: Path) -> None:
    server = serve(repo, env={"RUNTIME_CORE_MAX_ELEMENTS": "100"})
    small = {"inputs": [{"name": "x", "shape": [10, 10], "datatype": "FP32", "data": [0.5] * 100}]}
    assert server.post_json("/v2/models/echo/infer", small)[0] == 200
    # The data is far too short for the shape: only the element limit can answer first.
    huge = {"inputs": [{"name": "x", "shape": [1000, 1000], "datatype": "FP32", "data": [0.5]}]}
    status, doc = server.post_json("/v2/models/echo/infer", huge)
    assert status == 413 and "max_elements" in doc["error"]
    two = {
        "inputs": [
            {"name": "a", "shape": [60], "datatype": "FP32", "data": [0.5] * 60},
            {"name": "b", "shape": [60], "datatype": "FP32", "data": [0.5] * 60},
        ]
    }
    assert server.post_json("/v2/models/echo/infer", two)[0] == 413
    assert server.post_json("/v2/models/echo/infer", small)[0] == 200
