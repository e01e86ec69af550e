"""MLServer's answers for folders that name ``mlserver_sklearn.SKLearnModel`` (issue 21).

A model folder written for MLServer keeps running on this runtime, but its clients were
written against MLServer 1.7.1's answers, so those are what it gets:

* every output is encoded as MLServer's ``NumpyCodec`` encodes an array: one value per
  row (``[n]``) is sent as ``[n, 1]``, and the output carries
  ``parameters.content_type: "np"``;
* the outputs a request may ask for are ``predict``, ``predict_proba`` and ``transform``,
  each only when the estimator has it; without ``outputs`` the answer holds
  ``parameters.extra.predict_fn`` of the model settings, else ``predict``;
* a request without an ``id`` is answered with a generated one, and the answer always has
  a ``parameters`` object (the server does both when the runtime sets
  ``mlserver_envelope``).

The features are computed by the runtime's own path (:mod:`runtime_core_sklearn.runtime`),
so inputs are read the same way under both conventions. Folders that name
``"runtime": "sklearn"`` never reach this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime_core import InvalidRequest, Tensor

__all__ = ["MLSERVER_OUTPUTS", "as_mlserver_output", "default_output", "requested_outputs"]

#: The outputs MLServer's SKLearnModel may be asked for: methods of the estimator.
MLSERVER_OUTPUTS = ("predict", "predict_proba", "transform")
_PREDICT_FN = "predict_fn"


def default_output(model: Any, extra: dict[str, Any], model_name: str, file_name: str) -> str:
    """The output of a request that names none: ``parameters.extra.predict_fn``, else
    ``predict``. Checked at load, so a typo fails the load instead of every request."""
    name = extra.get(_PREDICT_FN, "predict")
    if name not in MLSERVER_OUTPUTS:
        raise ValueError(
            f"model {model_name!r}: parameters.extra.{_PREDICT_FN} is {name!r};"
            f" it must be one of {', '.join(MLSERVER_OUTPUTS)}"
        )
    if not hasattr(model, name):
        raise ValueError(
            f"model {model_name!r}: parameters.extra.{_PREDICT_FN} is {name!r},"
            f" but the {type(model).__name__} in {file_name} has no {name}()"
        )
    return str(name)


def requested_outputs(names: list[str], default: str, model: Any, model_name: str) -> list[str]:
    """The estimator methods to call for a request asking for ``names`` (``[]``: the default)."""
    if not names:
        return [default]
    for name in names:
        if name not in MLSERVER_OUTPUTS:
            raise InvalidRequest(
                f"unknown output {name!r}; model {model_name!r} (MLServer's SKLearnModel) can answer"
                f" {', '.join(MLSERVER_OUTPUTS)}"
            )
        if not hasattr(model, name):
            raise InvalidRequest(f"model {model_name!r}: a {type(model).__name__} has no {name} output")
    return names


def as_mlserver_output(tensor: Tensor) -> Tensor:
    """An output as MLServer's NumpyCodec sends it: ``[n]`` as ``[n, 1]``, content type ``np``."""
    data = tensor.data
    if data.ndim < 2:
        data = np.reshape(data, (-1, 1))
    return Tensor(tensor.name, data, tensor.datatype, {"content_type": "np"})
