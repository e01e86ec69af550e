"""A classifier whose every call sleeps: the ``sleepy`` benchmark model.

It stands for a model whose calls are long but use no CPU (a remote lookup, a lock held
elsewhere, a hang): ``predict`` and ``predict_proba`` sleep ``seconds``, then answer zeros
and constant probabilities. bench_isolation.py serves it beside the light model to see
whether a model that waits couples the models that share its process.

The artifact pickles an instance of :class:`Sleepy`, so the server that unpickles it must
import this module: the benchmarks put this folder on the servers' ``PYTHONPATH``. Only
scikit-learn and numpy are needed (both servers' environments have them).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class Sleepy(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Sleeps ``seconds`` in every ``predict`` / ``predict_proba``, then answers class 0."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds

    def fit(self, x: Any, y: Any) -> Sleepy:
        x = np.asarray(x)
        self.classes_ = np.unique(np.asarray(y))
        self.n_features_in_ = x.shape[1]
        return self

    def predict(self, x: Any) -> np.ndarray[Any, Any]:
        time.sleep(self.seconds)
        return np.zeros(len(x), dtype=self.classes_.dtype)

    def predict_proba(self, x: Any) -> np.ndarray[Any, Any]:
        time.sleep(self.seconds)
        return np.full((len(x), len(self.classes_)), 1.0 / len(self.classes_))
