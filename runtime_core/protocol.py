"""V2 / Open Inference Protocol types and the tensor codec.

This module turns request bytes into numpy tensors and response tensors back
into bytes. It runs in the process that runs the model (a worker, or the main
process when ``parallel_workers`` is 0), never as per-request work in the HTTP
front end.

Two wire forms are supported:

* JSON: ``{"inputs": [{"name", "shape", "datatype", "data"}], ...}``;
* Triton's ``binary_tensor_data`` extension: a JSON header of
  ``json_length`` bytes followed by raw little-endian tensor bytes; each
  binary input says its size in ``parameters.binary_data_size``.

Decoding validates everything a runtime relies on (datatype, shape, element
count, value range) and raises :class:`~runtime_core.errors.InvalidRequest`
with a message for the client. Numeric binary tensors are views on the
request bytes: they are never copied by the codec.

Content types (MLServer's ``parameters.content_type``: ``np``, ``pd``, ``str``,
``base64``) are checked and applied here too, but only for tensors and
requests whose ``parameters`` are not empty: a request without parameters
costs one truth test per input and output. ``base64`` inputs are decoded to
raw bytes and ``str``/``base64`` outputs encoded; ``pd`` is left to the
runtime, which builds a DataFrame with :meth:`InferenceRequest.as_dataframe`
(pandas is imported only then). See docs/protocol.md, "Content types".
"""

from __future__ import annotations

import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from runtime_core.errors import InferenceFailed, InvalidRequest, PayloadTooLarge
from runtime_core.sanitize import quoted

__all__ = [
    "CONTENT_TYPES",
    "DATATYPES",
    "InferenceRequest",
    "InferenceResponse",
    "RequestedOutput",
    "Tensor",
    "TensorSpec",
    "checked_output",
    "datatype_of",
    "decode_base64",
    "decode_request",
    "encode_base64",
    "encode_response",
    "import_pandas",
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

# numpy kinds of JSON values accepted for each datatype family.
_ACCEPTED_KINDS = {"b": "b", "u": "biu", "i": "biu", "f": "biuf"}
_LENGTH = struct.Struct("<I")

#: Content types (``parameters.content_type``, MLServer's names) of requests and inputs.
CONTENT_TYPES = ("np", "pd", "str", "base64")
# Requested outputs can ask these; ``str`` and ``base64`` apply to BYTES tensors only.
_OUTPUT_CONTENT_TYPES = ("np", "str", "base64")
_TEXT_CONTENT_TYPES = ("str", "base64")
_NO_PARAMETERS: dict[str, Any] = {}
_MAX_DIMS = 64
_MAX_ELEMENTS = 2**59  # times the largest item size (8) stays below numpy's 2**63 limit


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
        return _strings(self.data, f"input {quoted(self.name)}")


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
        return default if tensor.datatype == "BYTES" and default in _TEXT_CONTENT_TYPES else None

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
                array = _strings(array, f"input {quoted(tensor.name)}")
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


# --------------------------------------------------------------------------- content types


def import_pandas() -> Any:
    """The pandas module, or :class:`InvalidRequest` (400) when it is not installed."""
    try:
        import pandas
    except ImportError:
        raise InvalidRequest("content type 'pd' needs pandas, which is not installed on the server") from None
    return pandas


def _strings(array: np.ndarray[Any, Any], where: str) -> np.ndarray[Any, Any]:
    out = np.empty(array.size, dtype=object)
    try:
        out[:] = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    except UnicodeDecodeError:
        raise InvalidRequest(f"{where}: BYTES data is not valid UTF-8") from None
    return out.reshape(array.shape)


def _as_bytes(x: Any) -> bytes:
    return x if isinstance(x, bytes) else str(x).encode("utf-8")


def decode_base64(array: np.ndarray[Any, Any], where: str = "input") -> np.ndarray[Any, Any]:
    """Each element (base64 text, as ``bytes`` or ``str``) decoded to raw ``bytes``; same shape.

    Standard alphabet, padded, nothing else (no whitespace): anything else is
    :class:`InvalidRequest` naming ``where`` and the element's index."""
    flat = array.reshape(-1)
    out = np.empty(flat.size, dtype=object)
    for i, x in enumerate(flat):
        try:
            out[i] = binascii.a2b_base64(_as_bytes(x), strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"{where}: element {i} is not valid base64 ({exc})") from None
    return out.reshape(array.shape)


def encode_base64(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Each element's bytes (``str`` as UTF-8) as base64 text (``str``); same shape."""
    flat = array.reshape(-1)
    out = np.empty(flat.size, dtype=object)
    out[:] = [binascii.b2a_base64(_as_bytes(x), newline=False).decode("ascii") for x in flat]
    return out.reshape(array.shape)


def _check_content_type(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        if not isinstance(value, str):
            raise InvalidRequest(f"{where}: 'parameters.content_type' must be a string")
        if value in CONTENT_TYPES:
            raise InvalidRequest(
                f"{where}: content type {quoted(value)} does not apply here; use one of {', '.join(allowed)}"
            )
        raise InvalidRequest(f"{where}: unknown content type {quoted(value)}; expected one of {', '.join(allowed)}")
    return str(value)


def _decode_content(
    data: np.ndarray[Any, Any], datatype: str, params: dict[str, Any], default: str | None, binary: bool, where: str
) -> np.ndarray[Any, Any]:
    """Apply an input's content type (its own, else the request's ``str``/``base64`` for BYTES)."""
    content_type = params.get("content_type")
    if content_type is None:
        if datatype != "BYTES" or default not in _TEXT_CONTENT_TYPES:
            return data
        content_type = default
    else:
        _check_content_type(content_type, where, CONTENT_TYPES)
        if content_type in _TEXT_CONTENT_TYPES and datatype != "BYTES":
            raise InvalidRequest(f"{where}: content type {quoted(content_type)} needs datatype BYTES, not {datatype}")
    if content_type == "base64":
        return decode_base64(data, where)
    if content_type == "str" and binary:  # JSON strings are valid UTF-8 already
        _strings(data, where)
    return data


def _column_tensor(name: str, array: np.ndarray[Any, Any]) -> Tensor:
    kind = array.dtype.kind
    if kind == "M":
        array = np.datetime_as_string(array)
        kind = "U"
    if kind in "OSU":
        out = np.empty(array.size, dtype=object)
        out[:] = [_as_bytes(x) for x in array.reshape(-1)]
        return Tensor(name, out.reshape(array.shape), "BYTES")
    try:
        return Tensor(name, array)
    except InvalidRequest:  # the runtime's result, not the client's request
        raise TypeError(f"column {name!r} of dtype {array.dtype} has no V2 datatype") from None


def stack_columns(columns: list[tuple[str, np.ndarray[Any, Any]]]) -> np.ndarray[Any, Any]:
    """Join named inputs side by side for a model that takes one matrix (MLServer's way with
    several inputs): ``[n]`` is one column, ``[n, k]`` is k columns. Raises
    :class:`InvalidRequest` for other ranks and for inputs with different row counts."""
    arrays = []
    for name, array in columns:
        if array.ndim == 1:
            array = array.reshape(-1, 1)
        elif array.ndim != 2:
            raise InvalidRequest(
                f"input {quoted(name)} has shape {list(array.shape)}; when a request has several inputs,"
                " each must be [n] or [n, k] and they are joined column-wise"
            )
        arrays.append(array)
    if len({a.shape[0] for a in arrays}) > 1:
        counts = ", ".join(f"{quoted(name)}: {a.shape[0]}" for (name, _), a in zip(columns, arrays, strict=True))
        raise InvalidRequest(f"the inputs have different numbers of rows ({counts})")
    return np.concatenate(arrays, axis=1)


# --------------------------------------------------------------------------- decoding


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}: 'parameters' must be an object")
    return value


#: Triton's shared-memory extension names a tensor's data by these parameters; the data
#: never travels in the request. runtime-core has no shared-memory regions to read it from.
SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


#: What a request or an endpoint that needs shared memory is answered.
SHARED_MEMORY_UNSUPPORTED = "shared memory is not supported by this server; send the tensors in the request"


def refuse_shared_memory(params: dict[str, Any], where: str) -> None:
    """Raise :class:`InvalidRequest` when a tensor's ``params`` name shared memory, so that a
    Triton client using it learns why, rather than reading "has no 'data'"."""
    for key in SHARED_MEMORY_PARAMETERS:
        if key in params:
            raise InvalidRequest(f"{where}: parameter {key!r}: {SHARED_MEMORY_UNSUPPORTED}")


def _shape(value: Any, where: str) -> tuple[int, ...]:
    # type(), not isinstance(): a bool is not a dimension
    if not isinstance(value, list) or not all(type(d) is int and d >= 0 for d in value):
        raise InvalidRequest(f"{where}: 'shape' must be a list of non-negative integers")
    # numpy cannot even describe an empty array beyond these limits
    if len(value) > _MAX_DIMS:  # said without echoing the dimensions: they may be many
        raise InvalidRequest(f"{where}: shape has {len(value)} dimensions, more than {_MAX_DIMS}")
    if math.prod(d for d in value if d) > _MAX_ELEMENTS:
        raise InvalidRequest(f"{where}: shape {value} is too large")
    return tuple(value)


def _from_json_data(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray[Any, Any]:
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = np.array(data, dtype=object).reshape(-1) if data else np.empty(0, dtype=object)
        out = np.empty(flat.shape[0], dtype=object)
        for i, item in enumerate(flat):
            if isinstance(item, str):
                out[i] = item.encode("utf-8")
            elif isinstance(item, bytes):
                out[i] = item
            else:
                raise InvalidRequest(f"{where}: BYTES data must be strings")
        if out.shape[0] != count:
            raise InvalidRequest(f"{where}: shape {list(shape)} needs {count} elements, data has {out.shape[0]}")
        return out.reshape(shape)
    dtype = DATATYPES[datatype]
    try:
        raw = np.array(data)
    except (ValueError, TypeError):
        raise InvalidRequest(f"{where}: 'data' must be a flat or regularly nested list of numbers") from None
    if raw.size != count:
        raise InvalidRequest(f"{where}: shape {list(shape)} needs {count} elements, data has {raw.size}")
    if count == 0:
        return np.empty(shape, dtype=dtype)
    if dtype.kind in "iu" and raw.dtype.kind == "f":
        # numpy reads a mix of small integers and integers >= 2**63 as floats
        return _exact_integers(data, raw.shape, dtype, datatype, where).reshape(shape)
    if raw.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        expected = {"b": "booleans", "u": "integers", "i": "integers", "f": "numbers"}[dtype.kind]
        raise InvalidRequest(f"{where}: {datatype} data must be {expected}")
    if dtype.kind in "iu" and raw.dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw.dtype.kind == "u" and dtype.kind == "u" and raw.dtype.itemsize <= dtype.itemsize:
            pass
        elif raw.min() < info.min or raw.max() > info.max:
            raise InvalidRequest(f"{where}: a value is out of range for {datatype}")
    if dtype.kind == "f" and dtype.itemsize < 8:
        # JSON has no infinities: an infinite value after the cast is an overflow.
        with np.errstate(over="ignore"):
            cast = raw.astype(dtype)
        if not np.isfinite(cast).all():
            raise InvalidRequest(f"{where}: a value is out of range for {datatype}")
        return cast.reshape(shape)
    return raw.astype(dtype, copy=False).reshape(shape)


def _exact_integers(
    data: Any, shape: tuple[int, ...], dtype: np.dtype[Any], datatype: str, where: str
) -> np.ndarray[Any, Any]:
    values = np.array(data, dtype=object)
    if values.shape != shape or not all(type(x) is int or type(x) is bool for x in values.flat):
        raise InvalidRequest(f"{where}: {datatype} data must be integers")
    info = np.iinfo(dtype)
    if min(values.flat) < info.min or max(values.flat) > info.max:
        raise InvalidRequest(f"{where}: a value is out of range for {datatype}")
    return values.astype(dtype)


def _from_binary(
    tail: memoryview, offset: int, size: Any, datatype: str, shape: tuple[int, ...], where: str
) -> np.ndarray[Any, Any]:
    if type(size) is not int or size < 0:
        raise InvalidRequest(f"{where}: 'binary_data_size' must be a non-negative integer")
    if offset + size > len(tail):
        raise InvalidRequest(f"{where}: binary_data_size runs past the end of the request body")
    return decode_raw_tensor(tail[offset : offset + size], datatype, shape, where, BINARY_BODY)


@dataclass(frozen=True, slots=True)
class RawWording:
    """How errors name the raw bytes of one tensor, in the words of the wire they came on."""

    short: str
    """The BYTES elements are fewer than the shape needs: ``{where}: {short} shorter than ...``."""
    past_end: str
    """A BYTES element's length runs past the end of the bytes."""
    extra: str
    """Bytes are left after the last BYTES element (``{shape}`` is replaced by the shape)."""
    size: str
    """The byte count of a fixed-size datatype, e.g. ``binary_data_size is``."""


#: Triton's binary extension: a tensor's bytes are ``binary_data_size`` bytes of the body.
BINARY_BODY = RawWording(
    short="BYTES data is",
    past_end="a BYTES element runs past binary_data_size",
    extra="binary_data_size is larger than the BYTES elements",
    size="binary_data_size is",
)


def decode_raw_tensor(
    chunk: memoryview | bytes, datatype: str, shape: tuple[int, ...], where: str, wording: RawWording
) -> np.ndarray[Any, Any]:
    """One tensor from its raw little-endian bytes (BYTES elements each a 4-byte length, then
    the bytes), as the binary extension and gRPC's raw contents carry it. Checks that the
    bytes match the shape exactly; errors say so in ``wording``."""
    count = math.prod(shape)
    size = len(chunk)
    if datatype == "BYTES":
        if count > size // _LENGTH.size:  # each element needs at least its 4-byte length
            raise InvalidRequest(f"{where}: {wording.short} shorter than shape {list(shape)} needs")
        out = np.empty(count, dtype=object)
        view = memoryview(chunk)
        pos = 0
        for i in range(count):
            if pos + 4 > size:
                raise InvalidRequest(f"{where}: {wording.short} shorter than shape {list(shape)} needs")
            (length,) = _LENGTH.unpack_from(view, pos)
            pos += 4
            if pos + length > size:
                raise InvalidRequest(f"{where}: {wording.past_end}")
            out[i] = bytes(view[pos : pos + length])
            pos += length
        if pos != size:
            raise InvalidRequest(f"{where}: {wording.extra.format(shape=list(shape))}")
        return out.reshape(shape)
    dtype = DATATYPES[datatype]
    if size != count * dtype.itemsize:
        raise InvalidRequest(
            f"{where}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, {wording.size} {size}"
        )
    array = np.frombuffer(chunk, dtype=dtype, count=count).reshape(shape)
    if datatype == "BOOL" and count and np.any(array.view(np.uint8) > 1):
        raise InvalidRequest(f"{where}: BOOL bytes must be 0 or 1")
    return array


def decode_request(
    body: bytes | memoryview, json_length: int | None = None, max_elements: int = 0
) -> InferenceRequest:
    """Decode a V2 request body. ``json_length`` is set for the binary extension.

    Raises :class:`InvalidRequest` for anything a runtime could not rely on, and
    :class:`PayloadTooLarge` when the inputs hold more than ``max_elements`` elements
    in all (0: no limit), before any of their data is converted.
    """
    view = memoryview(body)
    if json_length is not None:
        if json_length < 0 or json_length > len(view):
            raise InvalidRequest("Inference-Header-Content-Length is larger than the request body")
        header, tail = view[:json_length], view[json_length:]
    else:
        header, tail = view, view[:0]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("the request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidRequest("the request needs an 'inputs' list")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string")
    request_parameters = _parameters(doc.get("parameters"), "request")
    default_content = None
    if request_parameters:
        default_content = request_parameters.get("content_type")
        if default_content is not None:
            _check_content_type(default_content, "request", CONTENT_TYPES)
    inputs: list[Tensor] = []
    seen: set[str] = set()
    offset = 0
    elements = 0
    for index, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidRequest(f"input {index}: must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"input {index}: 'name' must be a non-empty string")
        where = f"input {quoted(name)}"
        if name in seen:
            raise InvalidRequest(f"{where}: appears twice")
        seen.add(name)
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise InvalidRequest(
                f"{where}: unknown datatype {quoted(datatype)}; expected one of {', '.join(DATATYPES)}"
            )
        shape = _shape(item.get("shape"), where)
        if max_elements:
            elements += math.prod(shape)
            if elements > max_elements:
                raise PayloadTooLarge(f"the request's inputs hold more than max_elements ({max_elements}) elements")
        params = _parameters(item.get("parameters"), where)
        refuse_shared_memory(params, where)
        size = params.get("binary_data_size")
        if size is not None:
            data = _from_binary(tail, offset, size, datatype, shape, where)
            offset += size
        elif "data" in item:
            data = _from_json_data(item["data"], datatype, shape, where)
        else:
            raise InvalidRequest(f"{where}: has no 'data'")
        if params or default_content is not None:
            data = _decode_content(data, datatype, params, default_content, size is not None, where)
        inputs.append(Tensor(name, data, datatype, params))
    if offset != len(tail):
        raise InvalidRequest("the binary part of the body is longer than the inputs' binary_data_size")
    outputs: list[RequestedOutput] = []
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidRequest("'outputs' must be a list")
        for index, item in enumerate(raw_outputs):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidRequest(f"output {index}: must be an object with a 'name'")
            params = _parameters(item.get("parameters"), f"output {index}")
            refuse_shared_memory(params, f"output {quoted(item['name'])}")
            if params and params.get("content_type") is not None:
                _check_content_type(params["content_type"], f"output {quoted(item['name'])}", _OUTPUT_CONTENT_TYPES)
            outputs.append(RequestedOutput(item["name"], params))
    return InferenceRequest(inputs, outputs, request_id, request_parameters)


# --------------------------------------------------------------------------- encoding


def _json_data(array: np.ndarray[Any, Any]) -> Any:
    flat = array.reshape(-1)
    if flat.dtype.kind in "OSU":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat]
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        # JSON has no NaN or infinity, and orjson would write null, losing which one it was.
        # Write the tokens Python's json module, Triton and most clients' parsers use
        # (NaN, Infinity, -Infinity): the same values a binary client gets. docs/protocol.md.
        return orjson.Fragment(json.dumps(flat.tolist(), allow_nan=True, separators=(",", ":")))
    return np.ascontiguousarray(flat)


def _output_error(model_name: str, tensor: Tensor, problem: str) -> InferenceFailed:
    return InferenceFailed(
        f"model {model_name!r}: output {tensor.name!r} is declared {tensor.datatype} but {problem}", model=model_name
    )


def checked_output(tensor: Tensor, model_name: str) -> np.ndarray[Any, Any]:
    """The output's data as its declared datatype: converted when every value survives the
    conversion, else :class:`InferenceFailed` naming the model and the output (a 500: the
    runtime broke its own declaration, the request is fine)."""
    data = tensor.data
    if not isinstance(data, np.ndarray):
        raise _output_error(model_name, tensor, "its data is not an array")
    target = DATATYPES.get(tensor.datatype)
    if target is None:
        raise InferenceFailed(
            f"model {model_name!r}: output {tensor.name!r} has the unknown datatype {tensor.datatype!r}",
            model=model_name,
        )
    kind = data.dtype.kind
    if tensor.datatype == "BYTES":
        if kind in "OSU":
            return data
        raise _output_error(model_name, tensor, f"holds {data.dtype} numbers")
    if data.dtype == target:
        return data
    if kind not in "biuf":
        raise _output_error(model_name, tensor, f"holds {data.dtype} values")
    if kind != "f" and target.kind == "f":
        return data.astype(target)  # integers and booleans as floats: nearest value, as numpy does
    if kind == "f" and target.kind == "f":
        with np.errstate(over="ignore"):
            converted = data.astype(target)
        if np.isfinite(data).sum() != np.isfinite(converted).sum():
            raise _output_error(model_name, tensor, f"holds values too large for {tensor.datatype}")
        return converted
    # To an integer or boolean type: only when every value is exactly representable.
    with np.errstate(all="ignore"):
        converted = data.astype(target)
        exact = converted.astype(data.dtype) == data
        if kind == "f":
            exact &= np.isfinite(data)
    if not exact.all():
        bad = data.reshape(-1)[~exact.reshape(-1)][0].item()
        raise _output_error(model_name, tensor, f"holds {bad!r}, which {tensor.datatype} cannot represent")
    return converted


def _binary_data(datatype: str, data: np.ndarray[Any, Any]) -> bytes:
    if datatype == "BYTES":
        parts = []
        for x in data.reshape(-1):
            b = _as_bytes(x)
            parts.append(_LENGTH.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(data, dtype=DATATYPES[datatype]).tobytes()


def _encode_content(
    tensor: Tensor, asked: dict[str, Any], default: Any, params: dict[str, Any]
) -> np.ndarray[Any, Any]:
    """An output's data for the wire under its content type: the requested output's, else the
    request's ``str``/``base64``, else the tensor's own. Echoes the client's choice in ``params``."""
    content_type = asked.get("content_type")
    if content_type is not None:
        if content_type in _TEXT_CONTENT_TYPES and tensor.datatype != "BYTES":
            raise InvalidRequest(
                f"output {quoted(tensor.name)} is {tensor.datatype}; content type {quoted(content_type)}"
                " applies to BYTES outputs"
            )
        params["content_type"] = content_type
    elif default in _TEXT_CONTENT_TYPES and tensor.datatype == "BYTES":
        content_type = params["content_type"] = default
    else:
        content_type = params.get("content_type")
    if content_type == "base64" and tensor.datatype == "BYTES":
        return encode_base64(tensor.data)
    return tensor.data


def encode_response(
    response: InferenceResponse,
    *,
    model_name: str,
    model_version: str | None,
    request: InferenceRequest,
    empty_parameters: bool = False,
) -> tuple[bytes, int | None]:
    """Encode a response; returns ``(body, json_length)``.

    ``empty_parameters``: write the response's ``parameters`` even when empty (``{}``), as
    MLServer does; otherwise an empty one is left out.

    ``json_length`` is ``None`` for a pure JSON body, or the length of the JSON
    header when some outputs were asked for in binary (Triton's extension).
    """
    binary_all = False
    default_content = None
    if request.parameters:
        binary_all = bool(request.parameters.get("binary_data_output", False))
        default_content = request.parameters.get("content_type")
    wanted = {o.name: o.parameters for o in request.outputs}
    outputs = []
    tails: list[bytes] = []
    for tensor in response.outputs:
        params = dict(tensor.parameters)
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        asked = wanted.get(tensor.name, _NO_PARAMETERS)
        data = checked_output(tensor, model_name)
        if data is not tensor.data:
            tensor = Tensor(tensor.name, data, tensor.datatype, tensor.parameters)
        if asked or params or default_content is not None:
            data = _encode_content(tensor, asked, default_content, params)
        if asked.get("binary_data", binary_all):
            blob = _binary_data(tensor.datatype, data)
            params["binary_data_size"] = len(blob)
            tails.append(blob)
        else:
            out["data"] = _json_data(data)
        if params:
            out["parameters"] = params
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": model_name}
    if model_version:
        doc["model_version"] = model_version
    if request.id is not None:
        doc["id"] = request.id
    if response.parameters or empty_parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tails:
        return header, None
    return header + b"".join(tails), len(header)
