"""Fakes for the pools' unit tests: workers that only record what they were sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from runtime_core.envelope import Envelope, Outcome
from runtime_core.pools.connection import Pending


class FakeConn:
    """What the worker group, the dispatch policy and the batch holder see of a worker."""

    def __init__(self, index: int, load: int = 0, *, ready: bool = True, overdue: bool = False) -> None:
        self.index = index
        self.pid = 0
        self.ready = ready
        self.alive = True
        self.overdue = overdue
        self.pending: dict[int, Pending] = {}
        self.timed_out: set[int] = set()
        self.sent: list[Pending] = []
        self.frames: list[bytes] = []
        self.killed = False
        self._extra = load

    @property
    def load(self) -> int:
        return self._extra + len(self.sent)

    def send(self, pending: Pending) -> None:
        self.sent.append(pending)

    def write(self, frame: bytes) -> None:
        self.frames.append(frame)

    def kill(self) -> None:
        self.killed = True
        self.alive = False
        self.ready = False


class Owner:
    def __init__(self) -> None:
        self.done: list[Outcome] = []

    def request_done(self, outcome: Outcome) -> None:
        self.done.append(outcome)


def pending(payload: bytes = b"x", *, retried: bool = False) -> Pending:
    """A request as a pool holds it (call inside a running loop)."""
    future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    return Pending(future, Envelope(payload), Owner(), 0, 0.0, retried)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one test's coroutine function in a fresh event loop."""
    asyncio.run(main())
