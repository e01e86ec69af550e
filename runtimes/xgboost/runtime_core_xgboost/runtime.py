"""The ``xgboost`` runtime: serves a saved XGBoost model through ``Booster.inplace_predict``.

Design notes (the *why* behind the code):

* **One loader for every file.** The model is read as bytes and handed to
  ``Booster.load_model``, which recognises JSON and UBJSON by content. Loading
  from a path would make xgboost guess the format from the extension and warn
  for ``.bst`` / ``.model``. Models saved by the sklearn API (``XGBClassifier``,
  ``XGBRegressor``) are plain boosters on disk and load the same way. xgboost 3
  no longer reads the pre-1.0 binary format: re-save such models as JSON.
* **Fork safety.** ``share_loaded_model = True``: ``load`` runs in a template
  process that workers are forked from, so it must not start threads. xgboost
  parses the trees with an OpenMP loop sized by the OpenMP default (not by the
  booster's ``nthread``, which is applied lazily), so the load runs under
  ``threadpool_limits(1, "openmp")``; ``nthread`` is set only afterwards and
  ``load`` never predicts.
* **Threads.** ``nthread`` is ``context.threads`` (from the model's ``threads``
  setting or the server's share of cores), overridable by
  ``parameters.extra.nthread``.
* **Objective decides the outputs.** ``predict`` gives class labels (INT64)
  for classifiers -- threshold 0.5 for ``binary:logistic``, argmax for
  ``multi:softprob`` -- and raw values for everything else. ``predict_proba``
  exists for ``binary:logistic``/``binary:logitraw`` (``[n, 2]``, like
  ``XGBClassifier``) and ``multi:softprob``/``multi:softmax`` (``[n, k]``).
  A model trained with early stopping predicts with its best iteration, as the
  sklearn API does.
* **Input layout.** As in the sklearn runtime: one input as given (``[n]`` is
  one row, or one column for a one-feature model); several inputs joined
  column-wise, in the booster's feature-name order when the input names are
  exactly its feature names, else in request order.
* **Two conventions.** A folder that names ``"runtime": "xgboost"`` gets the answers
  above. A folder written for MLServer (``mlserver_xgboost.XGBoostModel``) gets MLServer
  1.7.1's answers, from the same booster call: see :mod:`runtime_core_xgboost.mlserver`.
  ``__init__`` binds ``predict`` to that variant, so the native path tests nothing per
  request.
* **Errors.** A ``ValueError``/``XGBoostError`` on the given input (wrong
  feature count...) becomes :class:`runtime_core.InvalidRequest` (400) with
  xgboost's message stripped of log prefixes, source paths and the C++ stack.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime_core import (
    InferenceRequest,
    InferenceResponse,
    InvalidRequest,
    ModelMetadata,
    Runtime,
    RuntimeContext,
    Tensor,
    TensorSpec,
    check_requested_outputs,
    client_message,
    stack_columns,
)
from runtime_core_xgboost.mlserver import (
    as_mlserver_output,
    classifier_labels,
    classifier_probabilities,
    requested_outputs,
    saved_as_classifier,
)

if TYPE_CHECKING:
    from runtime_core.settings import ModelSettings

__all__ = ["PREDICT", "PREDICT_PROBA", "XGBoostRuntime"]

PREDICT = "predict"
PREDICT_PROBA = "predict_proba"


# Objective families, by what their raw prediction is.
_BINARY_PROB = {"binary:logistic"}
_BINARY_MARGIN = {"binary:logitraw"}
_BINARY_LABEL = {"binary:hinge"}
_MULTI_PROB = {"multi:softprob"}
_MULTI_LABEL = {"multi:softmax"}
_CLASSIFIERS = _BINARY_PROB | _BINARY_MARGIN | _BINARY_LABEL | _MULTI_PROB | _MULTI_LABEL


def _sigmoid(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return 1.0 / (1.0 + np.exp(-x))  # type: ignore[no-any-return]


def _softmax(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    shifted = np.exp(x - x.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _two_columns(p: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """P(class 1) as ``[P(0), P(1)]`` rows, the shape ``XGBClassifier.predict_proba`` gives;
    multi-label output (already one column per label) is left as it is."""
    if p.ndim == 1:
        return np.column_stack([1.0 - p, p]).astype(p.dtype, copy=False)
    return p


class XGBoostRuntime(Runtime):
    """Serves an XGBoost model saved as JSON or UBJSON (``Booster.save_model``)."""

    name = "xgboost"
    aliases = ("mlserver_xgboost.XGBoostModel",)
    artifact_names = ("model.json", "model.ubj", "model.bst", "model.model")
    share_loaded_model = True
    supports_batching = True
    predict_never_waits = True

    def __init__(self, settings: ModelSettings, context: RuntimeContext) -> None:
        super().__init__(settings, context)
        self._booster: Any = None
        self._objective = ""
        self._num_class = 0
        self._num_target = 1
        self._n_features: int | None = None
        self._feature_names: list[str] | None = None
        self._iteration_range: tuple[int, int] = (0, 0)
        self._available: tuple[str, ...] = (PREDICT,)
        self.nthread = 1
        #: The folder names MLServer's implementation: answer as MLServer does (chosen once).
        self._mlserver = settings.runtime_name in type(self).aliases
        #: MLServer's reading of the file: saved by XGBClassifier (else served as a regressor).
        self._saved_as_classifier = False
        if self._mlserver:
            self.mlserver_envelope = True
            self.predict = self._predict_mlserver  # type: ignore[method-assign]

    @property
    def booster(self) -> Any:
        """The loaded ``xgboost.Booster`` (``None`` before :meth:`load`)."""
        return self._booster

    @property
    def objective(self) -> str:
        """The booster's objective, e.g. ``binary:logistic`` (empty before :meth:`load`)."""
        return self._objective

    @property
    def is_classifier(self) -> bool:
        return self._objective in _CLASSIFIERS

    @classmethod
    def preload(cls) -> None:
        """Import xgboost once, in the template every xgboost model's workers are forked from.
        With OMP_NUM_THREADS=1 (set by the server) importing starts no thread."""
        import xgboost  # noqa: F401

    async def load(self) -> None:
        path = self.require_uri()
        nthread = self._nthread()
        import xgboost
        from threadpoolctl import threadpool_limits

        raw = bytearray(path.read_bytes())
        # No OpenMP pool may exist when the workers are forked from this process.
        with threadpool_limits(limits=1, user_api="openmp"):
            booster = xgboost.Booster({"nthread": 1})
            try:
                booster.load_model(raw)
            except xgboost.core.XGBoostError as exc:
                raise ValueError(
                    f"model {self.context.model_name!r}: {path.name} is not an XGBoost JSON/UBJSON model"
                    f" ({client_message(exc)})"
                ) from None
            # These calls configure the learner, which may run OpenMP loops as well.
            config = json.loads(booster.save_config())
            self._n_features = booster.num_features()
            self._feature_names = list(booster.feature_names) if booster.feature_names else None
            best = booster.attr("best_iteration")
            sklearn_meta = booster.attr("scikit_learn")
        del raw
        # Last, and nothing that configures the learner after it: xgboost applies nthread
        # lazily, at the next call that configures (the first predict, in a worker).
        booster.set_param({"nthread": nthread})
        learner = config.get("learner", {})
        params = learner.get("learner_model_param", {})
        self._objective = str(learner.get("objective", {}).get("name", ""))
        self._num_class = int(params.get("num_class", "0") or 0)
        self._num_target = int(params.get("num_target", "1") or 1)
        self._iteration_range = (0, int(best) + 1) if best is not None else (0, 0)
        self._available = (PREDICT, PREDICT_PROBA) if self._has_proba() else (PREDICT,)
        self.nthread = nthread
        self._saved_as_classifier = saved_as_classifier(sklearn_meta)
        self._booster = booster

    async def unload(self) -> None:
        self._booster = None

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        if self._booster is None:
            raise RuntimeError(f"model {self.context.model_name!r} is not loaded")
        names = check_requested_outputs(request, self._available)
        features = self._features(request)
        try:
            raw = self._raw(features, margin=False)
            results = {name: self._output(name, raw, features) for name in names}
        except ValueError as exc:  # includes XGBoostError
            raise InvalidRequest(client_message(exc) or "the model rejected the input") from exc
        return InferenceResponse(outputs=[Tensor(name, results[name]) for name in names])

    async def _predict_mlserver(self, request: InferenceRequest) -> InferenceResponse:
        """``predict`` of a folder written for MLServer (:mod:`runtime_core_xgboost.mlserver`)."""
        if self._booster is None:
            raise RuntimeError(f"model {self.context.model_name!r} is not loaded")
        classifier = self._saved_as_classifier
        names = requested_outputs(request.output_names, classifier, self.context.model_name)
        features = self._features(request)
        n_classes = self._num_class if self._num_class > 1 else 2
        try:
            raw = self._raw(features, margin=False)
            outputs = []
            for name in names:
                if not classifier:
                    result = raw
                elif name == PREDICT:
                    result = classifier_labels(raw, self._objective, n_classes)
                elif self._objective in _MULTI_LABEL:  # probabilities from the margins
                    result = _softmax(self._raw(features, margin=True))
                else:
                    result = classifier_probabilities(raw, n_classes)
                outputs.append(as_mlserver_output(name, result))
        except ValueError as exc:  # includes XGBoostError
            raise InvalidRequest(client_message(exc) or "the model rejected the input") from exc
        return InferenceResponse(outputs=outputs)

    def metadata(self) -> ModelMetadata:
        """Declared inputs/outputs win; otherwise they are derived from the booster."""
        declared = super().metadata()
        inputs = declared.inputs
        if not inputs and self._n_features is not None:
            inputs = [TensorSpec("input-0", "FP32", [-1, self._n_features])]
        outputs = declared.outputs
        # MLServer's outputs depend on how the file was saved, not on the objective alone:
        # for its folders only declared outputs are shown, as MLServer shows them.
        if not outputs and self._booster is not None and not self._mlserver:
            if self.is_classifier:
                outputs = [TensorSpec(PREDICT, "INT64", [-1])]
            else:
                outputs = [TensorSpec(PREDICT, "FP32", [-1] if self._num_target <= 1 else [-1, self._num_target])]
            if PREDICT_PROBA in self._available:
                outputs.append(TensorSpec(PREDICT_PROBA, "FP32", [-1, self._n_classes()]))
        return ModelMetadata(inputs=inputs, outputs=outputs, platform=declared.platform)

    # ------------------------------------------------------------------ helpers

    def _nthread(self) -> int:
        value = self.settings.parameters.extra.get("nthread", self.context.threads)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model {self.context.model_name!r}: parameters.extra.nthread must be a positive integer")
        return value

    def _has_proba(self) -> bool:
        return self._objective in _BINARY_PROB | _BINARY_MARGIN | _MULTI_PROB | _MULTI_LABEL

    def _n_classes(self) -> int:
        if self._objective in _MULTI_PROB | _MULTI_LABEL:
            return self._num_class
        return 2 if self._num_target <= 1 else self._num_target

    def _raw(self, features: np.ndarray[Any, Any], *, margin: bool) -> np.ndarray[Any, Any]:
        return np.asarray(
            self._booster.inplace_predict(
                features, iteration_range=self._iteration_range, predict_type="margin" if margin else "value"
            )
        )

    def _output(self, name: str, raw: np.ndarray[Any, Any], features: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """``predict`` or ``predict_proba`` from the booster's plain prediction ``raw``."""
        objective = self._objective
        if name == PREDICT:
            if objective in _BINARY_PROB:
                return (raw > 0.5).astype(np.int64)
            if objective in _BINARY_MARGIN:
                return (raw > 0.0).astype(np.int64)
            if objective in _MULTI_PROB:
                return raw.argmax(axis=-1).astype(np.int64) if raw.ndim > 1 else (raw > 0.5).astype(np.int64)
            if objective in _BINARY_LABEL | _MULTI_LABEL:
                return raw.astype(np.int64)
            return raw
        if objective in _BINARY_PROB:
            return _two_columns(raw)
        if objective in _BINARY_MARGIN:
            return _two_columns(_sigmoid(raw))
        if objective in _MULTI_PROB:
            return raw
        # multi:softmax predicts labels; the probabilities come from the margins.
        return _softmax(self._raw(features, margin=True))

    def _features(self, request: InferenceRequest) -> np.ndarray[Any, Any]:
        inputs = request.inputs
        if not inputs:
            raise InvalidRequest("the request has no inputs")
        for tensor in inputs:
            if tensor.datatype == "BYTES":
                raise InvalidRequest(f"input {tensor.name!r}: XGBoost models take numbers, not BYTES")
        if len(inputs) == 1:
            features = inputs[0].data
            if features.ndim == 1 and self._n_features is not None:
                features = features.reshape(-1, 1) if self._n_features == 1 else features.reshape(1, -1)
        else:
            features = self._concat_columns(inputs)
        if features.ndim != 2:
            raise InvalidRequest(f"the model takes a 2-D input [rows, {self._n_features}]; got shape {features.shape}")
        if features.dtype.kind == "b" or (features.dtype.kind == "f" and features.dtype.itemsize < 4):
            features = features.astype(np.float32)
        return features

    def _concat_columns(self, inputs: list[Tensor]) -> np.ndarray[Any, Any]:
        names = [t.name for t in inputs]
        if self._feature_names is not None and sorted(names) == sorted(self._feature_names):
            order = {name: i for i, name in enumerate(self._feature_names)}
            inputs = sorted(inputs, key=lambda t: order[t.name])
        return stack_columns([(t.name, t.data) for t in inputs])
