"""Frames that cross the process boundary between the main process and a worker.

A frame on a worker's data socket (a stream socket) is::

    u32 length | u8 kind | u64 request id | payload (length - 9 bytes)

``INFER`` payloads are ``i64 json_length | f64 deadline | f64 arrived | request body``;
``REPLY`` payloads are ``u8 error code | i64 json_length | f64 compute seconds |
f64 CPU seconds | body``. The request body goes through untouched: the main process never parses
it. ``CONTROL`` frames carry small pickled dicts (ready, unload, ...), which are
rare. Errors cross as ``(code, message)``, never as pickled exceptions.

The zygote's control socket is ``SOCK_SEQPACKET``: one pickled dict a message,
with worker sockets attached as ``SCM_RIGHTS`` file descriptors.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

FRAME = struct.Struct("<IBQ")  # length of (kind + id + payload), kind, request id
INFER_HEAD = struct.Struct("<qdd")  # json_length (-1: pure JSON), deadline (0: none), arrival time
REPLY_HEAD = struct.Struct("<Bqdd")  # error code (0: ok), json_length, compute seconds, CPU seconds

INFER = 1
REPLY = 2
CONTROL = 3

#: Largest frame accepted from the other side; the server's body limit is far below.
MAX_FRAME = 1 << 31


@dataclass(slots=True)
class Outcome:
    """What a worker answers for one request."""

    code: int
    """0 for success, else the ``code`` of a :class:`~runtime_core.errors.RuntimeCoreError`."""
    body: bytes
    """Response bytes on success, the UTF-8 error message otherwise."""
    json_length: int = -1
    """Length of the JSON header when the body carries binary outputs, else -1."""
    compute: float = 0.0
    """Seconds the worker spent on the request (decode, predict, encode); a batch's time is
    shared evenly among its requests."""
    cpu: float = 0.0
    """Service seconds: ``compute`` less the time the worker sat waiting for a CPU, shared
    likewise. Fair sharing charges this: plain wall time would also charge a low-priority
    worker for the time it was made to wait."""


def infer_frame(
    request_id: int, body: bytes | memoryview, json_length: int, deadline: float, arrived: float = 0.0
) -> list[bytes]:
    """The pieces of an INFER frame, for ``transport.writelines`` (the body is not copied)."""
    head = FRAME.pack(FRAME.size - 4 + INFER_HEAD.size + len(body), INFER, request_id)
    return [head + INFER_HEAD.pack(json_length, deadline, arrived), body]  # type: ignore[list-item]


def reply_frame(request_id: int, outcome: Outcome) -> bytes:
    size = FRAME.size - 4 + REPLY_HEAD.size + len(outcome.body)
    return (
        FRAME.pack(size, REPLY, request_id)
        + REPLY_HEAD.pack(outcome.code, outcome.json_length, outcome.compute, outcome.cpu)
        + outcome.body
    )


def control_frame(request_id: int, message: dict[str, Any]) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(FRAME.size - 4 + len(payload), CONTROL, request_id) + payload


def parse_reply(payload: memoryview) -> Outcome:
    code, json_length, compute, cpu = REPLY_HEAD.unpack_from(payload)
    return Outcome(code, bytes(payload[REPLY_HEAD.size :]), json_length, compute, cpu)


class FrameReader:
    """Splits a byte stream into frames. Frames that arrive whole in one chunk are
    returned as views on that chunk; a frame split over chunks is assembled once."""

    __slots__ = ("_buffer", "_need")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._need = 0  # total bytes of the frame being assembled (0: unknown yet)

    def feed(self, data: bytes) -> Iterator[tuple[int, int, memoryview]]:
        if self._buffer:
            self._buffer += data
            view = memoryview(bytes(self._buffer))
            self._buffer.clear()
        else:
            view = memoryview(data)
        pos = 0
        end = len(view)
        while end - pos >= FRAME.size:
            length, kind, request_id = FRAME.unpack_from(view, pos)
            if length > MAX_FRAME:
                raise ValueError("frame too large")
            stop = pos + 4 + length
            if stop > end:
                break
            yield kind, request_id, view[pos + FRAME.size : stop]
            pos = stop
        if pos < end:
            self._buffer += view[pos:]
