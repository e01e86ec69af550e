"""KServe's single-model layout: ``runtime-core start DIR`` on a folder that holds one model's
files directly (as KServe's storage initializer leaves ``/mnt/models``), configured only by
environment variables, with real sklearn and xgboost models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import xgboost
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from runtime_core.layout import single_model
from runtime_core.plugins import RuntimeRegistry, load_registry
from runtime_core.settings import ServerSettings
from runtime_core.testing import ServerProcess, wait_until

N_FEATURES = 4


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    x, y = make_classification(n_samples=80, n_features=N_FEATURES, n_informative=3, n_redundant=0, random_state=1)
    x = x.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0).fit(x, y)
    booster = xgboost.XGBClassifier(n_estimators=4, max_depth=2, n_jobs=1, random_state=0).fit(x, y)
    return {"x": x[:7], "forest": forest, "booster": booster}


@pytest.fixture(scope="module")
def registry() -> RuntimeRegistry:
    return load_registry()


def _predict(server: ServerProcess, name: str, x: np.ndarray[Any, Any]) -> list[Any]:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, doc = server.post_json(f"/v2/models/{name}/infer", body)
    assert status == 200, doc
    return list(doc["outputs"][0]["data"])


@pytest.mark.e2e
def test_sklearn_folder_named_by_the_environment(tmp_path: Path, data: dict[str, Any], serve: Any) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    joblib.dump(data["forest"], folder / "model.joblib")
    server = serve(folder, workers=1, env={"RUNTIME_CORE_MODEL_NAME": "iris"})
    status, index = server.post_json("/v2/repository/index", {})
    assert status == 200
    assert [(m["name"], m["state"]) for m in index] == [("iris", "READY")]
    assert _predict(server, "iris", data["x"]) == data["forest"].predict(data["x"]).tolist()


@pytest.mark.e2e
def test_xgboost_folder_with_kserve_mlserver_variables(tmp_path: Path, data: dict[str, Any], serve: Any) -> None:
    """What KServe's MLServer runtime sets: the name, and an implementation label that is
    empty when the InferenceService has none, so the runtime comes from the file."""
    folder = tmp_path / "mnt-models"
    folder.mkdir()
    data["booster"].save_model(folder / "model.ubj")
    env = {"MLSERVER_MODEL_NAME": "boost", "MLSERVER_MODEL_IMPLEMENTATION": ""}
    server = serve(folder, workers=1, env=env)
    status, meta = server.get("/v2/models/boost")
    assert status == 200, meta
    expected = data["booster"].predict(data["x"])
    assert _predict(server, "boost", data["x"]) == expected.tolist()


@pytest.mark.e2e
def test_ambiguous_folder_is_a_clear_error_until_the_runtime_is_named(
    tmp_path: Path, data: dict[str, Any], serve: Any
) -> None:
    folder = tmp_path / "both"
    folder.mkdir()
    joblib.dump(data["forest"], folder / "model.joblib")
    data["booster"].save_model(folder / "model.json")
    server = serve(folder, workers=1, env={"RUNTIME_CORE_MODEL_NAME": "m"}, wait=False)

    def unavailable() -> dict[str, Any] | None:
        try:
            status, index = server.post_json("/v2/repository/index", {})
        except OSError:
            return None
        return index[0] if status == 200 and index and index[0]["state"] == "UNAVAILABLE" else None

    entry = wait_until(unavailable, 60, "the ambiguous model reported UNAVAILABLE")
    assert entry["name"] == "m"
    assert "RUNTIME_CORE_MODEL_RUNTIME" in entry["reason"]
    assert "model.joblib" in entry["reason"] and "model.json" in entry["reason"]
    status, _ = server.get("/v2/health/live")
    assert status == 200
    server.stop()

    named = serve(folder, workers=1, env={"RUNTIME_CORE_MODEL_NAME": "m", "RUNTIME_CORE_MODEL_RUNTIME": "sklearn"})
    assert _predict(named, "m", data["x"]) == data["forest"].predict(data["x"]).tolist()


def _settings(**values: Any) -> ServerSettings:
    return ServerSettings(**values)


def test_runtime_alias_and_any_artifact_file_name(
    tmp_path: Path, data: dict[str, Any], registry: RuntimeRegistry
) -> None:
    joblib.dump(data["forest"], tmp_path / "forest.pkl")
    found, errors = single_model(tmp_path, _settings(model_runtime="mlserver_sklearn.SKLearnModel"), registry)
    assert errors == []
    [(name, settings)] = found.items()
    assert name == tmp_path.name  # no name given: the folder's
    assert settings.runtime == "sklearn"
    assert settings.resolve_uri(tmp_path) == (tmp_path / "forest.pkl").resolve()


@pytest.mark.parametrize(
    ("file", "runtime"),
    [
        ("model.joblib", "sklearn"),
        ("m.pkl", "sklearn"),
        ("model.json", "xgboost"),
        ("b.ubj", "xgboost"),
        ("model.bst", "xgboost"),
    ],
)
def test_runtime_inferred_from_the_file(tmp_path: Path, registry: RuntimeRegistry, file: str, runtime: str) -> None:
    (tmp_path / file).write_bytes(b"x")
    (tmp_path / "settings.json").write_text("{}")  # server settings: never taken for a model
    found, errors = single_model(tmp_path, _settings(model_name="m"), registry)
    assert errors == []
    assert found["m"].runtime == runtime
    assert found["m"].parameters.uri == file


@pytest.mark.parametrize(
    ("files", "values", "expected"),
    [
        ([], {}, None),  # an empty repository stays empty
        (["settings.json", "README.md"], {}, None),
        ([], {"model_name": "m"}, "set RUNTIME_CORE_MODEL_RUNTIME"),
        (["a.joblib", "b.pkl"], {}, "several sklearn artifacts (a.joblib, b.pkl)"),
        (["model.joblib"], {"model_name": "../up"}, "model name '../up'"),
        (["model.joblib"], {"model_runtime": "tensorflow"}, "names runtime 'tensorflow', which is not installed"),
    ],
)
def test_folders_that_are_not_one_servable_model(
    tmp_path: Path, registry: RuntimeRegistry, files: list[str], values: dict[str, Any], expected: str | None
) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"{}")
    found, errors = single_model(tmp_path, _settings(**values), registry)
    assert found == {}
    if expected is None:
        assert errors == []
    else:
        [error] = errors
        assert expected in error.message
        assert error.model is not None


def test_mlserver_variables_fill_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSERVER_MODEL_NAME", "from-kserve")
    monkeypatch.setenv("MLSERVER_MODEL_IMPLEMENTATION", "mlserver_xgboost.XGBoostModel")
    settings = ServerSettings()
    assert (settings.model_name, settings.model_runtime) == ("from-kserve", "mlserver_xgboost.XGBoostModel")
    monkeypatch.setenv("RUNTIME_CORE_MODEL_NAME", "ours")
    assert ServerSettings().model_name == "ours"
