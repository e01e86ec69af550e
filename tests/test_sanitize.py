"""The one message sanitiser: what it removes from text, and what a client and the server
log see when a runtime fails (a real server, the toy runtime raising on request)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from support import infer_body, toy_model

import runtime_core
from runtime_core.sanitize import client_message, quoted
from runtime_core.testing import ServerProcess, wait_until


@pytest.mark.parametrize(
    ("raw", "gone", "kept"),
    [
        ("cannot fetch weights: token=abc123 refused", "abc123", "token=<redacted>"),
        ("auth failed with api_key: 'sk-live-99' for user", "sk-live-99", "api_key"),
        ("header Authorization: Bearer eyJhbGciOi.xyz was rejected", "eyJhbGciOi", "<redacted>"),
        ("GET https://bob:hunter2@store.example/model failed", "hunter2", "https://<redacted>@store.example"),
        ("PASSWORD=opensesame", "opensesame", "PASSWORD=<redacted>"),
        ("cannot open /srv/models/iris/model.joblib", "/srv/models", "<path>"),
        ("C:\\models\\iris\\model.pkl missing", "C:\\models", "<path>"),
        ("'NoneType' object has no attribute 'predict'", "NoneType", "None has no attribute 'predict'"),
        ("expected <class 'numpy.ndarray'>, got InferenceResponse", "class", "expected a value, got a value"),
        ("bad value in runtime_core.protocol.Tensor", "runtime_core.", "bad value in a value"),
        ("[10:42:07] /src/learner.cc:512: Check failed: n == 4", "learner.cc", "Check failed: n == 4"),
        ("line one\n  line two\nStack trace:\n  [bt] (0) /lib/libxgboost.so", "[bt]", "line one line two"),
        ("X has 3 features, but expects 4", "", "X has 3 features, but expects 4"),
    ],
)
def test_what_is_removed(raw: str, gone: str, kept: str) -> None:
    message = client_message(raw)
    if gone:
        assert gone not in message
    assert kept in message
    assert "\n" not in message


def test_exceptions_and_length() -> None:
    assert client_message(ValueError("shape [2] is not [4]")) == "shape [2] is not [4]"
    assert client_message(ValueError("")) == ""
    long = client_message("x" * 2000, limit=100)
    assert len(long) == 100 and long.endswith("...")


@pytest.mark.e2e
def test_exported_for_plugins() -> None:
    assert runtime_core.client_message is client_message
    assert "client_message" in runtime_core.__all__


# --------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, toy_site: Path) -> Any:
    root = tmp_path_factory.mktemp("repo")
    toy_model(root, "toy", parallel_workers=1)
    proc = ServerProcess(root, env={"PYTHONPATH": str(toy_site)})
    yield proc
    proc.stop()


def _infer(server: ServerProcess, **parameters: Any) -> tuple[int, str]:
    status, doc = server.post_json("/v2/models/toy/infer", infer_body([1.0], **parameters))
    assert isinstance(doc, dict) and list(doc) == ["error"], doc
    return status, doc["error"]


def _error_id(message: str) -> str:
    found = re.search(r"\[error id ([0-9a-f]{12})\]", message)
    assert found, message
    return found.group(1)


@pytest.mark.e2e
def test_model_words_reach_the_client_without_secrets(server: ServerProcess) -> None:
    status, message = _infer(server, value_error="upstream said token=abc123 at /opt/secret/store/w.bin")
    assert status == 500
    assert "'toy'" in message and "upstream said" in message
    assert "abc123" not in message and "/opt/secret" not in message
    ident = _error_id(message)
    # The log has the whole story under the same id: the raw message and the traceback.
    log = wait_until(lambda: ident in server.output() and server.output(), 30, "the error id in the server log")
    line = next(line for line in log.splitlines() if ident in line)
    assert "toy" in line
    assert "token=abc123" in log and "Traceback" in log


@pytest.mark.e2e
def test_runtime_bugs_are_not_told_in_python_words(server: ServerProcess) -> None:
    status, message = _infer(server, attribute_error=True)
    assert status == 500
    assert "'toy'" in message
    for leak in ("NoneType", "AttributeError", "predict", "object"):
        assert leak not in message
    ident = _error_id(message)
    wait_until(lambda: "AttributeError" in server.output() and ident in server.output(), 30, "the bug in the log")


@pytest.mark.e2e
def test_a_runtime_returning_nothing_names_no_internal_type(server: ServerProcess) -> None:
    status, message = _infer(server, return_none=True)
    assert status == 500
    assert "'toy'" in message and "returned nothing" in message
    assert "NoneType" not in message and "InferenceResponse" not in message
    # And the worker still serves.
    status, doc = server.post_json("/v2/models/toy/infer", infer_body([2.0]))
    assert status == 200, doc
    assert json.dumps(doc["outputs"][0]["data"]) == "[2.0]"


def test_quoted_names_are_bounded() -> None:
    assert quoted("iris") == "'iris'"
    long = quoted("x" * 1_000_000)
    assert len(long) == 122 and long.endswith("...'")  # 120 characters, quotes around them
    assert quoted("x" * 120) == repr("x" * 120)  # at the limit: whole
