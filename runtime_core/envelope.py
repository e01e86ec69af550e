"""The request envelope and the outcome: what crosses every layer of the data plane.

One request is one :class:`Envelope` from the front end (REST or gRPC) through the
scheduler and the pool to the worker, and one :class:`Outcome` on the way back. No
layer re-wraps them into a record of its own; each reads the fields it needs. The
payload is the bytes the client sent, untouched: only the worker parses it, by its
:class:`Wire` format.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Wire(enum.IntEnum):
    """How a payload is laid out (and so how the worker decodes it and encodes the reply)."""

    JSON = 0
    """A V2 JSON body."""
    BINARY = 1
    """Triton's binary tensor extension: ``header_length`` bytes of JSON, then raw tensors."""
    GRPC = 2
    """A serialized ``inference.ModelInferRequest`` (the reply: a ``ModelInferResponse``)."""
    CUSTOM = 3
    """A call of one of the model's own REST endpoints (``ModelMetadata.endpoints``): a JSON
    object ``{"method", "path", "query", "body"}`` (``body``: the HTTP body as text); the reply
    is the endpoint's JSON. Only runtimes with ``raw_requests`` receive it."""


@dataclass(slots=True)
class Envelope:
    """One inference request on its way to a worker."""

    payload: bytes | memoryview
    """The request bytes as the client sent them."""
    wire: Wire = Wire.JSON
    """Layout of ``payload``."""
    header_length: int = 0
    """For :attr:`Wire.BINARY`: length of the JSON header at the start of ``payload``."""
    deadline: float = 0.0
    """Wall-clock time (``time.time()``) after which the request must not run; 0: none."""
    arrived: float = 0.0
    """Wall-clock time the front end received the request (Triton's ``timeout`` counts from it)."""
    trace: str = ""
    """The W3C ``traceparent`` of the request's span, which the worker makes the current
    OpenTelemetry context while the runtime runs; "" when tracing is off (see
    :mod:`runtime_core.tracing`)."""
    headers: bytes = b""
    """The HTTP headers (or gRPC metadata) of the request as a JSON object with lower-case
    keys, for runtimes that read requests themselves (``Runtime.raw_requests``); empty for
    every other runtime, whose requests do not carry them."""


@dataclass(slots=True)
class Outcome:
    """What a worker answers for one request."""

    code: int
    """0 for success, else the ``code`` of a :class:`~runtime_core.errors.RuntimeCoreError`."""
    body: bytes
    """Response bytes on success, the UTF-8 error message otherwise."""
    wire: Wire = Wire.JSON
    """Layout of ``body`` on success."""
    header_length: int = 0
    """For :attr:`Wire.BINARY`: length of the JSON header of ``body``."""
    compute: float = 0.0
    """Seconds the worker spent on the request (decode, predict, encode); a batch's time is
    shared evenly among its requests."""
    cpu: float = 0.0
    """Service seconds: ``compute`` less the time the worker sat waiting for a CPU, shared
    likewise. Fair sharing charges this: plain wall time would also charge a low-priority
    worker for the time it was made to wait."""
    decode: float = 0.0
    """Seconds spent decoding this request (Triton's ``compute_input``)."""
    predict: float = 0.0
    """Seconds of the runtime's ``predict`` call this request shares (``compute_infer``)."""
    encode: float = 0.0
    """Seconds spent encoding this request's reply (``compute_output``)."""
    batch: int = 1
    """How many requests ran in the same ``predict`` call (1: alone)."""
    rows: int = 1
    """Inferences this request counts for (Triton's ``inference_count``): for a runtime with
    row-wise outputs (``supports_batching``), the length of the inputs' shared first axis;
    otherwise 1 (the model has no batch axis, like a Triton model with ``max_batch_size`` 0).
    The worker knows it once it has decoded the request."""
    batch_rows: int = 1
    """Rows of the ``predict`` call this request ran in, all its requests together (Triton's
    ``batch_size`` in ``batch_stats``)."""
    queued: float = 0.0
    """Seconds the request waited in its model's queue in the main process (set by the
    scheduler; the worker does not send it)."""
