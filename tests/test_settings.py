"""Server and model settings: precedence, the MLServer alias, errors that name the file and
the key, ``parameters.uri`` confinement, and that docs/settings.md documents every field.

Precedence of ``parallel_workers`` is checked on real ``runtime-core start`` processes by
counting each model's worker processes; the rest goes through ``load_server_settings``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from support import named_processes

from runtime_core.errors import SettingsError
from runtime_core.plugins import RuntimeRegistry
from runtime_core.repository_scan import RepositoryScan
from runtime_core.settings import (
    ModelParameters,
    ModelSettings,
    ServerSettings,
    TensorSettings,
    load_model_settings,
    load_server_settings,
)
from runtime_core.testing import ServerProcess, free_port, wait_until, write_model

DOCS = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RUNTIME_CORE_* / MLSERVER_* variables from the caller's shell leak into a test."""
    for key in list(os.environ):
        if key.upper().startswith(("RUNTIME_CORE_", "MLSERVER_")) or key.upper() == "PARALLEL_WORKERS":
            monkeypatch.delenv(key)


def _settings_json(root: Path, doc: object) -> Path:
    path = root / "settings.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


# --------------------------------------------------------------------------- documentation


def test_docs_cover_every_setting() -> None:
    """docs/settings.md names every server field with its variable, and every model key."""
    text = DOCS.read_text(encoding="utf-8")
    missing = []
    for name in ServerSettings.model_fields:
        for needle in (f"`{name}`", f"RUNTIME_CORE_{name.upper()}"):
            if needle not in text:
                missing.append(needle)
    for model in (ModelSettings, ModelParameters, TensorSettings):
        missing += [f"`{name}`" for name in model.model_fields if f"`{name}`" not in text]
    assert not missing, f"docs/settings.md does not document: {', '.join(missing)}"


# --------------------------------------------------------------------------- precedence


def test_defaults(tmp_path: Path) -> None:
    settings = load_server_settings(tmp_path)
    assert (settings.host, settings.http_port, settings.parallel_workers, settings.log_level) == (
        "0.0.0.0",
        8080,
        4,
        "info",
    )
    assert settings.model_repository == tmp_path


def test_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _settings_json(tmp_path, {"host": "127.0.0.2", "http_port": 9000, "max_queue_size": 7, "worker_timeout": 5})
    settings = load_server_settings(tmp_path)
    assert (settings.host, settings.http_port, settings.max_queue_size, settings.worker_timeout) == (
        "127.0.0.2",
        9000,
        7,
        5.0,
    )
    monkeypatch.setenv("RUNTIME_CORE_HTTP_PORT", "9001")
    monkeypatch.setenv("RUNTIME_CORE_MAX_QUEUE_SIZE", "8")
    settings = load_server_settings(tmp_path)
    assert (settings.host, settings.http_port, settings.max_queue_size) == ("127.0.0.2", 9001, 8)
    settings = load_server_settings(tmp_path, http_port=9002, host=None)  # None: flag not given
    assert (settings.host, settings.http_port, settings.max_queue_size) == ("127.0.0.2", 9002, 8)


def test_env_values_are_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_CORE_CPU_PRIORITY", "false")
    monkeypatch.setenv("RUNTIME_CORE_MAX_INFLIGHT", "3")
    monkeypatch.setenv("RUNTIME_CORE_LOG_LEVEL", "DEBUG")  # case does not matter
    settings = load_server_settings(tmp_path)
    assert (settings.cpu_priority, settings.max_inflight, settings.log_level) == (False, 3, "debug")


def test_mlserver_parallel_workers_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _settings_json(tmp_path, {"parallel_workers": 1})
    monkeypatch.setenv("MLSERVER_MODEL_PARALLEL_WORKERS", "3")
    assert load_server_settings(tmp_path).parallel_workers == 3
    monkeypatch.setenv("RUNTIME_CORE_PARALLEL_WORKERS", "2")  # our own name wins over the alias
    assert load_server_settings(tmp_path).parallel_workers == 2
    assert load_server_settings(tmp_path, parallel_workers=0).parallel_workers == 0


def test_unprefixed_variable_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLEL_WORKERS", "7")
    monkeypatch.setenv("HTTP_PORT", "1234")
    settings = load_server_settings(tmp_path)
    assert (settings.parallel_workers, settings.http_port) == (4, 8080)


# --------------------------------------------------------------------------- server settings errors


def test_unknown_key_in_settings_json_names_file_and_key(tmp_path: Path) -> None:
    path = _settings_json(tmp_path, {"paralel_workers": 2})
    with pytest.raises(SettingsError) as info:
        load_server_settings(tmp_path)
    assert str(path) in info.value.message
    assert "unknown key 'paralel_workers'" in info.value.message
    assert info.value.path == str(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{nope", "not valid JSON"), ("[1, 2]", "must hold a JSON object"), ("null", "must hold a JSON object")],
)
def test_settings_json_that_is_not_an_object(tmp_path: Path, content: str, expected: str) -> None:
    path = _settings_json(tmp_path, content)
    with pytest.raises(SettingsError) as info:
        load_server_settings(tmp_path)
    assert str(path) in info.value.message
    assert expected in info.value.message


@pytest.mark.parametrize(
    ("doc", "field", "expected"),
    [
        ({"parallel_workers": -1}, "parallel_workers", "greater than or equal to 0"),
        ({"http_port": 70000}, "http_port", "less than or equal to 65535"),
        ({"http_port": "eighty"}, "http_port", "valid integer"),
        ({"log_level": "loud"}, "log_level", "'debug', 'info', 'warning' or 'error'"),
        ({"max_queue_size": 0}, "max_queue_size", "greater than or equal to 1"),
    ],
)
def test_invalid_values_in_file(tmp_path: Path, doc: dict[str, object], field: str, expected: str) -> None:
    path = _settings_json(tmp_path, doc)
    with pytest.raises(SettingsError) as info:
        load_server_settings(tmp_path)
    assert info.value.message.startswith(f"{path}: '{field}': ")
    assert expected in info.value.message


def test_invalid_values_name_their_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _settings_json(tmp_path, {"host": "127.0.0.1"})
    monkeypatch.setenv("RUNTIME_CORE_HTTP_PORT", "abc")
    with pytest.raises(SettingsError) as info:
        load_server_settings(tmp_path)
    assert info.value.message.startswith("environment variable RUNTIME_CORE_HTTP_PORT: 'http_port': ")
    monkeypatch.delenv("RUNTIME_CORE_HTTP_PORT")
    monkeypatch.setenv("MLSERVER_MODEL_PARALLEL_WORKERS", "-2")
    with pytest.raises(SettingsError) as info:
        load_server_settings(tmp_path)
    assert info.value.message.startswith("environment variable MLSERVER_MODEL_PARALLEL_WORKERS: 'parallel_workers'")
    with pytest.raises(SettingsError) as info:
        load_server_settings(tmp_path, parallel_workers=-1)
    assert info.value.message.startswith("command line: 'parallel_workers': ")


# --------------------------------------------------------------------------- model settings


def _model(root: Path, name: str, doc: object) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    path = folder / "model-settings.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_model_name_defaults_to_folder(tmp_path: Path) -> None:
    settings = load_model_settings(_model(tmp_path, "churn", {"runtime": "sklearn", "priority": 2}))
    assert (settings.name, settings.runtime_name, settings.weight) == ("churn", "sklearn", 2.0)
    assert settings.folder == tmp_path / "churn"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"runtime": "echo", "paramters": {}}, "unknown key 'paramters'"),
        ({"runtime": "echo", "parameters": {"urii": "m.bin"}}, "unknown key 'parameters.urii'"),
        (
            {"runtime": "echo", "inputs": [{"name": "x", "datatype": "FP32", "dims": [1]}]},
            "unknown key 'inputs.0.dims'",
        ),
        ({"runtime": "echo", "parallel_workers": -1}, "'parallel_workers': Input should be greater than or equal to 0"),
        ({"runtime": "echo", "weight": 0}, "'weight': Input should be greater than 0"),
        ({"name": "a/b", "runtime": "echo"}, "'name': Value error"),
        ({"name": "..", "runtime": "echo"}, "'name': Value error"),
        ({"runtime": "echo", "implementation": "mlserver_sklearn.SKLearnModel"}, "not both"),
        ({}, "names no 'runtime'"),
        ("[]", "must hold a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_model_settings_errors_name_file_and_key(tmp_path: Path, doc: object, expected: str) -> None:
    path = _model(tmp_path, "m", doc)
    with pytest.raises(SettingsError) as info:
        load_model_settings(path)
    assert info.value.message.startswith(f"{path}: ")
    assert expected in info.value.message
    assert info.value.path == str(path)


@pytest.mark.parametrize("uri", ["../../etc/passwd", "/etc/passwd", "../../../../../../etc/passwd", "a\\..\\..\\x"])
def test_uri_outside_the_repository_is_refused(tmp_path: Path, uri: str) -> None:
    repository = tmp_path / "repo"
    path = _model(repository, "thief", {"runtime": "sklearn", "parameters": {"uri": uri}})
    settings = load_model_settings(path)
    with pytest.raises(SettingsError) as info:
        settings.resolve_uri(repository)
    assert "'thief'" in info.value.message
    assert str(path) in info.value.message
    assert info.value.model == "thief"


def test_uri_through_a_symlink_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    path = _model(repository, "m", {"runtime": "sklearn", "parameters": {"uri": "link/model.joblib"}})
    (tmp_path / "outside").mkdir()
    (path.parent / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(SettingsError, match="leaves the model repository"):
        load_model_settings(path).resolve_uri(repository)


def test_uri_inside_the_repository_resolves(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    shared = _model(repository, "shared", {"runtime": "sklearn"}).parent / "model.joblib"
    path = _model(repository, "m", {"runtime": "sklearn", "parameters": {"uri": "../shared/model.joblib"}})
    assert load_model_settings(path).resolve_uri(repository) == shared.resolve()
    (path.parent / "model.pkl").write_bytes(b"")
    plain = _model(repository, "plain", {"runtime": "sklearn"})
    (plain.parent / "model.pkl").write_bytes(b"")
    found = load_model_settings(plain).resolve_uri(repository, ("model.joblib", "model.pkl"))
    assert found == plain.parent / "model.pkl"


# --------------------------------------------------------------------------- real servers


def _worker_count(server: ServerProcess) -> int:
    """Worker processes of the server: descendants named ``rc-w<i>:<model>`` (PR_SET_NAME)."""
    return sum(bool(re.match(r"rc-w\d+:", name)) for name, _ in named_processes(server.pid))


@pytest.mark.e2e
def test_parallel_workers_precedence_in_real_servers(tmp_path: Path) -> None:
    """settings.json < MLSERVER_MODEL_PARALLEL_WORKERS < RUNTIME_CORE_PARALLEL_WORKERS < flag."""
    write_model(tmp_path / "echo", runtime="echo")
    # min_workers (capped at parallel_workers) keeps every allowed worker up, so the count
    # of worker processes shows the parallel_workers in force.
    _settings_json(tmp_path, {"parallel_workers": 1, "min_workers": 64})
    cases = [
        ({}, None, 1),
        ({"MLSERVER_MODEL_PARALLEL_WORKERS": "2"}, None, 2),
        ({"MLSERVER_MODEL_PARALLEL_WORKERS": "2", "RUNTIME_CORE_PARALLEL_WORKERS": "3"}, None, 3),
        ({"RUNTIME_CORE_PARALLEL_WORKERS": "3"}, 2, 2),
    ]
    servers = [ServerProcess(tmp_path, env=env, workers=flag, wait=False) for env, flag, _ in cases]
    try:
        for server, (env, flag, expected) in zip(servers, cases, strict=True):
            server.wait_ready()
            counted = functools.partial(lambda s, n: _worker_count(s) == n, server, expected)
            wait_until(counted, 30, f"{expected} workers for {env} {flag}")
    finally:
        for server in servers:
            server.stop()


@pytest.mark.e2e
def test_bad_model_settings_fail_alone(tmp_path: Path) -> None:
    write_model(tmp_path / "good", runtime="echo", parallel_workers=0)
    write_model(tmp_path / "typo", runtime="echo", parallel_workers=0, paramters={})
    write_model(tmp_path / "thief", runtime="echo", parallel_workers=0, parameters={"uri": "../../etc/passwd"})
    server = ServerProcess(tmp_path, wait=False)
    try:
        server.wait_ready()
        status, index = server.post_json("/v2/repository/index", {})
        assert status == 200
        states = {item["name"]: item for item in index}
        assert states["good"]["state"] == "READY"
        assert states["typo"]["state"] == "UNAVAILABLE"
        assert "unknown key 'paramters'" in states["typo"]["reason"]
        assert str(tmp_path) not in states["typo"]["reason"]  # server paths stay in the log
        assert states["thief"]["state"] == "UNAVAILABLE"
        assert "leaves the model repository" in states["thief"]["reason"]
        status, doc = server.post_json(
            "/v2/models/good/infer", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]}
        )
        assert status == 200, doc
        assert doc["outputs"][0]["data"] == [1.5]
        status, doc = server.get("/v2/models/typo/ready")
        assert (status, doc) == (400, {"name": "typo", "ready": False})
        output = server.output()
        assert f"{tmp_path / 'typo' / 'model-settings.json'}: unknown key 'paramters'" in output
        assert f"{tmp_path / 'thief' / 'model-settings.json'}: model 'thief'" in output
        assert "1 model ready, 2 unavailable" in output
    finally:
        server.stop()


def _start(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTIME_CORE_", "MLSERVER_"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "runtime_core.cli", "start", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


@pytest.mark.e2e
def test_cli_reports_bad_server_settings(tmp_path: Path) -> None:
    path = _settings_json(tmp_path, {"http_port": 8080, "paralel_workers": 2})
    result = _start([str(tmp_path)])
    assert result.returncode == 2
    assert f"runtime-core: {path}: unknown key 'paralel_workers'" in result.stderr
    path.unlink()
    result = _start([str(tmp_path), "--http-port", "70000"])
    assert result.returncode == 2
    assert "command line: 'http_port': Input should be less than or equal to 65535" in result.stderr
    result = _start([str(tmp_path)], env={"RUNTIME_CORE_PARALLEL_WORKERS": "-1"})
    assert result.returncode == 2
    assert "environment variable RUNTIME_CORE_PARALLEL_WORKERS: 'parallel_workers'" in result.stderr


# --------------------------------------------------------------------------- MLServer settings


def test_mlserver_keys_in_settings_json_are_mapped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _settings_json(
        tmp_path,
        {
            "debug": "true",  # MLServer's examples write booleans as strings
            "http_port": 9001,
            "host": "127.0.0.3",
            "parallel_workers": 3,
            "load_models_at_startup": False,
            "model_repository_root": str(tmp_path / "elsewhere"),
            "use_structured_logging": True,
        },
    )
    built = load_server_settings(tmp_path)
    assert (built.log_level, built.http_port, built.host, built.parallel_workers) == ("debug", 9001, "127.0.0.3", 3)
    assert (built.load_models_at_startup, built.log_format) == (False, "json")
    # The command line's MODEL_REPOSITORY wins over model_repository_root, as in `mlserver start DIR`.
    assert built.model_repository == tmp_path
    assert not caplog.records


def test_our_keys_win_over_mlserver_keys(tmp_path: Path) -> None:
    _settings_json(tmp_path, {"debug": True, "log_level": "warning"})
    assert load_server_settings(tmp_path).log_level == "warning"
    _settings_json(tmp_path, {"debug": False})
    assert load_server_settings(tmp_path).log_level == "info"


def test_mlserver_keys_without_equivalent_warn_once_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _settings_json(tmp_path, {"metrics_dir": "/tmp/m", "gzip_enabled": True, "http_port": 1})
    assert load_server_settings(tmp_path).http_port == 1
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 2, lines
    assert all(line.startswith(f"{path}: MLServer setting ") for line in lines)
    assert "'metrics_dir'" in lines[0] and "'gzip_enabled'" in lines[1]


def test_mlserver_cors_settings_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _settings_json(tmp_path, {"cors_settings": {"allow_origins": ["https://a.example"], "max_age": 60}})
    cors = load_server_settings(tmp_path).cors_settings
    assert cors is not None
    assert (cors.allow_origins, cors.allow_methods, cors.max_age) == (["https://a.example"], ["GET"], 60)
    path = _settings_json(tmp_path, {"cors_settings": {"allow_origin": ["*"]}})
    with pytest.raises(SettingsError, match=re.escape(f"{path}: unknown key 'cors_settings.allow_origin'")):
        load_server_settings(tmp_path)
    path.unlink()
    monkeypatch.setenv("RUNTIME_CORE_CORS_SETTINGS", '{"allow_origin_regex": "https://.*[.]example"}')
    cors = load_server_settings(tmp_path).cors_settings
    assert cors is not None and cors.allow_origin_regex == "https://.*[.]example"


def test_keys_neither_ours_nor_mlservers_stay_errors(tmp_path: Path) -> None:
    path = _settings_json(tmp_path, {"metrics_dir": "/tmp/m", "metrics_prot": 8082})
    with pytest.raises(SettingsError) as info:
        load_server_settings(tmp_path)
    assert info.value.message == f"{path}: unknown key 'metrics_prot'"


def test_bad_mlserver_boolean_names_file_and_key(tmp_path: Path) -> None:
    path = _settings_json(tmp_path, {"debug": "maybe"})
    with pytest.raises(SettingsError, match=re.escape(f"{path}: 'debug': must be true or false")):
        load_server_settings(tmp_path)


def test_mlserver_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _settings_json(tmp_path, {"http_port": 9000, "host": "127.0.0.2"})
    for name, value in {
        "MLSERVER_HTTP_PORT": "9001",
        "MLSERVER_HOST": "127.0.0.4",
        "MLSERVER_PARALLEL_WORKERS": "2",
        "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
        "MLSERVER_DEBUG": "1",
        "MLSERVER_MODEL_NAME": "iris",
        "MLSERVER_MODEL_IMPLEMENTATION": "mlserver_sklearn.SKLearnModel",
        "MLSERVER_MODEL_URI": str(tmp_path / "mnt"),
    }.items():
        monkeypatch.setenv(name, value)
    built = load_server_settings(None)
    assert (built.http_port, built.host, built.parallel_workers) == (9001, "127.0.0.4", 2)
    assert (built.load_models_at_startup, built.log_level) == (False, "debug")
    assert (built.model_name, built.model_runtime) == ("iris", "mlserver_sklearn.SKLearnModel")
    assert built.model_repository == tmp_path / "mnt"
    # With a repository folder given (as by the command line), it wins over MLSERVER_MODEL_URI.
    built = load_server_settings(tmp_path)
    assert built.model_repository == tmp_path
    assert (built.http_port, built.host) == (9001, "127.0.0.4")  # the variables win over settings.json
    # Our own variables win over MLServer's, and flags over both.
    monkeypatch.setenv("RUNTIME_CORE_HTTP_PORT", "9002")
    monkeypatch.setenv("RUNTIME_CORE_LOG_LEVEL", "error")
    built = load_server_settings(tmp_path)
    assert (built.http_port, built.log_level) == (9002, "error")
    assert load_server_settings(tmp_path, http_port=9003).http_port == 9003


def test_bad_mlserver_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSERVER_HTTP_PORT", "eighty")
    with pytest.raises(SettingsError, match="environment variable MLSERVER_HTTP_PORT: 'http_port'"):
        load_server_settings(tmp_path)


# --------------------------------------------------------------------------- artifact confinement


def test_symlinked_default_artifact_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    path = _model(repository, "m", {"runtime": "sklearn"})
    (tmp_path / "outside.joblib").write_bytes(b"")
    (path.parent / "model.joblib").symlink_to(tmp_path / "outside.joblib")
    with pytest.raises(SettingsError, match=r"artifact 'model\.joblib' leaves the model repository"):
        load_model_settings(path).resolve_uri(repository, ("model.joblib",))


@pytest.mark.e2e
def test_model_settings_linked_out_of_the_repository_is_not_read(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write_model(root / "good", runtime="echo", parallel_workers=0)
    # A valid settings file outside the repository, and a model folder whose settings file links to it.
    write_model(tmp_path / "elsewhere", name="sneaky", runtime="echo", parallel_workers=0)
    (root / "sneaky").mkdir()
    (root / "sneaky" / "model-settings.json").symlink_to(tmp_path / "elsewhere" / "model-settings.json")
    server = ServerProcess(root, wait=False)
    try:
        server.wait_ready()
        status, index = server.post_json("/v2/repository/index", {})
        assert status == 200
        states = {item["name"]: item for item in index}
        assert states["good"]["state"] == "READY"
        assert states["sneaky"]["state"] == "UNAVAILABLE"
        assert (
            "model 'sneaky': model-settings.json is a link that leaves the model repository"
            in (states["sneaky"]["reason"])
        )
        assert str(tmp_path) not in states["sneaky"]["reason"]
        assert server.get("/v2/models/sneaky/ready")[0] == 400
    finally:
        server.stop()
    # The log names the model and the file; no traceback.
    output = server.output()
    link = root / "sneaky" / "model-settings.json"
    assert f"{link}: model 'sneaky': model-settings.json is a link that leaves the model repository" in output
    assert "Traceback" not in output


@pytest.mark.e2e
def test_mlserver_repository_and_symlinked_artifacts_in_a_real_server(tmp_path: Path) -> None:
    """A repository as MLServer's sklearn and xgboost examples lay it out (MLServer keys in
    settings.json), plus default artifacts that are symlinks: inside the repository they
    serve, out of it the model is refused and the file is never loaded."""
    import joblib
    import xgboost
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    root = tmp_path / "repo"
    root.mkdir()
    metrics_port = free_port()
    _settings_json(
        root, {"debug": "false", "load_models_at_startup": True, "metrics_port": metrics_port, "gzip_enabled": True}
    )
    for name, implementation, artifact in (
        ("mnist-svm", "mlserver_sklearn.SKLearnModel", "mnist-svm.joblib"),
        ("mushroom-xgboost", "mlserver_xgboost.XGBoostModel", "mushroom-xgboost.json"),
    ):
        _model(
            root,
            name,
            {
                "name": name,
                "implementation": implementation,
                "parameters": {"uri": f"./{artifact}", "version": "v0.1.0"},
            },
        )
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), root / "mnist-svm" / "mnist-svm.joblib")
    booster = xgboost.XGBClassifier(n_estimators=3, n_jobs=1).fit(x, y)
    booster.save_model(root / "mushroom-xgboost" / "mushroom-xgboost.json")
    _model(root, "linked", {"runtime": "sklearn"})
    (root / "linked" / "model.joblib").symlink_to(root / "mnist-svm" / "mnist-svm.joblib")
    _model(root, "escape", {"runtime": "sklearn"})
    outside = tmp_path / "outside.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), outside)
    (root / "escape" / "model.joblib").symlink_to(outside)

    server = ServerProcess(root, workers=1, wait=False)
    try:
        server.wait_ready()
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": x[0].tolist()}]}
        for name in ("mnist-svm", "mushroom-xgboost", "linked"):
            status, doc = server.post_json(f"/v2/models/{name}/infer", body)
            assert status == 200, (name, doc)
            assert doc["outputs"][0]["data"] == [int(y[0])]
        status, index = server.post_json("/v2/repository/index", {})
        (escape,) = [item for item in index if item["name"] == "escape"]
        assert escape["state"] == "UNAVAILABLE"
        assert "artifact 'model.joblib' leaves the model repository" in escape["reason"]
        assert str(tmp_path) not in escape["reason"]
        status, doc = server.post_json("/v2/models/escape/infer", body)
        assert status != 200, doc
        warnings = [line for line in server.output().splitlines() if "MLServer setting" in line]
        assert len(warnings) == 1 and "'gzip_enabled'" in warnings[0], server.output()
        # MLServer's metrics_port: Prometheus scrapes the same metrics there.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as resp:
            assert resp.status == 200 and b"runtime_core_requests_total" in resp.read()
    finally:
        server.stop()


def test_mlserver_model_keys_are_ignored_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    doc = {
        "name": "iris",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "warm_workers": True,
        "parameters": {"uri": "./model.joblib", "format": "joblib", "environment_tarball": "./env.tar.gz"},
    }
    path = _model(tmp_path, "iris", doc)
    for _ in range(3):  # repository scans read the file again and again
        settings = load_model_settings(path)
    assert settings.parameters.uri == "./model.joblib"
    lines = sorted(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert len(lines) == 3, lines
    assert all(line.startswith(f"{path}: MLServer setting ") for line in lines)
    assert "'parameters.environment_tarball'" in lines[0] and "'parameters.format'" in lines[1]
    assert "'warm_workers'" in lines[2]
    # A key of neither server still fails the model.
    typo = _model(tmp_path, "typo", {"runtime": "sklearn", "parameters": {"formatt": "joblib"}})
    with pytest.raises(SettingsError, match=re.escape("unknown key 'parameters.formatt'")):
        load_model_settings(typo)


def test_lazy_load_auto_is_the_default_and_decides_by_model_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime_core.settings import LAZY_LOAD_AUTO_ABOVE

    settings = load_server_settings(tmp_path)
    assert settings.lazy_load == "auto"
    assert not settings.lazy_for(LAZY_LOAD_AUTO_ABOVE) and settings.lazy_for(LAZY_LOAD_AUTO_ABOVE + 1)
    for value, lazy in (("false", False), ("true", True), ("AUTO", "auto")):
        monkeypatch.setenv("RUNTIME_CORE_LAZY_LOAD", value)
        assert load_server_settings(tmp_path).lazy_load == lazy
    monkeypatch.setenv("RUNTIME_CORE_LAZY_LOAD", "false")
    assert not load_server_settings(tmp_path).lazy_for(10_000)


def test_a_repository_scan_finds_nested_folders_skips_links_and_rereads_an_edited_file(tmp_path: Path) -> None:
    """What the repository index and a load by name see of the folder: settings files at any
    depth, not those behind a link to a folder or a link to nothing, and an edited file's new
    content on the next scan (scans reuse what they read from unchanged files)."""
    root = tmp_path / "repo"
    write_model(root / "a", runtime="echo", parallel_workers=0)
    write_model(root / "team" / "b", runtime="echo", parallel_workers=0)
    write_model(tmp_path / "outside" / "c", runtime="echo", parallel_workers=0)
    (root / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "broken").mkdir()
    (root / "broken" / "model-settings.json").symlink_to(tmp_path / "nowhere.json")
    scan = RepositoryScan(root, ServerSettings(), RuntimeRegistry())

    found, errors = scan.scan()
    assert sorted(found) == ["a", "b"]
    assert errors == []
    assert found["a"].parallel_workers == 0

    settings_file = root / "a" / "model-settings.json"
    before = settings_file.stat().st_mtime_ns
    settings_file.write_text(settings_file.read_text().replace('"parallel_workers": 0', '"parallel_workers": 3'))
    os.utime(settings_file, ns=(before + 1_000_000_000, before + 1_000_000_000))  # a coarse clock
    found, errors = scan.scan()
    assert found["a"].parallel_workers == 3
    assert found["b"].parallel_workers == 0
