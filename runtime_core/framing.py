"""Length-prefixed frames on a data socket: the header, the reader, and the asyncio end.

A frame on a worker's or host's data socket (a stream socket) is::

    u32 length | u8 kind | u64 request id | payload (length - 9 bytes)

What a payload holds, for each kind, is :mod:`runtime_core.messages`'s business; this module
only cuts the stream into frames and puts frames on it.

:class:`FrameReader` costs time linear in the bytes fed, however the stream is split:
a frame that spans chunks is gathered as a list of chunks and joined once, when its
last byte arrives.

:class:`FramedProtocol` is the asyncio end both sides share: the main process's
:class:`~runtime_core.pools.connection.Connection` and a worker's (or Ray actor's) protocol in
:mod:`runtime_core.worker`. Frames queued with :meth:`FramedProtocol.queue` leave in one
``writelines`` at the end of the event-loop turn: the requests dispatched in one turn reach a
worker in one write (one wake-up, one batch), and the replies of one batch leave in one write.

A host (:mod:`runtime_core.host`) reads with the same :class:`FrameReader` but keeps its own
writes: it is a blocking loop that never runs an event loop between batches (so that its forks
are clean), and it answers a wake-up's groups with one ``sendall`` each, or several groups
with one when the later ones are surely cheap (:mod:`runtime_core.hostanswers`): a flush
rule of its own, not the end of a loop turn.

Bounds: nothing is queued beyond one loop turn's frames; the sender (the pool's pipeline
depth, the worker's batch) bounds how many that is. Ordering: frames leave in the order they
were queued or written.

Cancel and timeout: nothing here; a queued frame is sent, and deadlines are the business of
the two ends (the pool's watchdog, the worker's deadline check). A corrupt stream (a frame
larger than ``MAX_FRAME``) goes to the subclass's :meth:`FramedProtocol.corrupt` (the main
process kills the worker; a worker stops serving). Death of the other end: frames queued
when the transport is closing, or closed, are dropped, and the subclass learns of it from
``connection_lost``.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator

#: The frame header: length of (kind + id + payload), kind, request id.
FRAME = struct.Struct("<IBQ")

#: Largest frame accepted from the other side; the server's body limit is far below.
MAX_FRAME = 1 << 31

__all__ = ["FRAME", "MAX_FRAME", "FrameReader", "FramedProtocol"]


class FrameReader:
    """Splits a byte stream into frames.

    Frames that arrive whole in one chunk are returned as views on that chunk. A frame
    split over chunks is gathered as a list of chunks (no copy per chunk) and joined once
    when complete, so the cost is linear in the frame size however finely it was split.
    """

    __slots__ = ("_have", "_need", "_parts")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._have = 0  # bytes held in _parts
        self._need = 0  # total bytes of the frame being gathered (0: its header is incomplete)

    def feed(self, data: bytes) -> Iterator[tuple[int, int, memoryview]]:
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if not self._need and self._have >= FRAME.size:
                head = b"".join(self._parts)
                self._parts = [head]
                self._need = self._frame_size(head, 0)
            if not self._need or self._have < self._need:
                return
            view = memoryview(b"".join(self._parts))
            self._parts = []
            self._have = 0
            self._need = 0
        else:
            view = memoryview(data)
        pos = 0
        end = len(view)
        while end - pos >= FRAME.size:
            stop = pos + self._frame_size(view, pos)
            if stop > end:
                break
            _length, kind, request_id = FRAME.unpack_from(view, pos)
            yield kind, request_id, view[pos + FRAME.size : stop]
            pos = stop
        if pos < end:
            rest = bytes(view[pos:])
            self._parts = [rest]
            self._have = len(rest)
            self._need = self._frame_size(rest, 0) if len(rest) >= FRAME.size else 0

    @staticmethod
    def _frame_size(buffer: bytes | memoryview, pos: int) -> int:
        length, _kind, _id = FRAME.unpack_from(buffer, pos)
        if length > MAX_FRAME:
            raise ValueError("frame too large")
        return 4 + int(length)


class FramedProtocol(asyncio.Protocol):
    """One asyncio end of a data socket (see the module docstring). A subclass answers each
    frame in :meth:`frame_received` and a corrupt stream in :meth:`corrupt`."""

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self._outbox: list[bytes] = []

    def frame_received(self, kind: int, request_id: int, payload: memoryview) -> None:
        raise NotImplementedError

    def corrupt(self) -> None:
        """The other end sent a frame that cannot be one: the stream cannot be trusted."""
        raise NotImplementedError

    # --------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        # The chunk is cut whole before any frame is handled, so a corrupt frame anywhere in
        # it means none of its frames is handled.
        try:
            frames = list(self.reader.feed(data))
        except ValueError:
            self.corrupt()
            return
        for kind, request_id, payload in frames:
            self.frame_received(kind, request_id, payload)

    # --------------------------------------------------------------- writing

    def write(self, frame: bytes) -> None:
        """Send ``frame`` now (a heartbeat, a control message)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def queue(self, pieces: list[bytes]) -> None:
        """Send a frame's ``pieces`` with everything else queued in this event-loop turn,
        in one write at its end."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.extend(pieces)

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(self._outbox)
        self._outbox = []
