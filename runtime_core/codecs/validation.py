"""What every codec checks, written once: each input's name, datatype, shape and element
budget, its parameters and content type, raw tensor bytes against the shape, each requested
output, and each produced output against its declared datatype.

Decoding validates everything a runtime relies on (datatype, shape, element count, value
range) and raises :class:`~runtime_core.errors.InvalidRequest` with a message for the
client. A codec reads its wire's fields and hands them to :class:`InputChecker` in the
order they are read, so both wires fail a bad request with the same words.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime_core.content import (
    CONTENT_TYPES,
    OUTPUT_CONTENT_TYPES,
    as_bytes,
    check_content_type,
    decode_content,
    encode_content,
)
from runtime_core.errors import InferenceFailed, InvalidRequest, PayloadTooLarge
from runtime_core.sanitize import quoted
from runtime_core.types import DATATYPES, InferenceRequest, InferenceResponse, Tensor

__all__ = [
    "SHARED_MEMORY_PARAMETERS",
    "SHARED_MEMORY_UNSUPPORTED",
    "InputChecker",
    "RawWording",
    "check_requested_output",
    "checked_output",
    "decode_raw_tensor",
    "raw_bytes",
    "refuse_shared_memory",
    "wire_outputs",
]

_LENGTH = struct.Struct("<I")
_NO_PARAMETERS: dict[str, Any] = {}
_MAX_DIMS = 64
_MAX_ELEMENTS = 2**59  # times the largest item size (8) stays below numpy's 2**63 limit

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


class InputChecker:
    """The per-input validation of one request, shared by every codec.

    A codec calls, for each input in order: :meth:`header` (name, datatype, shape and the
    request's element budget), :meth:`parameters` once it has read the input's parameters,
    then :meth:`content` on the decoded data."""

    __slots__ = ("_elements", "_max_elements", "_seen", "default_content")

    def __init__(self, request_parameters: dict[str, Any], max_elements: int) -> None:
        """``max_elements``: most elements all inputs may hold together (0: no limit), checked
        before any input's data is converted."""
        self.default_content: str | None = None
        if request_parameters:
            default = request_parameters.get("content_type")
            if default is not None:
                self.default_content = check_content_type(default, "request", CONTENT_TYPES)
        self._seen: set[str] = set()
        self._elements = 0
        self._max_elements = max_elements

    def header(self, index: int, name: Any, datatype: Any, shape: Any) -> tuple[str, tuple[int, ...]]:
        """``(where, shape)`` of input ``index``: ``where`` names it in error messages."""
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"input {index}: 'name' must be a non-empty string")
        where = f"input {quoted(name)}"
        if name in self._seen:
            raise InvalidRequest(f"{where}: appears twice")
        self._seen.add(name)
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise InvalidRequest(
                f"{where}: unknown datatype {quoted(datatype)}; expected one of {', '.join(DATATYPES)}"
            )
        checked = _shape(shape, where)
        if self._max_elements:
            self._elements += math.prod(checked)
            if self._elements > self._max_elements:
                raise PayloadTooLarge(
                    f"the request's inputs hold more than max_elements ({self._max_elements}) elements"
                )
        return where, checked

    @staticmethod
    def parameters(params: dict[str, Any], where: str) -> None:
        """Check an input's parameters before its data is read."""
        refuse_shared_memory(params, where)

    def content(
        self, data: np.ndarray[Any, Any], datatype: str, params: dict[str, Any], binary: bool, where: str
    ) -> np.ndarray[Any, Any]:
        """The input's data under its content type (or the request's); ``binary``: the data came
        as raw bytes rather than JSON text."""
        if params or self.default_content is not None:
            return decode_content(data, datatype, params, self.default_content, binary, where)
        return data


def check_requested_output(name: str, params: dict[str, Any]) -> None:
    """Check a requested output's parameters (shared memory, content type)."""
    refuse_shared_memory(params, f"output {quoted(name)}")
    if params and params.get("content_type") is not None:
        check_content_type(params["content_type"], f"output {quoted(name)}", OUTPUT_CONTENT_TYPES)


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


def decode_raw_tensor(
    chunk: memoryview | bytes, datatype: str, shape: tuple[int, ...], where: str, wording: RawWording
) -> np.ndarray[Any, Any]:
    """One tensor from its raw little-endian bytes (BYTES elements each a 4-byte length, then
    the bytes), as the binary extension and gRPC's raw contents carry it. Checks that the
    bytes match the shape exactly; errors say so in ``wording``. Numeric tensors are views on
    the bytes: never copied."""
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


def raw_bytes(datatype: str, data: np.ndarray[Any, Any]) -> bytes:
    """A tensor's raw little-endian bytes, the layout :func:`decode_raw_tensor` reads."""
    if datatype == "BYTES":
        parts = []
        for x in data.reshape(-1):
            b = as_bytes(x)
            parts.append(_LENGTH.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(data, dtype=DATATYPES[datatype]).tobytes()


# --------------------------------------------------------------------------- outputs


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


def wire_outputs(
    response: InferenceResponse, request: InferenceRequest, model_name: str
) -> Iterator[tuple[Tensor, np.ndarray[Any, Any], dict[str, Any], dict[str, Any]]]:
    """``(tensor, data, parameters, asked)`` of each produced output, in order, as a codec
    writes it: the data checked against the declared datatype (the same rule on every wire,
    issue 13) and put under its content type (the output's own, else the request's);
    ``parameters`` the tensor's own plus the content type echoed; ``asked`` what the request
    asked of this output."""
    default_content = request.parameters.get("content_type") if request.parameters else None
    wanted = {o.name: o.parameters for o in request.outputs}
    for tensor in response.outputs:
        params = dict(tensor.parameters)
        asked = wanted.get(tensor.name) or _NO_PARAMETERS
        data = checked_output(tensor, model_name)
        if asked or params or default_content is not None:
            data = encode_content(tensor.name, tensor.datatype, data, asked, default_content, params)
        yield tensor, data, params, asked
