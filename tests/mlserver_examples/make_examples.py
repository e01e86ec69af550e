"""Lay out model folders in the shape of MLServer's documented examples (issue 21).

Each example is a folder an MLServer user would serve with ``mlserver start <folder>``:
the ``model-settings.json`` files are written as MLServer's examples write them, the
artifacts are trained here on deterministic data (no download: tests and the recorder
run without network), and the custom models' code comes from ``code/``.

Used by ``record_mlserver.py`` (which records MLServer's answers) and by
``tests/test_mlserver_answers.py`` (which serves the same folders with runtime-core), so
both see the same files. Framework imports happen per example, so that an environment
without lightgbm (or mlserver) can still lay out the others.

Also holds the request data the examples' READMEs send (:func:`digits_test_rows`,
:func:`mushroom_test_rows`, :func:`iris_rows`), so the recorder and the test agree on them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
CODE = HERE / "code"

#: MLServer's example ``settings.json``: the examples all ship this one.
SERVER_SETTINGS = {"debug": "true"}

MUSHROOM_FEATURES = 126  # agaricus' one-hot width, which the xgboost example's requests carry


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=4) + "\n")


# --------------------------------------------------------------------------- data


def _digits_split() -> tuple[Any, Any, Any, Any]:
    """sklearn's bundled digits, split in halves without shuffling, as the sklearn example does."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = digits.images.reshape((len(digits.images), -1))
    half = len(data) // 2
    return data[:half], data[half:], digits.target[:half], digits.target[half:]


def digits_test_rows(count: int) -> np.ndarray[Any, Any]:
    """The first ``count`` rows of the digits test half (the README sends one)."""
    return np.asarray(_digits_split()[1][:count])


def _mushroom_data() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Stand-in for agaricus (not shipped with any package): 126 one-hot-like binary columns
    from a fixed seed, with a label that a depth-2 tree ensemble can learn."""
    rng = np.random.RandomState(21)
    features = (rng.rand(400, MUSHROOM_FEATURES) < 0.25).astype(np.float32)
    label = ((features[:, 4] + features[:, 17] + features[:, 60] - features[:, 99]) >= 1).astype(np.float32)
    return features, label


def mushroom_test_rows(count: int) -> np.ndarray[Any, Any]:
    """Rows held out of the xgboost example's training data."""
    features, _ = _mushroom_data()
    return features[-count:]


def iris_rows(count: int) -> np.ndarray[Any, Any]:
    """Every 50th-offset iris row, so the first three rows are one of each class."""
    from sklearn.datasets import load_iris

    data = load_iris().data
    return np.asarray(data[[0, 50, 100, 25, 75, 125][:count]])


# --------------------------------------------------------------------------- training


def _train_digits_svm(path: Path) -> None:
    import joblib
    from sklearn import svm

    train_x, _, train_y, _ = _digits_split()
    joblib.dump(svm.SVC(gamma=0.001).fit(train_x, train_y), path)


def _train_mushroom_booster(path: Path) -> None:
    """A plain Booster, ``binary:logistic``, saved with ``Booster.save_model`` as JSON."""
    import xgboost as xgb

    features, label = _mushroom_data()
    train = xgb.DMatrix(features[:-50], label=label[:-50])
    params = {"max_depth": 2, "eta": 1, "objective": "binary:logistic", "nthread": 1, "seed": 0}
    xgb.train(params, train, num_boost_round=2).save_model(str(path))


def _train_iris_lightgbm(path: Path) -> None:
    import lightgbm as lgb
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    iris = load_iris()
    train_x, _, train_y, _ = train_test_split(iris.data, iris.target, test_size=0.1, random_state=0)
    params = {
        "objective": "multiclass",
        "num_class": 3,
        "num_threads": 1,
        "deterministic": True,
        "seed": 0,
        "verbose": -1,
    }
    lgb.train(params, lgb.Dataset(train_x, label=train_y)).save_model(str(path))


def _iris() -> tuple[Any, Any]:
    from sklearn.datasets import load_iris

    iris = load_iris()
    return iris.data, iris.target


def _train_iris_logreg(path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    data, target = _iris()
    joblib.dump(LogisticRegression(max_iter=1000).fit(data, target), path)


def _train_iris_ridge(path: Path) -> None:
    import joblib
    from sklearn.linear_model import Ridge

    data, target = _iris()
    # A regressor on iris' four columns (petal width from the other three plus the class):
    # no predict_proba, FP64 answers.
    joblib.dump(Ridge().fit(data[:, :3], data[:, 3] + target), path)


def _train_iris_xgb_classifier(path: Path) -> None:
    """Saved by the sklearn API: the file says it is a classifier (MLServer loads it as one)."""
    import xgboost as xgb

    data, target = _iris()
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1, random_state=0)
    model.fit(data, target).save_model(str(path))


def _train_iris_softprob_booster(path: Path) -> None:
    import xgboost as xgb

    data, target = _iris()
    params = {"max_depth": 2, "eta": 0.5, "objective": "multi:softprob", "num_class": 3, "nthread": 1, "seed": 0}
    xgb.train(params, xgb.DMatrix(data, label=target), num_boost_round=3).save_model(str(path))


# --------------------------------------------------------------------------- folders


def _sklearn(folder: Path) -> None:
    _train_digits_svm(folder / "mnist-svm.joblib")
    _write_json(
        folder / "model-settings.json",
        {
            "name": "mnist-svm",
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./mnist-svm.joblib", "version": "v0.1.0"},
        },
    )


def _xgboost(folder: Path) -> None:
    _train_mushroom_booster(folder / "mushroom-xgboost.json")
    _write_json(
        folder / "model-settings.json",
        {
            "name": "mushroom-xgboost",
            "implementation": "mlserver_xgboost.XGBoostModel",
            "parameters": {"uri": "./mushroom-xgboost.json", "version": "v0.1.0"},
        },
    )


def _lightgbm(folder: Path) -> None:
    _train_iris_lightgbm(folder / "iris-lightgbm.bst")
    _write_json(
        folder / "model-settings.json",
        {
            "name": "iris-lgb",
            "implementation": "mlserver_lightgbm.LightGBMModel",
            "parameters": {"uri": "./iris-lightgbm.bst", "version": "v0.1.0"},
        },
    )


def _custom_json(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CODE / "jsonmodels.py", folder / "jsonmodels.py")
    _write_json(
        folder / "model-settings.json", {"name": "json-hello-world", "implementation": "jsonmodels.JsonHelloWorldModel"}
    )


def _content_type(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CODE / "content_type_runtime.py", folder / "runtime.py")
    _write_json(
        folder / "model-settings.json", {"name": "content-type-example", "implementation": "runtime.EchoRuntime"}
    )


def _mms(folder: Path) -> None:
    """Two models in one repository, artifacts under their default names (no ``uri``)."""
    svm = folder / "models" / "mnist-svm"
    svm.mkdir(parents=True, exist_ok=True)
    _train_digits_svm(svm / "model.joblib")
    _write_json(
        svm / "model-settings.json",
        {"name": "mnist-svm", "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"version": "v0.1.0"}},
    )
    xgb = folder / "models" / "mushroom-xgboost"
    xgb.mkdir(parents=True, exist_ok=True)
    _train_mushroom_booster(xgb / "model.json")
    _write_json(
        xgb / "model-settings.json",
        {
            "name": "mushroom-xgboost",
            "implementation": "mlserver_xgboost.XGBoostModel",
            "parameters": {"version": "v0.1.0"},
        },
    )


def _sum_model(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CODE / "sum_models.py", folder / "models.py")
    _write_json(folder / "model-settings.json", {"name": "sum-model", "implementation": "models.SumModel"})


def _extras(folder: Path) -> None:
    """Not one of MLServer's examples: models that show what the examples cannot (a
    classifier with ``predict_proba``, ``predict_fn``, a regressor, an XGBClassifier file,
    a multi-class Booster), each in its own folder of one repository."""
    sklearn_impl = "mlserver_sklearn.SKLearnModel"
    xgboost_impl = "mlserver_xgboost.XGBoostModel"
    models: list[tuple[str, str, Callable[[Path], None], str, dict[str, Any]]] = [
        ("iris-logreg", sklearn_impl, _train_iris_logreg, "model.joblib", {}),
        ("iris-proba", sklearn_impl, _train_iris_logreg, "model.joblib", {"extra": {"predict_fn": "predict_proba"}}),
        ("iris-ridge", sklearn_impl, _train_iris_ridge, "model.pkl", {}),
        ("iris-xgb-classifier", xgboost_impl, _train_iris_xgb_classifier, "model.json", {}),
        ("iris-xgb-softprob", xgboost_impl, _train_iris_softprob_booster, "model.ubj", {}),
    ]
    for name, implementation, train, artifact, parameters in models:
        model = folder / name
        model.mkdir(parents=True, exist_ok=True)
        train(model / artifact)
        settings: dict[str, Any] = {"name": name, "implementation": implementation}
        if parameters:
            settings["parameters"] = parameters
        _write_json(model / "model-settings.json", settings)


#: Example name -> the function that lays it out in a folder of its own.
EXAMPLES: dict[str, Callable[[Path], None]] = {
    "sklearn": _sklearn,
    "xgboost": _xgboost,
    "lightgbm": _lightgbm,
    "custom-json": _custom_json,
    "content-type": _content_type,
    "mms": _mms,
    "sum-model": _sum_model,
    "extras": _extras,
}


def make_example(name: str, root: Path) -> Path:
    """Lay out example ``name`` in ``root / name`` (with MLServer's example ``settings.json``);
    returns that folder."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    EXAMPLES[name](folder)
    _write_json(folder / "settings.json", SERVER_SETTINGS)
    return folder


def make_examples(root: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Lay out the named examples (default: all) under ``root``; returns their folders."""
    return {name: make_example(name, root) for name in names or list(EXAMPLES)}


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "mlserver-examples")
    for example, path in make_examples(target, sys.argv[2:] or None).items():
        print(f"{example}: {path}")
