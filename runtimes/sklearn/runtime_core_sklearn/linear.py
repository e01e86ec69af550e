"""``predict`` of a fitted linear model without scikit-learn's per-call overhead.

Why: a one-row ``predict`` of a LogisticRegression costs about 0.1 ms, almost all of it
scikit-learn checking its input (array namespace, dtype, feature names, shape), against
a few microseconds for the arithmetic. A merged batch pays that once for many rows; with
traffic spread over many models (one host serving a thousand of them) nearly every
request is a call of its own and pays it in full.

What: for estimators whose ``predict`` is scikit-learn's own linear one
(``LinearClassifierMixin``: LogisticRegression, SGDClassifier, Perceptron...; the
``LinearModel`` regressors: LinearRegression, Ridge...), :func:`linear_predict` returns
a function computing the same result from ``coef_``, ``intercept_`` and ``classes_``.
The runtime calls it only when the input needs none of the checks that were skipped:
a 2-D C- or F-ordered float32/float64 ndarray with the fitted number of columns, no
NaN or infinity, and a model fitted without feature names. Anything else (and
``predict_proba``) takes scikit-learn's own path, with its own errors.

Safety: at load the function is compared with the estimator's ``predict`` on probe
rows, float32 and float64; any difference (another scikit-learn version computing it
another way, a subclass, sparse coefficients) and the model keeps scikit-learn's path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["MAX_FEATURES", "LinearPredict", "fits", "linear_predict"]

#: ``features -> labels or values``, for inputs that pass :func:`fits`.
LinearPredict = Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]

_PROBE_ROWS = 5

#: Widest model the shortcut is tried for: the probe at load is a dense array of this many
#: columns, and a model this wide is usually fed sparse input, which takes sklearn's path.
MAX_FEATURES = 100_000


# The shortcuts are small objects with slots, not closures: a host keeps one per loaded model,
# and a closure (function, cells, tuple) was about 0.3 KB more each at ten thousand models
# (issue 23).
class _Classifier:
    __slots__ = ("classes", "coef_t", "intercept")

    def __init__(self, coef: np.ndarray[Any, Any], intercept: Any, classes: np.ndarray[Any, Any]) -> None:
        self.coef_t = coef.T if coef.ndim == 2 else coef
        self.intercept = intercept
        self.classes = classes

    def __call__(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        scores = x @ self.coef_t + self.intercept
        if scores.ndim > 1 and scores.shape[1] == 1:
            scores = scores.reshape(-1)
        indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
        result: np.ndarray[Any, Any] = self.classes.take(indices, axis=0)
        return result


class _Regressor:
    __slots__ = ("coef_t", "intercept")

    def __init__(self, coef: np.ndarray[Any, Any], intercept: Any) -> None:
        self.coef_t = coef.T if coef.ndim == 2 else coef
        self.intercept = intercept

    def __call__(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        result: np.ndarray[Any, Any] = x @ self.coef_t + self.intercept
        return result


def _candidate(model: Any) -> LinearPredict | None:
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel, MultiOutputLinearModel

    cls = type(model)
    coef = getattr(model, "coef_", None)
    intercept = getattr(model, "intercept_", None)
    if not isinstance(coef, np.ndarray) or coef.dtype.kind != "f" or intercept is None:
        return None
    if not isinstance(intercept, np.ndarray | float | int):
        return None
    if (
        cls.predict is LinearClassifierMixin.predict
        and cls.decision_function is LinearClassifierMixin.decision_function
    ):
        classes = getattr(model, "classes_", None)
        if not isinstance(classes, np.ndarray) or classes.ndim != 1:
            return None
        return _Classifier(coef, intercept, classes)
    if (
        isinstance(model, LinearModel)
        and cls.predict in (LinearModel.predict, MultiOutputLinearModel.predict)
        and cls._decision_function is LinearModel._decision_function
    ):
        return _Regressor(coef, intercept)
    return None


def linear_predict(model: Any, n_features: int | None) -> LinearPredict | None:
    """The shortcut for ``model.predict``, or ``None`` when ``model`` is not a linear model
    this module knows, or when the shortcut does not give exactly its ``predict``'s result."""
    if n_features is None or not 0 < n_features <= MAX_FEATURES:
        return None
    if getattr(model, "feature_names_in_", None) is not None:
        return None
    try:
        fast = _candidate(model)
        if fast is None:
            return None
        rng = np.random.default_rng(0)
        probe = rng.normal(size=(_PROBE_ROWS, n_features))
        for x in (probe, probe.astype(np.float32), probe[:1], probe[:1].astype(np.float32)):
            expected = np.asarray(model.predict(x))
            got = fast(x)
            if got.dtype != expected.dtype or got.shape != expected.shape or not np.array_equal(got, expected):
                return None
    except Exception:  # whatever went wrong, scikit-learn's own path is the safe one
        return None
    return fast


def fits(features: Any, n_features: int) -> bool:
    """True when ``features`` needs none of the checks :func:`linear_predict` skips (finiteness
    is checked by the caller)."""
    return (
        isinstance(features, np.ndarray)
        and features.ndim == 2
        and features.shape[1] == n_features
        and features.shape[0] > 0
        and features.dtype in (np.float32, np.float64)
        and (features.flags.c_contiguous or features.flags.f_contiguous)
    )
