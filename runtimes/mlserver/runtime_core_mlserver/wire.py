"""Request bytes to MLServer's types, and MLServer's responses back to bytes.

The worker hands this runtime each request as the client sent it (``raw_requests``), so a
request reaches the ``MLModel`` exactly as MLServer would build it, and its
``InferenceResponse`` leaves exactly as MLServer would write it:

- REST JSON is parsed by MLServer's own pydantic ``InferenceRequest`` (one pass of
  pydantic-core over the bytes; no numpy detour), and the response is written as MLServer's
  FastAPI route writes it: unset and ``None`` fields left out, field aliases used.
- gRPC bytes are a ``inference.ModelInferRequest`` (the same message in both servers'
  protos) and go through MLServer's own converters both ways, raw tensor contents included.
- Triton's binary tensor extension is not something MLServer reads: such a request gets a
  clear 400.

Errors here are :class:`runtime_core.InvalidRequest` with a message fit for the client: no
pydantic class names, no paths.
"""

from __future__ import annotations

import orjson
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter
from mlserver.types import InferenceRequest, InferenceResponse
from pydantic import ValidationError

from runtime_core import InvalidRequest
from runtime_core.envelope import Envelope, Wire
from runtime_core.runtime import RawReply

__all__ = ["decode", "encode", "headers_of", "validation_message"]

#: Most validation problems named in one error message.
_SHOWN = 3


def validation_message(exc: ValidationError, what: str) -> str:
    """``what`` followed by the first few problems pydantic found, by field location."""
    problems = []
    for error in exc.errors()[:_SHOWN]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "body"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    more = len(exc.errors()) - _SHOWN
    return f"{what}: " + "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def decode(envelope: Envelope) -> tuple[InferenceRequest, bool]:
    """MLServer's ``InferenceRequest`` for one request, from its bytes, and whether it sent
    raw tensor contents (gRPC), to which MLServer answers with raw contents."""
    if envelope.wire is Wire.GRPC:
        try:
            message = pb.ModelInferRequest.FromString(bytes(envelope.payload))
            return ModelInferRequestConverter.to_types(message), bool(message.raw_input_contents)
        except ValidationError as exc:
            raise InvalidRequest(validation_message(exc, "the request is not a valid inference request")) from None
        except Exception as exc:  # protobuf's DecodeError, or a converter refusing a datatype
            raise InvalidRequest(f"the request is not a valid inference request ({type(exc).__name__})") from None
    if envelope.wire is Wire.BINARY:
        raise InvalidRequest(
            "MLServer models take JSON requests: Triton's binary tensor extension"
            " (Inference-Header-Content-Length) is not supported by the mlserver runtime"
        )
    try:
        return InferenceRequest.model_validate_json(bytes(envelope.payload)), False
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc, "the request body is not a valid inference request")) from None


def headers_of(envelope: Envelope) -> dict[str, str]:
    """The request's forwarded headers (HTTP headers, or gRPC metadata)."""
    if not envelope.headers:
        return {}
    headers: dict[str, str] = orjson.loads(envelope.headers)
    return headers


def encode(response: InferenceResponse, wire: Wire, use_raw: bool) -> RawReply:
    """The response's bytes in the request's wire format, as MLServer writes them."""
    if wire is Wire.GRPC:
        message = ModelInferResponseConverter.from_types(response, use_raw=use_raw)
        return RawReply(message.SerializeToString(), Wire.GRPC)
    body = response.model_dump_json(exclude_unset=True, exclude_none=True, by_alias=True)
    return RawReply(body.encode(), Wire.JSON)
