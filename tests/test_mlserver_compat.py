"""MLServer's settings, every one of them: each ``MLSERVER_*`` variable sets a setting of ours
or gets one warning line naming it, never silently nothing."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from runtime_core import mlserver_compat
from runtime_core.settings import ServerSettings, load_server_settings
from runtime_core.testing import ServerProcess, free_port, write_model

#: The fields of MLServer 1.7.1's settings classes (``mlserver/settings.py``), by class; the
#: model's ``implementation_`` under its alias ``implementation``. Checked against mlserver's
#: own classes by :func:`test_the_committed_field_list_is_mlservers`.
MLSERVER_1_7_1 = {
    "Settings": [
        "cache_enabled", "cache_size", "cors_settings", "debug", "environments_dir", "extensions",
        "grpc_max_message_length", "grpc_port", "gzip_enabled", "host", "http_port", "kafka_enabled",
        "kafka_servers", "kafka_topic_input", "kafka_topic_output", "load_models_at_startup",
        "logging_settings", "metrics_dir", "metrics_endpoint", "metrics_port", "metrics_rest_server_prefix",
        "model_repository_implementation", "model_repository_implementation_args", "model_repository_root",
        "parallel_workers", "parallel_workers_timeout", "root_path", "server_name", "server_version",
        "tracing_server", "use_structured_logging",
    ],
    "CORSSettings": [
        "allow_credentials", "allow_headers", "allow_methods", "allow_origin_regex", "allow_origins",
        "expose_headers", "max_age",
    ],
    "ModelSettings": [
        "cache_enabled", "implementation", "inputs", "max_batch_size", "max_batch_time", "name", "outputs",
        "parallel_workers", "parameters", "platform", "versions", "warm_workers",
    ],
    "ModelParameters": [
        "autogenerate_inference_pool_gid", "content_type", "environment_path", "environment_tarball", "extra",
        "format", "inference_pool_gid", "uri", "version",
    ],
}  # fmt: skip

_XGBOOST = "mlserver_xgboost.XGBoostModel"

#: The variables whose value must land in a setting of ours: (value, setting, expected).
MAPPED: dict[str, tuple[str, str, Any]] = {
    "MLSERVER_DEBUG": ("true", "log_level", "debug"),
    "MLSERVER_PARALLEL_WORKERS": ("3", "parallel_workers", 3),
    "MLSERVER_MODEL_REPOSITORY_ROOT": ("/srv/models", "model_repository", Path("/srv/models")),
    "MLSERVER_LOAD_MODELS_AT_STARTUP": ("false", "load_models_at_startup", False),
    "MLSERVER_HOST": ("127.0.0.2", "host", "127.0.0.2"),
    "MLSERVER_HTTP_PORT": ("9123", "http_port", 9123),
    "MLSERVER_GRPC_PORT": ("9124", "grpc_port", 9124),
    "MLSERVER_METRICS_PORT": ("9125", "metrics_port", 9125),
    "MLSERVER_USE_STRUCTURED_LOGGING": ("true", "log_format", "json"),
    "MLSERVER_CORS_SETTINGS": ('{"allow_origins": ["https://a.example"]}', "cors_settings", "https://a.example"),
    "MLSERVER_MODEL_NAME": ("iris", "model_name", "iris"),
    "MLSERVER_MODEL_IMPLEMENTATION": (_XGBOOST, "model_runtime", _XGBOOST),
    "MLSERVER_MODEL_PARALLEL_WORKERS": ("2", "parallel_workers", 2),
    "MLSERVER_MODEL_URI": ("/mnt/models", "model_repository", Path("/mnt/models")),
}


def _variables() -> list[str]:
    """Every variable MLServer 1.7.1 reads: its prefixes and its classes' fields."""
    server = MLSERVER_1_7_1["Settings"] + MLSERVER_1_7_1["CORSSettings"]
    model = MLSERVER_1_7_1["ModelSettings"] + MLSERVER_1_7_1["ModelParameters"]
    return [f"MLSERVER_{f.upper()}" for f in server] + [f"MLSERVER_MODEL_{f.upper()}" for f in model]


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper().startswith(("MLSERVER_", "RUNTIME_CORE_")):
            monkeypatch.delenv(name)
    return monkeypatch


def _value(settings: ServerSettings, field: str) -> Any:
    value = getattr(settings, field)
    return value.allow_origins[0] if field == "cors_settings" and value is not None else value


def test_the_committed_lists_cover_every_mlserver_field() -> None:
    assert set(mlserver_compat.SERVER_FIELDS) == set(MLSERVER_1_7_1["Settings"])
    assert set(mlserver_compat.CORS_FIELDS) == set(MLSERVER_1_7_1["CORSSettings"])
    assert set(mlserver_compat.MODEL_FIELDS) == set(MLSERVER_1_7_1["ModelSettings"] + MLSERVER_1_7_1["ModelParameters"])
    assert mlserver_compat.MLSERVER_VERSION == "1.7.1"


_DUMP_FIELDS = """
import json
from mlserver import settings as s
names = lambda cls: sorted((f.alias or n) if n.endswith("_") else n for n, f in cls.model_fields.items())
fields = {c: names(getattr(s, c)) for c in ("Settings", "CORSSettings", "ModelSettings", "ModelParameters")}
fields["ModelSettings"] = sorted("implementation" if n == "implementation_" else n for n in fields["ModelSettings"])
print(json.dumps(fields))
"""


@pytest.mark.e2e
def test_the_committed_field_list_is_mlservers() -> None:
    """Against mlserver's own classes: in this environment if mlserver is installed, else with
    the interpreter named by ``RUNTIME_CORE_TEST_MLSERVER_PYTHON`` (mlserver's dependencies
    conflict with ours, so it usually lives in a virtual environment of its own)."""
    python = sys.executable
    # Looked up, not imported: importing mlserver here would register its gRPC messages, whose
    # names clash with tritonclient's in this process's protobuf pool.
    if importlib.util.find_spec("mlserver") is None:
        python = os.environ.get("RUNTIME_CORE_TEST_MLSERVER_PYTHON", "")
        if not python:
            pytest.skip("mlserver is not importable; RUNTIME_CORE_TEST_MLSERVER_PYTHON can name a Python that has it")
    found = subprocess.run([python, "-c", _DUMP_FIELDS], capture_output=True, text=True, check=True, timeout=120)
    version = subprocess.run(
        [python, "-c", "import mlserver; print(mlserver.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert version == mlserver_compat.MLSERVER_VERSION
    assert json.loads(found.stdout) == {k: sorted(v) for k, v in MLSERVER_1_7_1.items()}


@pytest.mark.parametrize("variable", _variables())
def test_every_mlserver_variable_is_mapped_or_warned(
    variable: str, clean_environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    baseline = load_server_settings()
    value, field, expected = MAPPED.get(variable, ("1", "", None))
    clean_environment.setenv(variable, value)
    with caplog.at_level(logging.WARNING):
        settings = load_server_settings()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if variable in MAPPED:
        assert _value(settings, field) == expected
        assert _value(baseline, field) != expected
        assert warnings == []
    else:
        assert settings.model_dump() == baseline.model_dump()
        assert len(warnings) == 1 and warnings[0].startswith(f"environment variable {variable}: "), warnings


def test_a_variable_that_is_no_mlserver_setting_is_warned(
    clean_environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_environment.setenv("MLSERVER_HTTP_PROT", "9000")  # a typo
    with caplog.at_level(logging.WARNING):
        settings = load_server_settings()
    assert settings.http_port == 8080
    assert [r.getMessage() for r in caplog.records] == [
        "environment variable MLSERVER_HTTP_PROT is not a setting of MLServer 1.7.1: ignored"
    ]


@pytest.mark.e2e
def test_mlserver_metrics_port_serves_the_metrics_there(tmp_path: Path) -> None:
    write_model(tmp_path / "echo", runtime="echo", parallel_workers=0)
    port = free_port()
    server = ServerProcess(tmp_path, env={"MLSERVER_METRICS_PORT": str(port), "MLSERVER_GZIP_ENABLED": "false"})
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
            assert resp.status == 200 and b"runtime_core_requests_total" in resp.read()
    finally:
        assert server.stop() == 0
    # The ignored variable gets its one line; the mapped one none (the caller's environment may
    # hold other MLSERVER_* variables, with lines of their own).
    lines = [line for line in server.output().splitlines() if "MLSERVER_GZIP_ENABLED" in line or "METRICS_PORT" in line]
    assert lines == [
        "environment variable MLSERVER_GZIP_ENABLED: MLServer setting 'gzip_enabled' is ignored: "
        "responses are not compressed"
    ]
