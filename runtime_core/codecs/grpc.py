"""The gRPC codec of the V2 protocol: ``ModelInferRequest`` bytes in, ``ModelInferResponse`` bytes out.

It runs where :mod:`runtime_core.codecs.json` runs, in the process that runs the
model: the main process forwards the serialized request untouched (it reads
only the model's name, with :func:`route`) and returns the worker's reply bytes
as they are. It imports ``google.protobuf`` (through the generated messages in
:mod:`runtime_core.proto`), never grpcio.

Inputs come either as ``raw_input_contents`` (one entry per input, the layout of
the binary tensor extension; what tritonclient and KServe send) or as typed
``contents``:

=================== ===================================
datatype             typed field
=================== ===================================
BOOL                 ``bool_contents``
INT8, INT16, INT32   ``int_contents`` (range-checked)
INT64                ``int64_contents``
UINT8, UINT16, UINT32 ``uint_contents`` (range-checked)
UINT64               ``uint64_contents``
FP16, FP32           ``fp32_contents`` (FP16 range-checked)
FP64                 ``fp64_contents``
BYTES                ``bytes_contents``
=================== ===================================

Outputs always go back in ``raw_output_contents``, as tritonclient and KServe
expect. Request ``id`` and ``parameters``, tensor parameters and content types
behave as over REST: the checks are :mod:`runtime_core.codecs.validation`'s.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from google.protobuf.message import DecodeError

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
from runtime_core.proto.grpc_service_pb2 import InferParameter, ModelInferRequest, ModelInferResponse
from runtime_core.proto.routing_pb2 import InferRoute
from runtime_core.types import DATATYPES, InferenceRequest, InferenceResponse, RequestedOutput, Tensor

__all__ = ["decode", "decode_grpc_request", "encode", "encode_grpc_response", "route"]

_INT64_MAX = 2**63 - 1

#: datatype -> the typed ``contents`` field that carries it.
_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP16": "fp32_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# The numpy dtype each typed field holds on the wire, before narrowing to the datatype.
_WIRE_DTYPE = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}


def route(payload: bytes | memoryview) -> tuple[str, str]:
    """``(model_name, model_version)`` of a serialized ``ModelInferRequest``, without reading
    its tensors (the main process's only look inside a request)."""
    try:
        head = InferRoute.FromString(bytes(payload) if isinstance(payload, memoryview) else payload)
    except DecodeError:
        raise InvalidRequest("the request is not a valid ModelInferRequest message") from None
    return head.model_name, head.model_version


# --------------------------------------------------------------------------- parameters


def _parameter_value(value: InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return None if choice is None else getattr(value, choice)


def _parameters(entries: Any) -> dict[str, Any]:
    if not entries:
        return {}
    return {key: _parameter_value(value) for key, value in entries.items()}


def _set_parameter(target: InferParameter, value: Any) -> None:
    if isinstance(value, bool | np.bool_):
        target.bool_param = bool(value)
    elif isinstance(value, int | np.integer):
        number = int(value)
        if number > _INT64_MAX:
            target.uint64_param = number
        else:
            target.int64_param = number
    elif isinstance(value, float | np.floating):
        target.double_param = float(value)
    elif isinstance(value, str):
        target.string_param = value
    else:  # lists, objects (MLServer's "headers"): as JSON text
        target.string_param = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _fill_parameters(entries: Any, parameters: dict[str, Any]) -> None:
    for key, value in parameters.items():
        if value is not None:
            _set_parameter(entries[str(key)], value)


# --------------------------------------------------------------------------- decoding


#: gRPC's ``raw_input_contents``: one bytes entry per tensor.
RAW_CONTENTS = RawWording(
    short="raw BYTES contents are",
    past_end="a BYTES element runs past the end of its raw contents",
    extra="raw contents hold more bytes than shape {shape} needs",
    size="raw contents have",
)


def _from_typed(tensor: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray[Any, Any]:
    field_name = _TYPED_FIELD[datatype]
    values = getattr(tensor.contents, field_name)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidRequest(
            f"{where}: shape {list(shape)} needs {count} elements, contents.{field_name} has {len(values)}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    wire = np.array(values, dtype=_WIRE_DTYPE[field_name]).reshape(shape)
    dtype = DATATYPES[datatype]
    if dtype == wire.dtype:
        return wire
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if count and (wire.min() < info.min or wire.max() > info.max):
            raise InvalidRequest(f"{where}: a value is out of range for {datatype}")
        return wire.astype(dtype)
    with np.errstate(over="ignore"):  # FP16 from fp32_contents
        cast = wire.astype(dtype)
    if not np.array_equal(np.isfinite(cast), np.isfinite(wire)):
        raise InvalidRequest(f"{where}: a value is out of range for {datatype}")
    return cast


def decode_grpc_request(payload: bytes | memoryview, max_elements: int = 0) -> InferenceRequest:
    """Decode a serialized ``ModelInferRequest``.

    Raises :class:`InvalidRequest` for anything a runtime could not rely on, and
    :class:`PayloadTooLarge` when the inputs hold more than ``max_elements`` elements
    in all (0: no limit), before any of their data is converted.
    """
    try:
        message = ModelInferRequest.FromString(bytes(payload) if isinstance(payload, memoryview) else payload)
    except DecodeError:
        raise InvalidRequest("the request is not a valid ModelInferRequest message") from None
    raw_contents = message.raw_input_contents
    if raw_contents and len(raw_contents) != len(message.inputs):
        raise InvalidRequest(
            f"the request has {len(message.inputs)} inputs but {len(raw_contents)} raw_input_contents entries;"
            " send one per input, or typed contents"
        )
    request_parameters = _parameters(message.parameters)
    check = InputChecker(request_parameters, max_elements)
    inputs: list[Tensor] = []
    for index, item in enumerate(message.inputs):
        where, shape = check.header(index, item.name, item.datatype, list(item.shape))
        datatype = item.datatype
        params = _parameters(item.parameters)
        check.parameters(params, where)
        if raw_contents:
            if item.contents.ListFields():  # Triton refuses the ambiguity too
                raise InvalidRequest(f"{where}: has both contents and raw_input_contents; send one of them")
            data = decode_raw_tensor(raw_contents[index], datatype, shape, where, RAW_CONTENTS)
        else:
            data = _from_typed(item, datatype, shape, where)
        data = check.content(data, datatype, params, True, where)
        inputs.append(Tensor(item.name, data, datatype, params))
    outputs: list[RequestedOutput] = []
    for index, wanted in enumerate(message.outputs):
        if not wanted.name:
            raise InvalidRequest(f"output {index}: 'name' must be a non-empty string")
        params = _parameters(wanted.parameters)
        check_requested_output(wanted.name, params)
        outputs.append(RequestedOutput(wanted.name, params))
    return InferenceRequest(inputs, outputs, message.id or None, request_parameters)


# --------------------------------------------------------------------------- encoding


def encode_grpc_response(
    response: InferenceResponse, *, model_name: str, model_version: str | None, request: InferenceRequest
) -> bytes:
    """Serialize a ``ModelInferResponse``: outputs in ``raw_output_contents``, in order."""
    message = ModelInferResponse(model_name=model_name, model_version=model_version or "", id=request.id or "")
    if response.parameters:
        _fill_parameters(message.parameters, response.parameters)
    raw = message.raw_output_contents
    for tensor, data, params, _ in wire_outputs(response, request, model_name):
        out = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if params:
            _fill_parameters(out.parameters, params)
        raw.append(raw_bytes(tensor.datatype, data))
    serialized: bytes = message.SerializeToString()
    return serialized


# --------------------------------------------------------------------------- the worker's interface


def decode(envelope: Envelope, max_elements: int) -> InferenceRequest:
    """The request of a :attr:`Wire.GRPC` envelope."""
    return decode_grpc_request(envelope.payload, max_elements)


def encode(
    response: InferenceResponse,
    *,
    model_name: str,
    model_version: str | None,
    request: InferenceRequest,
    empty_parameters: bool,
) -> tuple[bytes, Wire, int]:
    """``(body, Wire.GRPC, 0)``; ``empty_parameters`` is REST's (MLServer's JSON envelope):
    a protobuf map has no empty-versus-absent distinction to keep."""
    body = encode_grpc_response(response, model_name=model_name, model_version=model_version, request=request)
    return body, Wire.GRPC, 0
