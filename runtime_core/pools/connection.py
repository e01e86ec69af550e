"""The main process's end of one data socket: to a dedicated worker or to a host.

Requests go out as INFER frames (the envelope's payload is not copied), flushed once
per event-loop turn so that requests dispatched together reach the process in one
write and run as one batch. Replies come back as REPLY frames and resolve the
request's future; the request's owner (its model's pool) is told, so it can free
capacity. When the socket closes (the process died, by any signal), ``on_lost`` gets
the connection with its unanswered requests still in ``pending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from runtime_core.control import Ping, Pong
from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import WorkerDied
from runtime_core.framing import FramedProtocol
from runtime_core.messages import CONTROL, REPLY, control_frame, infer_frame, parse_control, parse_reply

#: Seconds of silence after which an idle worker is sent a heartbeat (a ``Ping`` frame), and
#: the most it may take to answer (at most ``worker_timeout``) before it counts as stalled.
HEARTBEAT, HEARTBEAT_TIMEOUT = 2.0, 5.0


class Owner(Protocol):
    def request_done(self, outcome: Outcome) -> None: ...


@dataclass(slots=True)
class Pending:
    future: asyncio.Future[Outcome]
    envelope: Envelope
    owner: Owner
    slot: int
    sent_at: float
    retried: bool = False


class Connection(FramedProtocol):
    """One data socket (see the module docstring)."""

    def __init__(self, index: int, on_lost: Callable[[Connection], None]) -> None:
        super().__init__()
        self.index = index
        self.pid = 0
        self.ready = False
        self.alive = True
        self.background = False
        self.pending: dict[int, Pending] = {}
        self.hello: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.timed_out: set[int] = set()  # ids of Pending that ran past worker_timeout
        self.last_used = 0.0  # loop time of the last request sent
        self.last_heard = 0.0  # loop time of the last bytes received
        self.ping_sent = 0.0  # loop time of the heartbeat not answered yet (0: none)
        self._on_lost = on_lost
        self._next_id = 0

    # --------------------------------------------------------------- dispatch policy view

    @property
    def load(self) -> int:
        return len(self.pending)

    overdue = False  # set by the pool's watchdog while the oldest request is overdue; a reply clears it

    # --------------------------------------------------------------- frames in

    def data_received(self, data: bytes) -> None:
        self.last_heard = asyncio.get_running_loop().time()
        super().data_received(data)

    def corrupt(self) -> None:
        self.kill()

    def frame_received(self, kind: int, request_id: int, payload: memoryview) -> None:
        if kind == REPLY:
            pending = self.pending.pop(request_id, None)
            if pending is None:
                return
            # A worker that answers is making progress: no longer passed over as possibly
            # hung (the watchdog marks it again if its next oldest request is overdue).
            # Left set until the next watchdog pass, it kept held requests from this
            # worker after its slow request ended, until max_batch_time.
            self.overdue = False
            outcome = parse_reply(payload)
            if not pending.future.done():
                pending.future.set_result(outcome)
            pending.owner.request_done(outcome)
        elif kind == CONTROL:
            message = parse_control(payload)
            if not self.hello.done():
                self.hello.set_result(message)
            elif isinstance(message, Pong):
                self.ping_sent = 0.0

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.ready = False
        if not self.hello.done():
            self.hello.set_exception(WorkerDied("the worker exited before it was ready"))
        self._on_lost(self)

    # --------------------------------------------------------------- watching

    def watch(self, now: float, limit: float, overdue_after: float) -> Literal["silent", "late"] | None:
        """One supervisor check of this connection (loop time ``now``, ``worker_timeout``
        ``limit``); the owner kills the process behind it on a verdict.

        Idle: ``"silent"`` when a heartbeat went unanswered for ``HEARTBEAT_TIMEOUT`` (at
        most ``limit``); else, once ready and silent for ``HEARTBEAT``, a ``Ping`` is sent.
        Busy: ``overdue`` is set when the oldest request has been out for half of ``limit``
        (at most ``overdue_after``, the ``worker_overdue_after`` setting), so that dispatch
        prefers siblings; ``"late"`` when it ran past
        ``limit``, with that request put in ``timed_out`` (it fails with DeadlineExceeded)."""
        if not self.pending:
            self.overdue = False
            if self.ping_sent and now - self.ping_sent > min(limit, HEARTBEAT_TIMEOUT):
                return "silent"
            if self.ready and not self.ping_sent and now - max(self.last_heard, self.last_used) > HEARTBEAT:
                self.ping_sent = now
                self.write(control_frame(0, Ping(now)))
            return None
        oldest = min(self.pending.values(), key=lambda p: p.sent_at)
        self.overdue = now - oldest.sent_at > min(limit / 2, overdue_after)
        if now - oldest.sent_at > limit:
            self.timed_out = {id(oldest)}
            return "late"
        return None

    # --------------------------------------------------------------- sending

    def send(self, pending: Pending) -> None:
        self._next_id += 1
        self.pending[self._next_id] = pending
        # From now: a request retried after its host died must not count its first run and
        # its wait for the reload against worker_timeout on the new host (issue 20).
        pending.sent_at = self.last_used = asyncio.get_running_loop().time()
        self.queue(infer_frame(self._next_id, pending.envelope, pending.slot))

    def kill(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.transport is not None:
            self.transport.abort()
