"""Tests of the sklearn runtime through runtime-core's public plugin interface only:
discovery by entry point, ``ModelSettings`` + ``RuntimeContext``, ``load``/``predict``,
and the V2 codec."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import pytest
from runtime_core_sklearn.linear import MAX_FEATURES, linear_predict
from sklearn.datasets import load_iris
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from runtime_core import InferenceRequest, InvalidRequest, RequestedOutput, Runtime, RuntimeContext, Tensor, testing
from runtime_core.codecs.json import decode_request, encode_response
from runtime_core.plugins import load_registry
from runtime_core.settings import load_model_settings

run = testing.run


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return x, y


@pytest.fixture(scope="module")
def logreg(iris: tuple[np.ndarray, np.ndarray]) -> LogisticRegression:
    x, y = iris
    return LogisticRegression(max_iter=1000).fit(x, y)


def make_runtime(folder: Path, settings: dict[str, Any] | None = None, **kwargs: Any) -> Runtime:
    return testing.make_runtime(folder, {"runtime": "sklearn", **(settings or {})}, **kwargs)


def request(x: np.ndarray, *outputs: str, name: str = "input-0", **parameters: Any) -> InferenceRequest:
    return InferenceRequest(
        inputs=[Tensor(name, x)], outputs=[RequestedOutput(o) for o in outputs], parameters=parameters
    )


def outputs_of(runtime: Runtime, req: InferenceRequest) -> dict[str, Tensor]:
    return testing.predict_outputs(runtime, req)


def _dump(model: Any, folder: Path, file: str = "model.joblib") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if file.endswith(".joblib"):
        joblib.dump(model, folder / file)
    else:
        with open(folder / file, "wb") as fh:
            pickle.dump(model, fh)
    return folder


# --------------------------------------------------------------------------- discovery


def test_registry_finds_sklearn_and_mlserver_alias() -> None:
    registry = load_registry()
    entry = registry.get("sklearn")
    assert entry.distribution == "runtime-core-sklearn"
    assert entry.import_path == "runtime_core_sklearn.runtime:SKLearnRuntime"
    assert registry.get("mlserver_sklearn.SKLearnModel") is entry


@pytest.mark.e2e
def test_building_the_registry_does_not_import_sklearn() -> None:
    code = (
        "import sys\n"
        "from runtime_core.plugins import load_registry\n"
        "load_registry().get('sklearn')\n"
        "assert 'sklearn' not in sys.modules and 'joblib' not in sys.modules, 'framework imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------- predict


def test_predict_is_the_default_output(tmp_path: Path, logreg: LogisticRegression, iris: tuple) -> None:
    x = iris[0][:5]
    runtime = make_runtime(_dump(logreg, tmp_path / "m"))
    out = outputs_of(runtime, request(x))
    assert list(out) == ["predict"]
    assert out["predict"].datatype == "INT64"
    np.testing.assert_array_equal(out["predict"].data, logreg.predict(x))


def test_predict_proba_and_both_in_requested_order(tmp_path: Path, logreg: LogisticRegression, iris: tuple) -> None:
    x = iris[0][:7].astype(np.float32)
    runtime = make_runtime(_dump(logreg, tmp_path / "m"))
    proba = outputs_of(runtime, request(x, "predict_proba"))
    assert list(proba) == ["predict_proba"]
    assert proba["predict_proba"].datatype == "FP64"
    assert proba["predict_proba"].shape == [7, 3]
    np.testing.assert_allclose(proba["predict_proba"].data, logreg.predict_proba(x))

    response = run(runtime.predict(request(x, "predict_proba", "predict")))
    assert [t.name for t in response.outputs] == ["predict_proba", "predict"]
    np.testing.assert_array_equal(response.outputs[1].data, logreg.predict(x))


def test_unknown_output_is_invalid_request(tmp_path: Path, logreg: LogisticRegression, iris: tuple) -> None:
    runtime = make_runtime(_dump(logreg, tmp_path / "m"))
    with pytest.raises(InvalidRequest, match="unknown output 'decision'"):
        run(runtime.predict(request(iris[0][:1], "decision")))


def test_predict_proba_of_a_regressor_is_invalid_request(tmp_path: Path, iris: tuple) -> None:
    x, y = iris
    runtime = make_runtime(_dump(LinearRegression().fit(x, y), tmp_path / "m"))
    with pytest.raises(InvalidRequest, match="predict_proba"):
        run(runtime.predict(request(x[:1], "predict_proba")))
    out = outputs_of(runtime, request(x[:2]))
    assert out["predict"].datatype == "FP64"


def test_wrong_feature_count_is_invalid_request_without_internals(
    tmp_path: Path, logreg: LogisticRegression, iris: tuple
) -> None:
    runtime = make_runtime(_dump(logreg, tmp_path / "m"))
    with pytest.raises(InvalidRequest) as info:
        run(runtime.predict(request(iris[0][:2, :3])))
    message = str(info.value)
    assert "3 features" in message and "4" in message
    assert "Traceback" not in message and str(tmp_path) not in message and "\n" not in message


def test_nan_input_is_a_clear_error_for_models_that_reject_it(
    tmp_path: Path, logreg: LogisticRegression, iris: tuple
) -> None:
    runtime = make_runtime(_dump(logreg, tmp_path / "m"))
    x = iris[0][:2].copy()
    x[0, 0] = np.nan
    with pytest.raises(InvalidRequest, match="NaN"):
        run(runtime.predict(request(x, "predict", "predict_proba")))
    x[0, 0] = np.inf
    with pytest.raises(InvalidRequest, match="infinity"):
        run(runtime.predict(request(x)))


def test_nan_input_is_predicted_by_models_that_handle_missing_values(tmp_path: Path, iris: tuple) -> None:
    x, y = iris
    model = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(x, y)
    runtime = make_runtime(_dump(model, tmp_path / "m"))
    probe = x[:3].copy()
    probe[1, 2] = np.nan
    out = outputs_of(runtime, request(probe))
    np.testing.assert_array_equal(out["predict"].data, model.predict(probe))


class _ShiftedLogisticRegression(LogisticRegression):
    """A subclass whose ``predict`` is not scikit-learn's: the linear shortcut must not be taken."""

    def predict(self, X: Any) -> Any:
        return super().predict(X) + 10


def _linear_models(x: np.ndarray, y: np.ndarray) -> list[Any]:
    labels = np.array(["setosa", "versicolor", "virginica"])[y.astype(int)]
    return [
        LogisticRegression(max_iter=1000).fit(x, y),  # multiclass
        LogisticRegression(max_iter=1000).fit(x, y == 1),  # binary, bool labels
        LogisticRegression(max_iter=1000).fit(x, labels),  # text labels
        SGDClassifier(random_state=0).fit(x, y),
        LinearRegression().fit(x, y),
        LinearRegression().fit(x, np.c_[y, 2 * y]),  # two targets
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_models_answer_exactly_as_their_own_predict(tmp_path: Path, iris: tuple, dtype: type) -> None:
    x, y = iris
    rng = np.random.default_rng(1)
    probe = np.concatenate([x, rng.normal(scale=5.0, size=(50, 4))]).astype(dtype)
    for n, model in enumerate(_linear_models(x, y)):
        assert linear_predict(model, 4) is not None, type(model).__name__  # the shortcut is taken
        runtime = make_runtime(_dump(model, tmp_path / f"m{n}"))
        for rows in (probe, probe[:1], probe[7:8], np.asfortranarray(probe)):
            out = outputs_of(runtime, request(rows))["predict"]
            got = np.array([v.decode() for v in out.data]) if out.datatype == "BYTES" else out.data
            np.testing.assert_array_equal(got, model.predict(rows))


def test_linear_shortcut_is_refused_where_it_would_differ(iris: tuple) -> None:
    x, y = iris
    assert linear_predict(_ShiftedLogisticRegression(max_iter=1000).fit(x, y), 4) is None  # own predict
    sparse = LogisticRegression(max_iter=1000).fit(x, y).sparsify()  # coefficients in a sparse matrix
    assert linear_predict(sparse, 4) is None
    assert linear_predict(HistGradientBoostingClassifier(max_iter=5).fit(x, y), 4) is None
    assert linear_predict(LogisticRegression(max_iter=1000).fit(x, y), MAX_FEATURES + 1) is None  # too wide to probe


def test_linear_model_still_rejects_nan_and_wrong_width_through_sklearn(tmp_path: Path, iris: tuple) -> None:
    x, y = iris
    model = LinearRegression().fit(x, y)
    runtime = make_runtime(_dump(model, tmp_path / "m"))
    bad = x[:2].copy()
    bad[1, 3] = np.nan
    with pytest.raises(InvalidRequest, match="NaN"):
        run(runtime.predict(request(bad)))
    with pytest.raises(InvalidRequest, match="3 features"):
        run(runtime.predict(request(x[:2, :3])))
    ints = x[:3].astype(np.int32)  # not float: scikit-learn's own path
    np.testing.assert_array_equal(outputs_of(runtime, request(ints))["predict"].data, model.predict(ints))


@pytest.mark.parametrize("file", ["model.joblib", "model.pkl", "model.pickle"])
def test_joblib_and_pickle_artifacts(tmp_path: Path, logreg: LogisticRegression, iris: tuple, file: str) -> None:
    runtime = make_runtime(_dump(logreg, tmp_path / "m", file))
    assert runtime.context.uri is not None and runtime.context.uri.name == file
    out = outputs_of(runtime, request(iris[0][:4]))
    np.testing.assert_array_equal(out["predict"].data, logreg.predict(iris[0][:4]))


def test_pipeline(tmp_path: Path, iris: tuple) -> None:
    x, y = iris
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    runtime = make_runtime(_dump(pipe, tmp_path / "m"))
    out = outputs_of(runtime, request(x[::10], "predict", "predict_proba"))
    np.testing.assert_array_equal(out["predict"].data, pipe.predict(x[::10]))
    np.testing.assert_allclose(out["predict_proba"].data, pipe.predict_proba(x[::10]))


def test_string_labels_come_back_as_bytes(tmp_path: Path, iris: tuple) -> None:
    x, y = iris
    labels = np.array(["setosa", "versicolor", "virginica"], dtype=object)[y]
    model = LogisticRegression(max_iter=1000).fit(x, labels)
    runtime = make_runtime(_dump(model, tmp_path / "m"))
    out = outputs_of(runtime, request(x[[0, 60, 120]]))
    assert out["predict"].datatype == "BYTES"
    assert out["predict"].data.tolist() == [b"setosa", b"versicolor", b"virginica"]
    assert runtime.metadata().outputs[0].datatype == "BYTES"


def test_one_dimensional_input_is_one_row(tmp_path: Path, logreg: LogisticRegression, iris: tuple) -> None:
    runtime = make_runtime(_dump(logreg, tmp_path / "m"))
    out = outputs_of(runtime, request(iris[0][100]))
    assert out["predict"].shape == [1]
    np.testing.assert_array_equal(out["predict"].data, logreg.predict(iris[0][100:101]))


def test_several_inputs_are_joined_column_wise_in_request_order(
    tmp_path: Path, logreg: LogisticRegression, iris: tuple
) -> None:
    x = iris[0][::15]
    runtime = make_runtime(_dump(logreg, tmp_path / "m"))
    req = InferenceRequest(inputs=[Tensor("a", x[:, 0]), Tensor("b", x[:, 1:3]), Tensor("c", x[:, 3])])
    np.testing.assert_array_equal(outputs_of(runtime, req)["predict"].data, logreg.predict(x))
    ragged = InferenceRequest(inputs=[Tensor("a", x[:, 0]), Tensor("b", x[:-1, 1:])])
    with pytest.raises(InvalidRequest, match="different numbers of rows"):
        run(runtime.predict(ragged))


def test_pandas_content_type_builds_named_columns(tmp_path: Path, iris: tuple) -> None:
    pandas = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    x, y = iris
    frame = pandas.DataFrame({"petal": x[:, 2], "sepal": x[:, 0], "kind": np.where(x[:, 3] > 1.0, "wide", "thin")})
    pipe = make_pipeline(
        ColumnTransformer([("num", StandardScaler(), ["petal", "sepal"]), ("cat", OneHotEncoder(), ["kind"])]),
        LogisticRegression(max_iter=1000),
    ).fit(frame, y)
    runtime = make_runtime(_dump(pipe, tmp_path / "m"))
    rows = frame.iloc[[0, 70, 140]]
    inputs = [
        Tensor("petal", rows["petal"].to_numpy()),
        Tensor("sepal", rows["sepal"].to_numpy().reshape(-1, 1)),
        Tensor("kind", np.array([s.encode() for s in rows["kind"]], dtype=object), "BYTES"),
    ]
    req = InferenceRequest(inputs=inputs, outputs=[RequestedOutput("predict_proba")], parameters={"content_type": "pd"})
    out = outputs_of(runtime, req)
    np.testing.assert_allclose(out["predict_proba"].data, pipe.predict_proba(rows))

    two_d = InferenceRequest(inputs=[Tensor("petal", x[:2, :2])], parameters={"content_type": "pd"})
    with pytest.raises(InvalidRequest, match="one column"):
        run(runtime.predict(two_d))


def test_model_fitted_on_a_dataframe_takes_a_plain_array_without_warnings(tmp_path: Path, iris: tuple) -> None:
    pandas = pytest.importorskip("pandas")
    x, y = iris
    names = ["sl", "sw", "pl", "pw"]
    model = LogisticRegression(max_iter=1000).fit(pandas.DataFrame(x, columns=names), y)
    runtime = make_runtime(_dump(model, tmp_path / "m"))
    out = outputs_of(runtime, request(x[:3]))  # filterwarnings=error would turn a warning into a failure
    np.testing.assert_array_equal(out["predict"].data, model.predict(pandas.DataFrame(x[:3], columns=names)))
    with pytest.raises(InvalidRequest, match="3 features"):
        run(runtime.predict(request(x[:3, :3])))


def test_pandas_content_type_with_an_array_model_joins_columns(
    tmp_path: Path, logreg: LogisticRegression, iris: tuple
) -> None:
    x = iris[0][:4]
    runtime = make_runtime(_dump(logreg, tmp_path / "m"), {"parameters": {"content_type": "pd"}})
    req = InferenceRequest(inputs=[Tensor(f"f{i}", x[:, i]) for i in range(4)])
    np.testing.assert_array_equal(outputs_of(runtime, req)["predict"].data, logreg.predict(x))


# --------------------------------------------------------------------------- settings, metadata, errors


def test_metadata_is_derived_from_the_model(tmp_path: Path, logreg: LogisticRegression) -> None:
    meta = make_runtime(_dump(logreg, tmp_path / "m")).metadata()
    assert [(s.name, s.datatype, s.shape) for s in meta.inputs] == [("input-0", "FP64", [-1, 4])]
    assert [(s.name, s.datatype, s.shape) for s in meta.outputs] == [
        ("predict", "INT64", [-1]),
        ("predict_proba", "FP64", [-1, 3]),
    ]


def test_declared_metadata_wins(tmp_path: Path, logreg: LogisticRegression) -> None:
    settings = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}],
    }
    meta = make_runtime(_dump(logreg, tmp_path / "m"), settings).metadata()
    assert [(s.name, s.datatype, s.shape) for s in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [s.name for s in meta.outputs] == ["predict"]


def test_mlserver_settings_with_relative_uri(tmp_path: Path, logreg: LogisticRegression, iris: tuple) -> None:
    _dump(logreg, tmp_path / "shared")
    settings = {
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "../shared/model.joblib", "version": "3"},
    }
    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "model-settings.json").write_text(json.dumps(settings))
    model_settings = load_model_settings(folder / "model-settings.json")
    entry = load_registry().get(model_settings.runtime_name)
    assert entry.name == "sklearn"
    context = RuntimeContext(
        model_name=model_settings.name,
        version=model_settings.version,
        folder=folder,
        uri=model_settings.resolve_uri(tmp_path, entry.cls.artifact_names),
        threads=1,
        worker_index=0,
    )
    runtime = entry.cls(model_settings, context)
    run(runtime.load())
    out = outputs_of(runtime, request(iris[0][:2]))
    # MLServer's convention for its folders (issue 21): one label per row as [n, 1]
    np.testing.assert_array_equal(out["predict"].data, logreg.predict(iris[0][:2]).reshape(-1, 1))
    assert out["predict"].parameters == {"content_type": "np"}


def test_missing_artifact_fails_the_load_naming_the_files(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path / "empty", load=False)
    with pytest.raises(FileNotFoundError, match=r"model\.joblib"):
        run(runtime.load())


def test_an_artifact_without_predict_fails_the_load(tmp_path: Path) -> None:
    runtime = make_runtime(_dump({"not": "a model"}, tmp_path / "m", "model.pkl"), load=False)
    with pytest.raises(TypeError, match="no predict"):
        run(runtime.load())


def test_v2_json_and_binary_round_trip(tmp_path: Path, logreg: LogisticRegression, iris: tuple) -> None:
    runtime = make_runtime(_dump(logreg, tmp_path / "m"), {"parameters": {"version": "7"}})
    x = iris[0][[0, 50, 100]].astype(np.float32)
    body = orjson.dumps(
        {
            "id": "r1",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x.reshape(-1).tolist()}],
            "outputs": [{"name": "predict"}, {"name": "predict_proba", "parameters": {"binary_data": True}}],
        }
    )
    req = decode_request(body)
    response = run(runtime.predict(req))
    encoded, json_length = encode_response(response, model_name="m", model_version="7", request=req)
    assert json_length is not None
    header = orjson.loads(encoded[:json_length])
    assert header["id"] == "r1" and header["model_version"] == "7"
    predict, proba = header["outputs"]
    assert predict == {"name": "predict", "datatype": "INT64", "shape": [3], "data": [0, 1, 2]}
    assert proba["datatype"] == "FP64" and proba["shape"] == [3, 3]
    values = np.frombuffer(encoded[json_length:], dtype="<f8").reshape(3, 3)
    np.testing.assert_allclose(values, logreg.predict_proba(x))


def test_bytes_output_round_trip(tmp_path: Path, iris: tuple) -> None:
    x, y = iris
    model = LogisticRegression(max_iter=1000).fit(x, np.array(["a", "b", "c"])[y])
    runtime = make_runtime(_dump(model, tmp_path / "m"))
    req = decode_request(
        orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [4], "data": x[120].tolist()}]})
    )
    encoded, json_length = encode_response(run(runtime.predict(req)), model_name="m", model_version=None, request=req)
    assert json_length is None
    assert orjson.loads(encoded)["outputs"] == [{"name": "predict", "datatype": "BYTES", "shape": [1], "data": ["c"]}]


@pytest.mark.e2e
def test_served_by_a_real_server(tmp_path: Path, logreg: LogisticRegression, iris: tuple, rc_server: Any) -> None:
    _dump(logreg, tmp_path / "iris")
    (tmp_path / "iris" / "model-settings.json").write_text(json.dumps({"runtime": "sklearn"}))
    server = rc_server(tmp_path, workers=1)
    x = iris[0][[0, 100]]
    doc = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 4], "data": x.reshape(-1).tolist()}]}
    status, body = server.post_json("/v2/models/iris/infer", doc)
    assert status == 200, body
    assert body["outputs"][0]["data"] == logreg.predict(x).tolist()
    doc["inputs"][0].update(shape=[2, 2], data=x[:, :2].reshape(-1).tolist())
    status, body = server.post_json("/v2/models/iris/infer", doc)
    assert status == 400 and "2 features" in body["error"]


# --------------------------------------------------------------------------- MLServer's convention (issue 21)


def _mlserver_runtime(folder: Path, **parameters: Any) -> Runtime:
    settings: dict[str, Any] = {"implementation": "mlserver_sklearn.SKLearnModel"}
    if parameters:
        settings["parameters"] = parameters
    return testing.make_runtime(folder, settings)


def test_mlserver_folder_answers_transform_and_predict_fn(tmp_path: Path, iris: tuple) -> None:
    """MLServer's SKLearnModel answers ``transform`` too, and ``predict_fn`` picks the output
    of requests that name none; every output comes as MLServer's NumpyCodec writes it."""
    from sklearn.cluster import KMeans

    x = iris[0]
    kmeans = KMeans(n_clusters=3, n_init=2, random_state=0).fit(x)
    runtime = _mlserver_runtime(_dump(kmeans, tmp_path / "km"))
    out = outputs_of(runtime, request(x[:4], "transform", "predict"))
    np.testing.assert_allclose(out["transform"].data, kmeans.transform(x[:4]))
    np.testing.assert_array_equal(out["predict"].data, kmeans.predict(x[:4]).reshape(-1, 1))
    assert {t.parameters["content_type"] for t in out.values()} == {"np"}
    default = _mlserver_runtime(_dump(kmeans, tmp_path / "km-t"), extra={"predict_fn": "transform"})
    assert list(outputs_of(default, request(x[:2]))) == ["transform"]


def test_mlserver_folder_refuses_outputs_mlserver_refuses(tmp_path: Path, iris: tuple) -> None:
    from sklearn.linear_model import Ridge

    runtime = _mlserver_runtime(_dump(Ridge().fit(iris[0], iris[1]), tmp_path / "ridge"))
    with pytest.raises(InvalidRequest, match="a Ridge has no predict_proba output"):
        run(runtime.predict(request(iris[0][:1], "predict_proba")))
    with pytest.raises(InvalidRequest, match=r"unknown output 'decision_function'.*predict, predict_proba, transform"):
        run(runtime.predict(request(iris[0][:1], "decision_function")))
    # the next good request is answered
    assert outputs_of(runtime, request(iris[0][:3]))["predict"].shape == [3, 1]


def test_mlserver_predict_fn_typo_fails_the_load_naming_model_and_file(
    tmp_path: Path, logreg: LogisticRegression
) -> None:
    folder = _dump(logreg, tmp_path / "typo")
    with pytest.raises(ValueError, match=r"model 'typo': parameters.extra.predict_fn is 'predict_probba'"):
        _mlserver_runtime(folder, extra={"predict_fn": "predict_probba"})
    ridge_folder = _dump(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]), tmp_path / "lin")
    with pytest.raises(ValueError, match=r"LinearRegression in model.joblib has no predict_proba\(\)"):
        _mlserver_runtime(ridge_folder, extra={"predict_fn": "predict_proba"})
