"""The REST codec: V2 JSON bodies and Triton's binary tensor extension.

Two wire forms are supported:

* JSON: ``{"inputs": [{"name", "shape", "datatype", "data"}], ...}``;
* Triton's ``binary_tensor_data`` extension: a JSON header of
  ``json_length`` bytes followed by raw little-endian tensor bytes; each
  binary input says its size in ``parameters.binary_data_size``.

It runs in the process that runs the model (a worker, or the main process when
``parallel_workers`` is 0), never as per-request work in the HTTP front end. The checks
every wire shares are :mod:`runtime_core.codecs.validation`'s; this module adds what is
JSON's own (the document's structure, numbers from JSON values, NaN and infinity on the
way out). Numeric binary tensors are views on the request bytes: never copied.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

from runtime_core.codecs.validation import (
    InputChecker,
    RawWording,
    check_requested_output,
    decode_raw_tensor,
    raw_bytes,
    wire_outputs,
)
from runtime_core.envelope import Envelope, Wire
from runtime_core.errors import InvalidRequest
from runtime_core.types import DATATYPES, InferenceRequest, InferenceResponse, RequestedOutput, Tensor

__all__ = ["BINARY_BODY", "decode", "decode_request", "encode", "encode_response"]

# numpy kinds of JSON values accepted for each datatype family.
_ACCEPTED_KINDS = {"b": "b", "u": "biu", "i": "biu", "f": "biuf"}
_FP32 = np.dtype(np.float32)
#: The least float64 magnitude that rounds to infinity as a float32: half an ulp above the
#: largest float32, where round-to-nearest-even goes up to 2**128.
_FP32_OVERFLOW = 2.0**128 - 2.0**103


#: Triton's binary extension: a tensor's bytes are ``binary_data_size`` bytes of the body.
BINARY_BODY = RawWording(
    short="BYTES data is",
    past_end="a BYTES element runs past binary_data_size",
    extra="binary_data_size is larger than the BYTES elements",
    size="binary_data_size is",
)


# --------------------------------------------------------------------------- decoding


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}: 'parameters' must be an object")
    return value


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
    if dtype == _FP32 and raw.dtype.kind == "f":
        # JSON numbers are finite (orjson refuses the rest), and a float64 becomes an infinite
        # float32 exactly when its magnitude reaches _FP32_OVERFLOW: one comparison instead of
        # a cast under np.errstate and a scan for infinities, the most common input's cost.
        if np.abs(raw).max() >= _FP32_OVERFLOW:
            raise InvalidRequest(f"{where}: a value is out of range for {datatype}")
        return raw.astype(dtype).reshape(shape)
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


def decode_request(body: bytes | memoryview, json_length: int | None = None, max_elements: int = 0) -> InferenceRequest:
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
    check = InputChecker(request_parameters, max_elements)
    inputs: list[Tensor] = []
    offset = 0
    for index, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidRequest(f"input {index}: must be an object")
        where, shape = check.header(index, item.get("name"), item.get("datatype"), item.get("shape"))
        name: str = item["name"]
        datatype: str = item["datatype"]
        params = _parameters(item.get("parameters"), where)
        check.parameters(params, where)
        size = params.get("binary_data_size")
        if size is not None:
            data = _from_binary(tail, offset, size, datatype, shape, where)
            offset += size
        elif "data" in item:
            data = _from_json_data(item["data"], datatype, shape, where)
        else:
            raise InvalidRequest(f"{where}: has no 'data'")
        data = check.content(data, datatype, params, size is not None, where)
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
            check_requested_output(item["name"], params)
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
    binary_all = bool(request.parameters.get("binary_data_output", False)) if request.parameters else False
    outputs = []
    tails: list[bytes] = []
    for tensor, data, params, asked in wire_outputs(response, request, model_name):
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if asked.get("binary_data", binary_all):
            blob = raw_bytes(tensor.datatype, data)
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


# --------------------------------------------------------------------------- the worker's interface


def decode(envelope: Envelope, max_elements: int) -> InferenceRequest:
    """The request of a :attr:`Wire.JSON` or :attr:`Wire.BINARY` envelope."""
    header = envelope.header_length if envelope.wire is Wire.BINARY else None
    return decode_request(envelope.payload, header, max_elements)


def encode(
    response: InferenceResponse,
    *,
    model_name: str,
    model_version: str | None,
    request: InferenceRequest,
    empty_parameters: bool,
) -> tuple[bytes, Wire, int]:
    """``(body, wire, header_length)`` of the reply: JSON, or binary when an output was asked
    for in binary."""
    body, header_length = encode_response(
        response, model_name=model_name, model_version=model_version, request=request, empty_parameters=empty_parameters
    )
    return (body, Wire.JSON, 0) if header_length is None else (body, Wire.BINARY, header_length)
