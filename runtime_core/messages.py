"""Frames that cross the process boundary between the main process and a worker.

A frame's header (length, kind, request id) and the reading of frames off a stream are
:mod:`runtime_core.framing`'s; this module says what each kind's payload holds.

``INFER`` payloads are ``u8 wire | i64 header length | f64 deadline | f64 arrived |
u32 model slot | u8 trace length | u32 headers length | trace | headers | request bytes`` (see
:class:`~runtime_core.envelope.Envelope`; the slot names the model in a process that hosts
several; the trace is the request's W3C ``traceparent``, ASCII, empty when tracing is off). ``REPLY`` payloads are the
:class:`~runtime_core.envelope.Outcome` fixed fields followed by its body. The request
bytes go through untouched: the main process never parses them. ``CONTROL`` frames carry
small pickled typed messages (see :mod:`runtime_core.control`), which are rare. Errors
cross as ``(code, message)``, never as pickled exceptions.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

from runtime_core.envelope import Envelope, Outcome, Wire
from runtime_core.framing import FRAME

# wire, header length, deadline (0: none), arrival time, model slot, length of the trace and of
# the forwarded headers that follow
INFER_HEAD = struct.Struct("<BqddIBI")
# code, wire, header length, compute, cpu, decode, predict, encode, batch, rows, batch rows
REPLY_HEAD = struct.Struct("<BBqdddddIII")

INFER = 1
REPLY = 2
CONTROL = 3

__all__ = [
    "CONTROL",
    "INFER",
    "INFER_HEAD",
    "REPLY",
    "REPLY_HEAD",
    "Envelope",
    "Outcome",
    "Wire",
    "control_frame",
    "infer_frame",
    "parse_control",
    "parse_infer",
    "parse_reply",
    "reply_frame",
]


def infer_frame(request_id: int, envelope: Envelope, slot: int = 0) -> list[bytes]:
    """The pieces of an INFER frame, for ``transport.writelines`` (the payload is not copied)."""
    body = envelope.payload
    trace = envelope.trace.encode() if envelope.trace else b""
    headers = envelope.headers
    head = FRAME.pack(FRAME.size - 4 + INFER_HEAD.size + len(trace) + len(headers) + len(body), INFER, request_id)
    fixed = INFER_HEAD.pack(
        envelope.wire, envelope.header_length, envelope.deadline, envelope.arrived, slot, len(trace), len(headers)
    )
    return [head + fixed + trace + headers, body]  # type: ignore[list-item]


def parse_infer(payload: memoryview) -> tuple[int, Envelope]:
    """``(slot, envelope)`` of an INFER payload; the envelope's payload is a view, not a copy."""
    wire, header_length, deadline, arrived, slot, length, headers_length = INFER_HEAD.unpack_from(payload)
    headers_at = INFER_HEAD.size + length
    start = headers_at + headers_length
    trace = bytes(payload[INFER_HEAD.size : headers_at]).decode() if length else ""
    headers = bytes(payload[headers_at:start]) if headers_length else b""
    return slot, Envelope(
        payload[start:],
        wire=Wire(wire),
        header_length=header_length,
        deadline=deadline,
        arrived=arrived,
        trace=trace,
        headers=headers,
    )


def reply_frame(request_id: int, outcome: Outcome) -> list[bytes]:
    """The pieces of a REPLY frame, for ``transport.writelines`` (the body is not copied)."""
    size = FRAME.size - 4 + REPLY_HEAD.size + len(outcome.body)
    head = FRAME.pack(size, REPLY, request_id) + REPLY_HEAD.pack(
        outcome.code,
        outcome.wire,
        outcome.header_length,
        outcome.compute,
        outcome.cpu,
        outcome.decode,
        outcome.predict,
        outcome.encode,
        outcome.batch,
        outcome.rows,
        outcome.batch_rows,
    )
    return [head, outcome.body]


def parse_reply(payload: memoryview) -> Outcome:
    """The :class:`Outcome` of a REPLY payload, its fields in :func:`reply_frame`'s order."""
    code, wire, header_length, compute, cpu, decode, predict, encode, batch, rows, batch_rows = REPLY_HEAD.unpack_from(
        payload
    )
    return Outcome(
        code=code,
        body=bytes(payload[REPLY_HEAD.size :]),
        wire=Wire(wire),
        header_length=header_length,
        compute=compute,
        cpu=cpu,
        decode=decode,
        predict=predict,
        encode=encode,
        batch=batch,
        rows=rows,
        batch_rows=batch_rows,
    )


def control_frame(request_id: int, message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(FRAME.size - 4 + len(payload), CONTROL, request_id) + payload


def parse_control(payload: memoryview | bytes) -> Any:
    return pickle.loads(payload)
