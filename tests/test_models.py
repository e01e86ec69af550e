"""End to end with real models: sklearn and xgboost served from one repository, MLServer
model folders served unchanged, and the bundled examples as the README shows them.

Models are trained in fixtures (tiny, deterministic) and the server's answers are compared
with the same models' own ``predict``/``predict_proba`` run in this process.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import tritonclient.http as httpclient
import xgboost
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from runtime_core.testing import ServerProcess, write_model

pytestmark = pytest.mark.e2e  # every test here starts real server processes

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
N_FEATURES = 5


def _data() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    x, y = make_classification(
        n_samples=120, n_features=N_FEATURES, n_informative=3, n_redundant=0, n_classes=3, random_state=0
    )
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One repository: sklearn and xgboost models, native and MLServer-style, 0 and 2 workers."""
    root = tmp_path_factory.mktemp("mixed")
    x, y = _data()
    forest = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, y)
    booster = xgboost.XGBClassifier(n_estimators=5, max_depth=3, n_jobs=1, random_state=0).fit(x, y)
    write_model(root / "skl", runtime="sklearn", parallel_workers=2)
    joblib.dump(forest, root / "skl" / "model.joblib")
    write_model(root / "xgb", runtime="xgboost", parallel_workers=2)
    booster.save_model(root / "xgb" / "model.json")
    # the same artifacts, run in the main process
    write_model(root / "skl-inline", runtime="sklearn", parallel_workers=0, parameters={"uri": "../skl/model.joblib"})
    write_model(root / "xgb-inline", runtime="xgboost", parallel_workers=0, parameters={"uri": "../xgb/model.json"})
    # model-settings.json exactly as MLServer documents them
    mlserver_skl = {
        "name": "mlserver-skl",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v0.1.0"},
    }
    mlserver_xgb = {
        "name": "mlserver-xgb",
        "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": "./model.json", "version": "v0.1.0"},
    }
    for doc, artifact in ((mlserver_skl, root / "skl" / "model.joblib"), (mlserver_xgb, root / "xgb" / "model.json")):
        folder = root / str(doc["name"])
        folder.mkdir()
        (folder / "model-settings.json").write_text(json.dumps(doc, indent=2))
        shutil.copy(artifact, folder / artifact.name)
    return {"root": root, "x": x, "sklearn": forest, "xgboost": booster}


@pytest.fixture(scope="module")
def server(trained: dict[str, Any]) -> Iterator[ServerProcess]:
    proc = ServerProcess(trained["root"], workers=1)
    yield proc
    proc.stop()


def _infer(server: ServerProcess, model: str, x: np.ndarray[Any, Any], *outputs: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    status, doc = server.post_json(f"/v2/models/{model}/infer", body)
    assert status == 200, doc
    return doc


def _array(doc: dict[str, Any], name: str) -> np.ndarray[Any, Any]:
    out = next(o for o in doc["outputs"] if o["name"] == name)
    return np.asarray(out["data"]).reshape(out["shape"])


def test_every_model_is_ready(server: ServerProcess) -> None:
    status, index = server.post_json("/v2/repository/index", {})
    assert status == 200
    assert {item["name"]: item["state"] for item in index} == {
        name: "READY" for name in ("skl", "xgb", "skl-inline", "xgb-inline", "mlserver-skl", "mlserver-xgb")
    }


@pytest.mark.parametrize(
    ("model", "framework"),
    [
        ("skl", "sklearn"),
        ("skl-inline", "sklearn"),
        ("mlserver-skl", "sklearn"),
        ("xgb", "xgboost"),
        ("xgb-inline", "xgboost"),
        ("mlserver-xgb", "xgboost"),
    ],
)
def test_outputs_match_the_model_in_process(
    server: ServerProcess, trained: dict[str, Any], model: str, framework: str
) -> None:
    x = trained["x"][:17]
    local = trained[framework]
    doc = _infer(server, model, x, "predict", "predict_proba")
    labels = local.predict(x)
    if model.startswith("mlserver"):  # MLServer's answer: one label per row as [n, 1] (issue 21)
        labels = labels.reshape(-1, 1)
    np.testing.assert_array_equal(_array(doc, "predict"), labels)
    np.testing.assert_allclose(_array(doc, "predict_proba"), local.predict_proba(x), rtol=1e-6, atol=1e-7)
    default = _infer(server, model, x)  # no outputs asked: predict only
    assert [o["name"] for o in default["outputs"]] == ["predict"]


@pytest.mark.parametrize("framework", ["skl", "xgb"])
def test_zero_and_two_workers_answer_the_same(server: ServerProcess, trained: dict[str, Any], framework: str) -> None:
    x = trained["x"][40:60]
    pooled = _infer(server, framework, x, "predict", "predict_proba")
    inline = _infer(server, f"{framework}-inline", x, "predict", "predict_proba")
    assert pooled["outputs"] == inline["outputs"]


def test_mlserver_folder_metadata(server: ServerProcess) -> None:
    status, meta = server.get("/v2/models/mlserver-skl")
    assert status == 200
    assert (meta["name"], meta["platform"], meta["versions"]) == ("mlserver-skl", "sklearn", ["v0.1.0"])
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, N_FEATURES]}]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
    status, meta = server.get("/v2/models/mlserver-xgb/versions/v0.1.0")
    assert status == 200
    assert meta["platform"] == "xgboost"
    status, _ = server.get("/v2/models/mlserver-xgb/versions/v9/ready")
    assert status == 404


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("skl", f"X has 3 features, but RandomForestClassifier is expecting {N_FEATURES} features"),
        ("mlserver-skl", "RandomForestClassifier is expecting"),
        ("xgb", f"Feature shape mismatch, expected: {N_FEATURES}, got 3"),
        ("xgb-inline", f"expected: {N_FEATURES}, got 3"),
    ],
)
def test_wrong_feature_count_is_400_with_the_models_message(server: ServerProcess, model: str, message: str) -> None:
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
    status, doc = server.post_json(f"/v2/models/{model}/infer", body)
    assert status == 400
    assert message in doc["error"]
    assert "/" not in doc["error"]  # no server paths, no stack


# --------------------------------------------------------------------------- the bundled examples


def _load_train_models() -> Any:
    spec = importlib.util.spec_from_file_location("train_models", EXAMPLES / "train_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def examples_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of examples/models, trained by examples/train_models.py's ensure_models."""
    root = tmp_path_factory.mktemp("examples") / "models"
    shutil.copytree(EXAMPLES / "models", root, ignore=shutil.ignore_patterns("model.joblib", "model.json", ".*"))
    written = _load_train_models().ensure_models(root)
    assert {p.name for p in written} == {"model.joblib", "model.json"}
    return root


@pytest.fixture(scope="module")
def examples(examples_root: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(examples_root, workers=1)
    yield proc
    proc.stop()


def test_readme_request(examples: ServerProcess) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    status, doc = examples.post_json("/v2/models/iris-sklearn/infer", body)
    assert status == 200
    assert doc == {
        "model_name": "iris-sklearn",
        "model_version": "1",
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [1], "data": [0]}],
    }


@pytest.mark.parametrize("model", ["iris-sklearn", "iris-xgboost", "iris-mlserver"])
def test_readme_probabilities_request(examples: ServerProcess, model: str) -> None:
    body = {
        "inputs": [
            {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}
        ],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }
    status, doc = examples.post_json(f"/v2/models/{model}/infer", body)
    assert status == 200, doc
    assert [o["name"] for o in doc["outputs"]] == ["predict", "predict_proba"]
    # a folder written for MLServer gets MLServer's [n, 1] (issue 21)
    assert _array(doc, "predict").tolist() == ([[0], [2]] if model == "iris-mlserver" else [0, 2])
    proba = _array(doc, "predict_proba")
    assert proba.shape == (2, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_tritonclient_against_both_examples(examples: ServerProcess, examples_root: Path) -> None:
    root = examples_root
    local = {
        "iris-sklearn": joblib.load(root / "iris-sklearn" / "model.joblib"),
        "iris-xgboost": xgboost.XGBClassifier(),
    }
    local["iris-xgboost"].load_model(root / "iris-xgboost" / "model.json")
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{examples.port}")
    try:
        assert client.is_server_ready()
        for model, estimator in local.items():
            assert client.is_model_ready(model)
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            outputs = [
                httpclient.InferRequestedOutput("predict", binary_data=True),
                httpclient.InferRequestedOutput("predict_proba", binary_data=False),
            ]
            result = client.infer(model, [inp], outputs=outputs, request_id="r-1")
            assert result.get_response()["id"] == "r-1"
            np.testing.assert_array_equal(result.as_numpy("predict"), estimator.predict(x))
            np.testing.assert_allclose(result.as_numpy("predict_proba"), estimator.predict_proba(x), rtol=1e-6)
    finally:
        client.close()
