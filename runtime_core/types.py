"""The V2 / Open Inference Protocol types a runtime sees: tensors, requests, responses.

A runtime's ``predict`` receives an :class:`InferenceRequest` of :class:`Tensor` inputs
(numpy arrays, already validated by a codec in :mod:`runtime_core.codecs`) and returns an
:class:`InferenceResponse`. Nothing here reads or writes wire bytes; the content-type
helpers these types offer live in :mod:`runtime_core.content`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime_core.content import TEXT_CONTENT_TYPES, as_bytes, import_pandas, strings
from runtime_core.errors import InvalidRequest
from runtime_core.sanitize import quoted

__all__ = [
    "DATATYPES",
    "InferenceRequest",
    "InferenceResponse",
    "RequestedOutput",
    "Tensor",
    "TensorSpec",
    "datatype_of",
]

#: V2 datatype name -> numpy dtype (little-endian). BYTES is an object array of ``bytes``.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

_NAME_BY_DTYPE: dict[np.dtype[Any], str] = {
    dt.newbyteorder("="): name for name, dt in DATATYPES.items() if name != "BYTES"
}


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The V2 datatype name for a numpy array (``BYTES`` for strings and objects)."""
    kind = array.dtype.kind
    if kind in "OSU":
        return "BYTES"
    try:
        return _NAME_BY_DTYPE[array.dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidRequest(f"arrays of dtype {array.dtype} have no V2 datatype") from None


@dataclass(slots=True)
class TensorSpec:
    """Declared metadata of one input or output: ``-1`` in ``shape`` is a free dimension."""

    name: str
    datatype: str
    shape: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass(slots=True)
class Tensor:
    """A named tensor. ``data`` has the tensor's shape; BYTES tensors hold ``bytes`` objects."""

    name: str
    data: np.ndarray[Any, Any]
    datatype: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.datatype:
            self.datatype = datatype_of(self.data)

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)

    @property
    def content_type(self) -> str | None:
        """``parameters.content_type`` of this tensor, if any."""
        value = self.parameters.get("content_type")
        return value if isinstance(value, str) else None

    def as_strings(self) -> np.ndarray[Any, Any]:
        """The BYTES elements decoded from UTF-8: an object array of ``str`` of the same shape.

        Raises :class:`InvalidRequest` for a tensor that is not BYTES or not valid UTF-8."""
        if self.datatype != "BYTES":
            raise InvalidRequest(f"input {quoted(self.name)} is {self.datatype}; text must be sent as BYTES")
        return strings(self.data, f"input {quoted(self.name)}")


@dataclass(slots=True)
class RequestedOutput:
    """An entry of the request's ``outputs`` list."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    """A decoded inference request, as a runtime's ``predict`` receives it."""

    inputs: list[Tensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def input(self, name: str) -> Tensor:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise InvalidRequest(f"the request has no input named {quoted(name)}")

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def content_type(self) -> str | None:
        """``parameters.content_type`` of the request, if any."""
        value = self.parameters.get("content_type")
        return value if isinstance(value, str) else None

    def input_content_type(self, tensor: Tensor) -> str | None:
        """The content type in effect for an input: its own, else the request's ``str`` or
        ``base64`` when the input is BYTES (the request's ``np``/``pd`` describe the whole
        request, not an element encoding)."""
        own = tensor.content_type
        if own is not None:
            return own
        default = self.content_type
        return default if tensor.datatype == "BYTES" and default in TEXT_CONTENT_TYPES else None

    def wants_dataframe(self) -> bool:
        """True when the request, or one of its inputs, has content type ``pd``."""
        return self.content_type == "pd" or any(t.content_type == "pd" for t in self.inputs)

    def as_dataframe(self) -> Any:
        """The inputs as a pandas DataFrame, one column per input named after it, in request order.

        Each input must be ``[n]`` or ``[n, 1]``, all with the same ``n``. BYTES inputs become
        columns of ``str`` (UTF-8), except ``base64`` ones, which stay raw ``bytes``. pandas is
        imported here; without it this raises :class:`InvalidRequest` (a 400)."""
        pandas = import_pandas()
        columns: dict[str, np.ndarray[Any, Any]] = {}
        for tensor in self.inputs:
            array = tensor.data
            if array.ndim == 2 and array.shape[1] == 1:
                array = array[:, 0]
            if array.ndim != 1:
                raise InvalidRequest(
                    f"input {quoted(tensor.name)} has shape {tensor.shape}; with content type 'pd' each input"
                    " is one column and must be [n] or [n, 1]"
                )
            if tensor.datatype == "BYTES" and self.input_content_type(tensor) != "base64":
                array = strings(array, f"input {quoted(tensor.name)}")
            columns[tensor.name] = array
        if len({len(a) for a in columns.values()}) > 1:
            counts = ", ".join(f"{quoted(name)}: {len(a)}" for name, a in columns.items())
            raise InvalidRequest(f"the inputs have different numbers of rows ({counts})")
        return pandas.DataFrame(columns)


@dataclass(slots=True)
class InferenceResponse:
    """What a runtime's ``predict`` returns. The server fills in model name, version and id."""

    outputs: list[Tensor]
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dataframe(cls, frame: Any, parameters: dict[str, Any] | None = None) -> InferenceResponse:
        """A response with one output per column of a pandas DataFrame, named after the column,
        of shape ``[n]``; text (object, string) and datetime columns become BYTES (datetimes as
        ISO 8601 text). The response's ``parameters.content_type`` is ``pd``."""
        outputs = [_column_tensor(str(name), frame[name].to_numpy()) for name in frame.columns]
        return cls(outputs, {"content_type": "pd", **(parameters or {})})


def _column_tensor(name: str, array: np.ndarray[Any, Any]) -> Tensor:
    kind = array.dtype.kind
    if kind == "M":
        array = np.datetime_as_string(array)
        kind = "U"
    if kind in "OSU":
        out = np.empty(array.size, dtype=object)
        out[:] = [as_bytes(x) for x in array.reshape(-1)]
        return Tensor(name, out.reshape(array.shape), "BYTES")
    try:
        return Tensor(name, array)
    except InvalidRequest:  # the runtime's result, not the client's request
        raise TypeError(f"column {name!r} of dtype {array.dtype} has no V2 datatype") from None
