"""Tests of the xgboost runtime through runtime-core's public plugin interface only:
discovery by entry point, ``ModelSettings`` + ``RuntimeContext``, ``load``/``predict``,
and the V2 codec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import xgboost as xgb
from sklearn.datasets import load_iris, make_classification, make_regression

from runtime_core import InferenceRequest, InvalidRequest, RequestedOutput, Runtime, RuntimeContext, Tensor, testing
from runtime_core.codecs.json import decode_request, encode_response
from runtime_core.plugins import load_registry
from runtime_core.settings import load_model_settings

run = testing.run


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def classifier(iris: tuple[np.ndarray, np.ndarray]) -> xgb.XGBClassifier:
    x, y = iris
    return xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1, random_state=0).fit(x, y)


@pytest.fixture(scope="module")
def binary() -> tuple[xgb.XGBClassifier, np.ndarray]:
    x, y = make_classification(n_samples=200, n_features=6, random_state=0)
    model = xgb.XGBClassifier(n_estimators=6, max_depth=3, n_jobs=1, random_state=0).fit(x, y)
    return model, x.astype(np.float32)


def save(booster: xgb.Booster, folder: Path, file: str) -> Path:
    """Save in the format the extension asks for; .bst/.model get UBJSON bytes (xgboost
    would warn about guessing the format if asked to save to those names)."""
    folder.mkdir(parents=True, exist_ok=True)
    if file.endswith((".json", ".ubj")):
        booster.save_model(folder / file)
    else:
        (folder / file).write_bytes(booster.save_raw("ubj"))
    return folder


def make_runtime(folder: Path, settings: dict[str, Any] | None = None, **kwargs: Any) -> Runtime:
    return testing.make_runtime(folder, {"runtime": "xgboost", **(settings or {})}, **kwargs)


def request(x: np.ndarray, *outputs: str, name: str = "input-0") -> InferenceRequest:
    return InferenceRequest(inputs=[Tensor(name, x)], outputs=[RequestedOutput(o) for o in outputs])


def outputs_of(runtime: Runtime, req: InferenceRequest) -> dict[str, Tensor]:
    return testing.predict_outputs(runtime, req)


# --------------------------------------------------------------------------- discovery


def test_registry_finds_xgboost_and_mlserver_alias() -> None:
    registry = load_registry()
    entry = registry.get("xgboost")
    assert entry.distribution == "runtime-core-xgboost"
    assert entry.import_path == "runtime_core_xgboost.runtime:XGBoostRuntime"
    assert registry.get("mlserver_xgboost.XGBoostModel") is entry


@pytest.mark.e2e
def test_building_the_registry_does_not_import_xgboost() -> None:
    code = (
        "import sys\n"
        "from runtime_core.plugins import load_registry\n"
        "load_registry().get('xgboost')\n"
        "assert 'xgboost' not in sys.modules, 'framework imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------- artifacts and outputs


@pytest.mark.parametrize("file", ["model.json", "model.ubj", "model.bst", "model.model"])
def test_sklearn_api_classifier_in_every_format(
    tmp_path: Path, classifier: xgb.XGBClassifier, iris: tuple, file: str
) -> None:
    x = iris[0][::9]
    runtime = make_runtime(save(classifier.get_booster(), tmp_path / "m", file))
    assert runtime.context.uri is not None and runtime.context.uri.name == file
    out = outputs_of(runtime, request(x))
    assert list(out) == ["predict"] and out["predict"].datatype == "INT64"
    np.testing.assert_array_equal(out["predict"].data, classifier.predict(x))
    both = outputs_of(runtime, request(x, "predict_proba", "predict"))
    assert list(both) == ["predict_proba", "predict"]
    assert both["predict_proba"].datatype == "FP32" and both["predict_proba"].shape == [len(x), 3]
    np.testing.assert_allclose(both["predict_proba"].data, classifier.predict_proba(x), rtol=1e-6)


def test_sklearn_api_save_model_artifact(tmp_path: Path, classifier: xgb.XGBClassifier, iris: tuple) -> None:
    (tmp_path / "m").mkdir()
    classifier.save_model(tmp_path / "m" / "model.json")
    out = outputs_of(make_runtime(tmp_path / "m"), request(iris[0][:5], "predict_proba"))
    np.testing.assert_allclose(out["predict_proba"].data, classifier.predict_proba(iris[0][:5]), rtol=1e-6)


def test_json_content_under_a_legacy_extension(tmp_path: Path, classifier: xgb.XGBClassifier, iris: tuple) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.bst").write_bytes(classifier.get_booster().save_raw("json"))
    out = outputs_of(make_runtime(tmp_path / "m"), request(iris[0][:5]))
    np.testing.assert_array_equal(out["predict"].data, classifier.predict(iris[0][:5]))


def test_binary_classifier_gives_two_probability_columns(tmp_path: Path, binary: tuple) -> None:
    model, x = binary
    runtime = make_runtime(save(model.get_booster(), tmp_path / "m", "model.json"))
    assert runtime.metadata().outputs[1].shape == [-1, 2]
    out = outputs_of(runtime, request(x[:10], "predict", "predict_proba"))
    np.testing.assert_array_equal(out["predict"].data, model.predict(x[:10]))
    assert out["predict_proba"].shape == [10, 2]
    np.testing.assert_allclose(out["predict_proba"].data, model.predict_proba(x[:10]), rtol=1e-6)


def test_plain_booster_objectives(tmp_path: Path, iris: tuple) -> None:
    x, y = iris
    data = xgb.DMatrix(x, label=y)
    base = {"max_depth": 2, "nthread": 1, "seed": 0, "num_class": 3}
    softprob = xgb.train({**base, "objective": "multi:softprob"}, data, num_boost_round=4)
    softmax = xgb.train({**base, "objective": "multi:softmax"}, data, num_boost_round=4)
    expected = softprob.predict(xgb.DMatrix(x[::7]))

    prob_rt = make_runtime(save(softprob, tmp_path / "prob", "model.json"))
    out = outputs_of(prob_rt, request(x[::7], "predict", "predict_proba"))
    np.testing.assert_allclose(out["predict_proba"].data, expected, rtol=1e-6)
    np.testing.assert_array_equal(out["predict"].data, expected.argmax(axis=1))

    max_rt = make_runtime(save(softmax, tmp_path / "max", "model.ubj"))
    out = outputs_of(max_rt, request(x[::7], "predict", "predict_proba"))
    np.testing.assert_allclose(out["predict_proba"].data, expected, rtol=1e-5)
    np.testing.assert_array_equal(out["predict"].data, expected.argmax(axis=1))

    yb = (y == 2).astype(float)
    logitraw = xgb.train({"objective": "binary:logitraw", "max_depth": 2, "nthread": 1}, xgb.DMatrix(x, label=yb), 4)
    raw_rt = make_runtime(save(logitraw, tmp_path / "raw", "model.json"))
    margin = logitraw.predict(xgb.DMatrix(x[::7]))
    out = outputs_of(raw_rt, request(x[::7], "predict", "predict_proba"))
    np.testing.assert_array_equal(out["predict"].data, (margin > 0).astype(np.int64))
    np.testing.assert_allclose(out["predict_proba"].data[:, 1], 1 / (1 + np.exp(-margin)), rtol=1e-5)


def test_regressor_predicts_values_and_has_no_predict_proba(tmp_path: Path) -> None:
    x, y = make_regression(n_samples=100, n_features=5, random_state=0)
    model = xgb.XGBRegressor(n_estimators=5, max_depth=3, n_jobs=1, random_state=0).fit(x, y)
    runtime = make_runtime(save(model.get_booster(), tmp_path / "m", "model.model"))
    out = outputs_of(runtime, request(x[:4].astype(np.float32)))
    assert out["predict"].datatype == "FP32"
    np.testing.assert_allclose(out["predict"].data, model.predict(x[:4].astype(np.float32)), rtol=1e-6)
    with pytest.raises(InvalidRequest, match="unknown output 'predict_proba'"):
        run(runtime.predict(request(x[:1], "predict_proba")))
    meta = runtime.metadata()
    assert [(s.name, s.datatype, s.shape) for s in meta.outputs] == [("predict", "FP32", [-1])]


def test_early_stopped_model_predicts_with_its_best_iteration(tmp_path: Path, binary: tuple) -> None:
    _, x = binary
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    model = xgb.XGBClassifier(
        n_estimators=200, learning_rate=0.8, max_depth=6, early_stopping_rounds=2, n_jobs=1, random_state=0
    ).fit(x[:100], y[:100], eval_set=[(x[100:], y[100:])], verbose=False)
    assert model.best_iteration < 199
    runtime = make_runtime(save(model.get_booster(), tmp_path / "m", "model.json"))
    out = outputs_of(runtime, request(x, "predict_proba"))
    np.testing.assert_allclose(out["predict_proba"].data, model.predict_proba(x), rtol=1e-6)


# --------------------------------------------------------------------------- inputs and errors


def test_wrong_feature_count_is_invalid_request_without_internals(
    tmp_path: Path, classifier: xgb.XGBClassifier, iris: tuple
) -> None:
    runtime = make_runtime(save(classifier.get_booster(), tmp_path / "m", "model.json"))
    with pytest.raises(InvalidRequest) as info:
        run(runtime.predict(request(iris[0][:2, :3])))
    message = str(info.value)
    assert "expected: 4, got 3" in message
    assert "\n" not in message and "Stack trace" not in message and ".cc:" not in message


def test_bytes_and_three_dimensional_inputs_are_invalid(tmp_path: Path, classifier: xgb.XGBClassifier) -> None:
    runtime = make_runtime(save(classifier.get_booster(), tmp_path / "m", "model.json"))
    with pytest.raises(InvalidRequest, match="BYTES"):
        run(runtime.predict(request(np.array([b"a"], dtype=object))))
    with pytest.raises(InvalidRequest, match="2-D"):
        run(runtime.predict(request(np.zeros((1, 2, 4), dtype=np.float32))))


def test_one_dimensional_input_is_one_row(tmp_path: Path, classifier: xgb.XGBClassifier, iris: tuple) -> None:
    runtime = make_runtime(save(classifier.get_booster(), tmp_path / "m", "model.json"))
    out = outputs_of(runtime, request(iris[0][140]))
    assert out["predict"].shape == [1]
    np.testing.assert_array_equal(out["predict"].data, classifier.predict(iris[0][140:141]))


def test_several_inputs_follow_the_boosters_feature_names(tmp_path: Path, iris: tuple) -> None:
    x, y = iris
    names = ["sl", "sw", "pl", "pw"]
    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 2, "nthread": 1},
        xgb.DMatrix(x, label=y, feature_names=names),
        num_boost_round=3,
    )
    runtime = make_runtime(save(booster, tmp_path / "m", "model.json"))
    rows = x[::11]
    shuffled = InferenceRequest(inputs=[Tensor(n, rows[:, names.index(n)]) for n in ["pw", "sl", "pl", "sw"]])
    in_order = request(rows)
    np.testing.assert_array_equal(
        outputs_of(runtime, shuffled)["predict"].data, outputs_of(runtime, in_order)["predict"].data
    )
    # Unknown names: joined in request order.
    positional = InferenceRequest(inputs=[Tensor("a", rows[:, :2]), Tensor("b", rows[:, 2:])])
    np.testing.assert_array_equal(
        outputs_of(runtime, positional)["predict"].data, outputs_of(runtime, in_order)["predict"].data
    )


def test_integer_and_float64_inputs(tmp_path: Path, classifier: xgb.XGBClassifier, iris: tuple) -> None:
    runtime = make_runtime(save(classifier.get_booster(), tmp_path / "m", "model.json"))
    x = iris[0][:6]
    expected = classifier.predict(x)
    np.testing.assert_array_equal(outputs_of(runtime, request(x.astype(np.float64)))["predict"].data, expected)
    ints = np.rint(x).astype(np.int64)
    np.testing.assert_array_equal(
        outputs_of(runtime, request(ints))["predict"].data, classifier.predict(ints.astype(np.float32))
    )


def test_garbage_artifact_fails_the_load_with_a_short_message(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text("this is not a model")
    runtime = make_runtime(tmp_path / "m", load=False)
    with pytest.raises(ValueError, match="not an XGBoost JSON/UBJSON model") as info:
        run(runtime.load())
    assert "[bt]" not in str(info.value) and "Stack trace" not in str(info.value)


def test_missing_artifact_fails_the_load(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path / "empty", load=False)
    with pytest.raises(FileNotFoundError, match=r"model\.json"):
        run(runtime.load())


# --------------------------------------------------------------------------- threads and settings


def test_nthread_comes_from_the_context_or_parameters(tmp_path: Path, classifier: xgb.XGBClassifier) -> None:
    folder = save(classifier.get_booster(), tmp_path / "m", "model.json")
    assert make_runtime(folder, threads=3).nthread == 3  # type: ignore[attr-defined]
    overridden = make_runtime(folder, {"parameters": {"extra": {"nthread": 2}}}, threads=3)
    assert overridden.nthread == 2  # type: ignore[attr-defined]
    assert json.loads(overridden.booster.save_config())["learner"]["generic_param"]["nthread"] == "2"  # type: ignore[attr-defined]
    broken = make_runtime(folder, {"parameters": {"extra": {"nthread": "many"}}}, load=False)
    with pytest.raises(ValueError, match="nthread"):
        run(broken.load())


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc")
def test_load_starts_no_threads_so_workers_can_be_forked(tmp_path: Path) -> None:
    x, y = make_classification(n_samples=300, n_features=8, random_state=0)
    model = xgb.XGBClassifier(n_estimators=60, max_depth=4, n_jobs=1, random_state=0).fit(x, y)
    folder = save(model.get_booster(), tmp_path / "m", "model.json")
    make_runtime(folder, threads=4, load=False)  # writes model-settings.json
    code = textwrap.dedent(
        f"""
        import asyncio, os
        from pathlib import Path
        import numpy, xgboost
        from runtime_core import RuntimeContext
        from runtime_core.plugins import load_registry
        from runtime_core.settings import load_model_settings

        def threads():
            return len(os.listdir("/proc/self/task"))

        settings = load_model_settings(Path({str(folder / "model-settings.json")!r}))
        cls = load_registry().get("xgboost").cls
        context = RuntimeContext(settings.name, None, settings.folder, settings.resolve_uri(None, cls.artifact_names),
                                 4, None)
        runtime = cls(settings, context)
        before = threads()
        asyncio.run(runtime.load())
        after = threads()
        assert before == after, (before, after)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)


def test_metadata_is_derived_from_the_booster(tmp_path: Path, classifier: xgb.XGBClassifier) -> None:
    meta = make_runtime(save(classifier.get_booster(), tmp_path / "m", "model.json")).metadata()
    assert [(s.name, s.datatype, s.shape) for s in meta.inputs] == [("input-0", "FP32", [-1, 4])]
    assert [(s.name, s.datatype, s.shape) for s in meta.outputs] == [
        ("predict", "INT64", [-1]),
        ("predict_proba", "FP32", [-1, 3]),
    ]


def test_mlserver_alias_settings(tmp_path: Path, classifier: xgb.XGBClassifier, iris: tuple) -> None:
    folder = save(classifier.get_booster(), tmp_path / "m", "model.bst")
    settings = {"implementation": "mlserver_xgboost.XGBoostModel", "parameters": {"uri": "./model.bst"}}
    (folder / "model-settings.json").write_text(json.dumps(settings))
    model_settings = load_model_settings(folder / "model-settings.json")
    entry = load_registry().get(model_settings.runtime_name)
    context = RuntimeContext(
        model_settings.name, None, folder, model_settings.resolve_uri(tmp_path, entry.cls.artifact_names), 1, 0
    )
    runtime = entry.cls(model_settings, context)
    run(runtime.load())
    # A plain Booster file, as MLServer serves it (issue 21): through XGBRegressor, so
    # ``predict`` is the booster's own prediction (here the class probabilities), no labels.
    predict = outputs_of(runtime, request(iris[0][:3]))["predict"]
    np.testing.assert_allclose(predict.data, classifier.predict_proba(iris[0][:3]), rtol=1e-6)
    assert predict.parameters == {"content_type": "np"}


def test_v2_round_trip(tmp_path: Path, classifier: xgb.XGBClassifier, iris: tuple) -> None:
    runtime = make_runtime(save(classifier.get_booster(), tmp_path / "m", "model.json"))
    x = iris[0][[0, 60, 120]]
    body = orjson.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x.reshape(-1).tolist()}],
            "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
        }
    )
    req = decode_request(body)
    encoded, json_length = encode_response(run(runtime.predict(req)), model_name="m", model_version=None, request=req)
    assert json_length is None
    predict, proba = orjson.loads(encoded)["outputs"]
    assert predict == {"name": "predict", "datatype": "INT64", "shape": [3], "data": classifier.predict(x).tolist()}
    assert proba["datatype"] == "FP32" and proba["shape"] == [3, 3]
    np.testing.assert_allclose(np.array(proba["data"]).reshape(3, 3), classifier.predict_proba(x), rtol=1e-6)


@pytest.mark.e2e
def test_served_by_a_real_server(tmp_path: Path, classifier: xgb.XGBClassifier, iris: tuple, rc_server: Any) -> None:
    save(classifier.get_booster(), tmp_path / "iris", "model.json")
    (tmp_path / "iris" / "model-settings.json").write_text(json.dumps({"runtime": "xgboost", "threads": 1}))
    server = rc_server(tmp_path, workers=1)
    x = iris[0][[0, 100]]
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.reshape(-1).tolist()}],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }
    status, body = server.post_json("/v2/models/iris/infer", doc)
    assert status == 200, body
    assert body["outputs"][0]["data"] == classifier.predict(x).tolist()
    np.testing.assert_allclose(np.reshape(body["outputs"][1]["data"], (2, 3)), classifier.predict_proba(x), rtol=1e-6)
    doc["inputs"][0].update(shape=[2, 2], data=x[:, :2].reshape(-1).tolist())
    status, body = server.post_json("/v2/models/iris/infer", doc)
    assert status == 400 and body["error"] == "Feature shape mismatch, expected: 4, got 2"


# --------------------------------------------------------------------------- MLServer's convention (issue 21)


def _mlserver_runtime(folder: Path) -> Runtime:
    return testing.make_runtime(folder, {"implementation": "mlserver_xgboost.XGBoostModel"})


def test_mlserver_folder_saved_by_xgbclassifier_answers_as_xgbclassifier(
    tmp_path: Path, binary: tuple[xgb.XGBClassifier, np.ndarray]
) -> None:
    """A file saved through the sklearn API says it is a classifier: MLServer loads it as an
    XGBClassifier, so labels and ``predict_proba``, each ``[n, 1]``/``[n, 2]`` with ``np``."""
    model, x = binary
    folder = tmp_path / "clf"
    folder.mkdir()
    model.save_model(folder / "model.json")
    out = outputs_of(_mlserver_runtime(folder), request(x[:5], "predict", "predict_proba"))
    assert out["predict"].datatype == "INT64"
    np.testing.assert_array_equal(out["predict"].data, model.predict(x[:5]).reshape(-1, 1))
    np.testing.assert_allclose(out["predict_proba"].data, model.predict_proba(x[:5]), rtol=1e-6)
    assert out["predict_proba"].parameters == {"content_type": "np"}


def test_mlserver_folder_softmax_classifier_labels_are_int32(tmp_path: Path, iris: tuple) -> None:
    """XGBClassifier.predict gives ``multi:softmax`` labels as int32: so does MLServer."""
    x, y = iris
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2, objective="multi:softmax", n_jobs=1).fit(x, y)
    folder = tmp_path / "softmax"
    folder.mkdir()
    model.save_model(folder / "model.ubj")
    out = outputs_of(_mlserver_runtime(folder), request(x[[0, 60, 120]], "predict", "predict_proba"))
    assert out["predict"].datatype == "INT32"
    np.testing.assert_array_equal(out["predict"].data, model.predict(x[[0, 60, 120]]).reshape(-1, 1))
    np.testing.assert_allclose(out["predict_proba"].data, model.predict_proba(x[[0, 60, 120]]), rtol=1e-5)


def test_mlserver_booster_file_has_no_predict_proba(
    tmp_path: Path, binary: tuple[xgb.XGBClassifier, np.ndarray]
) -> None:
    model, x = binary
    runtime = _mlserver_runtime(save(model.get_booster(), tmp_path / "b", "model.bst"))
    with pytest.raises(InvalidRequest, match="no predict_proba output: its file was not saved by XGBClassifier"):
        run(runtime.predict(request(x[:1], "predict_proba")))
    with pytest.raises(InvalidRequest, match="unknown output 'margin'"):
        run(runtime.predict(request(x[:1], "margin")))
    out = outputs_of(runtime, request(x[:4]))  # the next good request: P(class 1), FP32 [n, 1]
    assert (out["predict"].datatype, out["predict"].shape) == ("FP32", [4, 1])
    np.testing.assert_allclose(out["predict"].data[:, 0], model.predict_proba(x[:4])[:, 1], rtol=1e-6)
