"""MLServer's answers for folders that name ``mlserver_xgboost.XGBoostModel`` (issue 21).

MLServer 1.7.1 loads the file into xgboost's sklearn wrappers: as an ``XGBRegressor``
unless the file says it was saved by ``XGBClassifier`` (the booster attribute
``scikit_learn`` holds ``"_estimator_type": "classifier"``). So:

* a plain Booster (``Booster.save_model``, any objective) answers ``predict`` with the
  booster's own prediction: the probability for ``binary:logistic``, the class
  probabilities for ``multi:softprob``, the value for a regression; it has no
  ``predict_proba``;
* a file saved by ``XGBClassifier`` answers ``predict`` with class labels and has
  ``predict_proba``, with the rules of ``XGBClassifier`` (:func:`classifier_labels`,
  :func:`classifier_probabilities`);
* outputs are encoded as MLServer's ``NumpyCodec`` encodes arrays: ``[n]`` as ``[n, 1]``,
  ``parameters.content_type: "np"``; the default output is ``predict``;
* a request without an ``id`` gets a generated one, and the answer always has a
  ``parameters`` object (the server does both when the runtime sets ``mlserver_envelope``).

The predictions come from the runtime's own ``Booster.inplace_predict`` call, so both
conventions read inputs the same way. Folders that name ``"runtime": "xgboost"`` never
reach this module.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from runtime_core import InvalidRequest, Tensor

__all__ = [
    "MLSERVER_OUTPUTS",
    "as_mlserver_output",
    "classifier_labels",
    "classifier_probabilities",
    "requested_outputs",
    "saved_as_classifier",
]

#: The outputs MLServer's XGBoostModel may be asked for.
MLSERVER_OUTPUTS = ("predict", "predict_proba")


def saved_as_classifier(sklearn_attribute: str | None) -> bool:
    """Whether the booster's ``scikit_learn`` attribute says ``XGBClassifier`` saved it."""
    if not sklearn_attribute:
        return False
    try:
        meta = json.loads(sklearn_attribute)
    except ValueError:
        return False
    return isinstance(meta, dict) and meta.get("_estimator_type") == "classifier"


def requested_outputs(names: list[str], classifier: bool, model_name: str) -> list[str]:
    """The outputs to compute for a request asking for ``names`` (``[]``: ``predict``)."""
    if not names:
        return ["predict"]
    for name in names:
        if name not in MLSERVER_OUTPUTS:
            raise InvalidRequest(
                f"unknown output {name!r}; model {model_name!r} (MLServer's XGBoostModel) can answer"
                f" {', '.join(MLSERVER_OUTPUTS)}"
            )
        if name == "predict_proba" and not classifier:
            raise InvalidRequest(
                f"model {model_name!r} has no predict_proba output: its file was not saved by XGBClassifier,"
                " so it is served as a regressor, as MLServer serves it"
            )
    return names


def classifier_labels(raw: np.ndarray[Any, Any], objective: str, n_classes: int) -> np.ndarray[Any, Any]:
    """``XGBClassifier.predict`` from the booster's plain prediction ``raw``."""
    if raw.ndim > 1 and n_classes != 2:
        return np.asarray(raw.argmax(axis=1))
    if raw.ndim > 1 and raw.shape[1] != 1:  # multi-label: one 0/1 column per label, as floats
        return (raw > 0.5).astype(np.float64)
    if objective == "multi:softmax":
        return raw.astype(np.int32)
    return (raw.reshape(-1) > 0.5).astype(np.int64)


def classifier_probabilities(raw: np.ndarray[Any, Any], n_classes: int) -> np.ndarray[Any, Any]:
    """``XGBClassifier.predict_proba`` from the booster's plain prediction (not for
    ``multi:softmax``, whose probabilities come from the margins)."""
    if raw.ndim == 2 and (raw.shape[1] == n_classes or (n_classes == 2 and raw.shape[1] >= 2)):
        return raw
    return np.column_stack([1.0 - raw, raw]).astype(raw.dtype, copy=False)


def as_mlserver_output(name: str, data: np.ndarray[Any, Any]) -> Tensor:
    """An output as MLServer's NumpyCodec sends it: ``[n]`` as ``[n, 1]``, content type ``np``."""
    if data.ndim < 2:
        data = data.reshape(-1, 1)
    return Tensor(name, data, parameters={"content_type": "np"})
