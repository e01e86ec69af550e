"""The ``sklearn`` runtime: serves any fitted scikit-learn estimator or Pipeline.

Design notes (the *why* behind the code):

* **Lazy framework import.** This module imports only numpy and runtime-core.
  The server imports every plugin module in its main process to build the
  registry; scikit-learn and joblib are imported in :meth:`SKLearnRuntime.load`,
  i.e. only in the processes that actually serve an sklearn model.
* **Fork safety.** ``share_loaded_model = True``: ``load`` runs once in a
  template process and workers are forked from it. Unpickling an estimator
  starts no threads, and ``load`` never predicts, so nothing breaks on fork.
* **Threads.** The server caps BLAS/OpenMP with threadpoolctl to
  ``context.threads`` before calling us, which covers what estimators use at
  predict time. ``n_jobs`` of the estimator is left as pickled: joblib-level
  parallelism inside one request would fight with the worker pool for cores.
* **Input layout.** One input is used as given, except that a 1-D input of
  shape ``[n]`` becomes one row ``(1, n)`` -- or one column ``(n, 1)`` when the
  model takes a single feature -- because every sklearn estimator wants 2-D
  input and a flat feature vector is the common way to send one sample.
  Several inputs are concatenated column-wise in request order (MLServer does
  the same). With content type ``pd`` (request ``parameters.content_type``, an
  input's ``parameters.content_type``, or the model's ``parameters.content_type``)
  each input becomes one named column of a pandas DataFrame
  (:meth:`InferenceRequest.as_dataframe`), for pipelines that select columns by
  name, e.g. a ColumnTransformer. BYTES inputs are decoded from UTF-8 to
  ``str``, since a model fitted on text categories compares against ``str``
  values, not ``bytes``; ``base64`` inputs (decoded by the core) stay raw bytes.
* **Outputs.** ``predict`` (default) and ``predict_proba`` (only when the model
  has it), named exactly so. Labels that are strings are returned as BYTES.
* **Two conventions.** A folder that names this runtime ``"runtime": "sklearn"`` gets
  the answers above. A folder written for MLServer (``mlserver_sklearn.SKLearnModel``)
  gets MLServer 1.7.1's answers: see :mod:`runtime_core_sklearn.mlserver`. The choice is
  made once, in ``__init__``, which binds ``predict`` to the MLServer variant: the native
  path tests nothing per request.
* **Errors.** A ``ValueError`` raised by the estimator on the given input
  (wrong feature count, NaN, unknown category...) is the client's fault:
  it becomes :class:`runtime_core.InvalidRequest` (400) with sklearn's message,
  collapsed to one line, without file paths and capped in length.
* **assume_finite.** For float/int ndarray input we check finiteness with one
  ``np.isfinite(X).all()`` and, if it holds, call the estimator inside
  ``sklearn.config_context(assume_finite=True)``, which skips sklearn's own,
  heavier validation, a noticeable share of a 1-row call of a small model.
  Non-finite input takes the normal path, so NaN/inf behave exactly as in
  plain sklearn (a clear 400 for estimators that reject them, a result for
  those that handle missing values natively).
* **Linear models.** For scikit-learn's own linear estimators (LogisticRegression,
  LinearRegression, ...) ``predict`` on a plain finite float array is computed from the
  fitted coefficients, skipping scikit-learn's per-call checks (about 0.1 ms of a
  0.11 ms one-row call): see :mod:`runtime_core_sklearn.linear`, which also says when
  the shortcut is not taken and how it is checked against the estimator at load.

Artifacts are unpickled: only serve files you trust.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
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
from runtime_core_sklearn.linear import LinearPredict, fits, linear_predict
from runtime_core_sklearn.mlserver import as_mlserver_output, default_output, requested_outputs

if TYPE_CHECKING:
    from runtime_core.settings import ModelSettings

__all__ = ["PREDICT", "PREDICT_PROBA", "SKLearnRuntime"]

PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
PANDAS_CONTENT_TYPE = "pd"

_MAX_MESSAGE = 400


def _decoded(request: InferenceRequest, tensor: Tensor) -> np.ndarray[Any, Any]:
    """The tensor's array, with BYTES turned into ``str`` unless the content type is ``base64``
    (see the module docstring)."""
    if tensor.datatype != "BYTES" or request.input_content_type(tensor) == "base64":
        return tensor.data
    return tensor.as_strings()


def _concat_columns(request: InferenceRequest) -> np.ndarray[Any, Any]:
    """Several inputs side by side: ``[n]`` is one column, ``[n, k]`` is k columns."""
    return stack_columns([(t.name, _decoded(request, t)) for t in request.inputs])


def _import_pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise InvalidRequest(
            "content type 'pd' needs pandas, which is not installed on the server"
            " (install runtime-core-sklearn[pandas])"
        ) from None
    return pandas


def _to_tensor(name: str, result: Any) -> Tensor:
    """An estimator's result as an output tensor; text labels become BYTES."""
    if hasattr(result, "toarray"):  # scipy sparse
        result = result.toarray()
    if isinstance(result, list):  # multi-output classifiers return one proba array per output
        try:
            result = np.stack(result, axis=1)
        except ValueError:
            raise RuntimeError(f"{name}: the outputs of this multi-output model have different shapes") from None
    array = np.asarray(result)
    if array.dtype.kind in "OSU":
        flat = array.reshape(-1)
        out = np.empty(flat.size, dtype=object)
        out[:] = [x if isinstance(x, bytes) else str(x).encode("utf-8") for x in flat]
        return Tensor(name, out.reshape(array.shape), "BYTES")
    return Tensor(name, array)


class SKLearnRuntime(Runtime):
    """Serves a fitted scikit-learn estimator (or Pipeline) saved with joblib or pickle."""

    name = "sklearn"
    aliases = ("mlserver_sklearn.SKLearnModel",)
    artifact_names = ("model.joblib", "model.pkl", "model.pickle")
    share_loaded_model = True
    supports_batching = True
    predict_never_waits = True

    def __init__(self, settings: ModelSettings, context: RuntimeContext) -> None:
        super().__init__(settings, context)
        self._model: Any = None
        self._available: tuple[str, ...] = (PREDICT,)
        self._n_features: int | None = None
        self._feature_names: list[str] | None = None
        self._config_context: Callable[..., contextlib.AbstractContextManager[Any]] | None = None
        self._linear: LinearPredict | None = None
        #: The folder names MLServer's implementation: answer as MLServer does. Chosen here,
        #: once, so that the native ``predict`` does not test for it on every request.
        self._mlserver = settings.runtime_name in type(self).aliases
        self._default_output = PREDICT
        #: The model's own content type asks for a DataFrame: read once, not on every request.
        self._pandas_default = settings.parameters.content_type == PANDAS_CONTENT_TYPE
        if self._mlserver:
            self.mlserver_envelope = True
            self.predict = self._predict_mlserver  # type: ignore[method-assign]

    @property
    def model(self) -> Any:
        """The loaded estimator (``None`` before :meth:`load`)."""
        return self._model

    @classmethod
    def preload(cls) -> None:
        """Import scikit-learn and the estimator families most models use, once, in the
        template every sklearn model's workers are forked from."""
        import joblib  # noqa: F401
        import sklearn.ensemble
        import sklearn.linear_model
        import sklearn.pipeline  # noqa: F401

    async def load(self) -> None:
        """Unpickle the artifact. joblib reads both its own format and plain pickle files,
        so one code path serves ``model.joblib``, ``model.pkl`` and ``model.pickle``."""
        path = self.require_uri()
        import joblib
        import sklearn

        model = _load_artifact(path, joblib.load)
        if not callable(getattr(model, PREDICT, None)):
            raise TypeError(
                f"model {self.context.model_name!r}: {path.name} holds a {type(model).__name__}, which has no predict()"
            )
        self._model = model
        # hasattr is False when predict_proba is unavailable for this configuration
        # (e.g. SVC(probability=False), or a Pipeline whose last step has none).
        self._available = (PREDICT, PREDICT_PROBA) if hasattr(model, PREDICT_PROBA) else (PREDICT,)
        n_features = getattr(model, "n_features_in_", None)
        self._n_features = int(n_features) if isinstance(n_features, int | np.integer) else None
        names = getattr(model, "feature_names_in_", None)
        self._feature_names = [str(n) for n in names] if names is not None else None
        self._config_context = sklearn.config_context
        self._linear = linear_predict(model, self._n_features)
        if self._mlserver:
            extra = self.settings.parameters.extra
            self._default_output = default_output(model, extra, self.context.model_name, path.name)

    async def unload(self) -> None:
        self._model = None
        self._linear = None

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        if self._model is None:
            raise RuntimeError(f"model {self.context.model_name!r} is not loaded")
        names = check_requested_outputs(request, self._available)
        return InferenceResponse(outputs=self._run(names, self._features(request)))

    async def _predict_mlserver(self, request: InferenceRequest) -> InferenceResponse:
        """``predict`` of a folder written for MLServer (:mod:`runtime_core_sklearn.mlserver`):
        the same estimator calls, MLServer's output names and shapes."""
        if self._model is None:
            raise RuntimeError(f"model {self.context.model_name!r} is not loaded")
        names = requested_outputs(request.output_names, self._default_output, self._model, self.context.model_name)
        outputs = self._run(names, self._features(request))
        return InferenceResponse(outputs=[as_mlserver_output(t) for t in outputs])

    def _run(self, names: list[str], features: Any) -> list[Tensor]:
        """The estimator's methods ``names`` on ``features``, as output tensors."""
        config_context = self._config_context
        fast = config_context is not None and _all_finite_ndarray(features)
        linear = self._linear
        if fast and linear is not None and names == [PREDICT] and fits(features, self._n_features or 0):
            return [_to_tensor(PREDICT, linear(features))]
        scope = config_context(assume_finite=True) if config_context is not None and fast else contextlib.nullcontext()
        try:
            with scope:
                results = [(name, getattr(self._model, name)(features)) for name in names]
        except ValueError as exc:
            raise InvalidRequest(client_message(exc) or "the model rejected the input") from exc
        return [_to_tensor(name, result) for name, result in results]

    def metadata(self) -> ModelMetadata:
        """Declared inputs/outputs win; otherwise they are derived from the fitted model."""
        declared = super().metadata()
        return ModelMetadata(
            inputs=declared.inputs or self._derived_inputs(),
            outputs=declared.outputs or self._derived_outputs(),
            platform=declared.platform,
        )

    # ------------------------------------------------------------------ helpers

    def _features(self, request: InferenceRequest) -> Any:
        """The estimator's ``X`` for this request (see the module docstring for the layout)."""
        inputs = request.inputs
        if not inputs:
            raise InvalidRequest("the request has no inputs")
        # A model fitted on a plain array knows no column names: a DataFrame would only
        # earn a sklearn warning, so 'pd' then means the same as joining the columns.
        if self._wants_dataframe(request) and not (self._feature_names is None and self._n_features is not None):
            _import_pandas()  # the message names this package's extra
            return request.as_dataframe()
        if len(inputs) > 1:
            features = _concat_columns(request)
        else:
            features = _decoded(request, inputs[0])
            if features.ndim == 1 and self._n_features is not None:
                features = features.reshape(-1, 1) if self._n_features == 1 else features.reshape(1, -1)
        if self._feature_names is not None:
            features = self._named(features)
        return features

    def _wants_dataframe(self, request: InferenceRequest) -> bool:
        """Content type ``pd`` on the request or an input, else in the model's settings."""
        if request.parameters or any(t.parameters for t in request.inputs):
            if request.wants_dataframe():
                return True
            if request.content_type is not None:
                return False  # the request's own content type wins over the model's default
        return self._pandas_default

    def _named(self, features: np.ndarray[Any, Any]) -> Any:
        """A model fitted on a DataFrame warns on every plain array: give it the column
        names it was fitted with."""
        assert self._feature_names is not None
        if features.ndim != 2:
            return features
        if features.shape[1] != len(self._feature_names):
            # Checked here because sklearn would warn about the missing names before it
            # reports the wrong count.
            raise InvalidRequest(
                f"X has {features.shape[1]} features, but the model was fitted with {len(self._feature_names)}"
                f" ({', '.join(self._feature_names)})"[:_MAX_MESSAGE]
            )
        try:
            import pandas
        except ImportError:
            return features
        return pandas.DataFrame(features, columns=self._feature_names)

    def _derived_inputs(self) -> list[TensorSpec]:
        if self._n_features is None:
            return []
        return [TensorSpec("input-0", "FP64", [-1, self._n_features])]

    def _derived_outputs(self) -> list[TensorSpec]:
        if self._model is None:
            return []
        classes = getattr(self._model, "classes_", None)
        if isinstance(classes, np.ndarray) and classes.ndim == 1:
            label_type = "BYTES" if classes.dtype.kind in "OSU" else _datatype(classes)
        else:
            label_type = "FP64"
        # MLServer's answers carry a one-value-per-row output as [n, 1]
        outputs = [TensorSpec(PREDICT, label_type, [-1, 1] if self._mlserver else [-1])]
        if PREDICT_PROBA in self._available:
            n_classes = len(classes) if isinstance(classes, np.ndarray) and classes.ndim == 1 else -1
            outputs.append(TensorSpec(PREDICT_PROBA, "FP64", [-1, n_classes]))
        return outputs


def _datatype(array: np.ndarray[Any, Any]) -> str:
    try:
        return Tensor("x", array[:0]).datatype
    except InvalidRequest:
        return "FP64"


def _all_finite_ndarray(features: Any) -> bool:
    """True when skipping sklearn's finiteness validation changes nothing: a numeric
    ndarray without NaN or infinity."""
    if not isinstance(features, np.ndarray):
        return False
    kind = features.dtype.kind
    if kind in "biu":
        return True
    return kind == "f" and bool(np.isfinite(features).all())


def _load_artifact(path: Path, load: Callable[[Path], Any]) -> Any:
    try:
        return load(path)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{path.name} needs the module {exc.name!r}, which is not installed in the server's environment"
        ) from exc
